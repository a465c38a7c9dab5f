"""DRY and adaptive-p (runtime/sampling.py), llama.cpp's edge values of the other samplers
(typical_p 0, a negative dynatemp_exponent, temperature 0 with a dynamic range, negative
Mirostat settings), and the request fields that set them (runtime/api.py).

Each is checked against a slow reference written here from llama.cpp's definition, loop
by loop, never against runtime.sampling's helpers; DRY also against llama.cpp's own test
cases (tests/test-sampling.cpp's test_dry).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from runtime.api import ApiError, sampling_params
from runtime.dry import (DRY_SEQUENCE_BREAKERS, DryBreakers, apply_dry, dry_breakers_from_text,
                         dry_penalties)
from runtime.sampling import Sampler, SamplingParams
from tests.runtime.test_samplers_more import NO_FILTERS, draws, kept, kept_probs, logit_rows, softmax

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "tiny-llama-q8_0.gguf"


# ---- DRY: the reference --------------------------------------------------------------

def dry_reference(history, multiplier, base, allowed, last_n, breakers=()) -> dict:
    """llama.cpp's DRY from its definition: {token: penalty}. breakers: token sequences
    (head, then tail)."""
    window = list(history) if last_n < 0 else list(history)[len(history) - min(last_n, len(history)):]
    n = len(window)
    if multiplier == 0 or last_n == 0 or n <= allowed:
        return {}
    # a repeat may only span the tokens after the latest complete breaker (by its head)
    limit = n
    for i in range(n):                       # i tokens before the end
        pos = n - 1 - i
        tails = [len(b) - 1 for b in breakers
                 if b[0] == window[pos] and len(b) - 1 <= i and window[pos + 1:pos + len(b)] == list(b[1:])]
        if tails:
            limit = i - max(tails)
            break
    if limit < allowed:
        return {}
    longest = {}
    for j in range(n - 1):                   # a repeat of the window's end, ending at j
        m = 0
        while m <= j and window[j - m] == window[n - 1 - m]:
            m += 1
        m = min(m, limit)
        if m >= allowed:
            nxt = window[j + 1]
            longest[nxt] = max(longest.get(nxt, m), m)
    singles = {b[0] for b in breakers if len(b) == 1}
    cap = int(88.7228391 / math.log(base)) if base > 1.000001 else 0
    out = {}
    for tok, m in longest.items():
        if tok in singles:
            continue
        e = m - allowed
        if cap > 0:
            e = min(e, cap)
        out[tok] = multiplier * base ** e
    return out


def dry_params(multiplier=0.8, base=1.75, allowed=2, last_n=-1, breakers=()):
    return SamplingParams(dry_multiplier=multiplier, dry_base=base, dry_allowed_length=allowed,
                          dry_penalty_last_n=last_n,
                          dry_breakers=DryBreakers.from_token_sequences(breakers) if breakers else None)


def got_penalties(history, **kw) -> dict:
    ids, pen = dry_penalties(history, dry_params(**kw))
    return dict(zip(ids.tolist(), pen.tolist()))


def assert_same(got: dict, ref: dict, what):
    assert sorted(got) == sorted(ref), what
    for t in ref:
        assert got[t] == pytest.approx(ref[t], rel=1e-12), (what, t)


# ---- DRY: llama.cpp's own cases ------------------------------------------------------

# (probabilities, history, expected probabilities, multiplier, base, allowed, last_n,
# breakers), as tests/test-sampling.cpp runs them: logits log p, DRY, then the softmax.
LLAMA_CPP_DRY = [
    ([0.25] * 4, [0, 1], [0.25] * 4, 1.0, 1.1, 2, 4, []),
    ([0.25] * 4, [0, 1, 2, 0, 1], [0.296923, 0.296923, 0.109232, 0.296923], 1.0, 1.1, 2, 5, []),
    ([0.2] * 5, [0, 1, 3, 4, 0, 1], [0.2] * 5, 1.0, 1.1, 2, 6, [[3]]),
    ([0.2] * 5, [0, 1, 2, 0, 1], [0.241818, 0.241818, 0.032727, 0.241818, 0.241818], 2.0, 1.1, 2, 5, []),
    ([0.2] * 5, [0, 1, 2, 3, 4, 0, 1], [0.2] * 5, 1.0, 1.1, 4, 7, []),
]


@pytest.mark.parametrize("case", range(len(LLAMA_CPP_DRY)))
def test_dry_gives_llama_cpps_own_test_results(case):
    probs, hist, want, mult, base, allowed, last_n, breakers = LLAMA_CPP_DRY[case]
    z = np.log(np.array(probs, dtype=np.float32))
    out = apply_dry(z, hist, dry_params(mult, base, allowed, last_n, breakers))
    assert np.allclose(softmax(out), want, atol=1e-6)


# ---- DRY: against the reference ------------------------------------------------------

def repetitive_histories(seed: int, n: int) -> list:
    """Histories over a few tokens, with copied stretches: long and short repeats."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h = rng.integers(0, 6, rng.integers(1, 40)).tolist()
        for _ in range(rng.integers(0, 4)):
            a = int(rng.integers(0, len(h)))
            h += h[a:a + int(rng.integers(1, 15))]
        out.append(h)
    return out


