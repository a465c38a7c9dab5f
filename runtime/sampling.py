"""Choosing the next token from logits, through llama.cpp's sampler chain.

By default, llama.cpp's order: logit bias -> penalties (repeat, frequency, presence over
the last `repeat_last_n` tokens) -> DRY -> top-n-sigma -> top-k -> typical-p -> top-p ->
min-p -> XTC -> temperature (or dynamic temperature) -> draw, or adaptive-p's draw. That
order is data: SamplingParams.samplers (llama-server's `samplers` field, read by
samplers_from_names / samplers_from_letters) names the steps, and may add llama.cpp's
infill step; SAMPLER_STEPS maps each name to a small function (_step_*) from the
Candidates to the ones it keeps. Sampler.adjusted runs the logit steps (penalties, DRY)
that lead the chain on the whole vocabulary, Sampler._filtered the rest. With Mirostat on
(1 or 2), as in llama-server: logit bias -> temperature -> Mirostat, which keeps its own
state (mu) for one request, so one Sampler serves one request (adaptive-p's moving average
lives as long too). Every sampler but the bias, the penalties, top-k, top-p, min-p and the
temperature is off by default (llama-server's defaults). Temperature <= 0 means greedy: the
argmax of the biased, penalized logits (only biased under Mirostat), with no randomness at
all; but with a dynamic temperature range (and no Mirostat), as in llama.cpp's temp-ext,
it is sampled at a temperature between 0 and the range, a chain without a temperature step
samples at temperature 1, and one with a penalty, DRY or infill step after a cut, or
typical-p or XTC, before its temperature step runs up to that step, which keeps the best
candidate left (SamplingParams.greedy; XTC's coin makes that random, as in llama.cpp).

A sampler may carry a constraint (runtime/json_constraint.py's TokenConstraint: the reply
must be JSON, or a tool call). It is asked lazily, best token first, so that a step costs
a few checks, not one per vocabulary entry: greedy takes the best allowed token; sampling
keeps the allowed tokens among the filtered candidates and renormalises, or, when none of
them is allowed, draws from the best allowed tokens found further down.
"""
from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass

import numpy as np

from runtime.dry import DryBreakers, apply_dry
from runtime.token_bytes import TokenBytes, table_of


# llama.cpp's default sampler order (common/common.h; llama-server's "edskypmxt"), and then
# adaptive-p: llama-server runs it only when a request's `samplers` names it, and here, so
# that adaptive_target alone switches it on, the default names it (it is off below 0).
# That is llama-server started with `--samplers` naming adaptive_p last: its /props then
# lists it too, and below 0 (its default) llama.cpp's adaptive-p is the plain draw.
DEFAULT_SAMPLERS = ("penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p",
                    "xtc", "temperature", "adaptive_p")
# llama-server's one-letter codes (common_sampler_type_to_chr)
SAMPLER_LETTERS = {"e": "penalties", "d": "dry", "s": "top_n_sigma", "k": "top_k",
                   "y": "typ_p", "p": "top_p", "m": "min_p", "x": "xtc", "t": "temperature",
                   "i": "infill", "a": "adaptive_p"}
# The names llama-server takes (common_sampler_types_from_names, since llama.cpp's PR 23744:
# any case, each canonical name also with '-' for '_' and with no '_', and three more).
SAMPLER_ALIASES = {**{n: n for n in SAMPLER_LETTERS.values()},
                   **{n.replace("_", "-"): n for n in SAMPLER_LETTERS.values()},
                   **{n.replace("_", ""): n for n in SAMPLER_LETTERS.values()},
                   "nucleus": "top_p", "temp": "temperature", "typ": "typ_p"}


ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def samplers_from_names(names: list) -> tuple:
    """llama-server's `samplers` as a list of names -> the chain; a name it does not know
    is left out (llama-server logs it and goes on)."""
    # ASCII only, as C's tolower: "top_\u212a" (a Kelvin sign) is not top_k there
    found = (SAMPLER_ALIASES.get(n.translate(ASCII_LOWER)) for n in names)
    return tuple(n for n in found if n is not None)


