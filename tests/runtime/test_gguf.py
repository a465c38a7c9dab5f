"""GGUF loading: at an offset, zero-copy, and every bad file a clear GGUFError.

If these fail, a user sees a bundle that cannot find its own model, or a traceback (or
worse, gigabytes allocated) when they open a damaged download.
"""
import struct
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime import gguf, quants
from runtime.model import Model
from tests.conftest import MODELS, smaps_mappings

TINY = MODELS / "tiny-llama-q8_0.gguf"


def _kv_string(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(v)) + v


def test_reads_header_and_tensors():
    g = gguf.read(TINY)
    assert g.metadata["general.architecture"] == "llama"
    assert g.tensors["token_embd.weight"].shape == (512, 256)
    assert g.size == TINY.stat().st_size


def test_gguf_at_an_offset_of_a_bigger_file(tmp_path):
    data = TINY.read_bytes()
    offset = 65536
    big = tmp_path / "bundle.bin"
    big.write_bytes(b"\x7fELF" + b"\0" * (offset - 4) + data + b"trailing archive bytes" * 100)
    m0 = Model.load(TINY)
    m1 = Model.load(big, offset=offset, size=len(data))
    ids = [1, 20, 30, 40]
    np.testing.assert_array_equal(m0.logits(ids), m1.logits(ids))


def test_tensor_data_is_a_view_into_the_map_not_a_copy():
    g = gguf.read(TINY)
    raw = g.raw("token_embd.weight")
    assert not raw.flags.owndata
    assert not raw.flags.writeable  # read-only map: nobody can scribble on the model file


def test_released_pages_read_back_the_same(tmp_path):
    """release() only drops pages from the resident set; the next read faults them back
    in from the file, also for a GGUF at an unaligned offset inside a bigger file."""
    data = TINY.read_bytes()
    big = tmp_path / "bundle.bin"
    big.write_bytes(b"x" * 12345 + data)
    g = gguf.read(big, offset=12345, size=len(data))
    before = {name: g.raw(name).copy() for name in g.tensors}
    for name in g.tensors:
        g.release(name)
    for name in g.tensors:
        assert np.array_equal(g.raw(name), before[name]), name


def _mapped_rss_kb(path) -> int:
    """This process's resident kB of the mappings of `path`, from /proc/self/smaps."""
    return sum(int(fields["Rss"][0]) for header, fields in smaps_mappings()
               if header.endswith(str(path)))


def test_release_drops_the_pages_from_the_resident_set(tmp_path):
    if not Path("/proc/self/smaps").exists():
        pytest.skip("no /proc/self/smaps on this system to read the resident set from")
    path = tmp_path / "model.gguf"
    path.write_bytes(TINY.read_bytes())
    g = gguf.read(path)
    tensor_kb = sum(t.n_bytes for t in g.tensors.values()) / 1024
    assert sum(int(g.raw(name).sum()) for name in g.tensors) >= 0  # touch every page
    assert _mapped_rss_kb(path) >= 0.9 * tensor_kb
    for name in g.tensors:
        g.release(name)
    assert _mapped_rss_kb(path) < 0.1 * tensor_kb


@pytest.mark.parametrize("mode", ["f32", "int8", "quant"])
@pytest.mark.parametrize("name", ["tiny-llama-q8_0", "tiny-mixtral-q8_0", "tiny-qwen2-q8_0"])
def test_load_releases_each_converted_matrix_once_after_its_last_use(monkeypatch, mode, name):
    released, converted = [], []
    real_release = gguf.GGUFFile.release
    monkeypatch.setattr(gguf.GGUFFile, "release",
                        lambda self, n: (released.append(n), real_release(self, n))[1])
    real_dequantize_into = quants.dequantize_into

    def dequantize_into(raw, ggml_type, out, *, name=None, threads=1):
        converted.append(name)
        assert name not in released, f"{name} was converted after its pages were released"
        return real_dequantize_into(raw, ggml_type, out, name=name, threads=threads)
    monkeypatch.setattr(quants, "dequantize_into", dequantize_into)
    m = Model.load(MODELS / f"{name}.gguf", mode=mode)
    if mode == "quant":
        assert released == []  # the quantized matrices read these pages at every use
        return
    # The weight matrices (a MoE router is small, and converted like the norms: kept)
    matrices = {n for n, t in m.gguf.tensors.items()
                if len(t.shape) >= 2 and not n.endswith("ffn_gate_inp.weight")}
    if "output.weight" in matrices:
        matrices.discard("token_embd.weight")  # only gathered row by row, stays quantized
    assert sorted(released) == sorted(matrices)  # each once
    assert set(converted) >= matrices


def test_gguferror_is_exported_and_a_valueerror():
    assert runtime.GGUFError is gguf.GGUFError
    assert issubclass(runtime.GGUFError, ValueError)


@pytest.mark.parametrize("cut", [0, 3, 4, 8, 16, 23, 40, 200, 2000, 10_000])
def test_truncated_header(tmp_path, cut):
    p = tmp_path / "cut.gguf"
    p.write_bytes(TINY.read_bytes()[:cut])
    with pytest.raises(runtime.GGUFError) as e:
        gguf.read(p)
    assert any(w in str(e.value) for w in ("truncated", "too small", "past the end", "cannot fit"))


def test_truncated_tensor_data(tmp_path):
    p = tmp_path / "cut.gguf"
    p.write_bytes(TINY.read_bytes()[:-100])
    with pytest.raises(runtime.GGUFError, match="extends past the end"):
        gguf.read(p)


