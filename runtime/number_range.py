"""A JSON number held to a range, byte by byte: JSON Schema's minimum, maximum,
exclusiveMinimum and exclusiveMaximum, and an integer's whole multipleOf, as
runtime/json_constraint.py holds a reply to them (its IRANGE and NRANGE frames).

A byte is taken only when some value in range, within the byte cap, still starts with the
text so far, so every value in range can be written, none outside it, and no prefix
dead-ends; the one spelling JSON gives an integer (no leading zero, no "-0").
- An integer: rng = (lo, hi, cap_bytes, step) (a None bound: unbounded), its state
  (neg, magnitude, n_digits): `int_step`, `int_whole`.
- A number: rng = (non-negative side, negative side, cap_bytes) from `number_range_of`, its
  state (neg, the digits as one integer p, n_int, n_frac: -1 before the point):
  `num_step`, `num_whole`. A bounded number is spelt -?(0|[1-9][0-9]*)(\\.[0-9]+)?: no
  exponent (a range check over an exponent's digits would need a scanner of its own)
  and no negative zero ("-0", "-0.0"; "-0.5" is fine). Decisions are exact (integers and
  Fractions, never floats): a bound is the decimal its JSON text wrote (0.1, not the
  double 0.1000000000000000055...), and an exclusive bound also refuses what the client
  reads as the bound's own double (see _double_side).
"""
from __future__ import annotations

import math
from fractions import Fraction

DIGITS = frozenset(b"0123456789")
BOUND_KEYS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")


def number_range_of(s: dict, min_cap_bytes: int):
    """A number's rng from schema s's bounds and multipleOf (there is at least one), or
    None when no number fits them. The byte cap leaves room for the bounds (and the step)
    and one more digit, so that every bound, and a number between two close ones, can be
    written however far off or fine they are."""
    widest = max(_plain_bytes(s[k]) + 2 for k in BOUND_KEYS + ("multipleOf",) if k in s)
    rng = _num_sides(*_held_bounds(s), _number_step(s)) + (max(min_cap_bytes, widest),)
    if num_step(rng, False, 0, 0, -1, 0x2D) is None and not any(
            num_step(rng, False, 0, 0, -1, d) for d in DIGITS):
        return None
    return rng


def integer_bounds(s: dict) -> tuple:
    """The lowest and highest integer s's bounds allow (None: unbounded). Bounds may be
    floats (1.5, 1e3) or negative; math.floor and math.ceil are exact on any float."""
    lows, highs = [], []
    if "minimum" in s:
        lows.append(math.ceil(s["minimum"]))
    if "exclusiveMinimum" in s:
        lows.append(math.floor(s["exclusiveMinimum"]) + 1)
    if "maximum" in s:
        highs.append(math.floor(s["maximum"]))
    if "exclusiveMaximum" in s:
        highs.append(math.ceil(s["exclusiveMaximum"]) - 1)
    return max(lows, default=None), min(highs, default=None)


def integer_step(s: dict) -> int:
    """The multipleOf an integer is held to, as a whole step. A whole one (3, 5.0) is
    itself (a whole float as the client reads it, int(1e300)). An integer n is a multiple
    of a fractional P/Q (in lowest terms, the decimal as written: 2.5 = 5/2) exactly when
    P divides n (n*Q/P is whole and Q is prime to P): the multiples of 2.5 are those of
    5, of 0.5 every integer. Exact, where validators that divide floats may not be
    (3 / 0.3 is not 10 in a double)."""
    q = s.get("multipleOf", 1)
    if isinstance(q, float) and q.is_integer():
        return max(int(q), 1)
    return max(decimal_of(q).numerator, 1)


def _number_step(s: dict):
    """A number's multipleOf as the decimal its JSON text wrote (None: none)."""
    return decimal_of(s["multipleOf"]) if "multipleOf" in s else None