def samplers_from_letters(letters: str) -> tuple:
    """llama-server's `samplers` as a string of one-letter codes ("edskypmxt") -> the
    chain; a letter it does not know (they are case-sensitive) is left out."""
    return tuple(SAMPLER_LETTERS[c] for c in letters if c in SAMPLER_LETTERS)


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
    # token id -> added to its logit; -inf bans the token. Applied before the penalties.
    logit_bias: dict | None = None
    # llama.cpp's other samplers, with llama-server's defaults, which switch them off.
    min_keep: int = 0               # typical-p, top-p, min-p and XTC keep at least this many
    typical_p: float = 1.0          # >= 1: off
    top_n_sigma: float = -1.0       # <= 0: off
    xtc_probability: float = 0.0    # <= 0: off
    xtc_threshold: float = 0.1      # > 0.5: off (two tokens cannot both be above it)
    dynatemp_range: float = 0.0     # <= 0: off
    dynatemp_exponent: float = 1.0
    mirostat: int = 0               # 1 or 2: Mirostat v1 or v2 in place of the filters
    mirostat_tau: float = 5.0       # the target surprise, in bits
    mirostat_eta: float = 0.1       # mu's learning rate
    # DRY, "don't repeat yourself" (apply_dry): off at multiplier 0.
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2     # repeats up to this long go unpunished
    dry_penalty_last_n: int = -1    # how far back it looks; -1: the whole history, 0: off
    # its sequence breakers as tokens (dry_breakers_from_text); None: none at all
    dry_breakers: DryBreakers | None = None
    adaptive_target: float = -1.0   # adaptive-p (adaptive_p_probs): < 0: off
    adaptive_decay: float = 0.9     # its moving average's decay, taken in [0, 0.99]
    # the tokens' texts and end tokens the infill step reads (infill_vocab); None: that
    # step does nothing (set by runtime/api.py when the chain names it)
    infill_vocab: InfillVocab | None = None
    # The chain: llama.cpp's sampler names (SAMPLER_STEPS), run in this order, each as
    # often as it is named; llama-server's `samplers` field. Ignored under Mirostat.
    samplers: tuple = DEFAULT_SAMPLERS

    @property
    def greedy(self) -> bool:
        """The argmax, no draw at all. llama.cpp's temp-ext samples at temperature 0
        when a dynamic range is set (Mirostat's chain has a plain temperature), and a
        chain without a temperature step samples at temperature 1 (llama-server's)."""
        if self.temperature > 0:
            return False
        if self.mirostat != 0:
            return True
        if self.dynatemp_range > 0 or "temperature" not in self.samplers:
            return False
        # llama.cpp's temperature 0 keeps the best candidate the steps before it left
        # (llama_sampler_temp_impl), and whatever comes after sees that one alone. That is
        # the argmax of the logits after the bias and the penalties and DRY leading the
        # chain when every other step before the temperature keeps the best token:
        # top-n-sigma (the best is never below best - n·std), top-k, top-p and min-p (each
        # keeps a best-first prefix of one or more) do, so the default chain takes the
        # plain argmax. Not so: the penalties or DRY after a cut (they see its survivors
        # alone), infill (it may end the reply), typical-p (it keeps the tokens nearest
        # the entropy, maybe not the best) and XTC (once its coin comes up, it drops the
        # likeliest tokens). With one of those on there, the chain runs and its
        # temperature step keeps the best candidate left; XTC's coin makes that random,
        # as in llama.cpp, drawn from the sampler's seeded rng.
        before = tuple(n for n in self.samplers[:self.samplers.index("temperature")]
                       if n in SAMPLER_STEPS)
        after_cut = before[_leading_logit_steps(before):]
        return not (("penalties" in after_cut and penalties_on(self)) or
                    ("dry" in after_cut and self.dry_on) or "infill" in after_cut or
                    (self.typical_p < 1.0 and "typ_p" in before) or
                    (self.xtc_on and "xtc" in before))

    @property
    def xtc_on(self) -> bool:
        """llama.cpp's XTC is off at probability 0 or below and above threshold 0.5 (no two
        tokens can both be above it)."""
        return self.xtc_probability > 0 and self.xtc_threshold <= 0.5

    @property
    def dry_on(self) -> bool:
        """llama.cpp skips DRY at multiplier 0, a base below 1 or a window of 0 tokens, and
        when the chain does not name it; llama-server's chain for Mirostat has no DRY."""
        return (self.dry_multiplier != 0 and self.dry_base >= 1 and self.dry_penalty_last_n != 0
                and not self.mirostat and "dry" in self.samplers)

    @property
    def adaptive_on(self) -> bool:
        """On when the chain names it (anywhere: it is the draw, so it comes last, as in
        llama.cpp); off under Mirostat, as llama-server's chain for it has no adaptive-p."""
        return self.adaptive_target >= 0 and not self.mirostat and "adaptive_p" in self.samplers


CHUNK_SMALL = 64      # constrained search: the model's best tokens, checked first
CHUNK_LARGE = 512     # then these; past them, only tokens whose first byte may come next
WIDE_SAMPLE_N = 64    # sampling when no filtered candidate is allowed: draw among this many
# ... whose logits are within this many temperatures of the best allowed one: a token
# further down would have under e^-10 of its probability.
WIDE_LOGIT_GAP = 10.0
# reported_probs under a constraint: the mass past the top tokens is only looked at when
# it could change a reported probability by more than this fraction.
REPORT_MASS_TOL = 1e-6
# The n likeliest tokens of a row are looked for among its entries at least as high as
# the n-th highest of its blocks' maxima (n blocks hold an entry that high, so no entry
# below it can be among the n best), in the blocks that reach it: a handful of
# candidates to sort, where a partition of Qwen's whole 151,936-entry row cost 1 ms.
BEST_BLOCK = 512
# reported_probs_rows takes this many rows at a time: its float32 scratch (2.4 MB for
# Qwen) stays in cache between its passes; 16 rows at a time measured 30% slower.
REPORT_ROWS = 4
# Mirostat v1 estimates the slope of the model's Zipf-like distribution from this many of
# its best tokens (llama-server's m).
MIROSTAT_M = 100
F64_MAX = float(np.finfo(np.float64).max)


class NoTokenAllowed(Exception):
    """The constraint allows no token with a finite logit: the reply cannot go on."""


def apply_logit_bias(logits: np.ndarray, bias: dict | None) -> np.ndarray:
    if not bias:
        return logits
    out = np.array(logits, dtype=np.promote_types(logits.dtype, np.float32))  # a copy
    ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
    vals = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
    keep = ids < out.size
    out[ids[keep]] += vals[keep]       # -inf stays -inf whatever is added
    return out


def penalties_on(p: SamplingParams) -> bool:
    """Whether the penalties step can change a logit (it needs a history too)."""
    return not (p.repeat_penalty == 1.0 and not p.presence_penalty and not p.frequency_penalty) \
        and p.repeat_last_n != 0


def apply_penalties(logits: np.ndarray, history: list[int], p: SamplingParams) -> np.ndarray:
    if not penalties_on(p) or not history:
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


# ---- the filters: each keeps some of the candidates, given best first ------------------

def _best_ids(z: np.ndarray, k: int) -> np.ndarray:
    """The ids of the k highest entries of z [V] (all of them for k >= V), best first."""
    if k < z.size:
        ids = np.argpartition(-z, k - 1)[:k]
    else:
        ids = np.arange(z.size)
    return ids[np.argsort(-z[ids], kind="stable")]


def _softmax_sorted(z: np.ndarray) -> np.ndarray:
    """float64 logits z [n], best first (z[0] finite) -> their softmax [n]."""
    probs = np.exp(z - z[0])
    probs /= probs.sum()
    return probs


def _entropy_nats(probs: np.ndarray) -> float:
    """-sum p log p over a distribution [n]; tokens of probability 0 add nothing."""
    pos = probs[probs > 0]
    return float(-np.sum(pos * np.log(pos)))


