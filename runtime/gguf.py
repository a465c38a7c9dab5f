"""GGUF parsing: a header of key/values and tensor infos, then aligned tensor data.

Layout (little-endian), as llama.cpp writes it:

    magic "GGUF" | version u32 (2 or 3) | n_tensors u64 | n_kv u64
    n_kv      × (key: string, value_type u32, value)
    n_tensors × (name: string, n_dims u32, ne[n_dims] u64, ggml_type u32, offset u64)
    padding to `general.alignment` (default 32)
    tensor data; each tensor at data_start + offset

A string is a u64 byte length followed by UTF-8 bytes. `ne[0]` is the fastest-moving
dimension, so a ggml tensor with ne = [n_embd, n_vocab] is a NumPy array of shape
[n_vocab, n_embd].

The GGUF may start at byte `offset` of a bigger file (a bundle puts it in the middle of
an executable), so every position below is relative to that offset. The file is
memory-mapped once; tensor bytes are zero-copy views into that map (held under a read
lease where the program asked for one: runtime/file_lease.py). Every count, length
and extent is checked against the bytes actually present before anything is allocated,
because a header that lies must cost an error message, not gigabytes.
"""
from __future__ import annotations

import mmap
import os
import struct
import weakref
from dataclasses import dataclass, field

import numpy as np
# `gguf` is gguf-py, llama.cpp's own Python package: only its constants (type ids, block
# sizes) are used; the parsing is this module's.
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from runtime import file_lease
from runtime.errors import GGUFError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32  # bytes, when general.alignment does not say
MAX_DIMS = 4
MAX_KEY_BYTES = 65536
# A scalar's encoded size decides how much room an array of it needs; a string needs at
# least its 8-byte length.
_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.FLOAT64: "<d",
    GGUFValueType.BOOL: "<?",
}
_NUMPY_DTYPES = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2", GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
    GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT32: "<f4", GGUFValueType.FLOAT64: "<f8",
    GGUFValueType.BOOL: "<u1",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # NumPy order: reversed ggml ne, so shape[-1] is the row length
    ggml_type: int
    data_offset: int  # absolute byte position in the file
    n_bytes: int

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class GGUFFile:
    path: str
    offset: int  # where the GGUF starts inside `path`
    size: int  # bytes from `offset` to the end of the last tensor (or of the header)
    version: int
    metadata: dict
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    _map: mmap.mmap | None = field(default=None, repr=False)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a zero-copy uint8 view into the memory map."""
        t = self.tensors[name]
        if self._map is None:
            raise ValueError(f"{self.path} was closed: tensor {name!r} cannot be read")
        return np.frombuffer(self._map, dtype=np.uint8, count=t.n_bytes, offset=t.data_offset)

    def release(self, name: str) -> None:
        """Drop the tensor's pages from this process's resident set (they stay in the page
        cache and come back on the next read). Used after a tensor was converted at load,
        so that the mapped file does not count twice in RSS."""
        t, mm = self.tensors[name], self._map
        if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = t.data_offset // mmap.PAGESIZE * mmap.PAGESIZE
        stop = min(len(mm), -(-(t.data_offset + t.n_bytes) // mmap.PAGESIZE) * mmap.PAGESIZE)
        if stop > start:
            try:
                mm.madvise(mmap.MADV_DONTNEED, start, stop - start)
            except OSError:  # only advice: e.g. refused for locked memory, or in a sandbox
                pass

    def close(self) -> None:
        """Let go of the map. It is unmapped, and its lease given back, once no view made
        by raw() is left (at once when there is none); the header's data stays."""
        self._map = None


def type_name(ggml_type: int) -> str:
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return f"unknown type {ggml_type}"


_U64 = struct.Struct("<Q")


