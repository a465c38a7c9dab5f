"""Vectorized dequantization of GGML block types into float32.

A quantized row is a run of fixed-size blocks; each block packs `block_size` weights in
`type_size` bytes (gguf.constants.GGML_QUANT_SIZES: `gguf` there is gguf-py, llama.cpp's
Python package, not runtime/gguf.py). The layouts below are ggml's (ggml-common.h); the
_K types ("K-quants") group 256 weights into a super-block of sub-blocks with their own
scales. Every kernel works on a whole chunk of blocks at once:

* Fields are cut out of the packed blocks with strided views (np.ndarray over the raw
  buffer with the block size as stride), never with a Python loop over blocks.
* The 4/5/6-bit codes are unpacked eight at a time ("SWAR"): the packed bytes are copied
  to a contiguous buffer, viewed as uint64, and masked/shifted there, so each NumPy call
  runs one long inner loop instead of millions of 16- or 32-element ones.
* Codes become signed int8 before they meet a float, so `d * q` is a single product.

Exactness. A fp16 scale has an 11-bit significand; times a sub-block scale (|sc| <= 128)
and a code (|q| <= 128, and |sc*q| <= 2**12 in every type here: the worst is Q6_K, 128*32)
the product stays below 2**24, so `d*sc*q` is exact in float32 whatever the order. The
only rounding is the final add or subtract of an offset (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K),
which ggml and gguf-py do last too. So the result equals gguf-py's reference
dequantizer bit for bit, including inf/NaN from garbage scales.

Rows are processed in chunks of CHUNK_ELEMENTS weights; temporaries live in per-thread
scratch buffers (a few MiB per thread) reused from chunk to chunk. `threads=n` splits the
chunks over a shared pool of up to n threads (weights.py's WeightLoader passes
LOAD_THREADS, every core it may use; NumPy releases the GIL inside its loops).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

from runtime.gguf import GGUFError, type_name

# ggml's non-linear 4-bit grid (ggml-common.h kvalues_iq4nl), shared by IQ4_NL and IQ4_XS.
IQ4NL_KVALUES = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)

# Weights per chunk (1 MiB of float32 output). Measured on the 2-core dev box: 2**15-2**16
# lose 30-60% to NumPy's per-call overhead (a K-quant chunk makes ~40 calls); 2**18 to
# 2**19 were equal within noise; 2**20 was slower again.
CHUNK_ELEMENTS = 1 << 18

_LO4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_LO2 = np.uint64(0x0303030303030303)
_LO1 = np.uint64(0x0101010101010101)
_HI1 = np.uint64(0x8080808080808080)


class _Arena(threading.local):
    """Per-thread scratch buffers reused from chunk to chunk. Fresh temporaries of a few
    hundred KiB cost page faults on every chunk (glibc hands them back to the kernel),
    which measured as slow as the arithmetic itself."""

    def __init__(self):
        self.bufs: dict[str, np.ndarray] = {}


_ARENA = _Arena()


def scratch(key: str, shape, dtype=np.uint8) -> np.ndarray:
    """A scratch array of `shape`, reused across calls with the same key (in one thread);
    its contents are garbage. Keys must differ between arrays alive at the same time."""
    dtype = np.dtype(dtype)
    n_bytes = dtype.itemsize
    for s in shape:
        n_bytes *= s
    b = _ARENA.bufs.get(key)
    if b is None or b.size < n_bytes:
        b = _ARENA.bufs[key] = np.empty(n_bytes, dtype=np.uint8)
    return b[:n_bytes].view(dtype).reshape(shape)


class UnsupportedTypeError(GGUFError):
    """The tensor's ggml type has no dequantizer here."""


def _gather(raw: np.ndarray, nb: int, stride: int, offset: int, n_bytes: int,
            key: str) -> np.ndarray:
    """Bytes [offset, offset+n_bytes) of every block, copied contiguous as (nb, n_bytes).

    The copy goes through a void dtype of n_bytes, so NumPy does one memcpy per block
    instead of one loop iteration per byte."""
    src = np.ndarray((nb,), dtype=f"V{n_bytes}", buffer=raw, offset=offset, strides=(stride,))
    dst = scratch(key, (nb, n_bytes))
    np.copyto(dst.view(f"V{n_bytes}").reshape(nb), src)
    return dst


