"""Hostile but valid settings of llama.cpp's samplers (runtime/sampling.py): each must
still draw a token the request allows, never fail the draw (a NaN probability is an
"inference failed" 500 at the server)."""
from __future__ import annotations

import numpy as np

from runtime.sampling import Sampler, SamplingParams, xtc_cut
from tests.runtime.test_samplers_more import NO_FILTERS, draws, kept, logit_rows

BANNED = {3: float("-inf"), 7: float("-inf")}   # logit_bias false: never drawn


def test_xtc_at_threshold_zero_keeps_the_least_likely_token_that_can_be_drawn():
    """Every filter off keeps the banned tokens as candidates of probability 0; at
    threshold 0 they too are "at least 0 likely", and XTC left one of them alone: NaN."""
    assert xtc_cut(np.array([0.6, 0.3, 0.1, 0.0, 0.0]), 0.0, 0) == 2
    z = np.log(np.array([0.5, 0.2, 0.2, 0.05, 0.05, 0.0001])).astype(np.float32)
    s = Sampler(SamplingParams(temperature=1.0, xtc_probability=1.0, xtc_threshold=0.0,
                               logit_bias={5: float("-inf")}, **NO_FILTERS))
    assert kept(s, z) == {4}
    params = SamplingParams(temperature=1.0, xtc_probability=1.0, xtc_threshold=0.0,
                            logit_bias=BANNED, seed=5, **NO_FILTERS)
    assert not set(draws(params, logit_rows(40, 20, 50))) & set(BANNED)


def test_xtc_at_threshold_zero_after_top_n_sigma_draws():
    """top-n-sigma marks the tokens it drops -inf: the same candidates of probability 0."""
    params = SamplingParams(temperature=1.0, xtc_probability=1.0, xtc_threshold=0.0,
                            top_n_sigma=0.5, seed=6, **NO_FILTERS)
    assert len(draws(params, logit_rows(41, 20, 50))) == 20


def test_a_huge_temperature_plus_a_huge_dynatemp_range_draws():
    """/completion takes any temperature: 1e308 + 1e308 overflowed to inf, and a banned
    candidate's -inf / inf (or inf·0 for a sure model) is NaN."""
    for bias in (BANNED, {i: float("-inf") for i in range(1, 50)}):
        params = SamplingParams(temperature=1e308, dynatemp_range=1e308, logit_bias=bias,
                                seed=7, **NO_FILTERS)
        assert not set(draws(params, logit_rows(42, 10, 50))) & set(bias)
