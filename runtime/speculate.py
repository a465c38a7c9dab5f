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

A request may also bring a prediction (OpenAI's Predicted Outputs: the text the reply is
expected to largely repeat). PredictionDrafts then drafts from it first, in runs that grow
while the reply follows it (up to PREDICTION_DRAFT_MAX_TOK); draft() is the fallback.
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


def match_ends(seq: np.ndarray, suffix: np.ndarray) -> np.ndarray:
    """Where the tokens after each occurrence of `suffix` in `seq` begin, in order, for
    the occurrences that leave a token after them (so never the suffix at seq's end).
    Narrowed token by token, so a token found thousands of times costs no Python loop."""
    n = suffix.size
    starts = np.flatnonzero(seq[: max(seq.size - n, 0)] == suffix[0])
    for i in range(1, n):
        starts = starts[seq[starts + i] == suffix[i]]
    return starts + n


def draft(history: list[int], k: int = DRAFT_MAX_TOK) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of history's suffix."""
    n_hist = len(history)
    if k <= 0 or n_hist < NGRAM_MIN + 1:
        return []
    h = np.asarray(history, dtype=np.int64)
    for n in range(min(NGRAM_MAX, n_hist - 1), NGRAM_MIN - 1, -1):
        found = match_ends(h, h[-n:])
        if found.size:  # the latest occurrence: the most relevant context
            return h[found[-1]: found[-1] + k].tolist()
    return []


# A draft from a prediction the reply has followed so far is likelier to be kept than
# one from the prompt: after a wholly kept one the next may be twice as long, up to this.
PREDICTION_DRAFT_MAX_TOK = 32


class PredictionDrafts:
    """Drafts from a request's predicted output (OpenAI's Predicted Outputs): the text the
    reply is expected to largely repeat, such as the file being edited, tokenized once.

    `pos_tok` is where in the prediction the reply is expected to go on: when the model's
    own next token is the prediction's token there (and the token before matched too), the
    draft is simply what follows, so a reply that follows the prediction is drafted in
    long runs. Elsewhere (the reply left the prediction: an inserted line, a changed
    name) the last few tokens are looked for in the prediction, the first occurrence at
    or after `pos_tok` preferred (the reply goes through the prediction in order), and
    what followed there is the draft. Every draft is verified as any other, so the reply
    is the greedy one whatever the prediction says.
    """

    def __init__(self, tokens: list[int]):
        self.tokens = np.asarray(tokens, dtype=np.int64)
        self.pos_tok = 0
        self.k_tok = DRAFT_MAX_TOK   # the next draft's length at most (see verified)
        self.drafted_tok = 0   # tokens drafted from the prediction, over the whole reply
        self.kept_tok = 0      # how many of the last round's tokens were kept drafts from it
        self._start_tok = 0    # where the last draft began in the prediction

    def draft(self, h: np.ndarray, k: int) -> list[int]:
        """Up to k tokens of the prediction to follow h (the tokens so far)."""
        pred, pos = self.tokens, self.pos_tok
        k = min(k, self.k_tok)
        if k <= 0 or pred.size == 0:
            return []
        if (pos < pred.size and h[-1] == pred[pos]
                and (pos == 0 or (h.size >= 2 and h[-2] == pred[pos - 1]))):
            start = pos + 1  # still on the prediction: go on where the reply is
        else:
            start = self._find(h)
        if start is None or start >= pred.size:
            return []
        self._start_tok = start
        return pred[start:start + k].tolist()

    def _find(self, h: np.ndarray) -> int | None:
        """Where in the prediction the tokens after h's suffix begin, or None."""
        for n in range(min(NGRAM_MAX, h.size), NGRAM_MIN - 1, -1):
            found = match_ends(self.tokens, h[-n:])
            if found.size:
                ahead = found[found >= self.pos_tok]
                return int(ahead[0] if ahead.size else found[-1])
        return None

    def verified(self, n_drafted: int, n_kept: int) -> None:
        """The last draft came from here: n_kept of its n_drafted tokens were kept."""
        self.drafted_tok += n_drafted
        self.kept_tok = n_kept
        self.pos_tok = self._start_tok + n_kept  # the model's own next token goes here
        self.k_tok = (min(2 * self.k_tok, PREDICTION_DRAFT_MAX_TOK) if n_kept == n_drafted
                      else DRAFT_MAX_TOK)


def greedy_tokens(session, logits: np.ndarray, sampler, history: list[int], room_tok: int,
                  k: int = DRAFT_MAX_TOK, prediction: PredictionDrafts | None = None
                  ) -> tuple[list[int], np.ndarray | None]:
    """The next greedy tokens after `logits`, evaluated: (tokens, logits after the last).

    `history` is every token so far (prompt and output), which the session already holds.
    `room_tok` is how many tokens the session may still evaluate; with none, the one
    token is returned unevaluated and the logits are None. One batched forward pass
    evaluates the model's own next token together with a draft of the tokens after it;
    the draft is kept up to its first token the model would not have chosen itself. With a
    `prediction`, the draft comes from it when it has one (its `kept_tok` then says how
    many of the returned tokens after the first were drafted from it), else from history.
    """
    first = sampler.sample(logits, history)
    if prediction is not None:
        prediction.kept_tok = 0
    if room_tok < 1:
        return [first], None
    drafted = []  # the tokens guessed to follow `first`; room_tok - 1 at most: first takes one
    if prediction is not None:
        drafted = prediction.draft(np.asarray(history + [first], dtype=np.int64),
                                   min(PREDICTION_DRAFT_MAX_TOK, room_tok - 1))
    from_prediction = bool(drafted)
    if not drafted:
        drafted = draft(history + [first], min(k, room_tok - 1))
    n_before = len(session.tokens)
    # rows[i]: the logits after first + drafted[:i], [1 + len(drafted), n_vocab]
    rows = session.eval([first] + drafted, all_logits=True)
    out = [first]
    for i, tok in enumerate(drafted):
        if sampler.sample(rows[i], history + out) != tok:
            break  # rows[i] already holds the model's own choice for the next round
        out.append(tok)
    if from_prediction:
        prediction.verified(len(drafted), len(out) - 1)
    session.rewind(n_before + len(out))  # drop evaluated draft tokens past the accepted ones
    return out, rows[len(out) - 1]
