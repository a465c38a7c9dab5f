"""A number's bounds (minimum, maximum, exclusiveMinimum, exclusiveMaximum) held by the JSON
constraint (runtime/json_constraint.py), byte by byte, exactly: every number in range that
the bounded spelling -?(0|[1-9][0-9]*)(\\.[0-9]+)? can write (no exponent, no "-0") is
taken, none outside it, and no prefix is taken that no in-range number continues within
the byte cap. pydantic writes these bounds for `float` fields (Field(ge=0, le=1),
confloat), so a reply out of range failed the client's `.parse()`.

The oracle is exact: Fraction arithmetic on the text against the bounds as their JSON text
wrote them, and, as the client (pydantic, a JSON Schema validator) reads a number, its
double against the bound's double.
"""
import itertools
import json
import re
from fractions import Fraction

import numpy as np
import pytest

from runtime import json_constraint as jc
from tests.runtime.test_json_constraint import generate, refused_at, run, schema, tiny_model
from tests.runtime.test_json_constraint_bounds import assert_refused

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

NUM_BYTES = b"-0123456789."
BOUND_KEYS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
SPELLING = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")


def in_range(text, s, cap=32):
    """Is text a bounded number's spelling, within cap bytes, and in s's range, both
    exactly (the bound as written) and as the client reads it (its double)?"""
    if not SPELLING.fullmatch(text) or len(text) > cap:
        return False
    v, d = Fraction(text), float(text)
    if text.startswith("-") and v == 0:
        return False                    # no negative zero
    for key, bound in s.items():
        if key not in BOUND_KEYS:
            continue
        exact = Fraction(repr(bound)) if isinstance(bound, float) else Fraction(bound)
        ok = {"minimum": lambda a, b: a >= b, "exclusiveMinimum": lambda a, b: a > b,
              "maximum": lambda a, b: a <= b, "exclusiveMaximum": lambda a, b: a < b}[key]
        if not (ok(v, exact) and ok(d, float(bound))):
            return False
    return True


def number(**bounds):
    return {"type": "number", **bounds}


def walk(node, state, text, rng):
    """From an accepted prefix, random bytes the recognizer takes until it may end: it must
    never be left with nothing to take. Returns the whole text."""
    while True:
        steps = [b for b in NUM_BYTES if jc.feed(state, bytes([b])) is not None]
        ends = jc.can_end(state)
        assert steps or ends, text                  # never stuck
        if not steps or (ends and rng.random() < 0.3):
            return text
        b = steps[rng.integers(len(steps))]
        state, text = jc.feed(state, bytes([b])), text + bytes([b])


# ---- what is taken and what is refused ------------------------------------------------------

@pytest.mark.parametrize("bounds, whole, refused", [
    ({"minimum": 0.1}, ["0.1", "0.10000", "0.1000000000000000000000000001", "7", "12.5"],
     ["0.09999", "0.0999999999999999999", "0", "-1"]),
    ({"minimum": 0, "maximum": 1}, ["0", "0.0", "0.5", "1", "1.0", "1.000"],
     ["1.00001", "2", "-0", "-0.0", "-0.5", "1e0", "0.5e-1", "01", "1."]),
    ({"exclusiveMaximum": 1}, ["0.999", "0.9999999999999999", "-3", "0"],
     ["1", "1.0", "1.5", "0.99999999999999999"]),   # the last is 1.0 as a double
    ({"exclusiveMinimum": -1.5, "exclusiveMaximum": 2.25},
     ["-1.4999", "-1", "-0.5", "0", "2.24999", "2", "2.2"], ["-1.5", "-1.50", "2.25", "-2", "3"]),
    ({"minimum": -12.5, "maximum": -7}, ["-12.5", "-7", "-7.000", "-10.25"],
     ["-12.51", "-6.9", "0", "7"]),
    ({"minimum": 1.5, "maximum": 1.5}, ["1.5", "1.50", "1.500000"], ["1.4", "1.51", "2"]),
    ({"minimum": 1e-30, "maximum": 2e-30},
     ["0.000000000000000000000000000001", "0.0000000000000000000000000000015"],
     ["0.0000000000000000000000000000009", "0", "0.000000000000000000000000000003"]),
    ({"minimum": 1e40}, ["1" + "0" * 40, "2" + "0" * 40 + ".5"], ["9" * 40, "1e40"]),
    ({"maximum": -1e40}, ["-1" + "0" * 40], ["-" + "9" * 40]),
])
def test_a_number_is_held_to_its_range(bounds, whole, refused):
    node = schema(number(**bounds))
    for text in whole:
        assert run(text, node) is True, text
        assert in_range(text, bounds, node.num_range[2]), text
    for text in refused:
        assert run(text, node) is not True, text
        assert not in_range(text, bounds), text


