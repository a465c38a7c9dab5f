"""GGUF loading: at an offset, zero-copy, and every bad file a clear GGUFError.

If these fail, a user sees a bundle that cannot find its own model, or a traceback (or
worse, gigabytes allocated) when they open a damaged download.
"""
import struct

import numpy as np
import pytest

import runtime
from runtime import gguf
from runtime.model import Model
from tests.conftest import MODELS

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


def _tensor_info_pos(data: bytes, name: str) -> int:
    """Position just after a tensor info's name (where n_dims starts)."""
    key = struct.pack("<Q", len(name)) + name.encode()
    pos = data.index(key)
    return pos + len(key)


def test_tensor_offset_past_the_end(tmp_path):
    data = bytearray(TINY.read_bytes())
    pos = _tensor_info_pos(data, "output.weight")
    n_dims = struct.unpack_from("<I", data, pos)[0]
    off_pos = pos + 4 + 8 * n_dims + 4
    data[off_pos:off_pos + 8] = struct.pack("<Q", 1 << 40)
    p = tmp_path / "x.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(runtime.GGUFError, match="output.weight.*past the end"):
        gguf.read(p)


def test_unaligned_tensor_offset(tmp_path):
    data = bytearray(TINY.read_bytes())
    pos = _tensor_info_pos(data, "output.weight")
    n_dims = struct.unpack_from("<I", data, pos)[0]
    off_pos = pos + 4 + 8 * n_dims + 4
    old = struct.unpack_from("<Q", data, off_pos)[0]
    data[off_pos:off_pos + 8] = struct.pack("<Q", old + 1)
    p = tmp_path / "x.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(runtime.GGUFError, match="not aligned"):
        gguf.read(p)


def test_overlapping_tensors(tmp_path):
    # Point a small tensor at the data of the first (largest) one.
    data = bytearray(TINY.read_bytes())
    g = gguf.read(TINY)
    first = min(g.tensors.values(), key=lambda t: t.data_offset)  # relative offset 0
    small = min((t for t in g.tensors.values() if t is not first), key=lambda t: t.n_bytes)
    pos = _tensor_info_pos(data, small.name)
    off_pos = pos + 4 + 8 * len(small.shape) + 4
    assert struct.unpack_from("<Q", data, off_pos)[0] == small.data_offset - first.data_offset
    data[off_pos:off_pos + 8] = struct.pack("<Q", 0)
    p = tmp_path / "x.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(runtime.GGUFError, match="overlap"):
        gguf.read(p)


def test_dimension_product_overflow(tmp_path):
    data = bytearray(TINY.read_bytes())
    pos = _tensor_info_pos(data, "output.weight")
    data[pos + 4:pos + 12] = struct.pack("<Q", (1 << 63) + 256)
    p = tmp_path / "x.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(runtime.GGUFError):
        gguf.read(p)


def test_unknown_tensor_type(tmp_path):
    data = bytearray(TINY.read_bytes())
    pos = _tensor_info_pos(data, "output.weight")
    n_dims = struct.unpack_from("<I", data, pos)[0]
    type_pos = pos + 4 + 8 * n_dims
    data[type_pos:type_pos + 4] = struct.pack("<I", 200)
    p = tmp_path / "x.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(runtime.GGUFError, match="output.weight.*unknown ggml type 200"):
        gguf.read(p)


def test_known_but_unsupported_tensor_type_names_tensor_and_type(tmp_path):
    # Relabel a Q8_0 weight as I8 (a valid ggml type, 1 byte per element, so the extent
    # still fits): the file parses, and loading the weights must name tensor and type.
    data = bytearray(TINY.read_bytes())
    pos = _tensor_info_pos(data, "blk.0.attn_q.weight")
    n_dims = struct.unpack_from("<I", data, pos)[0]
    type_pos = pos + 4 + 8 * n_dims
    data[type_pos:type_pos + 4] = struct.pack("<I", 24)  # I8
    p = tmp_path / "x.gguf"
    p.write_bytes(bytes(data))
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
