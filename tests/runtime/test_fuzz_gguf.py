"""GGUF fuzzing: every damaged file ends in a clear GGUFError or a valid load.

A GGUF arrives from a download or the middle of an executable; a flipped bit or a
hostile header must cost the user one clear message, never a traceback, a hang, or
gigabytes of RAM. Each case mutates one of the fixture GGUFs and runs the full
`Model.load(path, mode="f32")` (header, tokenizer, every weight dequantized), then checks:

* the outcome is a valid load or a `runtime.GGUFError` (nothing else escapes);
* it took under `MAX_CASE_S` (1 s);
* it allocated under the file's size + 64 MB (see `_Meter` for how that is measured).

Cases:
* `test_truncation_at_every_boundary`: a cut after every structural field (magic,
  version, counts, each key, value type and value, each tensor info field, the data
  start, the end of each tensor's data), found by this file's own header parser.
* targeted tests for the classic lies: huge counts, string lengths past the end, dimension
  products that overflow u64, n_dims 0 / 5, overlapping / unaligned / past-the-end tensor
  offsets, unknown tensor and value types, nested arrays, general.alignment 0 / 3 / huge,
  and metadata values of the wrong type.
* `test_random_mutations`: CHATFILE_FUZZ_CASES (default 1000) seeded random mutations
  (byte flips in header / key-values / tensor infos / data, hostile integers in every
  count/length/dimension/offset/type field, truncation, and metadata rewrites). Case i
  draws from `random.Random(f"{seed}:{i}")`, so any one case is rerun with
  CHATFILE_FUZZ_SEED=S CHATFILE_FUZZ_ONLY=i.

Long mode: CHATFILE_FUZZ_CASES=100000 python3 -m pytest -q tests/runtime/test_fuzz_gguf.py
"""
from __future__ import annotations

import functools
import gc
import math
import os
import random
import signal
import struct
import time
import tracemalloc
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from runtime.errors import GGUFError
from runtime.model import Model
from tests.conftest import FIXTURES, MODELS

# -- limits and knobs -------------------------------------------------------------------

MAX_CASE_S = 1.0
MAX_EXTRA_BYTES = 64 << 20  # on top of the file's own size (its pages may be mapped in)
HANG_GUARD_S = 20.0  # a case still running after this is interrupted and reported as a hang
N_CASES = int(os.environ.get("CHATFILE_FUZZ_CASES", "1000"))
SEED = int(os.environ.get("CHATFILE_FUZZ_SEED", "20240508"))
ONLY = os.environ.get("CHATFILE_FUZZ_ONLY")  # "17" or "17,240": rerun just these cases

# Four architectures and three block types, plus a 151936-token vocabulary for big string
# arrays (vocab-only: its full load always ends in "token_embd.weight is missing", after
# the tokenizer has been built from the mutated metadata).
MODEL_FILES = [
    MODELS / "tiny-llama-q8_0.gguf",     # llama, Q8_0
    MODELS / "tiny-gemma3-q4_k_m.gguf",  # gemma3, Q4_K/Q6_K, q/k norms
    MODELS / "tiny-mixtral-q8_0.gguf",   # llama with experts (3-d tensors)
    MODELS / "tiny-phi3-q4_k_m.gguf",    # phi3, fused qkv and gate/up
]
VOCAB_FILE = FIXTURES / "tokenizer" / "ggml-vocab-qwen2.gguf"
# The vocab file costs ~0.5 s a case (150k strings parsed and tokenized), so it gets a
# smaller share of the random cases to keep CI's cases near 30 s.
VOCAB_WEIGHT = 0.025

# -- GGUF value types and a parser of our own (independent of runtime.gguf) --------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_SCALAR_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
               BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}
U64_MAX = 2**64 - 1


@dataclass
class Field:
    """One fixed-size integer of the header that a mutation can overwrite."""
    pos: int
    fmt: str  # "<I" or "<Q"
    role: str  # version, n_tensors, n_kv, strlen, vtype, etype, count, ndims, ne, ttype, toffset
    label: str


@dataclass
class KV:
    key: bytes
    vtype: int
    value: object  # bytes for strings, list for arrays, a number otherwise
    etype: int | None = None
    raw: bytes | None = None  # the original encoding; None once mutated


@dataclass
class TInfo:
    name: bytes
    ne: list
    ggml_type: int
    offset: int


@dataclass
class Layout:
    path: Path
    data: bytes
    version: int
    kvs: list
    tinfos: list
    alignment: int
    data_start: int
    header_end: int  # end of the last tensor info (before padding)
    kv_end: int  # end of the last key/value = start of the tensor infos
    fields: list = field(default_factory=list)
    boundaries: list = field(default_factory=list)  # (position, label)
    tensor_spans: list = field(default_factory=list)  # (start, end, name) absolute


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def bytes_(self, n: int) -> bytes:
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b


@functools.lru_cache(maxsize=None)
def layout(path: Path) -> Layout:
    """Parses a (valid) fixture, recording every field position and boundary."""
    data = path.read_bytes()
    r = _Reader(data)
    fields, bounds = [], []
    assert r.bytes_(4) == b"GGUF"
    bounds.append((4, "after magic"))

    def fld(fmt, role, label):
        fields.append(Field(r.pos, fmt, role, label))
        v = r.take(fmt)
        bounds.append((r.pos, f"after {label}"))
        return v

    version = fld("<I", "version", "version")
    n_tensors = fld("<Q", "n_tensors", "tensor count")
    n_kv = fld("<Q", "n_kv", "key/value count")

    def string(label):
        n = fld("<Q", "strlen", f"length of {label}")
        s = r.bytes_(n)
        bounds.append((r.pos, f"after {label}"))
        return s

    kvs = []
    for i in range(n_kv):
        start = r.pos
        key = string(f"key {i}")
        k = key.decode()
        vtype = fld("<I", "vtype", f"value type of {k}")
        etype = None
        if vtype == STRING:
            value = string(f"value of {k}")
        elif vtype == ARRAY:
            etype = fld("<I", "etype", f"element type of {k}")
            count = fld("<Q", "count", f"element count of {k}")
            value = []
            for j in range(count):
                if etype == STRING:
                    # Record the length fields of a few elements only: 150k would be noise.
                    if j < 4 or j == count // 2 or j == count - 1:
                        value.append(string(f"element {j} of {k}"))
                    else:
                        n = r.take("<Q")
                        value.append(r.bytes_(n))
                else:
                    value.append(r.take(_SCALAR_FMT[etype]))
            bounds.append((r.pos, f"after value of {k}"))
        else:
            value = r.take(_SCALAR_FMT[vtype])
            bounds.append((r.pos, f"after value of {k}"))
        kvs.append(KV(key, vtype, value, etype, raw=data[start:r.pos]))
    kv_end = r.pos
    alignment = 32
    for kv in kvs:
        if kv.key == b"general.alignment":
            alignment = kv.value
    tinfos = []
    for i in range(n_tensors):
        name = string(f"name of tensor {i}")
        nm = name.decode()
        n_dims = fld("<I", "ndims", f"n_dims of {nm}")
        ne = [fld("<Q", "ne", f"ne[{d}] of {nm}") for d in range(n_dims)]
        ggml_type = fld("<I", "ttype", f"type of {nm}")
        offset = fld("<Q", "toffset", f"offset of {nm}")
        tinfos.append(TInfo(name, ne, ggml_type, offset))
    header_end = r.pos
    data_start = _align(header_end, alignment)
    bounds.append((data_start, "data start"))
    spans = []
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
    for t in tinfos:
        blk, size = GGML_QUANT_SIZES[GGMLQuantizationType(t.ggml_type)]
        n_bytes = math.prod(t.ne) // blk * size
        s = data_start + t.offset
        spans.append((s, s + n_bytes, t.name.decode()))
        bounds.append((s + n_bytes, f"end of data of {t.name.decode()}"))
    return Layout(path, data, version, kvs, tinfos, alignment, data_start, header_end, kv_end,
                  fields, bounds, sorted(spans))


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def encode_value(vtype: int, v, etype: int | None = None) -> bytes:
    if vtype == STRING:
        return struct.pack("<Q", len(v)) + v
    if vtype == ARRAY:
        return (struct.pack("<IQ", etype, len(v))
                + b"".join(encode_value(etype, x) for x in v))
    return struct.pack(_SCALAR_FMT[vtype], v)


def encode_kv(kv: KV) -> bytes:
    if kv.raw is not None:
        return kv.raw
    return (struct.pack("<Q", len(kv.key)) + kv.key + struct.pack("<I", kv.vtype)
            + encode_value(kv.vtype, kv.value, kv.etype))


def serialize(lay: Layout, kvs=None, tinfos=None, alignment=None, data_section=None,
              version=None) -> bytes:
    """A GGUF from (possibly changed) parts; by default the tensor data is the original
    data section, re-padded so that tensor offsets keep their meaning."""
    kvs = lay.kvs if kvs is None else kvs
    tinfos = lay.tinfos if tinfos is None else tinfos
    out = [b"GGUF", struct.pack("<IQQ", lay.version if version is None else version,
                                len(tinfos), len(kvs))]
    out += [encode_kv(kv) for kv in kvs]
    for t in tinfos:
        out.append(struct.pack("<Q", len(t.name)) + t.name + struct.pack("<I", len(t.ne)))
        out.append(struct.pack(f"<{len(t.ne)}Q", *t.ne) + struct.pack("<IQ", t.ggml_type, t.offset))
    head = b"".join(out)
    pad_to = alignment if isinstance(alignment, int) and 0 < alignment < 1 << 20 else lay.alignment
    if tinfos:  # vocab-only files end right after their key/values
        head += b"\0" * (_align(len(head), pad_to) - len(head))
    body = lay.data[lay.data_start:] if data_section is None else data_section
    return head + body