class _Cursor:
    """Reads little-endian values from a buffer, never past `end`.

    The buffer is the mmap itself, not a memoryview of it: slicing an mmap gives bytes
    directly, which makes the 300k-string vocabularies of real models parse about a
    fifth faster (0.06 instead of 0.075 s per array on Qwen).
    """

    def __init__(self, buf, pos: int, end: int, base: int):
        self.buf, self.pos, self.end, self.base = buf, pos, end, base

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.end:
            raise GGUFError(
                f"truncated file: {what} needs {n} bytes at offset {self.pos - self.base}, "
                f"but only {max(self.end - self.pos, 0)} remain")

    def scalar(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return self.scalar("<I", what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", what)

    def string(self, what: str, limit: int | None = None) -> str:
        n = self.u64(f"length of {what}")
        if limit is not None and n > limit:
            raise GGUFError(f"{what} is {n} bytes long, more than the limit of {limit}")
        self.need(n, what)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        # Tokens of byte-level vocabularies are valid UTF-8; a stray byte must not stop
        # the load, so it becomes U+FFFD.
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str, depth: int = 0):
        try:
            vtype = GGUFValueType(vtype)
        except ValueError:
            raise GGUFError(f"{what} has unknown value type {vtype}") from None
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype == GGUFValueType.ARRAY:
            if depth > 0:
                raise GGUFError(f"{what} is a nested array, which GGUF readers do not support")
            etype = self.u32(f"element type of {what}")
            count = self.u64(f"element count of {what}")
            try:
                etype = GGUFValueType(etype)
            except ValueError:
                raise GGUFError(f"{what} is an array of unknown value type {etype}") from None
            if etype == GGUFValueType.ARRAY:
                raise GGUFError(f"{what} is a nested array, which GGUF readers do not support")
            if etype == GGUFValueType.STRING:
                # Every string takes at least its 8-byte length: a lying count fails here.
                self.need(count * 8, f"{count} strings of {what}")
                return self._strings(count, what)
            dtype = np.dtype(_NUMPY_DTYPES[etype])
            self.need(count * dtype.itemsize, f"{count} elements of {what}")
            arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
            self.pos += count * dtype.itemsize
            if etype == GGUFValueType.BOOL:
                return [bool(x) for x in arr]
            return arr.tolist()
        return self.scalar(_SCALAR_FORMATS[vtype], what)

    def _strings(self, count: int, what: str) -> list[str]:
        out = [""] * count
        buf, pos, end = self.buf, self.pos, self.end
        unpack = _U64.unpack_from
        for i in range(count):
            if pos + 8 > end:
                self.pos = pos
                raise GGUFError(f"truncated file: string {i} of {what} at offset {pos - self.base}")
            (n,) = unpack(buf, pos)
            pos += 8
            if pos + n > end:
                self.pos = pos
                raise GGUFError(
                    f"string {i} of {what} claims {n} bytes at offset {pos - self.base}, past the end")
            out[i] = buf[pos:pos + n].decode("utf-8", "replace")
            pos += n
        self.pos = pos
        return out


def naming(path: str, e: GGUFError) -> GGUFError:
    """`e` with the file's name in front, unless its message has it already: a message such
    as "tensor 'output.weight' ... extends past the end of the file" must say which file,
    when the user has several models (or bundles) at hand."""
    message = str(e)
    return e if path in message else type(e)(f"{path}: {message}")


def read(path: str | os.PathLike, offset: int = 0, size: int | None = None,
         vocab_only: bool = False) -> GGUFFile:
    """Parse the GGUF that starts at byte `offset` of `path` and spans at most `size` bytes.

    With vocab_only, tensor infos are still validated (they are cheap) but callers are
    expected not to touch tensor data.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise GGUFError(f"cannot open {path}: {e.strerror}") from None
    # The lease first (taken only when the program armed it, runtime/file_lease.py), then
    # the size: from here on a copy over the file waits for us to stop instead of changing
    # it under the map. vocab_only reads the header at once and needs none.
    leased = not vocab_only and file_lease.hold(fd, path)
    try:
        end = _extent(fd, path, offset, size)
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    except BaseException:
        if leased:
            file_lease.let_go(fd)
        else:
            os.close(fd)
        raise
    if leased:
        # The lease lives while fd is open, so fd lives as long as the map: through the
        # load, and in quant mode at every step after it (Model._load closes the rest).
        unlease = weakref.finalize(mm, file_lease.let_go, fd)
        unlease.atexit = False  # the process's end lets go of everything anyway
    else:
        os.close(fd)
        unlease = None
    try:
        return _parse(path, mm, offset, end)
    except GGUFError as e:
        error = naming(path, e)
    except (OverflowError, MemoryError, struct.error) as e:  # defensive: should be unreachable
        error = GGUFError(f"malformed GGUF header in {path}: {e}")
    # On errors the map is left to the garbage collector: views made while parsing may
    # still hold it, and closing it under them raises BufferError. Its lease goes now:
    # nothing will read the file again.
    if unlease is not None:
        unlease()
    raise error from None


def _extent(fd: int, path: str, offset: int, size: int | None) -> int:
    """Where the GGUF at `offset` (of `size` bytes, or to the end) ends in the file."""
    file_bytes = os.fstat(fd).st_size
    if offset < 0 or offset > file_bytes:
        raise GGUFError(f"GGUF offset {offset} is outside the {file_bytes}-byte file {path}")
    end = file_bytes if size is None else offset + size
    if end > file_bytes:
        raise GGUFError(f"GGUF at offset {offset} with size {size} runs past the end of {path}")
    if end - offset < 24:
        raise GGUFError(f"{path} is too small to be a GGUF file ({end - offset} bytes)")
    return end


def _parse(path: str, mm: mmap.mmap, offset: int, end: int) -> GGUFFile:
    cur = _Cursor(mm, offset, end, offset)
    cur.need(4, "magic")
    magic = bytes(mm[offset:offset + 4])
    cur.pos += 4
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{path} is not a GGUF file: magic is {magic!r}, expected {GGUF_MAGIC!r}")
    version = cur.u32("version")
    if version not in (2, 3):
        if version & 0xFFFF0000 and not version & 0xFFFF:
            raise GGUFError(f"{path} is a big-endian GGUF, which is not supported")
        raise GGUFError(f"unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("key/value count")
    # Each key/value needs at least 8 (key length) + 4 (type) + 1 bytes; each tensor info
    # at least 8 + 4 + 8 + 4 + 8. A count that cannot fit is a lie; refuse before looping.
    remaining_bytes = end - cur.pos
    if n_kv * 13 > remaining_bytes:
        raise GGUFError(
            f"key/value count {n_kv} cannot fit in the {remaining_bytes} bytes that remain")
    if n_tensors * 32 > remaining_bytes:
        raise GGUFError(
            f"tensor count {n_tensors} cannot fit in the {remaining_bytes} bytes that remain")

    metadata: dict = {}
    for i in range(n_kv):
        key = cur.string(f"key {i}", limit=MAX_KEY_BYTES)
        if key in metadata:
            raise GGUFError(f"duplicate key {key!r}")
        vtype = cur.u32(f"value type of {key!r}")
        metadata[key] = cur.value(vtype, f"value of {key!r}")

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(f"general.alignment must be a power of two, got {alignment!r}")

    infos = []
    for i in range(n_tensors):
        name = cur.string(f"name of tensor {i}", limit=MAX_KEY_BYTES)
        n_dims = cur.u32(f"dimension count of tensor {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFError(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        ne = [cur.u64(f"dimension {d} of tensor {name!r}") for d in range(n_dims)]
        ggml_type = cur.u32(f"type of tensor {name!r}")
        rel_offset = cur.u64(f"data offset of tensor {name!r}")
        infos.append((name, ne, ggml_type, rel_offset))

    data_start = offset + _align(cur.pos - offset, alignment)
    if data_start > end and n_tensors:
        raise GGUFError("truncated file: tensor data would start past the end of the file")

    tensors: dict[str, TensorInfo] = {}
    data_end = min(data_start, end)
    for name, ne, ggml_type, rel_offset in infos:
        if name in tensors:
            raise GGUFError(f"duplicate tensor name {name!r}")
        try:
            block_elems, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise GGUFError(f"tensor {name!r} has unknown ggml type {ggml_type}") from None
        n_elements = 1
        for d in ne:
            if d == 0:
                raise GGUFError(f"tensor {name!r} has a zero dimension: {ne}")
            n_elements *= d
        if ne[0] % block_elems:
            raise GGUFError(
                f"tensor {name!r}: row length {ne[0]} is not a multiple of the "
                f"{type_name(ggml_type)} block size {block_elems}")
        n_bytes = n_elements // block_elems * block_bytes
        if rel_offset % alignment:
            raise GGUFError(f"tensor {name!r} data offset {rel_offset} is not aligned to {alignment}")
        start = data_start + rel_offset
        if start + n_bytes > end:
            raise GGUFError(
                f"tensor {name!r} ({type_name(ggml_type)}, {n_bytes} bytes at data offset "
                f"{rel_offset}) extends past the end of the file, which is incomplete: "
                "download or copy it again")
        tensors[name] = TensorInfo(name, tuple(reversed(ne)), ggml_type, start, n_bytes)
        data_end = max(data_end, start + n_bytes)

    spans = sorted((t.data_offset, t.data_offset + t.n_bytes, t.name) for t in tensors.values())
    for (a0, a1, an), (b0, _, bn) in zip(spans, spans[1:]):
        if b0 < a1:
            raise GGUFError(f"tensors {an!r} and {bn!r} overlap in the file")

    return GGUFFile(path=path, offset=offset, size=data_end - offset, version=version,
                    metadata=metadata, tensors=tensors, _map=mm)


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment
