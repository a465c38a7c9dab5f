"""The bundle trailer: the one definition of how a GGUF is found inside a chatfile bundle.

This is the door between `bundler/` (which writes bundles) and `runtime/` (which reads
them); `docs/format.md` describes the same layout in prose. A bundle is

    [stub head][pad, ending with a HEAD record][GGUF][stub tail][TRAILER]

where the GGUF starts on a 64 KiB boundary so the runtime can mmap it in place (64 KiB
is the mmap granularity on Windows and a multiple of every page size we know).

TRAILER, the last bytes of the file (of a code-signed macOS executable: the last bytes
before its code signature, which `codesign` appends after everything else; see data_end):

    payload   payload_len bytes of UTF-8 JSON (see `Trailer`)
    footer    FOOTER_FORMAT = "<IIII8s", 24 bytes:
              payload_len u32 | payload_crc32 u32 | version u32 | reserved u32 (0) |
              magic b"CHATFILE"  (the magic is the very last 8 bytes of the data)

HEAD, the 32 bytes just before the GGUF: b"CHFHEAD\\0" | gguf_offset u64 | gguf_size u64 |
bundle_bytes u64. It exists so that a bundle whose end was cut off (an interrupted copy
or download) can still say "truncated" instead of "no model": the trailer is gone then,
but the head record, near the start, survives.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shlex
import signal
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

MAGIC = b"CHATFILE"
VERSION = 1
FOOTER_FORMAT = "<IIII8s"
FOOTER_BYTES = struct.calcsize(FOOTER_FORMAT)  # 24
# A zip comment holds at most 65535 bytes and the pyz trailer lives in the zip comment.
MAX_TRAILER_BYTES = 65535
GGUF_ALIGN_BYTES = 64 * 1024

HEAD_MAGIC = b"CHFHEAD\0"
HEAD_FORMAT = "<8sQQQ"
HEAD_BYTES = struct.calcsize(HEAD_FORMAT)  # 32
# Where to look for a HEAD record when the trailer is missing: the GGUF starts right after
# the stub head, which is at most a few MiB for every stub we build.
_HEAD_SEARCH_BYTES = 64 * 1024 * 1024

_HASH_CHUNK_BYTES = 4 * 1024 * 1024

# A thin 64-bit Mach-O (the only kind bundler/macho.py writes): its LC_CODE_SIGNATURE load
# command gives the signature's file offset (dataoff, a u32 after cmd and cmdsize).
_MACHO_MAGIC_64 = b"\xcf\xfa\xed\xfe"
_MACHO_HEADER_BYTES = 32
_LC_CODE_SIGNATURE = 0x1D
# Load commands of a PyInstaller bootloader take a few KiB; read no more than this.
_MACHO_MAX_CMDS_BYTES = 64 * 1024


# PyInstaller's archive cookie (bundler/splice.py cuts a stub there), and where to look for
# it in a bare stub: near its end (on Linux, ELF section headers follow the archive).
PYI_COOKIE_MAGIC = b"MEI\014\013\012\013\016"
PYI_COOKIE_FORMAT = "!8sIIII64s"  # magic, package length, TOC offset, TOC length, pyvers, pylib
PYI_COOKIE_BYTES = struct.calcsize(PYI_COOKIE_FORMAT)
_STUB_COOKIE_SEARCH_BYTES = 1024 * 1024
# A name that only chatfile's runtime puts in a stub: in the exe's archive table of contents
# (build/chatfile.spec's datas) and in the .pyz's zip (shiv's site-packages).
_EXE_STUB_MARK = b"runtime/web/"
_PYZ_STUB_MARK = "site-packages/runtime/__main__.py"


class BundleError(ValueError):
    """A bundle is present but unusable (corrupt, truncated, or from a newer chatfile)."""


def _damaged(message: str) -> BundleError:
    """A BundleError for a bundle whose bytes are wrong (corrupt or cut short): its user
    can only get a good copy, so every such message ends saying so, in the same words."""
    return BundleError(f"{message}. Copy or download it again.")


@dataclass(frozen=True)
class Trailer:
    gguf_offset: int  # absolute byte position of the GGUF's first byte; a multiple of 64 KiB
    gguf_size: int  # exact length of the GGUF in bytes
    sha256: str  # lowercase hex digest of the GGUF bytes
    args: tuple[str, ...] = ()  # default command-line args, applied before the user's
    title: str = ""  # shown in the page title / banner; "" means "use the model name"
    format: str = "exe"  # "exe" or "pyz": how the stub was made
    extra: dict = field(default_factory=dict)  # unknown payload keys, kept for round trips
    trailer_bytes: int = 0  # length of the whole trailer (payload + footer) as read
    appended_bytes: int = 0  # bytes found after the bundle's end, ignored (see read_trailer)

    def payload(self) -> dict:
        out = dict(self.extra)
        out.update(gguf_offset=self.gguf_offset, gguf_size=self.gguf_size, sha256=self.sha256,
                   args=list(self.args), title=self.title, format=self.format)
        return out


def encode_trailer(trailer: Trailer) -> bytes:
    """The trailer bytes (JSON payload + fixed footer) to append as the file's last bytes."""
    payload = json.dumps(trailer.payload(), sort_keys=True, ensure_ascii=False,
                         separators=(",", ":")).encode("utf-8")
    out = payload + struct.pack(FOOTER_FORMAT, len(payload), zlib.crc32(payload), VERSION, 0,
                                MAGIC)
    if len(out) > MAX_TRAILER_BYTES:
        raise BundleError(f"trailer is {len(out)} bytes, more than the {MAX_TRAILER_BYTES} "
                          "allowed: shorten --args or --title (a --chat-template in --args "
                          "is carried there too)")
    return out


