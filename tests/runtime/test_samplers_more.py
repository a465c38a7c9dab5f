"""llama.cpp's samplers past top-k, top-p and min-p (runtime/sampling.py): typical-p,
min_keep, Mirostat v1 and v2, dynamic temperature, top-n-sigma and XTC, and the request
fields that set them (runtime/api.py's sampler_fields).

Each sampler is checked against a slow reference written here from its definition (the
papers' and llama.cpp's), loop by loop, never against runtime.sampling's own helpers. The
default path (every new sampler off) is checked against token sequences the sampler drew
before these samplers existed.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.api import ApiError, sampling_params
from runtime.sampling import Sampler, SamplingParams

# Every filter but the one under test off, so that the reference only has to do that one.
NO_FILTERS = dict(top_k=0, top_p=1.0, min_p=0.0)


def logit_rows(seed: int, n_rows: int, n_vocab: int, scale: float = 3.0) -> list:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n_vocab) * scale).astype(np.float32) for _ in range(n_rows)]


def softmax(z) -> list:
    z = [float(x) for x in z]
    top = max(z)
    w = [math.exp(x - top) for x in z]
    total = sum(w)
    return [x / total for x in w]


def kept(sampler: Sampler, logits, history=()) -> set:
    """The tokens the sampler may draw (probability above 0) after its filters."""
    ids, probs = sampler.probabilities(logits, list(history))
    return {int(i) for i, q in zip(ids, probs) if q > 0}


def kept_probs(sampler: Sampler, logits) -> dict:
    ids, probs = sampler.probabilities(logits, [])
    return {int(i): float(q) for i, q in zip(ids, probs) if q > 0}


def draws(params: SamplingParams, rows, history=(1, 2, 3)) -> list:
    s = Sampler(params)
    hist, out = list(history), []
    for z in rows:
        tok = s.sample(z, hist)
        out.append(tok)
        hist.append(tok)
    return out


# ---- typical-p -------------------------------------------------------------------------

def typical_reference(logits, p: float, min_keep: int = 0) -> set:
    """Meister et al.'s locally typical set: rank the tokens by |-log p - H|, closest
    first (ties: likelier first), keep them until their mass exceeds p, and at least
    min_keep of them."""
    probs = softmax(logits)
    entropy = -sum(q * math.log(q) for q in probs if q > 0)
    order = sorted(range(len(probs)),
                   key=lambda i: (abs(-math.log(probs[i]) - entropy), -probs[i]))
    out, mass = set(), 0.0
    for i in order:
        out.add(i)
        mass += probs[i]
        if mass > p and len(out) >= min_keep:
            break
    return out


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.9, 0.99])
def test_typical_p_keeps_the_most_typical_tokens_up_to_its_mass(p):
    for row, z in enumerate(logit_rows(11, 12, 60)):
        s = Sampler(SamplingParams(temperature=1.0, typical_p=p, seed=0, **NO_FILTERS))
        assert kept(s, z) == typical_reference(z, p), (p, row)


def test_typical_p_is_not_just_the_likeliest_tokens():
    """One token of probability 0.3 among 1000 of 0.0007: the entropy is 5.5 nats, the
    best token's surprise 1.2 and the others' 7.3, so the typical set is made of the
    others and leaves the best token out, which no top-p or min-p cut can do."""
    z = np.array([math.log(0.3 * 1000 / 0.7)] + [0.0] * 1000, dtype=np.float32)
    s = Sampler(SamplingParams(temperature=1.0, typical_p=0.2, seed=0, **NO_FILTERS))
    got = kept(s, z)
    assert got == typical_reference(z, 0.2) and 0 not in got


def test_typical_p_keeps_tokens_until_their_mass_exceeds_p():
    """llama.cpp's rule: typical-p stops once past p, where top-p stops on reaching it.
    Four equally likely tokens (masses 0.25, 0.5, 0.75, 1, all exact) and p = 0.5."""
    z = np.zeros(4, dtype=np.float32)
    assert len(kept(Sampler(SamplingParams(typical_p=0.5, **NO_FILTERS)), z)) == 3
    assert len(kept(Sampler(SamplingParams(top_k=0, top_p=0.5, min_p=0.0)), z)) == 2


def test_typical_p_one_is_off_and_its_probabilities_are_renormalised():
    z = logit_rows(3, 1, 40)[0]
    off = Sampler(SamplingParams(temperature=0.7, typical_p=1.0, **NO_FILTERS))
    plain = Sampler(SamplingParams(temperature=0.7, **NO_FILTERS))
    assert np.array_equal(off.probabilities(z, [])[1], plain.probabilities(z, [])[1])
    on = Sampler(SamplingParams(temperature=0.7, typical_p=0.5, **NO_FILTERS))
    keep = typical_reference(z, 0.5)
    ref = softmax([z[i] / 0.7 for i in sorted(keep)])
    got = kept_probs(on, z)
    assert sorted(got) == sorted(keep)
    assert np.allclose([got[i] for i in sorted(keep)], ref, rtol=1e-9)


def test_typical_p_runs_after_top_k():
    """llama.cpp's order: top-k first, and typical-p over the k survivors' distribution."""
    z = logit_rows(5, 1, 80)[0]
    best10 = np.argsort(-z, kind="stable")[:10]
    s = Sampler(SamplingParams(temperature=1.0, typical_p=0.6, top_k=10, top_p=1.0, min_p=0.0))
    ref = {int(best10[i]) for i in typical_reference(z[best10], 0.6)}
    assert kept(s, z) == ref


# ---- min_keep --------------------------------------------------------------------------

def best(z, n: int) -> set:
    return {int(i) for i in np.argsort(-z, kind="stable")[:n]}


@pytest.mark.parametrize("min_keep", [0, 1, 3, 7])
def test_min_keep_holds_for_each_filter(min_keep):
    z = logit_rows(21, 1, 50)[0]
    z[7] = z.max() + 6.0          # a clear favourite: every filter alone would keep only it
    floor = max(min_keep, 1)
    for name, kw in [("top_p", dict(top_k=0, top_p=0.01, min_p=0.0)),
                     ("min_p", dict(top_k=0, top_p=1.0, min_p=0.99))]:
        s = Sampler(SamplingParams(temperature=1.0, min_keep=min_keep, **kw))
        assert kept(s, z) == best(z, floor), name
    s = Sampler(SamplingParams(temperature=1.0, typical_p=1e-4, min_keep=min_keep, **NO_FILTERS))
    assert kept(s, z) == typical_reference(z, 1e-4, min_keep) and len(kept(s, z)) == floor
    # min_keep never adds tokens a filter keeps anyway
    s = Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=0.999999, min_p=0.0,
                               min_keep=min_keep))
    assert len(kept(s, z)) > 7


def test_min_keep_stops_xtc_from_leaving_too_few():
    z = np.log(np.array([0.4, 0.3, 0.2, 0.05, 0.05])).astype(np.float32)
    fires = dict(temperature=1.0, xtc_probability=1.0, xtc_threshold=0.15, **NO_FILTERS)
    assert kept(Sampler(SamplingParams(min_keep=3, **fires)), z) == {2, 3, 4}
    assert kept(Sampler(SamplingParams(min_keep=4, **fires)), z) == {0, 1, 2, 3, 4}


def test_min_keep_beyond_the_candidates_keeps_them_all():
    z = logit_rows(4, 1, 30)[0]
    s = Sampler(SamplingParams(temperature=1.0, top_k=5, top_p=0.01, min_p=0.9, min_keep=50))
    assert kept(s, z) == best(z, 5)   # top-k keeps k, as in llama.cpp: min_keep is no top-k


# ---- Mirostat --------------------------------------------------------------------------

def test_mirostat_2_never_draws_a_token_more_surprising_than_mu_and_mu_follows_eta():
    tau, eta, temp = 4.0, 0.3, 0.9
    s = Sampler(SamplingParams(temperature=temp, mirostat=2, mirostat_tau=tau,
                               mirostat_eta=eta, seed=42))
    assert s.mu == 2 * tau
    hist, moved_down, moved_up = [], 0, 0
    for step, z in enumerate(logit_rows(8, 60, 200, scale=2.5)):
        mu = s.mu
        probs = softmax(np.asarray(z, dtype=np.float64) / temp)
        surprise = [-math.log2(q) if q > 0 else math.inf for q in probs]
        allowed = {i for i, b in enumerate(surprise) if b <= mu}
        if not allowed:                               # none that sure: the best alone
            allowed = {int(np.argmax(z))}
        assert kept(s, z) == allowed, step
        tok = s.sample(z, hist)
        assert tok in allowed, step
        p_drawn = probs[tok] / sum(probs[i] for i in allowed)
        assert s.mu == pytest.approx(mu - eta * (-math.log2(p_drawn) - tau), abs=1e-9)
        moved_down += s.mu < mu
        moved_up += s.mu > mu
        hist.append(tok)
    assert moved_down and moved_up   # the bound was exercised both ways


def mirostat_1_reference_k(z, temp: float, mu: float, m: int = 100) -> int:
    """Basu et al.'s algorithm 1, as llama-server runs it: the Zipf exponent s fitted by
    least squares over the m likeliest tokens, then k = (e 2^mu / (1 - N^-e))^(1/s)."""
    n_vocab = len(z)
    probs = sorted(softmax(np.asarray(z, dtype=np.float64) / temp), reverse=True)
    num = den = 0.0
    for i in range(min(m, n_vocab) - 1):
        t = math.log((i + 2) / (i + 1))
        b = math.log(probs[i] / probs[i + 1])
        num += t * b
        den += t * t
    s = num / den
    e = s - 1
    k = ((e * 2 ** mu) / (1 - n_vocab ** (-e))) ** (1 / s)
    return min(max(int(k), 1), n_vocab)


def zipf_rows(seed: int, n_rows: int, n_vocab: int) -> list:
    """Logits of Zipf-like distributions (probability ~ rank^-s), shuffled, with noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_rows):
        s = rng.uniform(0.7, 1.6)
        z = -s * np.log(np.arange(1, n_vocab + 1)) + rng.normal(0, 0.05, n_vocab)
        out.append(rng.permutation(z).astype(np.float32))
    return out


