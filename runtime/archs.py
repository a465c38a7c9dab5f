"""Architectures as switches on one llama-shaped forward pass.

Every supported model is llama with a few differences. `ARCHS` below is the table of
what each architecture switches on; `ArchConfig` holds those switches together with the
numbers read from GGUF metadata under llama.cpp's key names (sizes, rope, softcaps,
sliding window, scales, experts). model.py has one forward pass that reads them. What a
GGUF may or may not carry (q/k/v biases, Phi-3's fused tensors, rope factors) is found
by tensor name at load instead, so it needs no switch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from runtime.gguf import GGUFError


@dataclass(frozen=True)
class ArchDefaults:
    """One row of ARCHS: the switches an architecture sets. The defaults are llama's."""
    rope_style: str = "norm"  # "norm": rotate pairs (2i, 2i+1); "neox": pairs (i, i + n_rot/2)
    activation: str = "silu"  # FFN gate activation: "silu" or "gelu" (tanh approximation)
    post_norms: bool = False  # norm the attention and FFN outputs before the residual add
    qk_norm: bool = False  # RMS-norm each head of q and k before rope
    embed_scale_sqrt: bool = False  # multiply embeddings by sqrt(n_embd) (Gemma)
    # with n: layer il uses the sliding window iff il % n < n - 1 (2: every other layer,
    # 6: five layers of six); the window's size comes from metadata
    swa_pattern: int = 0
    rope_base_local: float | None = None  # rope base of sliding-window layers (Gemma 3)


# The table of differences. llama covers Mistral, Mixtral (experts come from metadata),
# Granite-Code and Llama 3.x; granite's scales come from metadata.
ARCHS: dict[str, ArchDefaults] = {
    "llama": ArchDefaults(),
    "granite": ArchDefaults(),
    "qwen2": ArchDefaults(rope_style="neox"),
    "qwen3": ArchDefaults(rope_style="neox", qk_norm=True),
    "phi3": ArchDefaults(rope_style="neox"),
    "gemma2": ArchDefaults(rope_style="neox", activation="gelu", post_norms=True,
                           embed_scale_sqrt=True, swa_pattern=2),
    "gemma3": ArchDefaults(rope_style="neox", activation="gelu", post_norms=True, qk_norm=True,
                           embed_scale_sqrt=True, swa_pattern=6, rope_base_local=10000.0),
}


@dataclass(frozen=True)
class ArchConfig:
    """One model's sizes and switches. Counts are n_*; contexts and windows are in
    positions (tokens); 0 turns a softcap, the window or the experts off."""
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int  # n_head, or fewer: grouped-query attention
    head_dim: int  # of q and k
    head_dim_v: int  # of v; head_dim unless the GGUF gives v its own
    n_ff: int  # FFN hidden size (of each expert, with experts)
    n_vocab: int
    n_ctx_train: int  # the context the model was trained for
    norm_eps: float  # RMS norm's epsilon
    n_rot: int  # rotated dimensions of each head (a prefix of head_dim)
    rope_base: float  # rope's frequency base θ: pair i turns by pos · θ^(-2i/n_rot)
    rope_base_local: float  # of sliding-window layers; rope_base unless Gemma 3
    rope_freq_scale: float  # linear rope scaling: positions are multiplied by this
    rope_style: str  # see ArchDefaults
    rope_attn_factor: float  # multiplies cos and sin (LongRoPE's attention factor)
    rope_ctx_orig: int  # LongRoPE picks long factors above this context
    activation: str
    post_norms: bool
    qk_norm: bool
    softcap_attn: float  # scores become tanh(s / c) · c (Gemma 2); 0 = off
    softcap_final: float  # the same on the logits
    swa_window: int  # sliding-window attention (SWA) span in positions; 0 = none anywhere
    swa_pattern: int  # which layers use the window: see ArchDefaults
    embed_scale: float  # multiplies the embeddings: sqrt(n_embd) for Gemma, Granite's own
    residual_scale: float  # multiplies attention's and the FFN's output before each add (Granite)
    attn_scale: float  # multiplies q·k: 1/sqrt(head_dim) unless metadata or Gemma 27B differ
    logit_scale: float  # logits are divided by this (Granite)
    n_expert: int  # experts per layer (Mixtral); 0 = one dense FFN
    n_expert_used: int  # experts each token is routed to (top k)

    def is_swa(self, layer: int) -> bool:
        """Does this layer attend through the sliding window (swa_pattern's rule)?"""
        if not self.swa_window or not self.swa_pattern:
            return False
        return layer % self.swa_pattern < self.swa_pattern - 1


def supported() -> list[str]:
    return sorted(ARCHS)