def _place(dst: np.ndarray, slot_bytes: int, slots, src: np.ndarray) -> None:
    """Copy src (nb, k*slot_bytes) into dst's slots `slots` (a slice over the (nb, n)
    slot_bytes-wide slots), again as whole-slot memcpys."""
    if isinstance(slots, int):
        slots = slice(slots, slots + 1)
    d = dst.reshape(dst.shape[0], -1).view(f"V{slot_bytes}")
    s = src.reshape(src.shape[0], -1).view(f"V{slot_bytes}")
    np.copyto(d[:, slots], s)


def _f16_bits_to_f32(h: np.ndarray, out: np.ndarray) -> np.ndarray:
    """IEEE half bits (uint16) -> float32, bit-exact (NaN payloads kept).

    NumPy's own half->float cast is a scalar loop (~2-3 ns/value here); this is a few
    vector ops: put the 15 magnitude bits where a float32's go, which gives the value
    times 2**-112 for normal and subnormal halves alike, then scale exactly by 2**112."""
    w = out.view(np.uint32)
    np.bitwise_and(h, np.uint16(0x7FFF), out=w, casting="unsafe")
    w <<= np.uint32(13)
    out *= np.float32(2.0 ** 112)
    big = out >= np.float32(65536.0)  # half exponent 31: inf or NaN (max finite is 65504)
    if big.any():
        np.bitwise_or(w, np.uint32(0x7F800000), out=w, where=big)
    sign = scratch("f16sign", out.shape, np.uint32)
    np.bitwise_and(h, np.uint16(0x8000), out=sign, casting="unsafe")
    sign <<= np.uint32(16)
    w |= sign
    return out


def _f16(raw: np.ndarray, nb: int, stride: int, offset: int) -> np.ndarray:
    """The fp16 field at `offset` of every block, as float32 (nb,).

    One value per block: NumPy's cast beats _f16_bits_to_f32's op overhead here."""
    return np.ndarray((nb,), dtype="<f2", buffer=raw, offset=offset, strides=(stride,)).astype(np.float32)


def _scale(out: np.ndarray, codes: np.ndarray, scale: np.ndarray) -> None:
    """out[b, s, :] = codes[b, s, :] * scale[b, s], codes int8/uint8, out float32."""
    np.copyto(out, codes)
    np.multiply(out, scale[..., None], out=out)


# ---- kernels: (raw uint8 1-D of nb blocks, out float32 1-D of nb*block_size, nb) ----

def _f32(raw, out, nb):
    np.copyto(out, raw.view("<f4"))


def _f16_kernel(raw, out, nb):
    _f16_bits_to_f32(raw.view("<u2"), out)


def _bf16(raw, out, nb):
    # bfloat16 is the top half of a float32.
    u = out.view(np.uint32)
    np.copyto(u, raw.view("<u2"))
    u <<= np.uint32(16)


def _q8_0(raw, out, nb):
    # block: d fp16 | qs int8[32]; w = d * q
    d = _f16(raw, nb, 34, 0)
    qs = np.ndarray((nb, 32), dtype=np.int8, buffer=raw, offset=2, strides=(34, 1))
    _scale(out.reshape(nb, 32), qs, d)


def _nibbles16(raw, nb, stride, offset) -> np.ndarray:
    """16 packed bytes per block -> (nb, 32) uint8: low nibbles, then high nibbles (the
    order of ggml's 32-weight blocks)."""
    q = _gather(raw, nb, stride, offset, 16, "q")
    codes = scratch("codes", (nb, 32))
    _place(codes, 16, 0, q)
    q64 = q.view(np.uint64)
    q64 >>= np.uint64(4)
    _place(codes, 16, 1, q)
    codes.view(np.uint64)[...] &= _LO4
    return codes


