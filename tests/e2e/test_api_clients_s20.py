"""Requests that OpenCode sent to /v1/chat/completions, replayed (captured with a logging
proxy in front of the server; docs/api.md lists the clients and their versions; aider's
requests were served as they were). The clients are not installed in CI: the shapes are.

OpenCode 1.18 (the Vercel AI SDK's @ai-sdk/openai-compatible) drops a stream that sent no
byte for 300 s and sends the request again. Its first request of a session is some 7,200
tokens (its system prompt and ten tools): a prefill of 400 s on a 2-core CPU, silent, so it
never got a reply; nor would a reply held back as a possible tool call have come in time.
Now the stream sends an SSE comment while nothing else goes out. These tests serve the
real app with the parrot model of test_api_tools.py, whose prefill (or reply) here waits
until the test lets it go: a long prefill without the wait of one.
"""
import http.client
import json
import threading
import urllib.parse

import pytest

from runtime import server
from tests.e2e.conftest import sse_events, wait_for
from tests.e2e.test_api_tools import (REPLY_END, ParrotModel, ParrotSession, openai,
                                      serve_parrot)

WAIT_S = 60  # generous: only a broken server waits this long
KEEPALIVE = b": keep-alive\n\n"  # an SSE comment line
HELD_AT = 20  # bytes of the reply after which HeldCallSession waits

# OpenCode's `bash` tool as it sent it (zod's JSON Schema: a timeout with both a minimum and
# an exclusiveMinimum), and the shape of its streamed requests.
BASH_TOOL = {"type": "function", "function": {
    "name": "bash", "description": "Executes a given bash command.",
    "parameters": {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "properties": {
            "command": {"type": "string", "description": "The command to execute"},
            "timeout": {"minimum": -9007199254740991, "exclusiveMinimum": 0, "type": "integer",
                        "maximum": 9007199254740991,
                        "description": "Optional timeout in milliseconds"},
            "description": {"type": "string"}},
        "required": ["command", "description"], "additionalProperties": False}}}
OPENCODE_BODY = {"model": "qwen", "max_tokens": 1024, "tool_choice": "auto", "tools": [BASH_TOOL],
                 "stream": True, "stream_options": {"include_usage": True},
                 "messages": [{"role": "system", "content": "You are opencode."},
                              {"role": "user", "content": "Hi there"}]}


class HeldPrefillSession(ParrotSession):
    """The parrot, whose first evaluation (the prompt's) waits for `go`."""

    def __init__(self, n_ctx, go):
        super().__init__(n_ctx)
        self.go = go

    def eval(self, ids, all_logits=False):
        self.go.wait(WAIT_S)
        return super().eval(ids, all_logits)


class HeldCallSession(ParrotSession):
    """The parrot, which waits for `go` once it has written HELD_AT bytes of its reply
    (inside the tool call it writes: the stream holds it back until it is whole)."""

    def __init__(self, n_ctx, go, blocked):
        super().__init__(n_ctx)
        self.go, self.blocked = go, blocked

    def eval(self, ids, all_logits=False):
        end = max((i for i, t in enumerate(self.tokens) if t == REPLY_END), default=None)
        if end is not None and len(self.tokens) - end - 1 == HELD_AT:
            self.blocked.set()
            self.go.wait(WAIT_S)
        return super().eval(ids, all_logits)


class HeldParrot(ParrotModel):
    """The parrot whose prefill (held_call False) or tool call (True) waits for `go`."""

    def __init__(self, held_call=False):
        super().__init__()
        self.held_call = held_call
        self.go, self.blocked = threading.Event(), threading.Event()

    def session(self, n_ctx):
        if self.held_call:
            return HeldCallSession(n_ctx, self.go, self.blocked)
        return HeldPrefillSession(n_ctx, self.go)


def serve_held(monkeypatch, held_call: bool):
    """(url, model) of a HeldParrot; keep-alives every 50 ms. The model is let go at the
    end whatever happened, so nothing hangs."""
    monkeypatch.setattr(server, "KEEPALIVE_EVERY_S", 0.05)
    model = HeldParrot(held_call)
    for url, _ in serve_parrot(model):
        try:
            yield url, model
        finally:
            model.go.set()


