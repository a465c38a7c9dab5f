"""Choosing the next token from logits, in llama.cpp's default order.

penalties (repeat, frequency, presence over the last `repeat_last_n` tokens) -> top-k ->
top-p -> min-p -> temperature -> draw. Temperature <= 0 means greedy: the argmax of the
penalized logits, with no randomness at all.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40  # <= 0: off
    top_p: float = 0.95  # >= 1: off
    min_p: float = 0.05  # <= 0: off
    repeat_penalty: float = 1.0  # 1: off
    repeat_last_n: int = 64  # how far back the penalties look; -1: the whole history
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


def apply_penalties(logits: np.ndarray, history: list[int], p: SamplingParams) -> np.ndarray:
    if (p.repeat_penalty == 1.0 and not p.presence_penalty and not p.frequency_penalty) \
            or not history or p.repeat_last_n == 0:
        return logits
    recent = history if p.repeat_last_n < 0 else history[-p.repeat_last_n:]
    ids, counts = np.unique(np.asarray(recent, dtype=np.int64), return_counts=True)
    ids, counts = ids[ids < logits.size], counts[ids < logits.size]
    out = logits.copy()
    sel = out[ids]
    if p.repeat_penalty != 1.0:
        # as llama.cpp: shrink positive logits, push negative ones further down
        sel = np.where(sel > 0, sel / p.repeat_penalty, sel * p.repeat_penalty)
    sel = sel - counts * p.frequency_penalty - p.presence_penalty
    out[ids] = sel
    return out


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def probabilities(self, logits: np.ndarray, history: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Candidate ids and their probabilities after every filter, best first."""
        p = self.params
        logits = apply_penalties(np.asarray(logits, dtype=np.float32), history, p)
        k = p.top_k if 0 < p.top_k < logits.size else logits.size
        if k < logits.size:
            ids = np.argpartition(-logits, k - 1)[:k]
        else:
            ids = np.arange(logits.size)
        ids = ids[np.argsort(-logits[ids], kind="stable")]
        z = logits[ids].astype(np.float64)
        probs = np.exp(z - z[0])
        probs /= probs.sum()
        keep = ids.size
        if p.top_p < 1.0:  # smallest prefix whose mass reaches top_p
            keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p) + 1))
        if p.min_p > 0.0:
            keep = min(keep, max(1, int(np.sum(probs[:keep] >= p.min_p * probs[0]))))
        ids, z = ids[:keep], z[:keep]
        t = max(p.temperature, 1e-6)
        probs = np.exp((z - z[0]) / t)
        return ids, probs / probs.sum()

    def sample(self, logits: np.ndarray, history: list[int]) -> int:
        if self.params.greedy:
            return int(np.argmax(apply_penalties(np.asarray(logits), history, self.params)))
        ids, probs = self.probabilities(logits, history)
        return int(ids[self.rng.choice(ids.size, p=probs)])
