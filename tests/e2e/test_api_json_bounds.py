"""An integer's minimum/maximum held through the server, on the tiny fixture model (random
weights: an integer in range is the constraint's doing), as llama.cpp's
json-schema-to-grammar holds them. runtime/json_constraint.py's scanner is tested byte by
byte in tests/runtime/test_json_constraint_bounds.py.
"""
import json

import pytest

from tests.e2e.conftest import post_json
from tests.e2e.test_api_constrained import check

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