BREAKER_SETS = [(), ([5],), ([4, 5],), ([3], [4, 5, 1]), ([4, 5], [4])]


@pytest.mark.parametrize("allowed", [-1, 0, 1, 2, 3])
@pytest.mark.parametrize("last_n", [-1, 0, 1, 7, 25])
def test_dry_matches_the_reference(allowed, last_n):
    for k, hist in enumerate(repetitive_histories(100 + allowed * 10 + last_n, 60)):
        for breakers in BREAKER_SETS:
            for mult, base in ((0.8, 1.75), (-0.5, 1.0), (2.0, 3.0)):
                ref = dry_reference(hist, mult, base, allowed, last_n, breakers)
                got = got_penalties(hist, multiplier=mult, base=base, allowed=allowed,
                                    last_n=last_n, breakers=breakers)
                assert_same(got, ref, (k, breakers, mult, base))


def test_dry_long_and_periodic_histories_match_the_reference():
    """Repeats thousands of tokens long and with a period of one to a few tokens: the
    rounds of block comparisons, and the Z-algorithm that takes over for short periods,
    give the same lengths as a token-by-token count."""
    rng = np.random.default_rng(7)
    block = rng.integers(0, 300, 120).tolist()
    cases = [[9] * 1500, [1, 2] * 700, [1, 2, 3] * 500 + [1], (block * 12)[:1400],
             rng.integers(0, 40, 1500).tolist(), block * 3 + [7, 7, 7] + block]
    for k, hist in enumerate(cases):
        for breakers in ((), ([7],), ([2, 3],)):
            ref = dry_reference(hist, 0.8, 1.75, 2, -1, breakers)
            assert_same(got_penalties(hist, breakers=breakers), ref, k)
            assert ref or breakers                     # the cases do repeat


# Each of DRY's rules, on a history where it decides the answer: break the rule in
# runtime.sampling and this fails.
def test_dry_rules_each_matter():
    # the penalty: multiplier * base ** (length - allowed); the longest repeat counts
    # ("1 2 3" repeats, with "3" after it once as "1 2 3 4" and once after "2 3" as "5")
    h = [1, 2, 3, 4, 9, 2, 3, 5, 9, 1, 2, 3]
    assert got_penalties(h) == pytest.approx({4: 0.8 * 1.75 ** 1, 5: 0.8})
    # at allowed_length exactly, penalized; one shorter, not
    assert got_penalties([1, 2, 8, 1, 2], allowed=2) == pytest.approx({8: 0.8})
    assert got_penalties([1, 2, 8, 1, 2], allowed=3) == {}
    # the window: dry_penalty_last_n tokens back, no further
    assert got_penalties([1, 2, 8, 0, 0, 1, 2], last_n=5) == {}
    assert got_penalties([1, 2, 8, 0, 0, 1, 2], last_n=7) == pytest.approx({8: 0.8})
    # a breaker cuts the repeat: only the tokens after it count
    h = [1, 2, 3, 8, 6, 2, 3]
    assert got_penalties(h, breakers=([6],), allowed=2) == pytest.approx({8: 0.8})
    h = [1, 2, 3, 8, 1, 6, 2, 3]
    assert got_penalties(h, allowed=2) == pytest.approx({8: 0.8})
    assert got_penalties(h, allowed=3, breakers=()) == {}
    h = [1, 2, 3, 8, 1, 2, 3]                        # "2 3" after the breaker: length 2
    assert got_penalties(h, allowed=2, breakers=([1],)) == pytest.approx({8: 0.8})  # "2 3" only
    assert got_penalties(h, allowed=2) == pytest.approx({8: 0.8 * 1.75})
    # a breaker of several tokens cuts only when all of them are there
    h = [1, 2, 3, 8, 1, 2, 3]
    assert got_penalties(h, breakers=([2, 3, 4],)) == pytest.approx({8: 0.8 * 1.75})
    assert got_penalties(h, breakers=([1, 2],)) == {}          # "1 2" then "3": limit 1
    # a token that is a breaker by itself is never penalized; one heading a longer
    # breaker is
    h = [1, 2, 6, 1, 2]
    assert got_penalties(h, breakers=([6],)) == {}
    assert got_penalties(h, breakers=([6, 7],)) == pytest.approx({6: 0.8})
    # the exponent is capped so that base ** exponent stays a float32
    h = [1] * 300 + [2] + [1] * 300
    pen = got_penalties(h, base=2.0, multiplier=1.0)
    assert pen[2] == 2.0 ** int(88.7228391 / math.log(2.0))
    assert np.isfinite(np.float32(pen[2]))


