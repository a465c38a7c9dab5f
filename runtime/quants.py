"""Vectorized dequantization of GGML block types into float32.

A quantized row is a run of fixed-size blocks; each block packs `block_size` weights in
`type_size` bytes (gguf.constants.GGML_QUANT_SIZES). The layouts below are ggml's
(ggml-common.h). Every kernel works on a whole chunk of blocks at once:

* Fields are cut out of the packed blocks with strided views (np.ndarray over the raw
  buffer with the block size as stride), never with a Python loop over blocks.
* The 4/5/6-bit codes are unpacked eight at a time ("SWAR"): the packed bytes are copied
  to a contiguous buffer, viewed as uint64, and masked/shifted there, so each NumPy call
  runs one long inner loop instead of millions of 16- or 32-element ones.
* Codes become signed int8 before they meet a float, so `d * q` is a single product.

Exactness. A fp16 scale has 11 significant bits; multiplied by a sub-block scale of at
most 8 bits and a code of at most 8 bits the product has at most 27 bits, and in every
type here except IQ4_XS at most 22, so `d*sc*q` is exact in float32 whatever the order.
Where an offset follows (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) ggml rounds once, in the final add
or subtract, and so do we. IQ4_XS (`d*sc` then `*kvalue`) may round once, as ggml does.
The result therefore equals gguf-py's reference dequantizer bit for bit.

Rows are processed in chunks of about a megabyte of output so the temporaries stay in L2;
`threads=2` splits the chunks over a small pool (NumPy releases the GIL inside its loops).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

from runtime.gguf import GGUFError

QK_K = 256  # weights per K-quant super-block
# ggml's non-linear 4-bit grid (ggml-common.h kvalues_iq4nl), shared by IQ4_NL and IQ4_XS.
IQ4NL_KVALUES = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)

# ~1 MiB of float32 output per chunk: measured fastest on a 512 KiB-L2 box (smaller chunks
# pay NumPy's per-call overhead, bigger ones spill the temporaries out of cache).
CHUNK_ELEMENTS = 1 << 18

_LO4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_LO2 = np.uint64(0x0303030303030303)
_LO1 = np.uint64(0x0101010101010101)
_HI1 = np.uint64(0x8080808080808080)
_SEVEN_F = np.uint64(0x7F7F7F7F7F7F7F7F)
_BIT_PER_BYTE = np.uint64(0x8040201008040201)  # byte i keeps bit i


class UnsupportedTypeError(GGUFError):
    """The tensor's ggml type has no dequantizer here."""


def _type_name(ggml_type: int) -> str:
    try:
        return T(ggml_type).name
    except ValueError:
        return f"unknown type {ggml_type}"


def _u64(n_bytes_per_block: int, nb: int) -> tuple[np.ndarray, np.ndarray]:
    """A scratch buffer as (nb, n) uint8 and its uint64 view."""
    buf = np.empty((nb, n_bytes_per_block), dtype=np.uint8)
    return buf, buf.view(np.uint64)


def _gather(raw: np.ndarray, nb: int, stride: int, offset: int, n_bytes: int) -> np.ndarray:
    """Bytes [offset, offset+n_bytes) of every block, copied contiguous as (nb, n_bytes).

    The copy goes through a void dtype of n_bytes so NumPy does one memcpy per block
    instead of one loop iteration per byte."""
    src = np.ndarray((nb,), dtype=f"V{n_bytes}", buffer=raw, offset=offset, strides=(stride,))
    dst = np.empty((nb, n_bytes), dtype=np.uint8)
    np.copyto(dst.view(f"V{n_bytes}").reshape(nb), src)
    return dst


def _f16(raw: np.ndarray, nb: int, stride: int, offset: int) -> np.ndarray:
    """The fp16 field at `offset` of every block, as float32 (nb,)."""
    return np.ndarray((nb,), dtype="<f2", buffer=raw, offset=offset, strides=(stride,)).astype(np.float32)


