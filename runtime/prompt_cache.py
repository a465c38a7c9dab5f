"""A prompt cache in host memory for the engine's one session, as llama-server's --cache-ram.

The session reuses the longest common prefix of a new prompt with the tokens it holds
(Session.reuse_prefix), so two conversations that take turns would each re-read their
whole prompt: a chat page switching tabs, or an agent's side request (a title, a
sub-agent) between the turns of a long conversation. Here, before a rewind drops
MIN_SAVE_TOK tokens or more, the session's state for the tokens it holds is copied into
a Snapshot; a later prompt that shares a longer prefix with a snapshot than with the live
session has it copied back first (PromptCache.restore_best), and then goes on as usual.
What the session still shares with the snapshot bit for bit (a system prompt both went
on from, Snapshot.live_n) stays in place: only the rest is written back.

A snapshot holds only the used part of each layer's cache: positions 0..n-1 of a full
layer, and of a sliding-window ring the positions it still holds (Session._ring_lo
onwards), each written back into the slot it came from. The restored session is the
saved one, slot for slot, so its logits are the same bit for bit.

A rewind that keeps a prefix (a regenerate, the next of n choices, an edited last
message) copies only what it drops: the snapshot borrows the kept prefix from the live
session and copies it in only when the session leaves it (Snapshot.base_n). Copying the
whole state there cost 137 ms and 188 MiB a regenerate at 8k tokens of Qwen 0.5B.

Snapshots live in an LRU under a byte budget, room made before the copy. One whose tokens are a prefix of another's
(that holds as much: ring and prompt logprobs) is redundant, and only the longer is kept.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from runtime.model import _span, _store, first_attended
from runtime.weights import ram_available_bytes

# Rewinds that drop fewer tokens are not saved: speculation drops its rejected drafts (at
# most 32 tokens, speculate.PREDICTION_DRAFT_MAX_TOK) on every step, and re-reading 63
# tokens costs under a second even at ~87 tok/s (Qwen 0.5B at 13k tokens of context).
MIN_SAVE_TOK = 64

# --cache-ram's default: 1 GiB, or a quarter of the RAM available once the model is
# loaded if that is less. The cache is float32 (twice llama.cpp's f16, whose server
# defaults to 8 GiB): 1 GiB holds ~43k tokens of Qwen 0.5B (24 KiB a token), three
# 13k-token agent conversations; a quarter leaves the rest to the OS and the other
# programs, so that the cache never pushes the machine into swap.
CACHE_RAM_DEFAULT_MIB = 1024
CACHE_RAM_AVAILABLE_FRACTION = 0.25
# A prompt logprob entry: a float and n_probs (id, prob) tuples; a rough size for the budget.
PROB_ENTRY_BYTES, PROB_ALT_BYTES = 100, 120


def default_cache_ram_bytes() -> int:
    return int(min(CACHE_RAM_DEFAULT_MIB << 20,
                   CACHE_RAM_AVAILABLE_FRACTION * ram_available_bytes()))


def cache_ram_bytes(mib: int | None) -> int:
    """--cache-ram MIB in bytes: None the default, 0 off, -1 no limit (llama-server's -1)."""
    if mib is None:
        return default_cache_ram_bytes()
    return -1 if mib < 0 else int(mib) << 20


@dataclass
class Snapshot:
    tokens: np.ndarray      # int64 [n]: the tokens held
    ring_lo: int            # Session._ring_lo: the first position the rings hold
    k: list                 # per layer, keys [n_head_kv, hd, n - lo] of positions lo..n-1
    v: list                 # per layer, values [n_head_kv, n - lo, hd_v]
    prompt_probs: list      # Session.prompt_probs and prompt_probs_n
    prompt_probs_n: int
    nbytes: int
    # > 0: full layers hold positions base_n.. only; 0..base_n-1 are still the live
    # session's (it kept them when the rewind dropped the rest), copied in (materialize)
    # before the session drops them. A regenerate copies the reply, not the prompt again.
    base_n: int = 0
    # The live session's full layers still hold positions 0..live_n-1 as they were when
    # this was taken, bit for bit: it has not rewound below live_n since (PromptCache
    # lowers it on every rewind), and evals write only past the tokens held. A restore
    # keeps those in place and writes back only the rest. At least base_n.
    live_n: int = 0

    def covers(self, other: "Snapshot") -> bool:
        """Does this one hold all that `other` holds (other is redundant)?"""
        n = other.tokens.size
        return (self.tokens.size >= n and self.ring_lo <= other.ring_lo
                and np.array_equal(self.tokens[:n], other.tokens)
                and (not other.prompt_probs
                     or (self.prompt_probs_n >= other.prompt_probs_n
                         and len(self.prompt_probs) >= len(other.prompt_probs))))


def _positions(cache: np.ndarray, lo: int, n: int, axis: int) -> np.ndarray:
    """A copy of positions lo..n-1 of a layer's cache (see model._store)."""
    if lo >= n:
        shape = list(cache.shape)
        shape[axis] = 0
        return np.empty(shape, cache.dtype)
    span = _span(cache, lo, n, axis)
    return span if span.base is None else span.copy()  # a wrapped ring's is a copy already


def _copy_from(session, ring_lo: int, base_n: int, il: int) -> int:
    """The first position of layer il a snapshot copies: a ring's all (the live session
    overwrites its slots as it goes on), a full layer's from base_n."""
    return ring_lo if _is_ring(session, il) else base_n


def _is_ring(session, il: int) -> bool:
    return bool(session.ring) and session.cfg.is_swa(il)


def snapshot_bytes(session, base_n: int = 0) -> int:
    """What take_snapshot(session, base_n) will hold, before it copies anything."""
    n = len(session.tokens)
    kv_bytes = sum((session.k[il][:, :, 0].nbytes + session.v[il][:, 0, :].nbytes)
                   * max(n - _copy_from(session, session._ring_lo, base_n, il), 0)
                   for il in range(len(session.k)))
    return (kv_bytes + 8 * n + len(session.prompt_probs)
            * (PROB_ENTRY_BYTES + PROB_ALT_BYTES * session.prompt_probs_n))


def take_snapshot(session, base_n: int = 0) -> Snapshot:
    """A copy of the session's state for the tokens it holds (at least one); with base_n,
    its full layers' positions from base_n only (see Snapshot.base_n)."""
    n = len(session.tokens)
    ks, vs = [], []
    for il in range(len(session.k)):
        lo = _copy_from(session, session._ring_lo, base_n, il)
        ks.append(_positions(session.k[il], lo, n, axis=2))
        vs.append(_positions(session.v[il], lo, n, axis=1))
    return Snapshot(np.asarray(session.tokens, np.int64), session._ring_lo, ks, vs,
                    list(session.prompt_probs), session.prompt_probs_n,
                    snapshot_bytes(session, base_n), base_n, live_n=base_n)


def materialize(session, snap: Snapshot) -> None:
    """Copy in the full layers' positions 0..base_n-1 from the session, which still holds
    them (PromptCache calls this before a rewind drops them): the snapshot then stands
    alone."""
    n = snap.base_n
    for il in range(len(session.k)):
        if n and not _is_ring(session, il):  # concatenate: a new array, no view of the live one
            snap.k[il] = np.concatenate((session.k[il][:, :, :n], snap.k[il]), axis=2)
            snap.v[il] = np.concatenate((session.v[il][:, :n], snap.v[il]), axis=1)
    snap.nbytes += _prefix_bytes(session, n)
    snap.base_n = 0


def _prefix_bytes(session, n: int) -> int:
    """The bytes of the full layers' positions 0..n-1 (what materialize adds)."""
    return n * sum(session.k[il][:, :, 0].nbytes + session.v[il][:, 0, :].nbytes
                   for il in range(len(session.k)) if not _is_ring(session, il))


def restore_snapshot(session, snap: Snapshot, kept_n: int = 0) -> int:
    """Make the session hold what it held when `snap` was taken: each position back in
    its slot (the rings' too), so that what follows computes exactly as it would have.
    The session's first kept_n positions must be the snapshot's already (Snapshot.live_n;
    it holds kept_n tokens): full layers keep them in place and get positions kept_n..
    only; rings get all the snapshot holds, since the session overwrote their slots as it
    went on. Returns the bytes written."""
    assert snap.base_n <= kept_n <= min(len(session.tokens), snap.tokens.size), \
        "materialize() a snapshot before restoring it below what it borrows"
    written_bytes = 0
    for il in range(len(session.k)):
        lo = _copy_from(session, snap.ring_lo, kept_n, il)
        skip = lo - _copy_from(session, snap.ring_lo, snap.base_n, il)  # what snap.k[il] starts at
        k, v = snap.k[il][:, :, skip:], snap.v[il][:, skip:]
        _store(session.k[il], lo, k, axis=2)
        _store(session.v[il], lo, v, axis=1)
        written_bytes += k.nbytes + v.nbytes
    # last: a restore that fails halfway leaves the session holding its kept_n tokens (a
    # ring's slots past them overwritten: the engine's error path rewinds to 0)
    session._ring_lo = snap.ring_lo
    session.prompt_probs = list(snap.prompt_probs)
    session.prompt_probs_n = snap.prompt_probs_n
    session.tokens = snap.tokens.tolist()
    return written_bytes


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    m = min(a.size, b.size)
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if diff.size else m


def usable_prefix(session, ring_lo: int, n: int) -> int:
    """How many of n common tokens a state with this ring_lo can keep (Session.rewind's
    rule: none once a ring has overwritten the window before position n)."""
    if session.ring and ring_lo > first_attended(n, session.cfg.swa_window):
        return 0
    return n


class PromptCache:
    """The snapshots of one session, least recently used first. limit_bytes < 0: no limit.
    The engine's worker changes it; /slots reads stats() from other threads."""

    def __init__(self, session, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self._snaps: OrderedDict[int, Snapshot] = OrderedDict()  # id(snapshot) -> it
        self._lock = threading.Lock()
        self.saves = self.restores = 0
        self.copied_bytes = 0  # by saves and materialize, for the measurements
        self.restored_bytes = 0  # written back into the session by restores
        self.save_ms = self.restore_ms = 0.0  # the last ones, for the measurements
        session.on_rewind = self.on_rewind

    def on_rewind(self, session, n_kept: int) -> None:
        """Session.rewind's hook, before it drops tokens n_kept..: the snapshots that
        borrow positions it drops copy them in first; then what it held is saved when
        that is MIN_SAVE_TOK tokens or more, borrowing the n_kept it keeps."""
        self._materialize_below(session, n_kept)
        with self._lock:
            for s in self._snaps.values():  # what follows overwrites positions n_kept..
                s.live_n = min(s.live_n, n_kept)
        if len(session.tokens) - n_kept >= MIN_SAVE_TOK:
            self.save(session, base_n=n_kept)

    def _materialize_below(self, session, n_kept: int) -> None:
        """Snapshots borrowing more than n_kept positions copy them in from the session."""
        with self._lock:
            borrowed = [(k, s) for k, s in self._snaps.items() if s.base_n > n_kept]
        for key, s in reversed(borrowed):  # the most recently used first
            grow = _prefix_bytes(session, s.base_n)
            if not self._make_room(s.nbytes + grow, but=key):
                with self._lock:
                    self._snaps.pop(key, None)
                continue
            try:
                materialize(session, s)
            except MemoryError:
                with self._lock:
                    self._snaps.pop(key, None)
            self.copied_bytes += grow

    def _make_room(self, nbytes: int, but=None) -> bool:
        """Evict the least recently used (not `but`) until nbytes more fit the budget
        (nbytes counting `but`'s own, if it is kept). False if they never would."""
        if self.limit_bytes < 0:
            return True
        with self._lock:
            others = [k for k in self._snaps if k != but]
            used = sum(self._snaps[k].nbytes for k in others)
            if nbytes > self.limit_bytes:
                return False
            for key in others:
                if used + nbytes <= self.limit_bytes:
                    break
                used -= self._snaps.pop(key).nbytes
        return True

    def drop_borrowed(self) -> None:
        """The session's state is not trusted (a failed eval): drop what borrows from it."""
        with self._lock:
            for key in [k for k, s in self._snaps.items() if s.base_n]:
                del self._snaps[key]
            for s in self._snaps.values():  # the engine rewinds it to 0 without on_rewind
                s.live_n = 0

    def save(self, session, base_n: int = 0) -> bool:
        """Keep a snapshot of the session (borrowing its first base_n positions), unless
        one holds it already or it is larger than the budget; evicts the least recently
        used to make room first, so the budget holds at the peak too. True if kept."""
        if not session.tokens:
            return False
        t0 = time.perf_counter()
        held = np.asarray(session.tokens, np.int64)
        probe = Snapshot(held, session._ring_lo, [], [], session.prompt_probs,
                         session.prompt_probs_n, 0)
        with self._lock:
            for key, s in self._snaps.items():
                if s.covers(probe):
                    self._snaps.move_to_end(key)
                    return False
        need_bytes = snapshot_bytes(session, base_n)
        if 0 <= self.limit_bytes < need_bytes:
            return False
        with self._lock:
            # Those it holds in full go first, and free their room. So does one that
            # borrows the same prefix: the reply a regenerate (or the next of n choices)
            # dropped before this one, which the client left: one of them is kept, not
            # one per reply, so that they do not push the other conversations out.
            for key in [k for k, s in self._snaps.items()
                        if probe.covers(s) or (base_n and s.base_n == base_n)]:
                del self._snaps[key]
        self._make_room(need_bytes)
        try:
            snap = take_snapshot(session, base_n)
        except MemoryError:  # a cache is an optimisation: the rewind goes on without it
            return False
        with self._lock:
            self._snaps[id(snap)] = snap
            self.saves += 1
            self.copied_bytes += snap.nbytes
        self.save_ms = 1e3 * (time.perf_counter() - t0)
        return True

    def restore_best(self, session, ids) -> int:
        """Before a prompt is evaluated: if a snapshot shares a longer (usable) prefix with
        `ids` than the session does, restore that snapshot. Returns the prefix the session
        can now keep. As Session.reuse_prefix, the last token of ids is always left to
        evaluate. The prefix the session shares with the snapshot, bit for bit (an
        agent's system prompt, before its conversation and its side requests), stays in
        place: the session rewinds only to there (on_rewind saves what it drops, if worth
        it) and gets the snapshot's positions from there."""
        want = np.asarray(ids[:max(len(ids) - 1, 0)], np.int64)
        held = np.asarray(session.tokens, np.int64)
        live = usable_prefix(session, session._ring_lo, _common_prefix(held, want))
        best, best_n = None, live
        with self._lock:
            for key, s in self._snaps.items():
                n = usable_prefix(session, s.ring_lo, _common_prefix(s.tokens, want))
                if n > best_n:
                    best, best_n = key, n
            snap = self._snaps.get(best)
            if snap is not None:
                self._snaps.move_to_end(best)
        if snap is None:
            return live
        keep = usable_prefix(session, session._ring_lo,
                             min(_common_prefix(held, snap.tokens), snap.live_n))
        if snap.base_n > keep:  # it borrows positions the rewind drops: copied in first
            grow = _prefix_bytes(session, snap.base_n)
            materialize(session, snap)
            self.copied_bytes += grow
        keep = session.rewind(keep)  # the live state's tail goes into the cache, if worth it
        t0 = time.perf_counter()
        self.restored_bytes += restore_snapshot(session, snap, keep)
        snap.live_n = snap.tokens.size  # the session is the snapshot now
        self.restores += 1
        self.restore_ms = 1e3 * (time.perf_counter() - t0)
        return best_n

    def stats(self) -> dict:
        """For /slots: what the cache holds."""
        with self._lock:
            snaps = list(self._snaps.values())
        return {"prompts": len(snaps), "tokens": sum(s.tokens.size for s in snaps),
                "bytes": sum(s.nbytes for s in snaps), "limit_bytes": self.limit_bytes}