def test_wrong_magic(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"GGML" + TINY.read_bytes()[4:])
    with pytest.raises(runtime.GGUFError, match="not a GGUF file"):
        gguf.read(p)


def test_unsupported_version(tmp_path):
    data = bytearray(TINY.read_bytes())
    data[4:8] = struct.pack("<I", 7)
    p = tmp_path / "x.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(runtime.GGUFError, match="version 7"):
        gguf.read(p)


@pytest.mark.parametrize("field,value,match", [
    (8, 1 << 60, "tensor count"),   # n_tensors
    (16, 1 << 60, "key/value count"),  # n_kv
])
def test_absurd_counts_fail_before_allocating(tmp_path, field, value, match):
    data = bytearray(TINY.read_bytes())
    data[field:field + 8] = struct.pack("<Q", value)
    p = tmp_path / "x.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(runtime.GGUFError, match=match):
        gguf.read(p)


def test_string_length_past_the_end(tmp_path):
    data = bytearray(TINY.read_bytes())
    data[24:32] = struct.pack("<Q", 1 << 40)  # length of the first key
    p = tmp_path / "x.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(runtime.GGUFError, match="limit|past the end|truncated"):
        gguf.read(p)


def _field_pos(data: bytes, name: str, field: str) -> tuple[int, str]:
    """Where a field of tensor `name`'s info sits, and its struct format.

    A tensor info is: name (u64 length + bytes), n_dims u32, ne[n_dims] u64, type u32,
    offset u64.
    """
    key = struct.pack("<Q", len(name)) + name.encode()
    pos = data.index(key) + len(key)
    n_dims = struct.unpack_from("<I", data, pos)[0]
    return {"dim0": (pos + 4, "<Q"), "type": (pos + 4 + 8 * n_dims, "<I"),
            "offset": (pos + 4 + 8 * n_dims + 4, "<Q")}[field]


def _mutated(tmp_path, name: str, field: str, value=None, change=None):
    """A copy of the tiny model with one field of one tensor info set (or changed)."""
    data = bytearray(TINY.read_bytes())
    pos, fmt = _field_pos(data, name, field)
    if change is not None:
        value = change(struct.unpack_from(fmt, data, pos)[0])
    struct.pack_into(fmt, data, pos, value)
    p = tmp_path / "x.gguf"
    p.write_bytes(bytes(data))
    return p


def test_tensor_offset_past_the_end(tmp_path):
    p = _mutated(tmp_path, "output.weight", "offset", 1 << 40)
    with pytest.raises(runtime.GGUFError, match="output.weight.*past the end"):
        gguf.read(p)


def test_unaligned_tensor_offset(tmp_path):
    p = _mutated(tmp_path, "output.weight", "offset", change=lambda old: old + 1)
    with pytest.raises(runtime.GGUFError, match="not aligned"):
        gguf.read(p)


def test_overlapping_tensors(tmp_path):
    # Point the smallest tensor at the data of the first one (relative offset 0).
    g = gguf.read(TINY)
    first = min(g.tensors.values(), key=lambda t: t.data_offset)
    small = min((t for t in g.tensors.values() if t is not first), key=lambda t: t.n_bytes)
    p = _mutated(tmp_path, small.name, "offset", 0)
    with pytest.raises(runtime.GGUFError, match="overlap"):
        gguf.read(p)


def test_dimension_product_overflow(tmp_path):
    p = _mutated(tmp_path, "output.weight", "dim0", (1 << 63) + 256)
    with pytest.raises(runtime.GGUFError):
        gguf.read(p)


def test_unknown_tensor_type(tmp_path):
    p = _mutated(tmp_path, "output.weight", "type", 200)
    with pytest.raises(runtime.GGUFError, match="output.weight.*unknown ggml type 200"):
        gguf.read(p)


def test_known_but_unsupported_tensor_type_names_tensor_and_type(tmp_path):
    # Relabel a Q8_0 weight as I8 (a valid ggml type, 1 byte per element, so the extent
    # still fits): the file parses, and loading the weights must name tensor and type.
    p = _mutated(tmp_path, "blk.0.attn_q.weight", "type", 24)  # I8
    gguf.read(p)  # the header itself is fine
    with pytest.raises(runtime.GGUFError, match=r"blk\.0\.attn_q\.weight.*I8|I8.*blk\.0\.attn_q\.weight"):
        Model.load(p, mode="f32")


def test_unknown_architecture_lists_supported(tmp_path):
    data = TINY.read_bytes()
    old = _kv_string("general.architecture", "llama")
    assert old in data
    p = tmp_path / "x.gguf"
    p.write_bytes(data.replace(old, _kv_string("general.architecture", "lmaoo")))
    with pytest.raises(runtime.GGUFError) as e:
        Model.load(p)
    msg = str(e.value)
    assert "lmaoo" in msg and "qwen2" in msg and "gemma3" in msg and "phi3" in msg


def test_offset_outside_the_file():
    with pytest.raises(runtime.GGUFError, match="outside"):
        gguf.read(TINY, offset=TINY.stat().st_size + 10)


def test_missing_file(tmp_path):
    with pytest.raises(runtime.GGUFError, match="cannot open"):
        gguf.read(tmp_path / "nope.gguf")


def test_vocab_only_loads_no_weights():
    m = Model.load(MODELS / "tiny-qwen2-q8_0.gguf", vocab_only=True)
    assert m.arch == "qwen2" and m.n_vocab == 512
    assert not hasattr(m, "layers")
    with pytest.raises(ValueError, match="vocab_only"):
        m.session(16)
