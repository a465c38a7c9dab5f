"""multipleOf held through the server on the tiny fixture model (random weights: a multiple
is the constraint's doing): the real `openai` client's `.parse` with pydantic fields
Field(multiple_of=0.01) and Field(multiple_of=0.5) on floats (pydantic's own float check
accepts the reply), bounds written beside anyOf, and the 400s. The scanner is tested byte
by byte in tests/runtime/test_json_multipleof.py.
"""
import json
from fractions import Fraction

import pytest
from pydantic import BaseModel, Field

from tests.e2e.test_api_constrained import client  # noqa: F401 - a fixture
from tests.e2e.test_api_json_bounds import SAMPLINGS, chat, parsed


class Priced(BaseModel):
    price: float = Field(ge=0, le=100, multiple_of=0.01)
    half: float = Field(multiple_of=0.5)


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_the_openai_clients_parse_returns_multiples(client, sampling):  # noqa: F811
    p = parsed(client, Priced, sampling)
    # exact, beyond pydantic's 1e-9 tolerance: the shortest decimal of each double
    assert (Fraction(repr(p.price)) * 100).denominator == 1 and 0 <= p.price <= 100, p
    assert (Fraction(repr(p.half)) * 2).denominator == 1, p


def test_bounds_beside_any_of_hold_each_branch(tiny_server):
    s = {"type": "object", "additionalProperties": False, "required": ["x"],
         "properties": {"x": {"anyOf": [{"type": "number"}, {"type": "null"}],
                              "minimum": 1, "maximum": 2, "multipleOf": 0.25}}}
    status, r = chat(tiny_server.url, s, temperature=1.0, seed=3)
    assert status == 200 and r["choices"][0]["finish_reason"] == "stop", r
    x = json.loads(r["choices"][0]["message"]["content"])["x"]
    assert x is None or (1 <= x <= 2 and (Fraction(repr(x)) * 4).denominator == 1), x


@pytest.mark.parametrize("bad, message", [
    ({"type": "number", "minimum": 3e6, "multipleOf": 0.1}, "no number fits 'minimum' and 'multipleOf'"),
    ({"$ref": "#/$defs/N", "$defs": {"N": {"type": "number"}}, "multipleOf": 0.5},
     "'multipleOf' next to '$ref' is not supported"),
])
def test_a_multiple_of_that_cannot_be_held_is_a_400_naming_it(tiny_server, bad, message):
    status, r = chat(tiny_server.url, bad)
    assert status == 400, r
    assert message in r["error"]["message"], r