def _fifth_bits(raw, nb, stride, offset) -> np.ndarray:
    """The u32 bit-field at `offset` (bit j for weight j) -> (nb, 32) uint8, 16 where
    the bit is set, else 0: the weights' 5th bits, in place. Each of the 4 bytes is
    spread over a uint64 word, one bit per byte, with a multiply and masks."""
    qh = _gather(raw, nb, stride, offset, 4, "qh")
    h = scratch("hbits", (nb, 4), np.uint64)
    np.copyto(h, qh)
    h *= _LO1  # the byte in every byte of the word
    h &= np.uint64(0x8040201008040201)  # byte i keeps bit i
    h += np.uint64(0x7F7F7F7F7F7F7F7F)  # a nonzero byte (<= 0x80) gets its top bit; no carries
    h &= _HI1
    h >>= np.uint64(3)  # 0x80 -> 0x10
    return h.view(np.uint8)


def _q4_0(raw, out, nb):
    # block: d fp16 | qs[16]; w = d * (nibble - 8)
    d = _f16(raw, nb, 18, 0)
    codes = _nibbles16(raw, nb, 18, 2)
    c = codes.view(np.uint64)
    c += np.uint64(0x7878787878787878)  # nibble + 0x78 <= 0x87: no carry between bytes
    c ^= _HI1  # as int8 that is nibble + 0x78 - 0x80 = nibble - 8
    _scale(out.reshape(nb, 32), codes.view(np.int8), d)


def _q4_1(raw, out, nb):
    # block: d fp16 | m fp16 | qs[16]; w = d * nibble + m
    d = _f16(raw, nb, 20, 0)
    m = _f16(raw, nb, 20, 2)
    o = out.reshape(nb, 32)
    _scale(o, _nibbles16(raw, nb, 20, 4), d)
    o += m[:, None]


def _q5_0(raw, out, nb):
    # block: d fp16 | qh u32 (bit j = 5th bit of weight j) | qs[16]; w = d * (q - 16)
    d = _f16(raw, nb, 22, 0)
    codes = _nibbles16(raw, nb, 22, 6)
    codes |= _fifth_bits(raw, nb, 22, 2)
    c = codes.view(np.uint64)
    c += np.uint64(0x7070707070707070)  # q + 0x70 <= 0x8F: no carry between bytes
    c ^= _HI1  # as int8: q - 16
    _scale(out.reshape(nb, 32), codes.view(np.int8), d)


def _q5_1(raw, out, nb):
    # block: d fp16 | m fp16 | qh u32 | qs[16]; w = d * q + m
    d = _f16(raw, nb, 24, 0)
    m = _f16(raw, nb, 24, 2)
    codes = _nibbles16(raw, nb, 24, 8)
    codes |= _fifth_bits(raw, nb, 24, 4)
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
    body = _gather(raw, nb, 210, 0, 192, "body")
    ql, qh = body[:, :128], body[:, 128:]
    codes = scratch("codes", (nb, 256))  # 8 slots of 32 bytes: (half, k)
    _place(codes, 64, slice(0, 4, 2), ql)  # k = 0, 1 of each half: low nibbles
    ql.view(np.uint64)[...] >>= np.uint64(4)
    _place(codes, 64, slice(1, 4, 2), ql)  # k = 2, 3: high nibbles
    c = codes.view(np.uint64)
    c &= _LO4
    hq = scratch("hq", (nb, 256))
    t = scratch("t", (nb, 64))
    t64, qh64 = t.view(np.uint64), qh.view(np.uint64)
    for k in range(4):
        # bits 2k, 2k+1 of qh moved to bits 4, 5
        if k < 2:
            np.left_shift(qh64, np.uint64(4 - 2 * k), out=t64)
        else:
            np.right_shift(qh64, np.uint64(2 * k - 4), out=t64)
        _place(hq, 32, slice(k, 8, 4), t)
    h64 = hq.view(np.uint64)
    h64 &= np.uint64(0x3030303030303030)
    c |= h64
    c += np.uint64(0x6060606060606060)  # q + 0x60 <= 0x9F: no carry between bytes
    c ^= _HI1  # as int8: q - 32
    _scale(out.reshape(nb, 16, 16), codes.view(np.int8).reshape(nb, 16, 16), dl)


