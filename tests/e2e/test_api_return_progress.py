"""llama-server's `return_progress`: a streamed chat, /completion or /infill reports how
much of its prompt is read, a chunk after each micro-batch (runtime/engine.py _prefill),
before the reply's first token. Against a real server process, with the openai client and
plain HTTP; the tiny model with a 4k context, so that a prompt spans several micro-batches.
"""
import json

import pytest

from runtime.model import UBATCH_TOK
from tests.e2e.conftest import http_request, post_json, sse_events, start_server, tiny_4k

openai = pytest.importorskip("openai", reason="the openai client is not installed")

WORDS = " ".join(f"w{i % 97}" for i in range(400))  # several micro-batches of the tiny vocabulary


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = tiny_4k(tmp_path_factory.mktemp("progress"))
    h = start_server(model)
    yield h
    h.stop()


def stream(url, path, body) -> list:
    status, _, data = http_request("POST", url + path, body)
    assert status == 200, data[:300]
    return [e for e in sse_events(data) if e != "[DONE]"]


def check_progress(reports, n_prompt, n_cached=0):
    """One report per micro-batch of the tokens not cached, in order, the last whole."""
    n_read = n_prompt - n_cached
    assert len(reports) == -(-n_read // UBATCH_TOK)
    assert [p["processed"] for p in reports] == [
        min(n_cached + (i + 1) * UBATCH_TOK, n_prompt) for i in range(len(reports))]
    assert all(p["total"] == n_prompt and p["cache"] == n_cached for p in reports)
    times = [p["time_ms"] for p in reports]
    assert all(isinstance(t, int) and t >= 0 for t in times) and times == sorted(times)


def chat_body(text, **extra):
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 8,
            "temperature": 0, "stream": True, **extra}


def test_a_streamed_chat_reports_its_prompt_s_progress_before_the_reply(server):
    events = stream(server.url, "/v1/chat/completions", chat_body(WORDS, return_progress=True))
    with_progress = [i for i, e in enumerate(events) if "prompt_progress" in e]
    first_text = next(i for i, e in enumerate(events)
                      if e["choices"] and e["choices"][0]["delta"].get("content"))
    assert with_progress and max(with_progress) < first_text
    for i in with_progress:  # llama-server's shape: a chunk whose delta says nothing
        assert events[i]["object"] == "chat.completion.chunk"
        assert events[i]["choices"][0]["delta"] == {}
        assert events[i]["choices"][0]["finish_reason"] is None
    n_prompt = events[-1]["timings"]["prompt_n"] + events[-1]["timings"]["cache_n"]
    assert n_prompt > 2 * UBATCH_TOK
    check_progress([events[i]["prompt_progress"] for i in with_progress], n_prompt,
                   events[-1]["timings"]["cache_n"])

    # The same reply without it, and no progress: nothing else changed.
    plain = stream(server.url, "/v1/chat/completions", chat_body(WORDS, cache_prompt=False))
    assert not any("prompt_progress" in e for e in plain)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "".join(e["choices"][0]["delta"].get("content") or ""
                           for e in plain if e["choices"])


def test_the_cached_part_of_a_prompt_is_reported_as_cache(server):
    stream(server.url, "/v1/chat/completions", chat_body(WORDS))
    longer = WORDS + " and then " + WORDS[:600]  # the first conversation's prompt goes on
    events = stream(server.url, "/v1/chat/completions", chat_body(longer, return_progress=True))
    t = events[-1]["timings"]
    assert t["cache_n"] > UBATCH_TOK  # the first prompt's tokens came from the cache
    check_progress([e["prompt_progress"] for e in events if "prompt_progress" in e],
                   t["cache_n"] + t["prompt_n"], t["cache_n"])


def test_the_openai_client_reads_a_stream_with_progress(server):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
    chunks = list(client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": WORDS}], max_tokens=8, temperature=0,
        stream=True, extra_body={"return_progress": True}))
    reports = [c.model_extra["prompt_progress"] for c in chunks
               if (c.model_extra or {}).get("prompt_progress")]
    assert reports and reports[-1]["processed"] == reports[-1]["total"]
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.fixture(scope="module")
def qwen_server(qwen_gguf_path):
    """The tiny models have no fill-in-the-middle tokens: /infill runs on the real Qwen."""
    h = start_server(qwen_gguf_path, "--ctx", "2048")
    yield h
    h.stop()


@pytest.mark.parametrize("path, body", [
    ("/completion", {"prompt": WORDS, "n_predict": 4, "temperature": 0, "stream": True,
                     "cache_prompt": False}),
    ("/infill", {"input_prefix": WORDS[:1200], "input_suffix": "\n", "n_predict": 4,
                 "temperature": 0, "stream": True, "cache_prompt": False}),
])
def test_llama_server_s_completion_routes_report_progress(request, path, body):
    server = request.getfixturevalue("qwen_server" if path == "/infill" else "server")
    events = stream(server.url, path, {**body, "return_progress": True})
    reports = [e for e in events if "prompt_progress" in e]
    for e in reports:  # llama-server's chunk: nothing of the reply in it
        assert e["content"] == "" and e["tokens"] == [] and e["stop"] is False
        assert e["tokens_evaluated"] == e["prompt_progress"]["total"]
    assert events.index(reports[-1]) < next(i for i, e in enumerate(events) if e["tokens"])
    check_progress([e["prompt_progress"] for e in reports], events[-1]["tokens_evaluated"])


def test_no_progress_where_llama_server_sends_none(server):
    # unstreamed: one response object, as before
    status, r = post_json(server.url + "/v1/chat/completions",
                          {**chat_body(WORDS, return_progress=True), "stream": False})
    assert status == 200 and "prompt_progress" not in r
    status, r = post_json(server.url + "/completion",
                          {"prompt": WORDS, "n_predict": 4, "return_progress": True})
    assert status == 200 and "prompt_progress" not in r
    # /v1/completions: OpenAI's legacy chunks carry none
    events = stream(server.url, "/v1/completions", {"prompt": WORDS, "max_tokens": 4,
                                                    "stream": True, "return_progress": True})
    assert events and not any("prompt_progress" in e for e in events)
    # not a boolean: a 400 that names it, as before
    status, r = post_json(server.url + "/v1/chat/completions",
                          chat_body("hi", return_progress="yes"))
    assert status == 400 and "return_progress" in json.dumps(r)
