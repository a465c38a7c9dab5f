"""More of the API where it fell short of what clients expect.

- /v1/embeddings (and llama-server's /embeddings, /embedding) answered 404, as if the
  URL were wrong. llama-server without --embeddings answers 501, type
  "not_supported_error"; so do we, with X-Should-Retry: false, so that the OpenAI
  clients (which retry every 5xx) raise at once.
- Under --cors a browser app could not read Retry-After (not a CORS-safelisted response
  header) on a 503, from the app, from the connection's own raw replies or on a stream:
  now Access-Control-Expose-Headers names it. Without --cors nothing changed.
- /v1/completions' text_offset counted the displayed pieces of the tokens, from 0 in
  every response and again in every streamed chunk. It is now where each token begins
  in the prompt's text followed by the completion, as OpenAI's legacy API and
  llama-cpp-python (the reference here, run in this process) count it, streamed or not.
- /v1/completions refused echo. It now returns the prompt's text before the completion
  (streamed: the prompt is the first chunk); echo with logprobs, the prompt's token
  logprobs too, is checked in test_api_echo_logprobs.py.

Servers: the session's tiny_server; --cors ones from server_factory; a server that never
loads (so it answers 503 "loading" for good) in this process. Nothing asserts timings.
"""
from __future__ import annotations

import hashlib
import json

import pytest

from tests.e2e.conftest import ROOT, TINY, http_request, post_json, sse_events
from tests.e2e.test_api_gaps import inproc_servers, one_connection_too_many

openai = pytest.importorskip("openai", reason="the openai client is not installed")

ORIGIN = "http://app.example"
BOUND_S = 20


def _client(url, **kw):
    return openai.OpenAI(base_url=url + "/v1", api_key="x", timeout=60, **kw)


def _exposed(headers: dict) -> set:
    return {h.strip().lower() for h in headers.get("access-control-expose-headers", "").split(",")
            if h.strip()}


# ---- embeddings: 501, as llama-server answers without --embeddings --------------------------

@pytest.mark.parametrize("path", ["/v1/embeddings", "/embeddings", "/embedding",
                                  "/v1/rerank", "/rerank"])
def test_embeddings_and_rerank_answer_501_not_404(tiny_server, path):
    body = ({"input": "hello", "model": "x"} if "embed" in path
            else {"query": "q", "documents": ["a"]})
    status, headers, data = http_request("POST", tiny_server.url + path, body)
    assert status == 501, data
    err = json.loads(data)["error"]
    assert err["type"] == "not_supported_error" and err["code"] == 501, err
    what = "compute embeddings" if "embed" in path else "rerank"
    assert f"does not {what}" in err["message"] and "\n" not in err["message"], err
    assert headers.get("x-should-retry") == "false", headers
    assert "access-control-allow-origin" not in headers  # no --cors: no CORS headers


def test_openai_client_raises_a_clear_error_for_embeddings_at_once(tiny_server):
    """The client's own retries (2 by default, for any 5xx) would only repeat the answer."""
    sent = []
    http = openai.DefaultHttpxClient(event_hooks={"request": [sent.append]})
    client = _client(tiny_server.url, http_client=http)  # the default max_retries
    with pytest.raises(openai.APIStatusError) as e:
        client.embeddings.create(model="x", input="hello")
    http.close()
    assert e.value.status_code == 501, e.value
    assert "does not compute embeddings" in str(e.value), str(e.value)
    assert e.value.body["type"] == "not_supported_error", e.value.body
    assert len(sent) == 1, f"the client sent the request {len(sent)} times"


# ---- --cors: the headers a browser app may read -------------------------------------------

@pytest.fixture(scope="module")
def loading_servers():
    """serve(cors): a server in this process whose model never loads, so that every API
    request gets the 503 "still loading" with Retry-After; one of each per module."""
    with inproc_servers(load=False) as serve:
        yield serve


@pytest.fixture(params=[False, True], ids=["no-cors", "cors"])
def loading(request, loading_servers):
    return loading_servers(request.param)


def _expose_like_the_app(srv, headers: dict) -> None:
    """Retry-After readable by a page of another origin exactly under --cors."""
    if srv.cors_on:
        assert headers.get("access-control-allow-origin") == "*", headers
        assert "retry-after" in _exposed(headers), headers
    else:
        assert not any(k.startswith("access-control-") for k in headers), headers


def test_a_503_while_loading_exposes_retry_after_under_cors(loading):
    origin = {"Origin": ORIGIN} if loading.cors_on else {}  # without --cors: refused
    for method, path, body in [("POST", "/v1/chat/completions",
                                {"messages": [{"role": "user", "content": "hi"}]}),
                               ("GET", "/health", None)]:
        status, headers, data = http_request(method, loading.test_url + path, body,
                                             headers=origin)
        assert status == 503, data
        assert headers.get("retry-after") == "1", headers
        _expose_like_the_app(loading, headers)


def test_the_raw_503_of_one_connection_too_many_exposes_retry_after_under_cors(
        loading, monkeypatch):
    """Written by the accepting thread (_raw_error), not the app."""
    status, headers, data = one_connection_too_many(loading, monkeypatch)
    assert status == 503 and b"too many open connections" in data, data
    assert headers.get("retry-after") == "1", headers
    _expose_like_the_app(loading, headers)


def test_a_stream_and_a_501_expose_the_headers_under_cors(server_factory, tiny_server):
    cors = server_factory(TINY, "--cors")
    ask = {"prompt": "hi", "max_tokens": 2, "stream": True}
    for url, cors_on in ((cors.url, True), (tiny_server.url, False)):
        status, headers, data = http_request("POST", url + "/v1/completions", ask,
                                             headers={"Origin": ORIGIN} if cors_on else {})
        assert status == 200 and headers["content-type"].startswith("text/event-stream"), data
        assert sse_events(data)[-1] == "[DONE]"
        if cors_on:
            assert {"retry-after", "x-should-retry"} <= _exposed(headers), headers
        else:
            assert "access-control-expose-headers" not in headers, headers
    status, headers, _ = http_request("POST", cors.url + "/v1/embeddings", {"input": "x"},
                                      headers={"Origin": ORIGIN})
    assert status == 501 and "x-should-retry" in _exposed(headers), headers


