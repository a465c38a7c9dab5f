"""multipleOf held by the JSON constraint (runtime/json_constraint.py, runtime/number_range.py)
on a `number` (pydantic's Field(multiple_of=0.5) on a float) and a fractional one on an
`integer`, exactly: x is a multiple of m when x / m is whole, both the decimals their JSON
text wrote. A number is also held as near 0 as pydantic's float check (an absolute 1e-9
tolerance) accepts every exact multiple, and every reply here is checked with pydantic.
Also: bounds written beside anyOf/oneOf hold each branch, and enum/const values are held
to bounds and multipleOf as the scanner holds a number written out.
"""
import itertools
import json
from fractions import Fraction
from typing import Annotated

import numpy as np
import pytest
from pydantic import Field, TypeAdapter, ValidationError

from runtime import api
from runtime import json_constraint as jc
from runtime import number_range
from tests.runtime.test_json_constraint import run, schema
from tests.runtime.test_json_constraint_bounds import assert_refused
from tests.runtime.test_json_number_bounds import bounds_of, in_range, small_bound, walk
from tests.runtime.test_json_number_bounds_review import _lines_run

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

PYDANTIC_KEYS = {"minimum": "ge", "exclusiveMinimum": "gt", "maximum": "le",
                 "exclusiveMaximum": "lt", "multipleOf": "multiple_of"}


def is_multiple(text, m) -> bool:
    """The exact definition: the text's decimal over m's (as json.dumps writes m) is whole."""
    return (Fraction(text) / Fraction(json.dumps(m))).denominator == 1


def pydantic_takes(text, s) -> bool:
    """Does pydantic's float field with s's constraints accept text?"""
    field = Field(**{PYDANTIC_KEYS[k]: v for k, v in s.items() if k in PYDANTIC_KEYS})
    try:
        TypeAdapter(Annotated[float, field]).validate_json(text)
    except ValidationError:
        return False
    return True


def number(**kw):
    return {"type": "number", **kw}


# ---- a number's multipleOf -------------------------------------------------------------------

@pytest.mark.parametrize("m, whole, refused", [
    (0.5, ["0", "0.5", "1", "1.0", "-2.5", "7.50", "100"], ["0.25", "1.2", "-0.1", "7.05"]),
    (0.01, ["0", "0.01", "19.99", "-3.1", "5"], ["0.001", "19.995", "0.015"]),
    (0.1, ["0.3", "-0.7", "1.1", "3.3", "0.30"], ["0.35", "0.01"]),
    (2, ["8", "8.0", "-4", "0"], ["7", "7.5", "1.0"]),
    (2.5, ["5", "7.5", "-2.5", "0.0"], ["2", "6", "1.25"]),
])
def test_a_number_is_a_multiple_exactly(m, whole, refused):
    node = schema(number(multipleOf=m))
    for text in whole:
        assert run(text, node) is True, text
        assert is_multiple(text, m) and pydantic_takes(text, {"multipleOf": m}), text
    for text in refused:
        assert run(text, node) is not True, text
        assert not is_multiple(text, m), text


def test_a_prefix_no_multiple_continues_is_refused_at_its_byte():
    node = schema(number(multipleOf=0.25))
    assert run("1.", node) is False and run("1.2", node) is False      # 1.25
    assert run("1.3", node) is None and run("1.26", node) is None
    node = schema(number(minimum=1, maximum=1.4, multipleOf=0.5))      # only 1 and 1.0...
    assert run("1.0", node) is True and run("1.5", node) is None and run("1.4", node) is None


def test_pydantic_refuses_exact_multiples_far_from_0_so_they_are_not_written():
    """pydantic's float check is |x - round(x/m)*m| <= 1e-9 in doubles: past about 1e6
    an exact multiple of 0.7 fails it (210000004.9 = 300000007 * 0.7). Such a number is
    held within 1e6; a binary fraction (0.5) is exact in doubles up to 2**52."""
    assert is_multiple("210000004.9", 0.7) and not pydantic_takes("210000004.9", {"multipleOf": 0.7})
    node = schema(number(multipleOf=0.7))
    assert run("999999.7", node) is True and pydantic_takes("999999.7", {"multipleOf": 0.7})
    assert run("1000000.4", node) is None and run("210000004.9", node) is not True
    node = schema(number(multipleOf=0.5))
    top = str(2 ** 52 - 1) + ".5"
    assert run(top, node) is True and pydantic_takes(top, {"multipleOf": 0.5})
    assert run(str(2 ** 52), node) is not True


