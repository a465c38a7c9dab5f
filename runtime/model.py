"""The model: weights, one forward pass, and a KV-cache session.

Where to read: `Session._forward` (at the end) is the whole forward pass, one loop over
the layers; the functions under "The forward pass and its pieces" are its steps (the KV
cache's writes and reads, _store and _span, among them). Model, between the two, loads
the weights and wraps the tokenizer; how a matrix is held is runtime/weights.py's
business, and the pass sees every matrix through linear().

Words used once and then freely: a GGUF is llama.cpp's model file (runtime/gguf.py) and
ggml its tensor library, whose block formats the GGUF's weights are in (runtime/quants.py);
rope is rotary position embedding (q and k rotated by an angle per position); prefill is
the prompt's pass, many tokens at once, and decode a pass of one new token; MoE (mixture
of experts) replaces a layer's FFN by several, of which a router picks a few per token.

Shape names in the comments: T new tokens in this pass (at most UBATCH_TOK), the first
at position pos0; S = pos0 + T positions held after it. n_q = n_head·head_dim, n_kv =
n_head_kv·head_dim and n_v = n_head_kv·head_dim_v are the widths of q, k and v (n_v =
n_kv unless the GGUF gives v its own head size); hd and hd_v are head_dim and head_dim_v.
The other sizes (n_embd, n_head, n_head_kv, n_ff, n_vocab, n_rot) are ArchConfig's fields
(archs.py), read from the GGUF's metadata.

Data layout, explained once:
- ggml stores a weight matrix as [n_out, n_in] rows (in NumPy order: gguf.py reverses
  ggml's ne). A resident (float32) matrix is kept transposed, [n_in, n_out] row-major,
  and applied as `x @ W`: for the 2-16-token batches of speculative decoding
  (speculate.py) OpenBLAS runs that layout ~1.5x faster than `x @ W.T` (it packs a
  transposed operand for every small GEMM, a matrix-matrix product). Dequantization writes
  the transposed layout directly, a chunk of rows at a time, so no second full-size copy
  is made; the strided writes still cost Qwen 0.4-0.8 s more load (docs/performance.md).
  Two exceptions keep the GGUF's [n_out, n_in]: the token embedding (rows looked up by
  id, left in its GGUF blocks; a tied head, one the GGUF does not store apart because it
  is the embedding, gives them as its columns when it is float32) and the small MoE router.
- q, k and v are fused into one [n_embd, n_q + n_kv + n_v] matrix at load (and gate/up
  into one [n_embd, 2·n_ff]), so a block makes four matmuls instead of seven.
- Activations are float32 [T, n_embd]. Heads are split as [T, n_head, head_dim].
- The KV cache is preallocated per layer, values as [n_head_kv, n_ctx, head_dim_v] and
  keys transposed as [n_head_kv, head_dim, n_ctx], so that both attention matmuls take
  the first S positions of a head as a plain (not transposed) operand: OpenBLAS ran
  q @ kT 2-4x faster that way for one token than q @ k.T.
- A sliding-window layer (Gemma 2/3) keeps a ring of window + UBATCH_TOK positions
  instead of n_ctx (when that is fewer), position p in slot p % ring: a micro-batch of up
  to UBATCH_TOK tokens needs the window before its first token plus itself, and a rewind
  of up to UBATCH_TOK tokens (speculation rewinds at most one rejected draft, up to
  speculate.PREDICTION_DRAFT_MAX_TOK) still finds the window before the new end. A deeper
  rewind cannot resume (those positions are overwritten): Session.rewind then keeps 0
  tokens and the caller starts over, as llama.cpp does with its sliding-window cache.
  Gemma-3's window of 512 in a 32k context: 768 positions instead of 32,768 in 5 of
  every 6 layers.
- Query head h reads kv head h // (n_head / n_head_kv) (grouped-query attention).

Weights are held in one of three memory modes, "f32" (resident float32, the default
where it fits), "quant" (the GGUF's blocks, dequantized at every use) and "int8" (asked
for, approximate): runtime/weights.py. In every mode a layer's matrix goes through
linear(): an np.ndarray in f32 mode, else an object with its own matmul().
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from runtime import archs, gguf
from runtime.archs import ArchConfig
from runtime.gguf import GGUFError
from runtime.info import shown_name
from runtime.weights import (HeadColumns, Int8Matrix, QuantMatrix, WeightLoader,
                             ram_available_bytes)

# Prefill runs in micro-batches of this many tokens: big enough for BLAS to run at full
# speed, small enough that the [n_head, T, S] attention scores stay a few tens of MB at a
# 4k context (Qwen's 14 heads x 256 x 4096 float32: 59 MB).
UBATCH_TOK = 256
# Session.eval's `on_logits` (logits at every position, for prompt logprobs) runs the output
# head over this many bytes of logits at a time: Qwen's 151,936-entry vocabulary makes
# that 110 positions, where a whole 4096-token prompt would take 2.5 GB at once.
LOGIT_ROWS_BYTES = 64 << 20
# attention() scores a micro-batch's queries in blocks whose [n_head, block, S] scores
# stay about this size: at long contexts softmax's passes over the scores (max, exp, sum)
# then run on a block the allocator reuses and the caches hold, not one of 100+ MB.
# Qwen's 256-query micro-batch over 4k / 8k / 16k keys: 53 / 96-101 / 228 ms whole,
# 36 / 68 / 150 ms in blocks (docs/performance.md, "What was tried").
SCORES_BLOCK_BYTES = 16 << 20
# Model.load's memory modes (runtime/weights.py).
MODES = ("auto", "f32", "int8", "quant")


class ContextOverflowError(ValueError):
    """More tokens than the session's context holds."""


