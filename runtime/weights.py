"""How a weight matrix is held in memory, and how it is loaded from the GGUF.

Three memory modes (model.py's Model.load picks one):
- "f32": dequantized once into resident float32 matrices (fastest, 4 bytes per weight;
  chosen when it fits the RAM budget), kept transposed as [n_in, n_out] and applied by
  model.linear() as `x @ W` (model.py's docstring says why);
- "quant": the GGUF's own blocks (QuantMatrix), dequantized in row chunks at every use
  (slowest; chosen when float32 does not fit);
- "int8", only when asked for, since its logits are approximate: requantized at load to
  int8 codes with a scale per row and per column (Int8Matrix, 1 byte per weight,
  [n_out, n_in] rows); each matmul turns chunks of rows back into float32, on two threads
  for a single token.
A layer's matrix that is not a float32 array (QuantMatrix, StackedQuant for fused ones in
quant mode, Int8Matrix) has a matmul(x): [T, n_in] -> [T, n_out], which is all the forward
pass sees of it. The token embedding is only looked up, take(ids): [T] -> [T, n_embd]
(a QuantMatrix, or HeadColumns for a tied float32 head). WeightLoader turns tensor names
into one of them, fusing several tensors (q/k/v, gate/up) into one matrix.
"""
from __future__ import annotations

import mmap
import os
from typing import Callable, Sequence

import numpy as np

from runtime import gguf, quants
from runtime.gguf import GGUFError

# Quantized-mode matmuls dequantize this many weight bytes (as float32) at a time.
QUANT_CHUNK_BYTES = 8 << 20
# An int8-mode matmul of one token (decode) splits its rows over two threads, each
# converting chunks of this many weights to float32 (1 MiB, which stays in L2 between the
# conversion and the GEMV, BLAS's matrix-vector product): the conversion is NumPy work on
# one core, and OpenBLAS's own threads gain little on a GEMV. Batches (2+ tokens)
# measured no faster split, so they run on one thread in QUANT_CHUNK_BYTES chunks and
# leave the cores to OpenBLAS's GEMM.
INT8_CHUNK_WEIGHTS = 1 << 18


def _thread_count() -> int:
    """The thread count BLAS was given (--threads: cli.set_threads puts it in the
    environment before NumPy loads), else every core this process may run on."""
    try:
        n = int(os.environ.get("OPENBLAS_NUM_THREADS", "0"))
    except ValueError:
        n = 0
    if n > 0:
        return n
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# Dequantizing at load runs on every core it may use: NumPy releases the GIL in its
# kernels, and first-touch page faults of the new float32 matrices also spread over the
# cores. --threads 1 keeps the load, and int8 decode (above), on one core.
LOAD_THREADS = _thread_count()