def test_mirostat_1_keeps_the_top_k_of_its_estimate_and_moves_mu():
    tau, eta, temp = 5.0, 0.2, 1.0
    s = Sampler(SamplingParams(temperature=temp, mirostat=1, mirostat_tau=tau,
                               mirostat_eta=eta, seed=7))
    sizes = set()
    for step, z in enumerate(zipf_rows(9, 40, 2000)):
        mu = s.mu
        k = mirostat_1_reference_k(z, temp, mu)
        assert kept(s, z) == best(z, k), (step, k)
        sizes.add(k)
        tok = s.sample(z, [])
        probs = softmax(np.asarray(z, dtype=np.float64)[sorted(best(z, k))] / temp)
        p_drawn = dict(zip(sorted(best(z, k)), probs))[tok]
        assert s.mu == pytest.approx(mu - eta * (-math.log2(p_drawn) - tau), abs=1e-9)
    assert len(sizes) > 3            # k followed mu and the distribution


def test_mirostat_goes_without_the_penalties_and_other_filters():
    """llama-server's chain with Mirostat on: logit bias, temperature, Mirostat. The
    repeat penalty, top-k and min-p would each change what is kept here; they do not."""
    z = logit_rows(2, 1, 100)[0]
    history = [int(i) for i in np.argsort(-z)[:5]]      # the best tokens, penalized
    base = dict(temperature=1.0, mirostat=2, mirostat_tau=6.0)
    plain = Sampler(SamplingParams(**base))
    busy = Sampler(SamplingParams(repeat_penalty=3.0, presence_penalty=2.0, top_k=2,
                                  min_p=0.5, **base))
    assert kept(busy, z, history) == kept(plain, z, history)
    assert len(kept(plain, z)) > 2
    biased = Sampler(SamplingParams(logit_bias={history[0]: -math.inf}, **base))
    assert history[0] not in kept(biased, z)
    # greedy under Mirostat: the argmax of the biased logits, without the penalties
    g = Sampler(SamplingParams(temperature=0, mirostat=2, repeat_penalty=5.0))
    assert g.sample(z, history) == int(np.argmax(z))


