"""A JSON Schema `pattern` as an automaton over code points (runtime/json_constraint.py
holds a string to it as the reply is written; see its `_pat_byte`).

`Pattern(source, min_len, max_len)` parses a subset of ECMA-262 regular expressions
(`_RegexParser`: literals, escapes, ".", classes, groups, |, ? * + {n,m}, ^ at the start
and $ at the end; anything else is a PatternError naming it) into an NFA over code points
(Thompson's construction, `_Nfa`). The NFA is followed as a set of states, cached per
(set, character): the subset construction, done lazily. Only states that can still
reach the match are kept, so a nonempty set always has a continuation; with
minLength/maxLength a set must also have a path to a match of a length that fits
(`_length_table`).
"""
from __future__ import annotations

import bisect


class PatternError(ValueError):
    """The pattern uses something we do not support, or matches no string (the message
    names the keyword 'pattern': it is shown as a schema error)."""


# JSON Schema's `pattern` is an ECMA-262 regular expression, matched anywhere in the string
# (search: "abc" means "contains abc"). We parse a subset ourselves (_RegexParser) into an
# NFA over code points (_Nfa), and follow it as a set of NFA states, cached per (set,
# character): the subset determinized lazily. Character sets are tuples of code point
# ranges (lo, hi), inclusive; surrogates are left out of every set, since a JSON string
# here cannot hold one, so a set that has only surrogates leads nowhere.
MAX_PATTERN_CHARS = 1000        # the pattern's source
MAX_PATTERN_STATES = 2000       # its NFA's character states: a{1000} has 1000
MAX_PATTERN_NESTING = 32        # groups inside groups
MAX_PATTERN_REPEAT = 1000       # n and m in {n,m}
# The successor sets' sizes, summed over the character states. A new set of states costs
# up to this much to build (a union of successor sets), so it bounds the time a character
# can take; nested optional repeats ((a?){1000}: each set holds every later a) pass it.
MAX_PATTERN_SUCCESSORS = 50_000
MAX_LENGTH_STEPS = 10000        # path lengths scanned, with minLength/maxLength (Pattern)
MAX_LENGTH_WORK = 2_000_000     # state visits in that scan
MAX_PATTERN_CACHE = 100_000     # remembered transitions before the cache starts over
# ... or states held in its sets (about 40 bytes each): [ab]*a[ab]{1000}[ab]{900}$ makes
# a new set of ~1000 states a character, 60 MB per 1000 characters, without end.
MAX_PATTERN_HELD = 500_000
MAX_CP = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)


def _cp_ranges(pairs) -> tuple:
    """Sorted, merged ranges, without surrogates."""
    out: list = []
    for lo, hi in sorted(pairs):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    cut = []
    for lo, hi in out:      # cut the surrogates out
        if lo < _SURROGATES[0]:
            cut.append((lo, min(hi, _SURROGATES[0] - 1)))
        if hi > _SURROGATES[1]:
            cut.append((max(lo, _SURROGATES[1] + 1), hi))
    return tuple(cut)


def _cp_negate(ranges) -> tuple:
    out, nxt = [], 0
    for lo, hi in ranges:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_CP:
        out.append((nxt, MAX_CP))
    return _cp_ranges(out)


def _cp_in(ranges, c: int) -> bool:
    i = bisect.bisect_right(ranges, (c, MAX_CP + 1)) - 1
    return i >= 0 and ranges[i][0] <= c <= ranges[i][1]


# ECMA's classes: \d and \w are ASCII; \s is ECMA's WhiteSpace and LineTerminator; "." is
# anything but a line terminator.
_ANY_CP = _cp_ranges([(0, MAX_CP)])
_DIGIT_CP = _cp_ranges([(0x30, 0x39)])
_WORD_CP = _cp_ranges([(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)])
_SPACE_CP = _cp_ranges([(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680),
                        (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F),
                        (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF)])
