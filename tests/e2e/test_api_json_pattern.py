"""JSON Schema `pattern` held through the server, on the tiny fixture model (random weights:
a string that matches is the constraint's doing), and the real `openai` client's `.parse`
with a pydantic model whose fields have `Field(pattern=...)` (pydantic writes `pattern`
for them; it was a 400, so such models were unusable). The recognizer is tested byte by
byte in tests/runtime/test_json_pattern.py.
"""
import json
import re

import pytest
from pydantic import BaseModel, Field

from tests.e2e.conftest import post_json
from tests.e2e.test_api_constrained import MSGS, client  # noqa: F401 - a fixture
from tests.e2e.test_api_json_bounds import SAMPLINGS, chat, parsed

openai = pytest.importorskip("openai", reason="the openai client is not installed")

CODE = r"^[A-Z]{3}-\d{4}$"


class Ticket(BaseModel):
    code: str = Field(pattern=CODE)
    note: str = Field(pattern="ok", max_length=6)       # unanchored: it contains "ok"


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_the_openai_clients_parse_returns_fields_that_match(client, sampling):  # noqa: F811
    ticket = parsed(client, Ticket, sampling)
    assert re.fullmatch(r"[A-Z]{3}-\d{4}", ticket.code), ticket
    assert "ok" in ticket.note and len(ticket.note) <= 6, ticket


def test_llama_servers_json_schema_field_takes_a_pattern(tiny_server):
    status, r = post_json(tiny_server.url + "/completion", {
        "prompt": "Code:", "n_predict": 40, "temperature": 1.0, "seed": 3,
        "json_schema": {"type": "string", "pattern": r"^(yes|no)-\d\d?$"}})
    assert status == 200 and r["stop_type"] == "eos", r
    assert re.fullmatch(r"(yes|no)-\d\d?", json.loads(r["content"])), r["content"]


@pytest.mark.parametrize("string, message", [
    ({"pattern": "(?=a)b"}, "'pattern' '(?=a)b': a lookahead '(?=' is not supported"),
    ({"pattern": r"(a)\1"}, "a backreference '\\1' is not supported"),
    ({"pattern": r"\bx"}, "a word boundary '\\b' is not supported"),
    ({"pattern": "a^b"}, "'^' or '$' anywhere but the start or the end"),
    ({"pattern": "(?i)a"}, "a group modifier or inline flag"),
    ({"pattern": "(a{50}){50}"}, "more than 2000 states"),
    ({"pattern": "a" * 1001}, "longer than 1000 characters"),
    ({"pattern": "^abc$", "maxLength": 2},
     "no string matches 'pattern' '^abc$' within 'minLength' and 'maxLength'"),
    ({"pattern": "[^\\s\\S]"}, "no string matches 'pattern'"),
    ({"pattern": "^2", "format": "date"}, "'pattern' next to 'format' 'date' is not supported"),
])
def test_unsupported_patterns_and_impossible_combinations_are_a_400(tiny_server, client,  # noqa: F811
                                                                    string, message):
    schema = {"type": "object", "properties": {"s": {"type": "string", **string}},
              "required": ["s"], "additionalProperties": False}
    status, r = chat(tiny_server.url, schema)
    assert status == 400, r
    assert message in r["error"]["message"], r
    assert "\n" not in r["error"]["message"]
    status, r = post_json(tiny_server.url + "/completion",
                          {"prompt": "hi", "n_predict": 2, "json_schema": schema})
    assert status == 400 and message in r["error"]["message"], r
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=MSGS, max_tokens=2, response_format={
            "type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
    assert message in str(e.value)