def test_dry_penalized_logits_stay_finite_and_banned_tokens_stay_banned():
    z = np.zeros(4, dtype=np.float32)
    z[3] = -np.inf
    h = [0, 1, 2, 3] * 60 + [0, 1]
    out = apply_dry(z, h, dry_params(multiplier=1e30, base=1e10, allowed=0))
    assert out[2] == -np.finfo(np.float32).max and out[3] == -np.inf
    out = apply_dry(z, h, dry_params(multiplier=-1e30, base=1e10, allowed=0))
    assert out[2] == np.finfo(np.float32).max
    s = Sampler(SamplingParams(temperature=1.0, seed=1, dry_multiplier=1e30, dry_base=1e10,
                               dry_allowed_length=0, **NO_FILTERS))
    assert s.sample(z, h) in (0, 1, 2)


def test_dry_off_costs_nothing_and_sits_after_the_penalties():
    z = logit_rows(3, 1, 50)[0]
    h = [1, 2, 3, 1, 2, 3, 1, 2]
    assert apply_dry(z, h, dry_params(multiplier=0.0)) is z
    assert apply_dry(z, h, dry_params(last_n=0)) is z
    # with the repeat penalty: DRY takes its amount off the penalized logit
    s = Sampler(SamplingParams(repeat_penalty=2.0, dry_multiplier=1.0, dry_base=2.0))
    adj = s.adjusted(z, h)
    pen = z[3] / 2.0 if z[3] > 0 else z[3] * 2.0
    assert adj[3] == pytest.approx(pen - 1.0 * 2.0 ** 3, rel=1e-6)
    # greedy takes the DRY-penalized argmax; Mirostat goes without DRY
    z2 = np.zeros(10, dtype=np.float32)
    z2[3] = 5.0
    assert Sampler(SamplingParams(temperature=0, dry_multiplier=10.0)).sample(z2, h) != 3
    assert Sampler(SamplingParams(temperature=0, mirostat=2, dry_multiplier=10.0)).sample(z2, h) == 3


# ---- DRY: breakers from text ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_tok():
    from runtime.model import Model
    return Model.load(TINY, vocab_only=True).tokenizer


def breaker_reference(tok, text: str) -> set:
    """llama.cpp's get_overlapping_token_sequences, from its definition: every token
    whose text holds the breaker; every token whose text ends with a proper prefix of
    it, followed by the tokens of the rest (at most 20)."""
    b = text.encode("utf-8")[:40]
    out = set()
    for t in range(tok.n_vocab):
        piece = tok.token_to_piece(t, special=True)
        if tok.add_space_prefix and piece.startswith(b" "):
            piece = piece[1:]
        if b in piece:
            out.add((t,))
            continue
        for k in range(1, len(b)):
            if piece.endswith(b[:k]):
                rest = b[k:].decode("utf-8", errors="replace")
                out.add((t,) + tuple(tok.tokenize(rest, add_special=False)[:20]))
    return out


def as_sequences(br: DryBreakers) -> set:
    return {(h,) + tail for h, tails in br.tails.items() for tail in tails}


