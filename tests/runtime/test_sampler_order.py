"""llama-server's `samplers` (runtime/sampling.py's SamplingParams.samplers, runtime/api.py's
get_samplers): the chain runs the named samplers in the order given, each as often as it is
named, and no other.

A chain is checked against a reference written here from each sampler's definition: the
candidates as {token: logit at the temperature so far}, each step applied in turn, then
the softmax, as llama.cpp's sampler chain does it (common/sampling.cpp). The names and
letters are llama.cpp's (common_sampler_types_from_names / _from_chars).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from runtime.api import ApiError, sampling_params
from runtime.sampling import DEFAULT_SAMPLERS, Sampler, SamplingParams
from tests.runtime.test_samplers_dry import adaptive_reference, dry_reference
from tests.runtime.test_samplers_more import (kept_probs, logit_rows, sigma_set, softmax,
                                              typical_reference)

HISTORY = [3, 7, 3, 11, 7, 3, 5, 7, 3, 11]
# every sampler on, mildly, so that each one cuts something in some order
ALL_ON = dict(temperature=0.7, top_k=12, top_p=0.9, min_p=0.04, typical_p=0.95, top_n_sigma=2.0,
              xtc_probability=1.0, xtc_threshold=0.08, min_keep=0, repeat_penalty=1.3,
              presence_penalty=0.4, frequency_penalty=0.2, repeat_last_n=64,
              dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=1, dry_penalty_last_n=-1)


# ---- the reference ---------------------------------------------------------------------

def ref_probs(c: dict) -> dict:
    ids = list(c)
    return dict(zip(ids, softmax([c[i] for i in ids])))


def best_first(c: dict) -> list:
    return sorted(c, key=lambda i: -c[i])


def ref_penalties(c: dict, p: SamplingParams) -> dict:
    recent = HISTORY[-p.repeat_last_n:]
    out = dict(c)
    for tok in set(recent) & set(c):
        x = out[tok]
        x = x / p.repeat_penalty if x > 0 else x * p.repeat_penalty
        out[tok] = x - recent.count(tok) * p.frequency_penalty - p.presence_penalty
    return out


def ref_dry(c: dict, p: SamplingParams) -> dict:
    pen = dry_reference(HISTORY, p.dry_multiplier, p.dry_base, p.dry_allowed_length,
                        p.dry_penalty_last_n)
    return {i: x - pen.get(i, 0.0) for i, x in c.items()}


def ref_top_n_sigma(c: dict, p: SamplingParams) -> dict:
    ids = list(c)
    return {ids[j]: c[ids[j]] for j in sigma_set([c[i] for i in ids], p.top_n_sigma)}


def ref_top_k(c: dict, p: SamplingParams) -> dict:
    return {i: c[i] for i in best_first(c)[:p.top_k]}


def ref_typical(c: dict, p: SamplingParams) -> dict:
    ids = list(c)
    return {ids[j]: c[ids[j]] for j in typical_reference([c[i] for i in ids], p.typical_p)}


def ref_top_p(c: dict, p: SamplingParams) -> dict:
    probs, out, mass = ref_probs(c), {}, 0.0
    for i in best_first(c):          # the likeliest tokens until their mass reaches p
        out[i] = c[i]
        mass += probs[i]
        if mass >= p.top_p:
            break
    return out


def ref_min_p(c: dict, p: SamplingParams) -> dict:
    probs = ref_probs(c)
    top = max(probs.values())
    return {i: x for i, x in c.items() if probs[i] >= p.min_p * top}


def ref_xtc(c: dict, p: SamplingParams) -> dict:
    """At probability 1: of the tokens at least threshold likely, all but the least likely
    go, when there are two or more."""
    probs = ref_probs(c)
    above = [i for i in best_first(c) if probs[i] >= p.xtc_threshold]
    return {i: x for i, x in c.items() if i not in above[:-1]}


def ref_temperature(c: dict, p: SamplingParams) -> dict:
    if p.temperature <= 0:
        top = best_first(c)[0]
        return {top: c[top]}
    return {i: x / p.temperature for i, x in c.items()}


REFERENCE = {"penalties": ref_penalties, "dry": ref_dry, "top_n_sigma": ref_top_n_sigma,
             "top_k": ref_top_k, "typ_p": ref_typical, "top_p": ref_top_p, "min_p": ref_min_p,
             "xtc": ref_xtc, "temperature": ref_temperature}


def reference_chain(z, p: SamplingParams, order) -> dict:
    """{token: probability} after the named samplers, in order ("adaptive_p" and "infill"
    are no step of the chain)."""
    c = {i: float(x) for i, x in enumerate(z)}
    for name in order:
        if name in REFERENCE:
            c = REFERENCE[name](c, p)
    return ref_probs(c)


def chain_probs(z, **kw) -> dict:
    s = Sampler(SamplingParams(**kw))
    ids, probs = s.probabilities(z, list(HISTORY))
    return {int(i): float(q) for i, q in zip(ids, probs) if q > 0}


def assert_same_distribution(got: dict, ref: dict, what):
    assert set(got) == set(ref), what
    for i in ref:
        assert got[i] == pytest.approx(ref[i], rel=1e-6, abs=1e-12), (what, i)


# ---- orders ----------------------------------------------------------------------------

LLAMA_DEFAULT = ("penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc",
                 "temperature")
ORDERS = [LLAMA_DEFAULT, LLAMA_DEFAULT[::-1], ("temperature", "top_p"), ("top_p", "temperature"),
          ("temperature", "min_p", "top_k"), ("top_k", "penalties", "dry", "temperature"),
          ("xtc", "temperature", "typ_p", "top_n_sigma"), ("min_p", "temperature", "min_p"),
          ("temperature", "temperature", "top_p"), ("top_k", "top_n_sigma", "xtc", "penalties"),
          (), ("infill", "adaptive_p")]


def rows_with_the_history_likely() -> list:
    """Random logits where the history's tokens are among the best: the penalties and DRY
    then change what the filters keep."""
    rows = logit_rows(41, 6, 300, scale=2.0)
    for z in rows:
        z[sorted(set(HISTORY))] += 3.0
    return rows


@pytest.mark.parametrize("order", ORDERS, ids=[",".join(o) or "empty" for o in ORDERS])
def test_each_order_gives_the_reference_chain(order):
    for z in rows_with_the_history_likely():
        assert_same_distribution(chain_probs(z, samplers=order, **ALL_ON),
                                 reference_chain(z, SamplingParams(**ALL_ON), order), order)


def test_temperature_before_top_p_keeps_another_set_than_after():
    """softmax([2, 1, 0, -1]) is .64, .24, .09, .03: top-p .8 keeps two tokens; at
    temperature .5 (logits [4, 2, 0, -2]) the best one alone is .87 and keeps itself."""
    z = np.array([2.0, 1.0, 0.0, -1.0], dtype=np.float32)
    kw = dict(temperature=0.5, top_k=0, top_p=0.8, min_p=0.0)
    after = chain_probs(z, samplers=("top_p", "temperature"), **kw)
    before = chain_probs(z, samplers=("temperature", "top_p"), **kw)
    assert set(after) == {0, 1} and before == {0: 1.0}
    assert_same_distribution(after, dict(zip([0, 1], softmax([4.0, 2.0]))), "top-p, then temperature")
    # the default order has the temperature last
    assert chain_probs(z, **kw) == after


def test_penalties_named_after_top_k_act_on_its_survivors_only():
    """Token 0 repeated (presence 2.5): penalized first it drops out of the top 2; after
    top-k it stays in, penalized."""
    z = np.array([3.0, 2.9, 1.0, 0.2], dtype=np.float32)
    kw = dict(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0, presence_penalty=2.5)
    first = Sampler(SamplingParams(samplers=("penalties", "top_k"), **kw)).probabilities(z, [0])
    after = Sampler(SamplingParams(samplers=("top_k", "penalties"), **kw)).probabilities(z, [0])
    assert sorted(first[0].tolist()) == [1, 2]
    assert sorted(after[0].tolist()) == [0, 1]
    assert after[1] == pytest.approx(softmax([2.9, 0.5]))


def test_a_sampler_left_out_does_not_run_and_none_at_all_is_the_plain_softmax():
    z = logit_rows(42, 1, 200)[0]
    plain = dict(enumerate(softmax(z)))
    assert_same_distribution(chain_probs(z, samplers=(), **ALL_ON), plain, "empty")
    # without the temperature in the chain, temperature 0 is no greedy choice: llama-server
    # then draws at temperature 1
    p = SamplingParams(temperature=0.0, samplers=("top_p",), top_p=1.0, min_p=0.0, top_k=0)
    assert not p.greedy and SamplingParams(temperature=0.0).greedy
    ids, probs = Sampler(p).probabilities(z, [])
    assert_same_distribution(dict(zip(ids.tolist(), probs.tolist())), plain, "no temperature")
    drawn = {Sampler(SamplingParams(**{**vars(p), "seed": s})).sample(z, []) for s in range(20)}
    assert len(drawn) > 1


def test_greedy_takes_the_best_after_the_logit_steps_before_the_temperature():
    z = np.array([3.0, 2.9, 1.0, 0.2], dtype=np.float32)
    kw = dict(temperature=0.0, presence_penalty=2.5)
    assert Sampler(SamplingParams(samplers=("top_k", "penalties", "temperature"), **kw)
                   ).sample(z, [0]) == 1
    # penalties after the temperature: llama.cpp penalizes the one token left
    assert Sampler(SamplingParams(samplers=("temperature", "penalties"), **kw)).sample(z, [0]) == 0


def test_the_default_is_llama_cpps_order_then_adaptive_p():
    assert DEFAULT_SAMPLERS == LLAMA_DEFAULT + ("adaptive_p",)
    assert SamplingParams().samplers == DEFAULT_SAMPLERS
    assert sampling_params({}, openai=False).samplers == DEFAULT_SAMPLERS


# ---- adaptive-p: the draw, run only when named ------------------------------------------

def test_adaptive_p_runs_last_wherever_it_is_named_and_not_when_left_out():
    z = logit_rows(43, 1, 100)[0]
    kw = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.1, adaptive_target=0.2)
    chain = reference_chain(z, SamplingParams(**kw), ("min_p",))
    ids = sorted(chain, key=lambda i: -chain[i])
    reshaped = adaptive_reference([chain[i] for i in ids], 0.2, 0.2 / 0.1, 1 / 0.1)
    for order in (("min_p", "adaptive_p"), ("adaptive_p", "min_p"), ("adaptive_p", "min_p", "adaptive_p")):
        assert_same_distribution(kept_probs(Sampler(SamplingParams(samplers=order, **kw)), z),
                                 dict(zip(ids, reshaped)), order)
    assert_same_distribution(kept_probs(Sampler(SamplingParams(samplers=("min_p",), **kw)), z),
                             chain, "left out")
    # without `samplers`, adaptive_target alone switches it on (our default, as before)
    assert SamplingParams(adaptive_target=0.2).adaptive_on
    assert not SamplingParams(adaptive_target=0.2, samplers=("min_p",)).adaptive_on


def test_dry_left_out_is_off_and_mirostat_ignores_the_order():
    assert SamplingParams(dry_multiplier=0.8).dry_on
    assert not SamplingParams(dry_multiplier=0.8, samplers=("top_k", "temperature")).dry_on
    rows = logit_rows(44, 8, 300)
    for kw in (dict(mirostat=2, mirostat_tau=3.0), dict(mirostat=1)):
        runs = []
        for order in (DEFAULT_SAMPLERS, (), ("top_k",)):
            s = Sampler(SamplingParams(seed=5, temperature=0.9, samplers=order, **kw))
            runs.append([s.sample(z, []) for z in rows])
        assert runs[0] == runs[1] == runs[2]


# ---- names and letters (runtime/api.py) -----------------------------------------------

def samplers_of(value):
    return sampling_params({"samplers": value}, openai=False).samplers


NAMES = ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc",
         "temperature", "infill", "adaptive_p"]


def test_the_letters_are_the_names():
    assert samplers_of("edskypmxtia") == tuple(NAMES)
    assert samplers_of("edskypmxt") == LLAMA_DEFAULT
    assert samplers_of("tpk") == samplers_of(["temperature", "top_p", "top_k"])
    # letters llama-server does not know are skipped; they are case-sensitive
    assert samplers_of("k?zT m") == ("top_k", "min_p")
    assert samplers_of("") == ()


@pytest.mark.parametrize("alias, name", [
    ("top-k", "top_k"), ("TopK", "top_k"), ("TOP_P", "top_p"), ("nucleus", "top_p"),
    ("topp", "top_p"), ("top-n-sigma", "top_n_sigma"), ("topnsigma", "top_n_sigma"),
    ("typ", "typ_p"), ("typ-p", "typ_p"), ("typp", "typ_p"), ("Min-P", "min_p"),
    ("minp", "min_p"), ("temp", "temperature"), ("Temperature", "temperature"),
    ("XTC", "xtc"), ("adaptive-p", "adaptive_p"), ("adaptivep", "adaptive_p"),
    ("Penalties", "penalties"), ("DRY", "dry"), ("infill", "infill")])
def test_llama_servers_aliases(alias, name):
    assert samplers_of([alias]) == (name,)


def test_unknown_names_are_skipped_and_repeats_run_again():
    """llama-server logs a name it does not know and goes on without it: "typical_p" and
    "tfs_z" (names of older llama.cpp) among them."""
    got = samplers_of(["top_k", "typical_p", "tfs_z", "bogus", "", "top_\u212a", "min_p",
                       "top_k"])
    assert got == ("top_k", "min_p", "top_k")
    assert samplers_of(["bogus"]) == samplers_of([]) == ()


def test_sending_the_default_order_is_sending_nothing():
    rows = logit_rows(45, 10, 300)
    body = dict(temperature=0.9, seed=3, top_k=20, min_p=0.02, typical_p=0.9,
                xtc_probability=0.5, repeat_penalty=1.2, dry_multiplier=0.5,
                adaptive_target=0.3)
    runs = []
    for extra in ({}, {"samplers": list(DEFAULT_SAMPLERS)}, {"samplers": "edskypmxta"}):
        s = Sampler(sampling_params({**body, **extra}, openai=False))
        hist = list(HISTORY)
        for z in rows:
            hist.append(s.sample(z, hist))
        runs.append(hist)
    assert runs[0] == runs[1] == runs[2]
    # and another order changes the draws (or the test above would prove nothing)
    s = Sampler(sampling_params({**body, "samplers": "tpmk"}, openai=False))
    hist = list(HISTORY)
    for z in rows:
        hist.append(s.sample(z, hist))
    assert hist != runs[0]


@pytest.mark.parametrize("bad", [5, [1], ["top_k", None], {"top_k": 1}, True, [["top_k"]]])
def test_samplers_of_the_wrong_type_are_400s(bad):
    with pytest.raises(ApiError) as e:
        samplers_of(bad)
    # the message says what is taken: names, or their letters
    assert e.value.status == 400 and "'samplers'" in str(e.value) and "letters" in str(e.value)


def test_every_permutation_of_three_filters_matches_the_reference():
    z = logit_rows(46, 1, 120, scale=2.5)[0]
    kw = dict(temperature=0.4, top_k=9, top_p=0.7, min_p=0.2)
    seen = set()
    for order in itertools.permutations(("temperature", "top_p", "min_p", "top_k")):
        got = chain_probs(z, samplers=order, **kw)
        assert_same_distribution(got, reference_chain(z, SamplingParams(**kw), order), order)
        seen.add(frozenset(got))
    assert len(seen) > 1      # the order matters on these logits
