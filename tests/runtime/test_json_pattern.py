"""JSON Schema `pattern` on strings, held by the JSON constraint (runtime/json_constraint.py)
byte by byte: the pattern is matched against the string's decoded characters, however the
model spells them (JSON escapes, UTF-8), with search semantics (unanchored sides may hold
anything), together with minLength/maxLength, and no accepted prefix is a dead end.

The oracle is Python's `re` (with re.ASCII: ECMA's \\d and \\w are ASCII). Where ECMA and
Python differ (ECMA's "." also stops at \\r, \\u2028 and \\u2029, its \\s is Unicode
whitespace), a pattern comes with its Python translation.
"""
import json
import re

import numpy as np
import pytest

from runtime import json_constraint as jc
from runtime import string_pattern
from tests.runtime.test_json_constraint import run, schema

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

ECMA_SPACE = "\\t\\n\\v\\f\\r \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"
ECMA_DOT = "[^\\n\\r\\u2028\\u2029]"

# (the JSON Schema pattern, the same language for Python's re.search; None: the same text)
PATTERNS = [
    (r"^[A-Z]{3}-\d{4}$", None),
    (r"ab", None),                            # unanchored: the string contains "ab"
    (r"^a", None),
    (r"b$", None),
    (r"^(a|bc)*$", None),
    (r"^a?b+c{2,3}?$", None),                 # a lazy quantifier: the same strings
    (r"^[^a-c]*$", None),
    (r"\d{2,}", None),
    (r"^.{1,3}$", f"^{ECMA_DOT}{{1,3}}$"),
    (r"a.b", f"a{ECMA_DOT}b"),
    (r"^\w+@\w+\.[a-z]{2,}$", None),
    (r"^[é中]+\.?$", None),
    (r"^(?:x|y){0,2}z?$", None),
    (r"^(?<w>[xyz]+)$", r"^([xyz]+)$"),       # a named group: a group
    (r"^\s*\S+\s*$", f"^[{ECMA_SPACE}]*[^{ECMA_SPACE}]+[{ECMA_SPACE}]*$"),
    (r"a|^b|c$", None),
    (r"^(a(b(c)?)?)+$", None),
    (r"\\\/", None),                           # a backslash, then a slash
    (r"^[\u00e9-\u00ff\-]+$", None),
    (r"\"", None),                             # a double quote
    (r"^a{0}b$", None),
    (r"^$", None),
    (r"", None),
    (r"^😀?\W$", None),
    (r"[^\n]", None),
    (r"^[\t\n]x{,$", r"^[\t\n]x\{,$"),        # "{" not followed by a repeat count: a "{"
    (r"^(?:a|b)+?c*$", None),
]
IDS = [p for p, _ in PATTERNS]
ALPHABET = 'abcxyzABZ019-_.@{, \t\n"\\/é中😀'


def oracle(pattern, python):
    """Python's re.search for the pattern, with "$" meaning the very end (ECMA's: Python's
    "$" also matches before a final newline)."""
    rx = re.compile((python or pattern).replace("$", r"\Z"), re.ASCII)
    return lambda s: rx.search(s) is not None


@st.composite
def spelled(draw, text):
    """A JSON spelling of text, each character written as itself, a short escape, or
    \\uXXXX (any case), as a model might."""
    out = []
    for ch in text:
        ways = []
        if ch not in '"\\' and ord(ch) >= 0x20:
            ways.append(ch)
        short = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\n": "\\n", "\t": "\\t"}.get(ch)
        if short:
            ways.append(short)
        if ord(ch) <= 0xFFFF:
            ways += ["\\u%04x" % ord(ch), "\\u%04X" % ord(ch)]
        out.append(draw(st.sampled_from(ways)))
    return '"' + "".join(out) + '"'


def accepted(node, spelling):
    got = run(spelling, node)
    if got:
        assert json.loads(spelling) is not None       # an accepted reply is JSON
    return got is True


