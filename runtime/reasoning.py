"""A thinking model's reasoning, split from its answer, as llama-server splits it.

Qwen3, QwQ and the DeepSeek-R1 distills write their reasoning between `<think>` and
`</think>`, then the answer. Some templates open `<think>` in the prompt itself, so the
reply starts inside it and only `</think>` comes ("forced open"). llama-server's
`reasoning_format` (default "auto", read as "deepseek") returns the reasoning as
`reasoning_content` and the rest as `content`; "none" leaves the reply as written.

What llama.cpp's common_chat_msg_parser::try_parse_reasoning does, and so this:

- A reply that starts (after whitespace) with `<think>` is reasoning until `</think>`;
  the whitespace before the tag stays content. Forced open, the reply is reasoning from
  its first non-whitespace character. Anything else is content, as written.
- Each block of reasoning is stripped of whitespace at both ends; an empty one adds
  nothing. The whitespace after `</think>` is dropped, and a `<think>` right after it
  opens another block (the blocks' texts are joined as they are).
- A reply that never closes `</think>` (cut by max_tokens mid-thought) is reasoning to
  its end, with no content. A piece of a tag at the very end (`</thi`) is dropped.
- Streamed, a piece of a tag is held until the next text shows what it is, and so is
  whitespace at the end of the reasoning so far (it is dropped if the block ends there),
  so the streamed pieces join into exactly the whole reply's two parts.

One difference: a reply that is only the beginning of `<think>` (`<thi`, whitespace
around it) is that text as content; llama.cpp drops it.

Beside the split: ContentTokens and split_reply say which of a reply's tokens are its
content's (chat logprobs list those only, as OpenAI's `logprobs.content` is defined);
ReasoningBudget and budget_for are llama-server's reasoning budget (--reasoning-budget,
a request's reasoning_budget_tokens), which the engine asks for the tokens that close a
thought; opens_thinking, continues_reasoning and with_prefill_reasoning read and write
the prompt's and a prefill's side of a thought.
"""

import codecs

OPEN, CLOSE = "<think>", "</think>"
FORMATS = ("none", "deepseek", "auto")   # what a request's reasoning_format may say

_START, _REASONING, _AFTER, _CONTENT = range(4)


def _partial_tail(text: str, tag: str) -> int:
    """The length of the longest end of `text` that is a proper beginning of `tag`."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReasoningSplit:
    """push() each piece of a reply as it comes, and finish() at its end; each gives
    (reasoning, content): the new text of each part. Every piece is read once, plus at
    most a tag's length held back, so a long reply costs what its length does.

    forced_open: the prompt opened `<think>` (see opens_thinking). strip_start=False: the
    reasoning goes on from a prefill's, so its first whitespace is kept."""

    def __init__(self, forced_open: bool = False, strip_start: bool = True):
        self.forced_open = forced_open
        self.state = _START
        self.held = ""          # text not yet given out: whitespace, a piece of a tag
        self.lead = strip_start  # at the start of a block of reasoning (strip it)
        self.ws = ""            # whitespace at the end of the reasoning so far

    def push(self, piece: str) -> tuple[str, str]:
        self.held += piece
        reasoning, content = [], []
        while self.held:
            before = (self.state, self.held)
            self._step(reasoning, content)
            if (self.state, self.held) == before:
                break  # waiting for more text
        return "".join(reasoning), "".join(content)

    def finish(self) -> tuple[str, str]:
        held, self.held = self.held, ""
        if self.state == _START:
            if self.forced_open:
                return self._reasoning(held), ""
            return "", held
        if self.state == _AFTER and held.strip():
            return "", held.lstrip()  # the beginning of a `<think>` and nothing after it
        return "", ""  # a piece of `</think>`, or whitespace: dropped

    def _step(self, reasoning: list, content: list) -> None:
        text = self.held
        if self.state == _CONTENT:
            content.append(text)
            self.held = ""
        elif self.state in (_START, _AFTER):
            rest = text.lstrip()
            if not rest or (OPEN.startswith(rest) and rest != OPEN):
                return  # whitespace or a piece of `<think>`: wait
            if rest.startswith(OPEN):
                if self.state == _START and len(rest) < len(text):
                    content.append(text[:len(text) - len(rest)])  # llama.cpp keeps it
                self.state, self.held, self.lead = _REASONING, rest[len(OPEN):], True
            elif self.state == _START and self.forced_open:
                self.state, self.held = _REASONING, rest if self.lead else text
            else:
                self.state, self.held = _CONTENT, rest if self.state == _AFTER else text
        else:  # _REASONING
            end = text.find(CLOSE)
            if end >= 0:
                reasoning.append(self._reasoning(text[:end]))
                self.ws = ""  # the block ends: its last whitespace is stripped
                self.state, self.held = _AFTER, text[end + len(CLOSE):]
                return
            keep = _partial_tail(text, CLOSE)
            reasoning.append(self._reasoning(text[:len(text) - keep]))
            self.held = text[len(text) - keep:]

    def _reasoning(self, text: str) -> str:
        """Gives out reasoning text: none of a block's first whitespace, and its last
        whitespace only once more text follows it."""
        if self.lead:
            text = text.lstrip()
            if not text:
                return ""
            self.lead = False
        body = text.rstrip()
        if not body:
            self.ws += text
            return ""
        out = self.ws + body
        self.ws = text[len(body):]
        return out