# What the client checks. pydantic 2.14's float validator (pydantic-core 2.50) takes x as
# a multiple of m when |x - round(x/m)*m| <= 1e-9, in doubles. We hold x to the exact
# rational definition (x / m whole, x and m the decimals as written), and no further from
# 0 than where every exact multiple also passes that float check:
# - m's double is m itself (0.5, 0.25, 5: a binary fraction P/2**a): a multiple k/2**a
#   with |k| < 2**53 is a double, x/m is the whole n exactly, n*m is x: the difference is
#   0. So |x| < 2**(53 - a).
# - otherwise (0.1, 0.01, 0.7): x and m each read 1 part in 2**53 off, so n*m misses x's
#   double by up to 3 * 2**-53 * |x|, under 1e-9 while |x| <= 1e6; and round(x/m) is n
#   itself while n = |x|/m < 1e15 (its error, 3 * 2**-53 * n, stays under 0.5). So
#   |x| <= min(1e6, m * 1e15). Past it pydantic refuses exact multiples: 210000004.9 is
#   300000007 * 0.7, and off by 1.9e-8 in doubles.
# (jsonschema divides x / m in doubles and wants a whole quotient: it refuses 0.3 for
# 0.1, as it would from any writer; Zod scales both to integers and agrees with us.)
PYDANTIC_TOLERANCE_LIMIT = 10 ** 6
PYDANTIC_QUOTIENT_LIMIT = 10 ** 15


def _step_limit(m: Fraction):
    """How far from 0 a multiple of m is held: (magnitude, inclusive) (see above)."""
    try:
        exact = Fraction(float(m)) == m
    except OverflowError:
        exact = False
    if exact and m.denominator & (m.denominator - 1) == 0:   # m = P / 2**a
        return Fraction(2 ** 53, m.denominator), False
    return min(Fraction(PYDANTIC_TOLERANCE_LIMIT), m * PYDANTIC_QUOTIENT_LIMIT), True


def _held_bounds(s: dict):
    """A number's bounds (_number_bounds), tightened by its multipleOf's limit."""
    low, high = _number_bounds(s)
    m = _number_step(s)
    if m is not None:
        limit, incl = _step_limit(m)
        low = _tighter(low, (-limit, incl), True)
        high = _tighter(high, (limit, incl), False)
    return low, high


def decimal_of(x) -> Fraction:
    """A bound as the decimal json.dumps wrote for it (repr: the shortest spelling that
    reads back as the same double)."""
    return Fraction(repr(x)) if isinstance(x, float) else Fraction(x)


def _tighter(a, b, low: bool):
    """The stricter of two bounds (value, inclusive); None: none."""
    if a is None or b is None:
        return a or b
    if a[0] != b[0]:
        return a if (a[0] > b[0]) == low else b
    return a[0], a[1] and b[1]


def _double_side(x, low: bool):
    """The numbers whose double is above x's double (low), or below it: exactly those
    beyond the point halfway to the next double, a Fraction, so the check stays exact.
    Without it, 0.99999999999999999 would pass exclusiveMaximum 1 here and fail in the
    client (pydantic, a JSON Schema validator), which reads it as the double 1.0. A tie
    rounds to the even double: float(Fraction) rounds correctly, so it says which side
    the halfway point falls on. None: x is past the doubles. Beyond the greatest double
    the next is 2**1024 (infinity): a number from halfway to it on reads as infinity, and
    one short of it as the greatest double, which an exclusive bound at it refuses."""
    try:
        d = float(x)
    except OverflowError:
        return None
    if math.isinf(d):
        return None
    nxt = math.nextafter(d, math.inf if low else -math.inf)
    if math.isinf(nxt):     # the tie rounds to infinity (the greatest double is odd)
        return (Fraction(d) + (2 ** 1024 if low else -2 ** 1024)) / 2, True
    half = (Fraction(d) + Fraction(nxt)) / 2
    return half, (float(half) > d) if low else (float(half) < d)


def _number_bounds(s: dict):
    """A number's lower and upper bounds, each (Fraction, inclusive) or None."""
    low = high = None
    if "minimum" in s:
        low = (decimal_of(s["minimum"]), True)
    if "exclusiveMinimum" in s:
        low = _tighter(low, (decimal_of(s["exclusiveMinimum"]), False), True)
        low = _tighter(low, _double_side(s["exclusiveMinimum"], True), True)
    if "maximum" in s:
        high = (decimal_of(s["maximum"]), True)
    if "exclusiveMaximum" in s:
        high = _tighter(high, (decimal_of(s["exclusiveMaximum"]), False), False)
        high = _tighter(high, _double_side(s["exclusiveMaximum"], False), False)
    return low, high


def _side(a, b, m):
    """Magnitudes from a to b (each (Fraction, inclusive); b None: unbounded) that are
    multiples of m (a Fraction; None: any) as the integers _grid_hit reads."""
    return (a[0].numerator, a[0].denominator, a[1],
            None if b is None else b[0].numerator, None if b is None else b[0].denominator,
            b is not None and b[1], 0 if m is None else m.numerator,
            1 if m is None else m.denominator)