def _k_dl_ml(raw, nb, stride):
    """d*scale and dmin*min per 32-weight sub-block, each (nb, 8) float32 (exact), for
    Q4_K/Q5_K. The 12 scale bytes are three u32 words a, b, c, four 6-bit values each:
    sub-block j < 4 has scale a[j] & 63 and min b[j] & 63; j >= 4 has scale
    (c[j-4] & 15) | (a[j-4] >> 6) << 4 and min (c[j-4] >> 4) | (b[j-4] >> 6) << 4.
    Done on whole words so each NumPy call covers all blocks."""
    d = _f16(raw, nb, stride, 0)
    dmin = _f16(raw, nb, stride, 2)
    w = np.ndarray((3, nb), "<u4", buffer=raw, offset=4, strides=(4, stride))
    a, b, c = w.astype(np.uint32)
    lo6, lo4, hi2 = np.uint32(0x3F3F3F3F), np.uint32(0x0F0F0F0F), np.uint32(0x30303030)
    sm = np.empty((nb, 4), dtype=np.uint32)  # scale lo/hi words, min lo/hi words
    np.bitwise_and(a, lo6, out=sm[:, 0])
    np.bitwise_and(b, lo6, out=sm[:, 2])
    a >>= np.uint32(2)
    a &= hi2
    b >>= np.uint32(2)
    b &= hi2
    np.bitwise_and(c, lo4, out=sm[:, 1])
    sm[:, 1] |= a
    c >>= np.uint32(4)
    c &= lo4
    np.bitwise_or(c, b, out=sm[:, 3])
    sm8 = sm.view(np.uint8).reshape(nb, 2, 8)
    return d[:, None] * sm8[:, 0], dmin[:, None] * sm8[:, 1]


def _k_nibbles(raw, nb, stride, offset) -> np.ndarray:
    """Q4_K/Q5_K qs[128] -> (nb, 256) uint8: qs[32j:32j+32] low nibbles are sub-block 2j,
    high nibbles sub-block 2j+1."""
    q = _gather(raw, nb, stride, offset, 128, "q")
    codes = scratch("codes", (nb, 256))
    _place(codes, 32, slice(0, 8, 2), q)
    q.view(np.uint64)[...] >>= np.uint64(4)
    _place(codes, 32, slice(1, 8, 2), q)
    codes.view(np.uint64)[...] &= _LO4
    return codes


def _q4_k(raw, out, nb):
    # block: d fp16 | dmin fp16 | scales[12] | qs[128]; w = d*sc*q - dmin*m.
    dl, ml = _k_dl_ml(raw, nb, 144)
    codes = _k_nibbles(raw, nb, 144, 16)
    o = out.reshape(nb, 8, 32)
    _scale(o, codes.reshape(nb, 8, 32), dl)
    o -= ml[..., None]


def _bit_planes(bits64: np.ndarray, nb: int, to_bit: int) -> np.ndarray:
    """A 32-byte field whose bit j belongs to sub-block j (Q5_K's qh, Q3_K's hmask), as
    (nb, 256) bytes viewed as uint64: weight l of sub-block j holds bit j of byte l, moved
    to bit `to_bit`, all other bits clear. `bits64` is the field viewed as uint64."""
    hq = scratch("hq", (nb, 256))
    t = scratch("t", (nb, 32))
    t64 = t.view(np.uint64)
    for j in range(8):
        if j <= to_bit:
            np.left_shift(bits64, np.uint64(to_bit - j), out=t64)
        else:
            np.right_shift(bits64, np.uint64(j - to_bit), out=t64)
        _place(hq, 32, j, t)
    h64 = hq.view(np.uint64)
    h64 &= np.uint64(int.from_bytes(bytes([1 << to_bit]) * 8, "little"))
    return h64


def _q5_k(raw, out, nb):
    # block: d | dmin | scales[12] | qh[32] | qs[128]; like Q4_K, and sub-block j takes its
    # 5th bits from bit j of qh[0:32].
    dl, ml = _k_dl_ml(raw, nb, 176)
    codes = _k_nibbles(raw, nb, 176, 48)
    qh = _gather(raw, nb, 176, 16, 32, "qh")
    codes.view(np.uint64)[...] |= _bit_planes(qh.view(np.uint64), nb, 4)
    o = out.reshape(nb, 8, 32)
    _scale(o, codes.reshape(nb, 8, 32), dl)
    o -= ml[..., None]


