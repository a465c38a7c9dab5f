"""Session 23's exploration of the HTTP API: what a client sees at the end of the context,
llama-server's text keys in `logit_bias`'s object form, and `return_progress` with a
client that hangs up or asks for several choices. Against real server processes on the
tiny model (a 64-token context to reach its end, a 4,096-token one for long prompts).
"""
import json
import socket

import pytest

from runtime.model import UBATCH_TOK
from tests.e2e.conftest import (TINY, http_request, post_json, sse_events, start_server,
                                tiny_4k, wait_for, with_context_length)

N_CTX = 64


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The tiny model trained (and so served) with a 64-token context."""
    model = with_context_length(TINY, tmp_path_factory.mktemp("ctx64") / "tiny-64.gguf",
                                "llama", N_CTX)
    h = start_server(model)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def long(tmp_path_factory):
    h = start_server(tiny_4k(tmp_path_factory.mktemp("ctx4k")))
    yield h
    h.stop()


def ids_of(n):
    return [100 + i % 50 for i in range(n)]


# ---- the end of the context -------------------------------------------------------------

def test_a_reply_cut_by_the_end_of_the_context_says_truncated(small):
    """llama-server (context shift off, its default) stops a reply when prompt and reply
    fill the context and sets `truncated` (server-context.cpp: `slot.prompt.n_tokens() + 1
    >= slot.n_ctx` -> truncated = true, STOP_TYPE_LIMIT). It said false whatever happened."""
    body = {"prompt": ids_of(N_CTX - 3), "n_predict": -1, "ignore_eos": True, "temperature": 0}
    status, r = post_json(small.url + "/completion", body)
    assert status == 200, r
    assert r["tokens_predicted"] == 3 and r["stop_type"] == "limit" and r["truncated"] is True

    status, _, data = http_request("POST", small.url + "/completion", {**body, "stream": True})
    last = sse_events(data)[-1]
    assert status == 200 and last["stop"] is True and last["truncated"] is True

    # The request's own limit, with room left: not truncated. At the very end: it is.
    status, r = post_json(small.url + "/completion", {**body, "n_predict": 2})
    assert status == 200 and r["stop_type"] == "limit" and r["truncated"] is False
    status, r = post_json(small.url + "/completion", {**body, "n_predict": 3})
    assert status == 200 and r["tokens_predicted"] == 3 and r["truncated"] is True
    # A reply that ended by itself is not.
    status, r = post_json(small.url + "/completion", {**body, "n_predict": 1, "ignore_eos": False})
    assert status == 200 and r["truncated"] is False


def test_the_context_s_edges_then_the_server_goes_on(small):
    """N_CTX - 1 prompt tokens leave one token of reply; N_CTX and N_CTX + 1 are llama-server's
    exceed_context_size_error (400); the next request is answered as if nothing happened."""
    status, r = post_json(small.url + "/v1/completions",
                          {"prompt": ids_of(N_CTX - 1), "max_tokens": 50, "temperature": 0})
    assert status == 200 and r["usage"]["completion_tokens"] == 1, r
    assert r["choices"][0]["finish_reason"] == "length"
    for n in (N_CTX, N_CTX + 1):
        for path in ("/completion", "/v1/completions"):
            status, r = post_json(small.url + path, {"prompt": ids_of(n), "max_tokens": 1})
            assert status == 400 and r["error"]["type"] == "exceed_context_size_error", r
            assert r["error"]["n_prompt_tokens"] == n and r["error"]["n_ctx"] == N_CTX
    status, r = post_json(small.url + "/completion", {"prompt": "hi", "n_predict": 2})
    assert status == 200 and r["tokens_predicted"] >= 1


# ---- logit_bias: llama-server's text keys -----------------------------------------------

def test_logit_bias_object_keys_may_be_texts_as_in_llama_server(small):
    """llama-server's README: "For compatibility with the OpenAI API, a JSON object
    {"<string or token id>": bias, ...} can also be passed"; a key that is not a number is
    tokenized and every token gets the bias. It was a 400 here."""
    text = "world"
    ids = post_json(small.url + "/tokenize", {"content": text})[1]["tokens"]
    base = {"prompt": "hi", "n_predict": 4, "temperature": 0}
    status, by_text = post_json(small.url + "/completion", {**base, "logit_bias": {text: 100}})
    assert status == 200, by_text
    assert by_text["tokens"][0] in ids  # +100 makes the model write one of them
    by_pair = post_json(small.url + "/completion", {**base, "logit_bias": [[text, 100]]})[1]
    by_id = post_json(small.url + "/completion",
                      {**base, "logit_bias": {str(t): 100 for t in ids}})[1]
    assert by_text["tokens"] == by_pair["tokens"] == by_id["tokens"]
    # The OpenAI route reads the same field the same way.
    status, r = post_json(small.url + "/v1/chat/completions",
                          {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                           "temperature": 0, "logprobs": True, "logit_bias": {text: False}})
    assert status == 200, r
    assert r["choices"][0]["logprobs"]["content"][0]["token"] not in (
        post_json(small.url + "/detokenize", {"tokens": [t]})[1]["content"] for t in ids)


# ---- return_progress: hang-ups and several choices --------------------------------------

WORDS = " ".join(f"w{i % 97}" for i in range(360))  # 3 micro-batches of the tiny vocabulary
OTHER_WORDS = " ".join(f"n{i % 89}" for i in range(300))  # a prompt no other test sends


def test_a_client_that_hangs_up_after_a_progress_chunk_frees_the_slot(long):
    """The reply's first progress chunk read, the client goes: the reply stops there (with
    ignore_eos it would run to the end of the 4,096-token context), the slot is idle again
    and the next request is answered."""
    body = json.dumps({"messages": [{"role": "user", "content": WORDS}], "stream": True,
                       "return_progress": True, "cache_prompt": False,
                       "ignore_eos": True}).encode()
    s = socket.create_connection(("127.0.0.1", long.port), timeout=60)
    s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{long.port}\r\n"
              f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
              + body)
    got = b""
    while b"prompt_progress" not in got:
        chunk = s.recv(65536)
        assert chunk, got
        got += chunk
    s.close()

    def idle():
        slot = json.loads(http_request("GET", long.url + "/slots")[2])[0]
        return not slot["is_processing"] and slot["queued"] == 0 and slot
    slot = wait_for(idle, 30, "the slot stays busy after its client hung up")
    assert slot["n_past"] < 2000  # cancelled, not run to the context's end (4,095)
    status, r = post_json(long.url + "/completion", {"prompt": "hi", "n_predict": 2})
    assert status == 200 and r["tokens_predicted"] >= 1


def test_progress_for_each_of_n_choices_then_the_usage(long):
    """n: 2 with return_progress and include_usage: each choice reports its own reading
    (the first reads the prompt, the second finds it cached but for its last token), its
    chunks carry its index, and the usage chunk comes after both."""
    status, _, data = http_request("POST", long.url + "/v1/chat/completions", {
        "messages": [{"role": "user", "content": OTHER_WORDS}], "max_tokens": 2,
        "temperature": 0, "stream": True, "n": 2, "return_progress": True,
        "stream_options": {"include_usage": True}})
    assert status == 200
    events = sse_events(data)
    assert events[-1] == "[DONE]" and events[-2]["choices"] == []
    usage = events[-2]["usage"]
    chunks = [e for e in events[:-2]]
    first = [e["prompt_progress"] for e in chunks
             if "prompt_progress" in e and e["choices"][0]["index"] == 0]
    second = [e["prompt_progress"] for e in chunks
              if "prompt_progress" in e and e["choices"][0]["index"] == 1]
    n_prompt = usage["prompt_tokens"]
    assert len(first) == -(-(n_prompt - first[0]["cache"]) // UBATCH_TOK) > 1
    assert first[-1]["processed"] == n_prompt
    assert second == [{**second[0], "total": n_prompt, "cache": n_prompt - 1,
                       "processed": n_prompt}]
    # choice 1's progress comes after choice 0 has finished
    ends = [i for i, e in enumerate(chunks) if e["choices"][0]["finish_reason"]]
    assert len(ends) == 2
    assert ends[0] < next(i for i, e in enumerate(chunks)
                          if "prompt_progress" in e and e["choices"][0]["index"] == 1)
    assert usage["completion_tokens"] == 4
