"""A review of the host-memory prompt cache (runtime/prompt_cache.py): what common paths
copy, and how far above its budget the cache goes.

A regenerate (or the next of n choices, or an edited last message) drops only the reply:
the session keeps the prompt, so a snapshot of what it dropped needs only the dropped
positions until the session leaves that prompt. Copying the whole state there filled the
cache with near-copies of one prompt, and evicted the other conversations it is for.
"""
import tracemalloc

import numpy as np

from runtime.engine import Request
from runtime.prompt_cache import MIN_SAVE_TOK, PromptCache
from runtime.sampling import SamplingParams
from tests.runtime.test_parity import load
from tests.runtime.test_prompt_cache import RING_N_CTX, _engine, _ids, _serve, conversations


def _bytes_per_tok(s):
    return sum(k[:, :, 0].nbytes + v[:, 0, :].nbytes for k, v in zip(s.k, s.v))


def _uncached_logits(m, n_ctx, steps, last):
    """The logits of `last` after the same evals (lists) and rewinds (ints) in a session
    without a cache: the same micro-batches, so the same rounding."""
    s = m.session(n_ctx)
    for step in steps:
        s.rewind(step) if isinstance(step, int) else s.eval(step)
    return s.eval(last, all_logits=True)


def test_a_regenerate_copies_the_reply_only_and_stays_exact():
    m = load("tiny-llama-q8_0.gguf")
    s = m.session(256)
    cache = PromptCache(s, -1)
    prompt, reply1, reply2 = _ids(m, 150, 30), _ids(m, 70, 31), _ids(m, 70, 32)
    s.eval(prompt + reply1)
    assert s.rewind(len(prompt)) == len(prompt)  # the chat page's regenerate
    held = cache.stats()
    assert held["prompts"] == 1 and held["tokens"] == len(prompt) + len(reply1)
    # the reply's positions, not the prompt's again
    assert held["bytes"] < (len(reply1) + 10) * _bytes_per_tok(s)
    s.eval(reply2)
    s.rewind(0)  # another conversation: both replies' states are kept, whole
    s.eval(_ids(m, 200, 33))
    steps = {0: [prompt + reply1], 1: [prompt + reply1, len(prompt), reply2]}
    for i, reply in enumerate((reply1, reply2)):
        ids = prompt + reply + [5]
        assert cache.restore_best(s, ids) == len(ids) - 1
        np.testing.assert_array_equal(s.eval([5], all_logits=True),
                                      _uncached_logits(m, 256, steps[i], [5]))
        s.rewind(0)


def test_a_ring_regenerate_stays_exact():
    """Sliding-window rings: the live session overwrites the slots of the prompt's last
    window as it goes on, so those are copied with the reply."""
    m = load("tiny-gemma3-q8_0.gguf")
    s = m.session(RING_N_CTX)
    cache = PromptCache(s, -1)
    prompt, reply1 = _ids(m, 300, 34), _ids(m, 80, 35)
    s.eval(prompt + reply1)
    assert s.rewind(len(prompt)) == len(prompt)
    s.eval(_ids(m, 300, 36))  # wraps every ring past the prompt's window
    s.rewind(0)
    ids = prompt + reply1 + [5, 6]
    assert cache.restore_best(s, ids) == len(ids) - 2
    np.testing.assert_array_equal(s.eval([5, 6], all_logits=True),
                                  _uncached_logits(m, RING_N_CTX, [prompt + reply1], [5, 6]))


def test_n_choices_of_one_prompt_do_not_evict_another_conversation():
    eng = _engine()
    m = eng.model
    a = _ids(m, 120, 40)
    _serve(eng, a)
    _serve(eng, a[:1] + _ids(m, 20, 41))  # a is saved, whole
    full_bytes = eng.prompt_cache.stats()["bytes"]
    eng.prompt_cache.limit_bytes = 3 * full_bytes  # room for a and two more like it
    no_end = SamplingParams(seed=1, logit_bias={t: float("-inf") for t in eng.eog_ids})
    lead = Request(prompt_ids=_ids(m, 100, 42), max_tokens=MIN_SAVE_TOK + 6, params=no_end)
    lead.followers = [Request(prompt_ids=lead.prompt_ids, max_tokens=MIN_SAVE_TOK + 6,
                              params=SamplingParams(seed=i, logit_bias=no_end.logit_bias))
                      for i in range(2, 9)]  # n=8: seven rewinds of a reply each
    eng.submit(lead)
    for r in lead.group():
        while r.events.get(timeout=120).kind not in ("done", "error"):
            pass
    assert eng.prompt_cache.stats()["bytes"] <= eng.prompt_cache.limit_bytes
    t = _serve(eng, a + [7]).timings
    assert (t.cached_n, t.prompt_n) == (len(a), 1)


def test_a_save_evicts_before_it_copies():
    """The budget holds at its peak too: room is made before the copy, not after."""
    m, s, convs, one_bytes = conversations(200, (50, 51, 52))
    cache = PromptCache(s, 2 * one_bytes)
    tracemalloc.start()  # before the two kept are copied, so that freeing one counts
    try:
        for conv in convs:
            s.eval(conv)
            held_bytes = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            s.rewind(0)  # the third: one of the two kept must go
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert cache.stats()["prompts"] == 2 and cache.stats()["bytes"] <= 2 * one_bytes
    assert peak_bytes - held_bytes < one_bytes // 2  # freed one, then copied one