# ---------------------------------------------------------------------------------------
# A layer's weights, as the forward pass sees them (how they are held: runtime/weights.py)


def linear(x: np.ndarray, w, bias: np.ndarray | None = None) -> np.ndarray:
    # [T, n_in] -> [T, n_out]; a resident w is [n_in, n_out], any other has its own matmul
    y = x @ w if isinstance(w, np.ndarray) else w.matmul(x)
    if bias is not None:
        y += bias
    return y


@dataclass
class Layer:
    """One block's weights. A matrix (`object`) is whatever the memory mode holds; its
    shape below is as linear() applies it, [n_in, n_out]."""
    attn_norm: np.ndarray  # [n_embd]
    wqkv: object  # [n_embd, n_q + n_kv + n_v]
    bqkv: np.ndarray | None  # [n_q + n_kv + n_v]; None when the GGUF has no biases
    wo: object  # [n_head·head_dim_v, n_embd]
    ffn_norm: np.ndarray  # [n_embd]
    w_gate_up: object | None  # [n_embd, 2·n_ff]; None for experts
    w_down: object | None  # [n_ff, n_embd]
    q_norm: np.ndarray | None = None  # [head_dim], with cfg.qk_norm
    k_norm: np.ndarray | None = None  # [head_dim]
    post_attn_norm: np.ndarray | None = None  # [n_embd], with cfg.post_norms
    post_ffn_norm: np.ndarray | None = None  # [n_embd]
    router: np.ndarray | None = None  # [n_expert, n_embd] as stored (small): h @ router.T
    experts_gate_up: list | None = None  # per expert [n_embd, 2·n_ff]
    experts_down: list | None = None  # per expert [n_ff, n_embd]


# ---------------------------------------------------------------------------------------
# The forward pass and its pieces


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    # [..., d] -> [..., d]; normalizes over the last axis. The mean is np.mean's own sum
    # and division without its Python wrapper, which cost more than the arithmetic for
    # one token (49 norms per Qwen decode step); the squares' buffer becomes the result.
    y = np.square(x)
    ms = np.add.reduce(y, axis=-1, keepdims=True)
    ms /= x.shape[-1]
    ms += eps
    np.sqrt(ms, out=ms)
    np.divide(x, ms, out=y)
    y *= w
    return y


def silu(x: np.ndarray) -> np.ndarray:
    # x / (1 + exp(-x)), in one fresh buffer: with a new array per operation, Qwen's
    # [256, 4864] gate took 3.6-4.2 ms instead of 1.9 (0.1 s of a 512-token prefill)
    t = np.negative(x)
    np.exp(t, out=t)
    t += 1.0
    return np.divide(x, t, out=t)


def gelu(x: np.ndarray) -> np.ndarray:
    # tanh approximation, as ggml_gelu: 0.5·x·(1 + tanh(0.79788456·(x + 0.044715·x³))),
    # in one buffer like silu
    t = np.multiply(x, 0.044715)
    t *= x
    t *= x
    t += x
    t *= 0.7978845608028654
    np.tanh(t, out=t)
    t += 1.0
    t *= x
    t *= 0.5
    return t


@dataclass
class RopeTable:
    cos: np.ndarray  # [n_ctx, n_rot/2]: row p holds position p's angles
    sin: np.ndarray  # [n_ctx, n_rot/2]


def rope_table(cfg: ArchConfig, base: float, n_ctx: int, freq_factors: np.ndarray | None,
               freq_scale: float) -> RopeTable:
    """cos and sin of every position's angles, computed once per session in float64 and
    kept as float32, both times cfg.rope_attn_factor. freq_factors (Llama 3's rope_freqs,
    LongRoPE's) divide the frequencies; freq_scale (linear rope scaling) multiplies the
    positions."""
    half = cfg.n_rot // 2
    inv_freq = base ** (-np.arange(half, dtype=np.float64) * 2.0 / cfg.n_rot)  # [n_rot/2]
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.astype(np.float64)
    # [n_ctx] x [n_rot/2] -> [n_ctx, n_rot/2]
    angles = np.outer(np.arange(n_ctx, dtype=np.float64) * freq_scale, inv_freq)
    m = cfg.rope_attn_factor
    return RopeTable((np.cos(angles) * m).astype(np.float32), (np.sin(angles) * m).astype(np.float32))