_DOT_CP = _cp_negate(_cp_ranges([(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]))
_CLASS_ESCAPES = {"d": _DIGIT_CP, "D": _cp_negate(_DIGIT_CP), "w": _WORD_CP,
                  "W": _cp_negate(_WORD_CP), "s": _SPACE_CP, "S": _cp_negate(_SPACE_CP)}
_CHAR_ESCAPES = {"t": 0x09, "n": 0x0A, "v": 0x0B, "f": 0x0C, "r": 0x0D}
# Escapes of letters and digits we refuse, with what they mean (any other is refused too:
# ECMA reads "\q" as "q", Python refuses it, so its meaning depends on the validator).
_ESCAPES_REFUSED = {"b": "a word boundary '\\b'", "B": "a word boundary '\\B'",
                    "k": "a named backreference '\\k'", "p": "a Unicode property '\\p'",
                    "P": "a Unicode property '\\P'", "c": "a control escape '\\c'",
                    "0": "an escape '\\0'", **{d: f"a backreference '\\{d}'" for d in "123456789"}}


class _RegexParser:
    """A regex subset -> a tree of tuples: ("set", ranges), ("seq", items), ("alt", items),
    ("rep", item, lo, hi or None), and ("bol",) / ("eol",) for ^ and $ (kept at the
    start and the end of a top-level alternative only: see parse)."""

    def __init__(self, source: str):
        self.src, self.pos, self.depth = source, 0, 0

    def fail(self, what: str):
        raise PatternError(f"'pattern' {self.src[:80]!r}: {what} is not supported "
                          f"(at character {self.pos})")

    def peek(self, k: int = 0) -> str:
        return self.src[self.pos + k] if self.pos + k < len(self.src) else ""

    def parse(self) -> tuple:
        """The pattern as ("alt", branches), each branch (anchored at the start, the tree,
        anchored at the end)."""
        tree = self.alternation()
        if self.pos < len(self.src):        # alternation stops only at ")" or the end
            self.fail("an unbalanced ')'")
        branches = tree[1] if tree[0] == "alt" else (tree,)
        return tuple(self._anchors(b) for b in branches)

    def _anchors(self, branch: tuple) -> tuple:
        items = list(branch[1]) if branch[0] == "seq" else [branch]
        bol = bool(items) and items[0] == ("bol",)
        eol = len(items) > bol and items[-1] == ("eol",)
        body = ("seq", tuple(items[bol:len(items) - eol]))
        if _has_anchor(body):
            self.pos = 0
            self.fail("'^' or '$' anywhere but the start or the end of the pattern")
        return bol, body, eol

    def alternation(self) -> tuple:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.sequence())
        return branches[0] if len(branches) == 1 else ("alt", tuple(branches))

    def sequence(self) -> tuple:
        items = []
        while self.peek() not in ("", "|", ")"):
            items.append(self.quantified(self.atom()))
        return ("seq", tuple(items))

    def atom(self) -> tuple:
        c = self.peek()
        self.pos += 1
        if c == "(":
            return self.group()
        if c == "[":
            return ("set", self.char_class())
        if c == ".":
            return ("set", _DOT_CP)
        if c == "^":
            return ("bol",)
        if c == "$":
            return ("eol",)
        if c == "\\":
            got = self.escape(in_class=False)
            return ("set", got if isinstance(got, tuple) else _cp_ranges([(got, got)]))
        if c in "*+?" or (c == "{" and self._repeat_at(self.pos - 1)):
            self.pos -= 1
            self.fail(f"a quantifier '{c}' with nothing to repeat")
        return ("set", self.literal(c))

    def literal(self, c: str) -> tuple:
        if _SURROGATES[0] <= ord(c) <= _SURROGATES[1]:
            self.fail("a lone surrogate")
        return _cp_ranges([(ord(c), ord(c))])

    def group(self) -> tuple:
        if self.peek() == "?":
            if self.src.startswith("?:", self.pos):
                self.pos += 2
            elif self.src[self.pos:self.pos + 2] in ("?=", "?!"):
                self.fail("a lookahead '(" + self.src[self.pos:self.pos + 2] + "'")
            elif self.src[self.pos:self.pos + 3] in ("?<=", "?<!"):
                self.fail("a lookbehind '(" + self.src[self.pos:self.pos + 3] + "'")
            elif self.src.startswith("?<", self.pos):     # a named group: just a group here
                end = self.src.find(">", self.pos)
                name = self.src[self.pos + 2:end] if end > 0 else ""
                if not name or not all(ch.isalnum() or ch in "_$" for ch in name):
                    self.fail("a group name that is not a word")
                self.pos = end + 1
            else:
                self.fail("a group modifier or inline flag '(?'")
        self.depth += 1
        if self.depth > MAX_PATTERN_NESTING:
            self.fail(f"nesting groups more than {MAX_PATTERN_NESTING} deep")
        inner = self.alternation()
        self.depth -= 1
        if self.peek() != ")":
            self.fail("a '(' without its ')'")
        self.pos += 1
        return inner

    def _repeat_at(self, i: int):
        """(lo, hi or None, the index after it) for a "{n}", "{n,}" or "{n,m}" at i, else
        None (then "{" is a literal, as ECMA's Annex B and Python read it)."""
        end = self.src.find("}", i)
        if end < 0:
            return None
        lo, comma, hi = self.src[i + 1:end].partition(",")
        if not lo and comma and _is_number(hi):
            self.pos = i
            self.fail("'{,n}' (ECMA reads it as text, Python as {0,n}; write {0,n})")
        if not _is_number(lo) or not (_is_number(hi) or hi == ""):
            return None
        if not comma:
            return int(lo), int(lo), end + 1
        return int(lo), (int(hi) if hi else None), end + 1

    def quantified(self, item: tuple) -> tuple:
        c = self.peek()
        if c in ("*", "+", "?"):
            lo, hi, nxt = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c] + (self.pos + 1,)
        elif c == "{" and self._repeat_at(self.pos):
            lo, hi, nxt = self._repeat_at(self.pos)
            if max(lo, hi or 0) > MAX_PATTERN_REPEAT:
                self.fail(f"a repeat count above {MAX_PATTERN_REPEAT}")
            if hi is not None and hi < lo:
                self.fail("a repeat '{n,m}' with m below n")
        else:
            return item
        if item[0] in ("bol", "eol"):
            self.fail("a quantifier on '^' or '$'")
        self.pos = nxt
        if self.peek() == "?":      # lazy: the same strings, matched in another order
            self.pos += 1
        if self.peek() in ("*", "+", "?") or (self.peek() == "{" and self._repeat_at(self.pos)):
            self.fail("a quantifier on a quantifier")
        return ("rep", item, lo, hi)

    def char_class(self) -> tuple:
        negate = self.peek() == "^"
        self.pos += negate
        if self.peek() == "]":
            self.fail("an empty class '[]' or '[^]' (ECMA and Python read it differently)")
        pairs: list = []
        while self.peek() != "]":
            if self.peek() == "":
                self.fail("a '[' without its ']'")
            lo = self.class_atom()
            if self.peek() == "-" and self.peek(1) not in ("]", ""):
                self.pos += 1
                hi = self.class_atom()
                if isinstance(lo, tuple) or isinstance(hi, tuple):
                    self.fail("a range with a class escape as an end ('[\\d-z]')")
                if hi < lo:
                    self.fail("a range out of order")
                pairs.append((lo, hi))
            elif isinstance(lo, tuple):
                pairs.extend(lo)
            else:
                pairs.append((lo, lo))
        self.pos += 1
        ranges = _cp_ranges(pairs)
        return _cp_negate(ranges) if negate else ranges

    def class_atom(self):
        """One code point, or a class escape's ranges."""
        c = self.peek()
        self.pos += 1
        if c == "\\":
            return self.escape(in_class=True)
        return self.literal(c)[0][0]

    def escape(self, in_class: bool):
        """After a backslash: a code point, or a class escape's ranges."""
        c = self.peek()
        self.pos += 1
        if c == "":
            self.fail("a '\\' at the end")
        if c in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[c]
        if c in _CHAR_ESCAPES:
            return _CHAR_ESCAPES[c]
        if c == "b" and in_class:           # [\b] is a backspace in ECMA and Python
            return 0x08
        if c in ("u", "x"):
            width = 4 if c == "u" else 2
            digits = self.src[self.pos:self.pos + width]
            if len(digits) != width or not all(d in "0123456789abcdefABCDEF" for d in digits):
                self.fail(f"'\\{c}' without {width} hex digits")
            self.pos += width
            cp = int(digits, 16)
            if _SURROGATES[0] <= cp <= _SURROGATES[1]:
                self.fail("a surrogate escape (write the character itself)")
            return cp
        if c.isascii() and c.isalnum():
            self.pos -= 1
            self.fail(_ESCAPES_REFUSED.get(c, f"an escape '\\{c}'"))
        return ord(c)                       # an escaped metacharacter or punctuation


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _has_anchor(tree: tuple) -> bool:
    kind = tree[0]
    if kind in ("bol", "eol"):
        return True
    if kind in ("seq", "alt"):
        return any(_has_anchor(t) for t in tree[1])
    return kind == "rep" and _has_anchor(tree[1])


