"""Greedy decoding (temperature <= 0) when typical-p or XTC come before the temperature in
llama-server's `samplers` (runtime/sampling.py's SamplingParams.greedy).

llama.cpp has no greedy shortcut: at any temperature it runs the whole chain
(common/sampling.cpp), and its temperature step at 0 keeps the best candidate the steps
before it left (llama_sampler_temp_impl). Typical-p and XTC can leave out the best token,
so the greedy reply is then the best of the rest, and with XTC on (its own coin, drawn per
token) it is random. The reference here is llama.cpp's code read line by line, on a
candidate array as llama.cpp keeps it (entries in their present order, a `sorted` flag):
typical-p hands the survivors on in typicality order, the temperature at 0 takes the
first best one in that order. Logits are crafted without ties, where llama.cpp's order
(std::sort, partial_sort) is unspecified.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from runtime.sampling import Sampler, SamplingParams
from tests.runtime.test_samplers_more import logit_rows

HISTORY = [3, 7, 3, 11, 7, 5]


# ---- the reference: llama.cpp's samplers on a llama_token_data_array -------------------

def ll_sort(cur: dict) -> None:
    if not cur["sorted"]:
        cur["data"].sort(key=lambda e: -e[1])
        cur["sorted"] = True


def ll_softmax(cur: dict, do_sort: bool) -> list:
    """llama_sampler_softmax_impl: each entry's p, in the entries' present order."""
    if do_sort:
        ll_sort(cur)
    top = max(e[1] for e in cur["data"])
    w = [math.exp(e[1] - top) for e in cur["data"]]
    return [x / sum(w) for x in w]


def ll_penalties(cur: dict, p: SamplingParams) -> None:
    counts = {t: HISTORY.count(t) for t in HISTORY}
    for e in cur["data"]:
        if e[0] in counts:
            e[1] -= counts[e[0]] * p.frequency_penalty + p.presence_penalty
    cur["sorted"] = False


def ll_top_k(cur: dict, p: SamplingParams) -> None:
    if p.top_k <= 0:
        return
    ll_sort(cur)
    del cur["data"][p.top_k:]


def ll_top_p(cur: dict, p: SamplingParams) -> None:
    if p.top_p >= 1:
        return
    ll_sort(cur)
    mass = 0.0
    for i, q in enumerate(ll_softmax(cur, False)):
        mass += q
        if mass >= p.top_p and i + 1 >= p.min_keep:
            del cur["data"][i + 1:]
            return


def ll_min_p(cur: dict, p: SamplingParams) -> None:
    if p.min_p <= 0:
        return
    floor = max(e[1] for e in cur["data"]) + math.log(p.min_p)   # order kept, as unsorted
    cur["data"][:] = [e for e in cur["data"] if e[1] >= floor]


def ll_typical(cur: dict, p: SamplingParams) -> None:
    """llama_sampler_typical_apply: the survivors in typicality order, not sorted."""
    if p.typical_p >= 1:
        return
    probs = ll_softmax(cur, True)
    entropy = -sum(q * math.log(q) for q in probs)
    scores = [abs(-math.log(q) - entropy) for q in probs]
    order = sorted(range(len(probs)), key=lambda i: scores[i])
    last, mass = len(order), 0.0
    for i, idx in enumerate(order):
        mass += probs[idx]
        if mass > p.typical_p and (p.min_keep == 0 or i >= p.min_keep - 1):
            last = i + 1
            break
    cur["data"][:] = [cur["data"][idx] for idx in order[:last]]
    cur["sorted"] = False


def ll_xtc(cur: dict, p: SamplingParams, chance: float) -> None:
    """llama_sample_xtc_apply, its coin given (`chance`, llama.cpp's uniform draw)."""
    if p.xtc_probability <= 0 or p.xtc_threshold > 0.5 or len(cur["data"]) < 2:
        return
    if chance > p.xtc_probability:
        return
    probs = ll_softmax(cur, True)
    pos_last = 0
    for i, q in enumerate(probs):
        if q < p.xtc_threshold:
            break
        pos_last = i
    if len(probs) - pos_last >= p.min_keep and pos_last > 0:
        del cur["data"][:pos_last]


def ll_temp_zero(cur: dict) -> int:
    """llama_sampler_temp_impl at temperature <= 0: the first entry with the highest
    logit stays, every other one goes to -inf; the draw after it can only take that one.
    (The steps llama.cpp runs after it see one finite candidate: those that keep the best
    keep it; typical-p would read 0·log 0 there, which is left out here.)"""
    best = 0
    for i, e in enumerate(cur["data"]):
        if e[1] > cur["data"][best][1]:
            best = i
    return cur["data"][best][0]


LL_STEPS = {"penalties": ll_penalties, "top_k": ll_top_k, "top_p": ll_top_p,
            "min_p": ll_min_p, "typ_p": ll_typical}


def llama_greedy(z, p: SamplingParams, order, chance: float = 0.0) -> int:
    """The token llama.cpp's chain in this order takes at temperature <= 0 (the logit bias
    first, none here)."""
    cur = {"data": [[i, float(x)] for i, x in enumerate(z)], "sorted": False}
    for name in order:
        if name == "temperature":
            return ll_temp_zero(cur)
        if name == "xtc":
            ll_xtc(cur, p, chance)
        else:
            LL_STEPS[name](cur, p)
    raise AssertionError("no temperature step: not greedy")


def our_greedy(z, p: SamplingParams) -> int:
    return Sampler(p).sample(np.asarray(z, dtype=np.float32), list(HISTORY))


# ---- crafted candidate sets ------------------------------------------------------------

def logits_of(probs) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)


