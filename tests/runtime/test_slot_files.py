"""Slot files (runtime/slot_files.py, --slot-save-path) on the tiny models.

A state written to a file and read back, in another session, gives the logits the saving
session would have given, bit for bit: full caches, and sliding-window rings that have
wrapped around, also into a session of another context. A file of another model, a
truncated or damaged one, or one that does not fit the session is refused before the
session is touched; a failed save leaves no half-written file.
"""
import copy
import os

import numpy as np
import pytest

from runtime import slot_files
from runtime.prompt_cache import PromptCache
from runtime.slot_files import SlotFileError, check_filename, model_fingerprint
from tests.runtime.test_parity import load
from tests.runtime.test_prompt_cache import RING_N_CTX, _ids

CASES = [("tiny-llama-q8_0.gguf", "f32", 256), ("tiny-llama-q8_0.gguf", "quant", 256),
         ("tiny-qwen2-q8_0.gguf", "f32", 256), ("tiny-gemma2-q8_0.gguf", "f32", RING_N_CTX),
         ("tiny-gemma3-q8_0.gguf", "f32", RING_N_CTX)]
NO_RING_N_CTX = 260  # under a Gemma fixture's ring (16 + UBATCH_TOK): every layer is full


def _saved(tmp_path, m, n_ctx, held_tok, seed=1, name="slot.bin"):
    """A session that evaluated held_tok + 40 tokens and kept held_tok (stale slots past
    them, a wrapped ring for the Gemmas at 300), saved to a file: (session, ids, path)."""
    s = m.session(n_ctx)
    ids = _ids(m, held_tok + 120, seed)
    s.eval(ids[:held_tok + 40])
    s.rewind(held_tok)
    path = tmp_path / name
    n_written = slot_files.save(s, path)
    assert n_written == path.stat().st_size
    return s, ids, path


def _restored(m, n_ctx, path):
    """A fresh session that held another conversation first, with the file restored."""
    s = m.session(n_ctx)
    s.eval(_ids(m, 80, 2))
    snap, n_read = slot_files.read(path, s)
    assert n_read == path.stat().st_size
    slot_files.restore(s, snap)
    return s


@pytest.mark.parametrize("name,mode,n_ctx", CASES)
def test_a_restored_file_gives_the_saving_session_s_logits_bit_for_bit(tmp_path, name, mode, n_ctx):
    m = load(name, mode)
    held_tok = 300 if n_ctx == RING_N_CTX else 150  # 300: past a ring's 272 positions
    live, ids, path = _saved(tmp_path, m, n_ctx, held_tok)
    if live.ring:
        assert live._ring_lo > 0  # the ring has wrapped: the file holds what is left
    back_tok = held_tok - 10  # a rewind the ring's slack allows
    s = _restored(m, n_ctx, path)
    assert s.tokens == ids[:held_tok] and s._ring_lo == live._ring_lo
    for sess in (live, s):  # the same steps on both: go on, then rewind and go on again
        sess.out = [sess.eval(ids[held_tok:held_tok + 30], all_logits=True)]
        assert sess.rewind(back_tok) == back_tok
        sess.out.append(sess.eval(ids[back_tok:back_tok + 50], all_logits=True))
    for got, want in zip(s.out, live.out):
        np.testing.assert_array_equal(got, want)


def test_a_wrapped_ring_goes_on_in_a_larger_context(tmp_path):
    """The server may have restarted with another --ctx: the rings are as long (window +
    UBATCH_TOK), and the state goes on as in the saving session."""
    m = load("tiny-gemma3-q8_0.gguf")
    live, ids, path = _saved(tmp_path, m, RING_N_CTX, 300)
    s = _restored(m, 1024, path)
    assert s.ring == live.ring and s._ring_lo == live._ring_lo > 0
    np.testing.assert_array_equal(s.eval(ids[300:340], all_logits=True),
                                  live.eval(ids[300:340], all_logits=True))


def test_a_file_from_a_context_without_rings_goes_into_one_with_them(tmp_path):
    m = load("tiny-gemma3-q8_0.gguf")
    small, ids, path = _saved(tmp_path, m, NO_RING_N_CTX, 200)
    assert not small.ring
    s = _restored(m, RING_N_CTX, path)
    assert s.ring and s._ring_lo == 0 and s.tokens == ids[:200]
    fresh = m.session(RING_N_CTX)  # what this context computes after the same evals
    fresh.eval(ids[:240])
    fresh.rewind(200)
    np.testing.assert_array_equal(s.eval(ids[200:250], all_logits=True),
                                  fresh.eval(ids[200:250], all_logits=True))