def _scale(out: np.ndarray, codes: np.ndarray, scale: np.ndarray) -> None:
    """out[b, s, :] = codes[b, s, :] * scale[b, s], codes int8/uint8, out float32."""
    np.copyto(out, codes)
    np.multiply(out, scale[..., None], out=out)


def _spread_bits(b: np.ndarray) -> np.ndarray:
    """uint64 (…) holding one byte b per word -> byte i of the result is bit i of b (0/1)."""
    t = (b * _LO1) & _BIT_PER_BYTE  # byte i keeps only bit i of b
    t += _SEVEN_F  # a nonzero byte (<= 0x80) now has its top bit set; no carries cross bytes
    t &= _HI1
    t >>= np.uint64(7)
    return t


# ---- kernels: (raw uint8 1-D of nb blocks, out float32 1-D of nb*block_size, nb) ----

def _f32(raw, out, nb):
    np.copyto(out, raw.view("<f4"))


def _f16_kernel(raw, out, nb):
    np.copyto(out, raw.view("<f2"))


def _bf16(raw, out, nb):
    # bfloat16 is the top half of a float32.
    u = out.view(np.uint32)
    np.copyto(u, raw.view("<u2"))
    u <<= np.uint32(16)


def _q8_0(raw, out, nb):
    # block: d fp16 | qs int8[32]
    d = _f16(raw, nb, 34, 0)
    qs = np.ndarray((nb, 32), dtype=np.int8, buffer=raw, offset=2, strides=(34, 1))
    _scale(out.reshape(nb, 32), qs, d)


def _nibbles(qs: np.ndarray, nb: int) -> np.ndarray:
    """qs (nb, 16) uint8 -> (nb, 32) uint8 codes: low nibbles then high nibbles (ggml's
    order for the 32-weight blocks)."""
    q = qs.view(np.uint64)  # (nb, 2)
    codes, c = _u64(32, nb)
    np.bitwise_and(q, _LO4, out=c[:, 0:2])
    np.right_shift(q, np.uint64(4), out=c[:, 2:4])
    c[:, 2:4] &= _LO4
    return codes


def _q4_0(raw, out, nb):
    # block: d fp16 | qs[16]; w = d * (nibble - 8)
    d = _f16(raw, nb, 18, 0)
    codes = _nibbles(_gather(raw, nb, 18, 2, 16), nb)
    c = codes.view(np.uint64)
    c += np.uint64(0x7878787878787878)  # nibble + 0x78 <= 0x87: no carry between bytes
    c ^= _HI1  # as int8 that is nibble + 0x78 - 0x80 = nibble - 8
    _scale(out.reshape(nb, 32), codes.view(np.int8), d)


def _q4_1(raw, out, nb):
    # block: d fp16 | m fp16 | qs[16]; w = d * nibble + m
    d = _f16(raw, nb, 20, 0)
    m = _f16(raw, nb, 20, 2)
    o = out.reshape(nb, 32)
    _scale(o, _nibbles(_gather(raw, nb, 20, 4, 16), nb), d)
    o += m[:, None]


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """qh (nb, 4) uint8 bit-fields -> (nb, 4) uint64: byte j of word k is bit 8k+j (0/1)."""
    return _spread_bits(qh.astype(np.uint64))


def _q5_0(raw, out, nb):
    # block: d fp16 | qh u32 (bit j = 5th bit of weight j) | qs[16]; w = d * (q - 16)
    d = _f16(raw, nb, 22, 0)
    body = _gather(raw, nb, 22, 2, 20)
    codes = _nibbles(np.ascontiguousarray(body[:, 4:]), nb)
    c = codes.view(np.uint64)
    hb = _fifth_bits(body[:, :4])
    # q - 16 as int8: nibble when the 5th bit is set, else nibble - 16 = nibble | 0xF0.
    hb ^= _LO1
    hb *= np.uint64(0xF0)
    c |= hb
    _scale(out.reshape(nb, 32), codes.view(np.int8), d)