def encode_head(gguf_offset: int, gguf_size: int, bundle_bytes: int) -> bytes:
    return struct.pack(HEAD_FORMAT, HEAD_MAGIC, gguf_offset, gguf_size, bundle_bytes)


def write_trailer(f, trailer: Trailer) -> int:
    """Append the trailer to the open binary file `f`; return the number of bytes written."""
    data = encode_trailer(trailer)
    f.write(data)
    return len(data)


def decode_trailer(data: bytes, file_bytes: int, where: str = "bundle") -> Trailer | None:
    """Decode a trailer from the last bytes `data` of a file of `file_bytes` bytes.

    `data` must hold at least the whole trailer (callers pass the last 64 KiB). Returns None
    when the magic is absent: the file is not a bundle.
    """
    if len(data) < FOOTER_BYTES or data[-8:] != MAGIC:
        return None
    payload_len, crc, version, _reserved, _magic = struct.unpack(FOOTER_FORMAT,
                                                                 data[-FOOTER_BYTES:])
    if version != VERSION:
        raise BundleError(f"{where} has trailer format version {version}; this chatfile reads "
                          f"version {VERSION} (made by a newer chatfile?)")
    total = payload_len + FOOTER_BYTES
    if total > len(data) or total > file_bytes:
        raise _damaged(f"{where} is corrupt or truncated: its trailer claims {payload_len} "
                       "payload bytes, more than the file holds")
    payload = data[-total:-FOOTER_BYTES]
    if zlib.crc32(payload) != crc:
        raise _damaged(f"{where} is corrupt: the trailer checksum does not match")
    try:
        fields = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise _damaged(f"{where} is corrupt: unreadable trailer payload ({e})") from None
    if not isinstance(fields, dict):
        raise _damaged(f"{where} is corrupt: trailer payload is not a JSON object")
    try:
        off, size, digest = fields.pop("gguf_offset"), fields.pop("gguf_size"), fields.pop("sha256")
        args, title = fields.pop("args", []), fields.pop("title", "")
        fmt = fields.pop("format", "exe")
    except KeyError as e:
        raise _damaged(f"{where} is corrupt: trailer lacks {e.args[0]!r}") from None
    ok = (isinstance(off, int) and isinstance(size, int) and not isinstance(off, bool)
          and off >= 0 and size >= 0 and isinstance(digest, str) and len(digest) == 64
          and all(c in "0123456789abcdef" for c in digest)
          and isinstance(args, list) and all(isinstance(a, str) for a in args)
          and isinstance(title, str) and isinstance(fmt, str))
    if not ok:
        raise _damaged(f"{where} is corrupt: trailer fields have the wrong types")
    if off % GGUF_ALIGN_BYTES:
        raise _damaged(f"{where} is corrupt: GGUF offset {off} is not 64 KiB aligned")
    trailer_start = file_bytes - total
    if off + size > trailer_start:
        raise _damaged(f"{where} is truncated or corrupt: the embedded model ({size} bytes at "
                       f"offset {off}) extends past the end of the data ({trailer_start} bytes)")
    return Trailer(gguf_offset=off, gguf_size=size, sha256=digest, args=tuple(args),
                   title=title, format=fmt, extra=fields, trailer_bytes=total)