def _refused(path, s, match):
    """read() refuses the file, and the session still holds what it held."""
    held, lo = list(s.tokens), s._ring_lo
    with pytest.raises(SlotFileError, match=match):
        slot_files.read(path, s)
    assert s.tokens == held and s._ring_lo == lo


def test_a_file_that_does_not_fit_the_context_is_refused(tmp_path):
    m = load("tiny-gemma3-q8_0.gguf")
    _, _, wrapped = _saved(tmp_path, m, RING_N_CTX, 250, name="wrapped.bin")
    s = m.session(NO_RING_N_CTX)
    s.eval(_ids(m, 20, 5))
    # the ring forgot the first positions; a context without rings would need them
    _refused(wrapped, s, "too small to take it")
    _, _, long_file = _saved(tmp_path, m, RING_N_CTX, 300, name="long.bin")
    _refused(long_file, s, r"holds 300 tokens, more than this server's context of 260")


def test_another_model_s_file_is_refused(tmp_path):
    llama = load("tiny-llama-q8_0.gguf")
    _, _, path = _saved(tmp_path, llama, 256, 100)
    for other in ("tiny-qwen2-q8_0.gguf", "tiny-llama-q4_0.gguf"):  # the latter: same shapes
        s = load(other).session(256)
        s.eval([1, 2, 3])
        _refused(path, s, "saved by another model")
    # the same tensors with other weights (a fine-tune): its norms tell
    tuned = copy.copy(llama)
    tuned.output_norm = llama.output_norm * np.float32(1.01)
    assert model_fingerprint(tuned) != model_fingerprint(llama)
    # the same model in another weight mode is the same model
    assert model_fingerprint(load("tiny-llama-q8_0.gguf", "quant")) == model_fingerprint(llama)


@pytest.mark.parametrize("damage", ["empty", "header only", "one byte short", "half",
                                    "one byte more", "a flipped bit", "not a slot file"])
def test_a_truncated_or_damaged_file_is_refused(tmp_path, damage):
    m = load("tiny-llama-q8_0.gguf")
    live, _, path = _saved(tmp_path, m, 256, 100)
    data = path.read_bytes()
    bad = {"empty": b"", "header only": data[:120], "one byte short": data[:-1],
           "half": data[:len(data) // 2], "one byte more": data + b"\0",
           "a flipped bit": data[:5000] + bytes([data[5000] ^ 1]) + data[5001:],
           "not a slot file": b"GGUF" + data[4:]}[damage]
    path.write_bytes(bad)
    _refused(path, live, "damaged|truncated|not a chatfile slot file")


@pytest.mark.parametrize("name", ["../slot.bin", "a/b.bin", "..", ".", "", "a\\b", "x\0y",
                                  " slot.bin", "slot.bin ", "slot.", "a:b", "é" * 200,
                                  "..hidden", None, 5, ["slot.bin"]])
def test_a_name_that_is_not_a_plain_file_name_is_refused(name):
    with pytest.raises(SlotFileError, match="Invalid filename"):
        check_filename(name)


@pytest.mark.parametrize("name", ["slot.bin", "a b.bin", "été-1.bin", ".slot", "x" * 255])
def test_plain_names_are_taken(name):
    assert check_filename(name) == name


def test_a_failed_save_leaves_the_file_it_replaces_and_no_other(tmp_path, monkeypatch):
    m = load("tiny-llama-q8_0.gguf")
    s, _, path = _saved(tmp_path, m, 256, 100)
    before = path.read_bytes()
    s.eval([7, 8, 9])
    calls = []

    def disk_full(*a):
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        calls.append(1)
        return real(*a)
    real = slot_files._positions
    monkeypatch.setattr(slot_files, "_positions", disk_full)
    with pytest.raises(OSError, match="No space left"):
        slot_files.save(s, path)
    assert os.listdir(tmp_path) == ["slot.bin"] and path.read_bytes() == before


def test_restore_keeps_the_live_conversation_in_the_prompt_cache_and_erase_does_not(tmp_path):
    m = load("tiny-llama-q8_0.gguf")
    _, ids, path = _saved(tmp_path, m, 256, 100)
    s = m.session(256)
    cache = PromptCache(s, -1)
    other = _ids(m, 90, 3)
    s.eval(other)
    slot_files.restore(s, slot_files.read(path, s)[0])
    assert cache.stats()["tokens"] == 90 and s.tokens == ids[:100]
    assert slot_files.erase(s, cache) == 100
    assert s.tokens == [] and cache.stats()["tokens"] == 90  # the erased one is not kept
