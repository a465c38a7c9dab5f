"""Edge cases of the bounded number and integer scanners (runtime/number_range.py) found by
an adversarial review: an exclusive bound at the greatest double, a far-off whole
multipleOf (the work per byte), and bounds too long for Python's int <-> str.
"""
import sys
from fractions import Fraction

import pytest

from runtime import api
from runtime import json_constraint as jc
from runtime import number_range
from tests.runtime.test_json_constraint import run, schema

MAX_DOUBLE = 1.7976931348623157e308
# Halfway from the greatest double to 2**1024: from it on a number reads as infinity.
TO_INFINITY = (Fraction(MAX_DOUBLE) + 2 ** 1024) / 2


def test_an_exclusive_bound_at_the_greatest_double_refuses_what_reads_as_it():
    """Beyond the greatest double there is no next double (nextafter gives infinity): a
    number above the bound as written but short of halfway to 2**1024 reads as the bound's
    own double, which the client (pydantic, a validator) refuses for exclusiveMinimum."""
    as_max = "17976931348623158" + "0" * 292          # above the bound as written
    assert float(as_max) == MAX_DOUBLE and Fraction(as_max) > Fraction(repr(MAX_DOUBLE))
    past = str(TO_INFINITY.numerator)                    # an integer: the halfway point
    assert float(past) == float("inf") and float(str(int(TO_INFINITY) - 1)) == MAX_DOUBLE
    above = schema({"type": "number", "exclusiveMinimum": MAX_DOUBLE})
    assert run(as_max, above) is not True
    assert run(str(int(TO_INFINITY) - 1), above) is not True
    assert run(past, above) is True and run(past + ".0", above) is True
    below = schema({"type": "number", "exclusiveMaximum": -MAX_DOUBLE})
    assert run("-" + as_max, below) is not True
    assert run("-" + past, below) is True
    # an integer bound past the greatest double that reads as it
    just_past = schema({"type": "number", "exclusiveMinimum": int(MAX_DOUBLE) + 1})
    assert run(str(int(MAX_DOUBLE) + 2), just_past) is not True


def test_an_exclusive_bound_at_the_greatest_double_and_it_as_maximum_hold_nothing():
    with pytest.raises(jc.SchemaError, match="no number fits"):
        schema({"type": "number", "exclusiveMinimum": MAX_DOUBLE, "maximum": MAX_DOUBLE})


def _lines_run(code, fn, *args):
    """How many lines of `code` running fn(*args) executes: the work, counted, not timed."""
    count = 0
    previous = sys.gettrace()

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code is not code:
            return None
        if event == "line":
            count += 1
        return tracer
    sys.settrace(tracer)
    try:
        fn(*args)
    finally:
        sys.settrace(previous)
    return count


def test_a_far_off_multiple_of_does_not_look_at_every_shorter_length():
    """A multipleOf of 10**999 from 1 up: every positive multiple has 1,000 digits or more,
    so the digits shorter than that are skipped, not tried one length at a time (with
    10**4000 that took 1.9 s a byte, 4.3 s to find a token's first bytes)."""
    node = schema({"type": "integer", "minimum": 1, "multipleOf": 10 ** 999})
    assert run("1" + "0" * 999, node) is True and run("2" + "0" * 999, node) is True
    assert run("1" + "0" * 998, node) is not True
    rng = node.int_range
    lines = _lines_run(number_range._int_viable.__code__, number_range.int_step,
                       rng, False, 0, 0, ord("1"))
    assert lines < 100, lines
    neg = schema({"type": "integer", "minimum": -10 ** 999, "maximum": 10 ** 999,
                  "multipleOf": 10 ** 998})
    assert run("-" + "3" + "0" * 998, neg) is True
    lines = _lines_run(number_range._int_viable.__code__, number_range.int_step,
                       neg.int_range, True, 0, 1, ord("3"))
    assert lines < 100, lines


@pytest.mark.parametrize("bounds", [
    {"type": "integer", "minimum": int("9" * 4300), "multipleOf": 10 ** 4299},
    {"type": "number", "minimum": 1, "exclusiveMaximum": 10 ** 4300},
    {"type": "integer", "maximum": -10 ** 1000},
    {"minimum": 10 ** 1000},
])
def test_a_bound_of_a_thousand_digits_or_more_is_a_clear_error(bounds):
    """Python's int() and str() refuse more than 4,300 digits: a bound near that was a
    ValueError out of the compiler, a 500 over HTTP."""
    with pytest.raises(jc.SchemaError, match="must be below 1e1000"):
        schema(bounds)
    body = {"response_format": {"type": "json_schema",
                                "json_schema": {"name": "x", "schema": bounds}}}
    with pytest.raises(api.ApiError) as e:
        api.get_json_grammar(body)
    assert e.value.status == 400


def test_a_bound_just_under_a_thousand_digits_is_held():
    node = schema({"type": "integer", "minimum": 10 ** 999 - 1})
    assert run(str(10 ** 999 - 1), node) is True
    assert run(str(10 ** 999 - 2), node) is not True


@pytest.mark.parametrize("step", [0, -5, -0.5, 0.0])
def test_a_multiple_of_zero_or_below_is_refused(step):
    """JSON Schema: multipleOf is strictly greater than 0; one below was ignored."""
    with pytest.raises(jc.SchemaError, match="'multipleOf' must be greater than 0"):
        jc.compile_schema({"type": "integer", "multipleOf": step})


def test_a_huge_multiple_of_on_an_unbounded_integer_can_be_written():
    """The byte cap (32) left only 0 writable for a step of 41 digits."""
    node = schema({"type": "integer", "multipleOf": 10 ** 40})
    for v in (0, 10 ** 40, -(10 ** 40), 3 * 10 ** 40):
        assert run(str(v), node) is True, v
    assert run(str(10 ** 39), node) is False     # a prefix of 10**40, not whole
