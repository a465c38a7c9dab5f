"""Anthropic's Messages API as Claude Code (2.1.197) uses it: its requests replayed as it
sent them through a logging proxy (trimmed: a short system block list, two tools), with
its query string, headers and fields, against test_api_tools' parrot (its greedy reply is
the last message). What Claude Code needs: its request answered, not refused; a prompt
too long for the context said in the words it recognises; and bytes on a stream while a
long prefill is silent, or its watchdog drops the stream after 300 s and asks again.
"""
import json
import re
import sys
import threading

import pytest

from runtime import messages_api
from tests.e2e.conftest import http_request, post_json
from tests.e2e.test_api_messages import (  # noqa: F401 - parrot: the fixture
    anthropic, blocks, events_of, parrot)

# Claude Code's own headers (x-stainless-* trimmed to two) and query string.
HEADERS = {"anthropic-version": "2023-06-01", "Authorization": "Bearer x", "x-app": "cli",
           "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,"
                             "context-management-2025-06-27,mid-conversation-system-2026-04-07",
           "anthropic-dangerous-direct-browser-access": "true",
           "User-Agent": "claude-cli/2.1.197 (external, sdk-cli)",
           "X-Stainless-Retry-Count": "0", "X-Stainless-Timeout": "600"}
MESSAGES_URL = "/v1/messages?beta=true"
AGENTS = "Available agent types for the Agent tool:\n- Explore: Read-only search agent."
SYSTEM = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.197.123; "
                                   "cc_entrypoint=sdk-cli; cch=3f9a1;"},
          {"type": "text", "text": "You are a Claude agent.",
           "cache_control": {"type": "ephemeral"}},
          {"type": "text", "text": "\nYou are an interactive agent.",
           "cache_control": {"type": "ephemeral"}}]
TOOLS = [{"name": "Bash", "description": "Executes a given bash command.",
          "input_schema": {"$schema": "https://json-schema.org/draft/2020-12/schema",
                           "type": "object", "additionalProperties": False,
                           "properties": {"command": {"type": "string"},
                                          "timeout": {"type": "number"}},
                           "required": ["command"]}},
         {"name": "Read", "description": "Reads a file.",
          "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}},
                           "required": ["file_path"]}}]


def claude_code_body(text: str) -> dict:
    """Claude Code's first request of `claude -p TEXT`, as it sent it: the user's turn as
    text blocks (a reminder, then the prompt with cache_control), then a system turn."""
    return {
        "model": "qwen", "max_tokens": 32000, "stream": True, "system": SYSTEM, "tools": TOOLS,
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>\nToday's date is 2026-12-01.\n"
                                         "</system-reminder>\n\n"},
                {"type": "text", "text": text, "cache_control": {"type": "ephemeral"}}]},
            {"role": "system", "content": AGENTS}],
        "metadata": {"user_id": json.dumps({"device_id": "630d", "account_uuid": "",
                                            "session_id": "6086c5ba"})},
        "thinking": {"type": "adaptive"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"}}


def test_claude_codes_request_with_a_system_turn_is_answered(parrot):  # noqa: F811
    """Claude Code 2.1 sends a system turn among the messages (its list of agent types):
    it was a 400 ("'role' must be user or assistant"), so Claude Code said only "API
    Error: 400" to every prompt. llama-server passes it to the template, as we now do."""
    url, model = parrot
    status, headers, data = http_request("POST", url + MESSAGES_URL, claude_code_body("Hi"),
                                         headers=HEADERS)
    assert status == 200, data
    assert headers["content-type"].startswith("text/event-stream")
    evs = events_of(data)
    names = [name for name, _ in evs]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta",
                                                                      "message_stop"]
    # the system turn is where Claude Code put it: after the user's, before the reply
    prompt = model.prompts[-1]
    assert f"Hi<|im_end|>\n<|im_start|>system\n{AGENTS}<|im_end|>\n<|im_start|>assistant" in prompt
    # count_tokens (its body without max_tokens and stream) counts that prompt
    body = claude_code_body("Hi")
    del body["max_tokens"], body["stream"]
    status, counted = post_json(url + "/v1/messages/count_tokens?beta=true", body, HEADERS)
    start = evs[0][1]["message"]
    assert (status, counted) == (200, {"input_tokens": start["usage"]["input_tokens"]})
    # a system turn as text blocks too; any other block in it is refused, by name
    turn = {"role": "system", "content": [{"type": "text", "text": AGENTS}]}
    status, m = post_json(url + "/v1/messages", {**body, "max_tokens": 50, "messages": [
        *body["messages"][:1], turn]})
    assert status == 200 and model.prompts[-1] == prompt, m
    turn["content"].append({"type": "tool_use", "id": "t", "name": "Bash", "input": {}})
    status, r = post_json(url + "/v1/messages", {**body, "max_tokens": 50, "messages": [
        *body["messages"][:1], turn]})
    assert status == 400 and "messages[1].content[1]" in r["error"]["message"], r


