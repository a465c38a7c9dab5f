"""Every token's bytes, one table per tokenizer, shared by DRY, the JSON constraint and
the infill sampler.

DRY (runtime/dry.py) searches the whole vocabulary for the tokens holding a sequence
breaker; the JSON constraint (runtime/json_constraint.py) needs every token's first two
bytes for its search past the model's top tokens; the infill step (runtime/sampling.py's
InfillVocab) compares the candidates' texts. All read `table_of(tokenizer)`: built on
first use, once per tokenizer even when request threads ask at the same moment, and kept
while the tokenizer lives. Each applies its own rule for special tokens on top: DRY reads
them as llama.cpp's detokenize with `special` on renders them, the constraint and the
infill step see nothing of a control token (`hidden`), and the constraint lets an added
one spell only a literal.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class TokenBytes:
    """Every token's bytes (`token_to_piece(t, special=True)`), laid end to end."""
    data: np.ndarray      # uint8: the bytes of token 0, then token 1, ...
    starts: np.ndarray    # int64 [n + 1]: token t's bytes are data[starts[t]:starts[t + 1]]
    special: np.ndarray   # bool [n]: control, user-defined or unknown (is_special)
    hidden: np.ndarray    # bool [n]: token_to_piece(t) without special=True gives b""

    def __len__(self) -> int:
        return self.starts.size - 1

    def __getitem__(self, t: int) -> bytes:
        if not 0 <= t < len(self):
            raise IndexError(t)
        return self.data[self.starts[t]:self.starts[t + 1]].tobytes()

    def __iter__(self):
        return (self[t] for t in range(len(self)))

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)


def pack(n: int, parts) -> tuple[np.ndarray, np.ndarray]:
    """(data, starts) of n tokens from parts, each (ids, data, lengths): the bytes of
    tokens `ids` (ascending) end to end. Every token is in one part; each part's bytes
    are moved into place by one NumPy scatter, not a copy per token."""
    lengths = np.zeros(n, dtype=np.int64)
    for ids, _, part_lengths in parts:
        lengths[ids] = part_lengths
    starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    data = np.empty(int(starts[-1]), dtype=np.uint8)
    for ids, part, part_lengths in parts:
        part_starts = np.cumsum(part_lengths) - part_lengths
        at = np.repeat(starts[ids] - part_starts, part_lengths)
        data[at + np.arange(at.size)] = np.frombuffer(part, dtype=np.uint8)
    return data, starts


def from_pieces(pieces: list, special, hidden) -> TokenBytes:
    """The table of a list of bytes, one per token."""
    n = len(pieces)
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=n)
    data, starts = pack(n, [(np.arange(n), b"".join(pieces), lengths)])
    return TokenBytes(data, starts, np.asarray(special, dtype=bool),
                      np.asarray(hidden, dtype=bool))


def _read_piece(tok, t: int, special: bool) -> bytes:
    try:
        piece = tok.token_to_piece(t, special=special) if special else tok.token_to_piece(t)
    except (IndexError, ValueError, KeyError):
        return b""           # an embedding row past the tokenizer's vocabulary
    return piece.encode("utf-8") if isinstance(piece, str) else piece


def _read_each(tok, n: int) -> TokenBytes:
    """The table of any object with token_to_piece (a stand-in in tests), a token at a time."""
    pieces = [_read_piece(tok, t, True) for t in range(n)]
    is_special = getattr(tok, "is_special", None)
    special = [bool(is_special and is_special(t)) for t in range(n)]
    hidden = [bool(p) and not _read_piece(tok, t, False) for t, p in enumerate(pieces)]
    return from_pieces(pieces, special, hidden)


def _build(tok, n: int) -> TokenBytes:
    build = getattr(tok, "token_bytes", None)   # runtime.tokenizer.Tokenizer's fast one
    return build() if build is not None else _read_each(tok, n)


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# One lock for all tokenizers: a build takes a tenth of a second, and a server has one.
_LOCK = threading.Lock()


def table_of(tok, n_vocab: int | None = None) -> TokenBytes:
    """Tokenizer tok's table, built on first use and kept while tok lives. n_vocab: how
    many tokens a stand-in without `n_vocab` has (a real tokenizer knows its own)."""
    n = getattr(tok, "n_vocab", None) or n_vocab
    if n is None:
        raise ValueError("table_of: the tokenizer has no n_vocab, and none was given")
    try:
        found = _TABLES.get(tok)
    except TypeError:                  # not weak-referenceable: nowhere to keep it
        return _build(tok, n)
    if found is not None and len(found) == n:
        return found
    with _LOCK:                        # a second thread waits for the first one's table
        found = _TABLES.get(tok)
        if found is None or len(found) != n:
            found = _TABLES[tok] = _build(tok, n)
    return found
