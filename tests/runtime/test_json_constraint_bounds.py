"""An integer's bounds (minimum, maximum, exclusiveMinimum, exclusiveMaximum) held by the
JSON constraint (runtime/json_constraint.py), byte by byte: every integer in range can be
written, none outside it, and no prefix is taken that no in-range integer continues (a
dead end would leave the sampler nothing to choose).

The oracle here is brute force: the canonical JSON spellings (str(int)) of the integers in
range, against the recognizer's scanner.
"""
import itertools
import json

import numpy as np
import pytest

from runtime import json_constraint as jc
from runtime import number_range
from tests.runtime.test_json_constraint import generate, refused_at, run, schema, tiny_model

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

INT_BYTES = b"-0123456789"


def int_schema(lo=None, hi=None, **kw):
    s = {"type": "integer", **kw}
    if lo is not None:
        s["minimum"] = lo
    if hi is not None:
        s["maximum"] = hi
    return schema(s)


def in_range(text, lo, hi):
    """Is text the one JSON spelling of an integer in lo..hi (None: unbounded)?"""
    try:
        v = int(text)
    except ValueError:
        return False
    return text == str(v) and (lo is None or v >= lo) and (hi is None or v <= hi)


def continues(text, lo, hi, max_bytes=4):
    """Brute force: does some in-range integer's spelling of at most max_bytes start with
    text? (exact for bounds within -50..50 and texts of up to 4 bytes: one of them
    continues into an unbounded side within 4 bytes)"""
    return any(in_range(text + "".join(tail), lo, hi)
               for n in range(max_bytes - len(text) + 1)
               for tail in itertools.product("0123456789", repeat=n))


# ---- what is taken and what is refused ------------------------------------------------------

def test_a_range_refuses_a_prefix_no_integer_in_it_continues():
    node = int_schema(10, 15)
    assert run("1", node) is False              # 10..15 continue it
    for text in ["10", "12", "15"]:
        assert run(text, node) is True
    for text in ["2", "9", "0", "-", "16", "100", "1.0", "1e1", "01"]:
        assert run(text, node) is None, text
    assert refused_at(int_schema(10, 15), "16") == 1       # at the 6, not later
    assert run("10 ", node) is True             # the integer ends where its text does


@pytest.mark.parametrize("bounds, whole, refused", [
    ({"minimum": 1.5, "maximum": 3.5}, ["2", "3"], ["1", "4"]),
    ({"exclusiveMinimum": 1, "exclusiveMaximum": 4}, ["2", "3"], ["1", "4"]),
    ({"exclusiveMinimum": -2.5, "exclusiveMaximum": 0.5}, ["-2", "-1", "0"], ["-3", "1", "-0"]),
    ({"minimum": -12, "maximum": -7}, ["-12", "-10", "-7"], ["-13", "-6", "0", "-01", "7"]),
    ({"maximum": 1e3}, ["1000", "-5", "0", "-" + "9" * 30], ["1001", "10000"]),
    # the stricter of minimum and exclusiveMinimum wins
    ({"minimum": 0, "exclusiveMinimum": 3, "maximum": 5}, ["4", "5"], ["0", "3"]),
    ({"minimum": 0}, ["0", "7", "9" * 32], ["-1", "-", "9" * 33]),
])
def test_float_negative_exclusive_and_one_sided_bounds(bounds, whole, refused):
    node = schema({"type": "integer", **bounds})
    for text in whole:
        assert run(text, node) is True, text
    for text in refused:
        assert run(text, node) is not True, text


def test_far_off_bounds_are_reachable_past_the_32_byte_cap():
    big = 10 ** 40
    node = int_schema(big, None)
    assert run(str(big), node) is True and run(str(big - 1), node) is not True
    node = int_schema(None, -big)
    assert run(str(-big), node) is True and run(str(-big + 1), node) is not True


def test_bounds_hold_in_type_lists_anyof_and_objects():
    node = schema({"type": "object", "properties": {
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "maybe": {"anyOf": [{"type": "integer", "exclusiveMaximum": 0}, {"type": "null"}]},
        "either": {"type": ["integer", "string"], "minimum": 7, "maximum": 7}},
        "required": ["stars", "maybe", "either"]})
    assert run('{"stars": 5, "maybe": -3, "either": 7}', node) is True
    assert run('{"stars": 5, "maybe": null, "either": "x"}', node) is True
    assert run('{"stars": 6', node) is None
    assert run('{"stars": 0', node) is None
    assert run('{"stars": 3, "maybe": 0', node) is None
    assert run('{"stars": 3, "maybe": null, "either": 8', node) is None


def test_enum_values_are_held_to_the_bounds():
    assert run("7", schema({"type": "integer", "enum": [3, 7], "maximum": 5})) is None
    assert run("3", schema({"type": "integer", "enum": [3, 7], "maximum": 5})) is True
    assert run("0.5", schema({"enum": [0.5, 2.5], "exclusiveMinimum": 1})) is None


def test_a_numbers_multiple_of_and_an_integers_fractional_one_are_enforced():
    # more in tests/runtime/test_json_multipleof.py
    assert run("7.5", schema({"type": "number", "multipleOf": 2})) is None
    assert run("8.0", schema({"type": "number", "multipleOf": 2})) is True
    assert run("3", schema({"type": "integer", "multipleOf": 2.5})) is False    # 30 ...
    assert run("5", schema({"type": "integer", "multipleOf": 2.5})) is True


