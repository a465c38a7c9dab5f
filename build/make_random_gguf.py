"""A random-weight GGUF with a real model's shapes, for memory and speed checks.

    python build/make_random_gguf.py llama3-8b OUT_DIR     # ~4.9 GB, Llama-3-8B shapes
    python build/make_random_gguf.py tiny OUT_DIR          # ~1 MB, for tests

The weights are random bytes in the GGUF's own quantized blocks, laid out as llama.cpp's
Q4_K_M lays them out (most matrices Q4_K; attn_v and ffn_down Q6_K in the layers
llama.cpp gives "more bits"; output Q6_K; norms F32). Only the fp16 block scales are
overwritten, so that every dequantized weight is finite and small (std about 0.03) and a
forward pass through all the layers stays finite. The tokenizer is a made-up byte-level
BPE vocabulary of the right size (256 byte tokens, printable-pair merges, fillers, and
Llama-3's special tokens at the end), enough for Model.load and tokenize().

Tensor data is written one tensor at a time, so memory stays near the largest tensor
(the Q6_K output head, 431 MB for Llama-3-8B), not the file size.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Q4_K, Q6_K, F32 = 12, 14, 0  # ggml type ids
BLOCK_BYTES = {Q4_K: 144, Q6_K: 210}  # both hold 256 weights per block
BLOCK_WEIGHTS = 256
# fp16 block scales. Q4_K: w = d·sc·q - dmin·m with sc, m in 0..63 and q in 0..15; with
# dmin = 7.5·d the mean is ~0 and the std ~245·d. Q6_K: w = d·sc·(q - 32) with sc a
# random int8 and q in 0..63: std ~1370·d. Both come out near 0.03.
Q4_K_D, Q4_K_DMIN = 1.2e-4, 9.0e-4
Q6_K_D = 2.2e-5  # a subnormal fp16: a case the dequantizer must get right too
MOSTLY_Q4_K_M = 15  # general.file_type


@dataclass(frozen=True)
class LlamaShape:
    name: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    n_special: int  # special tokens at the end of the vocabulary
    rope_base: float
    n_ctx: int


SHAPES = {
    "llama3-8b": LlamaShape("random Llama-3-8B shapes", n_layer=32, n_embd=4096, n_head=32,
                            n_head_kv=8, n_ff=14336, n_vocab=128256, n_special=256,
                            rope_base=500000.0, n_ctx=8192),
    # K-quant rows need multiples of 256 weights: n_embd and n_ff are.
    "tiny": LlamaShape("random tiny llama", n_layer=2, n_embd=256, n_head=4, n_head_kv=2,
                       n_ff=512, n_vocab=1024, n_special=16, rope_base=500000.0, n_ctx=512),
}


def _more_bits(i: int, n: int) -> bool:
    # llama.cpp's use_more_bits(): the first and last eighth of the layers, and every
    # third layer in between, get Q6_K for attn_v and ffn_down in Q4_K_M.
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_plan(s: LlamaShape) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, shape in NumPy order [rows, cols], ggml type) of every tensor, in file order."""
    hd = s.n_embd // s.n_head
    n_kv = s.n_head_kv * hd
    plan = [("token_embd.weight", (s.n_vocab, s.n_embd), Q4_K)]
    for i in range(s.n_layer):
        p = f"blk.{i}."
        more = Q6_K if _more_bits(i, s.n_layer) else Q4_K
        plan += [
            (p + "attn_norm.weight", (s.n_embd,), F32),
            (p + "attn_q.weight", (s.n_embd, s.n_embd), Q4_K),
            (p + "attn_k.weight", (n_kv, s.n_embd), Q4_K),
            (p + "attn_v.weight", (n_kv, s.n_embd), more),
            (p + "attn_output.weight", (s.n_embd, s.n_embd), Q4_K),
            (p + "ffn_norm.weight", (s.n_embd,), F32),
            (p + "ffn_gate.weight", (s.n_ff, s.n_embd), Q4_K),
            (p + "ffn_up.weight", (s.n_ff, s.n_embd), Q4_K),
            (p + "ffn_down.weight", (s.n_embd, s.n_ff), more),
        ]
    plan += [("output_norm.weight", (s.n_embd,), F32),
             ("output.weight", (s.n_vocab, s.n_embd), Q6_K)]
    return plan


def tensor_bytes(shape: tuple[int, ...], ggml_type: int) -> int:
    n = int(np.prod(shape))
    return 4 * n if ggml_type == F32 else n // BLOCK_WEIGHTS * BLOCK_BYTES[ggml_type]


