"""Snapshots that share a prefix (runtime/prompt_cache.py): conversations after one system
prompt, the n choices of a request, repeated regenerates. Each is kept for the bytes of
its own tokens: the prefix they borrow from the live session is copied once, into a
segment they all reference, when the session leaves it. (Keeping one snapshot per
borrowed prefix instead lost all but the latest of three chats after one system prompt.)
"""
import numpy as np
import pytest

from runtime.engine import Engine, Request
from runtime.prompt_cache import MIN_SAVE_TOK, cache_ram_bytes, snapshot_bytes
from runtime.sampling import SamplingParams
from tests.runtime.test_parity import load
from tests.runtime.test_prompt_cache import RING_N_CTX, _engine, _ids, _serve
from tests.runtime.test_prompt_cache_review import _bytes_per_tok, _uncached_logits

# (fixture, n_ctx, shared prefix, each conversation's own tokens): Gemma 3's rings (272
# positions) wrap around in each conversation (380 tokens).
CASES = [("tiny-llama-q8_0.gguf", 256, 100, 70), ("tiny-gemma3-q8_0.gguf", RING_N_CTX, 300, 80)]
REPLY_TOK = MIN_SAVE_TOK + 6  # a reply long enough to be saved when it is dropped


def _full_layer_bytes_per_tok(s):
    """What a shared prefix costs a token: the full layers' (a ring's are each snapshot's)."""
    return sum(k[:, :, 0].nbytes + v[:, 0, :].nbytes for k, v in zip(s.k, s.v)
               if k.shape[2] == s.n_ctx)


@pytest.mark.parametrize("name,n_ctx,shared_tok,own_tok", CASES)
def test_three_conversations_after_one_prefix_all_come_back_from_the_cache(
        name, n_ctx, shared_tok, own_tok):
    m = load(name)
    eng = Engine(m, n_ctx, cache_ram_bytes=cache_ram_bytes(-1))
    s, cache = eng.session, eng.prompt_cache
    shared = _ids(m, shared_tok, 80)
    convs = [shared + _ids(m, own_tok, 81 + i) for i in range(3)]
    other = _ids(m, MIN_SAVE_TOK + 16, 84)  # a request without the prefix: the session leaves it
    for conv in convs:
        _serve(eng, conv)
    if s.ring:
        assert s._ring_lo > 0  # the rings have wrapped around
    copied_bytes, own_bytes = cache.copied_bytes, snapshot_bytes(s, shared_tok)
    _serve(eng, other)
    # the two that borrowed the prefix and the one just left reference one copy of it
    prefix_bytes = shared_tok * _full_layer_bytes_per_tok(s)
    assert cache.copied_bytes - copied_bytes == prefix_bytes + own_bytes
    assert cache.stats()["prompts"] == 3
    assert cache.stats()["bytes"] == prefix_bytes + 3 * own_bytes
    # A budget for them and `other`, and for the states a turn leaves: with rings wrapped
    # further, a conversation's next state does not hold all its last one did (its
    # rings' first positions), so both are kept.
    cache.limit_bytes = cache.stats()["bytes"] + snapshot_bytes(s) + 6 * own_bytes
    steps = {0: [convs[0]]}  # how each conversation's positions were evaluated
    for i in (1, 2):
        steps[i] = [convs[0], shared_tok, convs[i][shared_tok:]]
    for turn in range(2):
        for i, conv in enumerate(convs):
            more = _ids(m, 5, 90 + 3 * turn + i)
            t = _serve(eng, conv + more).timings
            assert (t.cached_n, t.prompt_n) == (len(conv), len(more))
            steps[i] += [more]
            np.testing.assert_array_equal(s.eval([7], all_logits=True),
                                          _uncached_logits(m, n_ctx, steps[i], [7]))
            steps[i] += [[7]]
            convs[i] = conv + more + [7]
            assert cache.stats()["bytes"] <= cache.limit_bytes
        _serve(eng, other + [turn])


def _serve_choices(eng, prompt, n, seed):
    """Serve one request for n choices of REPLY_TOK tokens each (no end token); returns
    the session's tokens after it."""
    no_end = {t: float("-inf") for t in eng.eog_ids}
    lead, *followers = [Request(prompt_ids=list(prompt), max_tokens=REPLY_TOK,
                                params=SamplingParams(seed=seed + i, logit_bias=no_end))
                        for i in range(n)]
    lead.followers = followers
    eng.submit(lead)
    for r in lead.group():
        while r.events.get(timeout=120).kind not in ("done", "error"):
            pass
    return list(eng.session.tokens)


def test_n_choices_then_another_conversation_copy_the_prompt_once():
    eng = _engine()
    m, s, cache = eng.model, eng.session, eng.prompt_cache
    a = _ids(m, 120, 100)
    _serve(eng, a)
    _serve(eng, _ids(m, 20, 101))  # a is saved, whole
    cache.limit_bytes = 4 * cache.stats()["bytes"]  # room for a and three more like it
    prompt = _ids(m, 100, 102)
    held = _serve_choices(eng, prompt, 8, seed=1)
    assert cache.stats()["prompts"] == 2  # a, and one reply of the eight: the latest dropped
    base_tok = len(prompt) - 1  # a choice keeps the prompt but its last token
    copied_bytes, own_bytes = cache.copied_bytes, snapshot_bytes(s, base_tok)
    _serve(eng, _ids(m, 30, 103))  # the session leaves the prompt
    # the prompt copied once, for the kept reply and the eighth, which goes on from it
    assert cache.copied_bytes - copied_bytes == base_tok * _bytes_per_tok(s) + own_bytes
    assert cache.stats()["prompts"] == 3 and cache.stats()["bytes"] <= cache.limit_bytes
    for ids in (a, held):
        t = _serve(eng, ids + [7]).timings
        assert (t.cached_n, t.prompt_n) == (len(ids), 1)


def test_regenerates_keep_every_reply_for_the_bytes_of_the_reply():
    eng = _engine()
    m, s, cache = eng.model, eng.session, eng.prompt_cache
    prompt = _ids(m, 100, 110)
    base_tok = len(prompt) - 1
    replies = [_serve_choices(eng, prompt, 1, seed=10)]
    for i in range(5):  # five regenerates: five requests, each drops the reply before it
        held_bytes, reply_bytes = cache.stats()["bytes"], snapshot_bytes(s, base_tok)
        replies.append(_serve_choices(eng, prompt, 1, seed=11 + i))
        assert cache.stats()["bytes"] - held_bytes == reply_bytes
    assert cache.stats()["prompts"] == 5
    copied_bytes, own_bytes = cache.copied_bytes, snapshot_bytes(s, base_tok)
    _serve(eng, _ids(m, 30, 111))  # the session leaves the prompt: copied once for all six
    assert cache.copied_bytes - copied_bytes == base_tok * _bytes_per_tok(s) + own_bytes
    for ids in replies:
        t = _serve(eng, ids + [7]).timings
        assert (t.cached_n, t.prompt_n) == (len(ids), 1)
