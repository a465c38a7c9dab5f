"""Three leftovers of the API, each against the real app in this process:

- keep-alive comments on the streamed completion routes (/v1/completions, /completion,
  /infill), as the chat route sends them: test_api_clients_s20's parrot whose prefill
  waits until the test lets it go (a long prefill without the wait of one);
- the reasoning tokens counted apart in usage (chat and Responses), with
  test_api_reasoning's thinking parrots (Qwen3's template: the model writes `<think>`;
  DeepSeek-R1's: the prompt opens it);
- /v1/responses/{id}/cancel, /v1/responses/compact and the other paths under an id: JSON
  errors that say nothing is stored.
"""
import json

import pytest

from runtime import server
from runtime.engine import Engine
from tests.e2e.conftest import http_request, post_json, read_to_close, sse_events, wait_for
from tests.e2e.test_api_clients_s20 import KEEPALIVE, WAIT_S, held_parrot  # noqa: F401
from tests.e2e.test_api_llama import _send_completion, _slots
from tests.e2e.test_api_reasoning import FORCED, THOUGHT, ask, qwen3, r1  # noqa: F401
from tests.e2e.test_api_tools import REPLY_END, REPLY_START, openai, parrot  # noqa: F401

SCRIPT = "Hi there"  # the parrot's reply
PROMPT = chr(REPLY_START) + SCRIPT + chr(REPLY_END)  # a raw prompt the parrot answers
STREAMED = {  # each streamed completion route, with a body the parrot answers SCRIPT to
    "/v1/completions": {"prompt": PROMPT, "max_tokens": 20, "temperature": 0, "stream": True},
    "/completion": {"prompt": PROMPT, "n_predict": 20, "temperature": 0, "stream": True},
    "/infill": {"input_prefix": SCRIPT, "n_predict": 20, "temperature": 0, "stream": True},
}


def with_fim(model) -> None:
    """The held parrot made to fill in the middle (for /infill): its prompt is the
    prefix, framed as the script it repeats (the parrot has no FIM tokens of its own)."""
    model.fim_prompt = lambda prefix, suffix, **kw: list(
        (chr(REPLY_START) + prefix + chr(REPLY_END)).encode())


def read_until_keepalive(sock) -> bytes:
    """What the server sent on the raw socket, up to and with its first keep-alive."""
    got = b""
    while KEEPALIVE not in got:
        chunk = sock.recv(4096)
        assert chunk, f"the stream ended without a keep-alive: {got!r}"
        got += chunk
    return got


def streamed_text(path: str, events: list) -> str:
    if path == "/v1/completions":
        return "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"])
    return "".join(e["content"] for e in events)


# ---- 1. keep-alives on the completion routes --------------------------------------------

@pytest.mark.parametrize("path", list(STREAMED))
def test_a_long_prefill_of_a_completion_stream_sends_keepalive_comments(held_parrot, path):
    """Nothing went out until the first token, so a client with an idle timeout dropped
    a slow prefill. Comments go out meanwhile, then the stream as it was: a reader of
    `data:` lines (sse_events) sees the same events."""
    url, model = held_parrot
    with_fim(model)
    sock = _send_completion(url, STREAMED[path], path=path)
    head = read_until_keepalive(sock)
    assert b"data: " not in head, head  # the prefill is still held
    model.go.set()
    data = head + read_to_close(sock)
    sock.close()
    events = sse_events(data)
    assert streamed_text(path, events) == SCRIPT
    if path == "/v1/completions":
        assert events[-2]["choices"][0]["finish_reason"] == "stop" and events[-1] == "[DONE]"
    else:  # llama-server's stream: its last chunk says stop, and no [DONE]
        assert events[-1]["stop"] is True and events[-1]["tokens_predicted"] > 0