def _two_bit_planes(raw, nb, stride, offset) -> np.ndarray:
    """Q2_K/Q3_K qs[64] -> (nb, 256) uint8: weight 128i + 32s + l is
    (qs[32i+l] >> 2s) & 3."""
    q = _gather(raw, nb, stride, offset, 64, "q")
    q64 = q.view(np.uint64)
    codes = scratch("codes", (nb, 256))
    t = scratch("t", (nb, 64))
    for s in range(4):
        np.right_shift(q64, np.uint64(2 * s), out=t.view(np.uint64))
        _place(codes, 32, slice(s, 8, 4), t)
    codes.view(np.uint64)[...] &= _LO2
    return codes


def _q3_k(raw, out, nb):
    # block: hmask[32] | qs[64] | scales[12] | d fp16. Weight 32k + l (k = 4i + s):
    # 2-bit code from qs (see _two_bit_planes), minus 4 unless bit k of hmask[l] is set.
    # Scales: 16 6-bit values, low nibbles from bytes 0..7, high 2 bits from bytes 8..11.
    d = _f16(raw, nb, 110, 108)
    s = _gather(raw, nb, 110, 96, 12, "s")
    sc = np.empty((nb, 4, 4), dtype=np.uint8)  # [group g][t] -> scale index 4g + t
    lo, hi = s[:, :8], s[:, 8:12]
    np.bitwise_and(lo, 15, out=sc[:, 0:2].reshape(nb, 8))
    np.right_shift(lo, 4, out=sc[:, 2:4].reshape(nb, 8))
    for g in range(4):
        sc[:, g] |= ((hi >> (2 * g)) & 3) << 4
    dl = d[:, None] * (sc.reshape(nb, 16).view(np.int8) - np.int8(32))  # (nb, 16), exact
    codes = _two_bit_planes(raw, nb, 110, 32)
    hm = _gather(raw, nb, 110, 0, 32, "hm")
    hm64 = hm.view(np.uint64)
    hm64 ^= np.uint64(0xFFFFFFFFFFFFFFFF)  # we need the bits that are NOT set
    h64 = _bit_planes(hm64, nb, 2)
    h64 *= np.uint64(0x3F)  # 0x04 -> 0xFC, which is -4 with the low 2 bits clear
    c = codes.view(np.uint64)
    c |= h64
    _scale(out.reshape(nb, 16, 16), codes.view(np.int8).reshape(nb, 16, 16), dl)


def _q2_k(raw, out, nb):
    # block: scales[16] (low nibble scale, high nibble min) | qs[64] | d | dmin.
    # Sub-blocks of 16; w = d*sc*q - dmin*m.
    d = _f16(raw, nb, 84, 80)
    dmin = _f16(raw, nb, 84, 82)
    s = _gather(raw, nb, 84, 0, 16, "s")
    dl = d[:, None] * (s & 15)
    ml = dmin[:, None] * (s >> 4)
    codes = _two_bit_planes(raw, nb, 84, 16)
    o = out.reshape(nb, 16, 16)
    _scale(o, codes.reshape(nb, 16, 16), dl)
    o -= ml[..., None]


_KVALUES_F32 = IQ4NL_KVALUES.astype(np.float32)


def _lookup(codes: np.ndarray, out: np.ndarray) -> None:
    """out = kvalues[codes] (as float32). np.take wants intp indices and would make a
    fresh copy of them otherwise."""
    idx = scratch("idx", codes.shape, np.intp)
    np.copyto(idx, codes)
    np.take(_KVALUES_F32, idx, out=out, mode="clip")


def _iq4_nl(raw, out, nb):
    # block: d fp16 | qs[16]; w = d * kvalues[nibble], nibbles ordered as in Q4_0.
    d = _f16(raw, nb, 18, 0)
    codes = _nibbles16(raw, nb, 18, 2)
    o = out.reshape(nb, 32)
    _lookup(codes, o)
    o *= d[:, None]