def split(text: str, forced_open: bool = False, strip_start: bool = True) -> tuple[str, str]:
    """(reasoning, content) of a whole reply."""
    s = ReasoningSplit(forced_open, strip_start)
    r1, c1 = s.push(text)
    r2, c2 = s.finish()
    return r1 + r2, c1 + c2


class ContentTokens:
    """A reply's ReasoningSplit that also says which of its tokens are the content's,
    so that chat logprobs list the tokens of message.content (and of the content deltas)
    only, as OpenAI's `logprobs.content` is defined; the reasoning's have no place in it
    (llama-server lists every token there, reasoning and `<think>` tags included, in a
    list that then matches no text). push(text, token event) and finish() give
    (reasoning, content, the content's token events decided by now).

    A token is decided by the split's state after its text: inside reasoning (or the one
    that closes it), reasoning's; in content, content's. Tokens of the text the split
    holds before a reply's start is known (whitespace, a piece of `<think>`) or after a
    `</think>` wait: at the reply's start they are content when content follows (and
    whitespace before a `<think>` the model writes, which stays content, even in a
    thought the prompt opened); after `</think>` only those with more than whitespace,
    which is dropped there (a token whose text comes out with a later one's, as a
    character's first bytes do, goes with that one: _text_groups)."""

    def __init__(self, split: ReasoningSplit):
        self.split = split
        self.waiting = []       # (token event, its text): held with the split's text
        self.waited_in = None   # the state they wait in: the reply's start or after a thought

    def push(self, text: str, ev=None) -> tuple[str, str, list]:
        before = self.split.state
        thought, out = self.split.push(text)
        now = self.split.state
        mine = [] if ev is None else [ev]
        if now == _CONTENT:
            return thought, out, self._settle(True) + mine
        if _REASONING in (before, now) or before != now or thought:
            # this token is the reasoning's; `out` is whitespace kept before a `<think>`
            return thought, out, self._settle(False, bool(out))
        self.waiting += [(e, text) for e in mine]  # not known yet
        self.waited_in = now
        return thought, out, []

    def finish(self) -> tuple[str, str, list]:
        thought, out = self.split.finish()
        return thought, out, self._settle(bool(out))

    def _settle(self, to_content: bool, ws_kept: bool = False) -> list:
        """The waiting tokens that are content, now that the split has left the state
        they waited in (for content if to_content, else for reasoning or the end; ws_kept:
        the split gave the whitespace before a `<think>` as content)."""
        waiting, self.waiting = self.waiting, []
        if self.waited_in == _AFTER:  # whitespace after `</think>` is dropped
            return [e for group, t in _text_groups(waiting) if t is None or t.strip()
                    for e in group] if to_content else []
        if to_content:
            return [e for e, _ in waiting]
        if not ws_kept:
            return []  # a forced-open thought's leading whitespace, stripped
        # whitespace before a `<think>` the model wrote, which stays content (forced
        # open or not: the split keeps it either way)
        return [e for group, t in _text_groups(waiting) if t is not None and not t.strip()
                for e in group]


def _text_groups(waiting: list):
    """(token events, the text they came out with) of ContentTokens' waiting (event,
    text) pairs. A token whose text is empty (a piece of a character, or text the engine
    held for a stop string) came out with a later token's: it goes with the first later
    one that has text, and is judged by that text. The last group's text is None when
    its tokens' text came out with the token being pushed."""
    group = []
    for e, t in waiting:
        group.append(e)
        if t:
            yield group, t
            group = []
    if group:
        yield group, None


def split_reply(split: ReasoningSplit, text: str, toks: list) -> tuple[str, str, list]:
    """(reasoning, content, the content's token events) of a whole reply: its text and
    its token events (the server's collect). The engine's text after the last token's
    (the tail it held for a stop string) is pushed last, as it came."""
    parts, n_chars = [], 0
    cut = ContentTokens(split)
    for ev in toks:
        n_chars += len(ev.text)
        parts.append(cut.push(ev.text, ev))
    parts.append(cut.push(text[n_chars:]))
    parts.append(cut.finish())
    return ("".join(p[0] for p in parts), "".join(p[1] for p in parts),
            [e for p in parts for e in p[2]])


