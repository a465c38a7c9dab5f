"""The host-memory prompt cache (runtime/prompt_cache.py, --cache-ram) on the tiny models.

A restored snapshot must give the logits the live session would have given, bit for bit:
full caches, sliding-window rings that have wrapped around, each weight mode. And the
engine must keep two alternating conversations: the returning one evaluates only its new
tokens, through cancels and errors.
"""
import numpy as np
import pytest

from runtime import engine as engine_mod
from runtime import model as model_mod
from runtime import prompt_cache as prompt_cache_mod
from runtime.engine import Engine, Request
from runtime.sampling import SamplingParams
from runtime.prompt_cache import (MIN_RESTORE_GAIN_TOK, MIN_SAVE_TOK, PromptCache,
                                  cache_ram_bytes, restore_snapshot, take_snapshot)
from tests.runtime.test_parity import load

# The Gemma fixtures have sliding-window layers; with 720 positions of context their
# rings (window 16 + UBATCH_TOK) are shorter than it, so they wrap around.
RING_N_CTX = 720
CASES = [("tiny-llama-q8_0.gguf", "f32", 256), ("tiny-llama-q8_0.gguf", "int8", 256),
         ("tiny-llama-q8_0.gguf", "quant", 256), ("tiny-qwen2-q8_0.gguf", "f32", 256),
         ("tiny-gemma2-q8_0.gguf", "f32", RING_N_CTX), ("tiny-gemma3-q8_0.gguf", "f32", RING_N_CTX)]


def _ids(m, n, seed):
    return np.random.default_rng(seed).integers(0, m.n_vocab, n).tolist()


@pytest.mark.parametrize("name,mode,n_ctx", CASES)
def test_a_restored_snapshot_gives_the_live_session_s_logits_bit_for_bit(name, mode, n_ctx):
    m = load(name, mode)
    s = m.session(n_ctx)
    held_tok = 300 if n_ctx == RING_N_CTX else 150  # 300: past a ring's 272 positions
    ids = _ids(m, held_tok + 120, 1)
    s.eval(ids[:held_tok + 40])
    s.rewind(held_tok)  # stale slots past the tokens held, as after any rewind
    assert s.tokens == ids[:held_tok]
    if s.ring:
        assert s._ring_lo > 0  # the ring has wrapped: older positions are gone
    snap = take_snapshot(s)
    # the used part only, not n_ctx: at most the ring for a sliding-window layer
    assert {a.shape[2] for a in snap.k} <= {held_tok, held_tok - s._ring_lo}
    per_pos_bytes = 4 * sum(k.shape[0] * k.shape[1] + v.shape[0] * v.shape[2]
                            for k, v in zip(s.k, s.v))
    assert snap.nbytes <= (per_pos_bytes + 8) * held_tok
    want_next = s.eval(ids[held_tok:held_tok + 30], all_logits=True)
    back_tok = held_tok - 10  # a rewind the ring's slack allows
    assert s.rewind(back_tok) == back_tok
    want_after_rewind = s.eval(ids[back_tok:back_tok + 50], all_logits=True)

    # Another conversation overwrites everything, then the snapshot comes back.
    s.rewind(0)
    s.eval(_ids(m, held_tok + 60, 2))
    s.rewind(0)
    restore_snapshot(s, snap)
    assert s.tokens == ids[:held_tok] and s.n_past == held_tok
    np.testing.assert_array_equal(s.eval(ids[held_tok:held_tok + 30], all_logits=True), want_next)
    assert s.rewind(back_tok) == back_tok
    np.testing.assert_array_equal(s.eval(ids[back_tok:back_tok + 50], all_logits=True),
                                  want_after_rewind)


def test_a_ring_snapshot_cannot_resume_past_its_window():
    """A ring forgets: a snapshot is no use for a prompt that leaves it before the window
    the ring still holds, and the cache does not pick it (as a rewind would restart)."""
    m = load("tiny-gemma3-q8_0.gguf")
    s = m.session(RING_N_CTX)
    cache = PromptCache(s, -1)
    ids = _ids(m, 400, 3)
    s.eval(ids)
    assert s.rewind(100) == 0  # past the ring's window: the whole state is saved first
    assert cache.stats()["prompts"] == 1 and s.tokens == []
    s.eval(_ids(m, 10, 4))
    assert cache.restore_best(s, ids[:100] + [5, 6]) == 0  # the ring's window is gone there
    assert len(s.tokens) == 10
    assert cache.restore_best(s, ids + [5]) == 400 and s.tokens == ids