def top_n_sigma_masked(logits: np.ndarray, n: float) -> np.ndarray:
    """Top-n-sigma, as llama.cpp: logits [V] -> [V], -inf for every token whose logit is
    below max - n·std, the mean and (population) standard deviation taken over the finite
    logits. It looks at logits, not probabilities, so the temperature does not move it.
    n <= 0: the logits as they are."""
    if n <= 0:
        return logits
    finite = logits[np.isfinite(logits)].astype(np.float64)
    if finite.size <= 1:
        return logits
    out = logits.copy()
    with np.errstate(over="ignore"):  # n near float64's largest: an infinite band keeps all
        out[logits < finite.max() - n * finite.std()] = -np.inf
    return out


def typical_keep(z: np.ndarray, p: float, min_keep: int) -> np.ndarray:
    """Locally typical sampling (Meister et al.), as llama.cpp: float64 logits z [n], best
    first -> bool [n], the tokens kept. The tokens are ranked by how far their surprise
    -log p (nats) is from the distribution's entropy, closest first (ties: likelier first),
    and kept in that order until their mass exceeds p, and at least min_keep of them."""
    log_total = z[0] + math.log(np.sum(np.exp(z - z[0])))
    logp = z - log_total                    # -inf for a banned token: ranked last
    probs = np.exp(logp)
    order = np.argsort(np.abs(-logp - _entropy_nats(probs)), kind="stable")
    mass = np.cumsum(probs[order])
    n_keep = int(np.searchsorted(mass, p, side="right")) + 1   # the first to pass p, included
    n_keep = min(max(n_keep, min_keep, 1), z.size)
    keep = np.zeros(z.size, dtype=bool)
    keep[order[:n_keep]] = True
    return keep


def top_p_count(probs: np.ndarray, p: float, min_keep: int) -> int:
    """How many candidates (probs [n], best first) top-p keeps: the smallest prefix whose
    mass reaches p, and at least min_keep. p >= 1: all."""
    if p >= 1.0:
        return probs.size
    return min(probs.size, max(int(np.searchsorted(np.cumsum(probs), p) + 1), min_keep))


def min_p_count(probs: np.ndarray, p: float, min_keep: int) -> int:
    """How many candidates (probs [n], best first) min-p keeps: those at least p times as
    likely as the best one, and at least min_keep (and 1). p <= 0: all."""
    if p <= 0.0:
        return probs.size
    return min(probs.size, max(1, min_keep, int(np.sum(probs >= p * probs[0]))))


def xtc_cut(probs: np.ndarray, threshold: float, min_keep: int) -> int:
    """XTC ("exclude top choices"), as llama.cpp, once its coin has come up: how many of
    the best candidates (probs [n], best first) it drops. When two or more tokens are at
    least `threshold` likely, all of them but the least likely, unless fewer than min_keep
    candidates would be left; otherwise none. Only tokens above probability 0 count: at
    threshold 0 a banned (-inf) candidate is "at least 0 likely" too, and leaving it alone
    would leave nothing that can be drawn."""
    cut = int(np.sum((probs >= threshold) & (probs > 0))) - 1
    if cut <= 0 or probs.size - cut < min_keep:
        return 0
    return cut


def dynamic_temperature(z: np.ndarray, temp: float, delta: float, exponent: float) -> float:
    """Entropy-based dynamic temperature, as llama.cpp's temp-ext: the candidates' (float64
    logits z [n], best first) entropy as a fraction of the largest possible, log n, raised
    to `exponent`, places the temperature in [temp - delta, temp + delta] (not below 0):
    a sure model is sampled colder, an unsure one hotter. temp 0 is allowed: the range
    is then [0, delta], as in llama.cpp."""
    if z.size <= 1:
        return temp          # one candidate: any temperature gives it probability 1
    # hi is kept finite, as is the result: a huge temperature plus a huge range made inf,
    # and inf·0 (a sure model) or a banned token's -inf / inf is NaN, a failed draw.
    lo, hi = max(0.0, temp - delta), min(temp + delta, F64_MAX)
    # max: a sure model's entropy, -(1 log 1), is -0.0, and -0.0 ** -x is -inf
    spread = max(0.0, min(_entropy_nats(_softmax_sorted(z)) / math.log(z.size), 1.0))
    # A negative exponent (llama.cpp takes any) sends the temperature above hi, and to
    # infinity for a sure model (0 ** -x): every finite candidate then equally likely.
    with np.errstate(over="ignore", divide="ignore"):
        scale = float(np.power(np.float64(spread), exponent))
    if hi <= lo:       # a negative temperature's range, or one lost to rounding
        return lo
    return min(lo + (hi - lo) * scale, F64_MAX)


def mirostat_k(z: np.ndarray, mu: float, n_vocab: int) -> int:
    """Mirostat v1's top-k (Basu et al., algorithm 1, as llama.cpp): z [m] the best
    logits at the temperature, best first and finite; mu the surprise (bits) aimed at;
    n_vocab is N. The Zipf exponent s is fitted to the ratios of successive probabilities,
    then k = (e·2^mu / (1 - N^-e))^(1/s) with e = s - 1, truncated, at least 1."""
    m = z.size
    if m < 2:
        return 1
    rank = np.arange(1, m, dtype=np.float64)
    t = np.log1p(1.0 / rank)                 # log((i + 1) / i)
    b = z[:-1] - z[1:]                       # log(p_i / p_(i+1))
    s = float(t @ b) / float(t @ t)
    e = s - 1.0
    log_n = math.log(n_vocab)
    # e / (1 - N^-e), positive for any e > -1; its limit at e = 0 is 1 / log N
    ratio = e / -math.expm1(-e * log_n) if abs(e) > 1e-12 else 1.0 / log_n
    log_k = math.log(ratio) + mu * math.log(2.0)
    if s <= 0:                               # all m equally likely: k is 1 or everything
        return n_vocab if log_k > 0 else 1
    log_k /= s
    if log_k >= math.log(n_vocab):
        return n_vocab
    # a mu that a huge eta sent to inf - inf (NaN) keeps the best token alone, as v2 does
    return max(int(math.exp(log_k)), 1) if log_k > 0 else 1


def _block_maxima(z: np.ndarray) -> np.ndarray:
    """[R, V] -> [R, ceil(V / BEST_BLOCK)]: the highest entry of each block of a row."""
    return np.maximum.reduceat(z, np.arange(0, z.shape[1], BEST_BLOCK), axis=1)