class _Nfa:
    """Thompson's construction: a state is a character state (ranges, one next state) or
    an epsilon state (ranges None, any number of next states)."""

    def __init__(self):
        self.ranges: list = []
        self.outs: list = []
        self.n_chars = 0

    def state(self, ranges=None) -> int:
        self.n_chars += ranges is not None
        if self.n_chars > MAX_PATTERN_STATES or len(self.outs) > 4 * MAX_PATTERN_STATES:
            raise PatternError(f"'pattern' needs more than {MAX_PATTERN_STATES} states "
                              "(repeat counts multiply: (a{100}){100} is 10,000)")
        self.ranges.append(ranges)
        self.outs.append([])
        return len(self.outs) - 1

    def build(self, tree) -> tuple:
        """States for the tree -> (its start, its end: an epsilon state with no exit yet)."""
        kind = tree[0]
        if kind == "set":
            s, e = self.state(tree[1]), self.state()
            if tree[1]:     # an empty set ([^\s\S], only surrogates) leads nowhere: no exit
                self.outs[s].append(e)
            return s, e
        if kind == "alt":
            s, e = self.state(), self.state()
            for item in tree[1]:
                a, z = self.build(item)
                self.outs[s].append(a)
                self.outs[z].append(e)
            return s, e
        if kind == "seq":
            return self.chain(self.state(), tree[1])
        _, item, lo, hi = tree          # "rep": lo copies, then a loop or hi - lo optional ones
        s, e = self.chain(self.state(), (item,) * lo)
        if hi is None:
            a, z = self.build(item)
            loop, end = self.state(), self.state()
            self.outs[e].append(loop)
            self.outs[loop] += [a, end]
            self.outs[z].append(loop)
            return s, end
        end = self.state()
        for _ in range(hi - lo):
            a, z = self.build(item)
            self.outs[e] += [a, end]
            e = z
        self.outs[e].append(end)
        return s, end

    def chain(self, s: int, items) -> tuple:
        e = s
        for item in items:
            a, z = self.build(item)
            self.outs[e].append(a)
            e = z
        return s, e


