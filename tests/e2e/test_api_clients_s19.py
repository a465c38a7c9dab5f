"""Requests that third-party OpenAI clients sent to the server, replayed as they were sent
(captured with a logging proxy in front of the server; docs/api.md lists the clients and
their versions). The clients themselves are not installed in CI: the bodies are.

The tiny fixture model's weights are random, so a reply that parses and fits its schema is
the constraint's doing (tests/e2e/test_api_constrained.py says more).
"""
import json

from tests.e2e.conftest import post_json
from tests.e2e.test_api_constrained import check, tool_client  # noqa: F401 - a fixture

# What openai's `client.chat.completions.parse(response_format=Review)` (openai 3.57) and
# LangChain's `with_structured_output(Review, method="json_schema")` send for
#   class Review(BaseModel):
#       title: str = Field(max_length=8)
#       stars: int = Field(ge=1, le=5)
#       score: float = Field(gt=0, lt=1)
#       votes: int = Field(multiple_of=2)
# Pydantic writes a bound for every ge/gt/le/lt/multiple_of; they were a 400
# ("unsupported JSON schema keyword 'maximum'"), so neither client could use such a model.
REVIEW = {"properties": {
    "title": {"maxLength": 8, "title": "Title", "type": "string"},
    "stars": {"maximum": 5, "minimum": 1, "title": "Stars", "type": "integer"},
    "score": {"exclusiveMaximum": 1, "exclusiveMinimum": 0, "title": "Score", "type": "number"},
    "votes": {"multipleOf": 2, "title": "Votes", "type": "integer"}},
    "required": ["title", "stars", "score", "votes"], "title": "Review", "type": "object",
    "additionalProperties": False}
PARSE_BODY = {"model": "Qwen2.5 Coder 0.5B Instruct AWQ", "stream": False,
              "messages": [{"role": "user", "content": "Review this film."}],
              "max_tokens": 200, "temperature": 0,
              "response_format": {"type": "json_schema", "json_schema": {
                  "schema": REVIEW, "name": "Review", "strict": True}}}


def test_a_pydantic_models_number_bounds_are_taken(tiny_server):
    """The bounds are taken (an integer's held to its range, a number's read and not
    enforced, as llama.cpp does): the reply is the schema's object."""
    status, r = post_json(tiny_server.url + "/v1/chat/completions", PARSE_BODY)
    assert status == 200, r
    choice = r["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    value = json.loads(choice["message"]["content"])
    check(value, REVIEW)
    assert set(value) == set(REVIEW["required"])
    assert isinstance(value["stars"], int) and isinstance(value["votes"], int)


def test_a_bound_that_is_not_a_number_is_refused_by_name(tiny_server):
    schema = {**REVIEW, "properties": {**REVIEW["properties"],
                                       "stars": {"type": "integer", "minimum": "1"}}}
    body = {**PARSE_BODY, "response_format": {"type": "json_schema", "json_schema": {
        "schema": schema, "name": "Review"}}}
    status, r = post_json(tiny_server.url + "/v1/chat/completions", body)
    assert status == 400
    assert "'minimum' must be a number" in r["error"]["message"]


# LangChain's `with_structured_output(Review, method="function_calling")` (langchain-openai
# 1.7.4): a forced call to a tool whose parameters carry the bounds. The arguments were held
# to any object (a schema the constraint refused), and the random model wrote keys that
# pydantic then refused; now they follow the parameters.
LANGCHAIN_TOOL_BODY = {
    "model": "m", "stream": False, "temperature": 0.0, "max_completion_tokens": 200,
    "tools": [{"type": "function", "function": {
        "name": "Review", "description": "A review.",
        "parameters": {"properties": {"title": {"maxLength": 8, "type": "string"},
                                      "stars": {"maximum": 5, "minimum": 1, "type": "integer"}},
                       "required": ["title", "stars"], "type": "object"}}}],
    "parallel_tool_calls": False, "tool_choice": {"type": "function", "function": {"name": "Review"}},
    "messages": [{"content": "Review this film.", "role": "user"}]}


def test_a_forced_calls_bounded_arguments_follow_the_parameters(tool_client):  # noqa: F811
    url = str(tool_client.base_url).rstrip("/") + "/chat/completions"
    status, r = post_json(url, LANGCHAIN_TOOL_BODY)
    assert status == 200, r
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "Review"
    args = json.loads(call["function"]["arguments"])
    assert set(args) == {"title", "stars"}, args
    params = LANGCHAIN_TOOL_BODY["tools"][0]["function"]["parameters"]
    check(args, params)