def apply_rope(x: np.ndarray, table: RopeTable, pos0: int, style: str, n_rot: int) -> np.ndarray:
    # x: [T, n_heads, head_dim] at positions pos0..; rotates the first n_rot dims of each
    # head in place (and returns x). Any number of heads: the forward pass passes q's and
    # k's together, [T, n_head + n_head_kv, hd].
    T = x.shape[0]
    cos = table.cos[pos0:pos0 + T, None, :]  # [T, 1, n_rot/2]
    sin = table.sin[pos0:pos0 + T, None, :]
    if style == "neox":  # pairs (i, i + n_rot/2)
        a, b = x[..., : n_rot // 2], x[..., n_rot // 2: n_rot]
    else:  # pairs (2i, 2i+1)
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
    # a, b: [T, n_heads, n_rot/2] views of x, the two halves of each rotated pair
    # a' = a·cos - b·sin, b' = a·sin + b·cos, written over a and b (views of x): only a
    # needs a copy, since b is last read by its own update
    a0 = a.copy()
    t = np.multiply(b, sin)
    np.multiply(a0, cos, out=a)
    a -= t
    np.multiply(a0, sin, out=t)
    b *= cos
    b += t
    return x


def _store(cache: np.ndarray, pos0: int, x: np.ndarray, axis: int) -> None:
    """Write x (T positions on `axis`) at positions pos0.. of a layer's cache (n_pos on
    `axis`: 2 for keys [n_head_kv, hd, n_pos], 1 for values [n_head_kv, n_pos, hd_v]);
    position p lives in slot p % n_pos (a ring wraps around, a full cache never does)."""
    n_pos, T = cache.shape[axis], x.shape[axis]
    a = pos0 % n_pos
    first = min(T, n_pos - a)  # how many fit before the ring's end; the rest wrap to slot 0
    at = (slice(None),) * axis  # every index of the axes before the positions
    cache[at + (slice(a, a + first),)] = x[at + (slice(0, first),)]
    cache[at + (slice(0, T - first),)] = x[at + (slice(first, T),)]


def _span(cache: np.ndarray, k0: int, S: int, axis: int) -> np.ndarray:
    """Positions k0..S-1 of a layer's cache (see _store), in order, S - k0 of them on
    `axis`. A view, unless the span wraps around a ring, which costs a copy of at most
    the ring."""
    n_pos = cache.shape[axis]
    a, b = k0 % n_pos, (S - 1) % n_pos + 1
    at = (slice(None),) * axis
    if k0 // n_pos == (S - 1) // n_pos:  # first and last position in the same lap
        return cache[at + (slice(a, b),)]
    return np.concatenate((cache[at + (slice(a, n_pos),)], cache[at + (slice(0, b),)]), axis=axis)


def first_attended(pos0: int, window: int) -> int:
    """The earliest position any query at pos0 or later attends to. A sliding-window layer
    never looks further back than the window from its first new position: the cache
    before that is skipped, not computed and masked."""
    return max(0, pos0 - window + 1) if window else 0


def attention(q: np.ndarray, kT: np.ndarray, v: np.ndarray, pos0: int, k0: int,
              cfg: ArchConfig, window: int) -> np.ndarray:
    """q: [T, n_head, hd] at positions pos0..; kT: [n_head_kv, hd, S_att] and v:
    [n_head_kv, S_att, hd_v] for the S_att = S - k0 positions k0..S-1, where
    k0 = first_attended(pos0, window). Returns [T, n_head·hd_v]."""
    T, n_head, hd = q.shape
    n_head_kv, S_att, hd_v = v.shape
    block_tok = max(16, SCORES_BLOCK_BYTES // (4 * n_head * S_att))
    if T > block_tok:  # in blocks of queries, each over the keys it can see (causal)
        return np.concatenate([
            attention(q[t0:t0 + block_tok], kT[..., :S_att - T + t0 + block_tok],
                      v[:, :S_att - T + t0 + block_tok], pos0 + t0, k0, cfg, window)
            for t0 in range(0, T, block_tok)])
    g = n_head // n_head_kv  # query heads per kv head
    # [T, n_head, hd] -> [n_head_kv, g·T, hd]: query heads grouped under their kv head
    qg = q.reshape(T, n_head_kv, g, hd).transpose(1, 2, 0, 3).reshape(n_head_kv, g * T, hd)
    scale = np.float32(cfg.attn_scale)
    # A power-of-two scale (1/sqrt(64), 1/sqrt(256)) is exact on q too, and q has hd
    # columns where the scores have S: at 4k tokens of context that saved a pass over them.
    scale_q = math.frexp(scale)[0] == 0.5
    if scale_q:
        qg = qg * scale
    # [n_head_kv, g·T, hd] @ [n_head_kv, hd, S_att] -> [n_head_kv, g·T, S_att]
    scores = np.matmul(qg, kT)
    if not scale_q:
        scores *= scale
    if cfg.softcap_attn:  # Gemma 2
        scores = np.tanh(scores / cfg.softcap_attn) * cfg.softcap_attn
    scores = scores.reshape(n_head_kv, g, T, S_att)  # a [T, S_att] block per query head
    if T > 1:  # one new token sees every position left after the window cut
        _mask(scores, pos0, k0, window)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    # Softmax's division comes after the matmul with v: on [g·T, hd_v] instead of
    # [g·T, S_att] (the sums are at least 1: every query sees itself).
    sums = scores.sum(axis=-1).reshape(n_head_kv, g * T, 1)  # [n_head_kv, g·T, 1]
    out = np.matmul(scores.reshape(n_head_kv, g * T, S_att), v)  # [n_head_kv, g·T, hd_v]
    out /= sums
    # -> [T, n_head·hd_v], heads back in their original order
    return out.reshape(n_head_kv, g, T, hd_v).transpose(2, 0, 1, 3).reshape(T, n_head * hd_v)


def _mask(scores: np.ndarray, pos0: int, k0: int, window: int) -> None:
    """-inf where query t (at pos0 + t) must not see key j (at k0 + j), in place on
    scores [..., T, S_att]. Only the last T keys can lie in a query's future, and only the
    first T can have left its window, so the mask is built and added over those alone: at
    4k tokens of context, a full [T, S_att] mask cost two passes over the scores."""
    T, S_att = scores.shape[-2:]
    qpos = np.arange(pos0, pos0 + T)[:, None]
    spans = [(max(0, S_att - T + 1), S_att)]  # keys after pos0
    if window:
        spans.append((0, min(S_att, max(0, pos0 + T - window - k0))))
    for a, b in spans:
        if a < b:  # overlapping spans add -inf or 0 twice: the same
            kpos = np.arange(k0 + a, k0 + b)[None, :]
            blocked = kpos > qpos  # causal
            if window:
                blocked |= qpos - kpos >= window
            scores[..., a:b] += np.where(blocked, -np.inf, 0.0).astype(np.float32)


def feed_forward(h: np.ndarray, w_gate_up, w_down, activation: str) -> np.ndarray:
    # The gated FFN, down(act(gate(h)) · up(h)) (SwiGLU, or GeGLU for Gemma):
    # [T, n_embd] -> [T, 2·n_ff] -> [T, n_ff] -> [T, n_embd]
    gu = linear(h, w_gate_up)
    n_ff = gu.shape[1] // 2
    gate, up = gu[:, :n_ff], gu[:, n_ff:]  # [T, n_ff] each
    a = silu(gate) if activation == "silu" else gelu(gate)
    a *= up
    return linear(a, w_down)


def moe(h: np.ndarray, layer: Layer, cfg: ArchConfig) -> np.ndarray:
    """Mixtral routing: softmax over experts, keep the top k, renormalize their weights."""
    logits = h @ layer.router.T  # [T, n_embd] @ [n_embd, n_expert] -> [T, n_expert]
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))  # [T, n_expert]
    p /= p.sum(axis=-1, keepdims=True)
    # k = n_expert_used; a stable sort breaks ties by expert number
    top = np.argsort(-p, axis=-1, kind="stable")[:, : cfg.n_expert_used]  # [T, k] expert ids
    w = np.take_along_axis(p, top, axis=-1)  # [T, k], their probabilities
    w /= w.sum(axis=-1, keepdims=True)
    out = np.zeros_like(h)  # [T, n_embd]
    for e in np.unique(top):  # each expert once, over the tokens routed to it
        # the T_e tokens routed to e, and which of their k choices e was: [T_e], [T_e]
        rows, slot = np.nonzero(top == e)
        # [T_e, n_embd] -> [T_e, n_embd], weighted by each token's renormalized probability
        y = feed_forward(h[rows], layer.experts_gate_up[e], layer.experts_down[e], cfg.activation)
        out[rows] += y * w[rows, slot][:, None]
    return out