def _q5_1(raw, out, nb):
    # block: d fp16 | m fp16 | qh u32 | qs[16]; w = d * q + m
    d = _f16(raw, nb, 24, 0)
    m = _f16(raw, nb, 24, 2)
    body = _gather(raw, nb, 24, 4, 20)
    codes = _nibbles(np.ascontiguousarray(body[:, 4:]), nb)
    c = codes.view(np.uint64)
    hb = _fifth_bits(body[:, :4])
    hb <<= np.uint64(4)
    c |= hb
    o = out.reshape(nb, 32)
    _scale(o, codes, d)
    o += m[:, None]


def _q6_k(raw, out, nb):
    # block: ql[128] | qh[64] | scales int8[16] | d fp16. Each 128-weight half h uses
    # ql[64h:64h+64] and qh[32h:32h+32]; weight 32k+l of the half (k<4, l<32) is
    # ql[l + 32*(k&1)] nibble (k>>1) | ((qh[l] >> 2k) & 3) << 4, minus 32.
    d = _f16(raw, nb, 210, 208)
    sc = np.ndarray((nb, 16), dtype=np.int8, buffer=raw, offset=192, strides=(210, 1))
    dl = d[:, None] * sc  # (nb, 16), exact
    body = _gather(raw, nb, 210, 0, 192)
    ql = body[:, :128].view(np.uint64).reshape(nb, 2, 2, 4)  # half, ql[0:32]/ql[32:64]
    qh = body[:, 128:].view(np.uint64).reshape(nb, 2, 1, 4)  # half
    codes, c = _u64(256, nb)
    c = c.reshape(nb, 2, 4, 4)  # half, k, 32 weights as 4 words
    np.bitwise_and(ql, _LO4, out=c[:, :, 0:2])
    np.right_shift(ql, np.uint64(4), out=c[:, :, 2:4])
    c[:, :, 2:4] &= _LO4
    tmp = np.empty((nb, 2, 1, 4), dtype=np.uint64)
    for k in range(4):
        np.right_shift(qh, np.uint64(2 * k), out=tmp)
        tmp &= _LO2
        tmp <<= np.uint64(4)
        c[:, :, k:k + 1] |= tmp
    c += np.uint64(0x6060606060606060)  # q + 0x60 <= 0x9F: no carry between bytes
    c ^= _HI1  # as int8: q - 32
    _scale(out.reshape(nb, 16, 16), codes.view(np.int8).reshape(nb, 16, 16), dl)


