"""Several choices in one response: OpenAI's `n` (llama-server's `n_cmpl`) on
/v1/chat/completions and /v1/completions, and a streamed list of prompts on /v1/completions.

Each choice is a generation of its own, run one after another on the one slot; with a
seed, choice j gets seed + j. The reference for a choice is therefore a single request
made through the same server with that seed. Tiny models, few tokens.
"""
import json
import queue
import time

import pytest

from runtime.engine import Engine, Request
from tests.e2e.conftest import http_request, post_json, sse_events, wait_for
from tests.e2e.test_api_constrained import MSGS as JSON_MSGS, PERSON, check
from tests.e2e.test_api_llama import _send_completion, _slots
from tests.e2e.test_api_semantics import bad_request
from tests.e2e.test_api_tools import HERMES, TOOLS, ask, calls_of, parrot  # noqa: F401 - a fixture
from tests.runtime.test_engine import GREEDY, FakeModel

openai = pytest.importorskip("openai", reason="the openai client is not installed")

CHAT, CMPL = "/v1/chat/completions", "/v1/completions"
MSGS = [{"role": "user", "content": "Tell me about choices."}]


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="x", max_retries=0, timeout=60)


def stream_http(url, path, body) -> list:
    """A streamed request's `data:` payloads, "[DONE]" included."""
    status, headers, data = http_request("POST", url + path, {**body, "stream": True}, timeout=60)
    assert status == 200 and headers["content-type"].startswith("text/event-stream"), data[:300]
    return sse_events(data)


def reassembled(events, key) -> dict:
    """{index: (the choice's text, its finish_reasons)} of streamed chunks; `key` reads
    a choice's text piece."""
    out = {}
    for ev in events:
        for c in ev["choices"] if isinstance(ev, dict) else []:
            text, ends = out.get(c["index"], ("", []))
            ends = ends + [c["finish_reason"]] if c["finish_reason"] else ends
            out[c["index"]] = (text + (key(c) or ""), ends)
    return out


# ---- non-streamed ---------------------------------------------------------------------------

def test_greedy_choices_are_identical_with_their_indexes_and_usage(client, tiny_server):
    one = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=6)
    three = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=6,
                                           n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert {c.message.content for c in three.choices} == {one.choices[0].message.content}
    assert {c.finish_reason for c in three.choices} == {one.choices[0].finish_reason}
    # the prompt counted once, as OpenAI counts it; the replies summed
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    assert three.usage.total_tokens == three.usage.prompt_tokens + three.usage.completion_tokens
    # llama-server's name for n, over plain HTTP, on both routes
    status, r = post_json(tiny_server.url + CHAT, {"messages": MSGS, "temperature": 0,
                                                   "max_tokens": 6, "n_cmpl": 2})
    assert status == 200 and [c["message"]["content"] for c in r["choices"]] == \
        [one.choices[0].message.content] * 2
    status, r = post_json(tiny_server.url + CMPL, {"prompt": "Once upon", "temperature": 0,
                                                   "max_tokens": 4, "n": 3})
    _, alone = post_json(tiny_server.url + CMPL, {"prompt": "Once upon", "temperature": 0,
                                                  "max_tokens": 4})
    assert status == 200 and [c["index"] for c in r["choices"]] == [0, 1, 2]
    assert {c["text"] for c in r["choices"]} == {alone["choices"][0]["text"]}
    assert r["usage"]["prompt_tokens"] == alone["usage"]["prompt_tokens"]
    assert r["usage"]["completion_tokens"] == 3 * alone["usage"]["completion_tokens"]


def test_sampled_choice_j_is_the_single_request_with_seed_plus_j(client, tiny_server):
    kw = dict(model="x", messages=MSGS, temperature=1.0, max_tokens=8, seed=1234)
    many = client.chat.completions.create(**kw, n=3)
    singles = [client.chat.completions.create(**{**kw, "seed": 1234 + j}).choices[0].message.content
               for j in range(3)]
    assert [c.message.content for c in many.choices] == singles
    assert len(set(singles)) > 1  # sampled choices differ, as separate requests do
    # a list of prompts: prompt-major indexes (prompt i, choice j at i * n + j), and each
    # prompt's choice j is that prompt alone with seed + j
    prompts = ["The cat", "A dog"]
    body = {"temperature": 1.0, "max_tokens": 5, "seed": 77}
    status, r = post_json(tiny_server.url + CMPL, {**body, "prompt": prompts, "n": 2})
    assert status == 200 and [c["index"] for c in r["choices"]] == [0, 1, 2, 3]
    for i, p in enumerate(prompts):
        for j in range(2):
            _, alone = post_json(tiny_server.url + CMPL, {**body, "prompt": p, "seed": 77 + j})
            assert r["choices"][i * 2 + j]["text"] == alone["choices"][0]["text"]