def test_a_browser_app_on_another_origin_reads_retry_after(browser, tiny_server, loading_servers):
    """In Chromium: a page of another origin (tiny_server's address) asks a --cors server
    that is still loading, and reads the 503's Retry-After (null before: not exposed)."""
    srv = loading_servers(True)
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.goto(tiny_server.url + "/health")   # a document of another origin, no CSP
        status, retry_after = page.evaluate("""async (url) => {
            const r = await fetch(url, {method: "POST",
                headers: {"Content-Type": "application/json"},
                body: JSON.stringify({messages: [{role: "user", content: "hi"}]})});
            return [r.status, r.headers.get("Retry-After")];
        }""", srv.test_url + "/v1/chat/completions")
    finally:
        ctx.close()
    assert (status, retry_after) == (503, "1")


# ---- /v1/completions: text_offset --------------------------------------------------------

OFFSET_PROMPT = "The cat sat on the"   # the tiny model's greedy reply to it is whole characters


def _offsets(url, prompt, stream: bool, **kw):
    """(text, tokens, text_offset) of a greedy /v1/completions with logprobs."""
    body = {"prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 1,
            "cache_prompt": False, "stream": stream, **kw}
    status, _, data = http_request("POST", url + "/v1/completions", body)
    assert status == 200, data
    if not stream:
        c = json.loads(data)["choices"][0]
        return c["text"], c["logprobs"]["tokens"], c["logprobs"]["text_offset"]
    text, toks, offs = "", [], []
    for ev in sse_events(data)[:-1]:
        for c in ev["choices"]:
            text += c["text"]
            if c["logprobs"]:
                toks += c["logprobs"]["tokens"]
                offs += c["logprobs"]["text_offset"]
    return text, toks, offs


# llama-cpp-python's answer to OFFSET_PROMPT, recorded by tests/fixtures/llama_cpp/
# make_reference.py (llama-cpp-python is an optional extra that CI does not build).
OFFSET_REFERENCE = ROOT / "tests" / "fixtures" / "llama_cpp" / "text_offset.json"


def test_the_recorded_llama_cpp_reference_is_what_llama_cpp_says_today():
    """Where llama-cpp-python is installed, the recording is checked against it."""
    ref = json.loads(OFFSET_REFERENCE.read_text())
    assert ref["model"] == TINY.name and ref["prompt"] == OFFSET_PROMPT
    assert hashlib.sha256(TINY.read_bytes()).hexdigest() == ref["model_sha256"]
    try:
        import llama_cpp
    except ImportError:
        return  # (the recording alone, as in CI; the test below uses it)
    llm = llama_cpp.Llama(str(TINY), logits_all=True, verbose=False, n_ctx=256, seed=1)
    live = llm.create_completion(OFFSET_PROMPT, max_tokens=ref["max_tokens"], temperature=0,
                                 logprobs=1)["choices"][0]
    assert (live["text"], live["logprobs"]["text_offset"]) == (ref["text"], ref["text_offset"])


def test_text_offset_counts_as_llama_cpp_python_does(tiny_server):
    """Each token's place in the prompt's text followed by the completion; the offsets
    started at 0 instead of at the prompt's length, and at 0 again in every chunk."""
    ref = json.loads(OFFSET_REFERENCE.read_text())
    text, _, offs = _offsets(tiny_server.url, OFFSET_PROMPT, stream=False)
    assert text == ref["text"], "llama.cpp's greedy reply differs: no reference here"
    assert offs == ref["text_offset"], (offs, ref["text_offset"])
    assert offs[0] == len(OFFSET_PROMPT)
    assert _offsets(tiny_server.url, OFFSET_PROMPT, stream=True)[::2] == (text, offs)


# test_api_review_s13.py checks every token's offset in replies with broken characters.


# ---- /v1/completions: echo ----------------------------------------------------------------

def test_echo_returns_the_prompt_before_the_completion(tiny_server):
    client = _client(tiny_server.url, max_retries=0)
    kw = dict(model="x", max_tokens=6, temperature=0)
    prompt = "The cat sat"
    plain = client.completions.create(prompt=prompt, **kw).choices[0].text
    r = client.completions.create(prompt=prompt, echo=True, **kw)
    assert r.choices[0].text == prompt + plain
    chunks = [c.choices[0].text for c in client.completions.create(prompt=prompt, echo=True,
                                                                 stream=True, **kw)
              if c.choices]
    assert chunks[0] == prompt and "".join(chunks) == prompt + plain, chunks
    # max_tokens 0: the prompt alone
    r = client.completions.create(model="x", prompt=prompt, echo=True, max_tokens=0)
    assert r.choices[0].text == prompt and r.usage.completion_tokens == 0


def test_echo_of_token_ids_is_their_text(tiny_server, tiny_model):
    """The completion continues the ids' text: echo returns that text before it."""
    ids = tiny_model.tokenize("The cat sat", add_special=True)
    body = {"prompt": ids, "max_tokens": 6, "temperature": 0}
    status, plain = post_json(tiny_server.url + "/v1/completions", body)
    assert status == 200, plain
    status, r = post_json(tiny_server.url + "/v1/completions", {**body, "echo": True})
    assert status == 200, r
    assert r["choices"][0]["text"] == tiny_model.detokenize(ids) + plain["choices"][0]["text"]