def read_trailer(path: str | os.PathLike) -> Trailer | None:
    """The trailer of the bundle at `path`, or None when `path` carries no model.

    Raises BundleError when a bundle is recognisable but damaged: a bad trailer, a GGUF
    extent past the end, a missing GGUF magic, or a HEAD record with no trailer (cut off).
    Bytes added after a whole bundle are ignored; `appended_bytes` of the result counts them.
    """
    path = os.fspath(path)
    where = f"bundle {path}"
    try:
        with open(path, "rb") as f:
            end = data_end(f, os.fstat(f.fileno()).st_size)
            tail_bytes = min(end, MAX_TRAILER_BYTES + FOOTER_BYTES)
            f.seek(end - tail_bytes)
            tail = f.read(tail_bytes)
            trailer = decode_trailer(tail, end, where)
            if trailer is None:
                head = _find_head(f, end)
                if head is None:
                    return None
                trailer = _trailer_before_appended_bytes(f, head[3], end, where)
            f.seek(trailer.gguf_offset)
            if f.read(4) != b"GGUF":
                raise _damaged(f"{where} is corrupt: no GGUF magic at offset "
                               f"{trailer.gguf_offset}")
            return trailer
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e.strerror or e}") from None


def _trailer_before_appended_bytes(f, expected: int, end: int, where: str) -> Trailer:
    """The trailer of a bundle whose HEAD record says it is `expected` bytes long, found
    where it ends although the file goes on to `end`. Bytes added at the end (a newline
    from a download tool or an editor) change nothing that a bundle reads, so it still
    runs: PyInstaller's bootloader scans back from the end for its archive, and Python's
    zip reader searches the last 64 KiB for the zip's end record, which a .pyz's trailer
    follows as the zip comment. Raises the BundleError of a damaged bundle when no trailer
    is there either."""
    if end > expected:
        tail_bytes = min(expected, MAX_TRAILER_BYTES + FOOTER_BYTES)
        f.seek(expected - tail_bytes)
        try:
            trailer = decode_trailer(f.read(tail_bytes), expected, where)
        except BundleError:
            trailer = None
        if trailer is not None:
            return dataclasses.replace(trailer, appended_bytes=end - expected)
        raise _damaged(f"{where} is corrupt: it should be {expected} bytes but is {end}, "
                       "and its trailer is missing")
    if end < expected:
        raise _damaged(f"{where} is truncated: it should be {expected} bytes but is only "
                       f"{end}; its end is missing (an interrupted copy or download?)")
    raise _damaged(f"{where} is corrupt: it has the right size ({end} bytes), but the "
                   "trailer at its end is damaged")


def data_end(f, file_bytes: int) -> int:
    """Where the bundle's own bytes end in the open file `f`: the end of the file, or, for
    a code-signed Mach-O, the start of its code signature (which follows the trailer).

    Reads the Mach-O header and load commands only (a few KiB). A header that makes no sense
    is ignored (then the file's end is used and the usual checks report the damage).
    """
    f.seek(0)
    header = f.read(_MACHO_HEADER_BYTES)
    if len(header) < _MACHO_HEADER_BYTES or header[:4] != _MACHO_MAGIC_64:
        return file_bytes
    ncmds, sizeofcmds = struct.unpack_from("<II", header, 16)
    cmds = f.read(min(sizeofcmds, _MACHO_MAX_CMDS_BYTES))
    at = 0
    for _ in range(ncmds):
        if at + 16 > len(cmds):
            break
        cmd, cmdsize, dataoff = struct.unpack_from("<III", cmds, at)
        if cmd == _LC_CODE_SIGNATURE and dataoff >= _MACHO_HEADER_BYTES + sizeofcmds:
            return min(dataoff, file_bytes)  # past the end: cut off before the signature
        if cmdsize < 8:
            break
        at += cmdsize
    return file_bytes


