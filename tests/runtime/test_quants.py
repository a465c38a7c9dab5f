"""runtime.quants against gguf-py's reference dequantizer (gguf.quants.dequantize).

Every expected value comes from the reference (or, for F16, from NumPy's own half->float
cast, which is what the reference uses). Exactness is bit-for-bit: see the module
docstring of runtime.quants for why that is achievable.
"""
import warnings
from pathlib import Path

import numpy as np
import pytest
from gguf import quants as ref_quants
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

from runtime import gguf as rgguf
from runtime import quants
from runtime.gguf import GGUFError
from runtime.quants import (SUPPORTED_TYPES, UnsupportedTypeError, dequantize,
                            dequantize_into, quantized_row_bytes)

MODELS = Path(__file__).resolve().parent.parent / "fixtures" / "models"

EXPECTED_TYPES = {T.F32, T.F16, T.BF16, T.Q8_0, T.Q6_K, T.Q5_K, T.Q5_0, T.Q5_1, T.Q4_K,
                  T.Q4_0, T.Q4_1, T.Q3_K, T.Q2_K, T.IQ4_NL, T.IQ4_XS}
# Types gguf-py can quantize (so test data can be real quantized weights).
QUANTIZABLE = {T.F32, T.F16, T.BF16, T.Q8_0, T.Q5_0, T.Q5_1, T.Q4_0, T.Q4_1}
# Byte offsets of the fp16 scale fields inside one block (ggml-common.h).
F16_FIELDS = {
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
    T.IQ4_NL: (0,), T.IQ4_XS: (0,),
}