# One sure token (0.4) and a run of mid ones: its surprise (0.9 nats) is further from the
# entropy (2.1 nats) than theirs (2.1-2.5), so typical-p leaves it out.
SURE_ONE = [0.4, 0.095, 0.09, 0.085, 0.08, 0.075, 0.07, 0.035, 0.03, 0.025, 0.015]
OFF = dict(top_k=0, top_p=1.0, min_p=0.0)


def test_typical_p_before_the_temperature_can_leave_out_the_best_token():
    z = logits_of(SURE_ONE)
    p = SamplingParams(temperature=0.0, typical_p=0.3, **OFF)
    order = ("typ_p", "temperature")
    assert llama_greedy(z, p, order) == 1          # the best of the typical ones
    assert our_greedy(z, p) == 1
    # after the temperature it sees one candidate: the argmax, as before
    after = SamplingParams(temperature=0.0, typical_p=0.3, samplers=("temperature", "typ_p"), **OFF)
    assert our_greedy(z, after) == 0 and after.greedy
    # typical-p off (1): the argmax, through the shortcut
    assert our_greedy(z, SamplingParams(temperature=0.0, **OFF)) == 0


def test_xtc_before_the_temperature_drops_the_likeliest_tokens_when_its_coin_comes_up():
    z = logits_of(SURE_ONE)
    p = SamplingParams(temperature=0.0, xtc_probability=1.0, xtc_threshold=0.078, **OFF)
    # tokens 0-4 are at least 0.078 likely: all but the least likely of them (4) go
    assert llama_greedy(z, p, ("xtc", "temperature")) == 4
    assert our_greedy(z, p) == 4
    # min_keep above the 7 it would leave: XTC leaves them all
    keep = SamplingParams(temperature=0.0, xtc_probability=1.0, xtc_threshold=0.078, min_keep=8, **OFF)
    assert llama_greedy(z, keep, ("xtc", "temperature")) == 0 == our_greedy(z, keep)
    # threshold above 0.5: off, the shortcut
    assert SamplingParams(temperature=0.0, xtc_probability=1.0, xtc_threshold=0.6).greedy


