"""A restore that keeps what the session shares with the snapshot (runtime/prompt_cache.py,
PromptCache.restore_best): an agent's system prompt before its conversation and its side
requests, two chats after one system prompt. Only the positions past the shared prefix
are written back (a sliding-window ring's: all the snapshot holds), and the logits are an
uncached session's, bit for bit.
"""
import numpy as np
import pytest

from runtime import prompt_cache
from runtime.prompt_cache import PromptCache, forget
from tests.runtime.test_parity import load
from tests.runtime.test_prompt_cache import RING_N_CTX, _ids
from tests.runtime.test_prompt_cache_review import _bytes_per_tok, _uncached_logits

# (fixture, n_ctx, shared prefix, each conversation's own tokens): Gemma 3's rings (272
# positions) wrap around in both conversations (380 tokens).
SWITCH_CASES = [("tiny-llama-q8_0.gguf", 256, 100, 70),
                ("tiny-gemma3-q8_0.gguf", RING_N_CTX, 300, 80)]


def _full_layer_writes(monkeypatch, n_ctx):
    """(first position, positions) of each write a restore makes into a full layer (a
    shared prefix segment's and the snapshot's own positions: one span)."""
    writes, last = [], {}  # id(layer cache) -> the index of its last write
    real_store = prompt_cache._store

    def store(cache, pos0, x, axis):
        if not writes:  # a test cleared them
            last.clear()
        i = last.get(id(cache))
        if cache.shape[axis] == n_ctx and i is not None and sum(writes[i]) == pos0:
            writes[i] = (writes[i][0], writes[i][1] + x.shape[axis])  # it goes on
        elif cache.shape[axis] == n_ctx:  # a ring has fewer slots
            last[id(cache)] = len(writes)
            writes.append((pos0, x.shape[axis]))
        real_store(cache, pos0, x, axis)
    monkeypatch.setattr(prompt_cache, "_store", store)
    return writes


def _switch_case(name, n_ctx, shared_tok, own_tok, seed):
    """(model, an empty session, its unbounded cache, (a shared prefix, two conversations
    after it, 5 more tokens)) for the switch tests, token ids drawn from seed on."""
    m = load(name)
    s = m.session(n_ctx)
    return m, s, PromptCache(s, -1), (_ids(m, shared_tok, seed), _ids(m, own_tok, seed + 1),
                                      _ids(m, own_tok, seed + 2), _ids(m, 5, seed + 3))


@pytest.mark.parametrize("name,n_ctx,shared_tok,own_tok", SWITCH_CASES)
def test_a_switch_writes_back_only_past_the_shared_prefix_bit_for_bit(
        monkeypatch, name, n_ctx, shared_tok, own_tok):
    m, s, cache, (shared, a, b, more) = _switch_case(name, n_ctx, shared_tok, own_tok, 60)
    s.eval(shared + a)
    assert s.reuse_prefix(shared + b + [1]) == shared_tok  # the side request: a saved
    s.eval(b)
    if s.ring:
        assert s._ring_lo > 0  # the rings have wrapped around
    writes = _full_layer_writes(monkeypatch, n_ctx)
    copied_bytes = cache.copied_bytes
    held_tok = shared_tok + own_tok  # a saved state's tokens (8 bytes each)
    assert cache.restore_best(s, shared + a + more) == held_tok
    # b's tail saved (borrowing the prefix), a's tail written back: nothing of the prefix
    assert set(writes) == {(shared_tok, own_tok)}
    assert (cache.copied_bytes - copied_bytes
            <= (own_tok + s.ring) * _bytes_per_tok(s) + 8 * held_tok)
    np.testing.assert_array_equal(s.eval(more, all_logits=True),
                                  _uncached_logits(m, n_ctx, [shared + a], more))

    writes.clear()  # and back: a + more saved past the prefix, b written back
    assert cache.restore_best(s, shared + b + more) == held_tok
    assert set(writes) == {(shared_tok, own_tok)}
    np.testing.assert_array_equal(
        s.eval(more, all_logits=True),
        _uncached_logits(m, n_ctx, [shared + a, shared_tok, b], more))


@pytest.mark.parametrize("name,n_ctx,shared_tok,own_tok", SWITCH_CASES)
def test_a_prefix_evaluated_again_is_written_back_too(monkeypatch, name, n_ctx, shared_tok,
                                                     own_tok):
    """The same tokens are not the same bits: evaluated again in other micro-batches, the
    prefix rounds differently (by ~2e-6), so a snapshot taken before the session left
    it does not keep the session's."""
    m, s, cache, (shared, a, b, more) = _switch_case(name, n_ctx, shared_tok, own_tok, 64)
    s.eval(shared + a)
    s.rewind(0)  # another conversation came first: a is saved whole
    s.eval(shared[:37])
    s.eval(shared[37:] + b)
    writes = _full_layer_writes(monkeypatch, n_ctx)
    assert cache.restore_best(s, shared + a + more) == shared_tok + own_tok
    assert set(writes) == {(0, shared_tok + own_tok)}
    np.testing.assert_array_equal(s.eval(more, all_logits=True),
                                  _uncached_logits(m, n_ctx, [shared + a], more))


def test_after_a_failed_eval_nothing_is_shared(monkeypatch):
    """The engine's error path rewinds to 0 without on_rewind (the state is not trusted):
    a snapshot that no longer borrows, but shared a prefix with the session, must not
    count on it then."""
    m = load("tiny-llama-q8_0.gguf")
    s = m.session(256)
    cache = PromptCache(s, -1)
    shared, a, b, more = _ids(m, 100, 68), _ids(m, 70, 69), _ids(m, 70, 70), _ids(m, 5, 71)
    s.eval(shared + a)
    s.reuse_prefix(shared + b + [1])  # a saved, borrowing the prefix
    s.eval(b)
    s.rewind(50)  # a copies in what it borrowed; it still shares 50 with the session
    forget(s, cache)  # as Engine._serve_one after a failed eval
    s.eval(shared[:37])  # the prefix again, other bits
    s.eval(shared[37:] + b)
    writes = _full_layer_writes(monkeypatch, 256)
    assert cache.restore_best(s, shared + a + more) == 170
    assert set(writes) == {(0, 170)}
    np.testing.assert_array_equal(s.eval(more, all_logits=True),
                                  _uncached_logits(m, 256, [shared + a], more))