def test_small_rewinds_are_not_saved_and_prefixes_are_redundant():
    m = load("tiny-llama-q8_0.gguf")
    s = m.session(256)
    cache = PromptCache(s, -1)
    ids = _ids(m, 200, 5)
    s.eval(ids[:150])
    s.rewind(150 - MIN_SAVE_TOK + 1)  # a speculated draft's size: nothing saved
    assert cache.stats()["prompts"] == 0
    s.eval(ids[len(s.tokens):200])
    s.rewind(0)
    assert cache.stats()["prompts"] == 1 and cache.stats()["tokens"] == 200
    s.eval(ids[:120])
    s.rewind(0)  # a prefix of the one kept: nothing new
    assert cache.stats()["prompts"] == 1 and cache.stats()["tokens"] == 200
    s.eval(ids + _ids(m, 20, 6))
    s.rewind(0)  # it extends the one kept: replaces it
    assert cache.stats()["prompts"] == 1 and cache.stats()["tokens"] == 220


def conversations(n_tok: int, seeds) -> tuple:
    """(tiny llama, an empty session of 256 positions, a conversation of n_tok tokens per
    seed, the bytes of one conversation's snapshot)."""
    m = load("tiny-llama-q8_0.gguf")
    s = m.session(256)
    convs = [_ids(m, n_tok, seed) for seed in seeds]
    s.eval(convs[0])
    one_bytes = take_snapshot(s).nbytes
    s.rewind(0)
    return m, s, convs, one_bytes


def test_the_least_recently_used_go_first_under_the_byte_budget():
    m, s, convs, one_bytes = conversations(100, (7, 8, 9))
    cache = PromptCache(s, 2 * one_bytes)  # room for two
    for conv in convs[:2]:
        s.eval(conv)
        s.rewind(0)
    assert cache.restore_best(s, convs[0] + [1]) == 100  # convs[0] is now the most recent
    s.rewind(0)
    s.eval(convs[2])
    s.rewind(0)  # evicts convs[1], the least recently used
    assert cache.stats()["prompts"] == 2 and cache.stats()["bytes"] <= 2 * one_bytes
    assert cache.restore_best(s, convs[1] + [1]) == 0
    assert cache.restore_best(s, convs[0] + [1]) == 100
    s2 = m.session(256)
    small = PromptCache(s2, one_bytes - 1)  # too small for any
    s2.eval(convs[0])
    s2.rewind(0)
    assert small.stats()["prompts"] == 0


def _served_tokens(eng, ids, **kw):
    """(the final event, the reply's token ids) of a request for `ids`."""
    req = Request(prompt_ids=list(ids), max_tokens=kw.pop("max_tokens", 0), **kw)
    events = list(eng.run(req))
    return events[-1], [e.token for e in events if e.kind == "token" and e.token is not None]


def _serve(eng, ids, **kw):
    return _served_tokens(eng, ids, **kw)[0]


def _engine(name="tiny-llama-q8_0.gguf", cache_ram_mib=16):
    return Engine(load(name), 256, cache_ram_bytes=cache_ram_bytes(cache_ram_mib))


def test_two_alternating_conversations_each_evaluate_only_their_new_tokens():
    eng = _engine()
    m = eng.model
    a, b = _ids(m, 120, 10), _ids(m, 110, 11)
    assert _serve(eng, a).timings.cached_n == 0
    assert _serve(eng, b).timings.cached_n == 0
    more = _ids(m, 6, 12)
    t = _serve(eng, a + more).timings
    assert (t.cached_n, t.prompt_n) == (len(a), len(more))
    t = _serve(eng, b + more).timings
    assert (t.cached_n, t.prompt_n) == (len(b), len(more))
    # The greedy reply from the restored state is the one from a fresh prefill, token for
    # token (the default sampling draws at temperature 0.8 from a random seed).
    greedy = SamplingParams(temperature=0)
    cached, cached_tok = _served_tokens(eng, a + more + [5], max_tokens=8, params=greedy)
    fresh, fresh_tok = _served_tokens(_engine(cache_ram_mib=0), a + more + [5], max_tokens=8,
                                      params=greedy)
    assert cached.timings.cached_n == len(a) + len(more)
    assert cached_tok == fresh_tok and cached_tok


def test_without_the_cache_the_returning_conversation_is_read_again():
    eng = _engine(cache_ram_mib=0)
    m = eng.model
    a, b = _ids(m, 120, 10), _ids(m, 110, 11)
    _serve(eng, a)
    _serve(eng, b)
    assert eng.prompt_cache is None and _serve(eng, a + [7]).timings.cached_n < 5