def _num_sides(low, high, m=None) -> tuple:
    """The range as magnitudes: (non-negative side, negative side), each a _side or
    None when no number of that sign fits. A negative number is never zero (no "-0").
    -x is a multiple of m when x is: both sides hold the same multiples."""
    zero = Fraction(0)
    if high is not None and (high[0] < 0 or (high[0] == 0 and not high[1])):
        pos = None
    else:
        pos = _side((zero, True) if low is None or low[0] < 0 else low, high, m)
    if low is not None and low[0] >= 0:
        neg = None
    else:
        a = (zero, False) if high is None or high[0] >= 0 else (-high[0], high[1])
        neg = _side(a, None if low is None else (-low[0], low[1]), m)
    return pos, neg


def _places(v: Fraction) -> int:
    """How many digits decimal v has after the point."""
    den, places = v.denominator, 0
    while den > 1:                       # a decimal's denominator is 2**i * 5**j
        den //= 10 if den % 10 == 0 else 5 if den % 5 == 0 else 2
        places += 1
    return places


def _plain_bytes(x) -> int:
    """The length of x written without an exponent."""
    v = decimal_of(x)
    whole = len(str(abs(v.numerator) // v.denominator)) + (v < 0)
    places = _places(v)
    return whole + (places + 1 if places else 0)


def _grid_hit(side, e: int, lo_n: int, hi_n: int) -> bool:
    """Is some N in lo_n..hi_n with N / 10**e in side's magnitudes (a multiple of its
    step)?"""
    a_num, a_den, a_incl, b_num, b_den, b_incl, m_num, m_den = side
    scale = 10 ** e
    q, r = divmod(a_num * scale, a_den)
    lo_n = max(lo_n, q + (1 if r or not a_incl else 0))
    if b_num is not None:
        q, r = divmod(b_num * scale, b_den)
        hi_n = min(hi_n, q - (0 if r or b_incl else 1))
    if m_num:
        # N / 10**e = t * P/Q (P/Q in lowest terms) iff N*Q = t*P*10**e: with g =
        # gcd(Q, 10**e), Q/g is prime to P and to 10**e/g, so it divides t, and N is a
        # multiple of P * 10**e / g (and every such N is a multiple).
        unit = m_num * (scale // math.gcd(m_den, scale))
        lo_n = -(-lo_n // unit) * unit
    return lo_n <= hi_n


def _num_viable(rng, neg: bool, p: int, n_int: int, n_frac: int) -> bool:
    """Can a number written so far as "-" (neg), then digits p (n_int before the point,
    n_frac after it; -1: no point yet) still end in range within the byte cap? A number
    with more fraction digits can write every value one with fewer can (trailing zeros),
    so for each length of the integer part only the longest fraction is looked at: the
    values N / 10**f for N from p * 10**j to (p + 1) * 10**j - 1."""
    side = rng[1] if neg else rng[0]
    if side is None:
        return False
    room = rng[2] - neg - n_int - (n_frac + 1 if n_frac >= 0 else 0)   # bytes left
    if n_int == 0:                      # just "-": some first digit leads on
        return any(_num_viable(rng, neg, d, 1, -1) for d in range(10))
    if n_frac >= 0:                     # after the point: the digits left, all of them
        if room < (1 if n_frac == 0 else 0):
            return False
        return _grid_hit(side, n_frac + room, p * 10 ** room, (p + 1) * 10 ** room - 1)
    a_num, a_den, _, b_num, b_den, b_incl, _, _ = side
    # k more digits before the point: magnitudes below 10**(n_int + k), so start at the
    # k that can reach a (a bound of 1e300 would otherwise loop 300 times; a multipleOf's
    # limit keeps its multiples below 2**53).
    start = 0 if p == 0 else max(0, len(str(a_num // a_den)) - 1 - n_int)
    for k in range(start, 1 if p == 0 else room + 1):
        least = p * 10 ** k
        if b_num is not None and (least * b_den > b_num or (least * b_den == b_num and not b_incl)):
            return False
        f = room - k - 1 if room - k >= 2 else 0      # the point and f digits, if room
        scale = 10 ** (k + f)
        if _grid_hit(side, f, p * scale, (p + 1) * scale - 1):
            return True
    return False


def num_step(rng, neg: bool, p: int, n_int: int, n_frac: int, b: int):
    """One byte of a number held to a range -> (neg, p, n_int, n_frac) after it, or None."""
    if b == 0x2D:
        if neg or n_int:
            return None
        neg = True
    elif b in DIGITS:
        if n_frac >= 0:
            n_frac += 1
        elif n_int == 1 and p == 0:     # no leading zero
            return None
        else:
            n_int += 1
        p = p * 10 + b - 0x30
    elif b == 0x2E:
        if n_int == 0 or n_frac >= 0:
            return None
        n_frac = 0
    else:
        return None
    return (neg, p, n_int, n_frac) if _num_viable(rng, neg, p, n_int, n_frac) else None


def num_whole(frame) -> bool:
    """Is the number of an NRANGE frame whole and in its range?"""
    _, rng, neg, p, n_int, n_frac = frame
    side = rng[1] if neg else rng[0]
    return (n_int > 0 and n_frac != 0 and side is not None
            and _grid_hit(side, max(n_frac, 0), p, p))


def within_bounds(s: dict, v, integer_only: bool) -> bool:
    """Does an enum/const value fit s's bounds and multipleOf, exactly as the scanner holds
    a number written out (only numbers are bounded)? integer_only: held as an integer
    (int_whole's test: the bounds as integer_bounds reads them, integer_step), else as a
    number (num_whole's: the value's decimal, the bound's decimal and, for an exclusive
    bound, its double; the multipleOf's limit too)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return True
    if integer_only:        # the value is whole (json_constraint keeps only those)
        lo, hi = integer_bounds(s)
        x = int(v)
        return (lo is None or x >= lo) and (hi is None or x <= hi) and x % integer_step(s) == 0
    x = decimal_of(v)
    side = _num_sides(*_held_bounds(s), _number_step(s))[x < 0]
    n = abs(x) * 10 ** _places(x)
    return side is not None and _grid_hit(side, _places(x), int(n), int(n))


def _int_viable(rng, neg: bool, mag: int, n_digits: int) -> bool:
    """Can an integer written so far as "-" (neg), then the n_digits digits of mag, still
    be completed to one in rng's lo..hi within its byte cap? The magnitudes that start
    with those digits are, for k more digits, mag * 10**k .. mag * 10**k + 10**k - 1, and
    one of them must be a multiple of step (-m is one when m is)."""
    lo, hi, cap, step = rng
    if neg:     # -m with lo <= -m <= hi: m in max(1, -hi) .. -lo
        m_lo, m_hi = (1 if hi is None else max(1, -hi)), (None if lo is None else -lo)
    else:
        m_lo, m_hi = (0 if lo is None else max(0, lo)), hi
    if m_hi is not None and m_hi < m_lo:
        return False
    room = cap - neg - n_digits         # digits that may still come
    if n_digits == 0:                   # just "-": any magnitude 1 .. 10**room - 1
        least = -(-m_lo // step) * step
        return room >= 1 and least < 10 ** room and (m_hi is None or least <= m_hi)
    if mag == 0:                        # "0": nothing may follow it
        return m_lo == 0
    # With fewer than len(least) - 1 - n_digits more digits, every continuation is below
    # 10 ** (len(least) - 1) <= least, the least magnitude in range (it is not 0): start
    # past them (a bound or a multipleOf of 1e300 would loop 300 times).
    least = -(-max(m_lo, 1) // step) * step
    for k in range(max(0, len(str(least)) - 1 - n_digits), room + 1):
        first = mag * 10 ** k
        if m_hi is not None and first > m_hi:
            return False
        last = first + 10 ** k - 1 if m_hi is None else min(first + 10 ** k - 1, m_hi)
        if -(-max(first, m_lo) // step) * step <= last:     # a multiple in between
            return True
    return False


def int_step(rng, neg: bool, mag: int, n_digits: int, b: int):
    """One byte of an integer held to a range -> (neg, mag, n_digits) after it, or None.
    The one spelling JSON gives each integer: no leading zero, no "-0" (0 is "0")."""
    if b == 0x2D:
        if neg or n_digits:
            return None
        neg = True
    elif b in DIGITS:
        if (n_digits == 1 and mag == 0) or (neg and n_digits == 0 and b == 0x30):
            return None
        mag, n_digits = mag * 10 + b - 0x30, n_digits + 1
    else:
        return None
    return (neg, mag, n_digits) if _int_viable(rng, neg, mag, n_digits) else None


def int_whole(frame) -> bool:
    """Is the integer of an IRANGE frame whole and in its range?"""
    _, (lo, hi, _, step), neg, mag, n_digits = frame
    v = -mag if neg else mag
    return (n_digits > 0 and (lo is None or v >= lo) and (hi is None or v <= hi)
            and v % step == 0)