def _best_first(z: np.ndarray, top: np.ndarray, n: int, maxima: np.ndarray | None = None) -> list:
    """For each row of logits z [R, V] with a finite highest entry top[r]: (ids, w), the
    ids of its n best entries, best first, ties lowest id first (as argmax and the
    constraint's search order them), and their weights w = exp(z - top) in float64;
    fewer than n when fewer entries weigh above 0. (empty, empty) for another row.
    maxima: _block_maxima(z), if the caller has it."""
    R, V = z.shape
    none = (np.zeros(0, dtype=np.int64), np.zeros(0))
    if n <= 0:
        return [none] * R
    if maxima is None:
        maxima = _block_maxima(z)
    nb = maxima.shape[1]
    floor = np.finfo(z.dtype).min        # -inf entries weigh 0: never candidates
    if nb >= n:
        cut = np.maximum(np.partition(maxima, nb - n, axis=1)[:, nb - n], floor)
    else:
        cut = np.full(R, floor, dtype=z.dtype)
    span = np.arange(BEST_BLOCK)
    out = []
    for r in range(R):
        if not np.isfinite(top[r]):
            out.append(none)
            continue
        # candidates: in the blocks whose maximum reaches the cut (n of them, but for ties)
        ids = (np.flatnonzero(maxima[r] >= cut[r])[:, None] * BEST_BLOCK + span).ravel()
        ids = ids[ids < V]
        ids = ids[z[r, ids] >= cut[r]]              # ascending
        v = z[r, ids]
        if ids.size > n:  # many ties: the n best, those tied at the cut lowest id first
            nth = np.partition(v, ids.size - n)[ids.size - n]
            above, tied = v > nth, v == nth
            keep = above | (tied & (np.cumsum(tied) <= n - np.count_nonzero(above)))
            ids, v = ids[keep], v[keep]
        order = np.lexsort((ids, -v))
        # the same float64 operations as reported_probs' w, so the same values bit for bit
        w = np.exp(v[order].astype(np.float64) - top[r])
        ok = w > 0                        # a prefix: w falls as z does
        out.append((ids[order][ok], w[ok]))
    return out


def reported_probs_rows(logits: np.ndarray, chosen, n: int) -> list:
    """For each row r of logits [R, V]: (the probability of token chosen[r], the n most
    likely [(id, prob), ...] best first), what Sampler(SamplingParams()).reported_probs(
    row, [], n) reports (the model's plain softmax), for a block of rows at once: the
    prompt's logprobs (echo with logprobs), one row per position.

    The ids and their order are reported_probs' own (the same _best_first), and so are
    the probabilities' numerators, bit for bit; the normaliser, the sum of exp over the
    vocabulary, is within 1e-6 relative of reported_probs'. Bit for bit is impossible at
    this speed: reported_probs sums float64 exps, and NumPy's float64 exp takes about
    0.8 ms for Qwen's 151,936 entries (on the 2-core dev VM), more than all the rest.
    Here they are float32 exps (0.35 ms), summed in float64. Each term is off by
    the float32 exp's error (under 2.5 ulps: 2.1e-7 relative, measured over -30..0) and
    by rounding z - top to float32 (half an ulp of it: at most 4.8e-7 relative for the
    terms in e^-16..e^-8, and those further down weigh under V·e^-16 in all), so the
    sum is off by under 7e-7; the worst case, a whole vocabulary tied e^-8.4 below the
    top, measured 5.7e-7. A probability is capped at 1, as this sum may fall that
    little short of one exact float64 term."""
    z = np.ascontiguousarray(logits, dtype=np.float32)
    chosen = np.asarray(chosen, dtype=np.int64)
    scratch = np.empty((min(REPORT_ROWS, len(z)), z.shape[1]), dtype=np.float32)
    out = []
    for r0 in range(0, len(z), REPORT_ROWS):
        zr = z[r0:r0 + REPORT_ROWS]
        maxima = _block_maxima(zr)
        top32 = maxima.max(axis=1)
        ok = np.isfinite(top32)
        x = np.subtract(zr, np.where(ok, top32, 0)[:, None], out=scratch[:len(zr)])
        with np.errstate(over="ignore", invalid="ignore"):   # rows left out below
            np.exp(x, out=x)
        total = x.sum(axis=1, dtype=np.float64)
        top = top32.astype(np.float64)
        toks = chosen[r0:r0 + len(zr)]
        with np.errstate(invalid="ignore"):
            w_tok = np.exp(zr[np.arange(len(zr)), toks].astype(np.float64) - top)
        for r, (ids, w) in enumerate(_best_first(zr, top, n, maxima)):
            if not ok[r]:                 # reported_probs reports nothing here either
                out.append((0.0, []))
                continue
            p = w / total[r]
            out.append((min(float(w_tok[r] / total[r]), 1.0),
                        [(int(i), min(float(q), 1.0)) for i, q in zip(ids.tolist(), p)]))
    return out


# adaptive-p's reshaping (llama.cpp's constants): a token's new logit is
# PEAK - SHARPNESS * d^2 / (1 + d), d its distance from the target probability in WIDTHs.
ADAPTIVE_WIDTH = 0.3
ADAPTIVE_PEAK = 5.0
ADAPTIVE_SHARPNESS = 10.0
ADAPTIVE_MAX_DECAY = 0.99


def clamped_adaptive_decay(decay: float) -> float:
    """adaptive-p's decay, taken in [0, 0.99] as llama.cpp takes it."""
    return min(max(decay, 0.0), ADAPTIVE_MAX_DECAY)


def adaptive_p_probs(probs: np.ndarray, target: float, finite: np.ndarray) -> np.ndarray:
    """adaptive-p (llama.cpp's, from its PR 17927): the candidates' probabilities [n]
    reshaped so that those nearest the target probability (in [0, 1]) are the likeliest:
    each gets the logit PEAK - SHARPNESS * d^2 / (1 + d), d = |p - target| / WIDTH
    (quadratic near the target, linear far from it), then the softmax of those. A
    candidate whose logit is not finite (finite [n] False: banned) stays at 0; one whose
    probability merely rounded to 0 is reshaped like any other, as in llama.cpp."""
    d = np.abs(probs - target) / ADAPTIVE_WIDTH
    z = np.where(finite, ADAPTIVE_PEAK - ADAPTIVE_SHARPNESS * d * d / (1.0 + d), -np.inf)
    w = np.exp(z - z.max())
    return w / w.sum()


