"""OpenAI's Responses API (/v1/responses), as llama-server serves it (a translation to and
from the chat route), through the real `openai` client and raw HTTP.

The reply is the chat route's: the tiny fixture model's greedy text must be what
/v1/chat/completions gives for the same request. Function calls, JSON formats and
reasoning use test_api_tools' parrot (its greedy reply is the last message, byte by
byte) and test_api_reasoning's thinking parrot under Qwen3's template.
"""
import json

import pytest
from pydantic import BaseModel

from tests.e2e.conftest import http_request, post_json
from tests.e2e.test_api_messages import (ask, events_of, greedy_chat,  # noqa: F401 - fixtures
                                     parrot, qwen3)
from tests.e2e.test_api_tools import BARE, HERMES, TWO, ParrotModel, ParrotSession, serve_parrot

openai = pytest.importorskip("openai", reason="the openai client is not installed")

TOOLS = [{"type": "function", "name": "get_weather", "description": "The weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}},
         {"type": "function", "name": "get_time", "parameters": {"type": "object"}}]
THOUGHT = "<think>\nThe user wants a city. Paris.\n</think>\n\nParis."


def client_of(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)


def items(response) -> list:
    """A response's output items as plain dicts, without their (random) ids."""
    out = []
    for item in response.output:
        d = item.model_dump(exclude_none=True)
        d.pop("id"), d.pop("call_id", None)
        out.append(d)
    return out


def text_item(text, status="completed"):
    return {"type": "message", "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}]}


def stream_of(url, body) -> list:
    """(event name, data) of each event of a raw streamed request."""
    status, headers, data = http_request("POST", url + "/v1/responses", {**body, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream"), data
    return events_of(data)


# ---- text, whole and streamed -------------------------------------------------------------

def test_the_reply_is_the_chat_routes_whole_and_streamed(tiny_server):
    url, msgs = tiny_server.url, ask("Tell me about cats.")
    chat = greedy_chat(url, msgs, 10)
    want = chat["choices"][0]["message"]["content"]
    client = client_of(url)
    kw = dict(model="any", input="Tell me about cats.", max_output_tokens=10, temperature=0)
    r = client.responses.create(**kw)
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.output_text == want  # the client's convenience: the message's text
    length = chat["choices"][0]["finish_reason"] == "length"
    assert r.status == ("incomplete" if length else "completed")
    assert items(r) == [text_item(want, r.status)]
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (
        chat["usage"]["prompt_tokens"], chat["usage"]["completion_tokens"],
        chat["usage"]["total_tokens"])
    with client.responses.stream(**kw) as s:
        evs = list(s)
    # (The client's get_final_response() wants response.completed: a reply cut by
    # max_output_tokens ends with response.incomplete, as OpenAI's does.)
    assert evs[-1].type == ("response.incomplete" if length else "response.completed")
    streamed = evs[-1].response
    deltas = [e.delta for e in evs if e.type == "response.output_text.delta"]
    assert "".join(deltas) == want and streamed.output_text == want
    assert (items(streamed), streamed.status) == (items(r), r.status)
    assert (streamed.usage.input_tokens, streamed.usage.output_tokens) == (
        r.usage.input_tokens, r.usage.output_tokens)


def test_the_stream_has_the_named_events_in_order(parrot):
    evs = stream_of(parrot[0], {"model": "x", "input": "Hello"})
    assert all(name == d["type"] for name, d in evs)  # the event: line says the type
    assert [d["sequence_number"] for _, d in evs] == list(range(len(evs)))
    names = [name for name, _ in evs]
    assert names == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added",
                     *["response.output_text.delta"] * (len(names) - 8),
                     "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", "response.completed"]
    assert evs[0][1]["response"]["status"] == "in_progress"
    assert evs[0][1]["response"]["output"] == []
    text = "".join(d["delta"] for n, d in evs if n == "response.output_text.delta")
    assert text == "Hello" == evs[-4][1]["text"]
    done = evs[-1][1]["response"]
    assert done["status"] == "completed" and done["id"] == evs[0][1]["response"]["id"]
    assert done["output"] == [evs[-2][1]["item"]]
    assert done["usage"]["output_tokens"] == len("Hello") + 1  # and the end token
    assert "[DONE]" not in json.dumps(evs)


def test_instructions_and_input_items_make_the_prompt(parrot):
    url, model = parrot
    client = client_of(url)
    r = client.responses.create(model="x", instructions="Be brief.", input=[
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Hello!"}]},
        {"type": "message", "role": "user", "content": "Again"}])
    assert r.output_text == "Again"
    prompt = model.prompts[-1]
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n"
                             "<|im_start|>system\nAnswer in English.<|im_end|>")
    assert ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
            "<|im_start|>user\nAgain<|im_end|>") in prompt


def test_max_output_tokens_makes_the_response_incomplete(parrot):
    client = client_of(parrot[0])
    r = client.responses.create(model="x", input="Hello world", max_output_tokens=3)
    assert (r.status, r.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert items(r) == [text_item("Hel", "incomplete")] and r.usage.output_tokens == 3
    evs = stream_of(parrot[0], {"input": "Hello world", "max_output_tokens": 3})
    assert evs[-1][0] == "response.incomplete"
    done = evs[-1][1]["response"]
    assert done["incomplete_details"] == {"reason": "max_output_tokens"}
    assert done["output"][0]["content"][0]["text"] == "Hel"
    r = client.responses.create(model="x", input="Hello world", max_output_tokens=100)
    assert (r.status, r.incomplete_details) == ("completed", None)


# ---- function calls -----------------------------------------------------------------------

def test_a_function_call_and_its_output_sent_back(parrot):
    url, model = parrot
    client = client_of(url)
    r = client.responses.create(model="x", input=HERMES, tools=TOOLS)
    assert items(r) == [text_item("Let me check."), {
        "type": "function_call", "name": "get_weather", "arguments": '{"city": "Paris"}',
        "status": "completed"}]
    call = r.output[1]
    assert call.id.startswith("fc_") and call.call_id
    with client.responses.stream(model="x", input=HERMES, tools=TOOLS) as s:
        streamed = s.get_final_response()
    assert items(streamed) == items(r)
    # The client sends the reply's items back with the call's output, as agents do.
    r2 = client.responses.create(model="x", tools=TOOLS, input=[
        {"role": "user", "content": HERMES}, *r.output,
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}])
    prompt = model.prompts[-1]
    assert ('<|im_start|>assistant\nLet me check.\n<tool_call>\n{"name": "get_weather", '
            '"arguments": {"city": "Paris"}}\n</tool_call><|im_end|>') in prompt
    assert "<tool_response>\nSunny, 21 C\n</tool_response>" in prompt
    assert r2.output_text == "Sunny, 21 C" and r2.status == "completed"


def test_two_calls_streamed_as_items_and_tool_choice_none(parrot):
    evs = stream_of(parrot[0], {"input": TWO, "tools": TOOLS})
    names = [n for n, _ in evs]
    assert names[2:] == ["response.output_item.added", "response.function_call_arguments.delta",
                         "response.function_call_arguments.done",
                         "response.output_item.done"] * 2 + ["response.completed"]
    added = [d for n, d in evs if n == "response.output_item.added"]
    assert [(d["output_index"], d["item"]["name"], d["item"]["status"]) for d in added] == [
        (0, "get_weather", "in_progress"), (1, "get_time", "in_progress")]
    dones = [d for n, d in evs if n == "response.function_call_arguments.done"]
    assert [json.loads(d["arguments"]) for d in dones] == [{"city": "Paris"}, {}]
    assert [d["item_id"] for d in dones] == [d["item"]["id"] for d in added]
    assert [i["name"] for i in evs[-1][1]["response"]["output"]] == ["get_weather", "get_time"]
    # tool_choice none: the reply is text, never searched for calls
    r = client_of(parrot[0]).responses.create(model="x", input=HERMES, tools=TOOLS,
                                              tool_choice="none")
    assert items(r) == [text_item(HERMES)]


def test_tool_choice_required_and_a_named_function_give_the_call(parrot):
    """Responses' flat {"type": "function", "name"} is the chat route's named choice: the
    reply is constrained to be that call."""
    client = client_of(parrot[0])
    for choice in ("required", {"type": "function", "name": "get_weather"}):
        r = client.responses.create(model="x", input=BARE, tools=TOOLS, tool_choice=choice,
                                    temperature=0)
        assert [(i.type, i.name, json.loads(i.arguments)) for i in r.output] == [
            ("function_call", "get_weather", {"city": "Zürich"})], choice
    status, r = post_json(parrot[0] + "/v1/responses", {
        "input": BARE, "tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}})
    assert status == 400 and "'nope', which is not in 'tools'" in r["error"]["message"]


# ---- text.format ----------------------------------------------------------------------------

class City(BaseModel):
    city: str


def test_a_json_schema_format_is_parsed_by_the_client(parrot):
    """text.format json_schema is the chat route's response_format: the reply is held to
    the schema (the parrot's text is cut where the JSON value ends)."""
    client = client_of(parrot[0])
    r = client.responses.parse(model="x", input='{"city": "Paris"} and more', text_format=City)
    assert r.output_parsed == City(city="Paris")
    assert json.loads(r.output_text) == {"city": "Paris"}
    r = client.responses.create(model="x", input='{"a": 1} and more',
                                text={"format": {"type": "json_object"}})
    assert json.loads(r.output_text) == {"a": 1}
    assert r.text.format.type == "json_object"


# ---- reasoning --------------------------------------------------------------------------

def test_reasoning_comes_back_as_a_reasoning_item_and_goes_back_in(qwen3):
    client = client_of(qwen3[0])
    r = client.responses.create(model="x", input=THOUGHT)
    assert items(r) == [
        {"type": "reasoning", "summary": [], "status": "completed",
         "content": [{"type": "reasoning_text", "text": "The user wants a city. Paris."}]},
        text_item("Paris.")]
    with client.responses.stream(model="x", input=THOUGHT) as s:
        kinds = [e.type for e in s if e.type.endswith(".delta")]
        streamed = s.get_final_response()
    assert items(streamed) == items(r)
    assert kinds == sorted(kinds, key=["response.reasoning_text.delta",
                                       "response.output_text.delta"].index)
    # A past reasoning item goes back to the template as the turn's reasoning.
    client.responses.create(model="x", input=[*ask("Hi"), *r.output, *ask("Again")])
    assert qwen3[1].seen[-1][1] == {"role": "assistant", "content": "Paris.",
                                    "reasoning_content": "The user wants a city. Paris."}


# ---- errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("body, words", [
    ({}, "'input' is required"),
    ({"input": []}, "'input'"),
    ({"input": "hi", "previous_response_id": "resp_1"}, "'previous_response_id' is not supported"),
    ({"input": "hi", "conversation": "conv_1"}, "'conversation' is not supported"),
    ({"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "https://example.com/cat.png"}]}]},
     "image input is not supported"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0]: 'role'"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "'item_reference'"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "'call_id'"),
    ({"input": "hi", "tools": [{"name": "f"}]}, "'tools[0]': 'type'"),
    ({"input": "hi", "tool_choice": {"type": "file_search"}}, "'tool_choice'"),
    ({"input": "hi", "text": {"format": {"type": "yaml"}}}, "'text.format'"),
    ({"input": "hi", "max_output_tokens": 0}, "'max_output_tokens'"),
    ({"input": "hi", "background": True}, "'background'"),
])
def test_bad_requests_are_400_in_openais_shape(parrot, body, words):
    for path in ("/v1/responses", "/responses"):
        status, r = post_json(parrot[0] + path, {"model": "x", **body})
        assert status == 400 and r["error"]["code"] == 400, r
        assert r["error"]["type"] == "invalid_request_error", r
        assert words in r["error"]["message"], r


def test_the_client_raises_bad_request_error_and_get_is_405(parrot):
    with pytest.raises(openai.BadRequestError) as e:
        client_of(parrot[0]).responses.create(model="x", input="hi",
                                              previous_response_id="resp_1")
    assert "previous_response_id" in e.value.message
    status, headers, data = http_request("GET", parrot[0] + "/v1/responses")
    assert status == 405 and headers["allow"] == "POST"
    assert json.loads(data)["error"]["code"] == 405


class BrokenSession(ParrotSession):
    """The parrot, failing when it is to read back a "!" it wrote."""

    def eval(self, ids, all_logits=False):
        if list(ids) == [ord("!")]:
            raise RuntimeError("the weights caught fire")
        return super().eval(ids, all_logits)


class BrokenParrot(ParrotModel):
    def session(self, n_ctx):
        return BrokenSession(n_ctx)


def test_an_error_after_the_stream_began_is_an_error_event():
    server = serve_parrot(BrokenParrot())
    url, _ = next(server)
    try:
        evs = stream_of(url, {"input": "Hi! there"})
        names = [n for n, _ in evs]
        assert names[:2] == ["response.created", "response.in_progress"]
        assert names[-2:] == ["error", "response.failed"] and "response.completed" not in names
        assert [d["sequence_number"] for _, d in evs] == list(range(len(evs)))
        err, failed = evs[-2][1], evs[-1][1]["response"]
        assert "the weights caught fire" in err["message"]
        assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
        assert "the weights caught fire" in failed["error"]["message"]
        with client_of(url).responses.stream(model="x", input="Hi! there") as s:
            got = list(s)  # the client reads both as events
        assert [e.type for e in got[-2:]] == ["error", "response.failed"]
        assert "the weights caught fire" in got[-1].response.error.message
    finally:
        next(server, None)


def test_a_silent_stream_says_in_progress_again_until_the_reply_comes():
    """While the reply's first chunk has not come (a long prefill on a CPU: minutes for
    an agent's prompt of tools), the stream sends response.in_progress again every
    keepalive_every_s: Codex CLI drops a stream that sent no event for 300 s. The reply
    then streams as usual, its sequence numbers unbroken."""
    import threading
    from types import SimpleNamespace

    from runtime import responses_api
    enough = threading.Event()

    def chunks():
        enough.wait(timeout=60)
        yield {"choices": [{"delta": {"content": "Hi"}}]}
        yield {"choices": [{"delta": {}, "finish_reason": "stop"}]}
        yield b"data: [DONE]\n\n"
    evs = []
    events = responses_api.Events(responses_api.head({"input": "x"}, "m"))
    final = SimpleNamespace(prompt_tokens=1, completion_tokens=1, timings=None)
    for raw in events.stream(chunks(), [final], keepalive_every_s=0.05):
        evs += events_of(raw)
        if [n for n, _ in evs].count("response.in_progress") == 3:
            enough.set()
    names = [n for n, _ in evs]
    assert names[:3] == ["response.created", "response.in_progress", "response.in_progress"]
    assert names.count("response.in_progress") >= 3 and names[-1] == "response.completed"
    assert [d["delta"] for n, d in evs if n == "response.output_text.delta"] == ["Hi"]
    assert [d["sequence_number"] for _, d in evs] == list(range(len(evs)))
    assert all(d["response"]["status"] == "in_progress" for n, d in evs
               if n == "response.in_progress")
