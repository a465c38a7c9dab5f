"""Prompt-lookup speculation gives the greedy output, with fewer forward passes.

If these fail, the server's default (speculative) decoding answers differently from
plain greedy decoding, or speculation silently never kicks in and decode stays slow.
"""
import numpy as np
import pytest

from runtime import speculate
from runtime.bench import EDIT_CODE
from runtime.model import Model, Session
from runtime.sampling import Sampler, SamplingParams
from tests.conftest import MODELS


def test_draft_copies_what_followed_the_latest_occurrence():
    h = [1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]
    assert speculate.draft(h, 2) == [7, 8]  # the latest earlier "1 2 3" was followed by 7 8
    assert speculate.draft(h, 10) == [7, 8, 5, 1, 2, 3]


def test_draft_needs_a_real_ngram():
    assert speculate.draft([4, 5, 6, 7], 4) == []  # nothing repeats
    assert speculate.draft([1, 5, 1], 4) == []  # a single repeated token is not enough
    assert speculate.draft([1, 2, 5, 1, 2], 4) == []  # nor are two (runtime/speculate.py)
    assert speculate.draft([1, 2, 3, 5, 1, 2, 3], 4) == [5, 1, 2, 3]  # three are
    assert speculate.draft([1, 2, 3, 1, 2], 0) == []


def _plain_greedy(m, ids, n, swa_ring=True):
    s = Session(m, len(ids) + n + 1, swa_ring=swa_ring)
    logits, out, margins = s.eval(ids), [], []
    for _ in range(n):
        top2 = np.sort(logits)[-2:]
        margins.append(float(top2[1] - top2[0]))
        out.append(int(np.argmax(logits)))
        logits = s.eval([out[-1]])
    return out, margins, float(logits.std())


def _speculative_greedy(m, ids, n, ring=False):
    s = m.session(len(ids) + n + 16)
    assert bool(s.ring) == ring
    sampler = Sampler(SamplingParams(temperature=0))
    logits, out, hist, passes = s.eval(ids), [], list(ids), 0
    while len(out) < n:
        toks, logits = speculate.greedy_tokens(s, logits, sampler, hist, s.n_ctx - len(s.tokens))
        passes += 1
        out += toks
        hist += toks
        assert s.tokens == hist  # the session holds every returned token
    return out[:n], passes


@pytest.mark.parametrize("name", ["tiny-llama-q8_0.gguf", "tiny-qwen2-q4_k_m.gguf",
                                  "tiny-gemma2-q8_0.gguf", "tiny-gemma3-q4_k_m.gguf",
                                  "tiny-mixtral-q8_0.gguf", "tiny-phi3-q8_0.gguf"])
def test_same_output_as_plain_greedy(name):
    m = Model.load(MODELS / name)
    ref = np.load(MODELS / name.replace(".gguf", ".npz"))
    ids = ref["tokens"].tolist()
    ids = ids + ids[1:33]  # repeat part of the prompt, as an edit of earlier text would
    n = 48
    plain, margins, std = _plain_greedy(m, ids, n)
    spec, passes = _speculative_greedy(m, ids, n)
    for step, (a, b) in enumerate(zip(spec, plain)):
        if margins[step] < 0.01 * std:
            break  # near-tie: batched and single-token matmuls may round either way
        assert a == b, f"step {step}: speculative {a}, plain {b}"
    assert passes <= n


def test_same_output_through_a_sliding_window_ring():
    """Speculation rewinds every rejected draft: on a sliding-window model whose ring has
    wrapped around many times, the output must still be the full cache's greedy one."""
    name = "tiny-gemma3-q8_0.gguf"
    m = Model.load(MODELS / name)
    ref = np.load(MODELS / name.replace(".gguf", ".npz"))["tokens"].tolist()
    ids = (ref * 40)[:400]  # repetitive, so that drafts are made and partly rejected
    n = 64
    plain, margins, std = _plain_greedy(m, ids, n, swa_ring=False)
    spec, passes = _speculative_greedy(m, ids, n, ring=True)
    assert passes < n  # drafts were accepted, so the ring was rewound into
    for step, (a, b) in enumerate(zip(spec, plain)):
        if margins[step] < 0.01 * std:
            break
        assert a == b, f"step {step}: speculative {a}, plain {b}"


@pytest.mark.slow
def test_drafts_are_accepted_when_the_answer_repeats_the_prompt(qwen_gguf_path):
    """A code edit copies most of the code: most tokens must come from accepted drafts."""
    m = Model.load(qwen_gguf_path)
    prompt = m.chat_prompt([{"role": "user", "content":
                             "Add type hints to this function. Reply with the code only.\n\n" + EDIT_CODE}])
    ids = m.tokenize(prompt, parse_special=True)
    n = 64
    plain, margins, std = _plain_greedy(m, ids, n)
    spec, passes = _speculative_greedy(m, ids, n)
    for step, (a, b) in enumerate(zip(spec, plain)):
        if margins[step] < 0.01 * std:
            break
        assert a == b, f"step {step}: speculative {a}, plain {b}"
    assert passes <= n * 0.5, f"{passes} forward passes for {n} tokens"