def test_the_argmax_shortcut_stays_where_it_is_exact():
    """The default chain and every chain whose steps before the temperature keep the best
    token take the argmax without running the chain (and speculation may run)."""
    assert SamplingParams(temperature=0.0).greedy
    assert SamplingParams(temperature=0.0, top_n_sigma=0.5, top_k=3, top_p=0.2, min_p=0.5).greedy
    assert SamplingParams(temperature=-1.0, typical_p=1.0, xtc_probability=0.0).greedy
    assert SamplingParams(temperature=0.0, typical_p=0.5, xtc_probability=1.0,
                          samplers=("top_k", "temperature", "typ_p", "xtc")).greedy
    assert not SamplingParams(temperature=0.0, typical_p=0.5).greedy
    assert not SamplingParams(temperature=0.0, xtc_probability=0.1).greedy


# ---- every order -----------------------------------------------------------------------

FILTERS = ("top_k", "typ_p", "top_p", "min_p", "xtc", "temperature")
# all on, XTC at probability 1 (llama.cpp's coin, uniform in [0, 1), always comes up)
ALL_ON = dict(temperature=0.0, top_k=12, top_p=0.93, min_p=0.03, typical_p=0.6,
              xtc_probability=1.0, xtc_threshold=0.09, min_keep=0)


def rows() -> list:
    return logit_rows(18, 5, 40, scale=1.5)


def test_every_order_of_the_filters_takes_llama_cpps_greedy_token():
    differs = 0
    for z in rows():
        for order in itertools.permutations(FILTERS):
            p = SamplingParams(samplers=order, **ALL_ON)
            want = llama_greedy(z, p, order)
            assert our_greedy(z, p) == want, order
            differs += want != int(np.argmax(z))
    # the check means something: the best token is left out in many of them
    assert differs > 1000           # 1632 of the 3600


WITH_PENALTIES = [("penalties", "typ_p", "temperature"), ("typ_p", "penalties", "temperature"),
                  ("top_k", "penalties", "xtc", "temperature", "top_p"),
                  ("penalties", "xtc", "min_p", "temperature", "typ_p", "xtc")]


def test_with_the_penalties_in_the_order_too():
    kw = dict(ALL_ON, presence_penalty=1.5, frequency_penalty=0.5)
    for z in rows():
        z = z.copy()
        z[[3, 7, 11, 5]] += 2.0       # the history's tokens among the best
        for order in WITH_PENALTIES:
            p = SamplingParams(samplers=order, **kw)
            assert our_greedy(z, p) == llama_greedy(z, p, order), order


# ---- XTC's coin at temperature 0 -------------------------------------------------------

def xtc_greedy_run(seed: int | None, n_tok: int = 12, temperature: float = 0.0) -> list:
    p = SamplingParams(temperature=temperature, xtc_probability=0.5, xtc_threshold=0.078,
                       seed=seed, **OFF)
    s = Sampler(p)
    return [s.sample(logits_of(SURE_ONE), list(HISTORY)) for _ in range(n_tok)]


def test_greedy_with_xtc_is_random_as_in_llama_cpp_and_a_seed_repeats_it():
    """Each token: the coin comes up (p 0.5) and XTC leaves token 4 the best, or not and it
    is token 0; both come, and a seed gives the same tokens again."""
    runs = {s: xtc_greedy_run(s) for s in range(8)}
    for s, toks in runs.items():
        assert set(toks) <= {0, 4} and toks == xtc_greedy_run(s)
    assert {0, 4} <= set(itertools.chain(*runs.values()))
    assert len({tuple(t) for t in runs.values()}) > 1
    # its coin is the sampler's seeded one, as when sampling: a temperature near 0, where
    # the best token left has all the probability, draws the same tokens for a seed
    for s in range(4):
        assert xtc_greedy_run(s) == xtc_greedy_run(s, temperature=1e-3)
