"""A request's predicted output (OpenAI's Predicted Outputs) drafts greedy speculation.

If these fail, a prediction changes a greedy reply (it must only make it faster), is never
drafted from (no speed-up where the reply repeats it), or its accepted and rejected
token counts in usage are wrong.
"""
import numpy as np
import pytest

from runtime import speculate
from runtime.engine import Engine, Request
from runtime.model import Model
from runtime.sampling import Sampler, SamplingParams
from tests.conftest import MODELS
from tests.runtime.test_speculate import _plain_greedy

NAMES = ["tiny-llama-q8_0.gguf", "tiny-qwen2-q4_k_m.gguf", "tiny-gemma3-q4_k_m.gguf"]


def test_a_reply_on_the_prediction_is_drafted_from_where_it_is():
    p = speculate.PredictionDrafts([10, 11, 12, 13, 14, 15])
    # The reply's first token is the prediction's first: the rest follows, however short
    # the match (the prompt's own lookup needs 3 tokens).
    assert p.draft(np.array([1, 2, 10]), 3) == [11, 12, 13]
    p.verified(3, 3)
    assert p.pos_tok == 4 and p.kept_tok == 3 and p.drafted_tok == 3
    assert p.draft(np.array([1, 2, 10, 11, 12, 13, 14]), 8) == [15]


def test_a_draft_wholly_kept_lets_the_next_be_longer():
    p = speculate.PredictionDrafts(list(range(100, 200)))
    h = [100]
    assert len(p.draft(np.array(h), 64)) == speculate.DRAFT_MAX_TOK
    p.verified(8, 8)
    assert len(p.draft(np.array(h + list(range(101, 109)) + [108]), 64)) == 0  # not aligned
    assert len(p.draft(np.array(h + list(range(101, 110))), 64)) == 2 * speculate.DRAFT_MAX_TOK
    p.verified(16, 3)  # a rejection: back to the usual length
    assert p.k_tok == speculate.DRAFT_MAX_TOK and p.pos_tok == 13  # where 113 was drafted


def test_after_a_change_the_reply_is_found_again_further_on():
    pred = [5, 6, 7, 8, 20, 21, 22, 23, 24, 30, 31, 32, 33, 34, 20, 21, 22, 40, 41]
    p = speculate.PredictionDrafts(pred)
    p.pos_tok = 9  # the reply got past the first "20 21 22"
    # The reply replaced "30 31 32 33 34" by something else, then wrote "20 21 22": the
    # occurrence ahead of where it was is the one it goes on from.
    assert p.draft(np.array([5, 6, 99, 98, 20, 21, 22]), 4) == [40, 41]
    p.pos_tok = 0
    assert p.draft(np.array([5, 6, 99, 98, 20, 21, 22]), 4) == [23, 24, 30, 31]
    assert p.draft(np.array([5, 6, 99, 98, 97, 21, 22]), 4) == []  # two tokens are too few
    assert speculate.PredictionDrafts([]).draft(np.array([1, 2, 3]), 4) == []


def test_a_prediction_shorter_than_the_suffix_drafts_nothing():
    """A 2-token prediction whose tokens begin the reply's last 3: the search for the
    3-token suffix read past the prediction's end (an IndexError, the request an error)."""
    assert speculate.PredictionDrafts([5, 7]).draft(np.array([1, 5, 7, 8]), 8) == []


def _greedy_with_prediction(m, ids, n, prediction):
    """Speculative greedy decoding drafting from `prediction`: (tokens, passes, drafts)."""
    s = m.session(len(ids) + n + 40)
    sampler = Sampler(SamplingParams(temperature=0))
    pred = speculate.PredictionDrafts(prediction)
    logits, out, passes, kept = s.eval(ids), [], 0, 0
    while len(out) < n:
        toks, logits = speculate.greedy_tokens(s, logits, sampler, list(ids) + out,
                                               s.n_ctx - len(s.tokens), prediction=pred)
        passes += 1
        kept += pred.kept_tok
        out += toks
        assert s.tokens == list(ids) + out  # the session holds every returned token
    return out[:n], passes, (kept, pred.drafted_tok)


def _assert_greedy(spec, plain, margins, std):
    for step, (a, b) in enumerate(zip(spec, plain)):
        if margins[step] < 0.01 * std:
            break  # near-tie: batched and single-token matmuls may round either way
        assert a == b, f"step {step}: with a prediction {a}, plain {b}"


@pytest.mark.parametrize("name", NAMES)
def test_same_output_as_plain_greedy_whatever_the_prediction(name):
    m = Model.load(MODELS / name)
    ids = np.load(MODELS / name.replace(".gguf", ".npz"))["tokens"].tolist()
    n = 40
    plain, margins, std = _plain_greedy(m, ids, n)
    rng = np.random.default_rng(0)
    predictions = {
        "matches": plain,
        "diverges early": plain[:3] + [(plain[3] + 1) % m.n_vocab] + plain[4:],
        "unrelated": rng.integers(0, m.n_vocab, 60).tolist(),
        "empty": [],
    }
    for what, prediction in predictions.items():
        spec, passes, (kept, drafted) = _greedy_with_prediction(m, ids, n, prediction)
        _assert_greedy(spec, plain, margins, std)
        assert 0 <= kept <= drafted, what
        if what == "matches":
            # The reply is the prediction: long drafts, nearly all kept.
            assert kept >= n - 8 and passes <= n // 4, (what, kept, passes)
        if what == "empty":
            assert drafted == 0


def _engine_reply(engine, ids, prediction, **params):
    req = Request(prompt_ids=ids, params=SamplingParams(**params), max_tokens=30,
                  prediction=prediction)
    events = list(engine.run(req))
    assert events[-1].kind == "done", events[-1].error
    return [e.token for e in events if e.kind == "token" and e.token is not None], events[-1]


def test_the_engine_counts_accepted_and_rejected_prediction_tokens():
    name = "tiny-llama-q8_0.gguf"
    m = Model.load(MODELS / name)
    ids = np.load(MODELS / name.replace(".gguf", ".npz"))["tokens"].tolist()
    engine = Engine(m, n_ctx=256)
    plain, done = _engine_reply(engine, ids, None, temperature=0)
    assert (done.accepted_prediction_tokens, done.rejected_prediction_tokens) == (0, 0)
    # A prediction that is the reply and goes on past its end (max_tokens stops it): the
    # tokens drafted past the end are not in the reply, so they are rejected.
    same, done = _engine_reply(engine, ids, plain + plain, temperature=0)
    assert same == plain
    assert done.accepted_prediction_tokens >= len(plain) - 8
    assert done.accepted_prediction_tokens <= len(plain) - 1  # the first is the model's own
    assert done.rejected_prediction_tokens > 0
    # A sampled reply ignores the prediction: the same draw, nothing drafted from it.
    drawn, _ = _engine_reply(engine, ids, None, temperature=1.0, seed=3)
    drawn_pred, done = _engine_reply(engine, ids, plain, temperature=1.0, seed=3)
    assert drawn_pred == drawn
    assert (done.accepted_prediction_tokens, done.rejected_prediction_tokens) == (0, 0)