def _find_head(f, file_bytes: int):
    """The HEAD record (as a tuple) just before some 64 KiB boundary near the start, if any."""
    limit = min(file_bytes, _HEAD_SEARCH_BYTES)
    pos = GGUF_ALIGN_BYTES
    while pos <= limit:
        f.seek(pos - HEAD_BYTES)
        rec = f.read(HEAD_BYTES)
        if len(rec) == HEAD_BYTES and rec[:8] == HEAD_MAGIC:
            fields = struct.unpack(HEAD_FORMAT, rec)
            if fields[1] == pos:  # the record names the boundary it sits before
                return fields
        pos += GGUF_ALIGN_BYTES
    return None


def hash_range(path: str | os.PathLike, offset: int, size: int, progress=None) -> str:
    """sha256 hex digest of `size` bytes of `path` from `offset`; progress(done, total)."""
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        f.seek(offset)
        while done < size:
            chunk = f.read(min(_HASH_CHUNK_BYTES, size - done))
            if not chunk:
                raise _damaged(f"{path} is truncated: the embedded model ends after {done} "
                               f"of {size} bytes")
            h.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, size)
    return h.hexdigest()


def verify(path: str | os.PathLike, trailer: Trailer, progress=None) -> bool:
    """Re-hash the embedded GGUF and compare it with the trailer's sha256."""
    return hash_range(path, trailer.gguf_offset, trailer.gguf_size, progress) == trailer.sha256


def extract(path: str | os.PathLike, trailer: Trailer, out_path: str | os.PathLike,
            progress=None) -> str:
    """Copy the embedded GGUF to `out_path` atomically (temp file + rename); return its sha256.

    Refuses (BundleError) and leaves nothing behind when the bytes do not match the trailer.
    """
    out_path = os.fspath(out_path)
    if out_path == "-":  # the Unix habit; a ./- file would surprise, and a tty gets 0.5 GB
        raise BundleError("--extract needs a file name; standard output ('-') is not supported")
    if os.path.isdir(out_path):
        raise BundleError(f"{out_path} is a directory; give the GGUF's file name, "
                          f"e.g. {os.path.join(out_path, 'model.gguf')}")
    if os.path.lexists(out_path):  # never overwrite, least of all the bundle itself
        raise BundleError(f"{out_path} already exists; remove it or extract to another name")
    directory = os.path.dirname(os.path.abspath(out_path))
    pid_part_bytes = 12  # up to 7 digits of a pid, then ".part"
    tmp = os.path.join(directory, f"{part_prefix(out_path, pid_part_bytes)}{os.getpid()}.part")
    h = hashlib.sha256()
    try:
        dst = open(tmp, "wb")
    except OSError as e:  # name the user's path, not our temporary one
        raise BundleError(f"cannot write {out_path}: {e.strerror or e}") from None
    lock = lock_while_writing(tmp)  # `chatfile bundle` of the same name leaves it alone
    try:
        with open(path, "rb") as src, dst:
            src.seek(trailer.gguf_offset)
            done = 0
            while done < trailer.gguf_size:
                chunk = src.read(min(_HASH_CHUNK_BYTES, trailer.gguf_size - done))
                if not chunk:
                    raise _damaged(f"{path} is truncated: the embedded model ends early; "
                                   "nothing was extracted")
                h.update(chunk)
                dst.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, trailer.gguf_size)
        if h.hexdigest() != trailer.sha256:
            raise _damaged(f"{path} is corrupt: the embedded model's sha256 does not match "
                           "its trailer; nothing was extracted")
        os.replace(tmp, out_path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):  # name the user's path; a full disk is the usual one
            raise BundleError(f"cannot write {out_path}: {e.strerror or e}"
                              + (" (the disk is full)" if e.errno == errno.ENOSPC else "")
                              + "; nothing was extracted") from None
        raise
    finally:
        if lock is not None:
            os.close(lock)
    return h.hexdigest()