def _k_scale_min(sc12: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K 12-byte scales (nb, 12) -> 6-bit scales and mins, each (nb, 8) uint8.

    Sub-block j < 4: scale = s[j] & 63, min = s[j+4] & 63. j >= 4: scale =
    (s[j+4] & 15) | (s[j-4] >> 6) << 4, min = (s[j+4] >> 4) | (s[j] >> 6) << 4."""
    a, b, c = sc12[:, 0:4], sc12[:, 4:8], sc12[:, 8:12]
    scale = np.empty((sc12.shape[0], 8), dtype=np.uint8)
    mins = np.empty_like(scale)
    np.bitwise_and(a, 63, out=scale[:, :4])
    np.bitwise_and(b, 63, out=mins[:, :4])
    scale[:, 4:] = (c & 15) | ((a >> 6) << 4)
    mins[:, 4:] = (c >> 4) | ((b >> 6) << 4)
    return scale, mins


def _k_dl_ml(raw, nb, stride):
    """d*scale and dmin*min per 32-weight sub-block, (nb, 8) float32 each, exact."""
    d = _f16(raw, nb, stride, 0)
    dmin = _f16(raw, nb, stride, 2)
    scale, mins = _k_scale_min(np.ndarray((nb, 12), np.uint8, buffer=raw, offset=4, strides=(stride, 1)))
    return d[:, None] * scale, dmin[:, None] * mins


def _q4_k(raw, out, nb):
    # block: d fp16 | dmin fp16 | scales[12] | qs[128]; qs[32j:32j+32] holds sub-block 2j
    # in its low nibbles and 2j+1 in its high ones; w = d*sc*q - dmin*m.
    dl, ml = _k_dl_ml(raw, nb, 144)
    q = _gather(raw, nb, 144, 16, 128).view(np.uint64).reshape(nb, 4, 1, 4)
    codes, c = _u64(256, nb)
    c = c.reshape(nb, 4, 2, 4)
    np.bitwise_and(q, _LO4, out=c[:, :, 0:1])
    np.right_shift(q, np.uint64(4), out=c[:, :, 1:2])
    c[:, :, 1:2] &= _LO4
    o = out.reshape(nb, 8, 32)
    _scale(o, codes.reshape(nb, 8, 32), dl)
    o -= ml[..., None]


def _q5_k(raw, out, nb):
    # block: d | dmin | scales[12] | qh[32] | qs[128]; like Q4_K, and sub-block j takes its
    # 5th bits from bit j of qh[0:32].
    dl, ml = _k_dl_ml(raw, nb, 176)
    body = _gather(raw, nb, 176, 16, 160)
    qh = body[:, :32].view(np.uint64).reshape(nb, 1, 4)
    q = body[:, 32:].view(np.uint64).reshape(nb, 4, 1, 4)
    codes, c = _u64(256, nb)
    c4 = c.reshape(nb, 4, 2, 4)
    np.bitwise_and(q, _LO4, out=c4[:, :, 0:1])
    np.right_shift(q, np.uint64(4), out=c4[:, :, 1:2])
    c4[:, :, 1:2] &= _LO4
    c8 = c.reshape(nb, 8, 4)
    tmp = np.empty((nb, 1, 4), dtype=np.uint64)
    for j in range(8):
        np.right_shift(qh, np.uint64(j), out=tmp)
        tmp &= _LO1
        tmp <<= np.uint64(4)
        c8[:, j:j + 1] |= tmp
    o = out.reshape(nb, 8, 32)
    _scale(o, codes.reshape(nb, 8, 32), dl)
    o -= ml[..., None]


def _q3_k(raw, out, nb):
    # block: hmask[32] | qs[64] | scales[12] | d fp16. Weight 128i + 32s + l (i<2, s<4):
    # low 2 bits (qs[32i+l] >> 2s) & 3, minus 4 unless bit (4i+s) of hmask[l] is set.
    # Scales: 16 6-bit values, low nibbles from bytes 0..7, high 2 bits from bytes 8..11.
    d = _f16(raw, nb, 110, 108)
    s = np.ndarray((nb, 12), np.uint8, buffer=raw, offset=96, strides=(110, 1))
    sc = np.empty((nb, 4, 4), dtype=np.uint8)  # [group of 4][scale] -> scale index 4g + t
    lo, hi = s[:, :8], s[:, 8:12]
    sc[:, 0:2] = (lo & 15).reshape(nb, 2, 4)
    sc[:, 2:4] = (lo >> 4).reshape(nb, 2, 4)
    for g in range(4):
        sc[:, g] |= ((hi >> (2 * g)) & 3) << 4
    dl = d[:, None] * (sc.reshape(nb, 16).view(np.int8) - np.int8(32))  # (nb, 16), exact
    body = _gather(raw, nb, 110, 0, 96)
    hm = body[:, :32].view(np.uint64).reshape(nb, 1, 1, 4)
    qs = body[:, 32:].view(np.uint64).reshape(nb, 2, 1, 4)
    codes, c = _u64(256, nb)
    c = c.reshape(nb, 2, 4, 4)
    tmp = np.empty((nb, 2, 1, 4), dtype=np.uint64)
    for sft in range(4):
        np.right_shift(qs, np.uint64(2 * sft), out=c[:, :, sft:sft + 1])
    c &= _LO2
    for i in range(2):
        for sft in range(4):
            # 0xFC (= -4 with the low 2 bits clear) where the hmask bit is NOT set.
            np.right_shift(hm, np.uint64(4 * i + sft), out=tmp[:, i:i + 1])
            t = tmp[:, i:i + 1]
            t &= _LO1
            t ^= _LO1
            t *= np.uint64(0xFC)
            c[:, i:i + 1, sft:sft + 1] |= t
    _scale(out.reshape(nb, 16, 16), codes.view(np.int8).reshape(nb, 16, 16), dl)


def _q2_k(raw, out, nb):
    # block: scales[16] (low nibble scale, high nibble min) | qs[64] | d | dmin.
    # Weight 128i + 32s + l: (qs[32i+l] >> 2s) & 3; sub-blocks of 16; w = d*sc*q - dmin*m.
    d = _f16(raw, nb, 84, 80)
    dmin = _f16(raw, nb, 84, 82)
    s = np.ndarray((nb, 16), np.uint8, buffer=raw, offset=0, strides=(84, 1))
    dl = d[:, None] * (s & 15)
    ml = dmin[:, None] * (s >> 4)
    qs = _gather(raw, nb, 84, 16, 64).view(np.uint64).reshape(nb, 2, 1, 4)
    codes, c = _u64(256, nb)
    c = c.reshape(nb, 2, 4, 4)
    for sft in range(4):
        np.right_shift(qs, np.uint64(2 * sft), out=c[:, :, sft:sft + 1])
    c &= _LO2
    o = out.reshape(nb, 16, 16)
    _scale(o, codes.reshape(nb, 16, 16), dl)
    o -= ml[..., None]


def _iq4_nl(raw, out, nb):
    # block: d fp16 | qs[16]; w = d * kvalues[nibble], nibbles ordered as in Q4_0.
    d = _f16(raw, nb, 18, 0)
    codes = _nibbles(_gather(raw, nb, 18, 2, 16), nb)
    kv = np.take(IQ4NL_KVALUES, codes, mode="clip")
    _scale(out.reshape(nb, 32), kv, d)


def _iq4_xs(raw, out, nb):
    # block: d fp16 | scales_h u16 | scales_l[4] | qs[128]. Sub-block j (of 32): 6-bit
    # scale ((scales_l[j/2] >> 4(j%2)) & 15) | ((scales_h >> 2j) & 3) << 4, minus 32;
    # qs[16j:16j+16] low nibbles then high nibbles; w = d*sc * kvalues[nibble].
    d = _f16(raw, nb, 136, 0)
    sh = np.ndarray((nb, 1), "<u2", buffer=raw, offset=2, strides=(136, 2)).astype(np.uint16)
    sl = np.ndarray((nb, 4), np.uint8, buffer=raw, offset=4, strides=(136, 1))
    sc = np.empty((nb, 4, 2), dtype=np.uint8)
    sc[:, :, 0] = sl & 15
    sc[:, :, 1] = sl >> 4
    shifts = np.arange(0, 16, 2, dtype=np.uint16)
    sc = sc.reshape(nb, 8) | (((sh >> shifts) & 3).astype(np.uint8) << 4)
    dl = d[:, None] * (sc.view(np.int8) - np.int8(32))
    q = _gather(raw, nb, 136, 8, 128).view(np.uint64).reshape(nb, 8, 1, 2)
    codes, c = _u64(256, nb)
    c = c.reshape(nb, 8, 2, 2)
    np.bitwise_and(q, _LO4, out=c[:, :, 0:1])
    np.right_shift(q, np.uint64(4), out=c[:, :, 1:2])
    c[:, :, 1:2] &= _LO4
    kv = np.take(IQ4NL_KVALUES, codes, mode="clip")
    _scale(out.reshape(nb, 8, 32), kv.reshape(nb, 8, 32), dl)


_KERNELS: dict[int, Callable[[np.ndarray, np.ndarray, int], None]] = {
    T.F32: _f32, T.F16: _f16_kernel, T.BF16: _bf16,
    T.Q8_0: _q8_0, T.Q4_0: _q4_0, T.Q4_1: _q4_1, T.Q5_0: _q5_0, T.Q5_1: _q5_1,
    T.Q2_K: _q2_k, T.Q3_K: _q3_k, T.Q4_K: _q4_k, T.Q5_K: _q5_k, T.Q6_K: _q6_k,
    T.IQ4_NL: _iq4_nl, T.IQ4_XS: _iq4_xs,
}
SUPPORTED_TYPES = frozenset(int(t) for t in _KERNELS)


# ---- public API ----

def _check_type(ggml_type: int, name: str | None) -> tuple[int, int]:
    if ggml_type not in SUPPORTED_TYPES:
        where = f" (tensor {name!r})" if name else ""
        supported = ", ".join(sorted(_type_name(t) for t in SUPPORTED_TYPES))
        raise UnsupportedTypeError(
            f"cannot dequantize ggml type {_type_name(ggml_type)} ({ggml_type}){where}; "
            f"supported: {supported}")
    return GGML_QUANT_SIZES[T(ggml_type)]


def quantized_row_bytes(ggml_type: int, n_cols: int) -> int:
    """Bytes one row of `n_cols` weights takes in `ggml_type`."""
    block_size, type_size = _check_type(ggml_type, None)
    if n_cols % block_size:
        raise GGUFError(f"a {_type_name(ggml_type)} row of {n_cols} weights is not a whole "
                        f"number of {block_size}-weight blocks")
    return n_cols // block_size * type_size


def dequantize(raw: np.ndarray, ggml_type: int, shape, *, name: str | None = None,
               threads: int = 1) -> np.ndarray:
    """The float32 array of `shape` (NumPy order) that `raw` (the tensor's bytes) encodes.

    `raw` may be any whole number of rows cut from a tensor's bytes. Raises
    UnsupportedTypeError for a type with no kernel, GGUFError if the byte count is wrong."""
    out = np.empty(tuple(int(s) for s in shape), dtype=np.float32)
    dequantize_into(raw, ggml_type, out, name=name, threads=threads)
    return out


def dequantize_into(raw: np.ndarray, ggml_type: int, out: np.ndarray, *,
                    name: str | None = None, threads: int = 1) -> np.ndarray:
    """Like dequantize() but writes into `out`, a C-contiguous float32 array whose shape
    gives the tensor's shape. Returns `out`."""
    block_size, type_size = _check_type(ggml_type, name)
    where = f" for tensor {name!r}" if name else ""
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or not out.flags.c_contiguous \
            or not out.flags.writeable:
        raise TypeError(f"dequantize_into{where}: out must be a writeable C-contiguous float32 array")
    n_cols = out.shape[-1] if out.ndim else 1
    if n_cols % block_size:
        raise GGUFError(f"{_type_name(ggml_type)} tensor{where}: row length {n_cols} is not a "
                        f"multiple of the block size {block_size}")
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raise TypeError(f"dequantize{where}: raw must be a uint8 array, got {raw.dtype}")
    raw = raw.reshape(-1)
    if not raw.flags.c_contiguous:
        raw = np.ascontiguousarray(raw)
    n_blocks = out.size // block_size
    if raw.size != n_blocks * type_size:
        raise GGUFError(
            f"{_type_name(ggml_type)} tensor{where} of shape {tuple(out.shape)} needs "
            f"{n_blocks * type_size} bytes ({n_blocks} blocks of {type_size}), got {raw.size}")
    if n_blocks == 0:
        return out
    kernel = _KERNELS[ggml_type]
    flat = out.reshape(-1)
    step = max(1, CHUNK_ELEMENTS // block_size)
    starts = range(0, n_blocks, step)

    def run(b0: int) -> None:
        b1 = min(b0 + step, n_blocks)
        with np.errstate(all="ignore"):  # garbage scales may make inf/NaN, as in ggml
            kernel(raw[b0 * type_size:b1 * type_size], flat[b0 * block_size:b1 * block_size], b1 - b0)

    if threads > 1 and len(starts) > 1:
        list(_pool(threads).map(run, starts))
    else:
        for b0 in starts:
            run(b0)
    return out


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    threads = min(threads, os.cpu_count() or 1, 8)
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="dequant")
    return pool