@pytest.mark.parametrize("texts", [DRY_SEQUENCE_BREAKERS, ("\n\n",), ("Once upon",),
                                   ("é:", "", "x" * 60)])
def test_breakers_from_text_are_llama_cpps_token_sequences(tiny_tok, texts):
    ref = set().union(*(breaker_reference(tiny_tok, t) for t in texts if t))
    got = as_sequences(dry_breakers_from_text(tiny_tok, texts))
    assert got == ref and got
    assert any(len(s) > 1 for s in got) == any(len(t.encode()) > 1 for t in texts)


# ---- adaptive-p ----------------------------------------------------------------------

def adaptive_reference(probs, target, total, weight) -> list:
    """llama.cpp's adaptive-p transform of the candidates' probabilities."""
    t = min(max(target, 0.0), 1.0)
    t = min(max(t if weight == 0 else 2 * t - total / weight, 0.0), 1.0)
    logits = []
    for p in probs:
        d = abs(p - t) / 0.3
        logits.append(5.0 - 10.0 * d * d / (1.0 + d))
    return softmax(logits)


@pytest.mark.parametrize("target, decay", [(0.1, 0.9), (0.5, 0.0), (0.9, 0.99), (1.5, 3.0),
                                           (0.3, -1.0)])
def test_adaptive_p_reshapes_and_follows_its_average(target, decay):
    s = Sampler(SamplingParams(temperature=0.8, top_k=20, top_p=1.0, min_p=0.0,
                               adaptive_target=target, adaptive_decay=decay, seed=9))
    d = min(max(decay, 0.0), 0.99)
    total, weight = target / (1 - d), 1 / (1 - d)     # started where the average is the target
    plain = Sampler(SamplingParams(temperature=0.8, top_k=20, top_p=1.0, min_p=0.0))
    for step, z in enumerate(logit_rows(40, 25, 300)):
        ids, before = plain.probabilities(z, [])
        want = adaptive_reference(before, target, total, weight)
        got_ids, got = s.probabilities(z, [])
        assert np.array_equal(got_ids, ids) and np.allclose(got, want, rtol=1e-9), step
        tok = s.sample(z, [])
        p_tok = float(before[list(ids).index(tok)])
        total, weight = p_tok + d * total, 1 + d * weight
        assert s.adaptive_sum == pytest.approx(total) and s.adaptive_weight == pytest.approx(weight)


def test_adaptive_p_draws_tokens_near_its_target_on_average():
    """What adaptive-p is for: the drawn tokens' probabilities (after min-p, the mild
    truncation llama.cpp recommends before it) average near the target, below or above
    what the plain draw gives (0.32 here)."""
    rows = logit_rows(41, 400, 200, scale=3.0)
    base = dict(temperature=1.0, seed=4, top_k=0, top_p=1.0, min_p=0.05)

    def mean_p(params):
        s, plain, out = Sampler(params), Sampler(SamplingParams(**base)), []
        for z in rows:
            ids, probs = plain.probabilities(z, [])
            out.append(float(probs[list(ids).index(s.sample(z, []))]))
        return sum(out) / len(out)

    plain = mean_p(SamplingParams(**base))
    low, high = (mean_p(SamplingParams(adaptive_target=t, **base)) for t in (0.1, 0.5))
    assert low == pytest.approx(0.1, abs=0.03) and high == pytest.approx(0.5, abs=0.06)
    assert low < plain - 0.1 and high > plain + 0.1
    # off below 0, and under Mirostat (llama.cpp's Mirostat chain has no adaptive-p)
    assert draws(SamplingParams(adaptive_target=-0.5, **base), rows[:30]) == \
        draws(SamplingParams(**base), rows[:30])
    m = dict(temperature=1.0, mirostat=2, seed=4)
    assert draws(SamplingParams(adaptive_target=0.3, **m), rows[:30]) == draws(SamplingParams(**m), rows[:30])


def test_adaptive_p_leaves_banned_tokens_out_and_greedy_greedy():
    z = np.array([2.0, 1.0, -np.inf, 0.5], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=1.0, adaptive_target=0.0, **NO_FILTERS))
    assert kept(s, z) == {0, 1, 3}
    g = Sampler(SamplingParams(temperature=0, adaptive_target=0.0))
    assert all(g.sample(z, []) == 0 for _ in range(5))