# ---------------------------------------------------------------------------------------
# Model


class Model:
    """A loaded GGUF. See docs/architecture.md for the interface others rely on."""

    def __init__(self):  # use Model.load
        self.tokenizer = None
        self.int8_fits = False  # set by auto mode: would `--mode int8` fit the RAM budget?
        self.chat_template: str | None = None

    @classmethod
    def load(cls, path, offset: int = 0, vocab_only: bool = False, *, size: int | None = None,
             progress: Callable[[float], None] | None = None, mode: str = "auto",
             ram_budget_bytes: int | None = None, chat_template: str | None = None) -> "Model":
        """Open the GGUF at byte `offset` of `path`, `size` bytes long (by default to the
        file's end; a bundle has more after it). mode: "f32", "int8", "quant" or
        "auto" (f32 if it fits `ram_budget_bytes`, by default 60% of free RAM, else quant;
        int8 is approximate and only used when asked for)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        g = gguf.read(path, offset=offset, size=size, vocab_only=vocab_only)
        try:
            return cls._load(g, path, vocab_only, progress, mode, ram_budget_bytes, chat_template)
        except GGUFError as e:  # the checks below name a tensor or a key, not the file
            raise gguf.naming(os.fspath(path), e) from None

    @classmethod
    def _load(cls, g, path, vocab_only, progress, mode, ram_budget_bytes, chat_template):
        from runtime.tokenizer import Tokenizer

        m = cls()
        m.gguf, m.path, m.metadata = g, os.fspath(path), g.metadata
        m.arch = g.metadata.get("general.architecture", "unknown")
        # (printed by the server's log, the terminal chat: no escape sequences from the
        # file, nor from its name, which is anyone's who named the download)
        m.name = (shown_name(g.metadata.get("general.name"))
                  or shown_name(os.path.basename(m.path)))
        try:
            m.tokenizer = Tokenizer.from_metadata(g.metadata)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            # Wrong or missing tokenizer.* keys: the file, not the caller, is at fault.
            raise GGUFError(f"bad tokenizer metadata in {m.path}: {e}") from None
        m.eog_ids = m.tokenizer.eog_ids
        m.chat_template = chat_template or g.metadata.get("tokenizer.chat_template")
        if vocab_only:
            m.n_vocab = m.tokenizer.n_vocab
            m.cfg = None
            m.n_ctx_train = int(g.metadata.get(f"{m.arch}.context_length", 0) or 0)
            return m
        embd = g.tensors.get("token_embd.weight")
        if embd is None or len(embd.shape) != 2:
            raise GGUFError("tensor 'token_embd.weight' is missing or not a matrix")
        m.n_vocab = embd.shape[0]
        if m.tokenizer.n_vocab > m.n_vocab:
            raise GGUFError(f"the vocabulary has {m.tokenizer.n_vocab} tokens but the "
                            f"embedding has only {m.n_vocab} rows")
        m.cfg = archs.config_from_metadata(g.metadata, m.n_vocab)
        m.n_ctx_train = m.cfg.n_ctx_train
        m.mode = mode if mode != "auto" else m._choose_mode(ram_budget_bytes)
        m._load_weights(progress)
        if m.mode != "quant":
            # Every weight is a copy now: the map, and the lease on the file with it
            # (runtime/file_lease.py), can go. A copy over the file, or its deletion,
            # then changes nothing for this model.
            g.close()
        return m

    def _choose_mode(self, ram_budget_bytes: int | None) -> str:
        # int8 is never picked here: its logits are approximate, and
        # tests/fixtures/TOLERANCES.md wants an approximate mode to be asked for
        # (`--mode int8`, or `--args` in a bundle).
        n_params = sum(t.n_elements for t in self.gguf.tensors.values())
        budget_bytes = (ram_budget_bytes if ram_budget_bytes is not None
                        else ram_available_bytes() * 0.6)
        self.int8_fits = n_params <= budget_bytes  # 1 byte a weight; for the server's hint
        return "f32" if n_params * 4 <= budget_bytes else "quant"

    def _load_weights(self, progress) -> None:
        c, load = self.cfg, WeightLoader(self.gguf, self.mode, progress)
        n_q, n_kv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        n_v = c.n_head_kv * c.head_dim_v
        embd = load.info("token_embd.weight")
        if embd.shape[1] != c.n_embd:
            raise GGUFError(f"token_embd.weight has {embd.shape[1]} columns, expected {c.n_embd}")
        tied = not load.has("output.weight")
        self.layers = []
        for i in range(c.n_layer):
            p = f"blk.{i}."
            if load.has(p + "attn_qkv.weight"):
                wqkv = load.matrix([p + "attn_qkv.weight"], c.n_embd, [n_q + n_kv + n_v])
            else:
                wqkv = load.matrix([p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight"],
                                c.n_embd, [n_q, n_kv, n_v])
            biases = [load.optional(p + f"attn_{x}.bias", (n,)) for x, n in
                      (("q", n_q), ("k", n_kv), ("v", n_v))]
            bqkv = np.concatenate(biases) if all(b is not None for b in biases) else None
            layer = Layer(
                attn_norm=load.f32(p + "attn_norm.weight", (c.n_embd,)),
                wqkv=wqkv, bqkv=bqkv,
                wo=load.matrix([p + "attn_output.weight"], c.n_head * c.head_dim_v, [c.n_embd]),
                ffn_norm=load.f32(p + "ffn_norm.weight", (c.n_embd,)),
                w_gate_up=None, w_down=None,
            )
            if c.qk_norm:
                layer.q_norm = load.f32(p + "attn_q_norm.weight", (c.head_dim,))
                layer.k_norm = load.f32(p + "attn_k_norm.weight", (c.head_dim,))
            if c.post_norms:
                layer.post_attn_norm = load.f32(p + "post_attention_norm.weight", (c.n_embd,))
                layer.post_ffn_norm = load.f32(p + "post_ffw_norm.weight", (c.n_embd,))
            if c.n_expert:
                self._load_experts(load, p, layer)
            else:
                if load.has(p + "ffn_gate.weight"):
                    layer.w_gate_up = load.matrix([p + "ffn_gate.weight", p + "ffn_up.weight"],
                                               c.n_embd, [c.n_ff, c.n_ff])
                else:  # Phi-3: ffn_up already holds [gate; up]
                    layer.w_gate_up = load.matrix([p + "ffn_up.weight"], c.n_embd, [2 * c.n_ff])
                layer.w_down = load.matrix([p + "ffn_down.weight"], c.n_ff, [c.n_embd])
            self.layers.append(layer)
        self.output_norm = load.f32("output_norm.weight", (c.n_embd,))
        head = "token_embd.weight" if tied else "output.weight"
        self.output = load.matrix([head], c.n_embd, [self.n_vocab])
        # The embedding is only looked up a few rows at a time, so it stays in its GGUF
        # blocks: in quant mode a view of the mapped file, like every weight; otherwise in
        # memory, so that nothing is read from the file after the load (Model._load lets
        # go of it). A tied float32 head holds the embedding's rows already, as columns.
        blocks = QuantMatrix(self.gguf.raw("token_embd.weight"), embd.ggml_type, embd.shape)
        if self.mode == "quant":
            self.embd = blocks
        elif tied and self.mode == "f32":
            self.embd = HeadColumns(self.output)
        else:
            self.embd = blocks.in_memory()
        self.rope_freqs = load.optional("rope_freqs.weight", (c.n_rot // 2,))
        self.rope_long = load.optional("rope_factors_long.weight", (c.n_rot // 2,))
        self.rope_short = load.optional("rope_factors_short.weight", (c.n_rot // 2,))
        if progress:
            progress(1.0)

    def _load_experts(self, load: WeightLoader, p: str, layer: Layer) -> None:
        c = self.cfg
        layer.router = load.f32(p + "ffn_gate_inp.weight", (c.n_expert, c.n_embd))
        for name in ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
            if load.info(p + name + ".weight").shape[0] != c.n_expert:
                raise GGUFError(f"tensor {p + name + '.weight'!r} does not hold {c.n_expert} experts")
        # Each expert's slices become a matrix of the model's mode, like any other.
        gate_up = [p + "ffn_gate_exps.weight", p + "ffn_up_exps.weight"]
        layer.experts_gate_up = [load.matrix(gate_up, c.n_embd, [c.n_ff, c.n_ff], expert=e)
                                 for e in range(c.n_expert)]
        layer.experts_down = [load.matrix([p + "ffn_down_exps.weight"], c.n_ff, [c.n_embd],
                                          expert=e)
                              for e in range(c.n_expert)]

    # -- text -------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        return self.tokenizer.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.detokenize(ids)

    def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True,
                    tools=None, template_kwargs: dict | None = None) -> str:
        """The chat rendered by the model's template (or the architecture's fallback).
        template_kwargs: more variables for the template (Qwen3's enable_thinking)."""
        from runtime import chat_template
        template = self.chat_template or chat_template.fallback_template(
            self.arch, self._special_texts())
        tok = self.tokenizer
        bos = tok.token_text(tok.bos_id) if tok.bos_id is not None else ""
        eos = tok.token_text(tok.eos_id) if tok.eos_id is not None else ""
        return chat_template.render(template, messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=bos, eos_token=eos, tools=tools, fold_system=True,
                                    **(template_kwargs or {}))

    def _special_texts(self) -> set[str]:
        tok = self.tokenizer
        return {tok.token_text(i) for i in range(tok.n_vocab) if tok.is_control(i)}

    def fim_prompt(self, prefix: str, suffix: str, **kw) -> list[int]:
        """See Tokenizer.fim_prompt (extra=, prompt=, n_ctx=, n_predict=)."""
        return self.tokenizer.fim_prompt(prefix, suffix, **kw)

    # -- inference --------------------------------------------------------------------

    def context_size(self, n_ctx: int) -> int:
        """The context to use for a requested n_ctx: 0 means the trained context (4096
        when the file does not say), and larger requests are capped at the trained one."""
        trained = self.n_ctx_train
        if n_ctx <= 0:
            return trained or 4096
        return min(n_ctx, trained) if trained else n_ctx

    def session(self, n_ctx: int | None = None) -> "Session":
        if self.cfg is None:
            raise ValueError("this model was loaded with vocab_only=True and cannot run")
        return Session(self, n_ctx or min(self.n_ctx_train, 4096))

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """float32 [len(ids), n_vocab]: every position of a fresh sequence from position 0."""
        return self.session(max(len(ids), 1)).eval(ids, all_logits=True)

    def generate(self, ids: Sequence[int], max_tokens: int, temperature: float = 0.0,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                 repeat_penalty: float = 1.0, seed: int | None = None,
                 n_ctx: int | None = None) -> Iterator[int]:
        """Up to max_tokens ids after `ids`, from a fresh session (greedy at temperature
        0). An end-of-generation id is yielded, then ends it."""
        from runtime.sampling import Sampler, SamplingParams
        ids = list(ids)
        sampler = Sampler(SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                         min_p=min_p, repeat_penalty=repeat_penalty, seed=seed))
        s = self.session(n_ctx or min(max(len(ids) + max_tokens, 1), self.n_ctx_train or 1 << 30))
        logits = s.eval(ids)
        history = list(ids)
        for _ in range(max_tokens):
            tok = sampler.sample(logits, history)
            yield tok
            if tok in self.eog_ids or len(s.tokens) >= s.n_ctx:
                return
            history.append(tok)
            logits = s.eval([tok])

    def bytes_read_per_token(self) -> int:
        """Weight bytes one decode step reads: every layer matrix and the output head."""
        def nbytes(w) -> int:
            if w is None:
                return 0
            if isinstance(w, np.ndarray):
                return w.nbytes
            if isinstance(w, QuantMatrix):
                return w.raw.nbytes
            if isinstance(w, Int8Matrix):
                return w.codes.nbytes + w.row_scale.nbytes + w.col_factor.nbytes
            if isinstance(w, list):  # a layer's experts
                return sum(nbytes(x) for x in w)
            return sum(nbytes(p) for p in w.parts)  # a StackedQuant (quant mode's fused parts)
        total = nbytes(self.output)
        for L in self.layers:
            experts = nbytes(L.experts_gate_up) + nbytes(L.experts_down)
            if experts:  # only the routed experts are read
                experts = experts * self.cfg.n_expert_used // self.cfg.n_expert
            total += nbytes(L.wqkv) + nbytes(L.wo) + nbytes(L.w_gate_up) + nbytes(L.w_down) + experts
        return total

    def check_ids(self, ids: Sequence[int]) -> np.ndarray:
        """ids as a flat int64 array; a ValueError names the first outside the vocabulary."""
        a = np.asarray(ids, dtype=np.int64).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= self.n_vocab):
            bad = int(a[(a < 0) | (a >= self.n_vocab)][0])
            raise ValueError(f"token id {bad} is out of range: the vocabulary has {self.n_vocab} tokens")
        return a