# ---- streamed -------------------------------------------------------------------------------

def test_streamed_n_reassembles_to_the_non_streamed_choices(client, tiny_server):
    kw = dict(model="x", messages=MSGS, temperature=1.0, max_tokens=8, seed=5, n=2)
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True,
                                                 stream_options={"include_usage": True}))
    texts = {}
    for ch in chunks:
        for c in ch.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
    assert texts == {c.index: c.message.content for c in whole.choices}
    # one chunk carries each choice's finish_reason; one usage chunk, last
    ends = [(c.index, c.finish_reason) for ch in chunks for c in ch.choices if c.finish_reason]
    assert ends == [(c.index, c.finish_reason) for c in whole.choices]
    assert [ch.usage is not None for ch in chunks].count(True) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    # the same over plain HTTP, ending with [DONE]
    events = stream_http(tiny_server.url, CHAT, {"messages": MSGS, "temperature": 1.0,
                                                 "max_tokens": 8, "seed": 5, "n": 2,
                                                 "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]" and events[-2]["choices"] == []
    assert events[-2]["usage"]["completion_tokens"] == whole.usage.completion_tokens
    got = reassembled(events, lambda c: c["delta"].get("content"))
    assert got == {c.index: (c.message.content, [c.finish_reason]) for c in whole.choices}


def test_a_streamed_list_of_prompts_reassembles_to_the_non_streamed_answer(client, tiny_server):
    prompts = ["Once upon", "The sky"]
    kw = dict(model="x", prompt=prompts, temperature=0, max_tokens=4)
    whole = client.completions.create(**kw)
    streamed = list(client.completions.create(**kw, stream=True))
    texts = {}
    for ch in streamed:
        for c in ch.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert texts == {c.index: c.text for c in whole.choices} and len(texts) == 2
    # with n, echo and logprobs over plain HTTP: each choice is its own stream of chunks
    body = {"prompt": prompts, "temperature": 0, "max_tokens": 3, "n": 2, "echo": True,
            "logprobs": 2, "stream_options": {"include_usage": True}}
    _, whole = post_json(tiny_server.url + CMPL, body)
    events = stream_http(tiny_server.url, CMPL, body)
    assert events[-1] == "[DONE]" and events[-2]["usage"] == whole["usage"]
    got = reassembled(events, lambda c: c["text"])
    assert got == {c["index"]: (c["text"], [c["finish_reason"]]) for c in whole["choices"]}
    tokens = {}
    for ev in events[:-2]:
        (c,) = ev["choices"]
        tokens.setdefault(c["index"], []).extend((c["logprobs"] or {}).get("tokens", []))
    assert tokens == {c["index"]: c["logprobs"]["tokens"] for c in whole["choices"]}


def test_later_choices_skip_the_prompts_prefill(tiny_server):
    """The prompt cache: choice 2..n evaluates only the prompt's last token (to get its
    logits); each streamed choice's last chunk carries its own timings."""
    msgs = [{"role": "user", "content": "A prompt of its own, for the cache test."}]
    events = stream_http(tiny_server.url, CHAT, {"messages": msgs, "temperature": 0,
                                                 "max_tokens": 3, "n": 3,
                                                 "stream_options": {"include_usage": True}})
    n_prompt = events[-2]["usage"]["prompt_tokens"]
    timings = [ev["timings"] for ev in events[:-2] if ev["choices"][0]["finish_reason"]]
    assert len(timings) == 3
    assert timings[0]["cache_n"] + timings[0]["prompt_n"] == n_prompt
    for t in timings[1:]:
        assert (t["cache_n"], t["prompt_n"]) == (n_prompt - 1, 1), t


# ---- what works per choice ------------------------------------------------------------------

def test_stop_strings_and_logprobs_hold_for_each_choice(client, tiny_server):
    one = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=12)
    text = one.choices[0].message.content
    stop = text[len(text) // 2:len(text) // 2 + 2]
    assert stop.strip() and text.find(stop) > 0, text
    r = client.chat.completions.create(model="x", messages=MSGS, temperature=0, max_tokens=12,
                                       n=2, stop=[stop], logprobs=True, top_logprobs=2)
    for c in r.choices:
        assert c.message.content == text[:text.find(stop)] and c.finish_reason == "stop"
        assert len(c.logprobs.content) >= 1
        assert all(len(lp.top_logprobs) == 2 for lp in c.logprobs.content)
    # echo with logprobs on /v1/completions: each choice has the prompt's part, as n=1 has it
    body = {"prompt": "Once upon a", "echo": True, "logprobs": 1, "max_tokens": 2,
            "temperature": 0}
    _, alone = post_json(tiny_server.url + CMPL, body)
    _, two = post_json(tiny_server.url + CMPL, {**body, "n": 2})
    n_prompt = two["usage"]["prompt_tokens"]
    for c in two["choices"]:
        assert c["text"] == alone["choices"][0]["text"]
        for key in ("tokens", "text_offset"):
            assert c["logprobs"][key] == alone["choices"][0]["logprobs"][key]
        assert c["logprobs"]["token_logprobs"][:n_prompt] == \
            alone["choices"][0]["logprobs"]["token_logprobs"][:n_prompt]


def test_each_choice_has_its_own_json_constraint(client):
    """A constraint follows the reply token by token: each choice needs its own, from the
    start (seeds 0 and 1 fit PERSON within the limit, see test_api_constrained)."""
    r = client.chat.completions.create(
        model="x", messages=JSON_MSGS, temperature=1.0, seed=0, max_tokens=220, n=2,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    assert len(r.choices) == 2
    for c in r.choices:
        assert c.finish_reason == "stop", c.message.content
        check(json.loads(c.message.content), PERSON)


def test_each_choice_has_its_tool_calls(parrot):  # noqa: F811 - the imported fixture
    c = openai.OpenAI(base_url=parrot[0] + "/v1", api_key="x", max_retries=0, timeout=30)
    kw = dict(model="x", messages=ask(HERMES), tools=TOOLS, temperature=0, n=2)
    whole = c.chat.completions.create(**kw)
    assert [ch.finish_reason for ch in whole.choices] == ["tool_calls"] * 2
    want = [("get_weather", {"city": "Paris"})]
    assert [calls_of(ch.message) for ch in whole.choices] == [want, want]
    events = stream_http(parrot[0], CHAT, {"messages": ask(HERMES), "tools": TOOLS,
                                           "temperature": 0, "n": 2})
    ends = [(ch["index"], ch["finish_reason"]) for ev in events[:-1] for ch in ev["choices"]
            if ch["finish_reason"]]
    assert ends == [(0, "tool_calls"), (1, "tool_calls")]
    for i in range(2):
        deltas = [ch["delta"]["tool_calls"][0] for ev in events[:-1] for ch in ev["choices"]
                  if ch["index"] == i and ch["delta"].get("tool_calls")]
        assert [(d["function"]["name"], json.loads(d["function"]["arguments"]))
                for d in deltas] == want


# ---- limits and refusals ----------------------------------------------------------------------

def test_too_many_choices_is_a_clear_400_and_the_server_keeps_working(client, tiny_server):
    url = tiny_server.url
    with pytest.raises(openai.BadRequestError, match="'n' must be between 1 and 128"):
        client.chat.completions.create(model="x", messages=MSGS, n=129)
    bad_request(url, CMPL, {"prompt": ["a", "b", "c"], "n": 50}, "150 choices", "at most 128")
    bad_request(url, CMPL, {"prompt": "a", "n": 0}, "'n'")
    bad_request(url, CHAT, {"messages": MSGS, "n": 2, "n_cmpl": 3}, "'n'", "'n_cmpl'")
    # best_of: best_of == n (or 1) returns every choice; above n: test_api_best_of
    bad_request(url, CMPL, {"prompt": "a", "n": 3, "best_of": 2}, "'best_of'", "at least")
    bad_request(url, CMPL, {"prompt": "a", "n": 2, "best_of": 2, "stream": True}, "'stream'")
    status, r = post_json(url + CMPL, {"prompt": "a", "n": 2, "best_of": 2, "max_tokens": 2})
    assert status == 200 and len(r["choices"]) == 2
    status, r = post_json(url + CMPL, {"prompt": "a", "n": 2, "best_of": 1, "max_tokens": 2})
    assert status == 200 and len(r["choices"]) == 2  # LangChain sends best_of 1 whatever n is
    r = client.chat.completions.create(model="x", messages=MSGS, max_tokens=2, n=2)
    assert len(r.choices) == 2


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_leaves_stops_the_choices_left(tiny_server, stream):
    """Three choices of up to 200 tokens each; the client hangs up during the first: the
    worker stops, the choices left never run, and the next request is served."""
    url, prompt = tiny_server.url, [1, 50, 60, 70]
    body = {"prompt": prompt, "max_tokens": 200, "ignore_eos": True, "temperature": 1.0,
            "seed": 3, "n": 3, "stream": stream, "cache_prompt": False}
    s = _send_completion(url, body, path=CMPL)
    if stream:
        got = b""
        while got.count(b"data: ") < 3:  # headers, then a few chunks of the first choice
            chunk = s.recv(4096)
            assert chunk, "the server closed the stream early"
            got += chunk
    else:  # nothing comes until the end: wait for the worker to start on it
        wait_for(lambda: _slots(url)["is_processing"], 30, "the request never started")
    s.close()
    deadline = time.monotonic() + 30
    while _slots(url)["is_processing"] and time.monotonic() < deadline:
        time.sleep(0.01)
    slot = _slots(url)
    assert not slot["is_processing"] and slot["queued"] == 0
    # the session holds the cancelled first choice: no later choice ran to its 200 tokens
    assert slot["n_past"] < len(prompt) + 200, slot
    status, r = post_json(url + CMPL, {"prompt": "Hi", "max_tokens": 2, "temperature": 0})
    assert status == 200 and r["usage"]["completion_tokens"] >= 1
    assert "Traceback" not in tiny_server.output()


# ---- the engine: the choices of a request are one entry of its queue ---------------------------

def final_of(req, limit_s=30):
    """A request's final event; fails if none comes within limit_s."""
    while True:
        try:
            ev = req.events.get(timeout=limit_s)
        except queue.Empty:
            raise AssertionError("the request got no final event") from None
        if ev.kind in ("done", "error"):
            return ev


def choices_of(prompt, n, **kw):
    """n greedy Requests of one prompt, made one queue entry as the server makes them."""
    reqs = [Request(prompt_ids=prompt, params=GREEDY, **kw) for _ in range(n)]
    for r in reqs[1:]:
        r.cancel = reqs[0].cancel
    reqs[0].followers = reqs[1:]
    return reqs


def test_the_engine_serves_the_choices_back_to_back_from_the_cache():
    eng = Engine(FakeModel(delay_s=0.002), n_ctx=64)
    reqs = choices_of([0, 1, 2, 3], 3, max_tokens=2)
    other = Request(prompt_ids=[20], params=GREEDY, max_tokens=2)
    eng.submit(reqs[0])
    eng.submit(other)  # queued after the whole group
    finals = [final_of(r) for r in reqs]
    assert [f.finish_reason for f in finals] == ["length"] * 3
    # nothing ran between the choices: each later one found the prompt in the cache
    assert [(f.timings.cached_n, f.timings.prompt_n) for f in finals[1:]] == [(3, 1)] * 2
    assert final_of(other).finish_reason == "length"
    # every choice's prompt is checked before any is queued
    bad = choices_of([0, 1], 2)
    bad[1].prompt_ids = [0, 10**6]
    with pytest.raises(ValueError, match="out of range"):
        eng.submit(bad[0])
    assert eng.queued() == 0


def test_a_failed_choice_ends_the_choices_left_and_the_worker_goes_on():
    model = FakeModel()
    eng = Engine(model, n_ctx=64)
    model.fail_on = 5  # the first choice evaluates f (5) after the prompt's e: it fails
    reqs = choices_of([3], 3, max_tokens=4)
    eng.submit(reqs[0])
    finals = [final_of(r) for r in reqs]
    assert finals[0].kind == "error" and "boom" in str(finals[0].error)
    assert [(f.kind, f.finish_reason) for f in finals[1:]] == [("done", "cancelled")] * 2
    model.fail_on = None
    ok = Request(prompt_ids=[22], params=GREEDY)
    eng.submit(ok)
    assert final_of(ok).finish_reason == "stop"


def test_a_cancelled_group_waiting_in_a_full_queue_is_answered_whole():
    eng = Engine(FakeModel(delay_s=0.05), n_ctx=64, max_queue=1)
    blocker = Request(prompt_ids=[0], params=GREEDY, max_tokens=20)
    eng.submit(blocker)
    wait_for(eng.busy.is_set, 10, "the worker never started")
    reqs = choices_of([0], 2, max_tokens=1)
    eng.submit(reqs[0])
    reqs[0].cancel.set()  # its client left: the queue's room is taken back for a newcomer
    newcomer = Request(prompt_ids=[0], params=GREEDY, max_tokens=1)
    eng.submit(newcomer)
    assert [final_of(r).finish_reason for r in reqs] == ["cancelled"] * 2
    blocker.cancel.set()
    assert final_of(newcomer).kind == "done"
