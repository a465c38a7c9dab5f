"""Splice a GGUF into a stub: a streamed copy that hashes as it goes, written atomically.

The layout (docs/format.md, runtime/embedded.py) is

    [stub head][pad + HEAD record][GGUF, 64 KiB aligned][stub tail][trailer]

The stub is cut where its payload archive begins, so the archive stays at the END of the
file. That matters for PyInstaller: its bootloader scans its own file backward from the end
for the archive cookie ("MEI\\014\\013\\012\\013\\016") and computes the archive start as
cookie_pos + cookie_size - package_length. Everything in the archive is relative to that
start, so inserting bytes before the archive needs no change to it, and the scan stays short
(a GGUF after the archive would be scanned through at every start). For a zip (.pyz), zip
readers locate entries relative to the end-of-central-directory record and account for any
data prepended to the archive (the self-extracting-zip rule), so inserting before the zip
needs no offset rewrite either; the trailer becomes the zip comment, so the file is still
a valid zip whose last bytes are the trailer.

What must be patched is the container around the archive: on ELF, PyInstaller puts the
archive in a `pydata` section and the section-header table follows it, so e_shoff and the
sh_offset of every section at or after the cut move by the inserted length. On Mach-O the
archive is the tail of __LINKEDIT, which is grown over the model and the trailer, and the
code signature is removed and made again (bundler/macho.py, `codesign -s -`).
"""
from __future__ import annotations

import errno
import hashlib
import os
import shlex
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass

from bundler import macho
from runtime.embedded import (GGUF_ALIGN_BYTES, HEAD_BYTES, PYI_COOKIE_BYTES,
                              PYI_COOKIE_FORMAT, PYI_COOKIE_MAGIC, BundleError, Trailer,
                              bare_stub_format, encode_head, encode_trailer,
                              lock_while_writing, part_prefix, read_trailer,
                              stub_without_model)

ZIP_EOCD_MAGIC = b"PK\005\006"
ZIP_EOCD_BYTES = 22
ZIP_COMMENT_MAX_BYTES = 65535  # a 16-bit length: the EOCD is at most this far before the end
ZIP64_LOCATOR_MAGIC = b"PK\006\007"
# PE images (and the Windows loader's file mapping of them) are limited to 4 GiB.
PE_MAX_BYTES = 4 * 1024**3 - 1
COPY_CHUNK_BYTES = 8 * 1024 * 1024
# Room to leave on the disk beyond the bundle itself (filesystem metadata, other writers).
DISK_MARGIN_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Layout:
    """Where to cut a stub and how to patch it; computed before anything is written."""
    kind: str  # "elf", "pe", "macho", "zip" (other executables: "raw")
    head: bytes  # stub bytes before the GGUF (already patched)
    tail: bytes  # stub bytes after the GGUF (already patched)


@dataclass(frozen=True)
class SpliceResult:
    path: str
    sha256: str
    gguf_offset: int
    gguf_size: int
    bundle_bytes: int  # the file's final size (a macOS bundle's includes its new signature)
    seconds: float
    signed: bool | None = None  # macOS bundles: re-signed with codesign? None: not macOS
    notes: tuple[str, ...] = ()  # what the user must know about the bundle (cli prints them)


def align_up(n: int, align: int = GGUF_ALIGN_BYTES) -> int:
    return (n + align - 1) // align * align


def executable_kind(data: bytes) -> str:
    if data[:4] == b"\x7fELF":
        return "elf"
    if data[:2] == b"MZ":
        return "pe"
    if data[:4] in (b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xcf",
                    b"\xfe\xed\xfa\xce", b"\xca\xfe\xba\xbe"):
        return "macho"
    return "raw"