def test_the_openai_client_reads_a_completions_stream_with_keepalives(held_parrot,
                                                                      monkeypatch):
    """The openai client's completions stream skips the comments: the prefill is let go
    once the first one is on its way, and the stream reads as without."""
    url, model = held_parrot
    pauses = server.with_pauses

    def going_on_after_a_pause(items, every_s):
        for item in pauses(items, every_s):
            if item is None:  # a keep-alive goes out: the model may go on now
                model.go.set()
            yield item
    monkeypatch.setattr(server, "with_pauses", going_on_after_a_pause)
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=WAIT_S)
    body = {k: v for k, v in STREAMED["/v1/completions"].items() if k != "stream"}
    chunks = list(client.completions.create(model="parrot", stream=True,
                                            stream_options={"include_usage": True}, **body))
    assert model.go.is_set()
    assert "".join(c.choices[0].text for c in chunks if c.choices) == SCRIPT
    assert chunks[-1].usage.completion_tokens == len(SCRIPT) + 1  # and the end token


@pytest.mark.parametrize("path", list(STREAMED))
def test_a_hang_up_between_keepalives_cancels_the_request(held_parrot, monkeypatch, path):
    """A client that goes away while only keep-alives go out still cancels its request:
    once the prefill is let go, no token is generated, and the worker is free."""
    url, model = held_parrot
    sent = []
    submit = Engine.submit
    monkeypatch.setattr(Engine, "submit", lambda eng, req: sent.append(req) or submit(eng, req))
    with_fim(model)
    sock = _send_completion(url, STREAMED[path], path=path)
    read_until_keepalive(sock)
    sock.close()
    wait_for(lambda: sent and sent[0].cancel.is_set(), WAIT_S, "the hang-up was not noticed")
    model.go.set()
    wait_for(lambda: not _slots(url)["is_processing"], WAIT_S, "the worker is still busy")
    assert _slots(url)["n_past"] <= len(PROMPT), "a token was generated after the hang-up"
    status, r = post_json(url + "/completion", {"prompt": PROMPT, "n_predict": 20})
    assert status == 200 and r["content"] == SCRIPT, r  # and the next one is served


# ---- 2. reasoning tokens ----------------------------------------------------------------

N_THOUGHT_TOK = len(THOUGHT) - len("Paris.")  # a token a byte: all but the answer's
TWO_THOUGHTS = "<think>one</think>\n<think>two</think>\n"  # two blocks, joined


def chat_usage(url: str, body: dict) -> tuple:
    """(whole usage, streamed usage) of a greedy chat request."""
    body = {**body, "temperature": 0}
    status, whole = post_json(url + "/v1/chat/completions", body)
    assert status == 200, whole
    status, _, data = http_request("POST", url + "/v1/chat/completions", {
        **body, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200, data
    events = sse_events(data)
    assert events[-2]["choices"] == [], events[-2]
    return whole["usage"], events[-2]["usage"]


def reasoning_of(usage: dict) -> int:
    return usage["completion_tokens_details"]["reasoning_tokens"]


@pytest.mark.parametrize("reply, n_reasoning_tok", [
    (THOUGHT, N_THOUGHT_TOK),                        # `<think>`, its text, `</think>\n\n`
    ("No thinking at all.", 0),
    (TWO_THOUGHTS + "Answer", len(TWO_THOUGHTS)),
])
def test_chat_usage_counts_the_reasoning_tokens(qwen3, reply, n_reasoning_tok):
    """Usage said nothing of them: OpenAI's completion_tokens_details.reasoning_tokens,
    whole and streamed the same, among completion_tokens (the reply and its end token)."""
    whole, streamed = chat_usage(qwen3[0], {"messages": ask(reply)})
    assert whole == streamed
    assert whole["completion_tokens"] == len(reply) + 1
    assert reasoning_of(whole) == n_reasoning_tok


def test_reasoning_tokens_of_a_prompt_opened_thought_and_of_one_cut_short(r1):
    """DeepSeek-R1's template opens `<think>` in the prompt: the reply is reasoning up to
    its `</think>`; cut by max_tokens mid-thought, every token is reasoning."""
    on = {"messages": ask(FORCED), "chat_template_kwargs": {"enable_thinking": True}}
    whole, streamed = chat_usage(r1[0], on)
    assert whole == streamed and reasoning_of(whole) == len(FORCED) - len("Answer.")
    whole, streamed = chat_usage(r1[0], {**on, "max_tokens": 5})
    assert whole == streamed and reasoning_of(whole) == whole["completion_tokens"] == 5


def test_reasoning_format_none_counts_no_reasoning_and_the_client_reads_the_count(qwen3):
    """With reasoning_format "none" the reply is all content: no reasoning tokens. The
    openai client reads the count where OpenAI puts it."""
    whole, streamed = chat_usage(qwen3[0], {"messages": ask(THOUGHT), "reasoning_format": "none"})
    assert whole == streamed and reasoning_of(whole) == 0
    client = openai.OpenAI(base_url=qwen3[0] + "/v1", api_key="x", max_retries=0, timeout=30)
    r = client.chat.completions.create(model="x", messages=ask(THOUGHT), temperature=0)
    assert r.usage.completion_tokens_details.reasoning_tokens == N_THOUGHT_TOK


def test_responses_usage_counts_the_reasoning_tokens(qwen3):
    """Responses' output_tokens_details.reasoning_tokens was always 0."""
    client = openai.OpenAI(base_url=qwen3[0] + "/v1", api_key="x", max_retries=0, timeout=30)
    r = client.responses.create(model="x", input=THOUGHT)
    with client.responses.stream(model="x", input=THOUGHT) as s:
        streamed = s.get_final_response()
    for usage in (r.usage, streamed.usage):
        assert usage.output_tokens == len(THOUGHT) + 1
        assert usage.output_tokens_details.reasoning_tokens == N_THOUGHT_TOK
    r = client.responses.create(model="x", input="No thinking at all.")
    assert r.usage.output_tokens_details.reasoning_tokens == 0


# ---- 3. paths under /v1/responses ---------------------------------------------------------

def json_error(url: str, method: str, path: str, body=None) -> tuple:
    """(status, headers, error object) of a request that must fail with a JSON error."""
    status, headers, data = http_request(method, url + path, body)
    assert headers["content-type"].startswith("application/json"), (status, data)
    return status, headers, json.loads(data)["error"]


@pytest.mark.parametrize("method, path", [
    ("POST", "/v1/responses/resp_1/cancel"), ("POST", "/responses/resp_1/cancel"),
    ("POST", "/v1/responses/resp_1/anything"), ("GET", "/v1/responses/resp_1/cancel"),
    ("POST", "/v1/responses/resp_1"),
])
def test_cancelling_a_response_says_none_is_stored(parrot, method, path):
    """It was "not found: PATH", which reads as a wrong URL: OpenAI's 404 for an unknown
    id, with the reason (as GET /v1/responses/{id} answers)."""
    status, _, error = json_error(parrot[0], method, path, b"" if method == "POST" else None)
    assert status == 404 and error["type"] == "not_found_error", error
    assert error["message"].startswith("no response 'resp_1' is stored"), error


def test_the_openai_clients_cancel_and_compact_get_clear_errors(parrot):
    client = openai.OpenAI(base_url=parrot[0] + "/v1", api_key="x", max_retries=0, timeout=30)
    with pytest.raises(openai.NotFoundError, match="stores none"):
        client.responses.cancel("resp_1")
    with pytest.raises(openai.InternalServerError, match="does not compact") as e:
        client.responses.compact(model="x", input="Hi")
    assert e.value.status_code == 501


def test_compact_is_not_supported_and_other_unknown_paths_are_json_404s(parrot):
    """POST /v1/responses/compact is a 501, as embeddings (X-Should-Retry: false); its GET
    the 405 of a POST route (it read "no response 'compact' is stored"). Any other
    unknown path stays a 404 in the same JSON shape."""
    url = parrot[0]
    status, headers, error = json_error(url, "POST", "/v1/responses/compact",
                                        {"model": "x", "input": "Hi"})
    assert status == 501 and error["type"] == "not_supported_error", error
    assert "stores no responses" in error["message"] and headers["x-should-retry"] == "false"
    status, headers, error = json_error(url, "GET", "/v1/responses/compact")
    assert status == 405 and headers["allow"] == "POST", error
    for method, path in (("GET", "/v1/nothing"), ("POST", "/v1/nothing/here"),
                         ("DELETE", "/v1/responses/")):
        status, _, error = json_error(url, method, path, b"{}" if method == "POST" else None)
        assert status == 404 and error["message"] == f"not found: {path}", error