def test_a_whole_multiple_of_is_held_with_the_range():
    node = schema({"type": "integer", "multipleOf": 5, "minimum": -12})
    for text in ["-10", "-5", "0", "5", "10", "1000"]:
        assert run(text, node) is True, text
    for text in ["3", "-15", "7", "-1"]:
        assert run(text, node) is not True, text
    assert run("-1", node) is False             # -10 continues it
    assert run("-2", node) is None              # nothing from -20 up to -29 fits
    assert run("4", schema({"type": "integer", "multipleOf": 2.0})) is True
    assert run("3", schema({"type": "integer", "multipleOf": 2})) is False      # 30 ...


@pytest.mark.parametrize("bad, message", [
    ({"type": "integer", "minimum": 3, "maximum": 2}, "no integer fits 'minimum' and 'maximum'"),
    ({"type": "integer", "minimum": 1.5, "maximum": 1.9}, "no integer fits"),
    ({"type": "integer", "exclusiveMinimum": 2, "exclusiveMaximum": 3},
     "no integer fits 'exclusiveMinimum' and 'exclusiveMaximum'"),
    ({"type": "integer", "minimum": float("nan")}, "'minimum' must be a number"),
    ({"type": "integer", "maximum": float("inf")}, "'maximum' must be a number"),
    ({"type": "integer", "enum": [7], "maximum": 5}, "no 'enum' or 'const' number fits"),
])
def test_a_range_with_no_integer_is_refused(bad, message):
    assert_refused(bad, message)


def assert_refused(bad: dict, message: str) -> None:
    with pytest.raises(jc.SchemaError) as e:
        jc.compile_schema(bad)
    assert message in str(e.value)


def test_an_empty_integer_range_leaves_the_other_types():
    node = schema({"type": ["integer", "null"], "minimum": 3, "maximum": 2})
    assert run("null", node) is True
    assert run("3", node) is None and run("2", node) is None


# ---- exactly the in-range integers, and never a dead end --------------------------------------

bound = st.none() | st.integers(-50, 50)


@hypothesis.given(bound, bound, st.text(alphabet="-0123456789", min_size=1, max_size=4))
@hypothesis.settings(max_examples=400, deadline=None)
def test_a_text_is_taken_exactly_when_an_in_range_integer_starts_with_it(lo, hi, text):
    hypothesis.assume(lo is None or hi is None or lo <= hi)
    # Bounded only: an integer without bounds is read by the plain number scanner, which
    # takes "-0" as JSON (and llama.cpp's integer grammar) does; one spelling per integer
    # is the range scanner's rule. (The unbounded case drew "-0" now and then and failed.)
    hypothesis.assume(lo is not None or hi is not None)
    node = int_schema(lo, hi)
    got = run(text, node)
    assert (got is not None) == continues(text, lo, hi), (lo, hi, text, got)
    assert (got is True) == in_range(text, lo, hi), (lo, hi, text, got)


@hypothesis.given(st.integers(-10 ** 6, 10 ** 6), st.integers(0, 120))
@hypothesis.settings(max_examples=100, deadline=None)
def test_every_integer_in_a_small_range_is_whole_and_its_neighbours_are_not(lo, width):
    hi = lo + width
    node = int_schema(lo, hi)
    for v in range(lo, hi + 1):
        assert run(str(v), node) is True, v
    for v in (lo - 1, hi + 1, lo - 10, hi + 10):
        assert run(str(v), node) is not True, v


big_bound = st.none() | st.integers(-10 ** 40, 10 ** 40) | st.integers(-1000, 1000)
float_bound = st.none() | st.floats(-1e6, 1e6, allow_nan=False)


@hypothesis.given(big_bound, big_bound, float_bound, float_bound, st.integers(0, 2 ** 32))
@hypothesis.settings(max_examples=150, deadline=None)
def test_random_walks_never_dead_end_and_end_in_range(lo, hi, xlo, xhi, seed):
    s = {"type": "integer"}
    for key, v in (("minimum", lo), ("maximum", hi), ("exclusiveMinimum", xlo),
                   ("exclusiveMaximum", xhi)):
        if v is not None:
            s[key] = v
    low, high = number_range.integer_bounds(s)
    hypothesis.assume(len(s) > 1 and (low is None or high is None or low <= high))
    node = schema(s)
    cap = node.int_range[2]
    rng = np.random.default_rng(seed)
    for _ in range(5):
        state, text = jc.value_grammar(node), b""
        while True:
            steps = [b for b in INT_BYTES if jc.feed(state, bytes([b])) is not None]
            ends = jc.can_end(state)
            assert steps or ends, (s, text)              # never stuck
            if not steps or (ends and rng.random() < 0.3):
                break
            b = steps[rng.integers(len(steps))]
            state, text = jc.feed(state, bytes([b])), text + bytes([b])
        v = json.loads(text)
        assert text.decode() == str(v) and len(text) <= cap, (s, text)
        assert (low is None or v >= low) and (high is None or v <= high), (s, text)
        for key, bad in (("minimum", v < s.get("minimum", v)),
                         ("exclusiveMinimum", v <= s.get("exclusiveMinimum", v - 1)),
                         ("maximum", v > s.get("maximum", v)),
                         ("exclusiveMaximum", v >= s.get("exclusiveMaximum", v + 1))):
            assert not bad, (key, s, v)


# ---- a model's reply ---------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_tiny_models_constrained_integer_is_in_range(temperature):
    s = {"type": "object", "properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5},
                                          "delta": {"type": "integer", "minimum": -40,
                                                    "exclusiveMaximum": -30}},
         "required": ["stars", "delta"], "additionalProperties": False}
    value = json.loads(generate(tiny_model(), schema(s), temperature))
    assert 1 <= value["stars"] <= 5 and -40 <= value["delta"] < -30, value