def test_a_cancel_or_an_error_mid_prefill_keeps_the_saved_conversation(monkeypatch):
    eng = _engine()
    m = eng.model
    a, b = _ids(m, 120, 13), _ids(m, 150, 14)
    _serve(eng, a)
    monkeypatch.setattr(engine_mod, "UBATCH_TOK", 16)  # the prefill's chunks, where it checks
    real_eval = eng.session.eval
    req = Request(prompt_ids=b, max_tokens=0)

    def eval_then_cancel(ids, **kw):  # the client goes away during the prefill
        out = real_eval(ids, **kw)
        req.cancel.set()
        return out
    monkeypatch.setattr(eng.session, "eval", eval_then_cancel)
    assert list(eng.run(req))[-1].finish_reason == "cancelled"
    assert 0 < len(eng.session.tokens) < len(b)
    monkeypatch.setattr(eng.session, "eval", real_eval)
    t = _serve(eng, a + [9]).timings
    assert (t.cached_n, t.prompt_n) == (len(a), 1)

    calls = []

    def fail_in_layer_one(*args, **kw):  # halfway through a pass: layer 0 has stored k, v
        calls.append(1)
        if len(calls) == 12:  # the 6th chunk's second layer: 80 tokens of b are held
            raise MemoryError("boom")
        return real_attention(*args, **kw)
    real_attention = model_mod.attention
    monkeypatch.setattr(model_mod, "attention", fail_in_layer_one)
    saved = eng.prompt_cache.stats()["prompts"]
    assert _serve(eng, b).kind == "error"
    monkeypatch.setattr(model_mod, "attention", real_attention)
    # a + [9] was saved when b's prefill began; the failed state was not
    assert eng.session.tokens == [] and eng.prompt_cache.stats()["prompts"] == saved
    assert eng.prompt_cache.stats()["tokens"] == len(a) + 1
    assert eng.session.on_rewind == eng.prompt_cache.on_rewind
    t = _serve(eng, a + [9, 4]).timings
    assert (t.cached_n, t.prompt_n) == (len(a) + 1, 1)


def test_the_cache_ram_option():
    from runtime.cli import build_parser, check_args
    parse = build_parser().parse_args
    assert parse(["run", "m.gguf"]).cache_ram is None
    assert check_args(parse(["run", "m.gguf", "--cache-ram", "-1"])) is None
    assert "--cache-ram must be 0 or more" in check_args(parse(["run", "m.gguf", "--cache-ram", "-2"]))
    assert 0 < cache_ram_bytes(None) <= 1024 << 20  # min(1 GiB, a quarter of what is free)
    assert (cache_ram_bytes(0), cache_ram_bytes(-1), cache_ram_bytes(8)) == (0, -1, 8 << 20)


def test_at_most_max_snapshots_are_kept_the_latest_ones(monkeypatch):
    """Every prompt is compared with each saved state: a tiny model's states are a few kB,
    and 1 GiB would hold thousands, so their number is capped too (the least recent go)."""
    monkeypatch.setattr(prompt_cache_mod, "MAX_SNAPSHOTS", 4)
    m, s, convs, one_bytes = conversations(70, range(60, 67))
    cache = PromptCache(s, 100 * one_bytes)   # bytes are no limit here
    for conv in convs:
        s.eval(conv)
        s.rewind(0)
    assert cache.stats()["prompts"] == 4
    assert cache.restore_best(s, convs[0] + [1]) < len(convs[0])   # among the first: gone
    s.rewind(0)
    assert cache.restore_best(s, convs[-1] + [1]) == len(convs[-1])


def test_a_state_that_gives_only_a_few_more_tokens_is_not_restored():
    """Every prompt of a chat template shares its first tokens with most saved states: a
    state restored for a gain of a token or two wrote back all its own tokens for it."""
    m, s, convs, one_bytes = conversations(100, (70, 71))
    cache = PromptCache(s, 10 * one_bytes)
    s.eval(convs[0])
    s.rewind(0)                                  # convs[0] saved
    few = convs[0][:MIN_RESTORE_GAIN_TOK - 1] + convs[1]
    assert cache.restore_best(s, few) == 0 and cache.restores == 0
    enough = convs[0][:MIN_RESTORE_GAIN_TOK] + convs[1]
    assert cache.restore_best(s, enough) == MIN_RESTORE_GAIN_TOK and cache.restores == 1