# llama.cpp's infill sampler: a text token is kept when its probability, with those of the
# tokens merged into it, is at least this (then at least 1 / (the kept text tokens + 1))
INFILL_KEEP_P = 0.2
# ... and it keeps only the end tokens when they are likelier than the text tokens' mass
# over INFILL_EOG_RATIO times the number of candidates
INFILL_EOG_RATIO = 3.0


@dataclass(frozen=True, eq=False)
class InfillVocab:
    """What the infill step reads of the tokenizer: every token's text (table: its
    table_of, shared with DRY and the JSON constraint), the end-of-generation tokens
    (eog, sorted) and the one it ends a reply with when it keeps no text (end_id:
    llama.cpp's EOT, else EOS; None: neither)."""
    table: TokenBytes
    eog: np.ndarray
    end_id: int | None

    def piece(self, t: int) -> bytes:
        """Token t's text as llama.cpp's token_to_piece without special tokens gives it:
        nothing for a control token (nor for an id past the tokenizer's vocabulary)."""
        if not 0 <= t < len(self.table) or self.table.hidden[t]:
            return b""
        return self.table[t]

    def is_eog(self, ids: np.ndarray) -> np.ndarray:
        return np.isin(ids, self.eog)


def infill_vocab(tok) -> InfillVocab:
    """The infill step's view of tokenizer tok (anything table_of reads, with eog_ids and
    eot_id / eos_id)."""
    eog = np.array(sorted(getattr(tok, "eog_ids", ()) or ()), dtype=np.int64)
    end = getattr(tok, "eot_id", None)
    if end is None:
        end = getattr(tok, "eos_id", None)
    return InfillVocab(table_of(tok), eog, end)


def infill_merged(pieces: list, probs: np.ndarray, live: np.ndarray) -> np.ndarray:
    """llama.cpp's infill merge: candidates best first, with texts pieces [n] (bytes),
    probabilities probs [n] and live [n] False for a banned (-inf) token, which takes no
    part -> their probabilities after merging [n], 0 for each token merged into another.
    In candidate order, a live token with a text meets each live token whose text starts
    with it, in candidate order too: the less likely of the two (the other one on a tie)
    goes into the likelier, and when that is the first one, it meets no more.

    The texts a text starts are a run of them sorted as bytes, found by bisection: a step
    costs the pairs that share a start, not llama.cpp's n^2 comparisons."""
    p = probs.astype(np.float64).tolist()
    alive = np.asarray(live, dtype=bool).tolist()
    by_text = sorted(range(len(pieces)), key=pieces.__getitem__)
    texts = [pieces[i] for i in by_text]
    for i0, a in enumerate(pieces):
        if not alive[i0] or not a:
            continue
        lo = bisect.bisect_left(texts, a)
        hi = lo
        while hi < len(texts) and texts[hi].startswith(a):
            hi += 1
        for i1 in sorted(by_text[lo:hi]):
            if i1 == i0 or not alive[i1]:
                continue
            if p[i1] > p[i0]:            # i0 goes into the likelier i1, and is done
                p[i1] += p[i0]
                p[i0], alive[i0] = 0.0, False
                break
            p[i0] += p[i1]
            p[i1], alive[i1] = 0.0, False
    return np.array(p)


def infill_keep(merged: np.ndarray, eog: np.ndarray) -> np.ndarray | None:
    """Which candidates llama.cpp's infill sampler keeps after the merge (merged [n], eog
    [n] True for an end token): every end token, and the text tokens at least
    INFILL_KEEP_P likely, then, renormalised over those, the text tokens at least
    1 / (their number + 1) likely. None: no text token is left (the reply should end)."""
    keep = eog | (merged >= INFILL_KEEP_P)
    n_text = int(np.count_nonzero(keep & ~eog))
    if n_text == 0:
        return None
    p = merged / merged[keep].sum()
    return keep & (eog | (p >= 1.0 / (n_text + 1)))


# ---- the chain: one step per sampler name, each from the candidates to the kept ones ---

@dataclass
class Candidates:
    """The tokens still in the running. ids [n], best first, and z their logits (float64);
    or, while no step has had to sort them, ids None and z the whole vocabulary's logits
    [V], in token order. t: the temperature z is still to be divided by (the temperature
    step multiplies it): 1 before it, so that the default chain's arithmetic is the one
    it always was. probs: when not None, a softmax whose first len(ids) entries are the
    candidates' (top-p's, kept for min-p, which compares with the best token only)."""
    ids: np.ndarray | None
    z: np.ndarray
    t: float = 1.0
    probs: np.ndarray | None = None


def _sorted(c: Candidates, k: int | None = None) -> Candidates:
    """c best first (the best k of them, when the vocabulary is not sorted yet)."""
    if c.ids is not None:
        return c
    ids = _best_ids(c.z, k or c.z.size)
    return Candidates(ids, c.z[ids].astype(np.float64), c.t)


def _kept(c: Candidates, keep) -> Candidates:
    """The candidates at keep (a slice or a mask, order kept)."""
    return Candidates(c.ids[keep], c.z[keep], c.t)


def _scaled(c: Candidates) -> np.ndarray:
    """The logits at the temperature so far (best first)."""
    return c.z if c.t == 1 else c.z / c.t


def _softmax_now(c: Candidates) -> np.ndarray:
    probs = np.exp((c.z - c.z[0]) / c.t)
    return probs / probs.sum()


def _modified(c: Candidates, modify) -> Candidates:
    """A step that changes logits (the penalties, DRY), as llama.cpp runs it wherever it
    is named: on the whole vocabulary before anything is cut, else on the candidates (at
    the temperature so far), which are then sorted again."""
    if c.ids is None:
        return Candidates(None, modify(c.z), c.t)
    full = np.full(int(c.ids.max()) + 1, -np.inf)    # every history token past it is no candidate
    full[c.ids] = _scaled(c)
    z = modify(full)[c.ids]
    order = np.argsort(-z, kind="stable")
    return Candidates(c.ids[order], z[order])   # z is scaled already: t is 1 again