def with_field(data: bytes, f: Field, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(f.fmt, b, f.pos, value)
    return bytes(b)


# -- running one case and measuring it --------------------------------------------------


class _Hang(BaseException):
    """Raised by the SIGALRM guard; a BaseException so no `except Exception` swallows it."""


def _read_status_kb(name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise KeyError(name)


def _can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _read_status_kb("VmHWM")
        return True
    except OSError:
        return False


_RSS_OK = _can_reset_peak_rss()


class _Meter:
    """Peak extra memory of one case, two ways.

    * Peak RSS: writing "5" to /proc/self/clear_refs resets the kernel's high-water mark
      (VmHWM) to the current RSS; VmHWM after the case minus VmRSS before it is what the
      case added at its worst moment. This counts every byte actually touched, including
      C allocations tracemalloc cannot see (BLAS, regex), and the mapped pages of the
      file itself (hence the budget of file size + 64 MB). glibc serves allocations above
      32 MB with fresh mmaps, so a breach of the budget always shows up here, even if
      smaller freed blocks get reused.
    * tracemalloc peak: every Python and NumPy allocation, including ones never touched
      (np.empty of a lying size). It slows string-heavy parsing ~13x (4.6 s for the
      qwen2 vocab), so it runs only for the tiny models, not for the vocab file.
    """

    def __init__(self, trace: bool):
        self.trace = trace
        self.rss_extra_bytes = 0
        self.traced_peak_bytes = 0

    def __enter__(self):
        # Tracing stays on across cases (starting and stopping it costs ~10 ms a case);
        # the peak is reset per case and measured above what was already traced.
        if self.trace:
            if not tracemalloc.is_tracing():
                tracemalloc.start()
            self._traced0 = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
        elif tracemalloc.is_tracing():
            tracemalloc.stop()
        if _RSS_OK:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._rss0_kb = _read_status_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        if _RSS_OK:
            self.rss_extra_bytes = max(0, _read_status_kb("VmHWM") - self._rss0_kb) * 1024
        if self.trace:
            self.traced_peak_bytes = max(0, tracemalloc.get_traced_memory()[1] - self._traced0)
        return False


@pytest.fixture(autouse=True)
def _stop_tracing_after_each_test():
    gc.collect()  # garbage of earlier tests must not be collected inside a measured case
    yield
    if tracemalloc.is_tracing():
        tracemalloc.stop()


@dataclass
class Outcome:
    desc: str
    error: BaseException | None
    elapsed_s: float  # wall clock, reported
    cpu_s: float  # CPU time of the process, checked against MAX_CASE_S
    rss_extra_bytes: int
    traced_peak_bytes: int
    file_bytes: int

    @property
    def kind(self) -> str:
        return "load" if self.error is None else type(self.error).__name__

    def problems(self, what: str = "all") -> list[str]:
        """Broken promises: what="errors" (the exception type and message), "bounds"
        (time, memory, hang) or "all"."""
        out = []
        if what in ("all", "errors"):
            if self.error is not None and not isinstance(self.error, (GGUFError, _Hang)):
                out.append(f"raised {type(self.error).__name__}: {str(self.error)[:200]}")
            if isinstance(self.error, GGUFError) and not str(self.error).strip():
                out.append("GGUFError with an empty message")
        if what == "errors":
            return out
        # CPU time, not wall time: other test processes share the 2 CI cores, and a
        # runaway loop burns CPU either way (a true hang is caught by HANG_GUARD_S).
        if self.cpu_s > MAX_CASE_S:
            out.append(f"took {self.cpu_s:.2f} s of CPU (limit {MAX_CASE_S} s)")
        if isinstance(self.error, _Hang):
            out.append(f"hung: {self.error}")
        budget = self.file_bytes + MAX_EXTRA_BYTES
        for what, n in (("peak RSS", self.rss_extra_bytes), ("traced", self.traced_peak_bytes)):
            if n > budget:
                out.append(f"{what} +{n >> 20} MB over the {budget >> 20} MB budget")
        return out


def run_case(path: Path, desc: str, trace: bool) -> Outcome:
    error = None
    old = signal.signal(signal.SIGALRM, _raise_hang)
    signal.setitimer(signal.ITIMER_REAL, HANG_GUARD_S)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        with _Meter(trace) as meter:
            try:
                model = Model.load(path, mode="f32")
                del model
            except _Hang as e:
                error = e
            except Exception as e:  # noqa: BLE001 - classifying what escapes is the point
                error = e
        if error is not None:
            # Drop the frames: they hold the parsed metadata (150k strings for the vocab
            # file), which would pile up across cases and be freed by a later case's GC.
            error.__traceback__ = None
    finally:
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return Outcome(desc, error, elapsed, cpu, meter.rss_extra_bytes, meter.traced_peak_bytes,
                   path.stat().st_size)


def _raise_hang(signum, frame):
    raise _Hang(f"still running after {HANG_GUARD_S} s")


def run_bytes(tmp_path: Path, name: str, data: bytes, desc: str, trace: bool = True) -> Outcome:
    p = tmp_path / name
    p.write_bytes(data)
    try:
        return run_case(p, desc, trace)
    finally:
        p.unlink()  # the load's mmap (if any) keeps its pages; unlinking is safe


def _is_vocab(lay: Layout) -> bool:
    return lay.path == VOCAB_FILE


def _assert_clean(outcomes: list[Outcome], what: str = "all") -> None:
    bad = [(o, p) for o in outcomes for p in [o.problems(what)] if p]
    if bad:
        lines = [f"{o.desc}: {'; '.join(p)}" for o, p in bad[:30]]
        pytest.fail(f"{len(bad)} of {len(outcomes)} cases broke the contract:\n" + "\n".join(lines))


def _assert_gguferror(o: Outcome) -> None:
    assert isinstance(o.error, GGUFError), f"{o.desc}: expected GGUFError, got {o.kind}: {o.error}"
    assert not o.problems(), f"{o.desc}: {o.problems()}"


ALL_FILES = MODEL_FILES + [VOCAB_FILE]


# -- the harness itself -------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_parser_round_trips_the_fixture(path):
    # The mutations below are only meaningful if this parser sees the file as it is.
    lay = layout(path)
    assert serialize(lay) == lay.data
    assert lay.tensor_spans == [] or lay.tensor_spans[-1][1] == len(lay.data)


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.name)
def test_fixture_loads_cleanly_within_limits(tmp_path, path):
    o = run_bytes(tmp_path, "ok.gguf", layout(path).data, f"{path.name} unchanged")
    assert o.error is None, o.error
    assert not o.problems()


# -- truncation at every structural boundary ---------------------------------------------


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_truncation_at_every_boundary(tmp_path, path):
    lay = layout(path)
    cuts = sorted({(pos, label) for pos, label in lay.boundaries if pos < len(lay.data)})
    cuts += [(0, "empty file"), (2, "inside magic"), (lay.header_end + 1, "inside padding")]
    assert len(cuts) > 20
    # Peak RSS only: a cut file holds less than the whole one, and tracemalloc would
    # double the time of these ~1700 parses (the random cases trace, and cut too).
    outcomes = [run_bytes(tmp_path, "cut.gguf", lay.data[:pos],
                          f"{path.name} cut at {pos} ({label})", trace=False)
                for pos, label in cuts]
    _assert_clean(outcomes)
    # Nothing is missing except at the very end, so no cut may load.
    loaded = [o.desc for o in outcomes if o.error is None]
    assert not loaded, loaded


# -- targeted lies -----------------------------------------------------------------------

LLAMA = MODEL_FILES[0]
MIXTRAL = MODEL_FILES[2]


def _fields(lay: Layout, role: str, contains: str = "") -> list[Field]:
    return [f for f in lay.fields if f.role == role and contains in f.label]


HUGE = [2**64 - 1, 2**63, 2**63 - 1, 2**32, 2**40]


@pytest.mark.parametrize("value", HUGE)
@pytest.mark.parametrize("role", ["n_tensors", "n_kv", "count", "strlen"])
def test_huge_counts_and_lengths(tmp_path, role, value):
    lay = layout(LLAMA)
    outcomes = [run_bytes(tmp_path, "c.gguf", with_field(lay.data, f, value),
                          f"{f.label} = {value}") for f in _fields(lay, role)[:12]]
    assert outcomes
    for o in outcomes:
        _assert_gguferror(o)


def test_huge_string_count_in_big_vocab(tmp_path):
    lay = layout(VOCAB_FILE)
    f = _fields(lay, "count", "tokenizer.ggml.tokens")[0]
    for value in (2**61, 151936 * 2, 151937):
        _assert_gguferror(run_bytes(tmp_path, "v.gguf", with_field(lay.data, f, value),
                                    f"{f.label} = {value}", trace=False))


def test_string_length_one_past_the_end(tmp_path):
    lay = layout(LLAMA)
    for f in _fields(lay, "strlen")[:40]:
        remaining = len(lay.data) - (f.pos + 8)
        _assert_gguferror(run_bytes(tmp_path, "s.gguf", with_field(lay.data, f, remaining + 1),
                                    f"{f.label} = remaining + 1"))


@pytest.mark.parametrize("ne", [[2**32, 2**32], [2**63, 4], [2**62 * 4 // 4, 2**10],
                                [256, 2**64 - 1]])
def test_dimension_product_overflows_u64(tmp_path, ne):
    lay = layout(LLAMA)
    tinfos = list(lay.tinfos)
    i = next(i for i, t in enumerate(tinfos) if len(t.ne) == 2 and t.ggml_type == 8)
    tinfos[i] = replace(tinfos[i], ne=ne)
    _assert_gguferror(run_bytes(tmp_path, "d.gguf", serialize(lay, tinfos=tinfos),
                                f"{tinfos[i].name!r} ne = {ne}"))


@pytest.mark.parametrize("path", [LLAMA, MIXTRAL], ids=lambda p: p.name)
@pytest.mark.parametrize("n_dims", [0, 5, 2**32 - 1])
def test_bad_dimension_count(tmp_path, path, n_dims):
    lay = layout(path)
    for f in _fields(lay, "ndims")[:6]:
        _assert_gguferror(run_bytes(tmp_path, "n.gguf", with_field(lay.data, f, n_dims),
                                    f"{f.label} = {n_dims}"))


def test_n_dims_5_with_a_well_formed_fifth_dimension(tmp_path):
    # Not just a lying count: a tensor info that really has five dimensions.
    lay = layout(LLAMA)
    tinfos = [replace(t, ne=t.ne + [1] * (5 - len(t.ne))) if i == 0 else t
              for i, t in enumerate(lay.tinfos)]
    _assert_gguferror(run_bytes(tmp_path, "n5.gguf", serialize(lay, tinfos=tinfos), "5 dims"))


def test_tensor_offsets_that_overlap_are_unaligned_or_past_the_end(tmp_path):
    lay = layout(LLAMA)
    offs = _fields(lay, "toffset")
    second = lay.tinfos[1].offset
    size = len(lay.data)
    cases = [(offs[0], second, "overlap: same offset as the next tensor"),
             (offs[1], lay.tinfos[0].offset, "overlap: same offset as the first"),
             (offs[1], second + 32, "overlap: inside the neighbour"),
             (offs[0], lay.tinfos[0].offset + 1, "unaligned by 1"),
             (offs[0], lay.tinfos[0].offset + 16, "unaligned by 16"),
             (offs[-1], size, "past the end"),
             (offs[-1], size - lay.data_start, "starting exactly at the end"),
             (offs[-1], 2**64 - 32, "past the end, near 2**64"),
             (offs[-1], 2**63, "2**63")]
    for f, value, what in cases:
        _assert_gguferror(run_bytes(tmp_path, "o.gguf", with_field(lay.data, f, value),
                                    f"{f.label} = {value} ({what})"))


@pytest.mark.parametrize("ggml_type", [4, 5, 31, 36, 42, 1000, 2**31, 2**32 - 1])
def test_unknown_tensor_type(tmp_path, ggml_type):
    lay = layout(LLAMA)
    f = _fields(lay, "ttype")[0]
    _assert_gguferror(run_bytes(tmp_path, "t.gguf", with_field(lay.data, f, ggml_type),
                                f"{f.label} = {ggml_type}"))


@pytest.mark.parametrize("ggml_type", [0, 1, 2, 12, 14, 15, 24, 28, 30, 39])
def test_other_known_tensor_type(tmp_path, ggml_type):
    # A real type with the wrong size: the data no longer fits its slot, or the type is
    # one the runtime cannot dequantize; either way an error, or a load if it happens to fit.
    lay = layout(LLAMA)
    for f in _fields(lay, "ttype")[:4]:
        o = run_bytes(tmp_path, "t.gguf", with_field(lay.data, f, ggml_type), f"{f.label} = {ggml_type}")
        assert not o.problems(), f"{o.desc}: {o.problems()}"


@pytest.mark.parametrize("vtype", [13, 14, 255, 2**32 - 1])
def test_unknown_value_type(tmp_path, vtype):
    lay = layout(LLAMA)
    for f in _fields(lay, "vtype")[:6] + _fields(lay, "etype"):
        _assert_gguferror(run_bytes(tmp_path, "v.gguf", with_field(lay.data, f, vtype),
                                    f"{f.label} = {vtype}"))


def test_nested_arrays(tmp_path):
    lay = layout(LLAMA)
    # in place: an array whose element type says "array"
    for f in _fields(lay, "etype"):
        _assert_gguferror(run_bytes(tmp_path, "a.gguf", with_field(lay.data, f, ARRAY),
                                    f"{f.label} = ARRAY"))
    # well formed: a real array of arrays
    kvs = lay.kvs + [KV(b"test.nested", ARRAY, [], ARRAY)]
    body = struct.pack("<Q", 11) + b"test.nested" + struct.pack("<IIQ", ARRAY, ARRAY, 2)
    body += (struct.pack("<IQ", U32, 1) + struct.pack("<I", 7)) * 2
    raw_kv = replace(kvs[-1], raw=body)
    _assert_gguferror(run_bytes(tmp_path, "a2.gguf", serialize(lay, kvs=lay.kvs + [raw_kv]),
                                "well-formed nested array"))


@pytest.mark.parametrize("vtype,value", [(U32, 0), (U32, 3), (U32, 48), (U64, 2**63),
                                         (U32, 2**31), (U32, 2**32 - 1), (I32, -32),
                                         (STRING, b"32"), (F32, 32.0), (BOOL, 0)])
def test_bad_alignment(tmp_path, vtype, value):
    lay = layout(LLAMA)
    kvs = lay.kvs + [KV(b"general.alignment", vtype, value)]
    _assert_gguferror(run_bytes(tmp_path, "al.gguf", serialize(lay, kvs=kvs, alignment=value),
                                f"general.alignment = {value!r} ({vtype=})"))


def _relayout(lay: Layout, alignment: int) -> bytes:
    """The same model with every tensor moved to a multiple of `alignment`."""
    tinfos, chunks, pos = [], [], 0
    for (s, e, name), t in zip(lay.tensor_spans, sorted(lay.tinfos, key=lambda t: t.offset)):
        pos = _align(pos, alignment)
        chunks.append(b"\0" * (pos - sum(len(c) for c in chunks)) + lay.data[s:e])
        tinfos.append(replace(t, offset=pos))
        pos += e - s
    kvs = lay.kvs + [KV(b"general.alignment", U32, alignment)]
    return serialize(lay, kvs=kvs, tinfos=tinfos, alignment=alignment, data_section=b"".join(chunks))


@pytest.mark.parametrize("alignment", [64, 4096])
def test_valid_other_alignment_loads_the_same_model(tmp_path, alignment):
    # The control for test_bad_alignment: a legal alignment must load, with the same logits.
    import numpy as np
    lay = layout(LLAMA)
    p = tmp_path / "a.gguf"
    p.write_bytes(_relayout(lay, alignment))
    ids = [1, 20, 30, 40]
    np.testing.assert_array_equal(Model.load(p, mode="f32").logits(ids),
                                  Model.load(LLAMA, mode="f32").logits(ids))


def _set_kv(lay: Layout, key: bytes, vtype: int, value, etype=None) -> list:
    return [KV(key, vtype, value, etype) if kv.key == key else kv for kv in lay.kvs]


# Metadata values of the wrong type, range or presence, for keys the loader and the
# tokenizer read. The contract is only "a valid load or a clear GGUFError": some of these
# are harmless (an out-of-range special token id is ignored, as llama.cpp does).
METADATA_CASES = [
    (b"general.architecture", U32, 7, None),
    (b"general.architecture", STRING, b"llama\0", None),
    (b"llama.block_count", STRING, b"2", None),
    (b"llama.block_count", U32, 0, None),
    (b"llama.block_count", U64, 2**63, None),
    (b"llama.block_count", I32, -1, None),
    (b"llama.block_count", ARRAY, [2, 3], U32),
    pytest.param(b"llama.embedding_length", F32, 256.0, None),
    (b"llama.embedding_length", U32, 255, None),
    (b"llama.attention.head_count", U32, 0, None),
    (b"llama.attention.head_count_kv", U32, 3, None),
    (b"llama.feed_forward_length", U32, 2**31, None),
    (b"llama.rope.dimension_count", U32, 65, None),
    (b"llama.rope.dimension_count", U32, 2**32 - 2, None),
    (b"llama.rope.freq_base", STRING, b"10000", None),
    (b"llama.attention.layer_norm_rms_epsilon", STRING, b"x", None),
    (b"llama.context_length", STRING, b"256", None),
    (b"tokenizer.ggml.scores", ARRAY, [b"a"] * 512, STRING),
    (b"tokenizer.ggml.bos_token_id", U32, 2**32 - 1, None),
    (b"tokenizer.ggml.eos_token_id", I32, -5, None),
    (b"tokenizer.ggml.unknown_token_id", U64, 2**64 - 1, None),
    pytest.param(b"tokenizer.ggml.model", STRING, b"llamb", None),
    pytest.param(b"tokenizer.ggml.model", STRING, b"bert", None),
    pytest.param(b"tokenizer.ggml.model", U32, 1, None),
    pytest.param(b"tokenizer.ggml.tokens", ARRAY, [], STRING),
    pytest.param(b"tokenizer.ggml.tokens", STRING, b"abc", None),
    pytest.param(b"tokenizer.ggml.scores", ARRAY, [1.0, 2.0], F32),
    pytest.param(b"tokenizer.ggml.token_type", ARRAY, [1, 2], I32),
    pytest.param(b"tokenizer.ggml.token_type", ARRAY, [b"a"] * 512, STRING),
    pytest.param(b"tokenizer.ggml.tokens", ARRAY, [1, 2, 3], U32),
    pytest.param(b"tokenizer.ggml.tokens", U64, 0, None),
    pytest.param(b"tokenizer.ggml.scores", I8, 2, None),
    pytest.param(b"tokenizer.ggml.token_type", F32, float("inf"), None),
    pytest.param(b"tokenizer.ggml.pre", BOOL, 1, None),
    pytest.param(b"tokenizer.ggml.pre", I16, 1, None),
]


def _case_id(p) -> str:
    key, _, value, _ = p.values if hasattr(p, "values") else p
    return f"{key.decode()}={value!r}"[:60]


@pytest.mark.parametrize("key,vtype,value,etype", METADATA_CASES,
                         ids=[_case_id(p) for p in METADATA_CASES])
def test_wrong_metadata_type_or_range(tmp_path, key, vtype, value, etype):
    # tokenizer.ggml.pre is absent from the llama fixture; gemma3's has it.
    lay = layout(LLAMA if any(kv.key == key for kv in layout(LLAMA).kvs) else MODEL_FILES[1])
    assert any(kv.key == key for kv in lay.kvs), key
    o = run_bytes(tmp_path, "m.gguf", serialize(lay, kvs=_set_kv(lay, key, vtype, value, etype)),
                  f"{lay.path.name}: {key.decode()} = {value!r}"[:120])
    assert not o.problems(), f"{o.desc}: {o.problems()}"


# -- random mutations --------------------------------------------------------------------


def _hostile_int(rng: random.Random, f: Field, lay: Layout, original: int) -> int:
    top = 2**32 - 1 if f.fmt == "<I" else U64_MAX
    size = len(lay.data)
    choices = [0, 1, top, top // 2, top // 2 + 1, 2**31, 2**32 - 1, 2**32, size, size + 1,
               size - f.pos, original + 1, max(original - 1, 0), original * 2,
               original ^ (1 << rng.randrange(8 * struct.calcsize(f.fmt))),
               rng.randrange(top + 1)]
    if f.role in ("vtype", "etype"):
        choices += list(range(14)) + [255]
    if f.role == "ndims":
        choices += [0, 1, 2, 3, 4, 5, 8]
    if f.role == "ttype":
        choices += list(range(42)) + [1000]
    if f.role == "toffset":
        choices += [original + rng.randrange(1, lay.alignment), *[t.offset for t in lay.tinfos],
                    top - rng.randrange(64)]
    return min(max(rng.choice(choices), 0), top)


def _random_value(rng: random.Random):
    """A (vtype, value, etype) of any GGUF type, with hostile contents."""
    vtype = rng.choice([U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64])
    if vtype == STRING:
        return vtype, rng.choice([b"", b"llama", b"gpt2", b"\xff\xfe", b"x" * 300, b"{{"]), None
    if vtype == ARRAY:
        etype = rng.choice([U8, I32, U32, F32, STRING, BOOL, U64])
        n = rng.choice([0, 1, 2, 511, 512, 513])
        return vtype, [_random_value_of(rng, etype) for _ in range(n)], etype
    return vtype, _random_value_of(rng, vtype), None


def _random_value_of(rng: random.Random, vtype: int):
    if vtype == STRING:
        return rng.choice([b"", b"a", b"<s>", b"\xc3"])
    if vtype in (F32, F64):
        return rng.choice([0.0, -1.0, 1e-6, 1e30, float("inf"), float("nan"), 10000.0])
    if vtype == BOOL:
        return rng.choice([0, 1, 2, 255])
    bits = {"B": 8, "H": 16, "I": 32, "Q": 64}[_SCALAR_FMT[vtype][-1].upper()]
    signed = _SCALAR_FMT[vtype][-1].islower()
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    v = rng.choice([lo, hi, 0, 1, 2, 3, 255, 256, 511, 512, 65536, rng.randint(lo, hi)])
    return min(max(v, lo), hi)


# "bytes": damage to the encoding (flips, hostile integers, cuts, splices, alignment).
# "metadata": well-encoded files whose key/values have the wrong type, range or presence.
OPS = {
    "bytes": ["flip_header", "flip_header", "flip_kv", "flip_tinfo", "flip_data",
              "int_field", "int_field", "int_field", "truncate", "alignment", "splice"],
    "metadata": ["kv_value", "kv_value", "kv_value", "kv_drop_or_dup"],
}


def mutate(rng: random.Random, lay: Layout, family: str = "bytes") -> tuple[str, bytes]:
    """One random mutation of the fixture: (description, bytes)."""
    data = lay.data
    op = rng.choice(OPS[family])
    if op == "flip_tinfo" and not lay.tinfos or op == "flip_data" and not lay.tensor_spans:
        op = "flip_header"
    if op.startswith("flip"):
        lo, hi = {"flip_header": (0, lay.data_start),
                  "flip_kv": (24, lay.kv_end),
                  "flip_tinfo": (lay.kv_end, lay.header_end),
                  "flip_data": (lay.data_start, len(data))}[op]
        b = bytearray(data)
        spots = []
        for _ in range(rng.choice([1, 1, 1, 2, 4, 16])):
            pos = rng.randrange(lo, hi)
            b[pos] ^= rng.randrange(1, 256)
            spots.append(pos)
        return f"{op} at {spots}", bytes(b)
    if op == "int_field":
        f = rng.choice(lay.fields)
        (orig,) = struct.unpack_from(f.fmt, data, f.pos)
        v = _hostile_int(rng, f, lay, orig)
        return f"{f.label} {orig} -> {v}", with_field(data, f, v)
    if op == "truncate":
        pos, label = rng.choice(lay.boundaries)
        pos = min(max(pos + rng.choice([-1, 0, 0, 1, 7]), 0), len(data) - 1)
        return f"cut at {pos} (near {label})", data[:pos]
    if op == "kv_value":
        i = rng.randrange(len(lay.kvs))
        vtype, value, etype = _random_value(rng)
        kvs = list(lay.kvs)
        kvs[i] = KV(kvs[i].key, vtype, value, etype)
        shown = repr(value) if len(repr(value)) < 60 else f"{type(value).__name__}[{len(value)}]"
        return (f"{lay.kvs[i].key.decode()} = {shown} (vtype {vtype}, etype {etype})",
                serialize(lay, kvs=kvs))
    if op == "kv_drop_or_dup":
        i = rng.randrange(len(lay.kvs))
        kvs = list(lay.kvs)
        if rng.random() < 0.5:
            del kvs[i]
            return f"drop key {lay.kvs[i].key.decode()}", serialize(lay, kvs=kvs)
        kvs.insert(rng.randrange(len(kvs) + 1), kvs[i])
        return f"duplicate key {lay.kvs[i].key.decode()}", serialize(lay, kvs=kvs)
    if op == "alignment":
        value = rng.choice([0, 1, 2, 3, 8, 31, 33, 48, 64, 2**20, 2**31, 2**32 - 1])
        kvs = lay.kvs + [KV(b"general.alignment", U32, value)]
        return f"general.alignment = {value}", serialize(lay, kvs=kvs, alignment=value)
    # splice: a chunk of the header copied over another place of it (structure confusion)
    n = rng.choice([4, 8, 12, 24, 64])
    src, dst = rng.randrange(0, lay.header_end - n), rng.randrange(0, lay.header_end - n)
    b = bytearray(data)
    b[dst:dst + n] = data[src:src + n]
    return f"splice {n} bytes {src} -> {dst}", bytes(b)


def _pick_file(rng: random.Random) -> Path:
    if rng.random() < VOCAB_WEIGHT:
        return VOCAB_FILE
    return rng.choice(MODEL_FILES)


def case_indices() -> list[int]:
    if ONLY:
        return [int(x) for x in ONLY.split(",")]
    return list(range(N_CASES))


FAMILIES = {"bytes": None, "metadata": max(N_CASES // 4, 1)}  # metadata: each case loads fully


@functools.lru_cache(maxsize=None)
def random_outcomes(family: str, tmp_dir: Path) -> tuple:
    """Runs the family's cases once; the two tests below judge different promises."""
    outcomes, kinds = [], {}
    t_start = time.perf_counter()
    n = FAMILIES[family]
    indices = case_indices() if n is None or ONLY else list(range(n))
    for i in indices:
        rng = random.Random(f"{SEED}:{family}:{i}")
        path = _pick_file(rng)
        lay = layout(path)
        desc, data = mutate(rng, lay, family)
        o = run_bytes(tmp_dir, f"case{i}.gguf", data,
                      f"{family} case {i} (CHATFILE_FUZZ_SEED={SEED} CHATFILE_FUZZ_ONLY={i}) "
                      f"{path.name}: {desc}", trace=not _is_vocab(lay))
        kinds[o.kind] = kinds.get(o.kind, 0) + 1
        outcomes.append(o)
    total_s = time.perf_counter() - t_start
    summary = (f"fuzz[{family}]: {len(outcomes)} cases in {total_s:.1f} s (seed {SEED}); "
               f"outcomes {kinds}; max {max(o.elapsed_s for o in outcomes) * 1000:.0f} ms wall, "
               f"{max(o.cpu_s for o in outcomes) * 1000:.0f} ms CPU per case; peak extra RSS "
               f"{max(o.rss_extra_bytes for o in outcomes) / 2**20:.1f} MB; peak traced "
               f"{max(o.traced_peak_bytes for o in outcomes) / 2**20:.1f} MB")
    return tuple(outcomes), summary


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_random_mutations_are_bounded(fuzz_dir, capsys, family):
    # Time, memory and no hang: these hold today for every case, whatever it raises.
    outcomes, summary = random_outcomes(family, fuzz_dir)
    with capsys.disabled():
        print("\n" + summary)
    _assert_clean(list(outcomes), "bounds")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_random_mutations_raise_only_gguferror(fuzz_dir, family):
    outcomes, _ = random_outcomes(family, fuzz_dir)
    _assert_clean(list(outcomes), "errors")