@pytest.mark.parametrize("bad, message", [
    (number(minimum=1, maximum=1.4, multipleOf=0.75), "no number fits 'minimum' and 'maximum' and 'multipleOf'"),
    (number(minimum=2e6, multipleOf=0.1), "no number fits 'minimum' and 'multipleOf' (a number held"),
    ({"type": "integer", "minimum": 1, "maximum": 4, "multipleOf": 2.5},
     "no integer fits 'minimum' and 'maximum' and 'multipleOf'"),
])
def test_a_multiple_of_that_leaves_no_value_is_a_400_naming_it(bad, message):
    assert_refused(bad, message)
    body = {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": bad}}}
    with pytest.raises(api.ApiError) as e:
        api.get_json_grammar(body)
    assert e.value.status == 400 and "'multipleOf'" in str(e.value)


def stepped_number(lo, xlo, hi, xhi, m):
    """(the schema, its compiled node) of a number with these bounds and multipleOf m;
    node None when no number fits them, which must be the refusal's reason."""
    s = {**bounds_of(lo, xlo, hi, xhi), "multipleOf": m}
    try:
        return s, schema(number(**s))
    except jc.SchemaError as e:
        assert "no number fits" in str(e)
        return s, None


# decimals of few digits: m = k / 10**j, the oracle's brute force stays small and exact
small_step = st.builds(lambda k, j: k / 10 ** j if j else k, st.integers(1, 40), st.integers(0, 2))


@hypothesis.given(small_bound, small_bound, small_bound, small_bound, small_step,
                  st.text(alphabet="-0123456789.", min_size=1, max_size=6))
@hypothesis.settings(max_examples=400, deadline=None)
def test_a_text_is_whole_exactly_when_a_multiple_in_range(lo, xlo, hi, xhi, m, text):
    s, node = stepped_number(lo, xlo, hi, xhi, m)
    if node is None:
        return
    got = run(text, node)
    fits = in_range(text, s) and is_multiple(text, m)     # under 1e6: within the limit
    assert (got is True) == fits, (s, text, got)
    if fits:
        assert pydantic_takes(text, s), (s, text)
    if got is None:     # no completion of up to 3 more bytes fits (within 1e6: a step
        for n in range(1, 4):   # such as 1.1 holds no further; a binary one, further)
            for tail in itertools.product("0123456789.", repeat=n):
                t = text + "".join(tail)
                assert not (in_range(t, s) and is_multiple(t, m)
                            and abs(Fraction(t)) <= 10 ** 6), (s, text, t)


wide_step = (small_step | st.floats(1e-12, 1e7, allow_nan=False, allow_infinity=False)
             | st.sampled_from([0.1, 0.01, 0.7, 0.5, 0.25, 0.125, 3, 1e-10, 2 ** -30, 1e6]))
wide_bound = st.none() | st.floats(-1e7, 1e7, allow_nan=False) | st.integers(-10 ** 7, 10 ** 7)


@hypothesis.given(wide_bound, wide_bound, wide_bound, wide_bound, wide_step, st.integers(0, 2 ** 32))
@hypothesis.settings(max_examples=200, deadline=None)
def test_random_walks_never_dead_end_and_pydantic_takes_them(lo, xlo, hi, xhi, m, seed):
    """Every reply, however long (to the 32-byte cap), is an exact multiple in range, and
    pydantic's float field with the same constraints accepts it."""
    s, node = stepped_number(lo, xlo, hi, xhi, m)
    if node is None:
        return
    rng = np.random.default_rng(seed)
    for _ in range(5):
        text = walk(node, jc.value_grammar(node), b"", rng).decode()
        assert in_range(text, s, node.num_range[2]) and is_multiple(text, m), (s, text)
        assert pydantic_takes(text, s), (s, text)


# ---- an integer's fractional multipleOf ------------------------------------------------------

@hypothesis.given(st.none() | st.integers(-60, 60), st.none() | st.integers(-60, 60),
                  st.sampled_from([0.5, 2.5, 0.3, 1.5, 0.75, 7.5, 0.01, 12.5]))
@hypothesis.settings(max_examples=150, deadline=None)
def test_an_integers_fractional_multiple_of_is_held_exactly(lo, hi, m):
    s = {"type": "integer", "multipleOf": m}
    s.update({k: v for k, v in (("minimum", lo), ("maximum", hi)) if v is not None})
    fits = [v for v in range(-200, 201) if is_multiple(str(v), m)
            and (lo is None or v >= lo) and (hi is None or v <= hi)]
    if lo is not None and hi is not None and not fits:
        assert_refused(s, "no integer fits")
        return
    node = schema(s)
    for v in range(-200, 201):
        assert (run(str(v), node) is True) == (v in fits), (s, v)


# ---- enum and const ------------------------------------------------------------------------

def test_enum_values_are_held_to_the_multiple_of():
    node = schema({"type": "integer", "enum": [3, 5, 10], "multipleOf": 5})
    assert run("3", node) is None and run("5", node) is True and run("10", node) is True
    node = schema(number(enum=[0.3, 0.25, 1], multipleOf=0.1))
    assert run("0.25", node) is None and run("0.3", node) is True and run("1", node) is True
    assert_refused(number(const=0.25, multipleOf=0.1), "no 'enum' or 'const' number fits")


def test_enum_values_are_held_to_a_bound_as_written_as_the_scanner_holds_it():
    """minimum 1e23 is 10**23 as written; its double is 99999999999999991611392. The
    scanner refuses that integer as a number (below the bound as written): so must an
    enum value."""
    below = int(1e23)
    assert below < 10 ** 23 and run(str(below), schema(number(minimum=1e23))) is not True
    node = schema(number(enum=[below, 10 ** 23], minimum=1e23))
    assert run(str(below), node) is None and run(str(10 ** 23), node) is True


def plain(x: Fraction) -> str:
    """x written out without an exponent (the bounded number's spelling)."""
    sign, x = ("-" if x < 0 else ""), abs(x)
    places = 0
    while (x * 10 ** places).denominator != 1:
        places += 1
    digits = str(x.numerator * 10 ** places // x.denominator).rjust(places + 1, "0")
    return sign + (digits[:-places] + "." + digits[-places:] if places else digits)


value = st.builds(lambda k, j: k / 10 ** j if j else k, st.integers(-300, 300), st.integers(0, 3))


@hypothesis.given(small_bound, small_bound, small_bound, small_bound,
                  st.none() | small_step, value)
@hypothesis.settings(max_examples=300, deadline=None)
def test_an_enum_value_is_kept_exactly_when_the_scanner_takes_it_written_out(lo, xlo, hi, xhi, m, v):
    s = bounds_of(lo, xlo, hi, xhi)
    if m is not None:
        s["multipleOf"] = m
    hypothesis.assume(s)
    try:
        node = schema(number(**s))
    except jc.SchemaError:
        return
    kept = number_range.within_bounds(s, v, False)
    text = plain(Fraction(json.dumps(v)))
    assert kept == (run(text, node) is True), (s, v, text)


# ---- bounds beside anyOf / oneOf / $ref ------------------------------------------------------

def test_bounds_beside_any_of_hold_every_branch():
    node = schema({"anyOf": [{"type": "number"}, {"type": "null"}], "minimum": 0, "maximum": 1})
    assert run("0.5", node) is True and run("null", node) is True
    assert run("2", node) is None and run("-1", node) is None
    node = schema({"oneOf": [{"type": "number"}, {"type": "string"}], "multipleOf": 0.5})
    assert run("1.5", node) is True and run("1.2", node) is None and run('"x"', node) is True
    # the stricter of a bound beside and one inside a branch, either way round
    for inner, outer in ((5, 3), (3, 5)):
        node = schema({"anyOf": [{"type": "integer", "minimum": inner}], "minimum": outer})
        assert run("4", node) is not True and run("5", node) is True
    node = schema({"anyOf": [True, {"anyOf": [{"type": "integer"}]}], "exclusiveMaximum": 2})
    assert run("2", node) is None and run("1.5", node) is True


def test_a_branch_the_bounds_leave_empty_is_dropped():
    node = schema({"anyOf": [{"type": "integer"}, {"type": "number"}], "minimum": 0.2, "maximum": 0.8})
    assert run("0.5", node) is True and run("1", node) is None
    assert_refused({"anyOf": [{"type": "integer"}, {"type": "integer", "maximum": 0}],
                    "minimum": 0.2, "maximum": 0.8}, "no integer fits")
    # an empty schema deeper inside a branch is still a 400, as anywhere else
    assert_refused({"anyOf": [{"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 3, "maximum": 2}}}, {"type": "null"}], "minimum": 0},
        "no integer fits 'minimum' and 'maximum'")


@pytest.mark.parametrize("bad, message", [
    ({"$ref": "#/$defs/N", "$defs": {"N": {"type": "number"}}, "maximum": 5},
     "'maximum' next to '$ref' is not supported"),
    ({"anyOf": [{"$ref": "#/$defs/N"}, {"type": "null"}], "$defs": {"N": {"type": "number"}},
      "minimum": 1}, "'minimum' next to 'anyOf' with a '$ref' branch is not supported"),
    ({"anyOf": [{"type": "number", "multipleOf": 0.5}], "multipleOf": 0.1},
     "'multipleOf' next to 'anyOf' and a different one in its branch"),
    ({"anyOf": [{"type": "string"}], "pattern": "^a"}, "'anyOf' next to 'pattern' is not supported"),
    ({"allOf": [{"type": "number"}], "minimum": 1}, "unsupported JSON schema keyword 'allOf'"),
])
def test_what_cannot_be_held_beside_a_combinator_is_a_400_naming_it(bad, message):
    assert_refused(bad, message)


# ---- the cost ----------------------------------------------------------------------------------

def test_the_work_per_byte_stays_small():
    """The scanner's loops are counted, not timed: a step's digit scan looks at each length
    of the integer part once, and the multipleOf check adds no loop."""
    plain_node = schema(number(minimum=-1000, maximum=1000))
    step_node = schema(number(minimum=-1000, maximum=1000, multipleOf=0.01))
    counts = [_lines_run(number_range._num_viable.__code__, number_range.num_step,
                         n.num_range, False, 12, 2, -1, ord("3")) for n in (plain_node, step_node)]
    assert counts[1] <= counts[0] + 5, counts
