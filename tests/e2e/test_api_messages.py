"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens), as llama-server
serves it, through the real `anthropic` client and raw HTTP.

The reply is the chat route's: the tiny fixture model's greedy text must be what
/v1/chat/completions gives for the same request. Tool calls, stop sequences and thinking
use test_api_tools' parrot (its greedy reply is the last message, byte by byte) and
test_api_reasoning's thinking parrot under Qwen3's template.
"""
import json

import pytest

from tests.e2e.conftest import TINY, http_request, post_json
from tests.e2e.test_api_reasoning import QWEN3, serve_thinking
from tests.e2e.test_api_reasoning_budget import THOUGHT as LONG_THOUGHT
from tests.e2e.test_api_tools import HERMES, TWO, serve_parrot

anthropic = pytest.importorskip("anthropic", reason="the anthropic client is not installed")

TOOLS = [{"name": "get_weather", "description": "The weather in a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}},
         {"name": "get_time", "input_schema": {"type": "object"}}]
THOUGHT = "<think>\nThe user wants a city. Paris.\n</think>\n\nParis."


@pytest.fixture(scope="module")
def parrot():
    yield from serve_parrot()


@pytest.fixture(scope="module")
def qwen3():
    yield from serve_thinking(QWEN3)


def client_of(url, key="x"):
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=30)


def ask(text):
    return [{"role": "user", "content": text}]


def blocks(message) -> list:
    """A message's content blocks as plain dicts."""
    return [b.model_dump(exclude_none=True) for b in message.content]


def events_of(data: bytes) -> list:
    """(event name, data) of each Server-Sent Event of an Anthropic stream."""
    out = []
    for chunk in data.decode("utf-8").split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines() if ": " in line)
        if lines:
            out.append((lines.get("event"), json.loads(lines["data"])))
    return out


def greedy_chat(url: str, msgs: list, max_tokens: int) -> dict:
    """The chat route's greedy answer: what the translated APIs must give back."""
    status, chat = post_json(url + "/v1/chat/completions",
                             {"messages": msgs, "max_tokens": max_tokens, "temperature": 0})
    assert status == 200, chat
    return chat


# ---- text, whole and streamed -------------------------------------------------------------

def test_the_reply_is_the_chat_routes_whole_and_streamed(tiny_server):
    url, msgs = tiny_server.url, ask("Tell me about cats.")
    chat = greedy_chat(url, msgs, 10)
    want = chat["choices"][0]["message"]["content"]
    client = client_of(url)
    # The client (2.x) has no sampling parameters any more; the server still reads them.
    greedy = {"extra_body": {"temperature": 0}}
    m = client.messages.create(model="any", max_tokens=10, messages=msgs, **greedy)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert blocks(m) == [{"type": "text", "text": want}]
    assert m.stop_reason == {"length": "max_tokens", "stop": "end_turn"}[
        chat["choices"][0]["finish_reason"]]
    assert (m.usage.input_tokens, m.usage.output_tokens) == (
        chat["usage"]["prompt_tokens"], chat["usage"]["completion_tokens"])
    with client.messages.stream(model="any", max_tokens=10, messages=msgs, **greedy) as s:
        streamed = s.get_final_message()
    assert blocks(streamed) == blocks(m)
    assert (streamed.stop_reason, streamed.usage.output_tokens) == (m.stop_reason,
                                                                    m.usage.output_tokens)
    assert streamed.usage.input_tokens == m.usage.input_tokens
    # count_tokens counts the prompt the reply was made from
    n = client.messages.count_tokens(model="any", messages=msgs).input_tokens
    assert n == m.usage.input_tokens