def test_a_prefix_is_refused_where_no_number_in_range_continues_it():
    node = schema(number(minimum=0.1, maximum=0.2))
    assert run("0.", node) is False and run("0.1", node) is True
    assert refused_at(node, "0.3") == 2 and refused_at(node, "0.09") == 2   # 0.0x < 0.1
    assert refused_at(node, "1") == 0 and refused_at(node, "0.20001") == 6
    # after "-0." with maximum 0 exclusive: -0.000...1 is still below 0, within the cap
    node = schema(number(exclusiveMaximum=0))
    assert run("-0.", node) is False and run("-0.0000000000000000000000000001", node) is True
    assert run("0", node) is None and run("-0", node) is False
    # the cap: 32 bytes, and the last fraction digit must not leave a number at zero
    assert run("-0." + "0" * 28, node) is False and run("-0." + "0" * 28 + "1", node) is True
    assert run("-0." + "0" * 29, node) is None


def test_bounds_hold_with_no_type_in_type_lists_anyof_and_objects():
    node = schema({"type": "object", "properties": {
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "any": {"maximum": 5},                                 # no type: numbers are held
        "maybe": {"anyOf": [{"type": "number", "exclusiveMinimum": 2}, {"type": "null"}]},
        "either": {"type": ["number", "string"], "minimum": 7, "maximum": 7}},
        "required": ["score", "any", "maybe", "either"]})
    assert run('{"score": 0.25, "any": "text", "maybe": 2.5, "either": 7.0}', node) is True
    assert run('{"score": 1, "any": -4.5, "maybe": null, "either": "x"}', node) is True
    for bad in ['{"score": 1.5', '{"score": 0.5, "any": 6', '{"score": 0.5, "any": 1, "maybe": 2,',
                '{"score": 0.5, "any": 1, "maybe": 1,', '{"score": 0, "any": 0, "maybe": 3, "either": 8']:
        assert run(bad, node) is None, bad


@pytest.mark.parametrize("bad, message", [
    (number(minimum=3, maximum=2), "no number fits 'minimum' and 'maximum'"),
    (number(exclusiveMinimum=1, exclusiveMaximum=1), "no number fits"),
    (number(minimum=1, exclusiveMaximum=1), "no number fits 'minimum' and 'exclusiveMaximum'"),
    # adjacent doubles: no double lies strictly between them
    (number(exclusiveMinimum=0.1, exclusiveMaximum=0.10000000000000002), "no number fits"),
])
def test_a_range_with_no_number_is_refused(bad, message):
    assert_refused(bad, message)


def test_an_empty_number_range_leaves_the_other_types():
    node = schema({"type": ["number", "null"], "minimum": 3, "maximum": 2})
    assert run("null", node) is True and run("3", node) is None and run("2", node) is None
    node = schema({"minimum": 3, "maximum": 2})     # no type: no number, nor integer
    assert run('"x"', node) is True and run("3", node) is None and run("2", node) is None


def test_equal_bounds_hold_the_one_value_and_its_spellings():
    node = schema(number(minimum=-0.25, maximum=-0.25))
    assert run("-0.25", node) is True and run("-0.250", node) is True
    assert run("-0.2", node) is False and run("-0.3", node) is None and run("0", node) is None


# ---- exactly the numbers in range, and never a dead end --------------------------------------

# decimals with few digits: the oracle's brute force stays small and exact
small_bound = st.none() | st.builds(lambda k, j: k / 10 ** j if j else k,
                                    st.integers(-60, 60), st.integers(0, 2))


def bounds_of(lo, xlo, hi, xhi):
    s = {}
    for key, v in zip(BOUND_KEYS, (lo, xlo, hi, xhi)):
        if v is not None:
            s[key] = v
    return s


def compiled(s):
    """s's node, or None when it holds no number (the compiler says so)."""
    try:
        return schema(number(**s))
    except jc.SchemaError as e:
        assert "no number fits" in str(e)
        return None


@hypothesis.given(small_bound, small_bound, small_bound, small_bound,
                  st.text(alphabet="-0123456789.", min_size=1, max_size=6))