def _iq4_xs(raw, out, nb):
    # block: d fp16 | scales_h u16 | scales_l[4] | qs[128]. Sub-block j (of 32): 6-bit
    # scale ((scales_l[j/2] >> 4(j%2)) & 15) | ((scales_h >> 2j) & 3) << 4, minus 32;
    # qs[16j:16j+16] low nibbles then high nibbles; w = d*sc * kvalues[nibble].
    d = _f16(raw, nb, 136, 0)
    sh = np.ndarray((nb, 1), "<u2", buffer=raw, offset=2, strides=(136, 2)).astype(np.uint16)
    sl = _gather(raw, nb, 136, 4, 4, "sl")
    sc = np.empty((nb, 4, 2), dtype=np.uint8)
    np.bitwise_and(sl, 15, out=sc[:, :, 0])
    np.right_shift(sl, 4, out=sc[:, :, 1])
    shifts = np.arange(0, 16, 2, dtype=np.uint16)
    sc = sc.reshape(nb, 8) | (((sh >> shifts) & 3).astype(np.uint8) << 4)
    dl = d[:, None] * (sc.view(np.int8) - np.int8(32))
    q = _gather(raw, nb, 136, 8, 128, "q")
    codes = scratch("codes", (nb, 256))
    _place(codes, 16, slice(0, 16, 2), q)
    q.view(np.uint64)[...] >>= np.uint64(4)
    _place(codes, 16, slice(1, 16, 2), q)
    codes.view(np.uint64)[...] &= _LO4
    o = out.reshape(nb, 8, 32)
    _lookup(codes.reshape(nb, 8, 32), o)
    o *= dl[..., None]


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
        supported = ", ".join(sorted(type_name(t) for t in SUPPORTED_TYPES))
        raise UnsupportedTypeError(
            f"cannot dequantize ggml type {type_name(ggml_type)} ({ggml_type}){where}; "
            f"supported: {supported}")
    return GGML_QUANT_SIZES[T(ggml_type)]


