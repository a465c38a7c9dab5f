"""/v1/completions' echo together with logprobs: the prompt's tokens with their logprobs.

It was a 400 ("the engine does not compute the prompt's token logprobs"), and it is what
evaluation tools send: lm-evaluation-harness's `local-completions` scores a continuation
with `echo: true, logprobs: 1` and sums `token_logprobs[ctxlen:-1]`, prompts in batches.
Now the answer's `logprobs` lists every prompt token first (its logprob given the tokens
before it, null for the first, as OpenAI's answer has it), then the completion's.

The reference is the Model API fed the prompt one token at a time, within TOLERANCES.md's
precise bound, and llama.cpp's logits at all 48 positions of the tiny model's fixture.
Servers: the session's tiny_server (tiny-llama-q8_0), plus the Model in this process.
"""
from __future__ import annotations

import numpy as np
import pytest

from runtime import model as model_module
from runtime import sampling
from runtime.engine import Engine, Request
from tests.e2e.conftest import TINY, http_request, post_json, sse_events
from tests.e2e.test_api_more import _client
from tests.e2e.test_api_semantics import bad_request
from tests.runtime.test_prompt_logprobs import assert_same_as_reported

openai = pytest.importorskip("openai", reason="the openai client is not installed")

PROMPT = "The cat sat on the mat, and then it"
REF = np.load(TINY.with_suffix(".npz"))
# TOLERANCES.md's precise mode allows 0.01·std on each logit; a log-softmax moves by at
# most twice a logit's error (its own, and the log-sum-exp's).
LP_TOL = 2 * 0.01 * float(REF["f32ref_logits"].std())


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def token_by_token(model, ids) -> np.ndarray:
    """log-softmax rows [len(ids) - 1, n_vocab]: row i is the model's distribution over
    the token after ids[:i + 1], each prefix fed one token at a time (no batched head)."""
    s = model.session(len(ids))
    return log_softmax(np.stack([s.eval([t]) for t in ids[:-1]]))


def echo_lp(url, prompt, **kw) -> dict:
    body = {"prompt": prompt, "echo": True, "logprobs": 3, "max_tokens": 0, "temperature": 0,
            **kw}
    status, r = post_json(url + "/v1/completions", body)
    assert status == 200, r
    return r


