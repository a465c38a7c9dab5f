"""The requests OpenAI's Codex CLI (0.171) sends to /v1/responses, replayed against the
parrot (its greedy reply is the last message, byte by byte) with the `openai` client and
raw HTTP; and the Responses routes around it that the `openai` client calls
(input_tokens, retrieve, delete). Codex itself is not run here (it is an npm package).
"""
import json

import pytest

from tests.e2e.conftest import http_request, post_json
from tests.e2e.test_api_messages import parrot  # noqa: F401 - the fixture
from tests.e2e.test_api_responses import TOOLS, client_of, items, stream_of

openai = pytest.importorskip("openai", reason="the openai client is not installed")

# Codex's sub-agent tools come as a namespace of functions, besides its plain functions.
AGENTS = {"type": "namespace", "name": "multi_agent_v1",
          "description": "Tools for spawning and managing sub-agents.",
          "tools": [{"type": "function", "name": "close_agent", "description": "Close an agent",
                     "strict": False, "parameters": {
                         "type": "object", "properties": {"target": {"type": "string"}},
                         "required": ["target"], "additionalProperties": False}}]}
CLOSE = ('<tool_call>\n{"name": "multi_agent_v1__close_agent", "arguments": {"target": "a1"}}'
         '\n</tool_call>')


def codex_body(text: str) -> dict:
    """A first request as Codex sends it (its instructions shortened): developer
    messages with ids and input_text parts, the user's, tools with a namespace, and the
    fields it sets for OpenAI's own servers."""
    def msg(role, *texts):
        return {"type": "message", "id": f"msg_{role}", "role": role,
                "content": [{"type": "input_text", "text": t} for t in texts]}
    return {"model": "qwen2.5-coder", "stream": True, "tool_choice": "auto",
            "input": [msg("developer", "You are Codex, a coding agent."),
                      msg("developer", "<permissions>never ask</permissions>", "<skills/>"),
                      msg("user", "<environment_context>/tmp</environment_context>"),
                      msg("user", text)],
            "tools": [TOOLS[0], AGENTS, {"type": "web_search"}], "parallel_tool_calls": True,
            "reasoning": {"summary": "auto"}, "store": False,
            "include": ["reasoning.encrypted_content"], "prompt_cache_key": "01a2305e",
            "client_metadata": {"session_id": "01a2305e", "x-codex-turn-metadata": "{}"}}


def test_codex_first_request_is_answered_as_a_stream(parrot):
    evs = stream_of(parrot[0], codex_body("Say hello."))
    assert evs[-1][0] == "response.completed", evs[-1]
    assert evs[-1][1]["response"]["output"][0]["content"][0]["text"] == "Say hello."


def test_built_in_tools_are_left_out_not_refused(parrot):
    """Codex offers the built-in web_search on every request by default: nothing here
    runs it, so the model is not offered it (as llama-server and vLLM leave it out),
    and the functions beside it are offered as ever."""
    url, model = parrot
    evs = stream_of(url, codex_body("Say hello."))
    assert evs[-1][0] == "response.completed", evs[-1]
    assert '"name": "get_weather"' in model.prompts[-1]
    assert "web_search" not in model.prompts[-1]
    r = client_of(url).responses.create(model="x", input="Hi.", tools=[
        {"type": "web_search"}, {"type": "file_search", "vector_store_ids": ["vs_1"]}])
    assert r.output_text == "Hi." and "get_weather" not in model.prompts[-1]
    assert "search" not in model.prompts[-1]