# The longest file name (in bytes) of the usual file systems (ext4, btrfs, xfs, tmpfs,
# NTFS and APFS count 255 characters or bytes).
NAME_MAX_BYTES = 255


def part_prefix(out_path: str, suffix_bytes: int) -> str:
    """".NAME." for the temporary file written before it is renamed to out_path, NAME
    shortened so that the prefix and `suffix_bytes` more stay within NAME_MAX_BYTES: a
    legal name of 250 bytes was refused with "File name too long" (the temporary one's)."""
    name = os.path.basename(out_path)
    while name and len(os.fsencode(f".{name}.")) + suffix_bytes > NAME_MAX_BYTES:
        name = name[:-1]
    return f".{name}."


def bare_stub_format(path: str | os.PathLike) -> str | None:
    """"exe" or "pyz" when `path` is a chatfile runtime stub that carries no model (call
    read_trailer first: a bundle is one too), else None. `chatfile info stub` said only
    "not a GGUF file: magic is b'\\x7fELF'"."""
    try:
        with open(path, "rb") as f:
            if _is_exe_stub(f):
                return "exe"
            if _is_pyz_stub(f):
                return "pyz"
    except (OSError, zipfile.BadZipFile, struct.error):
        pass
    return None


def _is_exe_stub(f) -> bool:
    """Is open file f a PyInstaller executable whose archive holds the runtime's page?
    Its cookie is searched for near the end of its data, and its table of contents read."""
    end = data_end(f, os.fstat(f.fileno()).st_size)  # (before a macOS signature)
    f.seek(max(0, end - _STUB_COOKIE_SEARCH_BYTES))
    tail_at = f.tell()
    tail = f.read(end - tail_at)
    cookie = tail.rfind(PYI_COOKIE_MAGIC)
    if not 0 <= cookie <= len(tail) - PYI_COOKIE_BYTES:
        return False
    _, pkg_bytes, toc_at, toc_bytes, _, _ = struct.unpack_from(PYI_COOKIE_FORMAT, tail, cookie)
    f.seek(max(0, tail_at + cookie + PYI_COOKIE_BYTES - pkg_bytes + toc_at))
    return _EXE_STUB_MARK in f.read(min(toc_bytes, _STUB_COOKIE_SEARCH_BYTES))


def _is_pyz_stub(f) -> bool:
    """Is open file f a zipapp (a "#!" line, then the zip) holding the runtime's __main__?"""
    f.seek(0)
    if f.read(2) != b"#!" or not zipfile.is_zipfile(f):
        return False
    with zipfile.ZipFile(f) as z:
        return _PYZ_STUB_MARK in z.namelist()


def stub_without_model(path: str, fmt: str) -> str:
    """What to say of a bare stub given where a model was expected."""
    how = f"chatfile bundle MODEL --stub {shlex.quote(path)}" + \
        (" --format pyz" if fmt == "pyz" else "")
    return (f"{path} is not a GGUF file: it is a chatfile runtime stub ({fmt}) without a "
            f"model; bundle a GGUF into it with `{how}`")


def lock_while_writing(tmp: str) -> int | None:
    """Hold an advisory lock on the temp file while it is written, so that a later run
    can tell a live temp file from one left by a killed run (kill -9 cleans up nothing)."""
    try:
        import fcntl
    except ImportError:  # Windows: no stale-file cleanup there
        return None
    lock = os.open(tmp, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return lock


def interrupt_on_termination() -> None:
    """SIGTERM and SIGHUP (a closed terminal) clean up as Ctrl-C does: a half-written file
    (a bundle, an extracted model) is removed instead of staying behind under a hidden
    temporary name. For commands that write files, not for the server."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), interrupt)