def assert_matches(lp: dict, model, ids, rows: np.ndarray, n_top: int) -> None:
    """The prompt part of a legacy logprobs object against log-softmax rows."""
    from runtime.api import piece
    n = len(ids)
    assert lp["tokens"][:n] == [piece(model, t)[0] for t in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    ours = np.array(lp["token_logprobs"][1:n])
    ref = rows[np.arange(n - 1), ids[1:]]
    assert np.abs(ours - ref).max() <= LP_TOL, np.abs(ours - ref).max()
    for i, tops in enumerate(lp["top_logprobs"][1:n]):
        assert 1 <= len(tops) <= n_top and list(tops.values()) == sorted(tops.values(), reverse=True)
        assert abs(max(tops.values()) - rows[i].max()) <= LP_TOL
        for text, v in tops.items():  # the likeliest token that reads so
            best = max(rows[i][t] for t in range(model.n_vocab) if piece(model, t)[0] == text)
            assert abs(v - best) <= LP_TOL, (i, text, v, best)


def assert_same_within_tolerance(got: dict, want: dict) -> None:
    """Two legacy logprobs objects: the same tokens and alternatives, logprobs within the
    precise bound."""
    for key in ("tokens", "text_offset"):
        assert got[key] == want[key]
    assert got["token_logprobs"][0] is None and want["token_logprobs"][0] is None
    diff = np.abs(np.array(got["token_logprobs"][1:]) - np.array(want["token_logprobs"][1:]))
    assert diff.max() <= LP_TOL, diff.max()
    for a, b in zip(got["top_logprobs"][1:], want["top_logprobs"][1:]):
        assert a.keys() == b.keys()
        assert max(abs(a[k] - b[k]) for k in a) <= LP_TOL


def assert_offsets_point_at_tokens(text: str, tokens: list, offsets: list) -> None:
    """Each token made of whole characters stands at its offset in the text (a first
    word's SentencePiece space may be dropped at the text's start), and offsets never go
    down."""
    assert offsets == sorted(offsets) and offsets[-1] <= len(text)
    for tok, off in zip(tokens, offsets):
        if tok and "\ufffd" not in tok:
            assert (text.startswith(tok, off)
                    or off == 0 and text.startswith(tok.lstrip(" "))), (text, tok, off)


# ---- the numbers: the Model fed token by token, and llama.cpp ---------------------------------

def test_prompt_logprobs_are_the_models_fed_token_by_token(tiny_server, tiny_model):
    """With the openai client: every prompt token with its logprob and top logprobs, the
    first with none; max_tokens 0 gives the prompt alone."""
    client = _client(tiny_server.url, max_retries=0)
    r = client.completions.create(model="x", prompt=PROMPT, echo=True, logprobs=3, max_tokens=0)
    ids = tiny_model.tokenize(PROMPT, add_special=True)
    choice = r.choices[0]
    assert choice.text == PROMPT and r.usage.completion_tokens == 0
    assert r.usage.prompt_tokens == len(ids) == len(choice.logprobs.tokens)
    lp = choice.logprobs.model_dump()
    assert_matches(lp, tiny_model, ids, token_by_token(tiny_model, ids), 3)
    # (this vocabulary spells the text's first space "\u2581": the offsets are those of
    # the text the ids decode to, which test_token_ids_and_mixed_prompts checks)
    offsets = lp["text_offset"]
    assert offsets == sorted(offsets) and offsets[-1] < len(PROMPT)


def test_prompt_logprobs_match_llama_cpp_at_every_position(tiny_server):
    """The fixture's 48 tokens against llama.cpp's F32-reference logits at all positions."""
    ids = REF["tokens"].tolist()
    lp = echo_lp(tiny_server.url, ids, logprobs=1)["choices"][0]["logprobs"]
    rows = log_softmax(REF["f32ref_logits"][:-1])
    ours = np.array(lp["token_logprobs"][1:])
    assert lp["token_logprobs"][0] is None and len(ours) == len(ids) - 1
    assert np.abs(ours - rows[np.arange(len(ids) - 1), ids[1:]]).max() <= LP_TOL
    best = np.array([max(t.values()) for t in lp["top_logprobs"][1:]])
    assert np.abs(best - rows.max(axis=1)).max() <= LP_TOL


def test_the_head_runs_over_a_few_positions_at_a_time_and_eval_is_unchanged(monkeypatch,
                                                                             tiny_model):
    """Session.eval's rows: every position's logits, at most LOGIT_ROWS_BYTES of them at a
    time (a 4096-token prompt of Qwen's vocabulary must not make [4096, 151936] at once),
    across micro-batches; eval's own answer is bit for bit what it is without them."""
    m = tiny_model
    ids = (REF["tokens"].tolist() * 6)[:model_module.UBATCH_TOK + 40]  # two micro-batches
    plain = m.session(len(ids)).eval(ids)
    monkeypatch.setattr(model_module, "LOGIT_ROWS_BYTES", 4 * m.n_vocab * 7)
    got = []
    last = m.session(len(ids)).eval(ids, on_logits=lambda z, pos: got.append((pos, z.copy())))
    assert np.array_equal(last, plain)
    assert max(z.shape[0] for _, z in got) == 7
    assert [pos for pos, _ in got] == sorted(pos for pos, _ in got)
    rows = np.concatenate([z for _, z in got])
    assert got[0][0] == 0 and rows.shape == (len(ids), m.n_vocab)
    assert np.abs(rows - m.logits(ids)).max() <= 0.01 * float(REF["f32ref_logits"].std())


@pytest.mark.parametrize("block", [16, sampling.BEST_BLOCK])
def test_each_block_of_rows_gives_what_reported_probs_gives_row_by_row(monkeypatch, tiny_model,
                                                                       block):
    """The engine reduces the prompt's logits a block of rows at a time (7 here, the last
    position left out, as no token follows it): each position gets what reported_probs,
    the reply's logprobs, gives for that row of the model's logits alone (the same ids
    in the same order; tests/runtime/test_prompt_logprobs.py says how close the numbers
    are, and tries ties). With blocks of 16 the fixture's 512-entry vocabulary is
    searched from its blocks' maxima, as Qwen's is; with the default, whole."""
    monkeypatch.setattr(sampling, "BEST_BLOCK", block)
    monkeypatch.setattr(model_module, "LOGIT_ROWS_BYTES", 4 * tiny_model.n_vocab * 7)
    ids = REF["tokens"].tolist()
    got = []
    tiny_model.session(len(ids)).eval(ids, on_logits=lambda z, pos: got.append(z.copy()))
    rows = np.concatenate(got)[:-1]
    assert_same_as_reported(rows, ids[1:], 5)
    eng = Engine(tiny_model, len(ids) + 8)
    req = eng.submit(Request(prompt_ids=ids, max_tokens=0, n_probs=5, prompt_logprobs=True))
    final = list(req.iter_events(poll_s=0.05))[-1]
    assert final.kind == "done", final.error
    assert final.prompt_probs == sampling.reported_probs_rows(rows, ids[1:], 5)


# ---- the cache, prompt forms, streaming, batches -------------------------------------------

def test_the_same_answer_whatever_the_cache_held(tiny_server, tiny_model):
    """The session keeps the prompt logprobs of the tokens it holds (no logits): after a
    prefix of the prompt, only what the prefix's request kept is reused; after itself,
    all of it; the answer is the same within the precise bound (batches of other lengths
    round differently; tests/e2e/test_api_echo_reuse.py has more)."""
    url = tiny_server.url
    ids = tiny_model.tokenize(PROMPT, add_special=True)
    post_json(url + "/v1/completions", {"prompt": "Something else entirely", "max_tokens": 2,
                                        "cache_prompt": False})
    first = echo_lp(url, PROMPT, max_tokens=2)
    assert first["timings"]["cache_n"] == 0 and first["timings"]["prompt_n"] == len(ids)
    post_json(url + "/v1/completions", {"prompt": ids[:len(ids) // 2], "max_tokens": 2})
    after_prefix = echo_lp(url, PROMPT, max_tokens=2)
    again = echo_lp(url, PROMPT, max_tokens=2)
    assert 0 < after_prefix["timings"]["cache_n"] < len(ids) // 2
    assert again["timings"]["cache_n"] == len(ids) - 1
    for r in (after_prefix, again):
        assert r["timings"]["cache_n"] + r["timings"]["prompt_n"] == len(ids)
        assert r["choices"][0]["text"] == first["choices"][0]["text"]
        assert_same_within_tolerance(r["choices"][0]["logprobs"], first["choices"][0]["logprobs"])
    lp = first["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 2  # the prompt's, then the completion's
    assert_matches(lp, tiny_model, ids, token_by_token(tiny_model, ids), 3)
    # the completion's offsets go on from the prompt's text, as without echo
    plain = post_json(url + "/v1/completions", {"prompt": PROMPT, "logprobs": 3, "max_tokens": 2,
                                                "temperature": 0})[1]["choices"][0]["logprobs"]
    assert lp["text_offset"][len(ids):] == plain["text_offset"]
    assert lp["token_logprobs"][len(ids):] == pytest.approx(plain["token_logprobs"], abs=LP_TOL)


@pytest.mark.parametrize("bos", [True, False])
def test_token_ids_and_mixed_prompts(tiny_server, tiny_model, bos):
    """Token ids echo as their text, and each token's offset points at it in that text.
    Without BOS the ids start with " c": the text starts "cat", its SentencePiece space
    dropped, and "at" is at 1 (counted as a completion, it would have been at 2)."""
    ids = tiny_model.tokenize("cat sat", add_special=bos)
    r = echo_lp(tiny_server.url, ids, max_tokens=3)["choices"][0]
    lp, text = r["logprobs"], r["text"]
    prompt_text = tiny_model.detokenize(ids)
    assert text.startswith(prompt_text) and lp["text_offset"][len(ids)] == len(prompt_text)
    assert_offsets_point_at_tokens(prompt_text, lp["tokens"][:len(ids)],
                                   lp["text_offset"][:len(ids)])
    assert_matches(lp, tiny_model, ids, token_by_token(tiny_model, ids), 3)
    bos = tiny_model.tokenizer.bos_id
    mixed = [bos, "The cat", 300, " sat"]
    mixed_ids = ([bos] + tiny_model.tokenize("The cat", add_special=False) + [300]
                 + tiny_model.tokenize(" sat", add_special=False))
    r = echo_lp(tiny_server.url, mixed)
    assert r["usage"]["prompt_tokens"] == len(mixed_ids)
    assert_matches(r["choices"][0]["logprobs"], tiny_model, mixed_ids,
                   token_by_token(tiny_model, mixed_ids), 3)


def test_streamed_the_prompt_chunk_carries_the_prompts_logprobs(tiny_server):
    url = tiny_server.url
    # both evaluated whole: the same batches, the same numbers to the last digit (the
    # second would otherwise find the first's prompt logprobs and evaluate one token)
    whole = echo_lp(url, PROMPT, max_tokens=4, cache_prompt=False)["choices"][0]
    status, _, data = http_request("POST", url + "/v1/completions",
                                   {"prompt": PROMPT, "echo": True, "logprobs": 3,
                                    "max_tokens": 4, "temperature": 0, "stream": True,
                                    "cache_prompt": False})
    assert status == 200
    chunks = [e["choices"][0] for e in sse_events(data) if e != "[DONE]" and e["choices"]]
    assert chunks[0]["text"] == PROMPT and chunks[0]["logprobs"]["token_logprobs"][0] is None
    joined = {k: [v for c in chunks if c["logprobs"] for v in c["logprobs"][k]]
              for k in whole["logprobs"]}
    assert joined == whole["logprobs"]
    assert "".join(c["text"] for c in chunks) == whole["text"]
    # with the openai client too
    client = _client(url, max_retries=0)
    first = next(iter(client.completions.create(model="x", prompt=PROMPT, echo=True, logprobs=3,
                                                max_tokens=4, temperature=0, stream=True)))
    assert first.choices[0].logprobs.model_dump() == chunks[0]["logprobs"]


def test_a_list_of_prompts_gets_a_choice_each(tiny_server, tiny_model):
    """As lm-evaluation-harness sends a batch: token-id lists, echo, logprobs 1, one
    completion token; each choice is what that prompt alone gets (each evaluated whole,
    to the last digit: test_api_echo_reuse.py has the same with the cache)."""
    url = tiny_server.url
    texts = [PROMPT, "cat sat", "Once upon a time"]
    batch = [tiny_model.tokenize(t, add_special=True) for t in texts]
    body = {"echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0, "seed": 1234,
            "cache_prompt": False}
    status, r = post_json(url + "/v1/completions", {**body, "prompt": batch})
    assert status == 200, r
    assert [c["index"] for c in r["choices"]] == [0, 1, 2]
    assert r["usage"]["prompt_tokens"] == sum(map(len, batch))
    for i, (ids, c) in enumerate(zip(batch, r["choices"])):
        _, alone = post_json(url + "/v1/completions", {**body, "prompt": ids})
        assert c == {**alone["choices"][0], "index": i}
        # lm-eval's [ctxlen:-1] drops the one reply token, an end token too
        assert len(c["logprobs"]["token_logprobs"]) == len(ids) + 1
        assert_matches(c["logprobs"], tiny_model, ids, token_by_token(tiny_model, ids), 1)
    # with the openai client, and without echo: the plain completions of each
    client = _client(url, max_retries=0)
    got = client.completions.create(model="x", prompt=texts, max_tokens=3, temperature=0)
    for t, c in zip(texts, got.choices):
        alone = client.completions.create(model="x", prompt=t, max_tokens=3, temperature=0)
        assert c.text == alone.choices[0].text and c.index == texts.index(t)


def test_bad_combinations_are_still_clear_400s(tiny_server, tiny_model):
    url, path = tiny_server.url, "/v1/completions"
    ok = {"prompt": "Hi", "echo": True, "logprobs": 1, "max_tokens": 1}
    bad_request(url, path, {**ok, "logprobs": 6}, "'logprobs'")
    bad_request(url, path, {**ok, "echo": "yes"}, "'echo'")
    bad_request(url, path, {**ok, "prompt": ["a", []]}, "'prompt[1]'")
    bad_request(url, path, {**ok, "prompt": ["a", [1, 10**6]]}, "'prompt[1]'", "out of range")
    bad_request(url, path, {**ok, "prompt": ["a"] * 129}, "at most 128")
    # a prompt of the list too long for the context: llama-server's error, before the
    # first one runs (the cache still holds the request before, whole)
    other = "Zebras graze"
    post_json(url + path, {"prompt": other, "max_tokens": 1})
    status, r = post_json(url + path, {**ok, "prompt": ["a", "word " * 300]})
    assert status == 400 and r["error"]["type"] == "exceed_context_size_error", r
    r = post_json(url + path, {"prompt": other, "max_tokens": 1})[1]
    assert r["timings"]["cache_n"] == len(tiny_model.tokenize(other, add_special=True)) - 1
    bad_request(url, path, {**ok, "suffix": "x"}, "'suffix'")
    # llama-server's /completion takes a list too (test_api_llama_batch), checked alike
    status, r = post_json(url + "/completion", {"prompt": ["a", "word " * 300]})
    assert status == 400 and r["error"]["type"] == "exceed_context_size_error", r