def test_namespaced_functions_are_offered_flat_and_called_with_their_namespace(parrot):
    """A namespace's functions are shown to the model as namespace__name (the flat name
    Codex gives them where a namespace cannot be said); the model's call to one comes
    back with its `namespace` and `name`, as OpenAI gives it, and goes back in so."""
    url, model = parrot
    client = client_of(url)
    r = client.responses.create(model="x", input=CLOSE, tools=[TOOLS[0], AGENTS])
    assert items(r) == [{"type": "function_call", "namespace": "multi_agent_v1",
                         "name": "close_agent", "arguments": '{"target": "a1"}',
                         "status": "completed"}]
    assert '"name": "multi_agent_v1__close_agent"' in model.prompts[-1]
    assert '"name": "get_weather"' in model.prompts[-1]
    evs = stream_of(url, {"input": CLOSE, "tools": [AGENTS]})
    done = [d["item"] for n, d in evs if n == "response.output_item.done"]
    assert [(i["namespace"], i["name"]) for i in done] == [("multi_agent_v1", "close_agent")]
    client.responses.create(model="x", tools=[AGENTS], input=[
        {"role": "user", "content": "Close a1."}, *r.output,
        {"type": "function_call_output", "call_id": r.output[0].call_id, "output": "closed"}])
    assert ('<tool_call>\n{"name": "multi_agent_v1__close_agent", "arguments": '
            '{"target": "a1"}}\n</tool_call>') in model.prompts[-1]
    # a plain function is named as it was
    r = client.responses.create(model="x", input=CLOSE.replace("multi_agent_v1__close_agent",
                                                                 "get_weather"), tools=TOOLS)
    assert r.output[0].name == "get_weather" and r.output[0].namespace is None


@pytest.mark.parametrize("tool, words", [
    ({**AGENTS, "tools": [{"type": "custom", "name": "apply_patch"}]},
     "'tools[0].tools[0]': tools of type 'custom' are not supported in a namespace"),
    ({**AGENTS, "tools": [{"type": "function", "name": ""}]},
     "'tools[0].tools[0]': 'name' must be a non-empty string"),
    ({**AGENTS, "name": 3}, "'tools[0]': 'name' must be a non-empty string"),
    ({**AGENTS, "tools": "close_agent"}, "'tools[0]': 'tools' must be a list of functions"),
])
def test_a_bad_namespace_is_a_400_naming_it(parrot, tool, words):
    status, r = post_json(parrot[0] + "/v1/responses", {"input": "hi", "tools": [tool]})
    assert status == 400 and words in r["error"]["message"], r


@pytest.mark.parametrize("path, body, words", [
    *[(path, {"input": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"},
                        {"role": "assistant", "content": "b"}]}, "'input': cannot have 2")
      for path in ("/v1/responses", "/v1/responses/input_tokens")],
    ("/v1/responses", {"input": "hi", "text": {"format": {"type": "json_schema", "name": 5,
                                         "schema": {"type": "object"}}}},
     "'text.format.name' must be a string"),
    ("/v1/responses", {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x",
                                         "schema": {"type": "nonsense"}}}},
     "'text.format.schema': unknown JSON schema type 'nonsense'"),
])
def test_the_chat_routes_400s_name_the_fields_the_client_sent(parrot, path, body, words):
    """The chat route checks what it was given ('messages', 'response_format'); a
    Responses client sent 'input' and 'text.format', and is told of those. (Counting
    tokens reads the prompt only, not the reply's format, as the Messages API's does.)"""
    status, r = post_json(parrot[0] + path, {**body, "max_output_tokens": 1})
    assert status == 400 and words in r["error"]["message"], r
    assert "'messages'" not in r["error"]["message"], r
    assert "response_format" not in r["error"]["message"], r


def test_input_tokens_counts_the_prompt_as_the_reply_uses_it(parrot):
    client = client_of(parrot[0])
    body = {"model": "x", "instructions": "Be brief.", "tools": [TOOLS[0], AGENTS],
            "input": [{"role": "user", "content": "Hello"}]}
    count = client.responses.input_tokens.count(**body)
    r = client.responses.create(**body, max_output_tokens=1)
    assert count.object == "response.input_tokens"
    assert count.input_tokens == r.usage.input_tokens > 0
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.input_tokens.count(model="x", previous_response_id="resp_1")
    assert "'previous_response_id' is not supported" in e.value.message
    status, headers, _ = http_request("GET", parrot[0] + "/v1/responses/input_tokens")
    assert status == 405 and headers["allow"] == "POST"


def test_no_response_is_stored_so_retrieve_and_delete_are_404(parrot):
    client = client_of(parrot[0])
    for call in (client.responses.retrieve, client.responses.delete,
                 client.responses.input_items.list):
        with pytest.raises(openai.NotFoundError) as e:
            call("resp_123")
        assert "no response 'resp_123' is stored" in e.value.message, call
    for path in ("/responses/resp_1", "/v1/responses/resp_1"):
        status, _, data = http_request("DELETE", parrot[0] + path)
        assert status == 404 and json.loads(data)["error"]["code"] == 404