# ---- both ways against re, on strings from a small alphabet ------------------------------------

@pytest.mark.parametrize("pattern, python", PATTERNS, ids=IDS)
@hypothesis.given(data=st.data())
@hypothesis.settings(max_examples=60, deadline=None)
def test_a_string_is_whole_exactly_when_re_matches_it(pattern, python, data):
    node = schema({"type": "string", "pattern": pattern})
    text = data.draw(st.text(alphabet=ALPHABET, max_size=7))
    spelling = data.draw(spelled(text))
    assert accepted(node, spelling) == oracle(pattern, python)(text), (pattern, spelling)


@pytest.mark.parametrize("pattern, python", PATTERNS, ids=IDS)
@hypothesis.given(data=st.data())
@hypothesis.settings(max_examples=40, deadline=None)
def test_every_string_re_matches_is_taken_however_it_is_spelt(pattern, python, data):
    rx = (python or pattern).replace("$", r"\Z")
    text = data.draw(st.from_regex(re.compile(rx, re.ASCII), alphabet=ALPHABET))
    hypothesis.assume(len(text) <= 12)
    spelling = data.draw(spelled(text))
    assert accepted(node_of(pattern), spelling), (pattern, spelling)


_NODES: dict = {}


def node_of(pattern, **kw):
    key = (pattern, tuple(sorted(kw.items())))
    if key not in _NODES:
        _NODES[key] = schema({"type": "string", "pattern": pattern, **kw})
    return _NODES[key]


# ---- no dead ends ------------------------------------------------------------------------------

def walk(node, seed, max_bytes=14):
    """A random byte walk through a string of node: at each step the bytes are tried in a
    random order, and one that is taken is kept (so some byte must be). Every time the
    closing quote would be taken, the string so far is yielded."""
    rng = np.random.default_rng(seed)
    state = jc.feed(jc.value_grammar(node), b'"')
    text = b'"'
    for _ in range(max_bytes):
        closed = jc.feed(state, b'"')       # None, the string closed, or after "\": \"
        closed = closed is not None and jc.can_end(closed)
        if closed:
            yield json.loads(text + b'"')
        nxt = None
        for b in rng.permutation(256):
            nxt = jc.feed(state, bytes([b]))
            if nxt is not None and not (b == 0x22 and closed):
                break
            nxt = None
        assert nxt is not None or closed, (text, "a dead end")
        if nxt is None:
            return
        state, text = nxt, text + bytes([b])


@pytest.mark.parametrize("pattern, python", PATTERNS, ids=IDS)
def test_random_byte_walks_never_dead_end_and_close_only_on_a_match(pattern, python):
    matches = oracle(pattern, python)
    for seed in range(12):
        for s in walk(node_of(pattern), seed):
            assert matches(s), (pattern, s)


# ---- minLength / maxLength next to a pattern ---------------------------------------------------

BOUNDED = [
    (r"^(ab)*$", 3, 5),          # only "abab": "ab" is too short, "ababab" too long
    (r"^a*$", 2, None),
    (r"^(aaa)+$|^b*$", 4, 7),    # aaaaaa, or 4 to 7 b's
    (r"x", 0, 3),                # contains x, at most 3 characters
    (r"x", 4, None),
    (r"^[A-Z]{3}-\d{4}$", 8, 8),
    (r"^(a|bc)+$", 0, 3),
    (r"b$", 2, 2),
    (r"^(ab|c)*c$", 4, 6),
    (r"^.?(ab){2,}$", 5, 10),
]


