"""llama.cpp's infill sampler (runtime/sampling.py's _step_infill, the `samplers` name
"infill", which llama.vim and llama.vscode send on every /infill request).

The step is checked against a reference written here from llama.cpp's definition
(llama_sampler_infill_apply in src/llama-sampling.cpp), loop by loop: the softmax of the
candidates, the end tokens alone when they are likely enough, the merge of every pair of
tokens whose texts start alike (an O(n^2) loop, as there), the two thresholds, the end
token alone when no text is left; then the draw, which takes the softmax of the kept
tokens' logits again (llama.cpp's dist sampler). Its tokens' texts are read from a fake
tokenizer directly, not through runtime.token_bytes' table the step reads.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.api import sampling_params
from runtime.sampling import Sampler, SamplingParams, infill_vocab
from tests.runtime.test_sampler_order import REFERENCE, assert_same_distribution, best_first
from tests.runtime.test_samplers_more import NO_FILTERS as FILTERS_OFF
from tests.runtime.test_samplers_more import logit_rows, softmax

NO_FILTERS = {**FILTERS_OFF, "temperature": 1.0}


class FakeVocab:
    """A tokenizer stand-in: token i is texts[i]; the `control` ones (the end tokens among
    them) show no text unless asked for special tokens, as llama.cpp's token_to_piece."""

    def __init__(self, texts, control=(), eog=(), eot=None, eos=None):
        self.texts, self.control = list(texts), set(control)
        self.n_vocab, self.eog_ids, self.eot_id, self.eos_id = len(texts), frozenset(eog), eot, eos

    def token_to_piece(self, t, special=False):
        return b"" if t in self.control and not special else self.texts[t]

    def is_special(self, t):
        return t in self.control


EOT, EOS = 0, 1
TEXTS = [b"<eot>", b"<eos>", b"a", b"ab", b"abc", b"b", b"ba", b" ", b" x", b"x", b"c",
         b"abd", b"a", b"<fim>"]
A, AB, ABC, B, BA, SPACE, SPACE_X, X, C, ABD, A_AGAIN, FIM = range(2, 14)
VOCAB = FakeVocab(TEXTS, control=(EOT, EOS, FIM), eog=(EOT, EOS), eot=EOT, eos=EOS)


# ---- the reference ---------------------------------------------------------------------

def ref_infill(c: dict, vocab: FakeVocab, banned_end: bool = False) -> dict:
    """llama_sampler_infill_apply on candidates {token: logit} -> {token: logit} kept
    (a token merged into another has logit -inf, as there)."""
    cur = [{"id": i, "logit": c[i]} for i in best_first(c)]
    for x, q in zip(cur, softmax([x["logit"] for x in cur])):
        x["p"] = q
    is_eog = [x["id"] in vocab.eog_ids for x in cur]
    p_eog = sum(x["p"] for x, e in zip(cur, is_eog) if e)
    p_txt = sum(x["p"] for x, e in zip(cur, is_eog) if not e)
    if 3 * p_eog * len(cur) > p_txt:
        return {x["id"]: x["logit"] for x, e in zip(cur, is_eog) if e}
    for i0 in range(len(cur)):
        for i1 in range(len(cur)):
            if cur[i0]["logit"] == -math.inf:
                break
            if i0 == i1 or cur[i1]["logit"] == -math.inf:
                continue
            t0 = vocab.token_to_piece(cur[i0]["id"])
            t1 = vocab.token_to_piece(cur[i1]["id"])
            if 0 < len(t0) <= len(t1) and t1[:len(t0)] == t0:
                dst, src = i0, i1
                if cur[i1]["p"] > cur[i0]["p"]:
                    dst, src = i1, i0
                cur[dst]["p"] += cur[src]["p"]
                cur[src]["logit"], cur[src]["p"] = -math.inf, 0.0
    kept = [(x, e) for x, e in zip(cur, is_eog) if e or x["p"] >= 0.2]
    n_text = sum(1 for _, e in kept if not e)
    if n_text == 0:
        if banned_end:   # ours: the end token is banned (ignore_eos), the merge's text tokens
            return {x["id"]: x["logit"] for x, e in zip(cur, is_eog) if not e}
        return {vocab.eot_id if vocab.eot_id is not None else vocab.eos_id: 1.0}
    total = sum(x["p"] for x, _ in kept)
    kept = [(x, e) for x, e in kept if e or x["p"] / total >= 1.0 / (n_text + 1)]
    return {x["id"]: x["logit"] for x, _ in kept}