def _step_penalties(s, c: Candidates, history) -> Candidates:
    p = s.params
    if not penalties_on(p) or not history:
        return c
    return _modified(c, lambda z: apply_penalties(z, history, p))


def _step_dry(s, c: Candidates, history) -> Candidates:
    return _modified(c, lambda z: apply_dry(z, history, s.params)) if s.params.dry_on else c


def _step_top_n_sigma(s, c: Candidates, history) -> Candidates:
    n = s.params.top_n_sigma
    if n <= 0 or c.ids is None:   # the whole vocabulary: masked, not cut (as it always was)
        return Candidates(c.ids, top_n_sigma_masked(c.z, n), c.t)
    # on logits, not probabilities: the temperature does not move it
    z = top_n_sigma_masked(c.z, n)
    return _kept(c, np.isfinite(z))


def _step_top_k(s, c: Candidates, history) -> Candidates:
    k = s.params.top_k
    if c.ids is None:
        return _sorted(c, k if 0 < k < c.z.size else c.z.size)
    return _kept(c, slice(0, k)) if 0 < k < c.ids.size else c


def _step_typical(s, c: Candidates, history) -> Candidates:
    p = s.params
    if p.typical_p >= 1.0:
        return c
    c = _sorted(c)
    return _kept(c, typical_keep(_scaled(c), p.typical_p, p.min_keep))


def _step_top_p(s, c: Candidates, history) -> Candidates:
    p = s.params
    if p.top_p >= 1.0:
        return c
    c = _sorted(c)
    probs = _softmax_now(c)
    keep = top_p_count(probs, p.top_p, p.min_keep)
    return Candidates(c.ids[:keep], c.z[:keep], c.t, probs)


def _step_min_p(s, c: Candidates, history) -> Candidates:
    p = s.params
    if p.min_p <= 0.0:
        return c
    c = _sorted(c)
    # min-p compares with the best token: top-p's softmax, over more tokens, does as well
    probs = c.probs[:c.ids.size] if c.probs is not None else _softmax_now(c)
    return _kept(c, slice(0, min_p_count(probs, p.min_p, p.min_keep)))


def _step_xtc(s, c: Candidates, history) -> Candidates:
    p = s.params
    if not p.xtc_on:
        return c
    c = _sorted(c)
    # XTC's coin is tossed only where it could act, as in llama.cpp
    if c.ids.size < 2 or s.rng.random() > p.xtc_probability:
        return c
    return _kept(c, slice(xtc_cut(_softmax_now(c), p.xtc_threshold, p.min_keep), None))


# The least temperature (all the temperature steps so far multiplied) that is not 0:
# float32's least normal number. llama.cpp holds the temperature in a float32, where a
# JSON 1e-310 is 0 (greedy); here the logits divided by so little overflow float64, and
# the penalties or DRY after the temperature then made NaN probabilities (a 500).
TEMPERATURE_MIN = float(np.finfo(np.float32).tiny)


def _step_temperature(s, c: Candidates, history) -> Candidates:
    p = s.params
    c = _sorted(c)
    t = p.temperature
    if p.dynatemp_range > 0:
        t = dynamic_temperature(_scaled(c), t, p.dynatemp_range, p.dynatemp_exponent)
    # llama.cpp's temperature 0 (or one too small to divide by): the best candidate alone
    if t <= 0 or c.t * t < TEMPERATURE_MIN:
        return _kept(c, slice(0, 1))
    return Candidates(c.ids, c.z, c.t * t)


def _step_infill(s, c: Candidates, history) -> Candidates:
    """llama.cpp's infill sampler (llama_sampler_infill, for fill-in-the-middle: stop, or
    go on with text the model is sure of). On the candidates' probabilities at the
    temperature so far: when the end tokens are likely enough (INFILL_EOG_RATIO), they
    alone; else tokens whose text starts another's are merged (infill_merged) and those
    infill_keep keeps go on, drawn as before by their own logits (llama.cpp's draw takes
    the softmax of the logits again); when no text token is kept, the end token alone.
    Without params.infill_vocab it does nothing."""
    v = s.params.infill_vocab
    if v is None:
        return c
    c = _sorted(c)
    probs = _softmax_now(c)
    eog = v.is_eog(c.ids)
    if INFILL_EOG_RATIO * probs[eog].sum() * c.ids.size > probs[~eog].sum():
        return _kept(c, eog & (probs > 0))
    merged = infill_merged([v.piece(t) for t in c.ids.tolist()], probs, np.isfinite(c.z))
    keep = infill_keep(merged, eog)
    if keep is None:
        end = _infill_end(s, v)
        if end is not None:
            return Candidates(np.array([end]), np.array([1.0]), c.t)
        keep = ~eog    # the end token is banned: the text tokens as the merge left them
    keep &= merged > 0   # a token merged into another is no candidate any more
    return _kept(c, keep) if keep.any() else c


def _infill_end(s, v: InfillVocab) -> int | None:
    """The token the infill step ends a reply with: llama.cpp's EOT (else EOS), unless the
    bias bans it (ignore_eos) or the constraint does not allow it. None: no such token."""
    end = v.end_id
    if end is None or (s.params.logit_bias or {}).get(end, 0.0) == -np.inf:
        return None
    if s.constraint is not None and not s.constraint.allows(end):
        return None
    return end


# llama.cpp's sampler names -> their steps. "adaptive_p" is the draw (Sampler._adaptive),
# not a step: it is left out of the chain.
SAMPLER_STEPS = {"penalties": _step_penalties, "dry": _step_dry,
                 "top_n_sigma": _step_top_n_sigma, "top_k": _step_top_k,
                 "typ_p": _step_typical, "top_p": _step_top_p, "min_p": _step_min_p,
                 "xtc": _step_xtc, "temperature": _step_temperature, "infill": _step_infill}
