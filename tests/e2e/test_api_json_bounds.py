"""An integer's minimum/maximum held through the server, on the tiny fixture model (random
weights: an integer in range is the constraint's doing), as llama.cpp's
json-schema-to-grammar holds them; and a number's, through the real `openai` client's
`.parse` with pydantic `float` fields (Field(ge=0, le=1) writes minimum/maximum: a reply
out of range failed `.parse`). runtime/json_constraint.py's scanners are tested byte by
byte in tests/runtime/test_json_constraint_bounds.py and test_json_number_bounds.py.
"""
import json

import pytest
from pydantic import BaseModel, Field

from tests.e2e.conftest import post_json
from tests.e2e.test_api_constrained import MSGS, check, client  # noqa: F401 - a fixture

STARS = {"type": "object", "additionalProperties": False, "required": ["stars", "delta"],
         "properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5},
                        "delta": {"type": "integer", "minimum": -12, "exclusiveMaximum": -6.5}}}


def chat(url, schema, **kw):
    body = {"messages": [{"role": "user", "content": "Rate it."}], "max_tokens": 60,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "r", "schema": schema}},
            **kw}
    return post_json(url + "/v1/chat/completions", body)


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 1},
                                      {"temperature": 1.5, "seed": 2}])
def test_a_constrained_integer_is_in_its_range(tiny_server, sampling):
    status, r = chat(tiny_server.url, STARS, **sampling)
    assert status == 200, r
    choice = r["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    value = json.loads(choice["message"]["content"])
    check(value, STARS)
    assert 1 <= value["stars"] <= 5 and -12 <= value["delta"] <= -7, value
    # llama-server's own field, a bare integer
    status, r = post_json(tiny_server.url + "/completion", {
        "prompt": "Stars:", "n_predict": 20, "json_schema": {
            "type": "integer", "minimum": 1000, "maximum": 1003}, **sampling})
    assert status == 200 and r["stop_type"] == "eos", r
    assert json.loads(r["content"]) in (1000, 1001, 1002, 1003), r["content"]


def test_a_range_with_no_integer_is_a_400(tiny_server):
    status, r = chat(tiny_server.url, {"type": "integer", "minimum": 3, "maximum": 2})
    assert status == 400, r
    assert "no integer fits 'minimum' and 'maximum'" in r["error"]["message"]


class Rating(BaseModel):
    score: float = Field(ge=0, le=1)
    shift: float = Field(gt=-1.5, lt=2.25)


SAMPLINGS = [{"temperature": 0}, {"temperature": 1.0, "seed": 1}, {"temperature": 1.5, "seed": 2}]


def parsed(client, model_class, sampling: dict):
    """The openai client's .parse() of a short reply as model_class (pydantic has checked
    it: bounds, patterns), which must have ended by itself."""
    r = client.chat.completions.parse(model="x", messages=MSGS, max_tokens=80,
                                      response_format=model_class, **sampling)
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(choice.message.parsed, model_class), choice.message.content
    return choice.message.parsed


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_the_openai_clients_parse_returns_floats_in_range(client, sampling):  # noqa: F811
    rating = parsed(client, Rating, sampling)
    assert 0 <= rating.score <= 1 and -1.5 < rating.shift < 2.25, rating


def test_a_range_with_no_number_is_a_400(tiny_server):
    status, r = chat(tiny_server.url, {"type": "number", "minimum": 1, "exclusiveMaximum": 1})
    assert status == 400, r
    assert "no number fits 'minimum' and 'exclusiveMaximum'" in r["error"]["message"]