class Session:
    """One sequence with a preallocated KV cache (its layout and the sliding-window rings:
    the top of this file). eval() adds tokens, rewind() drops them. `swa_ring=False`
    keeps every position in every layer, as the reference the tests compare against."""

    def __init__(self, model: Model, n_ctx: int, swa_ring: bool = True):
        c = model.cfg
        if n_ctx <= 0:
            raise ValueError(f"n_ctx must be positive, got {n_ctx}")
        self.model, self.cfg, self.n_ctx = model, c, n_ctx
        self.tokens: list[int] = []
        # The prompt logprobs (echo with logprobs) of the tokens held, so that a prompt
        # sharing a prefix with them evaluates only the rest: entry i is (the probability
        # of tokens[i + 1], the prompt_probs_n likeliest [(id, prob), ...]) at position i,
        # for the first len(prompt_probs) positions, at most len(tokens) - 1 of them. The
        # small tuples only: a logits row of Qwen is 600 KB. rewind() drops what it cuts.
        self.prompt_probs: list = []
        self.prompt_probs_n = 0
        # on_rewind(session, n): called before rewind() drops tokens n.., while the session
        # still holds them (runtime/prompt_cache.py saves them there); None: nothing is.
        self.on_rewind: Callable[["Session", int], None] | None = None
        ring = c.swa_window + UBATCH_TOK if swa_ring and c.swa_window else 0
        self.ring = ring if ring < n_ctx else 0  # positions per sliding-window layer; 0: no ring
        self._ring_lo = 0  # the first position whose k/v every ring still holds
        n_pos = [self.ring if self.ring and c.is_swa(il) else n_ctx for il in range(c.n_layer)]
        # per layer: keys transposed, [n_head_kv, hd, n_pos]; values [n_head_kv, n_pos, hd_v]
        self.k = [np.zeros((c.n_head_kv, c.head_dim, n), np.float32) for n in n_pos]
        self.v = [np.zeros((c.n_head_kv, n, c.head_dim_v), np.float32) for n in n_pos]
        factors = model.rope_freqs
        if model.rope_long is not None:  # LongRoPE: long factors only past the original context
            factors = model.rope_long if c.rope_ctx_orig and n_ctx > c.rope_ctx_orig else model.rope_short
        self.rope_global = rope_table(c, c.rope_base, n_ctx, factors, c.rope_freq_scale)
        self.rope_local = (self.rope_global if c.rope_base_local == c.rope_base else
                           rope_table(c, c.rope_base_local, n_ctx, None, 1.0))

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def rewind(self, n: int) -> int:
        """Keep the first n tokens and return how many were kept: n, or 0 when a
        sliding-window ring no longer holds the window before position n. The cache past
        them is simply overwritten later."""
        if not 0 <= n <= len(self.tokens):
            raise ValueError(f"cannot rewind to {n}: the session holds {len(self.tokens)} tokens")
        if self.ring and self._ring_lo > first_attended(n, self.cfg.swa_window):
            n = 0
        if self.on_rewind is not None and n < len(self.tokens):
            self.on_rewind(self, n)
        if n == 0:
            self._ring_lo = 0
        del self.tokens[n:]
        # entry n - 1 was about tokens[n], which is gone (its successor may differ)
        del self.prompt_probs[max(n - 1, 0):]
        return n

    def reuse_prefix(self, ids: Sequence[int]) -> int:
        """Rewind to the longest common prefix with `ids`; return how many tokens are kept.

        At least one token of `ids` is left to evaluate, so that there are logits to sample.
        """
        return self.rewind(self._common_prefix(ids, len(ids) - 1))

    def _common_prefix(self, ids: Sequence[int], limit: int) -> int:
        """How many leading tokens `ids` shares with the tokens held, at most limit."""
        n, limit = 0, min(len(self.tokens), limit)
        while n < limit and self.tokens[n] == ids[n]:
            n += 1
        return n

    def reuse_prompt_probs(self, ids: Sequence[int], n_probs: int) -> list:
        """For a prompt whose logprobs are wanted at every position: rewind to the longest
        prefix of `ids` whose entries are stored (see prompt_probs), computed for n_probs
        alternatives or more, and return them, their lists cut to n_probs. The session
        then holds as many tokens as entries are returned: the rest of `ids` is left to
        evaluate, at least one token. With fewer alternatives stored, nothing is reused."""
        stored = len(self.prompt_probs) if self.prompt_probs_n >= n_probs else 0
        # Position i's entry is reusable while tokens[:i + 2] is a prefix of ids.
        n = max(self._common_prefix(ids, min(len(ids), stored + 1)) - 1, 0)
        # read before rewinding: rewind(n) drops entry n - 1 (its token n is evaluated again)
        reused = [(p, tops[:n_probs]) for p, tops in self.prompt_probs[:n]]
        return reused[:self.rewind(n)]  # a sliding-window ring may keep nothing

    def keep_prompt_probs(self, entries: list, n_probs: int) -> None:
        """Remember a prompt's logprobs (entries for positions 0.., computed for n_probs
        alternatives) for the next prompt that shares a prefix with the tokens held."""
        self.prompt_probs = list(entries[:max(len(self.tokens) - 1, 0)])
        self.prompt_probs_n = n_probs

    def eval(self, ids: Sequence[int], all_logits: bool = False,
             on_logits: Callable[[np.ndarray, int], None] | None = None) -> np.ndarray:
        """Append ids; return logits [n_vocab] of the last one, or [len(ids), n_vocab].

        on_logits(logits, pos): also called with the logits of every position, a few at a
        time ([t, n_vocab] for positions pos..pos+t-1, at most LOGIT_ROWS_BYTES), for
        callers that reduce them as they come (prompt logprobs). The return value is the
        same as without it, bit for bit."""
        a = self.model.check_ids(ids)
        if a.size == 0:
            raise ValueError("eval needs at least one token")
        if self.n_past + a.size > self.n_ctx:
            raise ContextOverflowError(
                f"context overflow: {self.n_past} + {a.size} tokens exceed the context of {self.n_ctx}")
        outs = []
        for i in range(0, a.size, UBATCH_TOK):
            chunk = a[i:i + UBATCH_TOK]
            if not all_logits and i + UBATCH_TOK < a.size:  # its logits are never used
                self._forward(chunk, head=False, on_logits=on_logits)
            else:
                outs.append(self._forward(chunk, head=True, last_only=not all_logits,
                                          on_logits=on_logits))
        return np.concatenate(outs) if all_logits else outs[-1][-1]

    def _forward(self, ids: np.ndarray, head: bool, last_only: bool = False, on_logits=None):
        """The forward pass over new tokens `ids` at positions n_past..; returns their
        logits [T, n_vocab] ([1, n_vocab], the last one's, with last_only; None when
        head=False: a prefill micro-batch whose logits nobody reads). on_logits: see eval."""
        c, m = self.cfg, self.model
        T, pos0 = ids.size, self.n_past
        S = pos0 + T  # positions 0..S-1 are in the cache once this pass has stored k and v
        n_q, n_kv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
        if self.ring:  # set first: a pass that fails halfway has overwritten these slots too
            self._ring_lo = max(self._ring_lo, S - self.ring)
        x = m.embd.take(ids)  # [T] -> [T, n_embd]: the residual stream every block adds to
        if c.embed_scale != 1.0:
            x *= c.embed_scale  # Gemma: sqrt(n_embd)
        for il, L in enumerate(m.layers):
            swa = c.is_swa(il)
            h = rms_norm(x, L.attn_norm, c.norm_eps)  # [T, n_embd]
            qkv = linear(h, L.wqkv, L.bqkv)  # [T, n_embd] -> [T, n_q + n_kv + n_v]
            # q's heads, then k's (views of qkv, changed in place): one rope call for both
            qk = qkv[:, :n_q + n_kv].reshape(T, c.n_head + c.n_head_kv, c.head_dim)
            q, k = qk[:, :c.n_head], qk[:, c.n_head:]  # [T, n_head, hd], [T, n_head_kv, hd]
            v = qkv[:, n_q + n_kv:].reshape(T, c.n_head_kv, c.head_dim_v)  # [T, n_head_kv, hd_v]
            if c.qk_norm:  # each head over its hd dims, written back into qkv
                q[...] = rms_norm(q, L.q_norm, c.norm_eps)  # [T, n_head, hd]
                k[...] = rms_norm(k, L.k_norm, c.norm_eps)  # [T, n_head_kv, hd]
            rope = self.rope_local if swa else self.rope_global
            apply_rope(qk, rope, pos0, c.rope_style, c.n_rot)  # in place: q and k roped
            # into the cache: k as [n_head_kv, hd, T] (transposed), v as [n_head_kv, T, hd_v]
            _store(self.k[il], pos0, k.transpose(1, 2, 0), axis=2)
            _store(self.v[il], pos0, v.transpose(1, 0, 2), axis=1)
            window = c.swa_window if swa else 0
            k0 = first_attended(pos0, window)
            att = attention(q, _span(self.k[il], k0, S, axis=2), _span(self.v[il], k0, S, axis=1),
                            pos0, k0, c, window)  # [T, n_head·hd_v]
            o = linear(att, L.wo)  # [T, n_head·hd_v] -> [T, n_embd]
            if c.post_norms:  # Gemma
                o = rms_norm(o, L.post_attn_norm, c.norm_eps)  # [T, n_embd]
            x += o if c.residual_scale == 1.0 else o * c.residual_scale  # 1 except for Granite
            h = rms_norm(x, L.ffn_norm, c.norm_eps)  # [T, n_embd]
            # [T, n_embd] -> [T, n_embd]: the dense FFN, or the routed experts' (Mixtral)
            f = moe(h, L, c) if c.n_expert else feed_forward(h, L.w_gate_up, L.w_down, c.activation)
            if c.post_norms:
                f = rms_norm(f, L.post_ffn_norm, c.norm_eps)  # [T, n_embd]
            x += f if c.residual_scale == 1.0 else f * c.residual_scale
        # Only a pass that finished counts its tokens.
        self.tokens.extend(int(t) for t in ids)
        if on_logits is not None:
            step_tok = max(1, LOGIT_ROWS_BYTES // (4 * m.n_vocab))  # 4 bytes a float32 logit
            for r0 in range(0, T, step_tok):
                on_logits(self._head(x[r0:r0 + step_tok]), pos0 + r0)
        if not head:
            return None
        if last_only:
            x = x[-1:]  # only the last position goes through the (large) output head
        return self._head(x)

    def _head(self, x: np.ndarray) -> np.ndarray:
        """The output head: final hidden states [t, n_embd] -> logits [t, n_vocab], for t
        of the pass's T positions (all, the last, or on_logits' slice)."""
        c, m = self.cfg, self.model
        x = rms_norm(x, m.output_norm, c.norm_eps)  # [t, n_embd]
        logits = linear(x, m.output)  # [t, n_embd] -> [t, n_vocab]
        if c.logit_scale != 1.0:  # Granite
            logits /= c.logit_scale
        if c.softcap_final:
            logits = np.tanh(logits / c.softcap_final) * c.softcap_final
        return logits.astype(np.float32, copy=False)