def quantized_row_bytes(ggml_type: int, n_cols: int) -> int:
    """Bytes one row of `n_cols` weights takes in `ggml_type`."""
    block_size, type_size = _check_type(ggml_type, None)
    if n_cols % block_size:
        raise GGUFError(f"a {type_name(ggml_type)} row of {n_cols} weights is not a whole "
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
    """Like dequantize() but writes into `out`, a writeable float32 array whose shape gives
    the tensor's shape. Returns `out`.

    `out` is normally C-contiguous. It may also be a strided 2-D view, such as
    `big[:, c0:c1].T`, which is how the model stores a matrix transposed: rows are then
    dequantized in chunks into a per-thread scratch buffer (cache-hot) and copied out."""
    block_size, type_size = _check_type(ggml_type, name)
    where = f" for tensor {name!r}" if name else ""
    if not isinstance(out, np.ndarray) or out.dtype != np.float32 or not out.flags.writeable \
            or not (out.flags.c_contiguous or out.ndim == 2):
        raise TypeError(f"dequantize_into{where}: out must be a writeable float32 array, "
                        f"C-contiguous or 2-D")
    n_cols = out.shape[-1] if out.ndim else 1
    if n_cols % block_size:
        raise GGUFError(f"{type_name(ggml_type)} tensor{where}: row length {n_cols} is not a "
                        f"multiple of the block size {block_size}")
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = np.frombuffer(raw, dtype=np.uint8)
    raw = np.asarray(raw)
    if raw.dtype != np.uint8:
        raise TypeError(f"dequantize{where}: raw must be a uint8 array, got {raw.dtype}")
    raw = raw.reshape(-1)
    if not raw.flags.c_contiguous:
        raw = np.ascontiguousarray(raw)
    n_blocks = out.size // block_size
    if raw.size != n_blocks * type_size:
        raise GGUFError(
            f"{type_name(ggml_type)} tensor{where} of shape {tuple(out.shape)} needs "
            f"{n_blocks * type_size} bytes ({n_blocks} blocks of {type_size}), got {raw.size}")
    if n_blocks == 0:
        return out
    kernel = _KERNELS[ggml_type]
    if out.flags.c_contiguous:
        flat = out.reshape(-1)
        step = max(1, CHUNK_ELEMENTS // block_size)  # in blocks

        def run(b0: int) -> None:
            b1 = min(b0 + step, n_blocks)
            with np.errstate(all="ignore"):  # garbage scales may make inf/NaN, as in ggml
                kernel(raw[b0 * type_size:b1 * type_size], flat[b0 * block_size:b1 * block_size],
                       b1 - b0)
        starts = range(0, n_blocks, step)
    else:
        blocks_per_row = n_cols // block_size
        row_bytes = blocks_per_row * type_size
        # Twice the usual chunk: per-chunk overhead measured higher than the cost of a
        # scratch buffer that spills out of L2 (2**16-2**17 weights ran 1.5-4x slower).
        step = max(1, 2 * CHUNK_ELEMENTS // n_cols)  # in rows

        def run(r0: int) -> None:
            r1 = min(r0 + step, out.shape[0])
            rows = scratch("dequantize_into.rows", (r1 - r0, n_cols), np.float32)
            with np.errstate(all="ignore"):
                kernel(raw[r0 * row_bytes:r1 * row_bytes], rows.reshape(-1),
                       (r1 - r0) * blocks_per_row)
            out[r0:r1] = rows  # the strided (e.g. transposed) copy
        starts = range(0, out.shape[0], step)

    if threads > 1 and len(starts) > 1:
        list(thread_pool(threads).map(run, starts))
    else:
        for b0 in starts:
            run(b0)
    return out


# ---------------------------------------------------------------------------------------
# int8 requantization ("int8" memory mode)
#
# A matrix W [n_out, n_in] is stored as int8 codes with one float32 scale per row and one
# float32 factor per column: W[o, i] ≈ codes[o, i] · row_scale[o] · col_factor[i]. Both
# scales sit outside the dot product, so x @ W.T = ((x · col_factor) @ codes.T) · row_scale,
# and a matmul costs one int8 -> float32 conversion plus the BLAS call. (Q8_0-style scales
# per 32 weights need a broadcast multiply over every weight, which measured 1.7 G/s
# against 4.9 G/s for the conversion, and made decode 3x slower.)
# col_factor = sqrt(max_o |W[o, i]|) evens out the columns, so that one large input channel
# does not coarsen a whole row. On Qwen2.5-0.5B (Q4_K_M) against the float32 weights: max
# 0.21·std and mean 0.021·std of logit error, the same 48-token greedy answer; one scale per
# row without the column factor gave max 0.39·std.


def int8_column_factors(col_absmax: np.ndarray) -> np.ndarray:
    """float32 [n_in] column factors from each column's max |w|."""
    f = np.sqrt(col_absmax, dtype=np.float32)
    # Empty, NaN or inf columns (garbage files): any finite factor works, and an inf one
    # would turn every output of the matmul into NaN, not only that column's rows.
    f[~(f > 0) | ~np.isfinite(f)] = 1.0
    return f


def quantize_int8(w: np.ndarray, col_factor: np.ndarray, codes: np.ndarray,
                  row_scale: np.ndarray) -> None:
    """float32 rows w [R, n_in] -> int8 codes [R, n_in] and float32 row_scale [R], so that
    w ≈ codes · row_scale[:, None] · col_factor (Q8_0's rounding: scale = max / 127,
    code = round(w / scale)). `w` is overwritten."""
    with np.errstate(all="ignore"):  # NaN or inf weights (garbage files) code as garbage
        w /= col_factor
        np.max(np.abs(w), axis=1, out=row_scale)
        row_scale *= 1.0 / 127.0
        # Rows too small for 1/scale to be finite code as zeros (as empty rows do).
        inv = np.divide(1.0, row_scale, out=np.zeros_like(row_scale),
                        where=row_scale > np.finfo(np.float32).tiny)
        w *= inv[:, None]
        np.rint(w, out=w)
        np.copyto(codes, w, casting="unsafe")  # |w| <= 127 after scaling


def dequantize_int8(codes: np.ndarray, row_scale: np.ndarray, col_factor: np.ndarray) -> np.ndarray:
    """The float32 matrix that quantize_int8's output stands for."""
    return codes.astype(np.float32) * row_scale[:, None] * col_factor


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def thread_pool(threads: int) -> ThreadPoolExecutor:
    """A shared pool of `threads` workers (capped by the core count, and at 8): NumPy's kernels
    release the GIL, so chunks of one array operation run in parallel."""
    threads = min(threads, os.cpu_count() or 1, 8)
    with _POOLS_LOCK:  # two first callers at once must not make two pools
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="dequant")
    return pool
