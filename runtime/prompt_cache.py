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
Copied in once for all that borrow it: a Segment, shared and never changed, which a
snapshot references (Snapshot.prefix) and holds only its own positions past it.
Regenerates' replies, and conversations after one system prompt, are kept each at the
cost of its own tokens; a segment still equal to the live session's
positions (PromptCache._live) is what a later save or segment goes on from.

Snapshots live in an LRU under a byte budget, room made before the copy; a segment's
bytes count once, whoever references it, and it is freed with the last of them. One
whose tokens are a prefix of another's (that holds as much: ring and prompt logprobs) is
redundant, and only the longer is kept. Of the replies one request's n choices leave,
only the latest is kept (PromptCache.request_started), so that they do not push the
other conversations out.
"""
from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from runtime.model import _span, _store, first_attended
from runtime.weights import ram_available_bytes

# Rewinds that drop fewer tokens are not saved: speculation drops its rejected drafts (at
# most 32 tokens, speculate.PREDICTION_DRAFT_MAX_TOK) on every step, and re-reading 63
# tokens costs under a second even at ~87 tok/s (Qwen 0.5B at 13k tokens of context).
MIN_SAVE_TOK = 64
# At most this many saved states, whatever the bytes: every prompt is compared with each
# of them, and a state that comes back is one of the last few conversations. A small
# model's states are small (a tiny one's, a few kB: 1 GiB would hold thousands).
MAX_SNAPSHOTS = 32
# A saved state is restored only when it gives this many more tokens than the live session
# keeps: a restore writes back the state's tokens past what the two share (thousands, for
# a long conversation), and every prompt of a chat template shares its first tokens with
# most states. Fewer than 16 tokens are read again in about 0.1 s.
MIN_RESTORE_GAIN_TOK = 16

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


class Segment:
    """Positions lo..n-1 of the full layers (None for a ring's), copied once from the live
    session for all the snapshots that went on from its positions 0..n-1; `parent` holds
    positions 0..lo-1 (None: lo is 0). Never changed after it is made."""
    __slots__ = ("parent", "lo", "n", "k", "v", "nbytes", "__weakref__")

    def __init__(self, parent, n: int, k: list, v: list, nbytes: int):
        self.parent, self.lo, self.n = parent, parent.n if parent is not None else 0, n
        self.k, self.v, self.nbytes = k, v, nbytes

    def chain(self) -> list:
        """This segment and its ancestors, position 0's first."""
        seg, out = self, []
        while seg is not None:
            out.append(seg)
            seg = seg.parent
        return out[::-1]


def _segments_bytes(segments) -> int:
    """The bytes of these segments and their ancestors, each counted once."""
    seen = {}
    for seg in segments:
        while seg is not None and id(seg) not in seen:
            seen[id(seg)] = seg
            seg = seg.parent
    return sum(seg.nbytes for seg in seen.values())


def _used_bytes(snaps, segments=()) -> int:
    """What the snapshots hold: their own bytes, and each segment they reference once."""
    return (sum(s.nbytes for s in snaps)
            + _segments_bytes([s.prefix for s in snaps if s.prefix is not None]
                              + [g for g in segments if g is not None]))


@dataclass
class Snapshot:
    tokens: np.ndarray      # int64 [n]: the tokens held
    ring_lo: int            # Session._ring_lo: the first position the rings hold
    k: list                 # per layer, keys [n_head_kv, hd, n - lo] of positions lo..n-1
    v: list                 # per layer, values [n_head_kv, n - lo, hd_v]
    prompt_probs: list      # Session.prompt_probs and prompt_probs_n
    prompt_probs_n: int
    nbytes: int             # its own: the segments it references are counted apart
    # > 0: full layers hold positions base_n.. only; 0..base_n-1 are still the live
    # session's (it kept them when the rewind dropped the rest), copied in (materialize)
    # before the session drops them. A regenerate copies the reply, not the prompt again.
    base_n: int = 0
    # The live session's full layers still hold positions 0..live_n-1 as they were when
    # this was taken, bit for bit: it has not rewound below live_n since (PromptCache
    # lowers it on every rewind), and evals write only past the tokens held. A restore
    # keeps those in place and writes back only the rest. At least base_n.
    live_n: int = 0
    # Not None: full layers hold positions prefix.n.. only; 0..prefix.n-1 are the shared
    # segment's (base_n is 0 then).
    prefix: Segment | None = None
    # Not 0: the reply of one of the n choices of that request (PromptCache.request_started).
    choice_of: int = 0

    @property
    def own_n(self) -> int:
        """The first position of a full layer that k and v hold."""
        return self.prefix.n if self.prefix is not None else self.base_n

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


def take_snapshot(session, base_n: int = 0, prefix: Segment | None = None) -> Snapshot:
    """A copy of the session's state for the tokens it holds (at least one); with base_n,
    its full layers' positions from base_n only (see Snapshot.base_n); with a prefix (a
    segment equal to the session's first prefix.n positions, prefix.n >= base_n), from
    there, and nothing borrowed."""
    n = len(session.tokens)
    own_n = prefix.n if prefix is not None else base_n
    ks, vs = [], []
    for il in range(len(session.k)):
        lo = _copy_from(session, session._ring_lo, own_n, il)
        ks.append(_positions(session.k[il], lo, n, axis=2))
        vs.append(_positions(session.v[il], lo, n, axis=1))
    return Snapshot(np.asarray(session.tokens, np.int64), session._ring_lo, ks, vs,
                    list(session.prompt_probs), session.prompt_probs_n,
                    snapshot_bytes(session, own_n), 0 if prefix is not None else base_n,
                    live_n=base_n, prefix=prefix)


def take_segment(session, n: int, parent: Segment | None = None) -> Segment:
    """The full layers' positions parent.n..n-1 (0..n-1 without a parent) copied from the
    session, which holds them and whose first parent.n positions are the parent's."""
    lo = parent.n if parent is not None else 0
    ks, vs = [], []
    for il in range(len(session.k)):
        k = v = None
        if not _is_ring(session, il):
            k = _positions(session.k[il], lo, n, axis=2)
            v = _positions(session.v[il], lo, n, axis=1)
            k.flags.writeable = v.flags.writeable = False  # shared: nobody may change it
        ks.append(k)
        vs.append(v)
    return Segment(parent, n, ks, vs, _prefix_bytes(session, n) - _prefix_bytes(session, lo))


def materialize(session, snap: Snapshot, parent: Segment | None = None) -> Segment:
    """Make a snapshot that borrows positions 0..base_n-1 from the session (which still
    holds them) stand alone: they are copied into a segment it references (going on from
    `parent`, a segment the session's first positions still equal)."""
    snap.prefix = take_segment(session, snap.base_n, parent)
    snap.base_n = 0
    return snap.prefix


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
    chain = snap.prefix.chain() if snap.prefix is not None else []
    for il in range(len(session.k)):
        lo = _copy_from(session, snap.ring_lo, kept_n, il)
        # the pieces of a full layer: the shared segments', then its own (a ring's: its own)
        pieces = [(seg.lo, seg.k[il], seg.v[il]) for seg in chain if seg.k[il] is not None]
        pieces.append((_copy_from(session, snap.ring_lo, snap.own_n, il), snap.k[il], snap.v[il]))
        for start, k, v in pieces:
            skip = max(lo - start, 0)
            if skip >= k.shape[2]:
                continue
            _store(session.k[il], start + skip, k[:, :, skip:], axis=2)
            _store(session.v[il], start + skip, v[:, skip:], axis=1)
            written_bytes += k[:, :, skip:].nbytes + v[:, skip:].nbytes
    # last: a restore that fails halfway leaves the session holding its kept_n tokens (a
    # ring's slots past them overwritten: the engine's error path rewinds to 0)
    session._ring_lo = snap.ring_lo
    session.prompt_probs = list(snap.prompt_probs)
    session.prompt_probs_n = snap.prompt_probs_n
    session.tokens = snap.tokens.tolist()
    return written_bytes


def forget(session, cache=None) -> None:
    """Rewind the session to nothing without saving what it held (a state not trusted
    after a failed eval, or erased), and drop the saved states that borrow from it."""
    hook, session.on_rewind = session.on_rewind, None
    try:
        session.rewind(0)
    finally:
        session.on_rewind = hook
        if cache is not None:
            cache.drop_borrowed()


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
        # A segment whose positions the live session's full layers still hold, bit for
        # bit (a weak reference: it lives as long as snapshots reference it).
        self._live = None
        self._request = self._choice_of = 0  # see request_started
        session.on_rewind = self.on_rewind

    def request_started(self, follower: bool = False) -> None:
        """The engine begins to serve a request; a follower is the next of the n choices
        of the one before it, and what its rewind saves is that choice's reply. Of one
        request's replies only the latest is kept (they share its prompt and would push
        the other conversations out); those of separate requests (regenerates) all are."""
        if not follower:
            self._request += 1
        self._choice_of = self._request if follower else 0

    def _live_segment(self, most_n: int | None = None) -> Segment | None:
        """The longest segment (of at most most_n positions) the live session still holds."""
        seg = self._live() if self._live is not None else None
        while seg is not None and most_n is not None and seg.n > most_n:
            seg = seg.parent
        return seg

    def _set_live(self, seg: Segment | None) -> None:
        self._live = weakref.ref(seg) if seg is not None else None

    def _shared_live(self, seg: Segment | None) -> int:
        """How many first positions of `seg`'s the live session holds, bit for bit."""
        live = self._live_segment()
        ancestors = {id(g): g for g in (live.chain() if live is not None else [])}
        while seg is not None and id(seg) not in ancestors:
            seg = seg.parent
        return seg.n if seg is not None else 0

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
        self._set_live(self._live_segment(n_kept))

    def _materialize_below(self, session, n_kept: int) -> None:
        """Snapshots borrowing more than n_kept positions get them from the session: one
        segment for all that borrow the same prefix, going on from the longest segment
        the session still holds (made just before, for a shorter prefix, or restored)."""
        with self._lock:
            borrowed = [(k, s) for k, s in self._snaps.items() if s.base_n > n_kept]
        for base_n in sorted({s.base_n for _, s in borrowed}):
            keys = [k for k, s in reversed(borrowed) if s.base_n == base_n]  # most recent first
            parent = self._live_segment(base_n)
            reuse = parent is not None and parent.n == base_n
            grow = 0 if reuse else _prefix_bytes(session, base_n) - _prefix_bytes(
                session, parent.n if parent is not None else 0)
            while keys and not self._make_room(grow, keep=keys, segments=[parent]):
                with self._lock:  # even alone they would not fit: the least recent go
                    self._snaps.pop(keys.pop(), None)
            if not keys:
                continue
            try:
                seg = parent if reuse else take_segment(session, base_n, parent)
            except MemoryError:  # a cache is an optimisation: the rewind goes on without them
                with self._lock:
                    for key in keys:
                        self._snaps.pop(key, None)
                continue
            with self._lock:
                for key in keys:
                    s = self._snaps.get(key)
                    if s is not None:
                        s.prefix, s.base_n = seg, 0
            self._set_live(seg)
            self.copied_bytes += grow

    def _make_room(self, nbytes: int, keep=(), segments=()) -> bool:
        """Evict the least recently used (not those in `keep`) until what the cache holds,
        nbytes more and `segments` (to be referenced) fit the budget. False, and nothing
        evicted, if they never would."""
        if self.limit_bytes < 0:
            return True
        with self._lock:
            kept = [self._snaps[k] for k in keep if k in self._snaps]
            if _used_bytes(kept, segments) + nbytes > self.limit_bytes:
                return False
            for key in [k for k in self._snaps if k not in keep]:
                if _used_bytes(self._snaps.values(), segments) + nbytes <= self.limit_bytes:
                    break
                del self._snaps[key]
        return True

    def drop_borrowed(self) -> None:
        """The session was rewound to nothing without on_rewind (forget): drop what
        borrows from what it held, and nothing is shared with it any more."""
        with self._lock:
            for key in [k for k, s in self._snaps.items() if s.base_n]:
                del self._snaps[key]
            for s in self._snaps.values():
                s.live_n = 0
            self._live = None

    def save(self, session, base_n: int = 0) -> bool:
        """Keep a snapshot of the session (borrowing its first base_n positions, or
        referencing a segment the session still holds, if one holds as many), unless one
        holds it already or it is larger than the budget; evicts the least recently used
        to make room first, so the budget holds at the peak too. True if kept."""
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
        prefix = self._live_segment()
        if prefix is None or prefix.n < base_n:
            prefix = None  # borrowing costs nothing now, and may never be copied
        need_bytes = snapshot_bytes(session, prefix.n if prefix is not None else base_n)
        if 0 <= self.limit_bytes < need_bytes + _segments_bytes([prefix] if prefix else []):
            return False
        with self._lock:
            # Those it holds in full go first, and free their room. So does the reply an
            # earlier choice of the same request left (see request_started).
            for key in [k for k, s in self._snaps.items() if probe.covers(s)
                        or (self._choice_of and s.choice_of == self._choice_of)]:
                del self._snaps[key]
        self._make_room(need_bytes, segments=[prefix])
        with self._lock:
            while len(self._snaps) >= MAX_SNAPSHOTS:
                self._snaps.popitem(last=False)  # the least recently used
        try:
            snap = take_snapshot(session, base_n, prefix)
        except MemoryError:  # a cache is an optimisation: the rewind goes on without it
            return False
        snap.choice_of = self._choice_of
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
                if n > best_n and n >= live + MIN_RESTORE_GAIN_TOK:
                    best, best_n = key, n
            snap = self._snaps.get(best)
            if snap is not None:
                self._snaps.move_to_end(best)
        if snap is None:
            return live
        same_n = max(snap.live_n, self._shared_live(snap.prefix))
        keep = usable_prefix(session, session._ring_lo,
                             min(_common_prefix(held, snap.tokens), same_n))
        if snap.base_n > keep:  # it borrows positions the rewind drops: copied in first
            self._materialize_below(session, keep)
            if snap.base_n:  # it did not fit the cache (it goes on without it)
                parent = self._live_segment(snap.base_n)
                self.copied_bytes += materialize(session, snap, parent).nbytes
        keep = session.rewind(keep)  # the live state's tail goes into the cache, if worth it
        t0 = time.perf_counter()
        self.restored_bytes += restore_snapshot(session, snap, keep)
        snap.live_n = snap.tokens.size  # the session is the snapshot now
        live = self._live_segment()  # at most keep positions now: the longer is kept
        if snap.prefix is not None and (live is None or live.n < snap.prefix.n):
            self._set_live(snap.prefix)
        self.restores += 1
        self.restore_ms = 1e3 * (time.perf_counter() - t0)
        return best_n

    def stats(self) -> dict:
        """For /slots: what the cache holds."""
        with self._lock:
            snaps = list(self._snaps.values())
            used_bytes = _used_bytes(snaps)
        return {"prompts": len(snaps), "tokens": sum(s.tokens.size for s in snaps),
                "bytes": used_bytes, "limit_bytes": self.limit_bytes}
