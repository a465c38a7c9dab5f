"""Review of the day's sampler chain and API (runtime/sampling.py, runtime/api.py): temperature 0 with a chain that
llama.cpp runs differently from "the argmax of the penalised logits".

llama.cpp's temperature step at 0 keeps the best candidate the steps before it left. The
shortcut (argmax of the logits after the leading penalties and DRY, no chain at all, and
prompt-lookup speculation on top) is only that when no step before the temperature
changes logits after a cut or replaces the candidates (infill).
"""
from __future__ import annotations

import numpy as np

from runtime.engine import Engine, Request
from runtime.sampling import Sampler, SamplingParams, infill_vocab
from tests.runtime.test_sampler_order import reference_chain

Z = np.array([5.0, 4.0, 3.0, 0.0], dtype=np.float32)


def test_penalties_after_top_k_at_temperature_0_pick_among_its_survivors():
    """top_k 2 keeps tokens 0 and 1; the penalties push both down, token 0 less far;
    temperature 0 keeps the best of the two, 0. Failed before: the penalties ran on the
    whole vocabulary and the argmax was token 2, which top_k had cut."""
    p = SamplingParams(temperature=0.0, top_k=2, repeat_penalty=10.0,
                       samplers=("top_k", "penalties", "temperature"))
    ref = reference_chain(Z, p, p.samplers)
    assert list(ref) == [0]
    assert Sampler(p).sample(Z, [0, 1]) == 0
    assert not p.greedy  # no speculation either: it would take the shortcut's tokens
    # a step that cannot change anything keeps the shortcut (and speculation)
    assert SamplingParams(temperature=0.0, samplers=("top_k", "penalties", "temperature")).greedy
    assert SamplingParams(temperature=0.0, repeat_penalty=1.3).greedy   # the default order


def test_infill_before_temperature_0_still_ends_the_reply(tiny_model):
    """["top_k", "infill", "temperature"] at temperature 0: when the end tokens are likely
    enough, infill keeps them alone, and the reply ends. Failed before: greedy skipped the
    chain and took the best text token."""
    vocab = infill_vocab(tiny_model.tokenizer)
    eos = tiny_model.tokenizer.eos_id
    z = np.zeros(tiny_model.n_vocab, dtype=np.float32)
    z[5], z[eos] = 3.0, 2.0      # a text token is the argmax, the end token close behind
    p = SamplingParams(temperature=0.0, top_k=4, samplers=("top_k", "infill", "temperature"),
                       infill_vocab=vocab)
    assert Sampler(p).sample(z, []) == eos


def test_such_a_chain_decodes_in_the_engine_as_the_sampler_does(tiny_model):
    """The engine with speculation on gives, for such a chain, the tokens the chain gives
    one at a time on the model's own logits, at a temperature so small that its draw is
    the best candidate (which no shortcut changes). top_k 1 keeps the model's argmax; a
    repeat_penalty below 1 raises the prompt's tokens, which, on the whole vocabulary,
    made the shortcut repeat them. Failed before: the engine decoded the shortcut's tokens."""
    ids = tiny_model.tokenize("the cat sat on the mat and the cat sat on the", add_special=True)
    p = SamplingParams(temperature=0.0, top_k=1, repeat_penalty=0.05, repeat_last_n=-1,
                       samplers=("top_k", "penalties", "temperature"))
    eng = Engine(tiny_model, 128, speculate=True)
    req = eng.submit(Request(prompt_ids=ids, params=p, max_tokens=12, cache_prompt=False))
    events = list(req.iter_events(poll_s=0.05))
    assert events[-1].kind == "done", events[-1].error
    got = [ev.token for ev in events if ev.kind == "token" and ev.token is not None]
    near_0 = SamplingParams(**{**vars(p), "temperature": 1e-6})
    s, sampler, hist = tiny_model.session(128), Sampler(near_0), list(ids)
    logits, want = s.eval(ids), []
    for _ in range(12):
        tok = sampler.sample(logits, hist)
        want.append(tok)
        hist.append(tok)
        if tok in tiny_model.tokenizer.eog_ids:
            break
        logits = s.eval([tok])
    assert got == [t for t in want if t not in tiny_model.tokenizer.eog_ids]


# ---- samplers: a cap on the chain's length -----------------------------------------------

def test_a_chain_of_thousands_of_samplers_is_a_400_not_minutes_per_token(tiny_server):
    """Each named step runs for every token, the penalties and DRY over the vocabulary:
    60,000 "dry" cost the tiny model 5 s per token (uncancellable), a 1 MiB body of them
    on Qwen's vocabulary minutes. Before: a 200 after all that work. Names llama-server
    does not know cost nothing and are still skipped; 64 steps still run."""
    from runtime.api import SAMPLERS_MAX_STEPS
    from tests.e2e.conftest import post_json
    url = tiny_server.url + "/completion"
    body = {"prompt": "Once upon a time", "n_predict": 1, "dry_multiplier": 0.8}
    for many in (["dry"] * 60000, "d" * 60000):
        status, r = post_json(url, {**body, "samplers": many})
        assert status == 400, r
        assert "'samplers'" in r["error"]["message"] and str(SAMPLERS_MAX_STEPS) in r["error"]["message"]
    status, r = post_json(url, {**body, "samplers": ["dry"] * SAMPLERS_MAX_STEPS + ["bogus"] * 5000})
    assert status == 200 and r["tokens_predicted"] == 1, r