def config_from_metadata(md: dict, n_vocab: int) -> ArchConfig:
    """The ArchConfig of a GGUF: its architecture's row of ARCHS plus the numbers under
    "{arch}.*" keys. An unknown architecture, or a required key missing, mistyped or out
    of range, is a GGUFError that names it."""
    arch = md.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFError("general.architecture is missing: is this a model file?")
    if arch not in ARCHS:
        raise GGUFError(
            f"unsupported architecture {arch!r}; supported: {', '.join(supported())}")
    row = ARCHS[arch]  # this architecture's switches

    def get(key, default=None, kind=int):
        """A metadata value of this arch; kind=int refuses floats, kind=float takes both."""
        v = md.get(f"{arch}.{key}", default)
        if isinstance(v, list):  # per-layer arrays: llama.cpp allows them; we need them equal
            if not v or any(x != v[0] for x in v):
                raise GGUFError(f"{arch}.{key} varies per layer, which is not supported")
            v = v[0]
        if v is None:
            raise GGUFError(f"required key {arch}.{key} is missing")
        ok = (int, float) if kind is float else (int,)
        if isinstance(v, bool) or not isinstance(v, ok):
            raise GGUFError(f"{arch}.{key} must be {'a number' if kind is float else 'an integer'}, "
                            f"got {v!r}")
        return v

    n_embd = get("embedding_length")
    n_head = get("attention.head_count")
    n_head_kv = get("attention.head_count_kv", n_head)
    n_layer = get("block_count")
    for name, v in (("embedding_length", n_embd), ("attention.head_count", n_head),
                    ("attention.head_count_kv", n_head_kv), ("block_count", n_layer)):
        if not 0 < v <= 1 << 20:
            raise GGUFError(f"{arch}.{name} = {v} is out of range")
    if n_head % n_head_kv:
        raise GGUFError(f"head count {n_head} is not a multiple of the kv head count {n_head_kv}")
    head_dim = get("attention.key_length", n_embd // n_head)
    head_dim_v = get("attention.value_length", head_dim)
    n_rot = get("rope.dimension_count", head_dim)
    n_ff = get("feed_forward_length", 0)
    n_ctx_train = get("context_length", 2048)
    swa_window = get("attention.sliding_window", 0)
    for name, v, lo in (("attention.key_length", head_dim, 1), ("attention.value_length", head_dim_v, 1),
                        ("feed_forward_length", n_ff, 0), ("context_length", n_ctx_train, 1),
                        ("attention.sliding_window", swa_window, 0)):
        if not lo <= v <= 1 << 24:
            raise GGUFError(f"{arch}.{name} = {v} is out of range")
    if n_rot > head_dim or n_rot % 2:
        raise GGUFError(f"rope dimension count {n_rot} does not fit head size {head_dim}")
    scaling_type = md.get(f"{arch}.rope.scaling.type", "none")
    scaling_factor = float(get("rope.scaling.factor", 1.0, float))
    freq_scale = 1.0
    if scaling_type == "linear" and scaling_factor > 0:
        freq_scale = 1.0 / scaling_factor
    elif scaling_type not in ("none", "linear", "longrope", None):
        # yarn and friends change attention too; refuse rather than answer wrongly.
        raise GGUFError(f"rope scaling type {scaling_type!r} is not supported")

    attn_scale = float(get("attention.scale", 0.0, float))
    if not attn_scale:
        attn_scale = 1.0 / math.sqrt(head_dim)
        # Gemma 27B scales queries by n_embd / n_head instead of the head size, as
        # llama.cpp does; the smaller Gemmas use the head size.
        if arch == "gemma2" and n_layer == 46 or arch == "gemma3" and n_layer == 62:
            attn_scale = 1.0 / math.sqrt(n_embd / n_head)

    embed_scale = (math.sqrt(n_embd) if row.embed_scale_sqrt
                   else float(get("embedding_scale", 1.0, float)))  # Gemma's, else Granite's
    n_expert = get("expert_count", 0)
    n_expert_used = get("expert_used_count", 0)
    if n_expert and not 0 < n_expert_used <= n_expert:
        raise GGUFError(f"expert_used_count {n_expert_used} does not fit expert_count {n_expert}")

    rope_base = float(get("rope.freq_base", 10000.0, float))
    return ArchConfig(
        arch=arch, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv,
        head_dim=head_dim, head_dim_v=head_dim_v, n_ff=n_ff,
        n_vocab=n_vocab, n_ctx_train=n_ctx_train,
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5, float)),
        n_rot=n_rot, rope_base=rope_base,
        rope_base_local=row.rope_base_local or rope_base,
        rope_freq_scale=freq_scale, rope_style=row.rope_style,
        rope_attn_factor=float(get("rope.scaling.attn_factor", 1.0, float)),
        rope_ctx_orig=get("rope.scaling.original_context_length", 0),
        activation=row.activation, post_norms=row.post_norms, qk_norm=row.qk_norm,
        softcap_attn=float(get("attn_logit_softcapping", 0.0, float)),
        softcap_final=float(get("final_logit_softcapping", 0.0, float)),
        swa_window=swa_window, swa_pattern=row.swa_pattern,
        embed_scale=embed_scale, residual_scale=float(get("residual_scale", 1.0, float)),
        attn_scale=attn_scale, logit_scale=float(get("logit_scale", 1.0, float)),
        n_expert=n_expert, n_expert_used=n_expert_used,
    )
