"""DRY's sequence breakers at the sizes a request may ask for (64 breakers of 40 bytes):
the results are still llama.cpp's (the references of tests/runtime/test_samplers_dry.py),
and the work no longer grows with heads × tails.

A head token may have a thousand tails (64 breakers of "=" signs: Qwen's token of 16 "="
opens each of them at 16 places), and dry_repeat_limit tried them one by one at every
head of the window: 3.1 s per sampled token for a window of 4,096 such heads, a reply of
200 tokens holding the worker for ten minutes. Finding the breakers' tokens looped over
every token holding the breaker's first byte: 20 s of the request thread for 64 breakers
starting with "e". Both are counted here in reads, not timed.
"""
from __future__ import annotations

import dataclasses
import gc
import weakref

import numpy as np
import pytest

from runtime import dry
from runtime.dry import DryBreakers, dry_breakers_from_text, dry_repeat_limit
from runtime.token_bytes import TokenBytes
from tests.runtime.test_samplers_dry import (as_sequences, breaker_reference, dry_reference,
                                             got_penalties, tiny_tok)  # noqa: F401 (fixture)


class CountingWindow(np.ndarray):
    """A window that counts how often it is indexed (each read of a slice or a token)."""
    reads = 0

    def __getitem__(self, key):
        CountingWindow.reads += 1
        return super().__getitem__(key)


def many_tails(n_tails: int) -> list:
    """Breakers (token sequences) whose head 5 has n_tails tails, none of which the
    windows below hold, and the single-token breaker 9."""
    return [(5, 6 + i % 3, 100 + i) for i in range(n_tails)] + [(9,)]


def test_a_head_with_many_tails_is_read_once_per_round_not_once_per_tail():
    br = DryBreakers.from_token_sequences(many_tails(200))
    window = np.array([5, 6, 7] * 700 + [1, 2], dtype=np.int64).view(CountingWindow)
    CountingWindow.reads = 0
    assert dry_repeat_limit(window, br) == window.size      # no whole breaker in it
    # a handful of reads per token of the longest tail (2), whatever the heads and tails
    assert CountingWindow.reads <= 8 * 3, CountingWindow.reads


@pytest.mark.parametrize("seed", range(6))
def test_many_tails_and_nested_breakers_give_the_references_penalties(seed):
    rng = np.random.default_rng(seed)
    breakers = many_tails(40) + [(5, 6), (5, 6, 7, 8), (7, 5), (3, 3, 3)]
    for _ in range(20):
        history = rng.integers(0, 12, size=int(rng.integers(1, 90))).tolist()
        for allowed in (-1, 0, 1, 2):
            kw = dict(multiplier=0.8, base=1.75, allowed=allowed, last_n=-1)
            got = got_penalties(history, breakers=breakers, **kw)
            ref = dry_reference(history, *kw.values(), breakers=breakers)
            assert got.keys() == ref.keys(), (history, allowed)
            assert np.allclose([got[t] for t in ref], list(ref.values()), rtol=1e-12)


class CountingTexts(TokenBytes):
    """DRY's texts, counting the ones read one by one (its arrays are read as they are)."""
    reads = 0

    def __getitem__(self, t):
        CountingTexts.reads += 1
        return super().__getitem__(t)


BREAKERS = [("e",), ("Once upon", "once"), ("é" * 19 + "xé",), ("=" * 33 + "X", "\n\n")]


@pytest.mark.parametrize("texts", BREAKERS)
def test_breakers_are_found_without_reading_the_texts_one_by_one(tiny_tok, texts):
    vocab = dry._vocab_texts(tiny_tok)
    counting = CountingTexts(**vars(vocab.texts))
    dry._TOKEN_TEXTS[tiny_tok] = dataclasses.replace(vocab, texts=counting)
    dry._BREAKER_PAIRS.pop(tiny_tok, None)
    dry._BREAKER_SETS.pop(tiny_tok, None)
    try:
        CountingTexts.reads = 0
        got = as_sequences(dry_breakers_from_text(tiny_tok, list(texts)))
        assert CountingTexts.reads == 0
    finally:
        dry._TOKEN_TEXTS[tiny_tok] = vocab
    assert got == set().union(*(breaker_reference(tiny_tok, t) for t in texts))


def test_requests_with_ever_new_breakers_keep_the_caches_within_their_pairs(tiny_tok, monkeypatch):
    """Each cache holds at most DRY_CACHE_PAIRS (head, tail) pairs: Qwen's 64 breakers
    starting with "e" made 90 MB of them, and 256 such requests were kept."""
    monkeypatch.setattr(dry, "DRY_CACHE_PAIRS", 200, raising=False)
    made = [weakref.ref(dry_breakers_from_text(tiny_tok, [f"e{i}:", f"se{i}"]))
            for i in range(40)]
    gc.collect()
    alive = [r() for r in made if r() is not None]
    pairs = sum(len(tails) for b in alive for tails in b.tails.values())
    assert 0 < pairs <= 200, (len(alive), pairs)
    # and what is kept is what is asked for, cached or made again
    assert as_sequences(dry_breakers_from_text(tiny_tok, ["e3:", "se3"])) == \
        breaker_reference(tiny_tok, "e3:") | breaker_reference(tiny_tok, "se3")
