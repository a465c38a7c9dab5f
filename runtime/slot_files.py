"""A session's state in a file and back: llama-server's slot persistence (--slot-save-path,
POST /slots/0?action=save|restore|erase; the route is runtime/server.py's).

A file holds the tokens of the session and, for each layer, the keys and values of the
positions that layer holds: 0..n-1 of a full layer, and of a sliding-window ring the
positions it still holds (Session._ring_lo onwards), as runtime/prompt_cache.py's
snapshots do. Restored, each position goes back into its slot, so the session computes
what the saving one would have computed, bit for bit.

The format is our own (llama.cpp's state files hold f16 tensors of its own layout):

    MAGIC | u32 header bytes | header (JSON) | tokens int64 | per layer k, v float32 | digest

The header names the model (model_fingerprint: its config, its tensors' names, shapes and
types, and its norm weights, so that a fine-tune of the same shapes is another model), the
tokens held and the first position the rings hold. The digest (BLAKE2b of everything
before it) catches a damaged file. A file is read and checked in full before the session
is touched: another model's, a truncated or a damaged one is a SlotFileError (a 400), and
the session goes on as it was. Written to a temporary file that is renamed into place: a
failed save (a full disk) leaves no half-written file under the name.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import stat
import struct

import numpy as np

from runtime.model import UBATCH_TOK, first_attended
from runtime.prompt_cache import Snapshot, _positions, forget, restore_snapshot
from runtime.whole_file import replacing

MAGIC = b"CHATFILE-SLOT\x00\x00\x01"  # 16 bytes; the last two: the format's version
HEADER_MAX_BYTES = 1 << 16  # a header is a few hundred bytes: more is a damaged file
DIGEST_BYTES = 32
FILENAME_MAX_BYTES = 255  # llama.cpp's fs_validate_filename, and most file systems
# Characters no slot file name may hold (llama.cpp's fs_validate_filename refuses these
# too): path separators, and what Windows refuses in a name.
FILENAME_FORBIDDEN = set('/\\:*?"<>|')


class SlotFileError(ValueError):
    """A file that cannot be restored into this session, or a name that is refused (400)."""


def check_filename(name) -> str:
    """The name of a file in the --slot-save-path directory, or SlotFileError: a plain
    name, never a path (no separator, no "..") and nothing a file system may mangle."""
    if not isinstance(name, str) or not name:
        raise SlotFileError("Invalid filename: give \"filename\", a plain file name")
    try:
        n_bytes = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
        raise SlotFileError("Invalid filename: it is not valid UTF-8") from None
    if (n_bytes > FILENAME_MAX_BYTES or ".." in name or name == "."
            or any(ch in FILENAME_FORBIDDEN or ord(ch) < 0x20 or ord(ch) == 0x7f for ch in name)
            or name != name.strip() or name.endswith(".")):
        raise SlotFileError(f"Invalid filename: {name!r} must be a plain file name, no "
                            f"path (no '/', '\\' or '..'), at most {FILENAME_MAX_BYTES} bytes")
    return name


def model_fingerprint(model) -> str:
    """What identifies the model a state belongs to, whatever the context: its config,
    its tensors (names, shapes, types) and its norm weights, which a fine-tune changes.
    (Not the weights themselves: hashing 500 MB at every save would take seconds.)"""
    h = hashlib.blake2b(digest_size=16)
    cfg = dataclasses.asdict(model.cfg)
    tensors = sorted([t.name, list(t.shape), t.ggml_type] for t in model.gguf.tensors.values())
    h.update(json.dumps([cfg, tensors], sort_keys=True, default=str).encode())
    for w in [model.output_norm, *(L.attn_norm for L in model.layers)]:
        h.update(np.ascontiguousarray(w, np.float32).tobytes())
    return h.hexdigest()


def _long_rope(session) -> bool:
    """Does the session rotate with LongRoPE's long factors (chosen by its n_ctx)? Keys
    rotated with the other factors would not fit it."""
    c = session.cfg
    return bool(session.model.rope_long is not None and c.rope_ctx_orig
                and session.n_ctx > c.rope_ctx_orig)


def _held_from(cfg, ring_lo: int, il: int) -> int:
    """The first position layer il holds in a file: ring_lo for a sliding-window layer
    (0 unless the saving session's ring had wrapped), 0 for a full one."""
    return ring_lo if cfg.is_swa(il) else 0


def _layer_bytes(cfg, n_pos: int) -> tuple[int, int]:
    return (4 * cfg.n_head_kv * cfg.head_dim * n_pos, 4 * cfg.n_head_kv * n_pos * cfg.head_dim_v)


def _payload_bytes(cfg, n: int, ring_lo: int) -> int:
    return 8 * n + sum(sum(_layer_bytes(cfg, n - _held_from(cfg, ring_lo, il)))
                       for il in range(cfg.n_layer))


# ---- what a name in the directory is ------------------------------------------------

def _not_regular(mode: int) -> str | None:
    """What a file that is not a regular one is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return ("a directory" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")


def check_save_target(name: str, path: str) -> None:
    """SlotFileError if `path` exists (through a symbolic link too) and is not a regular
    file. The save's rename would replace a named pipe, a socket or a device node by the
    file (never blocking nor writing through it, but someone else's); over a directory
    it failed as a 500, as a full disk does: each is the client's choice of name."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # not there (the usual case), or a dangling link: the rename replaces it
        return
    what = _not_regular(mode)
    if what:
        raise SlotFileError(f"{name} is {what} in the --slot-save-path directory: give "
                            f"another file name")


def _open_regular(path: str, name: str):
    """`path` opened for reading, or SlotFileError if it is not a regular file. Opened
    without blocking, then checked on the descriptor (no race with a rename between a
    check and the open): a plain open() of a named pipe waits for a writer forever, and
    the request's thread with it."""
    nonblock = getattr(os, "O_NONBLOCK", 0)  # (Windows has no FIFOs to wait on)
    flags = os.O_RDONLY | nonblock | sum(getattr(os, f, 0) for f in (
        "O_CLOEXEC", "O_NOCTTY", "O_BINARY"))  # (a terminal device never becomes ours)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno != errno.ENXIO:  # ENXIO: a Unix socket's name, which no open() takes
            raise
        try:
            what = _not_regular(os.stat(path).st_mode)
        except OSError:
            what = None
        if not what:
            raise
        raise SlotFileError(f"{name} is {what} in the --slot-save-path directory, not a "
                            f"slot file") from None
    try:
        what = _not_regular(os.fstat(fd).st_mode)
        if what:
            raise SlotFileError(f"{name} is {what} in the --slot-save-path directory, not a "
                                f"slot file")
        if nonblock:
            os.set_blocking(fd, True)  # (no effect on a regular file's reads; as open() would)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# ---- save ---------------------------------------------------------------------------

def save(session, path) -> int:
    """Write the session's state to `path` (atomically: a temporary file in the same
    directory, renamed over it once complete); returns the bytes written. Run it where
    the session does not change meanwhile (the engine's worker). OSError if the write
    fails, and then nothing is left under `path` that was not there before."""
    n, lo = len(session.tokens), session._ring_lo
    header = json.dumps({
        "model": model_fingerprint(session.model), "model_name": session.model.name,
        "arch": session.cfg.arch, "n_tokens": n, "ring_lo": lo,
        "long_rope": _long_rope(session), "n_ctx": session.n_ctx,
    }).encode()
    with replacing(path, private=True) as f:
        digest = hashlib.blake2b(digest_size=DIGEST_BYTES)

        def put(data) -> None:
            digest.update(data)
            f.write(data)
        put(MAGIC + struct.pack("<I", len(header)) + header)
        put(np.asarray(session.tokens, "<i8").tobytes())
        for il in range(len(session.k)):
            first = _held_from(session.cfg, lo, il)
            for cache, axis in ((session.k[il], 2), (session.v[il], 1)):
                # a layer at a time: no copy of the whole state (94 MiB at 4k of Qwen)
                put(np.ascontiguousarray(_positions(cache, first, n, axis), "<f4").data)
        f.write(digest.digest())
        f.flush()
        os.fsync(f.fileno())  # the data on disk before the name points at it
        size = f.tell()
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    return size


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable (a crash right after a save keeps the new file)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # not every file system syncs a directory: the file is written anyway
        pass
    finally:
        os.close(fd)


# ---- restore ------------------------------------------------------------------------

def read(path, session) -> tuple[Snapshot, int]:
    """Read and check a file for `session` without touching it: (the state to restore,
    and the bytes read). SlotFileError for a file that is not a slot file of this
    model, is damaged, or does not fit this session, and for a name that is no regular
    file (a named pipe is refused at once, not waited on); OSError when it cannot be read."""
    name = os.path.basename(path)
    head = len(MAGIC) + 4
    with _open_regular(path, name) as f:
        start = f.read(head + HEADER_MAX_BYTES)
        if not start.startswith(MAGIC[:-2]):
            raise SlotFileError(f"{name} is not a chatfile slot file")
        if start[:len(MAGIC)] != MAGIC:
            raise SlotFileError(f"{name} was saved in another version of the slot file format")
        if len(start) < head:
            raise SlotFileError(f"{name} is truncated (its header is cut)")
        (header_bytes,) = struct.unpack_from("<I", start, len(MAGIC))
        try:
            h = json.loads(start[head:head + header_bytes])  # a longer header: cut, fails
            n, lo = int(h["n_tokens"]), int(h["ring_lo"])
            fingerprint, long_rope = str(h["model"]), bool(h["long_rope"])
        except (ValueError, KeyError, TypeError, OverflowError):
            raise SlotFileError(f"{name} is damaged or truncated (its header does not "
                                f"read)") from None
        if fingerprint != model_fingerprint(session.model):
            raise SlotFileError(f"{name} was saved by another model ({h.get('model_name', '?')}, "
                                f"{h.get('arch', '?')}), not by {session.model.name}")
        cfg = session.cfg
        # A ring holds window + UBATCH_TOK positions whatever the context (a session
        # without rings holds n_ctx, fewer): a file holds no more, and fits any ring.
        if not (0 <= n and 0 <= lo <= first_attended(n, cfg.swa_window)
                and (not cfg.swa_window or n - lo <= cfg.swa_window + UBATCH_TOK)):
            raise SlotFileError(f"{name} is damaged (it holds {n} tokens from position {lo})")
        want = head + header_bytes + _payload_bytes(cfg, n, lo) + DIGEST_BYTES
        size = os.fstat(f.fileno()).st_size
        if size != want:  # checked before reading it all: a huge file is not read
            raise SlotFileError(f"{name} is damaged or truncated: {size} bytes where its "
                                f"header says {want}")
        f.seek(0)
        data = f.read()
    body, digest = data[:-DIGEST_BYTES], data[-DIGEST_BYTES:]
    if hashlib.blake2b(body, digest_size=DIGEST_BYTES).digest() != digest:
        raise SlotFileError(f"{name} is damaged: its contents do not match its checksum")
    _check_fits(name, session, n, lo, long_rope)
    pos = head + header_bytes
    tokens = np.frombuffer(data, "<i8", n, pos).astype(np.int64)
    if n and (tokens.min() < 0 or tokens.max() >= session.model.n_vocab):
        raise SlotFileError(f"{name} is damaged: a token id is outside the vocabulary")
    pos += 8 * n
    ks, vs = [], []
    for il in range(cfg.n_layer):
        first = _held_from(cfg, lo, il)
        m = n - first
        k_bytes, v_bytes = _layer_bytes(cfg, m)
        k = np.frombuffer(data, "<f4", k_bytes // 4, pos).reshape(cfg.n_head_kv, cfg.head_dim, m)
        v = np.frombuffer(data, "<f4", v_bytes // 4, pos + k_bytes).reshape(
            cfg.n_head_kv, m, cfg.head_dim_v)
        pos += k_bytes + v_bytes
        ks.append(k)
        vs.append(v)
    snap = Snapshot(tokens, lo, ks, vs, [], 0,
                    len(data) - head - header_bytes - DIGEST_BYTES)
    return snap, len(data)


def _check_fits(name: str, session, n: int, lo: int, long_rope: bool) -> None:
    """SlotFileError if a state of n tokens whose rings start at lo cannot go on in this
    session (its context may differ from the saving one's)."""
    if n > session.n_ctx:
        raise SlotFileError(f"{name} holds {n} tokens, more than this server's context of "
                            f"{session.n_ctx} tokens: start it with --ctx {n} or more")
    if long_rope != _long_rope(session):
        raise SlotFileError(f"{name} was saved with a context on the other side of the "
                            f"model's original {session.cfg.rope_ctx_orig} tokens (LongRoPE "
                            f"rotates keys differently there): start the server with the "
                            f"--ctx it was saved with")
    if lo and not session.ring:
        # This context is too small for a ring: every sliding-window layer keeps all its
        # positions, but the file no longer has the first ones (a later rewind would read
        # them).
        raise SlotFileError(f"{name} was saved after its sliding-window cache had moved "
                            f"past position {lo}; this server's context ({session.n_ctx}) "
                            f"is too small to take it: start it with a larger --ctx")


def restore(session, snap: Snapshot) -> int:
    """Make the session hold `snap` (from read()); returns the tokens it holds. What it
    held goes where a rewind sends it (runtime/prompt_cache.py keeps it, with --cache-ram)."""
    session.rewind(0)
    restore_snapshot(session, snap)
    return len(session.tokens)


def erase(session, prompt_cache=None) -> int:
    """Forget what the session holds, without keeping it in the prompt cache (an erase is
    an erase); returns how many tokens it held. Snapshots that borrow the session's
    prefix (a regenerate's earlier reply) are of the erased conversation: they go too."""
    n = len(session.tokens)
    forget(session, prompt_cache)
    return n