def test_mirostat_state_is_per_sampler():
    """mu lives for one request (one Sampler): a new one starts again at 2 tau."""
    params = SamplingParams(temperature=1.0, mirostat=2, mirostat_tau=3.0, seed=5)
    rows = logit_rows(6, 20, 150)
    first = draws(params, rows)
    assert draws(params, rows) == first


# ---- dynamic temperature ---------------------------------------------------------------

def test_dynatemp_range_zero_is_plain_temperature():
    rows = logit_rows(14, 30, 300)
    for exponent in (0.5, 1.0, 3.0):
        plain = SamplingParams(temperature=0.9, seed=3)
        dyn = SamplingParams(temperature=0.9, seed=3, dynatemp_range=0.0,
                             dynatemp_exponent=exponent)
        assert draws(dyn, rows) == draws(plain, rows)
        a, b = Sampler(plain), Sampler(dyn)
        for z in rows[:5]:
            assert np.array_equal(a.probabilities(z, [])[1], b.probabilities(z, [])[1])


@pytest.mark.parametrize("temp, delta, exponent", [(1.0, 0.5, 1.0), (0.8, 0.5, 2.0),
                                                   (0.3, 1.0, 0.5)])
def test_dynatemp_maps_the_entropy_into_the_range(temp, delta, exponent):
    for z in logit_rows(15, 6, 50, scale=2.0):
        s = Sampler(SamplingParams(temperature=temp, dynatemp_range=delta,
                                   dynatemp_exponent=exponent, **NO_FILTERS))
        probs = softmax(z)
        entropy = -sum(q * math.log(q) for q in probs if q > 0)
        lo, hi = max(0.0, temp - delta), temp + delta
        t = lo + (hi - lo) * (entropy / math.log(len(z))) ** exponent
        got = kept_probs(s, z)
        ref = softmax(np.asarray(z, dtype=np.float64) / t)
        assert np.allclose([got[i] for i in range(len(z))], ref, rtol=1e-9, atol=1e-15)