# ---- llama.cpp's edge values ---------------------------------------------------------

def typical_order(z) -> list:
    probs = softmax(z)
    h = -sum(q * math.log(q) for q in probs if q > 0)
    return sorted(range(len(z)), key=lambda i: (abs(-math.log(probs[i]) - h), -probs[i]))


@pytest.mark.parametrize("p", [0.0, -0.5])
@pytest.mark.parametrize("min_keep", [0, 1, 3])
def test_typical_p_zero_keeps_the_min_keep_most_typical_tokens(p, min_keep):
    """llama.cpp's typical sampler stops at the first token whose mass passes p, once it
    has min_keep: at p 0 (or below) that is the most typical token, or min_keep of them."""
    for z in logit_rows(50, 6, 40):
        s = Sampler(SamplingParams(temperature=1.0, typical_p=p, min_keep=min_keep, **NO_FILTERS))
        assert kept(s, z) == set(typical_order(z)[:max(1, min_keep)])


def dynatemp_reference(z, temp, delta, exponent) -> list:
    """llama.cpp's temp-ext: the temperature lo + (hi - lo) * (H / log n) ** exponent,
    lo = max(0, temp - delta), hi = temp + delta; at 0 or below, the best token alone."""
    probs = softmax(z)
    h = -sum(q * math.log(q) for q in probs if q > 0)
    lo, hi = max(0.0, temp - delta), temp + delta
    ratio = h / math.log(len(z))
    t = math.inf if ratio == 0 and exponent < 0 else lo + (hi - lo) * ratio ** exponent
    if t <= 0:
        return [1.0 if i == int(np.argmax(z)) else 0.0 for i in range(len(z))]
    if math.isinf(t):
        return [1 / len(z)] * len(z)
    return softmax([float(x) / t for x in z])


@pytest.mark.parametrize("temp, delta, exponent", [(0.0, 0.5, 1.0), (0.0, 2.0, 0.5),
                                                   (1.0, 0.5, -1.0), (0.2, 0.5, -2.5)])
def test_dynatemp_at_temperature_zero_and_with_a_negative_exponent(temp, delta, exponent):
    for z in logit_rows(51, 6, 30, scale=2.0):
        s = Sampler(SamplingParams(temperature=temp, dynatemp_range=delta,
                                   dynatemp_exponent=exponent, **NO_FILTERS))
        got = kept_probs(s, z)
        want = dynatemp_reference(z, temp, delta, exponent)
        assert np.allclose([got.get(i, 0.0) for i in range(len(z))], want, rtol=1e-9, atol=1e-15)
    # a sure model (entropy 0) with a negative exponent: every candidate alike
    sure = np.array([0.0, -1000.0, -1000.0], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=1.0, dynatemp_range=0.5, dynatemp_exponent=-1.0,
                               **NO_FILTERS))
    assert np.allclose(sorted(kept_probs(s, sure).values()), [1 / 3] * 3)


def test_temperature_zero_with_a_dynamic_range_samples():
    """llama.cpp samples there (temp-ext at [0, range]); greedy it is without the range,
    or under Mirostat, whose chain has a plain temperature."""
    assert not SamplingParams(temperature=0, dynatemp_range=0.5).greedy
    assert SamplingParams(temperature=0).greedy
    assert SamplingParams(temperature=0, dynatemp_range=0.5, mirostat=2).greedy
    rows = logit_rows(52, 40, 50, scale=1.0)
    hot = draws(SamplingParams(temperature=0, dynatemp_range=1.5, seed=3, **NO_FILTERS), rows)
    assert hot != draws(SamplingParams(temperature=0, **NO_FILTERS), rows)
    # a dynamic temperature that comes out at 0 is llama.cpp's greedy: one token, even tied
    tied = np.array([1.0, 1.0, 0.0], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=0, dynatemp_range=1.0, dynatemp_exponent=1e6,
                               **NO_FILTERS))
    assert len(kept(s, tied)) == 1