class ReasoningBudget:
    """llama-server's reasoning budget (--reasoning-budget N, a request's
    reasoning_budget_tokens): once N tokens of a thought have been generated, the thought
    is closed: the tokens of `forced_ids` (the budget message, then `</think>`) are the
    next ones, one a step, whatever the model would have chosen. The engine asks
    forced() before each token and tells accept() each token of the reply, forced or
    not, so a forced token is generated, counted and streamed as any other.

    What is a thought is what ReasoningSplit says is reasoning, so the budget counts the
    tokens the reply's reasoning_content is made of: a `<think>` at the reply's start (or
    right after a thought, which then gets a budget of its own, as llama.cpp re-arms on a
    new start tag) or a prompt that opened one (forced_open). The token that opens a
    thought is not counted, nor the one that ends it; at 0 tokens left the end is forced
    as soon as the text so far is whole UTF-8 (llama.cpp's WAITING_UTF8), so a character
    is never cut in two. `piece(tok)` gives a token's bytes."""

    def __init__(self, budget_tok: int, forced_ids: list, piece, forced_open: bool = False,
                 strip_start: bool = True):
        self.budget_tok = budget_tok
        self.left_tok = budget_tok
        self.forced_ids = list(forced_ids)
        self.piece = piece
        self.split = ReasoningSplit(forced_open, strip_start)
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.force_at = None   # while forcing: the index in forced_ids of the next token
        self._maybe_force()    # a budget of 0 in a prompt-opened thought: from the start

    def forced(self) -> int | None:
        """The token that must come next, or None: the model chooses."""
        return None if self.force_at is None else self.forced_ids[self.force_at]

    def in_thought(self) -> bool:
        s = self.split
        return s.state == _REASONING or (s.state == _START and s.forced_open)

    def accept(self, tok: int) -> None:
        was = self.in_thought()
        self.split.push(self.utf8.decode(self.piece(tok)))
        if self.force_at is not None:
            self.force_at += 1
            if self.force_at == len(self.forced_ids):
                self.force_at = None  # the split has seen `</think>`: the thought is over
            return
        if self.in_thought():
            self.left_tok = self.left_tok - 1 if was else self.budget_tok
            self._maybe_force()

    def _maybe_force(self) -> None:
        if (self.in_thought() and self.left_tok <= 0 and self.forced_ids
                and not self.utf8.getstate()[0]):
            self.force_at = 0


def budget_for(model, budget_tok: int, message: str = "", forced_open: bool = False,
               strip_start: bool = True) -> ReasoningBudget | None:
    """The ReasoningBudget of one reply, or None for -1 (no limit). What it forces is the
    message and `</think>` as the model's tokenizer reads them (special tokens included,
    as llama.cpp tokenizes them), so the reply holds them as if the model wrote them."""
    if budget_tok < 0:
        return None
    forced = model.tokenize(message + CLOSE, add_special=False, parse_special=True)
    return ReasoningBudget(budget_tok, forced,
                           lambda t: model.tokenizer.token_to_piece(t, special=True),
                           forced_open, strip_start)


def opens_thinking(prompt: str, prefill: str | None = None) -> bool:
    """Whether the reply starts inside a thought: the prompt ends with `<think>` (and
    whitespace), as Qwen3-Thinking's and DeepSeek-R1's templates end it (llama-server's
    thinking_forced_open), or the prefill it continues opened one and did not close it."""
    if prefill:
        return prefill.rfind(OPEN) > prefill.rfind(CLOSE)
    return prompt.rstrip().endswith(OPEN)


def continues_reasoning(prefill: str | None) -> bool:
    """Whether the reply goes on from reasoning the prefill had begun: then its first
    whitespace is part of that reasoning, not the start of a block."""
    return bool(prefill) and opens_thinking("", prefill) and bool(
        prefill[prefill.rfind(OPEN) + len(OPEN):].strip())


def with_prefill_reasoning(messages: list) -> list:
    """A prefill (a last assistant message, which the reply continues) that carries
    `reasoning_content`, as the page's Continue sends a reply that had reasoning: its
    text becomes `<think>\\nREASONING\\n</think>\\n\\nCONTENT`, as the model wrote it, so
    the model continues the answer after its reasoning, or, when there is no answer yet
    (a reply cut mid-thought), the reasoning itself. Other messages keep the field for
    the template (Qwen3's renders it)."""
    last = messages[-1] if messages else None
    thought = last.get("reasoning_content") if isinstance(last, dict) else None
    if (len(messages) < 2 or last.get("role") != "assistant" or last.get("tool_calls")
            or not isinstance(thought, str) or not thought.strip()):
        return messages
    content = last.get("content") or ""
    text = OPEN + "\n" + thought.strip()
    if isinstance(content, str) and content:
        text += "\n" + CLOSE + "\n\n" + content
    out = {k: v for k, v in last.items() if k != "reasoning_content"}
    return [*messages[:-1], {**out, "content": text}]