def reference(z, order, vocab=VOCAB, banned_end=False, **kw) -> dict:
    """{token: probability drawn with} after the named samplers, infill among them."""
    p = SamplingParams(**{**NO_FILTERS, **kw})
    c = {i: float(x) for i, x in enumerate(z)}
    for name in order:
        c = ref_infill(c, vocab, banned_end) if name == "infill" else REFERENCE[name](c, p)
    ids = list(c)
    return {i: q for i, q in zip(ids, softmax([c[i] for i in ids])) if q > 0}


def step(z, order=("infill",), vocab=VOCAB, **kw) -> dict:
    s = Sampler(SamplingParams(**{**NO_FILTERS, **kw}, samplers=order,
                               infill_vocab=infill_vocab(vocab)))
    ids, probs = s.probabilities(np.asarray(z, dtype=np.float32), [])
    return {int(i): float(q) for i, q in zip(ids, probs) if q > 0}


def logits_for(probs: dict, vocab=VOCAB, rest: float = 1e-6) -> np.ndarray:
    """Logits whose softmax is probs {token: p}, every other token at `rest`."""
    p = np.full(vocab.n_vocab, rest)
    for t, q in probs.items():
        p[t] = q
    return np.log(p / p.sum()).astype(np.float32)


def check(z, order=("top_k", "infill"), vocab=VOCAB, **kw) -> dict:
    got = step(z, order, vocab, **kw)
    assert_same_distribution(got, reference(z, order, vocab, **kw), order)
    return got


# ---- crafted candidates ------------------------------------------------------------------

def test_tokens_that_start_alike_are_merged_and_kept_together():
    """No token alone reaches 0.2; "a" takes "ab", "abc", "abd" and the other "a" (.41 in
    all), "b" takes "ba" (.25), " " takes " x" (.16, cut). Both kept (over 1/3 of what is
    left), drawn by their own logits: .15 against .14."""
    z = logits_for({A: .15, AB: .09, ABC: .08, ABD: .04, A_AGAIN: .05, B: .14, BA: .11,
                    SPACE: .1, SPACE_X: .06, X: .08, C: .09, EOT: 1e-4})
    got = check(z, top_k=12)
    assert set(got) == {A, B, EOT}
    assert got[A] / got[B] == pytest.approx(.15 / .14, rel=1e-5)


def test_a_token_goes_into_a_likelier_one_its_text_starts():
    """"ab" is likelier than "a": "a" goes into it (.45 in all) and is gone; "abc" is
    merged into "ab" too. "x" alone is .3."""
    z = logits_for({AB: .25, A: .2, ABC: .05, X: .3, C: .1, SPACE: .09})
    got = check(z, top_k=8)
    assert set(got) - {EOT, EOS} == {AB, X}
    # without the merge "ab" alone (.25) would pass the first threshold, "a" too: the
    # second one (1/4 of the .95 left) would then keep all three
    # as likely as "ab", "a" keeps it (whichever of the two comes first)
    z = logits_for({A: .2, AB: .2, X: .3, C: .3})
    assert set(check(z, top_k=4)) == {A, X, C}


def test_likely_end_tokens_are_kept_alone():
    """3 · p(end) · n > p(text): with 10 candidates, ends at .04 against text at .96."""
    z = logits_for({EOT: .03, EOS: .01, A: .5, B: .2, X: .1, C: .06, SPACE: .04, AB: .03,
                    BA: .02, ABC: .01})
    got = check(z, top_k=10)
    assert set(got) == {EOT, EOS} and got[EOT] == pytest.approx(.75, rel=1e-5)
    # three candidates (.625, .25, .125): the ends are left out, "x" is under 0.2, and
    # "b" is .29 of the rest, under 1/3
    assert set(check(z, top_k=3)) == {A}


def test_no_text_token_kept_ends_the_reply_with_eot_or_else_eos():
    """A flat distribution and no merge: no text token reaches 0.2: EOT alone, though
    the cut left it out; EOS when the vocabulary has no EOT."""
    z = logits_for({X: .1, C: .1, SPACE: .1, A: .1, B: .1, FIM: .1})
    assert check(z, top_k=6) == {EOT: 1.0}
    no_eot = FakeVocab(TEXTS, control=(EOT, EOS, FIM), eog=(EOT, EOS), eot=None, eos=EOS)
    assert check(z, top_k=6, vocab=no_eot) == {EOS: 1.0}