# Claude Code's own test for Anthropic's error (its function behind "Prompt is too long").
TOO_LONG_RE = re.compile(r"prompt is too long[^0-9]*(\d+)\s*tokens?\s*>\s*(\d+)", re.I)


@pytest.mark.parametrize("stream", [True, False])
def test_a_prompt_too_long_is_said_in_anthropics_words(parrot, stream):  # noqa: F811
    """A prompt past the context was a 400 that Claude Code showed as a bare "API Error:
    400 ...": it recognises this error only by Anthropic's "prompt is too long: N tokens >
    M" (then it says "Prompt is too long", and may compact)."""
    url = parrot[0]
    body = claude_code_body("x" * 5000)  # the parrot's tokens are bytes; its context 4096
    body["stream"] = stream
    status, _, data = http_request("POST", url + MESSAGES_URL, body, headers=HEADERS)
    r = json.loads(data)
    assert status == 400 and r["type"] == "error", r
    assert r["error"]["type"] == "invalid_request_error"
    found = TOO_LONG_RE.search(r["error"]["message"])
    assert found, r
    del body["max_tokens"], body["stream"]
    status, counted = post_json(url + "/v1/messages/count_tokens", body)
    assert status == 200
    assert (int(found[1]), int(found[2])) == (counted["input_tokens"], 4096)
    # and what to do about it, as on the other routes
    assert "--ctx" in r["error"]["message"] or "shorten it" in r["error"]["message"]


def keepalive_stream(held_chunk: dict, n_keepalives: int, sent_chunks=(),
                     raw_events: list | None = None) -> list:
    """The (name, data) events of stream_events over chat chunks: sent_chunks at once,
    then held_chunk (then the end) held back until n_keepalives empty deltas went out.
    raw_events, when given, gets the events' bytes."""
    enough = threading.Event()

    def chunks():
        yield from sent_chunks
        enough.wait(timeout=60)
        yield held_chunk
        yield {"choices": [{"delta": {}, "finish_reason": "stop"}]}
        yield b"data: [DONE]\n\n"
    evs, n_empty = [], 0
    for raw in messages_api.stream_events(chunks(), 5, "msg_1", "m", [],
                                          keepalive_every_s=0.05):
        evs += events_of(raw)
        if raw_events is not None:
            raw_events.append(raw)
        delta = evs[-1][1].get("delta", {})
        n_empty += "" in (delta.get("text"), delta.get("thinking"), delta.get("partial_json"))
        if n_empty == n_keepalives:
            enough.set()
    return evs


def test_a_silent_prefill_sends_empty_deltas_on_the_replys_text_block():
    """While the reply's first chunk has not come (a long prefill), the stream sends an
    empty text delta every keepalive_every_s: Claude Code drops a stream that sent no
    event for 300 s (a ping does not count: its client drops pings), then asked again
    unstreamed and timed out again. The reply's text fills that same block."""
    evs = keepalive_stream({"choices": [{"delta": {"content": "Hi"}}]}, 2)
    names = [name for name, _ in evs]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta",
                     "content_block_delta", "content_block_delta", "content_block_stop",
                     "message_delta", "message_stop"], names
    assert evs[2][1]["content_block"] == {"type": "text", "text": ""}
    assert [d["delta"]["text"] for n, d in evs if n == "content_block_delta"] == ["", "", "Hi"]
    assert {d["index"] for n, d in evs if n.startswith("content_block")} == {0}


def test_a_reply_that_is_a_call_or_a_thought_after_the_keepalive():
    """An empty text block, then the reply's own blocks, numbered on: a message Claude
    Code and the anthropic client read as [text "", tool_use]."""
    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "Bash", "arguments": '{"command": "ls"}'}}
    evs = keepalive_stream({"choices": [{"delta": {"tool_calls": [call]}}]}, 1)
    starts = [(d["index"], d["content_block"]["type"]) for n, d in evs
              if n == "content_block_start"]
    assert starts == [(0, "text"), (1, "tool_use")]
    evs = keepalive_stream({"choices": [{"delta": {"reasoning_content": "Hm"}}]}, 1)
    starts = [(d["index"], d["content_block"]["type"]) for n, d in evs
              if n == "content_block_start"]
    assert starts == [(0, "text"), (1, "thinking")]