def _pattern_nfa(source: str) -> tuple:
    """(nfa, start, accept) for the pattern, searched: a side without its anchor may have
    any characters beyond the match (line terminators too: search is not '.')."""
    if len(source) > MAX_PATTERN_CHARS:
        raise PatternError(f"'pattern' is longer than {MAX_PATTERN_CHARS} characters")
    branches = _RegexParser(source).parse()
    anything = ("rep", ("set", _ANY_CP), 0, None)
    tree = ("alt", tuple(("seq", ((() if bol else (anything,)) + (body,) + (() if eol else (anything,))))
                         for bol, body, eol in branches))
    nfa = _Nfa()
    start, accept = nfa.build(tree)
    return nfa, start, accept


class Pattern:
    """A string pattern, followed code point by code point: the recognizer's state is a
    frozenset of NFA character states (and `accept`, once the text so far matches).
    Every state in a set can still reach `accept` (the others are dropped), so a nonempty
    set always has a continuation. With minLength/maxLength, `ok` also asks whether one
    of the set's paths to `accept` has a length that fits (see _length_table)."""

    def __init__(self, source: str, min_len: int = 0, max_len: int | None = None):
        self.source, self.min_len, self.max_len = source, min_len, max_len
        nfa, start, self.accept = _pattern_nfa(source)
        live = _live_states(nfa, self.accept)
        self.ranges = {q: nfa.ranges[q] for q in live if nfa.ranges[q] is not None}
        closure = _Closures(nfa, live, self.accept)
        # per character state: the set its character leads to
        self.after = {q: closure(nfa.outs[q][0]) for q in self.ranges}
        self.start = closure(start)
        if sum(map(len, self.after.values())) > MAX_PATTERN_SUCCESSORS:
            _too_complex()
        # what compiling cost, in state visits (a schema's patterns share a budget of it)
        self.work = closure.work + len(nfa.outs)
        self.bounded = min_len > 0 or max_len is not None
        if self.bounded:
            self.lengths, self.pre, self.period, work = _length_table(self.after, self.accept, max_len)
            self.work += work // 4      # a visit there is a set lookup, cheaper
        self._moves: dict = {}
        self._step: dict = {}
        self._lens: dict = {}
        self._held = 0              # states in the sets the caches hold (about 40 bytes each)
        if not self.start or not self.ok(self.start, 0):
            within = " within 'minLength' and 'maxLength'" if self.bounded else ""
            raise PatternError(f"no string matches 'pattern' {source[:80]!r}{within}")

    def moves(self, at: frozenset) -> tuple:
        """The set's transitions: ((lo, hi, next set), ...), sorted, for the code points
        that lead somewhere. Computed once per set, on the boundaries of its ranges."""
        got = self._moves.get(at)
        if got is None:
            # States with one ranges tuple (the copies of a repeated atom share it) move
            # together: one union of their successors per tuple. Then a sweep over the
            # ranges' ends, with the tuples that hold each piece: a piece's target is built
            # once per combination of tuples, not once per piece and state (a class of 450
            # characters repeated 300 times took 0.8 s a set that way).
            groups: dict = {}
            for q in at:
                if q != self.accept:
                    groups.setdefault(id(self.ranges[q]), (self.ranges[q], []))[1].append(q)
            union = [(r, frozenset().union(*(self.after[q] for q in qs))) for r, qs in groups.values()]
            starts: dict = {}
            ends: dict = {}
            for i, (ranges, _) in enumerate(union):
                for lo, hi in ranges:
                    starts.setdefault(lo, []).append(i)
                    ends.setdefault(hi + 1, []).append(i)
            points = sorted(starts.keys() | ends.keys())
            active: set = set()
            targets: dict = {}
            got = []
            for lo, nxt in zip(points, points[1:]):
                active.difference_update(ends.get(lo, ()))
                active.update(starts.get(lo, ()))
                key = frozenset(active)
                target = targets.get(key)
                if target is None:
                    target = targets[key] = frozenset().union(*(union[i][1] for i in key))
                if not target:
                    continue
                if got and got[-1][1] == lo - 1 and got[-1][2] == target:
                    got[-1] = (got[-1][0], nxt - 1, got[-1][2])
                else:
                    got.append((lo, nxt - 1, target))
            got = self._moves[at] = tuple(got)
            self._held += len(at) + sum(len(t) for t in targets.values())
        return got

    def step(self, at: frozenset, c: int):
        """The set after code point c, or None when c leads nowhere."""
        key = (at, c)
        if key in self._step:
            return self._step[key]
        if len(self._step) > MAX_PATTERN_CACHE or self._held > MAX_PATTERN_HELD:
            self._step.clear()                      # start over rather than grow forever
            self._moves.clear()
            self._lens.clear()
            self._held = 0
        moves = self.moves(at)
        i = bisect.bisect_right(moves, (c, MAX_CP + 1)) - 1
        got = moves[i][2] if i >= 0 and moves[i][0] <= c <= moves[i][1] else None
        self._step[key] = got
        return got

    def ok(self, at: frozenset, n_chars: int) -> bool:
        """After n_chars characters that led to `at`, can the string still be finished
        within minLength..maxLength?"""
        if not self.bounded:
            return True
        lens = self._lens.get(at)
        if lens is None:
            lens = 0
            for q in at:
                lens |= self.lengths.get(q, 0)
            self._lens[at] = lens
        hi = None if self.max_len is None else self.max_len - n_chars
        return _has_length(lens, self.pre, self.period, max(0, self.min_len - n_chars), hi)

    def can_take(self, at: frozenset, lo: int, hi: int, n_chars: int) -> bool:
        """Does some code point in lo..hi lead from `at` to a set that is ok with n_chars?
        (for a character that is partly written: a UTF-8 lead byte, an escape)"""
        moves = self.moves(at)
        i = max(0, bisect.bisect_right(moves, (lo, MAX_CP + 1)) - 1)
        while i < len(moves) and moves[i][0] <= hi:
            if moves[i][1] >= lo and self.ok(moves[i][2], n_chars):
                return True
            i += 1
        return False

    def matches(self, text: str) -> bool:
        """Does the whole string match (for enum and const values)?"""
        at = self.start
        for ch in text:
            at = self.step(at, ord(ch))
            if at is None:
                return False
        return self.accept in at