# Steps that change logits rather than cut: leading the chain, they belong to
# Sampler.adjusted, whose logits greedy decoding, n_probs and a constraint look at.
LOGIT_STEPS = ("penalties", "dry")


def _leading_logit_steps(order: tuple) -> int:
    n = 0
    while n < len(order) and order[n] in LOGIT_STEPS:
        n += 1
    return n


class Sampler:
    def __init__(self, params: SamplingParams, constraint=None):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.constraint = constraint   # .allows(tok), .candidates(); None: anything goes
        # Mirostat's bound on a token's surprise (bits), moved after every token drawn: it
        # starts at twice the target and lives as long as the sampler, one request.
        self.mu = 2.0 * params.mirostat_tau
        # adaptive-p's moving average of the drawn tokens' probabilities (before its own
        # reshaping): their decayed sum and the sum of the decays, started where the
        # average is the target (llama.cpp's llama_sampler_init_adaptive_p)
        decay = clamped_adaptive_decay(params.adaptive_decay)
        self.adaptive_sum = params.adaptive_target / (1.0 - decay)
        self.adaptive_weight = 1.0 / (1.0 - decay)
        # params.samplers as steps: those that change logits before anything is cut run
        # on the whole vocabulary in `adjusted`, the rest in `_filtered`. Greedy decoding
        # takes the best token after every logit step before the temperature, where the
        # filters there keep it (SamplingParams.greedy; else the chain runs, as when
        # sampling). Mirostat has a chain of its own.
        order = () if params.mirostat else tuple(n for n in params.samplers if n in SAMPLER_STEPS)
        n_logit = _leading_logit_steps(order)
        if params.greedy and not params.mirostat:
            n_logit = order.index("temperature")
        self._logit_steps = tuple(n for n in order[:n_logit] if n in LOGIT_STEPS)
        self._chain = tuple(n for n in order[:n_logit] if n not in LOGIT_STEPS) + order[n_logit:]

    def adjusted(self, logits: np.ndarray, history: list[int]) -> np.ndarray:
        """The logits after the bias and the penalties and DRY that lead the chain (in
        llama.cpp's default order, both): what every later step sees. Mirostat goes
        without the penalties and DRY, as llama-server's chain for it does."""
        c = Candidates(None, apply_logit_bias(np.asarray(logits), self.params.logit_bias))
        for name in self._logit_steps:
            c = SAMPLER_STEPS[name](self, c, history)
        return c.z

    def probabilities(self, logits: np.ndarray, history: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Candidate ids and the probabilities they are drawn with, after every filter
        (and adaptive-p's reshaping, for its present average), best first."""
        z = self.adjusted(np.asarray(logits, dtype=np.float32), history)
        ids, probs = self._filtered(z, history)
        return ids, self._adaptive(ids, probs, z)

    def _filtered(self, logits: np.ndarray, history: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The sampler chain: params.samplers' steps (SAMPLER_STEPS) in their order, by
        default llama.cpp's (common/common.h's `samplers`: penalties, DRY, top-n-sigma,
        top-k, typical-p, top-p, min-p, XTC, temperature), but for the logit steps that
        lead it, which are in `adjusted`; adaptive-p's reshaping, which llama.cpp puts
        last whatever the order, is in `_adaptive`. With Mirostat on: the temperature and
        Mirostat alone (llama-server's chain for it).
        Each step looks at the candidates the one before it left, at the temperature so
        far (1 before the temperature step); off (its default), it keeps them all and
        costs nothing. Draws from self.rng when XTC is on. -> (ids, probabilities), best
        first."""
        if self.params.mirostat:
            return self._mirostat_filtered(logits)
        c = Candidates(None, logits)
        for name in self._chain:
            c = SAMPLER_STEPS[name](self, c, history)
        c = _sorted(c)
        return c.ids, _softmax_now(c)

    def _mirostat_filtered(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mirostat's candidates for the present mu, at the temperature (ids, probabilities,
        best first). v1: the top k of mirostat_k. v2: the tokens whose surprise -log2 p is
        at most mu, or the best one alone when none is."""
        p = self.params
        z = logits.astype(np.float64) / max(p.temperature, 1e-6)
        n_finite = int(np.count_nonzero(np.isfinite(z)))   # banned tokens are never candidates
        if p.mirostat == 1:
            top = _best_ids(z, min(MIROSTAT_M, n_finite))
            k = min(mirostat_k(z[top], self.mu, z.size), n_finite)
            ids = top[:k] if k <= top.size else _best_ids(z, k)
        else:
            best = float(z.max())
            log_total = best + math.log(np.sum(np.exp(z - best)))
            ids = np.flatnonzero((log_total - z) / math.log(2.0) <= self.mu)
            ids = ids[np.argsort(-z[ids], kind="stable")] if ids.size else np.argmax(z)[None]
        return ids, _softmax_sorted(z[ids])

    def _mirostat_update(self, prob: float) -> None:
        """After a draw: mu moves by eta times how far the token's surprise (bits, in the
        distribution it was drawn from) was from the target tau."""
        p = self.params
        self.mu -= p.mirostat_eta * (-math.log2(prob) - p.mirostat_tau)

    def sample(self, logits: np.ndarray, history: list[int]) -> int:
        if not self.params.greedy:
            logits = np.asarray(logits, dtype=np.float32)
        z = self.adjusted(logits, history)
        if self.params.greedy:
            if self.constraint is None:
                return int(np.argmax(z))
            tok = next(self._allowed_best_first(z), None)
            if tok is None:
                raise NoTokenAllowed()
            return tok
        ids, probs = self._filtered(z, history)
        if self.constraint is not None:
            ok = np.fromiter((self.constraint.allows(t) for t in ids), dtype=bool, count=ids.size)
            ok &= probs > 0
            if ok.any():
                ids, probs = ids[ok], probs[ok] / probs[ok].sum()
            else:  # none of the model's likely tokens fits: the best ones that do
                found = self._allowed_near_top(z)
                if not found:
                    raise NoTokenAllowed()
                masked = np.full_like(z, -np.inf)
                masked[found] = z[found]
                z = masked
                ids, probs = self._filtered(z, history)
        drawn_from = self._adaptive(ids, probs, z)
        i = self.rng.choice(ids.size, p=drawn_from)
        if self.params.mirostat:
            self._mirostat_update(float(probs[i]))
        elif self.params.adaptive_on:
            self._adaptive_update(float(probs[i]))
        return int(ids[i])

    def _adaptive(self, ids: np.ndarray, probs: np.ndarray, z: np.ndarray) -> np.ndarray:
        """adaptive-p's reshaping of the candidates' (ids) probabilities, for its present
        average (z: the logits they came from); the probabilities as they are when it is
        off."""
        p = self.params
        if not p.adaptive_on:
            return probs
        target = min(p.adaptive_target, 1.0)
        # aim as far past the target as the recent draws fell short of it (or the other
        # way), so that their average comes back to it
        if self.adaptive_weight != 0:
            target = 2.0 * target - self.adaptive_sum / self.adaptive_weight
        return adaptive_p_probs(probs, min(max(target, 0.0), 1.0), np.isfinite(z[ids]))

    def _adaptive_update(self, prob: float) -> None:
        """After a draw: the drawn token's probability before the reshaping joins the
        average, the older ones decaying."""
        decay = clamped_adaptive_decay(self.params.adaptive_decay)
        self.adaptive_sum = prob + decay * self.adaptive_sum
        self.adaptive_weight = 1.0 + decay * self.adaptive_weight

    def reported_probs(self, logits: np.ndarray, history: list[int], n: int) -> tuple[list, np.ndarray]:
        """What logprobs / n_probs report for the token drawn from these logits: the n
        most likely (id, prob), best first (ties: lowest id first, as argmax), and p with
        p[tok] the chosen token's prob.

        The distribution is the one the token is drawn from, before the sampler's own
        truncation: the model's softmax after logit_bias, the penalties and DRY (Mirostat
        goes without the penalties and DRY, so they are left out under it too), restricted
        to the tokens the constraint allows (JSON, tool calls) and renormalised over them.
        So the chosen token is always in it with a probability above 0, a token the
        constraint or a -inf bias forbids is never listed, and a token the constraint
        forces has probability 1 (OpenAI's structured outputs report the same). top-k,
        top-p, min-p, the temperature and adaptive-p are left out, as OpenAI's logprobs and
        llama-server's n_probs (without post_sampling_probs) leave them out: a greedy
        reply still tells how sure the model was. Without a bias, penalties, DRY or a
        constraint this is the plain softmax of the logits, as llama-server reports.

        p[tok] is meaningful only for a token the constraint allows. Its normaliser
        is exact over the CHUNK_LARGE best tokens; past them the allowed mass is that of
        the tokens the constraint's two-byte filter lets through (a superset, as checking
        the whole vocabulary token by token would cost seconds per token), and it is only
        looked at when it could move a probability by more than REPORT_MASS_TOL."""
        z32 = self.adjusted(np.asarray(logits, dtype=np.float32), history)
        z = z32.astype(np.float64)
        top = z.max() if z.size else -np.inf
        if not np.isfinite(top):
            return [], np.zeros(z.shape)
        w = np.exp(z - top)                  # a banned (-inf) token weighs 0
        c = self.constraint
        if c is None:
            total = w.sum()
            ids = _best_first(z32.reshape(1, -1), np.array([top]), n)[0][0]
        else:
            ids = np.fromiter(itertools.islice(self._allowed_best_first(z), n), dtype=np.int64)
            total = self._allowed_mass(w)
            if total <= 0:                   # nothing allowed: the sampler will say so
                return [], np.zeros(z.shape)
        p = w / total
        return [(int(i), min(float(p[i]), 1.0)) for i in ids], p

    def _allowed_mass(self, w: np.ndarray) -> float:
        """Sum of w over the tokens the constraint allows (see reported_probs)."""
        c = self.constraint
        k = min(CHUNK_LARGE, w.size)
        head = np.argpartition(-w, k - 1)[:k]
        head = head[w[head] > 0]
        ok = np.fromiter((c.allows(t) for t in head.tolist()), dtype=bool, count=head.size)
        found = float(w[head][ok].sum())
        rest = float(w.sum() - w[head].sum())
        if rest <= REPORT_MASS_TOL * found:
            return found
        mask = c.candidates()
        mask[head] = False
        return found + float(w[mask].sum())

    def _allowed_near_top(self, z: np.ndarray) -> list:
        """Allowed tokens to draw from when no filtered candidate is allowed: those among
        the CHUNK_LARGE best, or else the WIDE_SAMPLE_N best allowed ones further down."""
        found = list(itertools.islice(self._allowed_best_first(z, deep=False), WIDE_SAMPLE_N))
        if found:
            return found
        best = next(self._allowed_best_first(z), None)
        if best is None:
            return []
        floor = z[best] - WIDE_LOGIT_GAP * max(self.params.temperature, 1e-6)
        near = self._allowed_best_first(np.where(z >= floor, z, -np.inf))
        return list(itertools.islice(near, WIDE_SAMPLE_N))

    def _allowed_best_first(self, z: np.ndarray, deep: bool = True):
        """The tokens the constraint allows, best logit first (ties: lowest id first, as
        argmax), skipping banned (-inf) ones; only among the CHUNK_LARGE best unless deep.
        Lazy: the first answer costs one check when the model's favourite fits."""
        c = self.constraint
        best = int(np.argmax(z))
        if not np.isfinite(z[best]):
            return
        if c.allows(best):
            yield best
        done = {best}
        for n in (CHUNK_SMALL, CHUNK_LARGE):
            n = min(n, z.size)
            top = np.argpartition(-z, n - 1)[:n]
            for t in top[np.lexsort((top, -z[top]))].tolist():
                if t in done:
                    continue
                if not np.isfinite(z[t]):
                    return
                done.add(t)
                if c.allows(t):
                    yield t
            if n == z.size:
                return
        if not deep:
            return
        # Past the top tokens: only those whose first byte can come next, in order.
        cand = np.flatnonzero(c.candidates() & np.isfinite(z))
        order = cand[np.lexsort((cand, -z[cand]))]
        for t in order.tolist():
            if t not in done and c.allows(t):
                yield t
