"""DRY ("don't repeat yourself"), llama.cpp's repetition penalty (first koboldcpp's).

Where the last tokens of the history already came earlier, the token that followed them
there would make the repeat one longer: DRY pushes that token's logit down, the more the
longer the repeat. A sequence breaker (a newline, ":", ...) ends every repeat: none is
counted across it, and a token that is itself a breaker is never pushed down.

runtime/sampling.py applies it (Sampler.adjusted) after the penalties and before every
filter; SamplingParams holds its settings (dry_multiplier, dry_base, dry_allowed_length,
dry_penalty_last_n, dry_breakers).
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from runtime.token_bytes import TokenBytes, pack, table_of

if TYPE_CHECKING:
    from runtime.sampling import SamplingParams

# llama-server's default breakers (common_params_sampling::dry_sequence_breakers).
DRY_SEQUENCE_BREAKERS = ("\n", ":", "\"", "*")
DRY_MAX_BREAKER_BYTES = 40   # llama.cpp cuts a breaker to this many bytes
DRY_MAX_TAIL_TOK = 20        # ... and a breaker's tail to this many tokens
# log(FLT_MAX): llama.cpp caps the penalty's exponent at this / log(base), so that
# base ** exponent stays a finite float32.
DRY_FLOAT_MAX_LOG = 88.7228391
F32_MAX = float(np.finfo(np.float32).max)
# Entries in each of the two breaker caches, per tokenizer (a breaker string, or a list
# of them, whose tokens are kept) ...
DRY_CACHE_MAX = 256
# ... and (head, tail) pairs, in each of them: 64 breakers starting with "e"
# make 746,000 pairs for Qwen (one per token ending with "e", per breaker), 90 MB as
# lists, and requests with ever new ones filled the caches with gigabytes.
DRY_CACHE_PAIRS = 1_000_000
DRY_GALLOP_WORK = 8          # dry_match_lengths' comparisons per window token, at most
TRIE_STRIDE = 2**32          # DryBreakers' trie edges: node * this + token, tokens below it


@dataclass(frozen=True, eq=False)
class DryBreakers:
    """DRY's sequence breakers as tokens. A breaker is a head token and a tail, the tokens
    that must follow it (none for most: a token whose text holds "\n" breaks by itself).
    tails: {head id: (tail, ...)}, each tail a tuple of ids.

    The distinct tails also make a trie (node 0 the root), and each (head, tail) pair a
    key, head * nodes + the node where that tail ends, so that dry_repeat_limit reads
    the tokens after every head of a window at once, one token a round: a head may have a
    thousand tails (64 breakers of "=" signs, a token of 16 of them opening each at 16
    places), and trying them one by one at each head cost seconds per token."""
    tails: dict
    is_head: np.ndarray = field(init=False, repr=False)    # bool [max id + 1]
    is_single: np.ndarray = field(init=False, repr=False)  # ... heads with an empty tail
    edge_keys: np.ndarray = field(init=False, repr=False)  # sorted node * TRIE_STRIDE + token
    edge_child: np.ndarray = field(init=False, repr=False)  # ... the node each one leads to
    pair_keys: np.ndarray = field(init=False, repr=False)  # sorted head * nodes + tail's end
    n_nodes: int = field(init=False, repr=False)
    depth: int = field(init=False, repr=False)              # the longest tail's length

    def __post_init__(self):
        size = max(self.tails, default=-1) + 1
        is_head, is_single = np.zeros(size, dtype=bool), np.zeros(size, dtype=bool)
        children: dict = {}               # (node, token) -> node
        end_of: dict = {(): 0}            # tail -> the node where it ends
        for head, tails in self.tails.items():
            is_head[head] = True
            is_single[head] = () in tails
            for tail in tails:
                if tail not in end_of:
                    node = 0
                    for t in tail:
                        node = children.setdefault((node, t), len(children) + 1)
                    end_of[tail] = node
        n_nodes = len(children) + 1
        pairs = np.fromiter((head * n_nodes + end_of[tail] for head, tails in self.tails.items()
                             for tail in tails if tail), dtype=np.int64)
        edges = np.fromiter((node * TRIE_STRIDE + t for node, t in children), dtype=np.int64,
                            count=len(children))
        order = np.argsort(edges)
        child = np.fromiter(children.values(), dtype=np.int64, count=len(children))
        for name, value in (("is_head", is_head), ("is_single", is_single),
                            ("edge_keys", edges[order]), ("edge_child", child[order]),
                            ("pair_keys", np.sort(pairs)), ("n_nodes", n_nodes),
                            ("depth", max(map(len, end_of)))):
            object.__setattr__(self, name, value)

    def child_nodes(self, nodes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """The trie's node after each of `nodes` reading the token beside it; -1 where the
        node has no such child. (Only called with a tail somewhere: there are edges.)"""
        keys = nodes * TRIE_STRIDE + tokens
        at = np.minimum(np.searchsorted(self.edge_keys, keys), self.edge_keys.size - 1)
        return np.where(self.edge_keys[at] == keys, self.edge_child[at], -1)

    def tail_of_head(self, heads: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """bool: does a tail of each head end at the node beside it?"""
        keys = heads * self.n_nodes + nodes
        at = np.minimum(np.searchsorted(self.pair_keys, keys), max(self.pair_keys.size - 1, 0))
        return self.pair_keys[at] == keys if self.pair_keys.size else np.zeros(keys.size, bool)

    @classmethod
    def from_token_sequences(cls, seqs) -> "DryBreakers":
        """Breakers given as token sequences: the first token is the head, the rest its
        tail (llama.cpp's llama_sampler_init_dry_testing)."""
        seqs = [tuple(int(t) for t in seq) for seq in seqs]
        return cls(_tails_by_head((seq[0], seq[1:]) for seq in seqs if seq))

    def heads_at(self, ids: np.ndarray) -> np.ndarray:
        return _flags(self.is_head, ids)

    def singles_at(self, ids: np.ndarray) -> np.ndarray:
        return _flags(self.is_single, ids)


def _tails_by_head(pairs) -> dict:
    """DryBreakers' `tails` from (head, tail) pairs: each head's tails in the order first
    seen, each once (two breakers give one pair twice where a token's text holds both)."""
    tails: dict = {}
    for head, tail in pairs:
        tails.setdefault(head, {})[tail] = None   # a dict as a set that keeps the order
    return {head: tuple(found) for head, found in tails.items()}


def _flags(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """table[ids] (bool), False for ids past its end."""
    inside = ids < table.size
    out = np.zeros(ids.size, dtype=bool)
    out[inside] = table[ids[inside]]
    return out


# Per tokenizer: every token's text (as llama.cpp's detokenize of it alone gives it), and
# the (head, tail) pairs of each breaker string seen, so that a request pays for neither
# (the first request with DRY on pays 0.1-0.2 s for Qwen's texts, most of it the
# tokenizer's shared table, which the JSON constraint then reuses; then 15-30 ms a new
# breaker).
_TOKEN_TEXTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BREAKER_PAIRS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BREAKER_SETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # ... and lists of them


@dataclass(frozen=True, eq=False)
class _VocabTexts:
    """Every token's text, laid end to end, so that the tokens holding (or ending with)
    a breaker are found in the whole vocabulary by a few NumPy comparisons. The texts'
    bytes and bounds are read from `texts` alone; the two indexes beside it are what the
    search adds to them."""
    texts: TokenBytes     # each token's text, from the tokenizer's shared table (_dry_texts)
    owner: np.ndarray     # the token each byte of texts.data belongs to
    by_last: list         # [256]: the tokens whose text ends with that byte, in id order

    def holding(self, raw: bytes) -> np.ndarray:
        """The tokens whose text holds these bytes (not across two texts), in id order."""
        n, data = len(raw), self.texts.data
        at = np.flatnonzero(data[:max(data.size - n + 1, 0)] == raw[0])
        for i in range(1, n):
            at = at[data[at + i] == raw[i]]
        return np.unique(self.owner[at[self.owner[at] == self.owner[at + n - 1]]])

    def ending_with(self, raw: bytes) -> np.ndarray:
        """The tokens whose text ends with these bytes, in id order."""
        n, data, starts = len(raw), self.texts.data, self.texts.starts
        ids = self.by_last[raw[-1]]
        ids = ids[starts[ids + 1] - starts[ids] >= n]
        for i in range(n - 1):
            ids = ids[data[starts[ids + 1] - n + i] == raw[i]]
        return ids


def _vocab_texts(tok) -> _VocabTexts:
    found = _TOKEN_TEXTS.get(tok)
    if found is None:
        texts = _dry_texts(tok)
        data, ends, lengths = texts.data, texts.starts[1:], texts.lengths
        owner = np.repeat(np.arange(len(texts), dtype=np.int32), lengths)
        last = np.where(lengths > 0, data[np.maximum(ends - 1, 0)] if data.size else 0, -1)
        by_last = [np.flatnonzero(last == b) for b in range(256)]
        found = _TOKEN_TEXTS[tok] = _VocabTexts(texts, owner, by_last)
    return found


def _dry_texts(tok) -> TokenBytes:
    """Every token's text as llama.cpp's detokenize of that token alone gives it, special
    tokens written out: the tokenizer's shared table (runtime/token_bytes.py), less the
    leading space add_space_prefix drops and the spaces clean_spaces tidies away."""
    table = table_of(tok, tok.n_vocab)
    data, lengths = table.data, table.lengths
    if tok.add_space_prefix:
        data, lengths = _without_first_space(data, lengths)
    if tok.clean_spaces:
        data, lengths = _spaces_cleaned(data, lengths)
    starts = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    return TokenBytes(data, starts, table.special, table.hidden)


def _without_first_space(data: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Texts (end to end, and their lengths) with one leading space each taken off:
    detokenize's rule for a first token, which a token alone is."""
    if not data.size:
        return data, lengths
    starts = np.cumsum(lengths) - lengths
    spaced = (lengths > 0) & (data[np.minimum(starts, data.size - 1)] == 0x20)
    keep = np.ones(data.size, dtype=bool)
    keep[starts[spaced]] = False
    return data[keep], lengths - spaced


def _spaces_cleaned(data: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Texts with runtime.tokenizer.clean_spaces applied to each. Its every pattern starts
    with a space before one of ?!.,' so only the few tokens holding such a pair are read
    one by one (109 of Qwen's; all of them took 0.3-0.5 s)."""
    from runtime.tokenizer import clean_spaces
    ends = np.cumsum(lengths)
    at = np.flatnonzero((data[:-1] == 0x20) & np.isin(data[1:], np.frombuffer(b"?!.,'", np.uint8)))
    owner = np.searchsorted(ends, at, side="right")     # the token of each pair's space
    candidates = np.unique(owner[at + 1 < ends[owner]]).tolist()   # pair inside the token
    changed, texts = [], []
    for t in candidates:
        raw = data[ends[t] - lengths[t]:ends[t]].tobytes()
        text = clean_spaces(raw)
        if text != raw:
            changed.append(t)
            texts.append(text)
    if not changed:
        return data, lengths
    ids = np.array(changed, dtype=np.int64)
    is_changed = np.zeros(lengths.size, dtype=bool)
    is_changed[ids] = True
    new_lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    data, starts = pack(lengths.size, [
        (np.flatnonzero(~is_changed), data[~np.repeat(is_changed, lengths)], lengths[~is_changed]),
        (ids, b"".join(texts), new_lengths)])
    return data, np.diff(starts)


def _breaker_pairs(tok, breaker: bytes) -> list:
    """The (head, tail) pairs of one breaker (bytes, at most DRY_MAX_BREAKER_BYTES), as
    llama.cpp's get_overlapping_token_sequences finds them: every token whose text holds
    the breaker is a head with an empty tail; a token whose text ends with the breaker's
    first k bytes (k shorter than it) is a head whose tail is the tokenization of the
    breaker's rest, cut to DRY_MAX_TAIL_TOK tokens. The texts are searched with NumPy,
    the whole vocabulary at once: a loop over the tokens holding the breaker's first
    byte took 0.3 s a breaker for Qwen's "e" (64 of them, 20 s a request)."""
    cache = _BREAKER_PAIRS.setdefault(tok, {})
    if breaker in cache:
        return cache[breaker][0]
    vocab = _vocab_texts(tok)
    holds = vocab.holding(breaker)
    opens = {}                           # token -> the k of each breaker start it ends with
    for k in range(len(breaker) - 1, 0, -1):    # longest first, as the text is read
        for t in np.setdiff1d(vocab.ending_with(breaker[:k]), holds).tolist():
            opens.setdefault(t, []).append(k)
    tail_of = {}
    pairs = [(t, ()) for t in holds.tolist()]
    for t in sorted(opens):
        seen = set()                     # t's tails so far: two cuts may give the same
        for k in opens[t]:
            if k not in tail_of:
                # a cut inside a character: its bytes become U+FFFD, as llama.cpp's
                # tokenizer reads invalid UTF-8
                rest = breaker[k:].decode("utf-8", errors="replace")
                ids = tok.tokenize(rest, add_special=False, parse_special=False)
                tail_of[k] = tuple(ids[:DRY_MAX_TAIL_TOK])
            if tail_of[k] not in seen:
                seen.add(tail_of[k])
                pairs.append((t, tail_of[k]))
    pairs.sort(key=lambda pair: pair[0])   # in id order (stable: a token's tails as found)
    _keep(cache, breaker, pairs, len(pairs))
    return pairs


def _keep(cache: dict, key, value, n_pairs: int) -> None:
    """cache[key] = (value, n_pairs), emptying the cache first when it would then hold
    more than DRY_CACHE_MAX entries or DRY_CACHE_PAIRS pairs: requests with ever new
    breakers keep its memory bounded."""
    if len(cache) >= DRY_CACHE_MAX or \
            sum(n for _, n in cache.values()) + n_pairs > DRY_CACHE_PAIRS:
        cache.clear()
    cache[key] = (value, n_pairs)


def dry_breakers_from_text(tok, breakers) -> DryBreakers:
    """DRY's sequence breakers (strings) as tokens of tokenizer `tok`. Empty ones are
    skipped, as llama.cpp skips them; each is cut to DRY_MAX_BREAKER_BYTES bytes."""
    raws = tuple(b.encode("utf-8")[:DRY_MAX_BREAKER_BYTES] for b in breakers)
    cache = _BREAKER_SETS.setdefault(tok, {})
    if raws not in cache:
        made = DryBreakers(_tails_by_head(pair for raw in raws if raw
                                          for pair in _breaker_pairs(tok, raw)))
        _keep(cache, raws, made, made.pair_keys.size + len(made.tails))
    return cache[raws][0]


def dry_repeat_limit(window: np.ndarray, breakers: DryBreakers | None) -> int:
    """How many of the window's last tokens a repeat may span: those after the last
    breaker, found as llama.cpp finds it: the latest head token whose whole tail follows it
    (the longest such tail, when it has several). The window's length when none is there.
    Every head of the window goes down the breakers' trie together, one token a round."""
    n = window.size
    if breakers is None or not breakers.tails:
        return n
    pos = np.flatnonzero(breakers.heads_at(window))
    if not pos.size:
        return n
    heads = window[pos]
    best = np.where(breakers.singles_at(heads), 0, -1)   # the longest tail after each head
    node = np.zeros(pos.size, dtype=np.int64)           # each head's place in the trie
    live = np.arange(pos.size)
    for d in range(1, breakers.depth + 1):
        live = live[pos[live] + d < n]                  # a tail must lie within the window
        if not live.size:
            break
        nxt = breakers.child_nodes(node[live], window[pos[live] + d])
        live, nxt = live[nxt >= 0], nxt[nxt >= 0]       # heads whose tails go on
        node[live] = nxt
        best[live[breakers.tail_of_head(heads[live], nxt)]] = d
    fits = np.flatnonzero(best >= 0)
    if not fits.size:
        return n
    k = fits[-1]                                        # the latest head with a whole tail
    return int(n - 1 - pos[k] - best[k])


def dry_match_lengths(window: np.ndarray, limit: int) -> np.ndarray:
    """For each position j < n - 1 of the window [n]: how many tokens ending at j are the
    same as the window's last ones (the longest common suffix of window[:j + 1] and the
    window), at most `limit`. -> int [n - 1].

    Each round compares a block of `step` more tokens for every position still matching,
    the block doubling each round: a handful of NumPy calls for ordinary text, even with
    repeats thousands of tokens long. Text that repeats with a short period (one token
    over and over) keeps most positions matching for long, and that costs n^2 / period:
    past DRY_GALLOP_WORK comparisons per token it is left to the Z-algorithm, linear
    but a Python loop (1.3 ms for 2,000 tokens, where the rounds take 0.1 ms)."""
    n = window.size
    out = np.zeros(max(n - 1, 0), dtype=np.int64)
    if n < 2 or limit <= 0:
        return out
    active = np.flatnonzero(window[:-1] == window[-1])
    out[active] = 1
    done, step, work = 1, 1, 0
    while active.size and done < limit:
        step = min(step, limit - done)
        work += active.size * step
        if work > DRY_GALLOP_WORK * n:
            return np.minimum(_suffix_match_lengths(window), limit)
        back = np.arange(done, done + step)          # how far before each end, this block
        here = active[:, None] - back                # may run off the window's start
        same = (here >= 0) & (window[np.maximum(here, 0)] == window[n - 1 - back])
        run = np.where(same.all(axis=1), step, np.argmin(same, axis=1))
        out[active] += run
        active = active[run == step]
        done += step
        step *= 2
    return np.minimum(out, limit)


def _suffix_match_lengths(window: np.ndarray) -> np.ndarray:
    """dry_match_lengths without the limit, by the Z-algorithm over the reversed window:
    z[k], how far the window read backwards from k tokens before its end agrees with it
    read backwards from its end, reuses the rightmost match found so far (the box
    [lo, hi)), so that every token is compared O(1) times."""
    r = window[::-1].tolist()
    n = len(r)
    z = [0] * n
    lo = hi = 0
    for k in range(1, n):
        zk = min(hi - k, z[k - lo]) if k < hi else 0
        while k + zk < n and r[zk] == r[k + zk]:
            zk += 1
        z[k] = zk
        if k + zk > hi:
            lo, hi = k, k + zk
    return np.array(z[:0:-1], dtype=np.int64)       # position j = n - 1 - k


def dry_penalties(history, p: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """DRY, as llama.cpp's: (token ids, the amount each one's logit goes down).

    The window is the last dry_penalty_last_n tokens of the history (the whole history
    for -1). For each earlier position where the window's last m tokens also end, with m
    at least dry_allowed_length and counted only after the last breaker, the token that
    followed there is penalized dry_multiplier * dry_base ** (m - dry_allowed_length),
    with its longest m, the exponent capped as llama.cpp caps it; tokens that are breakers
    by themselves never are."""
    none = np.zeros(0, dtype=np.int64), np.zeros(0)
    if not p.dry_on:
        return none
    allowed = p.dry_allowed_length
    n = len(history) if p.dry_penalty_last_n < 0 else min(len(history), p.dry_penalty_last_n)
    if n <= allowed:
        return none
    window = np.asarray(history[len(history) - n:], dtype=np.int64)
    limit = dry_repeat_limit(window, p.dry_breakers)
    if limit < allowed:
        return none
    lengths = dry_match_lengths(window, limit)
    hit = lengths >= allowed
    ids, lengths = window[1:][hit], lengths[hit]
    if p.dry_breakers is not None:
        keep = ~p.dry_breakers.singles_at(ids)
        ids, lengths = ids[keep], lengths[keep]
    if not ids.size:
        return none
    order = np.lexsort((lengths, ids))          # by token, its longest repeat last
    ids, lengths = ids[order], lengths[order]
    last = np.append(ids[1:] != ids[:-1], True)
    ids, lengths = ids[last], lengths[last]
    exponent = (lengths - allowed).astype(np.float64)
    # llama.cpp's test: a base at 1 (log 0) never overflows, and gets no cap
    if p.dry_base > 1.000001:
        cap = int(DRY_FLOAT_MAX_LOG / math.log(p.dry_base))
        if cap > 0:
            exponent = np.minimum(exponent, cap)
    with np.errstate(over="ignore"):
        return ids, p.dry_multiplier * np.power(p.dry_base, exponent)


def apply_dry(logits: np.ndarray, history, p: SamplingParams) -> np.ndarray:
    """The logits [V] with DRY's penalties (dry_penalties) taken off. A penalized logit
    stays a finite float32 (llama.cpp's may reach -inf, or +inf for a negative
    multiplier): a token is never banned outright, and every logit left can be drawn."""
    ids, penalty = dry_penalties(history, p)
    inside = ids < logits.size
    ids, penalty = ids[inside], penalty[inside]
    if not ids.size:
        return logits
    out = logits.copy()
    old = out[ids].astype(np.float64)
    with np.errstate(invalid="ignore"):
        new = np.clip(old - penalty, -F32_MAX, F32_MAX)
    out[ids] = np.where(np.isfinite(old), new, old)
    return out