def _too_complex():
    raise PatternError(f"'pattern' is too complex: its automaton's successor sets hold more "
                      f"than {MAX_PATTERN_SUCCESSORS:,} states (nested optional repeats such "
                      "as (a?){1000} do that)")


def _live_states(nfa: _Nfa, accept: int) -> frozenset:
    """The states from which `accept` can be reached (the others are dead ends)."""
    back: dict = {}
    for q, outs in enumerate(nfa.outs):
        for r in outs:
            back.setdefault(r, []).append(q)
    live, todo = {accept}, [accept]
    while todo:
        for q in back.get(todo.pop(), ()):
            if q not in live:
                live.add(q)
                todo.append(q)
    return frozenset(live)


class _Closures:
    """state -> the live character states (and accept) reached from it by epsilon moves."""

    def __init__(self, nfa: _Nfa, live: frozenset, accept: int):
        self.nfa, self.live, self.accept = nfa, live, accept
        self.interned: dict = {}
        self.work = 0               # states visited, summed over the calls

    def __call__(self, q: int) -> frozenset:
        seen, todo, out = {q}, [q], []
        while todo:
            s = todo.pop()
            if s not in self.live:
                continue
            if self.nfa.ranges[s] is not None or s == self.accept:
                out.append(s)
                continue
            for r in self.nfa.outs[s]:
                if r not in seen:
                    seen.add(r)
                    todo.append(r)
        self.work += len(seen)
        if self.work > 4 * MAX_PATTERN_SUCCESSORS:
            _too_complex()
        got = frozenset(out)
        return self.interned.setdefault(got, got)   # one object per set: cheaper hashing