def plan_exe(stub: bytes, gguf_block_bytes_fn, trailer_bytes_fn) -> Layout:
    """Cut a PyInstaller onefile executable before its archive; patch ELF/Mach-O headers.

    `gguf_block_bytes_fn(cut)` returns how many bytes will be inserted at `cut` (pad + GGUF),
    `trailer_bytes_fn(cut)` how many will follow the stub (the trailer).
    """
    kind = executable_kind(stub)
    if kind == "macho":
        # The bundle is signed anew after splicing; unsigned, the stub ends with its archive
        # (as it did before PyInstaller signed it), which is what the cut below expects.
        stub = macho.remove_signature(stub)
    # Found as the bootloader does: the last cookie magic, scanning back from the end.
    cookie_pos = stub.rfind(PYI_COOKIE_MAGIC)
    if cookie_pos < 0 or cookie_pos + PYI_COOKIE_BYTES > len(stub):
        raise BundleError("the stub is not a PyInstaller onefile executable (no archive cookie "
                          "found); build one with `chatfile stub --format exe`")
    _, pkg_bytes, *_ = struct.unpack_from(PYI_COOKIE_FORMAT, stub, cookie_pos)
    cut = cookie_pos + PYI_COOKIE_BYTES - pkg_bytes
    if not 0 < cut <= cookie_pos:
        raise BundleError(f"the stub's PyInstaller cookie is inconsistent (archive length "
                          f"{pkg_bytes} at cookie offset {cookie_pos})")
    inserted = gguf_block_bytes_fn(cut)
    data = bytearray(stub)
    if kind == "elf":
        _patch_elf(data, cut, inserted)
    elif kind == "pe":
        _check_pe(data, cut)
    elif kind == "macho":
        data = bytearray(macho.grow_linkedit(stub, cut, inserted, trailer_bytes_fn(cut)))
    return Layout(kind=kind, head=bytes(data[:cut]), tail=bytes(data[cut:]))