def reference(raw: np.ndarray, ggml_type: int, shape) -> np.ndarray:
    bs, ts = GGML_QUANT_SIZES[T(ggml_type)]
    rows = raw.reshape(-1, shape[-1] // bs * ts)
    with np.errstate(all="ignore"):
        return np.asarray(ref_quants.dequantize(rows, T(ggml_type)), dtype=np.float32).reshape(shape)


def assert_same(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == ref.shape
    both_nan = np.isnan(got) & np.isnan(ref)
    diff = got.view(np.uint32) != ref.view(np.uint32)
    # Bit-exact except that two NaNs are equal whatever their payloads.
    bad = diff & ~both_nan
    assert not bad.any(), (
        f"{bad.sum()} of {bad.size} values differ; first at {np.argwhere(bad)[0]}: "
        f"{got[bad][0]!r} vs {ref[bad][0]!r}")


def sane_raw(ggml_type: int, shape, rng: np.random.Generator) -> np.ndarray:
    """Bytes for `shape`: real quantized weights where gguf-py can quantize the type,
    otherwise random bytes whose fp16 scales are replaced by small finite values."""
    t = T(ggml_type)
    x = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    if t == T.F32:
        return x.view(np.uint8).reshape(-1)
    if t == T.F16:
        return x.astype(np.float16).view(np.uint8).reshape(-1)
    if t in QUANTIZABLE:
        return np.ascontiguousarray(ref_quants.quantize(x, t)).view(np.uint8).reshape(-1)
    bs, ts = GGML_QUANT_SIZES[t]
    blocks = rng.integers(0, 256, size=(x.size // bs, ts), dtype=np.uint8)
    for off in F16_FIELDS[t]:
        scales = (rng.random(len(blocks)) * 0.01 + 1e-4).astype(np.float16)
        blocks[:, off:off + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(-1)


def test_supported_types_are_the_promised_ones():
    assert SUPPORTED_TYPES == frozenset(int(t) for t in EXPECTED_TYPES)


@pytest.mark.parametrize("ggml_type", sorted(EXPECTED_TYPES), ids=lambda t: T(t).name)
def test_matches_reference_on_sane_data(ggml_type):
    rng = np.random.default_rng(int(ggml_type))
    bs = GGML_QUANT_SIZES[T(ggml_type)][0]
    shape = (3, 5, 2 * max(bs, 32))
    raw = sane_raw(ggml_type, shape, rng)
    got = dequantize(raw, ggml_type, shape)
    ref = reference(raw, ggml_type, shape)
    assert np.isfinite(ref).all()
    assert np.abs(ref).max() > 0  # the comparison must be about something
    assert_same(got, ref)


@pytest.mark.parametrize("ggml_type", sorted(EXPECTED_TYPES - {T.F32}), ids=lambda t: T(t).name)
def test_matches_reference_on_arbitrary_bytes(ggml_type):
    # Garbage scales (inf, NaN, subnormal fp16) must still give what ggml gives.
    rng = np.random.default_rng(1000 + int(ggml_type))
    bs, ts = GGML_QUANT_SIZES[T(ggml_type)]
    shape = (64, 256)
    raw = rng.integers(0, 256, size=64 * 256 // bs * ts, dtype=np.uint8)
    assert_same(dequantize(raw, ggml_type, shape), reference(raw, ggml_type, shape))


def test_f16_every_bit_pattern():
    h = np.arange(1 << 16, dtype=np.uint16)
    got = dequantize(h.view(np.uint8), T.F16, (1 << 16,))
    ref = h.view(np.float16).astype(np.float32)
    # Here even NaN payloads must match: the conversion is pure bit movement.
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("ggml_type", [T.Q5_0, T.Q8_0, T.Q4_K, T.Q6_K, T.IQ4_NL],
                         ids=lambda t: T(t).name)
@pytest.mark.parametrize("threads", [1, 2])
def test_chunk_boundaries_and_threads(ggml_type, threads, monkeypatch):
    # A chunk of 3 blocks never divides the 7-row tensor evenly, so chunk edges fall
    # inside rows and the last chunk is short.
    bs = GGML_QUANT_SIZES[T(ggml_type)][0]
    monkeypatch.setattr(quants, "CHUNK_ELEMENTS", 3 * bs)
    rng = np.random.default_rng(7)
    shape = (7, 2 * bs)
    raw = sane_raw(ggml_type, shape, rng)
    assert_same(dequantize(raw, ggml_type, shape, threads=threads), reference(raw, ggml_type, shape))


@pytest.mark.parametrize("ggml_type", [T.Q5_0, T.Q4_K, T.F16], ids=lambda t: T(t).name)
def test_row_slices(ggml_type):
    rng = np.random.default_rng(11)
    bs = GGML_QUANT_SIZES[T(ggml_type)][0]
    rows, cols = 9, 2 * max(bs, 32)
    raw = sane_raw(ggml_type, (rows, cols), rng)
    full = dequantize(raw, ggml_type, (rows, cols))
    row_bytes = quantized_row_bytes(ggml_type, cols)
    assert row_bytes * rows == raw.size
    for r0, r1 in [(0, 1), (2, 5), (8, 9), (0, 9)]:
        part = dequantize(raw[r0 * row_bytes:r1 * row_bytes], ggml_type, (r1 - r0, cols))
        assert np.array_equal(part, full[r0:r1])


def test_quantized_row_bytes():
    for t in EXPECTED_TYPES:
        bs, ts = GGML_QUANT_SIZES[t]
        assert quantized_row_bytes(t, 4 * max(bs, 32)) == 4 * max(bs, 32) // bs * ts
    with pytest.raises(GGUFError, match="not a whole number"):
        quantized_row_bytes(T.Q4_K, 100)
    with pytest.raises(UnsupportedTypeError, match="IQ2_XXS"):
        quantized_row_bytes(T.IQ2_XXS, 256)


def test_dequantize_into_fills_the_given_array():
    rng = np.random.default_rng(3)
    raw = sane_raw(T.Q8_0, (4, 64), rng)
    out = np.full((4, 64), np.nan, dtype=np.float32)
    assert dequantize_into(raw, T.Q8_0, out) is out
    assert_same(out, reference(raw, T.Q8_0, (4, 64)))


def test_dequantize_into_rejects_a_bad_destination():
    raw = np.zeros(2 * 34, dtype=np.uint8)
    with pytest.raises(TypeError, match="float32"):
        dequantize_into(raw, T.Q8_0, np.zeros((2, 32), dtype=np.float64))
    with pytest.raises(TypeError, match="C-contiguous"):
        dequantize_into(raw, T.Q8_0, np.zeros((32, 2, 2), dtype=np.float32).transpose(2, 1, 0))


@pytest.mark.parametrize("ggml_type", sorted(EXPECTED_TYPES), ids=lambda t: T(t).name)
def test_dequantize_into_a_transposed_view(ggml_type, monkeypatch):
    """The model stores matrices transposed, as column slices of one fused matrix."""
    monkeypatch.setattr(quants, "CHUNK_ELEMENTS", 512)  # several row chunks, a ragged last one
    rng = np.random.default_rng(5)
    bs = GGML_QUANT_SIZES[T(ggml_type)][0]
    shape = (7, 2 * max(bs, 32))
    raw = sane_raw(ggml_type, shape, rng)
    big = np.full((shape[1], 3 + shape[0] + 2), np.nan, dtype=np.float32)  # [n_in, n_out]
    dequantize_into(raw, ggml_type, big[:, 3:3 + shape[0]].T, threads=2)
    assert_same(np.ascontiguousarray(big[:, 3:3 + shape[0]].T), reference(raw, ggml_type, shape))
    assert np.isnan(big[:, :3]).all() and np.isnan(big[:, 3 + shape[0]:]).all()


@pytest.mark.parametrize("ggml_type, label", [(T.IQ2_XXS, "IQ2_XXS"), (T.TQ1_0, "TQ1_0"), (999, "999")])
def test_unsupported_type(ggml_type, label):
    with pytest.raises(UnsupportedTypeError, match=label) as err:
        dequantize(np.zeros(256, dtype=np.uint8), ggml_type, (1, 256), name="blk.0.ffn_up.weight")
    assert isinstance(err.value, GGUFError)
    assert "blk.0.ffn_up.weight" in str(err.value)


def test_wrong_byte_count():
    with pytest.raises(GGUFError, match=r"needs 136 bytes .* got 135") as err:
        dequantize(np.zeros(135, dtype=np.uint8), T.Q8_0, (2, 64), name="output.weight")
    assert "output.weight" in str(err.value)
    with pytest.raises(GGUFError, match="got 137"):
        dequantize(np.zeros(137, dtype=np.uint8), T.Q8_0, (2, 64))


def test_row_length_not_a_multiple_of_the_block():
    with pytest.raises(GGUFError, match="block size 32"):
        dequantize(np.zeros(34 * 3, dtype=np.uint8), T.Q8_0, (2, 48))


def test_raw_must_be_bytes():
    with pytest.raises(TypeError, match="uint8"):
        dequantize(np.zeros(17, dtype=np.uint16), T.Q8_0, (1, 32))


def test_empty_tensor():
    out = dequantize(np.zeros(0, dtype=np.uint8), T.Q4_K, (0, 256))
    assert out.shape == (0, 256) and out.dtype == np.float32


FIXTURE_MODELS = sorted(MODELS.glob("*.gguf"))


@pytest.mark.parametrize("path", FIXTURE_MODELS, ids=lambda p: p.name)
def test_every_tensor_of_the_fixture_models(path):
    f = rgguf.read(path)
    seen = set()
    for name, info in f.tensors.items():
        raw = f.raw(name)
        got = dequantize(raw, info.ggml_type, info.shape, name=name)
        assert_same(got, reference(raw, info.ggml_type, info.shape))
        seen.add(info.ggml_type)
    assert seen <= SUPPORTED_TYPES


def test_fixture_models_cover_the_common_types():
    assert FIXTURE_MODELS, "no fixture models found"
    types = set()
    for path in FIXTURE_MODELS:
        types |= {t.ggml_type for t in rgguf.read(path).tensors.values()}
    assert {T.F32, T.F16, T.Q8_0, T.Q6_K, T.Q5_K, T.Q5_0, T.Q5_1, T.Q4_K, T.Q4_0,
            T.Q4_1, T.IQ4_NL} <= types


def test_int8_requantization_round_trip():
    """quantize_int8 keeps every weight within half a step of its row and column scales,
    and an empty row or column codes to zeros instead of dividing by zero."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((37, 96)).astype(np.float32)
    w[:, 5] *= 40  # an outlier column: the column factor keeps it from coarsening rows
    w[3] = 0
    w[:, 7] = 0
    col = quants.int8_column_factors(np.abs(w).max(axis=0))
    codes, scale = np.empty(w.shape, np.int8), np.empty(37, np.float32)
    quants.quantize_int8(w.copy(), col, codes, scale)
    assert codes.min() >= -127 and codes.max() <= 127
    assert (codes[3] == 0).all() and scale[3] == 0 and (codes[:, 7] == 0).all()
    back = quants.dequantize_int8(codes, scale, col)
    step = scale[:, None] * col[None, :]
    assert (np.abs(back - w) <= 0.5 * step * (1 + 1e-5) + 1e-12).all()
    # each row's largest scaled weight hits the full code range
    assert (np.abs(codes[np.arange(37) != 3]).max(axis=1) == 127).all()
    assert np.abs(back - w).max() < 0.01 * np.abs(w).max()


def test_int8_requantization_confines_garbage_to_its_own_row():
    """An inf weight (a garbage file) spoils only its row; a row too small for a finite
    1/scale codes to zeros without a warning."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 64)).astype(np.float32)
    w[2, 9] = np.inf
    w[4] = 1e-39  # subnormal: 1 / (max / 127) overflows float32
    with np.errstate(all="raise"):
        col = quants.int8_column_factors(np.abs(w).max(axis=0))
    assert np.isfinite(col).all() and col[9] == 1
    codes, scale = np.empty(w.shape, np.int8), np.empty(6, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quants.quantize_int8(w.copy(), col, codes, scale)
    assert (codes[4] == 0).all()
    good = [0, 1, 3, 5]
    back = quants.dequantize_int8(codes[good], scale[good], col)
    assert np.abs(back - w[good]).max() < 0.01 * np.abs(w[good]).max()
