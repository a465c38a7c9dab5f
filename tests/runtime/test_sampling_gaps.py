"""What logprobs / n_probs report when the request has a logit bias and penalties.

Each step, the engine asks Sampler.reported_probs for the distribution and then
Sampler.sample for the token, both with the model's raw logits, and each applies the bias
and the penalties itself (Sampler.adjusted). That is two applications of the same
adjustment to the same logits, never one on top of the other: the numbers must be those
of the bias and the penalties applied exactly once. The reference here is computed
independently of runtime.sampling, from the tiny fixture model's own logits (our Model,
itself checked against llama.cpp), with llama.cpp's penalty rule written out anew.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime.engine import Engine, Request
from runtime.sampling import SamplingParams

TINY = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "models" / "tiny-llama-q8_0.gguf"
N_PROBS = 16
N_GEN = 12
TOL = 1e-4  # on a probability: our incremental forward pass against Model.logits


@pytest.fixture(scope="module")
def model():
    from runtime.model import Model
    return Model.load(TINY)


def adjusted_once(logits, history, bias, repeat, presence, frequency, last_n):
    """llama.cpp's order: the bias, then the penalties over the last `last_n` tokens (a
    positive logit divided by the repeat penalty, a negative one multiplied by it, then
    frequency times the count and presence once), each applied one time."""
    z = logits.astype(np.float64).copy()
    for tok, b in bias.items():
        z[tok] += b
    counts: dict = {}
    for tok in history[-last_n:]:
        counts[tok] = counts.get(tok, 0) + 1
    for tok, n in counts.items():
        z[tok] = z[tok] / repeat if z[tok] > 0 else z[tok] * repeat
        z[tok] -= n * frequency + presence
    return z


def softmax(z):
    w = np.exp(z - z.max())
    return w / w.sum()


def replay(model, prompt_ids, params, temperature):
    """The engine's reply with n_probs: [(token, prob of it, [(id, prob), ...]), ...]."""
    eng = Engine(model, 256, speculate=False)
    req = Request(prompt_ids=list(prompt_ids), params=params, max_tokens=N_GEN,
                  n_probs=N_PROBS, cache_prompt=False)
    eng.submit(req)
    steps = []
    for ev in req.iter_events(poll_s=0.05):
        if ev.kind == "token" and ev.token is not None:
            steps.append((ev.token, ev.prob, ev.probs))
        elif ev.kind == "error":
            raise ev.error
    assert steps, "no tokens came"
    return steps


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_n_probs_apply_the_bias_and_the_penalties_once(model, temperature):
    prompt = model.tokenize("hello world, this is hello world, this is", add_special=True)
    # Negative presence and frequency penalties (OpenAI allows down to -2) lift the tokens
    # already written into the top of the list, where applying them twice would show;
    # the bias goes to tokens the prompt holds, so that bias and penalties meet.
    bias = {prompt[1]: 2.5, prompt[2]: -1.5, 7: 3.0}
    kw = dict(repeat=1.3, presence=-1.0, frequency=-0.5, last_n=64)
    params = SamplingParams(temperature=temperature, seed=1234, top_k=40, top_p=0.95,
                            min_p=0.05, repeat_penalty=kw["repeat"],
                            presence_penalty=kw["presence"],
                            frequency_penalty=kw["frequency"], repeat_last_n=kw["last_n"],
                            logit_bias=bias)
    steps = replay(model, prompt, params, temperature)
    history = list(prompt)
    sensitive = 0
    for i, (tok, prob, tops) in enumerate(steps):
        raw = model.logits(history)[-1]
        once = softmax(adjusted_once(raw, history, bias, **kw))
        twice_z = adjusted_once(adjusted_once(raw, history, bias, **kw), history, bias, **kw)
        twice = softmax(twice_z)
        ref_ids = np.argsort(-once, kind="stable")[:N_PROBS]
        got_ids = [t for t, _ in tops]
        # The same tokens (ties aside: compare as sets the ones clearly apart)
        assert set(got_ids[:3]) == set(ref_ids[:3].tolist()), (i, got_ids, ref_ids)
        for t, p in tops:
            assert p == pytest.approx(once[t], abs=TOL), (i, t, p, once[t], twice[t])
        assert prob == pytest.approx(once[tok], abs=TOL), (i, tok)
        if temperature == 0.0:
            assert tok == int(np.argmax(once)), i   # greedy takes the best, once adjusted
        sensitive += any(abs(once[t] - twice[t]) > 10 * TOL for t, _ in tops)
        history.append(tok)
    # A double application would have failed above: it moves the listed numbers by
    # more than the tolerance, at most steps.
    assert sensitive >= len(steps) // 2, (sensitive, len(steps))