CALL_LS = {"index": 0, "id": "call_1", "type": "function",
           "function": {"name": "Bash", "arguments": '{"command": "ls"}'}}
CALL_PWD = {"index": 1, "id": "call_2", "type": "function",
            "function": {"name": "Bash", "arguments": '{"command": "pwd"}'}}


def delta_chunk(**delta) -> dict:
    return {"choices": [{"delta": delta}]}


# (what went out, what is held back meanwhile) -> the blocks, and the empty delta between
KEEPALIVES_IN_A_BLOCK = [
    (delta_chunk(tool_calls=[CALL_LS]), delta_chunk(tool_calls=[CALL_PWD]),
     ["tool_use", "tool_use"], {"type": "input_json_delta", "partial_json": ""}),
    (delta_chunk(reasoning_content="Hm"), delta_chunk(content="Hi"),
     ["thinking", "text"], {"type": "thinking_delta", "thinking": ""}),
    (delta_chunk(content="Hi"), delta_chunk(tool_calls=[CALL_LS]),
     ["text", "tool_use"], {"type": "text_delta", "text": ""})]


@pytest.mark.parametrize("sent, held, kinds, empty", KEEPALIVES_IN_A_BLOCK)
def test_a_keepalive_goes_on_the_open_block_never_a_new_one(sent, held, kinds, empty):
    """A keepalive after a tool call opened a new text block: the message became
    [tool_use, text "", tool_use]. The call's block now stays open until the next piece,
    and the keepalive is an empty input_json_delta on it (as Anthropic's own streams
    send); on an open thought or text, an empty delta of its kind."""
    evs = keepalive_stream(held, 2, sent_chunks=[sent])
    starts = [(d["index"], d["content_block"]["type"]) for n, d in evs
              if n == "content_block_start"]
    assert starts == list(enumerate(kinds)), starts
    first = [d["delta"] for n, d in evs if n == "content_block_delta" and d["index"] == 0]
    assert first[-2:] == [empty, empty] or first[-3:-1] == [empty, empty], first
    # every delta and stop goes to a block that is open
    open_index = None
    for name, d in evs:
        if name == "content_block_start":
            assert open_index is None
            open_index = d["index"]
        elif name == "content_block_delta":
            assert d["index"] == open_index
        elif name == "content_block_stop":
            assert d["index"] == open_index
            open_index = None


def test_the_anthropic_client_reads_a_keepalive_between_calls():
    """The anthropic client's own stream reader, over those bytes: two calls, with their
    whole input, and nothing else."""
    raw = []
    keepalive_stream(delta_chunk(tool_calls=[CALL_PWD]), 2,
                     sent_chunks=[delta_chunk(tool_calls=[CALL_LS])], raw_events=raw)
    # The client's HTTP library (httpx, or its fork in newer clients), for a transport
    # that answers with these bytes.
    httpx = sys.modules[anthropic.DefaultHttpxClient.__mro__[1].__module__.split(".")[0]]
    transport = httpx.MockTransport(lambda request: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=b"".join(raw)))
    client = anthropic.Anthropic(base_url="http://test", api_key="x", max_retries=0,
                                 http_client=httpx.Client(transport=transport))
    with client.messages.stream(model="m", max_tokens=50, messages=[
            {"role": "user", "content": "Hi"}]) as stream:
        message = stream.get_final_message()
    assert [(b["type"], b.get("id"), b.get("input")) for b in blocks(message)] == [
        ("tool_use", "call_1", {"command": "ls"}), ("tool_use", "call_2", {"command": "pwd"})]


def test_an_error_in_the_chunks_still_reaches_the_stream():
    """The chunks are taken in a thread (for the pings): an error there is raised where
    the stream is read, so the server sends it as Anthropic's error event."""
    def chunks():
        yield {"choices": [{"delta": {"content": "Hi"}}]}
        raise messages_api.ApiError(500, "inference failed")
    events = messages_api.stream_events(chunks(), 5, "msg_1", "m", [])
    with pytest.raises(messages_api.ApiError, match="inference failed"):
        for _ in events:
            pass