def test_the_stream_has_anthropics_events_and_event_lines(parrot):
    status, headers, data = http_request("POST", parrot[0] + "/v1/messages", {
        "model": "x", "max_tokens": 100, "messages": ask("Hello"), "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    evs = events_of(data)
    assert all(name == d["type"] for name, d in evs)  # the event: line says the type
    names = [name for name, _ in evs]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta",
                          "message_stop"]
    start = evs[0][1]["message"]
    assert (start["role"], start["content"], start["stop_reason"]) == ("assistant", [], None)
    text = "".join(d["delta"]["text"] for n, d in evs if n == "content_block_delta")
    assert text == "Hello"
    assert evs[-2][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert evs[-2][1]["usage"]["output_tokens"] == len("Hello") + 1  # and the end token


def test_a_system_prompt_as_a_string_or_text_blocks(parrot):
    url, model = parrot
    client = client_of(url)
    client.messages.create(model="x", max_tokens=50, system="Be brief.", messages=ask("Hi"))
    assert "<|im_start|>system\nBe brief.<|im_end|>" in model.prompts[-1]
    client.messages.create(model="x", max_tokens=50, messages=ask("Hi"), system=[
        {"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}])
    assert "<|im_start|>system\nBe brief.\nBe kind.<|im_end|>" in model.prompts[-1]


def test_claude_codes_per_request_stamp_does_not_change_the_prompt(parrot):
    """Claude Code's first system block carries a stamp that differs on every request:
    left as it is, no request would find the last one's prompt in the cache."""
    url, model = parrot
    prompts = []
    for stamp in ("a5145", "0b9c2"):
        header = f"x-anthropic-billing-header: cc_version=2.1.101.e51; cch={stamp}; more"
        client_of(url).messages.create(model="x", max_tokens=50, messages=ask("Hi"), system=[
            {"type": "text", "text": header}, {"type": "text", "text": "You are Claude Code."}])
        prompts.append(model.prompts[-1])
    assert prompts[0] == prompts[1]
    assert "cc_version=2.1.101.e51; cch=00000; more\nYou are Claude Code." in prompts[0]


# ---- why the reply stopped --------------------------------------------------------------

def test_a_stop_sequence_and_max_tokens(parrot):
    client = client_of(parrot[0])
    kw = dict(model="x", messages=ask("Hello STOP world"))
    m = client.messages.create(max_tokens=100, stop_sequences=["STOP"], **kw)
    assert blocks(m) == [{"type": "text", "text": "Hello "}]
    assert (m.stop_reason, m.stop_sequence) == ("stop_sequence", "STOP")
    with client.messages.stream(max_tokens=100, stop_sequences=["STOP"], **kw) as s:
        streamed = s.get_final_message()
    assert (streamed.stop_reason, streamed.stop_sequence) == ("stop_sequence", "STOP")
    assert blocks(streamed) == blocks(m)
    m = client.messages.create(max_tokens=3, **kw)
    assert (blocks(m), m.stop_reason, m.stop_sequence) == (
        [{"type": "text", "text": "Hel"}], "max_tokens", None)
    m = client.messages.create(max_tokens=100, **kw)
    assert (m.stop_reason, m.stop_sequence) == ("end_turn", None)


# ---- tools ------------------------------------------------------------------------------

def test_tool_use_round_trip(parrot):
    url, model = parrot
    client = client_of(url)
    m = client.messages.create(model="x", max_tokens=300, messages=ask(HERMES), tools=TOOLS)
    assert m.stop_reason == "tool_use"
    text, call = m.content
    assert (text.type, text.text) == ("text", "Let me check.")
    assert (call.type, call.name, call.input) == ("tool_use", "get_weather", {"city": "Paris"})
    with client.messages.stream(model="x", max_tokens=300, messages=ask(HERMES),
                                tools=TOOLS) as s:
        streamed = s.get_final_message()
    assert streamed.stop_reason == "tool_use"
    assert [b for b in blocks(streamed) if b["type"] != "tool_use"] == [blocks(m)[0]]
    assert [(b.name, b.input) for b in streamed.content if b.type == "tool_use"] == [
        ("get_weather", {"city": "Paris"})]
    # The call and its result go back into the prompt as the template writes them.
    m2 = client.messages.create(model="x", max_tokens=300, tools=TOOLS, messages=[
        *ask(HERMES), {"role": "assistant", "content": m.content},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call.id,
             "content": [{"type": "text", "text": "Sunny, 21 C"}]},
            {"type": "text", "text": "Thanks"}]}])
    prompt = model.prompts[-1]
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert "<tool_response>\nSunny, 21 C\n</tool_response>" in prompt
    assert prompt.index("Sunny") < prompt.rindex("Thanks")
    assert blocks(m2) == [{"type": "text", "text": "Thanks"}] and m2.stop_reason == "end_turn"


def test_two_calls_streamed_as_blocks_and_tool_choice_none(parrot):
    status, _, data = http_request("POST", parrot[0] + "/v1/messages", {
        "model": "x", "max_tokens": 300, "messages": ask(TWO), "tools": TOOLS,
        "stream": True})
    assert status == 200
    evs = events_of(data)
    starts = [d for n, d in evs if n == "content_block_start"]
    assert [(d["index"], d["content_block"]["name"]) for d in starts] == [
        (0, "get_weather"), (1, "get_time")]
    args = [d["delta"]["partial_json"] for n, d in evs if n == "content_block_delta"]
    assert [json.loads(a) for a in args] == [{"city": "Paris"}, {}]
    assert evs[-2][1]["delta"]["stop_reason"] == "tool_use"
    # tool_choice none: the reply is text, never searched for calls
    m = client_of(parrot[0]).messages.create(model="x", max_tokens=300, messages=ask(HERMES),
                                             tools=TOOLS, tool_choice={"type": "none"})
    assert blocks(m) == [{"type": "text", "text": HERMES}] and m.stop_reason == "end_turn"


# ---- thinking ---------------------------------------------------------------------------

def test_thinking_comes_back_as_a_thinking_block(qwen3):
    client = client_of(qwen3[0])
    m = client.messages.create(model="x", max_tokens=200, messages=ask(THOUGHT))
    assert blocks(m) == [
        {"type": "thinking", "thinking": "The user wants a city. Paris.", "signature": ""},
        {"type": "text", "text": "Paris."}]
    with client.messages.stream(model="x", max_tokens=200, messages=ask(THOUGHT)) as s:
        kinds = [e.delta.type for e in s if e.type == "content_block_delta"]
        streamed = s.get_final_message()
    assert blocks(streamed) == blocks(m)
    assert kinds[-1] == "text_delta" and "signature_delta" in kinds
    assert kinds == sorted(kinds, key=["thinking_delta", "signature_delta", "text_delta"].index)


def test_budget_tokens_is_the_chat_routes_reasoning_budget(qwen3):
    url = qwen3[0]
    status, chat = post_json(url + "/v1/chat/completions", {
        "messages": ask(LONG_THOUGHT), "temperature": 0, "thinking_budget_tokens": 5})
    assert status == 200, chat
    want = chat["choices"][0]["message"]
    assert want["reasoning_content"] == "One"  # the budget cut the thought
    m = client_of(url).messages.create(model="x", max_tokens=200, messages=ask(LONG_THOUGHT),
                                       thinking={"type": "enabled", "budget_tokens": 5})
    assert blocks(m) == [{"type": "thinking", "thinking": "One", "signature": ""},
                         {"type": "text", "text": want["content"]}]
    # A past thinking block goes back to the template as the turn's reasoning.
    client_of(url).messages.create(model="x", max_tokens=200, messages=[
        *ask("Hi"), {"role": "assistant", "content": m.content}, *ask("Again")])
    assert qwen3[1].seen[-1][1]["reasoning_content"] == "One"


# ---- count_tokens -----------------------------------------------------------------------

def test_count_tokens_equals_the_replys_input_tokens(parrot):
    client = client_of(parrot[0])
    kw = dict(model="x", system="Be brief.", messages=ask(HERMES), tools=TOOLS)
    m = client.messages.create(max_tokens=300, **kw)
    assert client.messages.count_tokens(**kw).input_tokens == m.usage.input_tokens
    status, r = post_json(parrot[0] + "/v1/messages/count_tokens", kw)
    assert (status, r) == (200, {"input_tokens": m.usage.input_tokens})


# ---- errors and auth --------------------------------------------------------------------

@pytest.mark.parametrize("body, words", [
    ({"messages": ask("hi")}, "'max_tokens' is required"),
    ({"max_tokens": 0, "messages": ask("hi")}, "'max_tokens'"),
    ({"max_tokens": 9, "messages": [{"role": "tool", "content": "x"}]}, "messages[0]: 'role'"),
    ({"max_tokens": 9, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": "AA=="}}]}]}, "image input is not supported"),
    ({"max_tokens": 9, "messages": ask("hi"), "stop_sequences": "x"}, "'stop_sequences'"),
    ({"max_tokens": 9, "messages": ask("hi"), "tool_choice": {"type": "tool"}}, "'tool_choice'"),
    ({"max_tokens": 9, "messages": ask("hi"), "tools": [{"type": "web_search_20250305",
                                                        "name": "web_search"}]}, "'tools[0]'"),
    ({"max_tokens": 9, "messages": ask("hi"), "thinking": {"type": "enabled",
                                                          "budget_tokens": -1}}, "budget_tokens"),
])
def test_bad_requests_are_400_in_anthropics_shape(parrot, body, words):
    status, r = post_json(parrot[0] + "/v1/messages", {"model": "x", **body})
    assert status == 400
    assert r["type"] == "error" and r["error"]["type"] == "invalid_request_error", r
    assert words in r["error"]["message"], r


def test_bad_json_a_too_large_body_and_the_wrong_method(parrot):
    status, _, data = http_request("POST", parrot[0] + "/v1/messages", b'{"model": ')
    r = json.loads(data)
    assert status == 400 and r["type"] == "error" and "JSON" in r["error"]["message"]
    status, _, data = http_request("POST", parrot[0] + "/v1/messages/count_tokens",
                                   b"x" * (2 << 20))
    assert status == 413
    assert json.loads(data)["error"]["type"] == "request_too_large"
    status, headers, data = http_request("GET", parrot[0] + "/v1/messages")
    assert status == 405 and headers["allow"] == "POST"
    assert json.loads(data)["type"] == "error"
    # The other routes keep OpenAI's shape.
    status, r = post_json(parrot[0] + "/v1/chat/completions", {})
    assert status == 400 and r["error"]["code"] == 400 and "type" not in r


def test_the_client_raises_bad_request_error(parrot):
    with pytest.raises(anthropic.BadRequestError) as e:
        client_of(parrot[0]).messages.create(model="x", max_tokens=9, messages=[
            {"role": "user", "content": [{"type": "image", "source": {
                "type": "url", "url": "https://example.com/cat.png"}}]}])
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert "image input is not supported" in e.value.message


def test_x_api_key_and_bearer_auth(server_factory):
    url = server_factory(TINY, "--api-key", "sekrit").url
    m = client_of(url, "sekrit").messages.create(model="x", max_tokens=2, messages=ask("hi"))
    assert m.usage.output_tokens >= 1
    with pytest.raises(anthropic.AuthenticationError):
        client_of(url, "wrong").messages.create(model="x", max_tokens=2, messages=ask("hi"))
    status, _, data = http_request("POST", url + "/v1/messages/count_tokens",
                                   {"messages": ask("hi")})
    assert status == 401
    assert json.loads(data)["error"]["type"] == "authentication_error"
    status, r = post_json(url + "/v1/messages/count_tokens", {"messages": ask("hi")},
                          headers={"Authorization": "Bearer sekrit"})
    assert status == 200 and r["input_tokens"] > 0