def _patch_elf(data: bytearray, cut: int, inserted: int) -> None:
    """Move every file offset at or after `cut` by `inserted` bytes (section headers)."""
    ei_class, ei_data = data[4], data[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        raise BundleError("the stub is a malformed ELF file (bad class or byte order)")
    e = "<" if ei_data == 1 else ">"
    if ei_class == 2:  # ELF64
        phoff, shoff = struct.unpack_from(e + "QQ", data, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(e + "HHHH", data, 0x36)
        ph_fmt, sh_off_at, sh_off_fmt, shoff_at, shoff_fmt = e + "IIQQQQQQ", 0x18, e + "Q", 0x28, e + "Q"
    else:  # ELF32
        phoff, shoff = struct.unpack_from(e + "II", data, 0x1C)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(e + "HHHH", data, 0x2A)
        ph_fmt, sh_off_at, sh_off_fmt, shoff_at, shoff_fmt = e + "IIIIIIII", 0x10, e + "I", 0x20, e + "I"
    # Loaded segments must end before the cut: the kernel maps them by file offset.
    for i in range(phnum):
        at = phoff + i * phentsize
        if at + phentsize > len(data):
            raise BundleError("the stub is a malformed ELF file (program headers past the end)")
        fields = struct.unpack_from(ph_fmt, data, at)
        if ei_class == 2:
            p_offset, p_filesz = fields[2], fields[5]
        else:
            p_offset, p_filesz = fields[1], fields[4]
        if p_filesz and p_offset < cut < p_offset + p_filesz:
            raise BundleError("the stub's archive lies inside a loaded ELF segment; cannot "
                              "insert a model there")
    if shoff >= cut:
        struct.pack_into(shoff_fmt, data, shoff_at, shoff + inserted)
    if shoff and shnum:
        if shoff + shnum * shentsize > len(data):
            raise BundleError("the stub is a malformed ELF file (section headers past the end)")
        for i in range(shnum):
            at = shoff + i * shentsize + sh_off_at
            (sh_offset,) = struct.unpack_from(sh_off_fmt, data, at)
            if sh_offset >= cut:
                struct.pack_into(sh_off_fmt, data, at, sh_offset + inserted)


def _check_pe(data: bytearray, cut: int) -> None:
    """A PE needs no patch (the archive is overlay data) unless it is Authenticode-signed."""
    if len(data) < 0x40:
        raise BundleError("the stub is a malformed PE file")
    (lfanew,) = struct.unpack_from("<I", data, 0x3C)
    if data[lfanew:lfanew + 4] != b"PE\0\0":
        raise BundleError("the stub is a malformed PE file (no PE signature)")
    opt = lfanew + 24
    (magic,) = struct.unpack_from("<H", data, opt)
    dirs = opt + (96 if magic == 0x10B else 112)
    _cert_off, cert_size = struct.unpack_from("<II", data, dirs + 4 * 8)
    if cert_size:
        raise BundleError("the stub executable is signed (Authenticode); splice into an unsigned "
                          "stub and sign the finished bundle instead")


def _zip_eocd_at(stub: bytes) -> int:
    """Where the zip's end-of-central-directory record starts in `stub`, or -1."""
    return stub.rfind(ZIP_EOCD_MAGIC, max(0, len(stub) - ZIP_COMMENT_MAX_BYTES - ZIP_EOCD_BYTES))


def plan_pyz(stub: bytes, trailer_bytes: int) -> Layout:
    """Cut a shebang + zip stub before the zip; make the trailer the zip comment."""
    eocd = _zip_eocd_at(stub)
    if eocd < 0:
        raise BundleError("the stub is not a zip application (no end-of-central-directory "
                          "record); build one with `chatfile stub --format pyz`")
    if stub.rfind(ZIP64_LOCATOR_MAGIC, max(0, eocd - 20), eocd) >= 0:
        raise BundleError("the stub is a zip64 archive, which is not supported as a stub")
    first = stub.find(b"PK\003\004")
    if first < 0 or first > eocd:
        raise BundleError("the stub zip has no entries")
    data = bytearray(stub[:eocd + ZIP_EOCD_BYTES])  # drop any old comment
    struct.pack_into("<H", data, eocd + 20, trailer_bytes)
    head = bytes(data[:first])
    if head.startswith(b"#!") and head.count(b"\n") == 1 and head.endswith(b"\n"):
        head += TRUNCATED_PYZ_LINE
    return Layout(kind="zip", head=head, tail=bytes(data[first:]))


# When a .pyz loses its end (an interrupted download), Python no longer sees a zip and
# compiles the file as a script; our code never runs. Before reading any source, Python
# looks up the encoding named on line 2, so an unknown "encoding" makes it stop with
#   SyntaxError: encoding problem: chatfile-bundle-is-incomplete-or-this-python-is-older-than-3.8
# (the same on Python 3.9-3.13) instead of "source code cannot contain null bytes". An
# intact .pyz is run from its zip, and this line is never read, except by Python 3.7 and
# older: their zipimport cannot read a zip with a comment (our trailer), so they get the
# same message, which therefore names both causes.
TRUNCATED_PYZ_LINE = b"# -*- coding: chatfile-bundle-is-incomplete-or-this-python-is-older-than-3.8 -*-\n"


def _check_gguf(path: str) -> int:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise BundleError(f"cannot read model {path}: {e.strerror or e}") from None
    if size == 0:  # (an interrupted download, or a copy that never started)
        raise BundleError(f"{path} is empty (0 bytes), not a GGUF file")
    if magic != b"GGUF":
        try:
            inner = read_trailer(path)
        except BundleError:
            inner = None
        if inner is not None:  # a bundle given as the model: say how to get its GGUF
            run = shlex.quote(path if os.path.dirname(path) else os.path.join(".", path))
            raise BundleError(f"{path} is a chatfile bundle, not a GGUF file; take its model "
                              f"out with `{run} --extract model.gguf` and bundle that")
        stub_format = bare_stub_format(path)
        if stub_format:  # `chatfile bundle stub`: the stub given as the model
            raise BundleError(stub_without_model(path, stub_format))
        raise BundleError(f"{path} is not a GGUF file (magic {magic!r}, expected b'GGUF')")
    return size


def _unnamed(e: Exception, path: str) -> str:
    """The message of a load error without the "PATH: " the GGUF reader puts in front
    (runtime.gguf.naming): ours names the file already."""
    return str(e).removeprefix(f"{path}: ")


def check_model(path: str, chat_template: str | None = None,
                template_file: str | None = None) -> None:
    """Refuse, at bundle time and not at every start of the bundle, a GGUF the runtime
    cannot run: its whole header is parsed (every tensor must lie inside the file: a
    truncated download), then the model is opened as a start of the bundle opens it, but
    without converting its weights (the quantized mode reads none), which checks the
    architecture, the tensors and their types, and its chat template (or the bundle's
    own, `chat_template`, read from `template_file`) renders a first message."""
    _check_gguf(path)
    from runtime import gguf
    try:
        gguf.read(path).close()
    except (ValueError, OSError) as e:  # GGUFError is a ValueError
        said = _unnamed(e, path)
        if said.startswith("truncated file"):  # the likeliest cause, and what to do
            said += ": the file is incomplete; download or copy it again"
        # "X is not a usable GGUF: X is too small ..." named the file twice.
        raise BundleError(said if said.startswith(f"{path} ") else
                          f"{path} is not a usable GGUF: {said}") from None
    from runtime import quants
    from runtime.chat_template import TemplateError
    from runtime.model import Model
    try:
        model = Model.load(path, mode="quant", chat_template=chat_template)
        for t in model.gguf.tensors.values():  # the quantized mode converts none of them
            quants.quantized_row_bytes(t.ggml_type, t.shape[-1] if t.shape else 1)
    except (ValueError, OSError, KeyError, IndexError) as e:  # GGUFError is a ValueError
        raise BundleError(f"chatfile cannot run {path}: {_unnamed(e, path)}") from None
    try:
        model.chat_prompt([{"role": "user", "content": "Hello"}])
    except TemplateError as e:
        if template_file:  # the user's own: they already know the flag, the file is at fault
            raise BundleError(f"chat template file {template_file} does not work with "
                              f"{path} ({e}); fix the file, or leave --chat-template out of "
                              f"--args to use the model's own") from None
        raise BundleError(f"the chat template of {path} does not work ({e}); give one that "
                          f"does with --args \"--chat-template FILE\"") from None
    finally:
        model.gguf.close()


def check_output(out_path: str, force: bool, *inputs: str) -> None:
    """Refuses an output name that cannot or must not be written, before any work: a
    directory, one of the inputs itself (--force would destroy the model), an existing
    file without --force, or a directory that cannot take it (check_output_dir)."""
    if out_path.endswith(tuple(s for s in (os.sep, os.altsep) if s)) or os.path.isdir(out_path):
        raise BundleError(f"{out_path} is a directory; give the bundle's file name with -o")
    for path in inputs:
        try:
            same = os.path.samefile(out_path, path)
        except OSError:  # out_path does not exist yet
            same = False
        if same:
            raise BundleError(f"{out_path} is the input {path} itself; write the bundle "
                              f"under another name")
    if os.path.lexists(out_path) and not force:
        raise BundleError(f"{out_path} already exists; use --force to overwrite it")
    check_output_dir(out_path)


def check_output_dir(out_path: str) -> None:
    """Refuses an output whose directory cannot take it: a file, one not writable, or one
    that does not exist. A missing one is not created: a typo in -o would leave a tree
    of new folders (`chatfile stub` made them, `chatfile bundle` refused; both refuse)."""
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):  # -o model.gguf/x.pyz
        raise BundleError(f"cannot write {out_path}: {out_dir} is a file, not a directory")
    if not os.path.isdir(out_dir):
        raise BundleError(f"the output directory {out_dir} does not exist")
    if not os.access(out_dir, os.W_OK):  # (also says so for a read-only file system)
        raise BundleError(f"cannot write {out_path}: its directory {out_dir} is not writable")


def splice(stub_path, gguf_path, out_path, *, fmt: str = "exe", args=(), title: str = "",
           force: bool = False, progress=None, chunk_bytes: int = COPY_CHUNK_BYTES,
           fsync: bool = True) -> SpliceResult:
    """Write `out_path` = stub + GGUF + trailer. Never leaves a partial file at `out_path`.

    progress(done_bytes, total_bytes) is called as the GGUF is copied.
    """
    t0 = time.perf_counter()
    stub_path, gguf_path, out_path = map(os.fspath, (stub_path, gguf_path, out_path))
    if fmt not in ("exe", "pyz"):
        raise BundleError(f"unknown format {fmt!r} (expected exe or pyz)")
    gguf_size = _check_gguf(gguf_path)
    check_output(out_path, force, gguf_path, stub_path)
    try:  # opened first: read_trailer's "cannot read nope" did not say nope is the stub
        with open(stub_path, "rb") as f:
            if read_trailer(stub_path) is not None:  # (before reading a bundle's GiBs)
                raise BundleError(f"{stub_path} already carries a model; use a bare stub")
            stub = f.read()
    except OSError as e:
        raise BundleError(f"cannot read stub {stub_path}: {e.strerror or e}") from None
    if fmt == "exe" and stub.startswith(b"#!") and _zip_eocd_at(stub) >= 0:
        # (else told it is no PyInstaller executable, and to build one)
        raise BundleError(f"the stub {stub_path} is a .pyz stub; add --format pyz to bundle "
                          "into it")

    # The trailer's length does not depend on the digest (always 64 hex digits), so the
    # whole layout is known before the GGUF is read.
    def block_bytes(cut: int) -> int:  # pad + HEAD + GGUF, inserted at the cut
        return align_up(cut + HEAD_BYTES) - cut + gguf_size

    def trailer_bytes(cut: int) -> int:
        draft = Trailer(gguf_offset=align_up(cut + HEAD_BYTES), gguf_size=gguf_size,
                        sha256="0" * 64, args=tuple(args), title=title, format=fmt)
        return len(encode_trailer(draft))

    if fmt == "exe":
        layout = plan_exe(stub, block_bytes, trailer_bytes)
    else:
        if executable_kind(stub) != "raw" or not stub.startswith(b"#!"):
            raise BundleError(f"{stub_path} is not a .pyz stub (it should start with '#!')")
        layout = plan_pyz(stub, 0)  # trailer length patched below, once the offset is known
    gguf_offset = align_up(len(layout.head) + HEAD_BYTES)
    trailer_len = trailer_bytes(len(layout.head))
    if fmt == "pyz":
        layout = plan_pyz(stub, trailer_len)
    bundle_bytes = gguf_offset + gguf_size + len(layout.tail) + trailer_len

    if layout.kind == "pe" and bundle_bytes > PE_MAX_BYTES:
        raise BundleError(
            f"a Windows executable cannot exceed 4 GiB, and this bundle would be "
            f"{bundle_bytes / 1024**3:.2f} GiB. Ship the model beside a bare stub and start it "
            "with `-m model.gguf`, or use --format pyz.")
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_dir):
        raise BundleError(f"the output directory {out_dir} does not exist")
    free_bytes = shutil.disk_usage(out_dir).free
    if free_bytes < bundle_bytes + DISK_MARGIN_BYTES:
        raise BundleError(f"not enough free disk space in {out_dir}: the bundle needs "
                          f"{_mib(bundle_bytes + DISK_MARGIN_BYTES)}, {_mib(free_bytes)} free")

    prefix = part_prefix(out_path, MKSTEMP_RANDOM_BYTES + len(PART_SUFFIX))
    _remove_stale_parts(out_dir, prefix)
    try:
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=prefix, suffix=PART_SUFFIX)
    except OSError as e:  # name the user's path, not our temporary one
        raise BundleError(f"cannot write {out_path}: {e.strerror or e}") from None
    lock = lock_while_writing(tmp)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(layout.head)
            pad = gguf_offset - len(layout.head)
            out.write(b"\0" * (pad - HEAD_BYTES))
            out.write(encode_head(gguf_offset, gguf_size, bundle_bytes))
            digest = _copy_hashing(gguf_path, out, gguf_size, chunk_bytes, progress)
            out.write(layout.tail)
            trailer = Trailer(gguf_offset=gguf_offset, gguf_size=gguf_size, sha256=digest,
                              args=tuple(args), title=title, format=fmt)
            encoded = encode_trailer(trailer)
            assert len(encoded) == trailer_len  # the layout above depended on it
            out.write(encoded)
            out.flush()
            if out.tell() != bundle_bytes:
                raise BundleError(f"internal error: wrote {out.tell()} bytes, planned "
                                  f"{bundle_bytes}")
            if fsync:
                os.fsync(out.fileno())
        signed, notes = None, ()
        if layout.kind == "macho":
            signed, notes = _codesign(tmp, out_path, trailer, fsync)
        final_bytes = os.path.getsize(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        if os.path.lexists(out_path) and not force:  # appeared while we were copying
            raise BundleError(f"{out_path} already exists; use --force to overwrite it")
        os.replace(tmp, out_path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            full = " (the disk is full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
            raise BundleError(f"could not write the bundle in {out_dir}: "
                              f"{e.strerror or e}{full}; nothing was written") from None
        raise
    finally:
        if lock is not None:
            os.close(lock)
    return SpliceResult(path=out_path, sha256=digest, gguf_offset=gguf_offset,
                        gguf_size=gguf_size, bundle_bytes=final_bytes,
                        seconds=time.perf_counter() - t0, signed=signed, notes=notes)


def _codesign(tmp: str, out_path: str, trailer: Trailer, fsync: bool):
    """Sign a macOS bundle ad hoc, as PyInstaller signed the stub: Apple Silicon runs no
    unsigned code. Without codesign (bundling on Linux or Windows), say what the receiver
    must do instead. Returns (signed, notes)."""
    tool = shutil.which("codesign")
    if tool is None:
        name = shlex.quote(os.path.basename(out_path))
        return False, (
            f"this macOS bundle is NOT code-signed (codesign is only available on macOS). "
            f"On an Apple Silicon Mac it will not start until it is signed: the receiver runs "
            f"`codesign -s - {name}` once (Intel Macs run it unsigned). A file downloaded with "
            f"a browser is also quarantined by Gatekeeper: remove that with "
            f"`xattr -d com.apple.quarantine {name}`, or right-click it and choose Open.",)
    # The identifier would default to the temporary file's name; name it after the target.
    cmd = [tool, "-s", "-", "--force", "--identifier", os.path.basename(out_path), tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise BundleError(f"could not run codesign ({tool}): {e.strerror or e}") from None
    if proc.returncode:
        message = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
        raise BundleError(f"codesign could not sign the bundle: {message}")
    # The signature now follows the trailer; the runtime must still find the same trailer
    # just before it (macho.SIGNATURE_ALIGN_BYTES). Checked here, not on the receiver's Mac.
    try:
        found = read_trailer(tmp)
    except BundleError:  # e.g. "truncated": the HEAD record is there, the trailer is not
        found = None
    # (Found behind bytes that are not the signature, it would be read with a note about
    # them at every start: not what codesign should leave.)
    if found is None or found.appended_bytes or \
            (found.gguf_offset, found.gguf_size, found.sha256) != \
            (trailer.gguf_offset, trailer.gguf_size, trailer.sha256):
        raise BundleError("after codesign the bundle's trailer is no longer where the runtime "
                          "looks for it (just before the code signature); please report this, "
                          "and use --format pyz meanwhile")
    if fsync:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return True, ()


PART_SUFFIX = ".part"
MKSTEMP_RANDOM_BYTES = 8  # the characters tempfile.mkstemp puts between prefix and suffix


def _remove_stale_parts(out_dir: str, prefix: str) -> None:
    """Delete temp files of this target that no running bundler holds a lock on."""
    try:
        import fcntl
    except ImportError:
        return
    for name in os.listdir(out_dir):
        if not (name.startswith(prefix) and name.endswith(PART_SUFFIX)):
            continue
        path = os.path.join(out_dir, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # another bundler is writing it right now
        finally:
            os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass


def _copy_hashing(src_path: str, out, size: int, chunk_bytes: int, progress) -> str:
    h = hashlib.sha256()
    done = 0
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    with open(src_path, "rb", buffering=0) as src:
        while True:
            n = src.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            out.write(view[:n])
            done += n
            if done > size:
                break
            if progress is not None:
                progress(done, size)
    if done != size:
        raise BundleError(f"{src_path} changed size while it was being copied "
                          f"({size} bytes expected, {done} read)")
    return h.hexdigest()


def _mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"
