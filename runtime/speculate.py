"""Prompt-lookup speculation: more greedy tokens per read of the weights.

Decoding one token reads every weight once; a batch of 8 tokens reads them once too and
costs 2-2.4 times as much. Chat answers and code edits repeat long runs of the prompt
(names, lines of code), so we draft the next k tokens by finding the latest earlier
occurrence of the last few tokens and copying what followed. One batched forward pass
checks the whole draft: we keep the drafted tokens up to the first one the model would
not have chosen itself; the logits at that point give the next round's first token, so
every round costs exactly one forward pass.

The output is the greedy output: every kept token is the argmax the model gives after
exactly the tokens before it. (Batched and single-token matmuls round differently, so at
a near-tie the two can differ; see tests/fixtures/TOLERANCES.md.) Only greedy sampling is
sped up; with temperature > 0 tokens are drawn one at a time as usual.
"""
from __future__ import annotations

import numpy as np

NGRAM_MAX = 4  # longest suffix we try to find earlier in the text
# Two repeated tokens are too weak a hint to be worth a batch (which costs 2-2.4 single
# steps whatever its length): on Qwen's chat prompt 14 of 16 drafts from a 2-token match
# failed at their first token. With 3, chat decoded at 10.7-12.3 tok/s instead of 8.9-9.5
# and code edits at 14.0-15.6 instead of 13.4-14.9 (docs/performance.md).
NGRAM_MIN = 3
DRAFT_MAX_TOK = 8  # a batch of 9 costs about 2.4 single steps here; longer drafts measured no better


def draft(history: list[int], k: int = DRAFT_MAX_TOK) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of history's suffix."""
    n_hist = len(history)
    if k <= 0 or n_hist < NGRAM_MIN + 1:
        return []
    h = np.asarray(history, dtype=np.int64)
    for n in range(min(NGRAM_MAX, n_hist - 1), NGRAM_MIN - 1, -1):
        suffix = h[-n:]
        # Candidate starts: where the suffix's first token occurs, excluding the suffix itself.
        starts = np.flatnonzero(h[: n_hist - n] == suffix[0])
        for s in starts[::-1]:  # latest occurrence first: the most relevant context
            if s + n < n_hist and np.array_equal(h[s:s + n], suffix):
                follow = h[s + n: s + n + k]
                if follow.size:
                    return follow.tolist()
    return []


def greedy_tokens(session, logits: np.ndarray, sampler, history: list[int],
                  room_tok: int, k: int = DRAFT_MAX_TOK) -> tuple[list[int], np.ndarray | None]:
    """The next greedy tokens after `logits`, evaluated: (tokens, logits after the last).

    `history` is every token so far (prompt and output), which the session already holds.
    `room_tok` is how many tokens the session may still evaluate; with none, the one
    token is returned unevaluated and the logits are None. One batched forward pass evaluates the
    model's own next token together with a draft of the tokens after it; the draft is
    kept up to its first token the model would not have chosen itself.
    """
    first = sampler.sample(logits, history)
    if room_tok < 1:
        return [first], None
    d = draft(history + [first], min(k, room_tok - 1))
    n_before = len(session.tokens)
    rows = session.eval([first] + d, all_logits=True)  # [1 + len(d), n_vocab]
    out = [first]
    for i, tok in enumerate(d):
        if sampler.sample(rows[i], history + out) != tok:
            break  # rows[i] already holds the model's own choice for the next round
        out.append(tok)
    session.rewind(n_before + len(out))  # drop evaluated draft tokens past the accepted ones
    return out, rows[len(out) - 1]