@hypothesis.settings(max_examples=400, deadline=None)
def test_a_text_is_whole_exactly_when_in_range_and_refused_only_when_nothing_continues_it(
        lo, xlo, hi, xhi, text):
    s = bounds_of(lo, xlo, hi, xhi)
    hypothesis.assume(s)
    node = compiled(s)
    hypothesis.assume(node is not None)
    got = run(text, node)
    assert (got is True) == in_range(text, s), (s, text, got)
    if got is None:     # no completion of up to 3 more bytes is in range
        for n in range(1, 4):
            for tail in itertools.product("0123456789.", repeat=n):
                assert not in_range(text + "".join(tail), s), (s, text, tail)


@hypothesis.given(small_bound, small_bound, small_bound, small_bound,
                  st.integers(-10 ** 5, 10 ** 5), st.integers(0, 5), st.integers(0, 3))
@hypothesis.settings(max_examples=400, deadline=None)
def test_every_short_decimal_in_range_is_taken(lo, xlo, hi, xhi, k, places, zeros):
    s = bounds_of(lo, xlo, hi, xhi)
    hypothesis.assume(s)
    node = compiled(s)
    whole, frac = divmod(abs(k), 10 ** places)          # k / 10**places, written out
    text = ("-" if k < 0 else "") + str(whole) + (f".{frac:0{places}d}" if places else "")
    text += ("." if not places and zeros else "") + "0" * zeros      # trailing zeros too
    if node is None:
        assert not in_range(text, s)
    elif in_range(text, s):
        assert run(text, node) is True, (s, text)
    else:
        assert run(text, node) is not True, (s, text)


wide_bound = (st.none() | st.floats(-1e40, 1e40, allow_nan=False)
              | st.floats(-1e-25, 1e-25, allow_nan=False) | st.integers(-10 ** 35, 10 ** 35)
              | small_bound)


@hypothesis.given(wide_bound, wide_bound, wide_bound, wide_bound, st.integers(0, 2 ** 32))
@hypothesis.settings(max_examples=200, deadline=None)
def test_random_walks_never_dead_end_and_end_in_range(lo, xlo, hi, xhi, seed):
    s = bounds_of(lo, xlo, hi, xhi)
    hypothesis.assume(s)
    node = compiled(s)
    hypothesis.assume(node is not None)
    cap = node.num_range[2]
    rng = np.random.default_rng(seed)
    for _ in range(5):
        text = walk(node, jc.value_grammar(node), b"", rng)
        assert in_range(text.decode(), s, cap), (s, text)
        json.loads(text)


# ---- an integer's multipleOf ------------------------------------------------------------------

@hypothesis.given(st.none() | st.integers(-60, 60), st.none() | st.integers(-60, 60),
                  st.integers(2, 12), st.integers(0, 2 ** 32))
@hypothesis.settings(max_examples=200, deadline=None)
def test_an_integers_multiple_of_is_held_exactly_with_its_range(lo, hi, step, seed):
    s = {"type": "integer", "multipleOf": step}
    if lo is not None:
        s["minimum"] = lo
    if hi is not None:
        s["maximum"] = hi
    fits = [v for v in range(-200, 201) if v % step == 0 and (lo is None or v >= lo)
            and (hi is None or v <= hi)]
    if lo is not None and hi is not None and not fits:
        with pytest.raises(jc.SchemaError, match="no integer fits .*'multipleOf'"):
            jc.compile_schema(s)
        return
    node = schema(s)
    for v in range(-200, 201):
        assert (run(str(v), node) is True) == (v in fits), (s, v)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        v = json.loads(walk(node, jc.value_grammar(node), b"", rng))
        assert v % step == 0 and (lo is None or v >= lo) and (hi is None or v <= hi), (s, v)


def test_a_far_off_multiple_fits_past_the_cap():
    node = schema({"type": "integer", "minimum": 1, "multipleOf": 10 ** 40})
    assert run("1" + "0" * 40, node) is True and run("0", node) is None


# ---- a model's reply ---------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_tiny_models_constrained_number_is_in_range(temperature):
    s = {"type": "object", "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1},
                                          "shift": {"type": "number", "exclusiveMinimum": -1.5,
                                                    "exclusiveMaximum": 2.25}},
         "required": ["score", "shift"], "additionalProperties": False}
    value = json.loads(generate(tiny_model(), schema(s), temperature))
    assert 0 <= value["score"] <= 1 and -1.5 < value["shift"] < 2.25, value
