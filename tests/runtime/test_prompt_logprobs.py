"""The prompt's logprobs (echo with logprobs) reduce a whole block of logit rows at once.

sampling.reported_probs_rows must report, for each row, what Sampler.reported_probs (the
reply's logprobs) reports for it alone: the same ids in the same order, ties included,
and the same probabilities up to its float32 normaliser (under 1e-6 relative;
reported_probs_rows says why). reported_probs itself is checked against a full sort of
the vocabulary: the n best by (logit descending, id ascending), as argmax and greedy
sampling order ties. Before, ties at the n-th place were cut wherever np.argpartition
left them (the last ids of an all-equal row), so the top-1 token of a row with a tied
top was not the greedy token.

The rows are random, with ties of every kind: whole rows equal, many equal values across
the block maxima reported_probs_rows searches from, -inf entries, rows with fewer tokens
of probability above 0 than asked for, and rows with no distribution at all (NaN, +inf,
all -inf). The fixture model's own logits are in tests/e2e/test_api_echo_logprobs.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from runtime import sampling
from runtime.sampling import Sampler, SamplingParams, reported_probs_rows

REL_TOL = 1e-6  # reported_probs_rows' normaliser against reported_probs' float64 one


def tied_rows(rng, V: int) -> np.ndarray:
    """[28, V] float32 logit rows, two of each kind, each kind with its ties."""
    out = []
    for _ in range(2):
        x = (3 * rng.standard_normal(V)).astype(np.float32)
        kinds = [x, np.zeros(V), np.round(x), np.round(4 * x) / 4,
                 rng.integers(0, 3, V),                     # three values: ties everywhere
                 np.where(rng.random(V) < 0.5, -np.inf, x),
                 np.where(np.arange(V) == V // 2, 1.0, -np.inf),
                 np.full(V, -np.inf),                       # no distribution
                 np.where(np.arange(V) == 1, np.nan, x),
                 np.where(np.arange(V) == V - 1, np.inf, x),
                 # exp(-800) is 0: only two tokens have a probability above 0
                 np.where(np.arange(V) < 2, -np.arange(V) * 700.0, -800.0),
                 np.where(np.arange(V) % 3 == 0, x.max(), x),  # the top tied many times
                 np.where(rng.random(V) < 0.01, 5.0, np.round(x) - 20),
                 # the float32 normaliser's worst case: every other token e^-8.4 below
                 np.where(np.arange(V) == V // 3, 13.7, 5.3)]
        out += [np.asarray(k, dtype=np.float32) for k in kinds]
    return np.stack(out)


def best_first_reference(row: np.ndarray):
    """The ids of probability above 0 by a full sort, logit descending then id
    ascending, and the float64 softmax; None without a distribution."""
    z = row.astype(np.float64)
    top = z.max()
    if not np.isfinite(top):
        return None
    w = np.exp(z - top)
    order = np.lexsort((np.arange(z.size), -z))
    return order[w[order] > 0].tolist(), w / w.sum()


def assert_same_as_reported(rows: np.ndarray, chosen, n: int) -> None:
    """reported_probs_rows on the whole block against reported_probs on each row alone."""
    got = reported_probs_rows(rows, chosen, n)
    assert len(got) == len(rows)
    raw = Sampler(SamplingParams())
    for row, tok, (p_tok, tops) in zip(rows, chosen, got):
        with np.errstate(invalid="ignore"):      # the +inf row: inf - inf
            want, p = raw.reported_probs(row, [], n)
        assert [i for i, _ in tops] == [i for i, _ in want]
        np.testing.assert_allclose([q for _, q in tops], [q for _, q in want],
                                   rtol=REL_TOL, atol=0)
        assert p_tok == pytest.approx(float(p[tok]), rel=REL_TOL, abs=0) and 0 <= p_tok <= 1
        if len(tops) > 1:  # the numerators are reported_probs' own: one ratio for the row
            ratios = np.array([q for _, q in tops]) / np.array([q for _, q in want])
            np.testing.assert_allclose(ratios, ratios[0], rtol=1e-15, atol=0)


@pytest.mark.parametrize("V", [7, 1100, 3000, 151936])
def test_reported_probs_list_the_n_best_ties_lowest_id_first(V):
    """Fails before: an all-equal row's top-1 was its last id, not greedy's first."""
    rng = np.random.default_rng(V)
    rows = tied_rows(rng, V)
    raw, greedy = Sampler(SamplingParams()), Sampler(SamplingParams(temperature=0))
    for row in rows:
        ref = best_first_reference(row)
        for n in range(6):
            with np.errstate(invalid="ignore"):
                tops, p = raw.reported_probs(row, [], n)
            if ref is None:
                assert tops == [] and not p.any()
                continue
            ids, want = ref[0][:n], ref[1]
            assert [i for i, _ in tops] == ids
            assert np.array_equal(p, want)
            assert [q for _, q in tops] == [float(want[i]) for i in ids]
            if n:
                assert ids[0] == greedy.sample(row, [])


@pytest.mark.parametrize("n", range(6))
@pytest.mark.parametrize("V", [7, 1100, 3000, 151936])
def test_a_block_of_rows_gets_what_reported_probs_gives_each_row(V, n):
    """Vocabularies with fewer blocks than n (the whole row searched), with a partial
    last block, and Qwen's; 28 rows, so several REPORT_ROWS steps, the last one short."""
    rng = np.random.default_rng(1000 * V + n)
    rows = tied_rows(rng, V)
    assert len(rows) > sampling.REPORT_ROWS
    assert_same_as_reported(rows, rng.integers(0, V, len(rows)), n)


def test_a_float64_strided_or_empty_block_is_fine():
    """float64 logits are taken as float32, as reported_probs takes them; a non-contiguous
    block and an empty one are fine."""
    rng = np.random.default_rng(5)
    rows = (3 * rng.standard_normal((40, 2000))).astype(np.float64)
    chosen = rng.integers(0, 2000, 20)
    assert_same_as_reported(rows[::2], chosen, 3)
    assert reported_probs_rows(rows[:0], [], 3) == []