@pytest.fixture
def held_parrot(monkeypatch):
    yield from serve_held(monkeypatch, held_call=False)


@pytest.fixture
def held_call_parrot(monkeypatch):
    yield from serve_held(monkeypatch, held_call=True)


def stream_raw(url: str, body: dict, got: list) -> None:
    """POST body to url's chat route, appending the response's bytes to `got` as they come."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=WAIT_S)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    while chunk := resp.read1(65536):
        got.append(chunk)
    conn.close()


def test_a_long_prefill_sends_keepalive_comments(held_parrot):
    """OpenCode's streamed request, its prefill held: SSE comments go out meanwhile, then
    the reply as usual (the role chunk, the content, finish_reason, the usage chunk asked
    for by stream_options, [DONE])."""
    url, model = held_parrot
    got = []
    reader = threading.Thread(target=stream_raw, args=(url, OPENCODE_BODY, got), daemon=True)
    reader.start()
    wait_for(lambda: KEEPALIVE in b"".join(got), WAIT_S,
             "an SSE comment while the prompt is being evaluated")
    model.go.set()
    reader.join(WAIT_S)
    data = b"".join(got)
    assert data.index(KEEPALIVE) < data.index(b'"delta": {"content"'), data
    events = sse_events(data)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content") or ""
                   for e in events[:-2] if e["choices"])
    assert text == "Hi there"
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] > 0
    assert events[-1] == "[DONE]"


def test_the_openai_client_reads_a_stream_with_keepalives(held_parrot, monkeypatch):
    """The openai client (as LiteLLM, LangChain and aider use it) skips the comments: the
    prefill is let go once the first one went out, and the stream reads as without."""
    url, model = held_parrot
    pauses = getattr(server, "with_pauses", None)

    def let_go_after_a_pause(items, every_s):
        for item in pauses(items, every_s):
            if item is None:
                model.go.set()
            yield item
    monkeypatch.setattr(server, "with_pauses", let_go_after_a_pause, raising=False)
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=WAIT_S)
    body = {k: v for k, v in OPENCODE_BODY.items() if k != "stream"}
    chunks = list(client.chat.completions.create(stream=True, **body))
    assert model.go.is_set()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hi there"
    assert chunks[-1].usage.prompt_tokens > 0


def test_a_held_tool_call_sends_keepalive_comments(held_call_parrot):
    """A reply that may be a tool call is held back until it is whole: at a few seconds a
    token, OpenCode's 32-token call took 311 s, silent. Keep-alives go out while the
    model is stopped inside the call, then the call comes as one tool_calls delta."""
    url, model = held_call_parrot
    reply = ('<tool_call>\n{"name": "bash", "arguments": {"command": "ls", "description": "List"}}'
             '\n</tool_call>')
    body = {**OPENCODE_BODY, "messages": [{"role": "user", "content": reply}]}
    got = []
    reader = threading.Thread(target=stream_raw, args=(url, body, got), daemon=True)
    reader.start()
    wait_for(model.blocked.is_set, WAIT_S, "the model stopped inside its call")
    seen = b"".join(got).count(KEEPALIVE)
    wait_for(lambda: b"".join(got).count(KEEPALIVE) > seen, WAIT_S,
             "an SSE comment while the call is held back")
    model.go.set()
    reader.join(WAIT_S)
    events = sse_events(b"".join(got))
    deltas = [e["choices"][0]["delta"] for e in events[:-2] if e["choices"]]
    assert not any(d.get("content") for d in deltas), deltas
    (call,) = [c for d in deltas for c in d.get("tool_calls", [])]
    assert call["function"]["name"] == "bash"
    assert json.loads(call["function"]["arguments"]) == {"command": "ls", "description": "List"}
    assert events[-3]["choices"][0]["finish_reason"] == "tool_calls"