def test_a_banned_end_token_leaves_the_merged_text_tokens():
    """ignore_eos bans every end token: the reply cannot end, and the step keeps the text
    tokens the merge left ("ab" went into "a"), drawn by their logits."""
    z = logits_for({X: .1, C: .1, SPACE: .1, A: .1, AB: .01, B: .1, FIM: .1})
    bias = {EOT: -math.inf, EOS: -math.inf}
    got = step(z, ("top_k", "infill"), logit_bias=bias, top_k=7)
    assert_same_distribution(got, reference(z, ("top_k", "infill"), banned_end=True, top_k=7),
                             "ignore_eos")
    assert set(got) == {X, C, SPACE, A, B, FIM}   # FIM: a control token, but no end
    assert check(z, top_k=7) == {EOT: 1.0}


class NoEnd:
    """A constraint (as runtime/json_constraint.py's) that allows every token but the ends."""

    def allows(self, t):
        return t not in VOCAB.eog_ids

    def candidates(self):
        return np.array([self.allows(t) for t in range(VOCAB.n_vocab)])


def test_an_end_token_the_constraint_refuses_is_not_drawn():
    """Where the step would end the reply, a constraint that refuses the end tokens gets
    the text tokens the merge left, as a banned end token does."""
    z = logits_for({X: .1, C: .1, SPACE: .1, A: .1, AB: .01, B: .1, FIM: .1})
    s = Sampler(SamplingParams(**{**NO_FILTERS, "top_k": 7}, samplers=("top_k", "infill"),
                               infill_vocab=infill_vocab(VOCAB), seed=2), constraint=NoEnd())
    assert {s.sample(z, []) for _ in range(60)} == {X, C, SPACE, A, B, FIM}


def test_the_draw_takes_what_the_step_keeps():
    z = logits_for({A: .15, AB: .09, ABC: .08, B: .14, BA: .11, X: .2, C: .2})
    s = Sampler(SamplingParams(**{**NO_FILTERS, "top_k": 7}, samplers=("top_k", "infill"),
                               infill_vocab=infill_vocab(VOCAB), seed=1))
    kept = step(z, ("top_k", "infill"), top_k=7)
    assert set(kept) == {A, B, X, C}    # "a" .32, "b" .25 and the other two .2 each
    assert {s.sample(z, []) for _ in range(60)} == set(kept)


# ---- random candidates -----------------------------------------------------------------

def random_vocab(seed: int, n: int) -> FakeVocab:
    """Short texts over a 3-letter alphabet, so that many start others (some twice), with
    two control end tokens and a control token that is no end."""
    rng = np.random.default_rng(seed)
    texts = [b"<eot>", b"<eos>", b"<ctl>"]
    while len(texts) < n:
        texts.append(bytes(rng.choice(list(b"ab "), size=int(rng.integers(1, 4))).tolist()))
    return FakeVocab(texts, control=(0, 1, 2), eog=(0, 1), eot=0, eos=1)


ORDERS = [("infill",), ("top_k", "infill"), ("top_k", "top_p", "infill"),
          ("temperature", "top_k", "infill"), ("top_k", "infill", "temperature", "min_p")]


@pytest.mark.parametrize("order", ORDERS, ids=[",".join(o) for o in ORDERS])
def test_random_candidates_match_the_reference(order):
    seen = set()
    for seed in range(12):
        vocab = random_vocab(seed, 80)
        for scale in (1.0, 3.0, 6.0):
            for z in logit_rows(100 + seed, 2, vocab.n_vocab, scale=scale):
                got = check(z, order, vocab, top_k=20, top_p=0.99, min_p=0.05, temperature=0.7)
                seen.add("end" if set(got) <= {0, 1} else "text")
    assert seen == {"end", "text"}   # both outcomes were checked


def test_without_a_vocabulary_or_when_not_named_it_does_nothing():
    z = logit_rows(7, 1, VOCAB.n_vocab)[0]
    plain = dict(enumerate(softmax(z)))
    ids, probs = Sampler(SamplingParams(**NO_FILTERS, samplers=("infill",))).probabilities(z, [])
    assert_same_distribution(dict(zip(ids.tolist(), probs.tolist())), plain, "no vocabulary")
    assert_same_distribution(step(z, ()), plain, "not named")


def test_the_request_gets_the_vocabulary_only_when_the_chain_names_infill():
    model = type("M", (), {"tokenizer": VOCAB})()
    for samplers in (["top_k", "top_p", "infill"], "kpi", ["INFILL"]):
        p = sampling_params({"samplers": samplers}, openai=False, model=model)
        assert p.infill_vocab is not None and p.infill_vocab.end_id == EOT
        assert p.infill_vocab.piece(EOT) == b"" and p.infill_vocab.piece(AB) == b"ab"
    for body in ({}, {"samplers": ["top_k"]}, {"samplers": "kpi", "mirostat": 2}):
        assert sampling_params(body, openai=False, model=model).infill_vocab is None