def test_dynatemp_is_colder_for_a_sure_model_than_for_an_unsure_one():
    sure = np.array([6.0, 1.0, 0.5, 0.0], dtype=np.float32)
    unsure = np.array([0.2, 0.1, 0.05, 0.0], dtype=np.float32)
    dyn = dict(temperature=1.0, dynatemp_range=0.9, **NO_FILTERS)
    plain = dict(temperature=1.0, **NO_FILTERS)
    assert kept_probs(Sampler(SamplingParams(**dyn)), sure)[0] > \
        kept_probs(Sampler(SamplingParams(**plain)), sure)[0]
    assert kept_probs(Sampler(SamplingParams(**dyn)), unsure)[0] < \
        kept_probs(Sampler(SamplingParams(**plain)), unsure)[0]


# ---- top-n-sigma -----------------------------------------------------------------------

@pytest.mark.parametrize("n", [0.5, 1.0, 2.0])
def test_top_n_sigma_keeps_the_logits_within_n_deviations_of_the_best(n):
    for z in logit_rows(16, 8, 400):
        z = z.copy()
        z[[3, 9]] = -np.inf                       # banned tokens: outside the statistics
        finite = [float(x) for x in z if np.isfinite(x)]
        mean = sum(finite) / len(finite)
        std = math.sqrt(sum((x - mean) ** 2 for x in finite) / len(finite))
        ref = {i for i, x in enumerate(z) if np.isfinite(x) and x >= max(finite) - n * std}
        s = Sampler(SamplingParams(temperature=1.0, top_n_sigma=n, **NO_FILTERS))
        assert kept(s, z) == ref


def sigma_set(z, n: float) -> set:
    z = [float(x) for x in z]
    mean = sum(z) / len(z)
    std = math.sqrt(sum((x - mean) ** 2 for x in z) / len(z))
    return {i for i, x in enumerate(z) if x >= max(z) - n * std}


def test_top_n_sigma_runs_before_top_k_and_is_off_at_zero_or_below():
    """Its deviation is the whole vocabulary's (llama.cpp's order: top-n-sigma, then top-k),
    not that of the k survivors, which would cut elsewhere."""
    z = logit_rows(17, 1, 400)[0]
    for n in (1.0, 1.5):
        s = Sampler(SamplingParams(temperature=1.0, top_n_sigma=n, top_k=8, top_p=1.0,
                                   min_p=0.0))
        top8 = sorted(best(z, 8))
        after_top_k = {top8[i] for i in sigma_set(z[top8], n)}
        assert kept(s, z) == sigma_set(z, n) & best(z, 8) != after_top_k
    for off in (0.0, -1.0):
        s = Sampler(SamplingParams(temperature=1.0, top_n_sigma=off, **NO_FILTERS))
        assert len(kept(s, z)) == 400