@pytest.mark.parametrize("tau, eta", [(-2.0, 0.1), (3.0, -0.5), (-1.0, -1.0)])
def test_mirostat_takes_negative_tau_and_eta(tau, eta):
    """llama-server takes any tau and eta; mu = 2 tau then moves by -eta (surprise - tau)."""
    for version in (1, 2):
        s = Sampler(SamplingParams(temperature=1.0, mirostat=version, mirostat_tau=tau,
                                   mirostat_eta=eta, seed=2))
        assert s.mu == 2 * tau
        for z in logit_rows(53, 15, 100):
            mu = s.mu
            ids, probs = s.probabilities(z, [])
            if mu < 0:       # no token is surprising by less than a negative mu
                assert ids.tolist() == [int(np.argmax(z))]
            tok = s.sample(z, [])
            q = float(probs[list(ids).index(tok)])
            assert s.mu == pytest.approx(mu - eta * (-math.log2(q) - tau))


# ---- the request fields --------------------------------------------------------------

class CountingTokenizer:
    """A stand-in tokenizer that counts how often its texts are read."""

    def __init__(self, tok):
        self.tok, self.reads = tok, 0
        self.n_vocab, self.add_space_prefix, self.clean_spaces = tok.n_vocab, tok.add_space_prefix, tok.clean_spaces

    def token_to_piece(self, t, special=False):
        self.reads += 1
        return self.tok.token_to_piece(t, special=special)

    def tokenize(self, *a, **kw):
        return self.tok.tokenize(*a, **kw)


def test_request_fields_reach_the_sampler(tiny_tok):
    body = {"dry_multiplier": 0.8, "dry_base": 2.5, "dry_allowed_length": 3,
            "dry_penalty_last_n": 64, "adaptive_target": 0.4, "adaptive_decay": 0.5,
            "typical_p": 0, "dynatemp_exponent": -1.5, "mirostat_tau": -1, "mirostat_eta": -0.2}
    model = type("M", (), {"tokenizer": tiny_tok})()
    for openai in (True, False):
        p = sampling_params(dict(body, temperature=0, dynatemp_range=0.5), openai=openai, model=model)
        assert {k: getattr(p, k) for k in body} == body and not p.greedy
        assert as_sequences(p.dry_breakers) == as_sequences(
            dry_breakers_from_text(tiny_tok, DRY_SEQUENCE_BREAKERS))
    p = sampling_params({"dry_multiplier": 1, "dry_sequence_breakers": ["Once"]}, openai=True, model=model)
    assert as_sequences(p.dry_breakers) == breaker_reference(tiny_tok, "Once")
    # llama-server: a base below 1 is its default; absent, everything is off
    assert sampling_params({"dry_base": 0.5}, openai=True).dry_base == 1.75
    d = sampling_params({}, openai=True)
    assert (d.dry_multiplier, d.dry_base, d.dry_allowed_length, d.dry_penalty_last_n,
            d.adaptive_target, d.adaptive_decay) == (0.0, 1.75, 2, -1, -1.0, 0.9)
    # DRY off (multiplier 0, or a window of 0): its breakers are never tokenized
    counting = type("M", (), {"tokenizer": CountingTokenizer(tiny_tok)})()
    for off in ({}, {"dry_multiplier": 0, "dry_sequence_breakers": ["zq"]},
                {"dry_multiplier": 1, "dry_penalty_last_n": 0, "dry_sequence_breakers": ["zq"]}):
        assert sampling_params(off, openai=True, model=counting).dry_breakers is None
    assert counting.tokenizer.reads == 0


@pytest.mark.parametrize("field, value, needle", [
    ("dry_multiplier", "x", "number"), ("dry_base", [1], "number"),
    ("dry_allowed_length", 1.5, "integer"), ("dry_penalty_last_n", -2, "between -1"),
    ("dry_penalty_last_n", 2**40, "between -1"), ("dry_sequence_breakers", [], "non-empty list"),
    ("dry_sequence_breakers", "\n", "non-empty list"), ("dry_sequence_breakers", ["a", 1], "non-empty list"),
    ("dry_sequence_breakers", ["a"] * 65, "at most 64"), ("adaptive_target", "0.5", "number"),
    ("adaptive_decay", True, "number"), ("typical_p", "x", "number"),
    ("dynatemp_exponent", "1", "number")])
def test_bad_dry_and_adaptive_fields_are_400s_naming_the_field(field, value, needle):
    with pytest.raises(ApiError) as e:
        sampling_params({"dry_multiplier": 1, field: value}, openai=False)
    assert e.value.status == 400
    assert f"'{field}'" in e.value.message and needle in e.value.message, e.value.message
