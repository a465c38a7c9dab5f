"""The end-of-generation token that ends a reply, in llama-server's own probabilities.

llama-server (tools/server/server-context.cpp, process_token) adds every sampled token to
the slot's list, the end token included, before it sees that the token ends the reply:
/completion's `completion_probabilities` (and /infill's, the same path) list it after the
others, with its id, logprob and `top_logprobs` and an empty text (`"token": ""`,
`"bytes": []`: a control token's piece), and `tokens_predicted` counts it. Streamed, the
end token goes out in a chunk of its own (`"content": ""`, `"tokens": [id]`, `stop`
false) before the last chunk, which carries no probabilities. Before, ours left it out:
one entry fewer than `tokens_predicted`.

/v1/chat/completions stays as it was: its `logprobs.content` lists the message's content
tokens (OpenAI's definition), not the end token. llama-server lists it there only in a
whole answer, and streamed only when it is the reply's first token (riding on the role
chunk), behaviour that nothing upstream documents or tests.

logit_bias on the end token decides where the reply ends (greedy): +100 at once; +4 on
the tiny model after three tokens, the end token then ahead of the next best by 0.3 nat.
Server: the session's tiny_server (tiny-llama-q8_0).
"""
from __future__ import annotations

import pytest

from tests.e2e.conftest import continued_text, http_request, post_json, sse_events
from tests.e2e.test_api_echo_logprobs import PROMPT


def body(eos: int, bias: float, **kw) -> dict:
    return {"prompt": PROMPT, "n_predict": 12, "temperature": 0, "n_probs": 2,
            "logit_bias": [[eos, bias]], **kw}


def completion(url, b) -> dict:
    status, r = post_json(url + "/completion", b)
    assert status == 200, r
    return r


def assert_end_entry(entry, eos) -> None:
    assert (entry["id"], entry["token"], entry["bytes"]) == (eos, "", [])
    assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 2
    assert entry["top_logprobs"][0]["id"] == eos  # greedy: the one it was drawn as
    assert entry["top_logprobs"][0]["logprob"] == entry["logprob"]
    assert (entry["top_logprobs"][0]["token"], entry["top_logprobs"][0]["bytes"]) == ("", [])


@pytest.mark.parametrize("bias", [100, 4])
def test_completion_probabilities_list_the_end_token(tiny_server, tiny_model, bias):
    """Whole answer: one entry per predicted token, the end token's last; `content` and
    the other entries as before."""
    url, eos = tiny_server.url, tiny_model.tokenizer.eos_id
    r = completion(url, body(eos, bias))
    assert r["stop_type"] == "eos"
    probs = r["completion_probabilities"]
    assert len(probs) == len(r["tokens"]) == r["tokens_predicted"]
    assert r["tokens"][-1] == eos and [e["id"] for e in probs] == r["tokens"]
    assert_end_entry(probs[-1], eos)
    if bias == 100:
        assert r["content"] == "" and r["tokens_predicted"] == 1
        assert probs[-1]["logprob"] == pytest.approx(0, abs=1e-6)  # the bias made it certain
    else:
        assert r["tokens_predicted"] > 1  # tokens before it: the case of a real reply
        # the text is that of the tokens before the end token, as without n_probs
        plain = completion(url, body(eos, bias, n_probs=0))
        ids = tiny_model.tokenize(PROMPT, add_special=True)
        assert r["content"] == plain["content"] == continued_text(tiny_model, ids, r["tokens"][:-1])
        assert plain["tokens_predicted"] == r["tokens_predicted"]
        assert "completion_probabilities" not in plain


@pytest.mark.parametrize("bias", [100, 4])
def test_streamed_the_end_token_has_a_chunk_of_its_own(tiny_server, tiny_model, bias):
    """The chunks' probabilities joined are the whole answer's; the end token's chunk is
    the one before the last, with empty content, its id and the count with it."""
    url, eos = tiny_server.url, tiny_model.tokenizer.eos_id
    whole = completion(url, body(eos, bias))
    status, _, data = http_request("POST", url + "/completion", body(eos, bias, stream=True),
                                   timeout=60)
    assert status == 200, data[:300]
    chunks = sse_events(data)
    *before, end, last = chunks
    assert last["stop"] is True and "completion_probabilities" not in last
    assert last["tokens_predicted"] == whole["tokens_predicted"]
    assert (end["stop"], end["content"], end["tokens"]) == (False, "", [eos])
    assert end["tokens_predicted"] == whole["tokens_predicted"]
    assert len(end["completion_probabilities"]) == 1
    assert_end_entry(end["completion_probabilities"][0], eos)
    joined = [e for c in chunks for e in c.get("completion_probabilities", [])]
    assert [e["id"] for e in joined] == [e["id"] for e in whole["completion_probabilities"]]
    for got, want in zip(joined, whole["completion_probabilities"]):
        assert got["logprob"] == pytest.approx(want["logprob"], abs=1e-9)
    assert [t for c in chunks for t in c["tokens"]] == whole["tokens"]
    assert "".join(c["content"] for c in chunks) == whole["content"]
    assert all(len(c.get("completion_probabilities", [])) == len(c["tokens"]) for c in chunks)


def test_chat_logprobs_list_the_content_tokens_only(tiny_server, tiny_model):
    """Unchanged, by decision (module docstring): the end token has no content entry,
    whole or streamed. Passes before and after this change."""
    url, eos = tiny_server.url, tiny_model.tokenizer.eos_id
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
            "temperature": 0, "logprobs": True, "top_logprobs": 2, "logit_bias": {str(eos): 100}}
    status, r = post_json(url + "/v1/chat/completions", chat)
    assert status == 200, r
    choice = r["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] == ""
    assert choice["logprobs"] == {"content": []}
    status, _, data = http_request("POST", url + "/v1/chat/completions", {**chat, "stream": True})
    assert status == 200
    chunks = [e["choices"][0] for e in sse_events(data) if e != "[DONE]" and e["choices"]]
    assert all(not (c["logprobs"] or {}).get("content") for c in chunks)