def random_blocks(rng: np.random.Generator, ggml_type: int, n_blocks: int) -> np.ndarray:
    """n_blocks random blocks, flat uint8, with sane fp16 scales written over the random ones."""
    bb = BLOCK_BYTES[ggml_type]
    raw = rng.integers(0, 256, size=n_blocks * bb, dtype=np.uint8)
    blocks = raw.reshape(n_blocks, bb)
    if ggml_type == Q4_K:
        blocks[:, 0:2] = np.frombuffer(np.float16(Q4_K_D).tobytes(), np.uint8)
        blocks[:, 2:4] = np.frombuffer(np.float16(Q4_K_DMIN).tobytes(), np.uint8)
    else:
        blocks[:, 208:210] = np.frombuffer(np.float16(Q6_K_D).tobytes(), np.uint8)
    return raw


def _byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode map: printable bytes stand for themselves, the other bytes
    for the code points from 256 up, in byte order."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def vocabulary(s: LlamaShape) -> tuple[list[str], list[int], list[str]]:
    """tokens, token types (1 normal, 3 control) and merges of a made-up byte-level BPE."""
    chars = _byte_chars()
    printable = [chars[b] for b in range(32, 127)]  # space is 'Ġ' here
    n_normal = s.n_vocab - s.n_special
    tokens, merges = list(chars), []
    for a in printable:
        for b in printable:
            if len(tokens) >= n_normal:
                break
            tokens.append(a + b)
            merges.append(f"{a} {b}")
    tokens += [f"<unused_{i}>" for i in range(n_normal - len(tokens))]
    special = ["<|begin_of_text|>", "<|end_of_text|>"] + [
        f"<|reserved_special_token_{i}|>" for i in range(s.n_special - 2)]
    if s.n_special > 9:
        special[9] = "<|eot_id|>"  # Llama-3's end of turn, at id n_normal + 9
    tokens += special[: s.n_special]
    types = [1] * n_normal + [3] * s.n_special
    return tokens, types, merges


def write_random_gguf(path, s: LlamaShape, seed: int = 0,
                      log=lambda msg: None) -> Path:
    """Write the GGUF to `path` (one tensor in memory at a time); return the path."""
    import gguf

    rng = np.random.default_rng(seed)
    path = Path(path)
    plan = tensor_plan(s)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(s.name)
    w.add_file_type(MOSTLY_Q4_K_M)
    w.add_block_count(s.n_layer)
    w.add_context_length(s.n_ctx)
    w.add_embedding_length(s.n_embd)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_freq_base(s.rope_base)
    w.add_rope_dimension_count(s.n_embd // s.n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(s.n_vocab)
    tokens, types, merges = vocabulary(s)
    n_normal = s.n_vocab - s.n_special
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(n_normal)
    w.add_eos_token_id(n_normal + 1)
    w.add_add_bos_token(True)
    for name, shape, t in plan:
        if t == F32:
            w.add_tensor_info(name, shape, np.dtype(np.float32), tensor_bytes(shape, t))
        else:
            w.add_tensor_info(name, shape, np.dtype(np.float32), tensor_bytes(shape, t),
                              raw_dtype=gguf.GGMLQuantizationType(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    total = sum(tensor_bytes(shape, t) for _, shape, t in plan)
    done = 0
    for name, shape, t in plan:
        if t == F32:  # norm weights near 1
            data = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            data = random_blocks(rng, t, int(np.prod(shape)) // BLOCK_WEIGHTS)
        w.write_tensor_data(data)
        done += data.nbytes
        del data
        log(f"{done / total:6.1%} {name}")
    w.close()
    return path


def synthetic_model(name: str, out_dir, seed: int = 0, log=lambda msg: None) -> Path:
    """Write the synthetic model `name` (a key of SHAPES) into out_dir; return its path.

    Checks the free disk space first, so a full disk is a clear error, not a half file."""
    if name not in SHAPES:
        raise ValueError(f"unknown synthetic model {name!r}; choose from {', '.join(SHAPES)}")
    s = SHAPES[name]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    need_bytes = sum(tensor_bytes(shape, t) for _, shape, t in tensor_plan(s)) + (64 << 20)
    st = os.statvfs(out_dir)
    free_bytes = st.f_bavail * st.f_frsize
    if free_bytes < need_bytes:
        raise OSError(f"{out_dir} has {free_bytes / 1e9:.1f} GB free; the {name} GGUF needs "
                      f"{need_bytes / 1e9:.1f} GB")
    return write_random_gguf(out_dir / f"random-{name}.gguf", s, seed=seed, log=log)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=sorted(SHAPES))
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        path = synthetic_model(args.name, args.out_dir, args.seed,
                               log=lambda m: print(m, file=sys.stderr, flush=True))
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{path}: {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