def _length_table(after: dict, accept: int, max_len):
    """For minLength/maxLength: per state, the lengths of its paths to accept, as bits of
    an int (bit k: some path of k characters), up to where they repeat. Q_k, the states
    with a path of exactly k characters, is a function of Q_(k-1); once a set repeats
    (Q_j == Q_i, i < j), Q is periodic from i with period j - i. Returns (bits per state,
    i, j - i, the work done). Lengths past maxLength are never asked about, so the scan stops there."""
    preds: dict = {}
    for q, targets in after.items():
        for r in targets:
            preds.setdefault(r, set()).add(q)
    seen: dict = {}
    members: dict = {}              # state -> the k with it in Q_k
    cur, k, work = frozenset({accept}), 0, 0
    while cur not in seen and (max_len is None or k <= max_len):
        work += 1 + sum(len(preds.get(r, ())) for r in cur)
        if k >= MAX_LENGTH_STEPS or work > MAX_LENGTH_WORK:
            raise PatternError("'pattern' is too complex to hold to 'minLength'/'maxLength'")
        seen[cur] = k
        for q in cur:
            members.setdefault(q, []).append(k)
        cur = frozenset(p for r in cur for p in preds.get(r, ()))
        k += 1
    pre = seen.get(cur, k)          # past maxLength: "periodic" from k with nothing in it
    bits = {}
    for q, ks in members.items():
        buf = bytearray(k // 8 + 1)
        for i in ks:
            buf[i >> 3] |= 1 << (i & 7)
        bits[q] = int.from_bytes(buf, "little")
    return bits, pre, max(1, k - pre), work


def _has_length(lens: int, pre: int, period: int, lo: int, hi) -> bool:
    """Is some k in lo..hi (hi None: no end) a length in `lens` (bits below pre + period;
    from pre on they repeat every period)?"""
    if hi is not None and hi < lo:
        return False
    top = pre + period - 1          # the last bit held
    last = top if hi is None else min(hi, top)
    if lo <= last and lens >> lo & ((1 << (last - lo + 1)) - 1):
        return True
    if hi is not None and hi <= top:
        return False
    start = max(lo, top + 1)        # past the bits held: look up k's residue in the period
    cycle = lens >> pre
    if hi is None or hi - start + 1 >= period:
        return cycle != 0
    r = (start - pre) % period
    return ((cycle | cycle << period) >> r) & ((1 << (hi - start + 1)) - 1) != 0