class QuantMatrix:
    """A weight kept in its GGUF blocks, [n_out, n_in] rows; matmul() dequantizes row
    chunks and applies each as `x @ rows.T`."""

    def __init__(self, raw: np.ndarray, ggml_type: int, shape: tuple[int, int]):
        self.raw, self.ggml_type, self.shape = raw, ggml_type, shape
        self.row_bytes = quants.quantized_row_bytes(ggml_type, shape[1])
        self.rows_per_chunk = max(1, QUANT_CHUNK_BYTES // (4 * shape[1]))

    def rows(self, start: int, stop: int) -> np.ndarray:
        raw = self.raw[start * self.row_bytes: stop * self.row_bytes]
        return quants.dequantize(raw, self.ggml_type, (stop - start, self.shape[1]))

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows `ids`, dequantized (the token embedding's lookup): [T] -> [T, n_in]."""
        raw = self.raw.reshape(-1, self.row_bytes)[ids]  # [T, row_bytes] gathered blocks
        return quants.dequantize(raw.reshape(-1), self.ggml_type, (ids.size, self.shape[1]))

    def in_memory(self) -> "QuantMatrix":
        """The same matrix with its blocks copied out of the mapped file into memory, so
        that the file need not stay mapped (nor leased) for it after the load."""
        raw = resident_array(self.raw.shape, np.uint8)
        raw[:] = self.raw
        return QuantMatrix(raw, self.ggml_type, self.shape)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        # [T, n_in] -> [T, n_out], one chunk of dequantized rows at a time
        out = np.empty((x.shape[0], self.shape[0]), dtype=np.float32)
        for r0 in range(0, self.shape[0], self.rows_per_chunk):
            r1 = min(r0 + self.rows_per_chunk, self.shape[0])
            np.matmul(x, self.rows(r0, r1).T, out=out[:, r0:r1])
        return out


class StackedQuant:
    """Several QuantMatrix objects used as one matrix stacked by rows (fused q/k/v or
    gate/up in quant mode: each part keeps its own GGUF blocks and ggml type)."""

    def __init__(self, parts: list[QuantMatrix]):
        self.parts = parts
        self.shape = (sum(p.shape[0] for p in parts), parts[0].shape[1])

    def matmul(self, x: np.ndarray) -> np.ndarray:
        # [T, n_in] -> [T, sum of the parts' n_out]
        return np.concatenate([p.matmul(x) for p in self.parts], axis=1)


class HeadColumns:
    """The token embedding of a float32-mode model whose output head is the embedding
    itself (a tied head, no output.weight). The head, [n_embd, n_vocab], was dequantized
    from the embedding's own blocks by the same kernels, so its columns are the
    embedding's rows bit for bit, and the file need not stay mapped for them."""

    def __init__(self, head: np.ndarray):
        self.head = head  # [n_embd, n_vocab]
        self.shape = head.shape[::-1]  # the embedding's, [n_vocab, n_embd]

    def take(self, ids: np.ndarray) -> np.ndarray:
        # [T] -> [T, n_embd]; C order, as the blocks' lookup gives it: the layers' matmuls
        # then run the same BLAS kernels, so the logits are the same bit for bit.
        return np.ascontiguousarray(self.head[:, ids].T)


class Int8Matrix:
    """A weight requantized to int8 at load (see quants.quantize_int8): codes
    [n_out, n_in], row_scale [n_out], col_factor [n_in]. matmul() converts a chunk of rows
    to float32 in a per-thread scratch buffer and applies it as `rows @ x.T`; the two
    scales are applied to x and to the result, outside the loop."""

    def __init__(self, codes: np.ndarray, row_scale: np.ndarray, col_factor: np.ndarray):
        self.codes, self.row_scale, self.col_factor = codes, row_scale, col_factor
        self.shape = codes.shape

    def _rows_into(self, xT: np.ndarray, outT: np.ndarray, r0: int, r1: int,
                   step_rows: int) -> None:
        # outT[r0:r1] = rows r0..r1-1 of the matrix @ xT, step_rows rows at a time
        for a in range(r0, r1, step_rows):
            b = min(a + step_rows, r1)
            rows = quants.scratch("Int8Matrix.rows", (b - a, self.shape[1]), np.float32)
            np.copyto(rows, self.codes[a:b], casting="unsafe")
            # [b-a, n_in] @ [n_in, T]: the chunk as BLAS's left operand; as a transposed
            # right operand (x @ rows.T) batches of 2-16 tokens ran about 2x slower
            np.matmul(rows, xT, out=outT[a:b])

    def matmul(self, x: np.ndarray) -> np.ndarray:
        # [T, n_in] -> [T, n_out], computed as its transpose [n_out, T]
        n_out, n_in = self.shape
        xT = (x * self.col_factor).T
        outT = np.empty((n_out, x.shape[0]), dtype=np.float32)
        step_rows = max(1, INT8_CHUNK_WEIGHTS // n_in)
        # where the second thread takes over: half way, rounded up to a whole chunk
        mid_row = (n_out // 2 + step_rows - 1) // step_rows * step_rows
        if x.shape[0] > 1:  # a batch: one thread, big chunks (INT8_CHUNK_WEIGHTS says why)
            self._rows_into(xT, outT, 0, n_out, max(1, QUANT_CHUNK_BYTES // (4 * n_in)))
        elif LOAD_THREADS < 2 or not 0 < mid_row < n_out:  # one core, or a single chunk
            self._rows_into(xT, outT, 0, n_out, step_rows)
        else:  # one token: rows from mid_row on in the pool's thread, the rest here
            other = quants.thread_pool(2).submit(self._rows_into, xT, outT, mid_row, n_out,
                                                 step_rows)
            self._rows_into(xT, outT, 0, mid_row, step_rows)
            other.result()
        outT *= self.row_scale[:, None]
        return np.ascontiguousarray(outT.T)


def ram_available_bytes() -> int:
    """MemAvailable from /proc/meminfo; where there is none (not Linux), 8 GiB is assumed."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def resident_array(shape: tuple, dtype) -> np.ndarray:
    """An uninitialized array for weights that stay for the model's life.

    It is a private anonymous mapping rather than np.empty, because NumPy asks for
    transparent huge pages on every array of 4 MiB or more. In a VM whose host backs
    guest memory lazily, a fresh 2 MiB page costs the host 512 faults: on the 2-core dev
    VM, touching 2 GB took 1.7-8.1 s in huge pages against 1.1-1.5 s in 4 KiB ones,
    Qwen's bench loads 4.7-5.5 s against 2.1-3.4 s, and decode speed did not change
    (docs/performance.md). A kernel set to THP `always` still uses huge pages here."""
    n_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if n_bytes == 0 or not hasattr(mmap, "MAP_ANONYMOUS"):  # Windows: no THP anyway
        return np.empty(shape, dtype)
    try:
        buf = mmap.mmap(-1, n_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError as e:
        raise MemoryError(f"cannot allocate {n_bytes / 2**20:,.0f} MiB for the weights "
                          f"({e.strerror}); --mode quant needs the least memory") from None
    return np.frombuffer(buf, dtype).reshape(shape)


class WeightLoader:
    """Turns tensor names into what the forward pass holds: f32() and optional() give
    float32 arrays (norms, biases, the router) in every mode; matrix() gives a float32
    [n_in, n_out] array, an Int8Matrix, or a QuantMatrix (a StackedQuant when fused), by
    mode."""

    def __init__(self, g: gguf.GGUFFile, mode: str, progress: Callable[[float], None] | None):
        self.g, self.mode, self.progress = g, mode, progress
        self.total_bytes = sum(t.n_bytes for t in g.tensors.values()) or 1
        self.done_bytes = 0

    def has(self, name: str) -> bool:
        return name in self.g.tensors

    def info(self, name: str) -> gguf.TensorInfo:
        try:
            t = self.g.tensors[name]
        except KeyError:
            raise GGUFError(f"tensor {name!r} is missing") from None
        check_supported(t.ggml_type, name)
        return t

    def _tick(self, n_bytes: int) -> None:
        self.done_bytes += n_bytes
        if self.progress:
            self.progress(min(self.done_bytes / self.total_bytes, 1.0))

    def f32(self, name: str, shape: tuple | None = None) -> np.ndarray:
        t = self.info(name)
        if shape is not None and t.shape != tuple(shape):
            raise GGUFError(f"tensor {name!r} has shape {t.shape}, expected {tuple(shape)}")
        a = quants.dequantize(self.g.raw(name), t.ggml_type, t.shape, name=name)
        self._tick(t.n_bytes)
        return a

    def optional(self, name: str, shape: tuple | None = None) -> np.ndarray | None:
        return self.f32(name, shape) if self.has(name) else None

    def _part(self, name: str, n_in: int, r: int, expert: int | None) -> tuple[np.ndarray, int]:
        """The bytes and ggml type of tensor `name`, checked to be [r, n_in]; or, with
        `expert`, of that expert's [r, n_in] slice of a [n_expert, r, n_in] tensor."""
        t = self.info(name)
        if expert is None:
            if t.shape != (r, n_in):
                raise GGUFError(f"tensor {name!r} has shape {t.shape}, expected {(r, n_in)}")
            return self.g.raw(name), t.ggml_type
        if len(t.shape) != 3 or t.shape[1:] != (r, n_in) or not 0 <= expert < t.shape[0]:
            raise GGUFError(f"tensor {name!r} has shape {t.shape}, expected "
                            f"(n_expert > {expert}, {r}, {n_in})")
        expert_bytes = t.n_bytes // t.shape[0]
        return self.g.raw(name)[expert * expert_bytes:(expert + 1) * expert_bytes], t.ggml_type

    def matrix(self, names: Sequence[str], n_in: int, rows: Sequence[int],
               expert: int | None = None):
        """Several [r_i, n_in] tensors (or one expert's slices of them) fused into one
        [n_in, sum(r_i)] float32 matrix, or its int8 or quantized stand-in."""
        parts = [self._part(name, n_in, r, expert) for name, r in zip(names, rows)]
        if self.mode == "quant":
            mats = [QuantMatrix(raw, ggml_type, (r, n_in))
                    for (raw, ggml_type), r in zip(parts, rows)]
            w = mats[0] if len(mats) == 1 else StackedQuant(mats)
        elif self.mode == "int8":
            w = self._int8(parts, names, n_in, rows)
        else:
            w = resident_array((n_in, sum(rows)), np.float32)
            r0 = 0
            for (raw, ggml_type), name, r in zip(parts, names, rows):
                quants.dequantize_into(raw, ggml_type, w[:, r0:r0 + r].T, name=name,
                                       threads=LOAD_THREADS)
                r0 += r
        # An expert tensor holds every expert: its pages go only after the last one's slice.
        last_use = expert is None or expert == self.info(names[0]).shape[0] - 1
        for name, (raw, _) in zip(names, parts):
            if self.mode != "quant" and last_use:
                self.g.release(name)  # the float32 or int8 copy replaces these pages
            self._tick(raw.nbytes)
        return w

    def _int8(self, parts: list, names: Sequence[str], n_in: int, rows: Sequence[int]) -> Int8Matrix:
        # Two passes over the GGUF blocks: the column factors need every row's maxima
        # before the first row can be coded.
        step_rows = max(1, 2 * quants.CHUNK_ELEMENTS // n_in)
        firsts = [sum(rows[:k]) for k in range(len(rows))]  # each part's first fused row
        # (part k, its first row in the fused matrix, the chunk's first row within part k)
        chunks = [(k, firsts[k], a) for k, r in enumerate(rows) for a in range(0, r, step_rows)]

        def dequantized(k: int, a: int) -> np.ndarray:
            # rows a..b-1 of part k as float32, [b - a, n_in], in this thread's scratch
            (raw, ggml_type), b = parts[k], min(a + step_rows, rows[k])
            row_bytes = quants.quantized_row_bytes(ggml_type, n_in)
            w = quants.scratch("int8.load", (b - a, n_in), np.float32)
            return quants.dequantize_into(raw[a * row_bytes:b * row_bytes], ggml_type, w,
                                          name=names[k])

        def col_absmax(chunk) -> np.ndarray:
            k, _, a = chunk
            return np.max(np.abs(dequantized(k, a)), axis=0)

        pool = quants.thread_pool(LOAD_THREADS)
        col_factor = quants.int8_column_factors(
            np.max(list(pool.map(col_absmax, chunks)), axis=0))
        codes = resident_array((sum(rows), n_in), np.int8)
        row_scale = np.empty(sum(rows), dtype=np.float32)

        def code(chunk) -> None:
            k, r0, a = chunk
            w = dequantized(k, a)
            s = slice(r0 + a, r0 + a + w.shape[0])
            quants.quantize_int8(w, col_factor, codes[s], row_scale[s])
        list(pool.map(code, chunks))
        return Int8Matrix(codes, row_scale, col_factor)


def check_supported(ggml_type: int, name: str) -> None:
    if ggml_type not in quants.SUPPORTED_TYPES:
        raise quants.UnsupportedTypeError(
            f"tensor {name!r} has type {gguf.type_name(ggml_type)}, which chatfile cannot "
            f"dequantize yet")