@pytest.mark.parametrize("pattern, lo, hi", BOUNDED)
@hypothesis.given(data=st.data())
@hypothesis.settings(max_examples=50, deadline=None)
def test_a_bounded_string_is_whole_exactly_when_re_matches_and_its_length_fits(pattern, lo, hi, data):
    kw = {"minLength": lo} if hi is None else {"minLength": lo, "maxLength": hi}
    text = data.draw(st.text(alphabet="abcx-AZ09" if "[" in pattern else "abcx", max_size=9)
                     | st.from_regex(re.compile(pattern.replace("$", r"\Z")), alphabet="abcxAZ-09"))
    spelling = data.draw(spelled(text))
    want = oracle(pattern, None)(text) and lo <= len(text) <= (hi if hi is not None else 99)
    assert accepted(node_of(pattern, **kw), spelling) == want, (pattern, spelling)


@pytest.mark.parametrize("pattern, lo, hi", BOUNDED)
def test_bounded_walks_never_dead_end(pattern, lo, hi):
    kw = {"minLength": lo} if hi is None else {"minLength": lo, "maxLength": hi}
    for seed in range(12):
        for s in walk(node_of(pattern, **kw), seed, max_bytes=40):
            assert oracle(pattern, None)(s) and lo <= len(s) <= (hi or 99), (pattern, s)


@hypothesis.given(st.integers(0, 2 ** 12 - 1), st.integers(0, 6), st.integers(1, 6),
                  st.integers(0, 30), st.none() | st.integers(0, 30))
@hypothesis.settings(max_examples=500, deadline=None)
def test_the_length_lookup_agrees_with_the_lengths_spelt_out(bits, pre, period, lo, hi):
    """_has_length reads lengths as bits up to pre + period, repeating every period
    after pre: against the set of lengths up to 60 written out."""
    lens = bits & ((1 << (pre + period)) - 1)
    held = [k for k in range(61)
            if lens >> (k if k < pre + period else pre + (k - pre) % period) & 1]
    want = any(lo <= k and (hi is None or k <= hi) for k in held)
    assert string_pattern._has_length(lens, pre, period, lo, hi) == want


def test_the_length_bounds_steer_the_prefix():
    node = node_of(r"^(ab)*$", minLength=3, maxLength=5)
    assert run('"ab"', node) is None                  # a match, too short
    assert run('"abab"', node) is True
    assert run('"ababa', node) is None                # "ababab" would be too long
    node = node_of("x", maxLength=3)
    assert run('"aa', node) is False and run('"aax"', node) is True
    assert run('"aaa', node) is None                  # no room left for the x


# ---- escapes and UTF-8: the decoded characters are matched ------------------------------------

def test_escapes_and_utf8_are_matched_as_the_characters_they_write():
    node = node_of(r"^[a-z]$")
    assert run('"\\u0061"', node) is True
    assert run('"\\u00', node) is False               # \u0061..\u007a still come
    assert run('"\\u01', node) is None                # \u01xx: none is a-z
    assert run('"\\n', node) is None
    assert run('"\\', node) is False
    assert run('"é', node) is None
    assert run(b'"\xc3', node) is None                # a UTF-8 lead no a-z starts
    node = node_of(r"^[é😀]$")
    assert run(b'"\xc3', node) is False and run('"é"', node) is True
    assert run(b'"\xf0\x9f', node) is False and run('"😀"', node) is True
    assert run(b'"\xf0\x90', node) is None            # U+10000..U+10FFF: no 😀
    assert run('"\\u00e9"', node) is True
    assert run('"\\ud83d', node) is None              # a surrogate escape writes no character


def test_enum_and_const_strings_are_filtered_by_the_pattern():
    node = schema({"type": "string", "enum": ["ABC-1234", "abc", "XYZ-0000"],
                   "pattern": r"^[A-Z]{3}-\d{4}$"})
    assert node.literals == (b'"ABC-1234"', b'"XYZ-0000"')
    with pytest.raises(jc.SchemaError, match="no 'enum' or 'const' string fits"):
        schema({"const": "abc", "pattern": "x"})


