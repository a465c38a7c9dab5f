"""/v1/completions' echo with logprobs as lm-evaluation-harness's `local-completions` uses
it: `{"prompt": [...], "echo": true, "logprobs": 1, "max_tokens": 1, "temperature": 0}`,
then the sum of `token_logprobs[ctxlen:-1]`, the last entry taken for the one generated
token.

- A reply ended by its end-of-generation token lists that token too (its logprob, its
  text empty), as OpenAI lists "<|endoftext|>": before, it had no entry, and [ctxlen:-1]
  silently dropped the last prompt token's logprob instead.
- The session keeps the prompt logprobs of the tokens it holds: the answers of one
  question, after the same context, evaluate only their own tokens (and the last one of
  the context, whose entry was about another next token). `timings` says how many were
  evaluated; the answer is the one a whole evaluation gives, within TOLERANCES.md's
  precise bound (batches of other lengths round differently), and the entries kept are
  the earlier answer's own, bit for bit.

The reference is test_api_echo_logprobs': the Model fed one token at a time. Servers:
the session's tiny_server (tiny-llama-q8_0, context 256), the Model in this process.
"""
from __future__ import annotations

import numpy as np
import pytest

from runtime.engine import Engine, Request
from tests.e2e.conftest import http_request, post_json, sse_events
from tests.e2e.test_api_echo_logprobs import (LP_TOL, PROMPT, assert_matches,
                                              assert_same_within_tolerance, token_by_token)

CMPL = "/v1/completions"
CONTEXT = "Question: where did the cat sleep after its lunch? Answer:"
ANSWERS = [" on the mat", " in a box", " under the old tree", " on the mat again"]


def lm_eval_body(prompt, **kw) -> dict:
    return {"prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0,
            **kw}


def lm_eval(url, prompt, **kw) -> dict:
    """What lm-eval sends (echo, logprobs 1, one token, greedy), with kw changed."""
    status, r = post_json(url + CMPL, lm_eval_body(prompt, **kw))
    assert status == 200, r
    return r


def forget(url) -> None:
    """Start the session over: no prompt logprobs kept (other tests share the server)."""
    status, r = post_json(url + CMPL, {"prompt": "Something else entirely", "max_tokens": 1,
                                       "cache_prompt": False})
    assert status == 200, r


def common_len(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


# ---- the end-of-generation token ----------------------------------------------------------

def test_a_reply_ended_by_its_end_token_lists_it(tiny_server, tiny_model):
    """logit_bias makes the end token the one generated token: its entry comes after the
    prompt's (empty text, nothing added to `text`), so lm-eval's [ctxlen:-1] sums exactly
    the continuation's logprobs. Failed before: the list had one entry per prompt token."""
    url, eos = tiny_server.url, tiny_model.tokenizer.eos_id
    force_end = {"logit_bias": {str(eos): 100}}
    ids = tiny_model.tokenize(PROMPT, add_special=True)
    status, r = post_json(url + CMPL, lm_eval_body(ids, **force_end))
    assert status == 200, r
    choice, usage = r["choices"][0], r["usage"]
    assert choice["finish_reason"] == "stop" and usage["completion_tokens"] == 1
    text = tiny_model.detokenize(ids)
    assert choice["text"] == text
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) \
        == len(lp["text_offset"]) == len(ids) + 1 == usage["prompt_tokens"] + 1
    assert lp["tokens"][-1] == "" and lp["text_offset"][-1] == len(text)
    assert lp["token_logprobs"][-1] == pytest.approx(0, abs=1e-6)  # the bias made it certain
    assert lp["top_logprobs"][-1].keys() == {""}
    rows = token_by_token(tiny_model, ids)
    assert_matches(lp, tiny_model, ids, rows, 1)
    # lm-eval: the context is the first ctxlen tokens, the rest the continuation
    ctxlen = len(ids) // 2
    want = rows[np.arange(ctxlen - 1, len(ids) - 1), ids[ctxlen:]].sum()
    assert sum(lp["token_logprobs"][ctxlen:-1]) == pytest.approx(want, abs=LP_TOL * len(ids))

    # streamed: the end token's entry comes in a chunk of its own, before the last one
    status, _, data = http_request("POST", url + CMPL, lm_eval_body(ids, stream=True, **force_end))
    assert status == 200
    chunks = [e["choices"][0] for e in sse_events(data) if e != "[DONE]" and e["choices"]]
    joined = {k: [v for c in chunks if c["logprobs"] for v in c["logprobs"][k]] for k in lp}
    assert joined["tokens"] == lp["tokens"] and joined["text_offset"] == lp["text_offset"]
    assert len(joined["token_logprobs"]) == len(ids) + 1
    assert "".join(c["text"] for c in chunks) == text
    # without echo the same: one entry per generated token, the end token's included
    status, r = post_json(url + CMPL, {"prompt": PROMPT, "logprobs": 2, "max_tokens": 3,
                                       "temperature": 0, **force_end})
    assert status == 200, r
    lp = r["choices"][0]["logprobs"]
    assert r["choices"][0]["text"] == "" and r["usage"]["completion_tokens"] == 1
    assert lp["tokens"] == [""] and lp["text_offset"] == [len(PROMPT)]


# ---- the prompt logprobs kept by the session ---------------------------------------------