# ---- XTC -------------------------------------------------------------------------------

def test_xtc_removes_all_but_the_least_likely_token_above_the_threshold():
    probs = np.array([0.05, 0.4, 0.1, 0.3, 0.15])
    z = np.log(probs).astype(np.float32)
    fires = dict(temperature=1.0, xtc_probability=1.0, **NO_FILTERS)
    # above 0.12: tokens 1, 3 and 4; all but the least likely of them (4) go
    assert kept(Sampler(SamplingParams(xtc_threshold=0.12, **fires)), z) == {0, 2, 4}
    # above 0.35: token 1 alone, fewer than two: nothing goes
    assert kept(Sampler(SamplingParams(xtc_threshold=0.35, **fires)), z) == {0, 1, 2, 3, 4}
    # above 0.5 no two tokens can be: llama.cpp's XTC is off there
    assert kept(Sampler(SamplingParams(xtc_threshold=0.6, **fires)), z) == {0, 1, 2, 3, 4}
    # probability 0: off
    off = dict(fires, xtc_probability=0.0)
    assert kept(Sampler(SamplingParams(xtc_threshold=0.12, **off)), z) == {0, 1, 2, 3, 4}


def test_xtc_measures_probabilities_after_the_filters_before_it():
    """XTC runs after top-k (llama.cpp's order): among the best 2 of these the
    probabilities are 0.57 and 0.43, both above 0.4, so the second one alone is left."""
    z = np.log(np.array([0.4, 0.3, 0.2, 0.1])).astype(np.float32)
    s = Sampler(SamplingParams(temperature=1.0, xtc_probability=1.0, xtc_threshold=0.4,
                               top_k=2, top_p=1.0, min_p=0.0))
    assert kept(s, z) == {1}


def test_xtc_fires_with_its_probability():
    z = np.log(np.array([0.35, 0.33, 0.32])).astype(np.float32)
    s = Sampler(SamplingParams(temperature=1.0, xtc_probability=0.3, xtc_threshold=0.1,
                               seed=99, **NO_FILTERS))
    n = 2000
    fired = sum(kept(s, z) == {2} for _ in range(n))
    assert 0.22 * n < fired < 0.38 * n    # 0.3 n expected; 6 standard deviations wide


# ---- all together: seeds, the default path, greedy -------------------------------------

ALL_ON = dict(temperature=0.9, typical_p=0.9, min_keep=2, top_n_sigma=2.5,
              xtc_probability=0.5, xtc_threshold=0.05, dynatemp_range=0.4,
              dynatemp_exponent=1.5)


@pytest.mark.parametrize("extra", [ALL_ON, dict(temperature=0.8, mirostat=1),
                                   dict(temperature=0.8, mirostat=2, mirostat_eta=0.5)])
def test_seeded_sampling_repeats(extra):
    rows = logit_rows(30, 40, 500)
    first = draws(SamplingParams(seed=1234, **extra), rows)
    assert draws(SamplingParams(seed=1234, **extra), rows) == first
    assert draws(SamplingParams(seed=4321, **extra), rows) != first


# What the sampler drew before any of these samplers existed (runtime/sampling.py at the
# commit before them), for logit_rows(100, 40, 3000) and history [1, 2, 3] plus each token
# drawn: with every new sampler off, the same tokens must come.
BEFORE = [
    (dict(seed=2024),
     [823, 2444, 223, 2892, 1738, 1205, 2656, 2882, 595, 809, 500, 2436, 26, 775, 1799,
      1134, 2380, 607, 874, 383, 2447, 828, 1799, 1107, 2290, 2300, 86, 625, 62, 2096,
      1472, 1160, 1383, 2077, 1853, 1110, 293, 1143, 14, 99]),
    (dict(seed=7, temperature=1.2, top_k=0, top_p=0.9, min_p=0.02, repeat_penalty=1.3,
          presence_penalty=0.5, frequency_penalty=0.3, logit_bias={5: 4.0, 6: -math.inf}),
     [549, 1585, 11, 2776, 2586, 1379, 2656, 2226, 2261, 1916, 500, 2436, 586, 2914, 1670,
      1174, 636, 5, 2689, 2117, 559, 828, 25, 0, 454, 2300, 30, 21, 2192, 2692, 2933, 1068,
      907, 2077, 2303, 1859, 293, 1143, 891, 99]),
    (dict(temperature=0, repeat_penalty=1.5),
     [2893, 2444, 223, 2776, 2055, 1205, 2656, 1934, 595, 809, 551, 2436, 26, 703, 1799, 89,
      39, 2614, 2202, 383, 2447, 828, 1790, 0, 454, 2300, 1819, 625, 62, 2096, 43, 1160, 907,
      2077, 2362, 1859, 293, 1143, 1794, 99]),
]
# llama-server's defaults for the new samplers, which switch them off.
OFF = dict(min_keep=0, typical_p=1.0, top_n_sigma=-1.0, xtc_probability=0.0,
           xtc_threshold=0.1, dynatemp_range=0.0, dynatemp_exponent=1.0, mirostat=0,
           mirostat_tau=5.0, mirostat_eta=0.1)