def test_a_pattern_applies_to_strings_only_and_inside_objects():
    node = schema({"type": ["string", "integer"], "pattern": "^a"})
    assert run("7", node) is True and run('"b', node) is None and run('"ab"', node) is True
    node = schema({"type": "object", "properties": {"code": {"type": "string", "pattern": r"^\d+$"}},
                   "required": ["code"], "additionalProperties": False})
    assert run('{"code": "42"}', node) is True
    assert run('{"code": "4x', node) is None


# ---- refusals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern, message", [
    ("(?=a)", "a lookahead '(?=' is not supported"),
    ("a(?!b)", "a lookahead '(?!'"),
    ("(?<=a)b", "a lookbehind '(?<='"),
    ("(?<!a)b", "a lookbehind '(?<!'"),
    (r"(a)\1", "a backreference '\\1'"),
    (r"\bword", "a word boundary '\\b'"),
    (r"\p{L}", "a Unicode property '\\p'"),
    (r"\q", "an escape '\\q'"),
    ("a^b", "'^' or '$' anywhere but the start or the end"),
    ("a$b", "'^' or '$' anywhere but the start or the end"),
    ("(^a)", "'^' or '$' anywhere but the start or the end"),
    ("(?i)abc", "a group modifier or inline flag '(?'"),
    ("(?P<n>a)", "a group modifier or inline flag"),
    ("*a", "a quantifier '*' with nothing to repeat"),
    ("a**", "a quantifier on a quantifier"),
    ("a{2}+", "a quantifier on a quantifier"),
    ("^*", "a quantifier on '^' or '$'"),
    ("a{3,2}", "m below n"),
    ("a{,3}", "'{,n}'"),
    ("a{1001}", "a repeat count above 1000"),
    ("(a{100}){100}", "more than 2000 states"),
    ("(a?){1000}", "'pattern' is too complex: its automaton's successor sets hold more"),
    ("[]", "an empty class"),
    ("[^]", "an empty class"),
    ("[z-a]", "a range out of order"),
    (r"[\d-z]", "a range with a class escape"),
    ("[abc", "a '[' without its ']'"),
    ("(ab", "a '(' without its ')'"),
    ("ab)", "an unbalanced ')'"),
    ("a\\", "a '\\' at the end"),
    (r"\ud800", "a surrogate escape"),
    (r"\u12", "'\\u' without 4 hex digits"),
    ("(" * 40 + ")" * 40, "nesting groups more than 32 deep"),
    ("a" * 1001, "longer than 1000 characters"),
])
def test_unsupported_regex_features_are_refused_by_name(pattern, message):
    with pytest.raises(jc.SchemaError) as e:
        schema({"type": "string", "pattern": pattern})
    assert message in str(e.value)


@pytest.mark.parametrize("s, message", [
    ({"pattern": "[^\\s\\S]"}, "no string matches 'pattern'"),
    ({"pattern": r"^[\ud7ff-\ue000]$", "maxLength": 1}, None),   # fine: the ends are not surrogates
    ({"pattern": "^abc$", "minLength": 4}, "within 'minLength' and 'maxLength'"),
    ({"pattern": "^(ab)+$", "maxLength": 1}, "within 'minLength' and 'maxLength'"),
    ({"pattern": "^(ab)+$", "minLength": 3, "maxLength": 3}, "within 'minLength' and 'maxLength'"),
    ({"pattern": "^(a?){300}$", "minLength": 100}, "too complex to hold to 'minLength'/'maxLength'"),
    ({"pattern": "^a", "format": "date"}, "'pattern' next to 'format' 'date' is not supported"),
    ({"pattern": 5}, "'pattern' must be a string"),
])
def test_impossible_combinations_are_refused(s, message):
    if message is None:
        schema({"type": "string", **s})
        return
    with pytest.raises(jc.SchemaError) as e:
        schema({"type": "string", **s})
    assert message in str(e.value)


def test_a_format_that_is_not_checked_is_read_next_to_a_pattern():
    node = schema({"type": "string", "format": "email", "pattern": "@"})
    assert run('"a@b"', node) is True and run('"ab"', node) is None