def test_answers_after_one_context_evaluate_only_their_own_tokens(tiny_server, tiny_model):
    """lm-eval's requests for one multiple-choice question, one at a time and then as one
    list: each answer evaluates its tokens past the context, plus the context's last. Each
    is what a whole evaluation (cache_prompt false) gives."""
    url = tiny_server.url
    prompts = [tiny_model.tokenize(CONTEXT + a, add_special=True) for a in ANSWERS]
    fresh = [lm_eval(url, ids, cache_prompt=False) for ids in prompts]
    assert all(r["timings"]["cache_n"] == 0 for r in fresh)
    forget(url)
    got = [lm_eval(url, ids) for ids in prompts]
    assert got[0]["timings"]["prompt_n"] == len(prompts[0])
    for i in range(1, len(prompts)):
        shared = common_len(prompts[i - 1], prompts[i])
        assert shared >= len(tiny_model.tokenize(CONTEXT, add_special=True)) - 1
        # the last shared token again: its entry was about the token after it before
        t = got[i]["timings"]
        assert (t["cache_n"], t["prompt_n"]) == (shared - 1, len(prompts[i]) - shared + 1)
        # the entries kept are the earlier answer's own
        before = got[i - 1]["choices"][0]["logprobs"]
        lp = got[i]["choices"][0]["logprobs"]
        for key in ("token_logprobs", "top_logprobs"):
            assert lp[key][:shared] == before[key][:shared]
    for ids, r, whole in zip(prompts, got, fresh):
        lp = r["choices"][0]["logprobs"]
        assert_same_within_tolerance(lp, whole["choices"][0]["logprobs"])
        assert_matches(lp, tiny_model, ids, token_by_token(tiny_model, ids), 1)
    # as one list (lm-eval's batches): one queue entry, each prompt reusing the one before
    forget(url)
    status, r = post_json(url + CMPL, lm_eval_body(prompts))
    assert status == 200, r
    evaluated = len(prompts[0]) + sum(len(b) - common_len(a, b) + 1
                                      for a, b in zip(prompts, prompts[1:]))
    assert r["timings"]["prompt_n"] == evaluated < sum(map(len, prompts))
    for c, whole in zip(r["choices"], fresh):
        assert_same_within_tolerance(c["logprobs"], whole["choices"][0]["logprobs"])


def test_kept_entries_never_outlive_the_tokens_they_were_about(tiny_server, tiny_model):
    """A request without logprobs that replaces the context's end, one that does not use
    the cache, and a request for more alternatives than were kept: each next answer is
    the whole evaluation's, and evaluates what it must. Without dropping the entries at
    a rewind, the third answer took the first one's logprobs for its own tokens."""
    url = tiny_server.url
    a, b = (tiny_model.tokenize(CONTEXT + s, add_special=True) for s in ANSWERS[:2])
    shared = common_len(a, b)
    whole_b = lm_eval(url, b, logprobs=3, cache_prompt=False)
    forget(url)
    lm_eval(url, a, logprobs=3)
    # b without logprobs: the session keeps b's tokens, the entries only up to the context
    status, r = post_json(url + CMPL, {"prompt": b, "max_tokens": 1, "temperature": 0})
    assert status == 200, r
    again = lm_eval(url, b, logprobs=3)
    assert again["timings"]["cache_n"] < shared
    assert_same_within_tolerance(again["choices"][0]["logprobs"],
                                 whole_b["choices"][0]["logprobs"])
    # fewer alternatives than kept: reused, cut to the number asked for
    fewer = lm_eval(url, b, logprobs=1)
    assert fewer["timings"]["cache_n"] == len(b) - 1
    tops = fewer["choices"][0]["logprobs"]["top_logprobs"][1:len(b)]
    assert all(len(t) == 1 for t in tops)
    # more than kept: evaluated whole, as before
    more = lm_eval(url, b, logprobs=5)
    assert more["timings"]["cache_n"] == 0 and more["timings"]["prompt_n"] == len(b)
    # a request that does not use the cache starts the session over: nothing kept
    post_json(url + CMPL, {"prompt": b, "max_tokens": 1, "cache_prompt": False})
    after_reset = lm_eval(url, b)
    assert after_reset["timings"]["cache_n"] == 0


def test_the_session_drops_entries_wherever_its_tokens_change(tiny_model):
    """Engine and Session directly: rewind (speculation's, the prompt cache's, a failed
    request's) cuts the entries to those whose next token is still held; tokens added
    without logprobs (a reply) leave them; an engine's answer after a rewind past the
    entries is the whole evaluation's."""
    ids = tiny_model.tokenize(CONTEXT + ANSWERS[2], add_special=True)
    eng = Engine(tiny_model, 128)
    s = eng.session

    def prompt_probs(prompt, n_probs=2):
        req = eng.submit(Request(prompt_ids=prompt, max_tokens=2, n_probs=n_probs,
                                 prompt_logprobs=True, params=None))
        final = list(req.iter_events(poll_s=0.05))[-1]
        assert final.kind == "done", final.error
        return final.prompt_probs, final.timings

    first, t = prompt_probs(ids)
    assert len(first) == len(ids) - 1 and t.cached_n == 0
    assert len(s.tokens) == len(ids) + 2 and s.prompt_probs == first  # the reply left them
    s.rewind(len(ids) - 3)
    assert s.prompt_probs == first[:len(ids) - 4]
    s.eval([5, 6, 7])  # other tokens where the prompt's were
    again, t = prompt_probs(ids)
    assert t.cached_n == len(ids) - 4 and again[:t.cached_n] == first[:t.cached_n]
    diff = [abs(np.log(p) - np.log(q)) for (p, _), (q, _) in zip(again, first)]
    assert len(again) == len(first) and max(diff) <= LP_TOL
    # fewer alternatives: cut; more: nothing reused (and the session keeps nothing more)
    assert s.reuse_prompt_probs(ids[:5], 1) == [(p, tops[:1]) for p, tops in first[:4]]
    assert s.tokens == ids[:4] and len(s.prompt_probs) == 3
    assert s.reuse_prompt_probs(ids, 3) == [] and s.tokens == []
    s.keep_prompt_probs(first, 2)  # no more entries than tokens held
    assert s.prompt_probs == []