@pytest.mark.parametrize("case", range(len(BEFORE)))
def test_with_the_new_samplers_off_the_same_tokens_come_as_before(case):
    params, tokens = BEFORE[case]
    rows = logit_rows(100, 40, 3000)
    assert draws(SamplingParams(**params), rows) == tokens
    # llama-server's "off" values, sent explicitly, change nothing either
    assert draws(SamplingParams(**params, **dict(OFF, min_keep=1, typical_p=1.0,
                                                 top_n_sigma=0.0, xtc_threshold=0.5)),
                 rows) == tokens


def test_greedy_ignores_the_sampling_filters():
    """temperature 0 is the argmax of the biased, penalized logits, whatever the filters
    that keep the best token (Mirostat aside, which goes without the penalties); typical-p
    and XTC, which may drop it, in tests/runtime/test_sampling_greedy_s18.py. A dynamic
    temperature range is no filter: with it, llama.cpp samples at temperature 0
    (tests/runtime/test_samplers_dry.py)."""
    rows = logit_rows(31, 20, 400)
    ref = draws(SamplingParams(temperature=0), rows)
    greedy = ALL_ON | dict(temperature=0, repeat_penalty=1.0, dynatemp_range=0.0,
                           typical_p=1.0, xtc_probability=0.0)
    assert draws(SamplingParams(**greedy), rows) == ref


# ---- the request fields ----------------------------------------------------------------

def test_request_fields_reach_the_sampler():
    body = {"typical_p": 0.8, "min_keep": 3, "top_n_sigma": 1.5, "xtc_probability": 0.4,
            "xtc_threshold": 0.2, "dynatemp_range": 0.3, "dynatemp_exponent": 2,
            "mirostat": 2, "mirostat_tau": 3.5, "mirostat_eta": 0.25}
    for openai in (True, False):
        p = sampling_params(body, openai=openai)
        assert {k: getattr(p, k) for k in body} == body
    # absent: llama-server's defaults, which are off
    p = sampling_params({}, openai=True)
    assert {k: getattr(p, k) for k in OFF} == OFF
    # what llama-server reads as off is accepted as off
    p = sampling_params({"typical_p": 1.5, "top_n_sigma": -1, "dynatemp_range": -2,
                         "xtc_probability": -1, "mirostat": 0.0}, openai=False)
    assert p.typical_p == 1.5 and p.mirostat == 0


@pytest.mark.parametrize("field, value, needle", [
    ("typical_p", "x", "number"),
    ("mirostat", 3, "0 (off), 1 or 2"), ("mirostat", -1, "0 (off), 1 or 2"),
    ("mirostat", 1.5, "integer"), ("mirostat_tau", "x", "number"),
    ("mirostat_eta", [0.1], "number"), ("xtc_threshold", 1.5, "between 0 and 1"),
    ("xtc_threshold", -0.1, "between 0 and 1"), ("xtc_probability", 1.01, "at most 1"),
    ("min_keep", -1, "between 0"), ("min_keep", 2.5, "integer"),
    ("dynatemp_exponent", "-1", "number"), ("top_n_sigma", [1], "number"),
    ("dynatemp_range", "0.5", "number")])
def test_out_of_range_sampler_fields_are_400s_naming_the_field(field, value, needle):
    with pytest.raises(ApiError) as e:
        sampling_params({field: value}, openai=True)
    assert e.value.status == 400
    assert f"'{field}'" in e.value.message and needle in e.value.message, e.value.message
