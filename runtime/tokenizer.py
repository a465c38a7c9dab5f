"""Tokenizers that give the same ids as llama.cpp, and a streaming detokenizer.

Two vocabulary types are supported, picked by ``tokenizer.ggml.model``:

* ``llama``: SentencePiece BPE ("SPM"). The text (spaces written as ``▁``) starts as one
  symbol per character; the adjacent pair whose joined text is a token with the highest
  score is merged first (ties: leftmost), until no pair is a token. Symbols that are not
  tokens fall back to ``<0xNN>`` byte tokens.
* ``gpt2``: byte-level BPE. The text is split into pre-tokens by the regexes named by
  ``tokenizer.ggml.pre`` (see ``runtime.pretokenize``), each pre-token's UTF-8 bytes are
  mapped to printable characters (GPT-2's bytes-to-unicode), and merges are applied in
  rank order.

Both first cut the text at special tokens written in it (llama.cpp's
``tokenizer_st_partition``): user-defined tokens always, control and unknown tokens only
with ``parse_special``. Longer special tokens are cut out first.

Detokenizing follows ``llama_detokenize``: control and unknown tokens render as nothing
unless ``unparse_special``; an SPM vocab with ``add_space_prefix`` drops one leading space
of the *first* piece only (so after a BOS the space stays); BPE vocabs with
``clean_spaces`` tidy " ," " 's" and friends.

The rules (defaults, special-token detection, end-of-generation tokens) are transcribed
from llama.cpp's ``llama-vocab.cpp``.
"""
from __future__ import annotations

import codecs
import heapq
import logging
import operator
import warnings
from typing import Sequence

import numpy as np
import regex

from runtime import pretokenize
from runtime.token_bytes import TokenBytes, pack

log = logging.getLogger(__name__)

# Fill-in-the-middle as llama-server's /infill does it: prefix and suffix are cut to fit one
# batch of its default size (--batch-size 2048), and chunks of other files are separated by
# this line when the vocabulary has no <|file_sep|> token.
FIM_BATCH_TOK = 2048
FIM_SNIPPET_SEPARATOR = "\n\n--- snippet ---\n\n"


# Pre-tokens longer than this are not cached: the cache is bounded by its number of
# entries, and 200,000 huge ones (long runs of letters or digits) would be gigabytes.
BPE_CACHE_WORD_MAX = 64


def merge_pairs(symbols: list[str], priority: dict, sep: str) -> list[str]:
    """Merge adjacent symbols, the pair of lowest priority first (ties: the leftmost), until
    no pair has one. A pair's priority is priority[left + sep + right]; a pair not in it
    never merges. BPE looks pairs up in its merge ranks ("a b"), SPM the joined text in
    its negated token scores ("ab"): that is all they differ in.

    The symbols are a doubly linked list and the candidate pairs a heap, so a pre-token of
    n characters takes O(n log n): merging the best pair everywhere and rescanning (as
    GPT-2's reference code does) took 82 s on 100 KB of letters. A queued pair is stale
    once either side has merged since; the joined length it was queued with tells."""
    n = len(symbols)
    if n < 2:
        return symbols
    syms = list(symbols)
    lens = [len(x) for x in syms]  # 0: merged into its left neighbour
    nxt = list(range(1, n + 1))  # n: none
    prv = list(range(-1, n - 1))  # -1: none
    heap = []  # (priority, left, right, joined length)
    get = priority.get
    for i in range(n - 1):
        p = get(syms[i] + sep + syms[i + 1])
        if p is not None:
            heap.append((p, i, i + 1, lens[i] + lens[i + 1]))
    heapq.heapify(heap)
    push, pop = heapq.heappush, heapq.heappop
    while heap:
        _, left, right, size = pop(heap)
        if lens[left] == 0 or lens[right] == 0 or lens[left] + lens[right] != size:
            continue
        syms[left] += syms[right]
        lens[left], lens[right] = size, 0
        after = nxt[right]
        nxt[left] = after
        before = prv[left]
        if before >= 0:
            p = get(syms[before] + sep + syms[left])
            if p is not None:
                push(heap, (p, before, left, lens[before] + size))
        if after < n:
            prv[after] = left
            p = get(syms[left] + sep + syms[after])
            if p is not None:
                push(heap, (p, left, after, size + lens[after]))
    return [x for x, length in zip(syms, lens) if length]


class TokenizerError(ValueError):
    """Bad vocabulary metadata or bad input to the tokenizer."""


# llama.cpp token types (GGUF tokenizer.ggml.token_type) and attribute bits.
TYPE_UNDEFINED, TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = range(7)
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8
_TYPE_TO_ATTR = {TYPE_UNDEFINED: 0, TYPE_NORMAL: ATTR_NORMAL, TYPE_UNKNOWN: ATTR_UNKNOWN,
                 TYPE_CONTROL: ATTR_CONTROL, TYPE_USER_DEFINED: ATTR_USER_DEFINED,
                 TYPE_UNUSED: ATTR_UNUSED, TYPE_BYTE: ATTR_BYTE}
_SPECIAL_ATTRS = ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN

_SPACE = "\u2581"  # SentencePiece's visible space, "▁"
_ASCII_SPACE = " \t\n\v\f\r"  # C isspace(), used by the lstrip/rstrip token attributes

# Token texts llama.cpp recognises when the metadata does not name the token.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
              "<end_of_utterance>")
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>",
                "▁<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>",
                "▁<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>",
                "▁<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
))

# GGUF key (after "tokenizer.ggml.") -> our special-token slot, in llama.cpp's order. The
# deprecated prefix/suffix/middle keys come last and so win, as in llama.cpp.
_SPECIAL_KEYS = (
    ("bos_token_id", "bos"), ("eos_token_id", "eos"), ("eot_token_id", "eot"),
    ("eom_token_id", "eom"), ("unknown_token_id", "unk"), ("seperator_token_id", "sep"),
    ("padding_token_id", "pad"), ("mask_token_id", "mask"),
    ("fim_pre_token_id", "fim_pre"), ("fim_suf_token_id", "fim_suf"), ("fim_mid_token_id", "fim_mid"),
    ("fim_pad_token_id", "fim_pad"), ("fim_rep_token_id", "fim_rep"), ("fim_sep_token_id", "fim_sep"),
    ("prefix_token_id", "fim_pre"), ("suffix_token_id", "fim_suf"), ("middle_token_id", "fim_mid"),
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


_BYTE_TO_CHAR = _bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}
# latin-1 decoded text -> byte-level characters (one str.translate per pre-token)
_BYTE_ENCODE_TABLE = {b: c for b, c in _BYTE_TO_CHAR.items()}
# byte-level characters -> latin-1 characters, so .encode("latin-1") gives the raw bytes
_BYTE_DECODE_TABLE = {ord(c): b for c, b in _CHAR_TO_BYTE.items()}
# ... as an array by code point: what text.translate(that).encode("latin-1") makes of
# each character (latin-1 ones the table leaves are themselves; -1: encode would fail)
_BYTE_OF_CHAR = np.array([_BYTE_DECODE_TABLE.get(c, c if c < 256 else -1)
                          for c in range(max(_BYTE_DECODE_TABLE) + 1)], dtype=np.int16)


def _bpe_decode_text(text: str) -> bytes:
    """llama_decode_text: byte-level characters back to bytes (unknown chars flagged)."""
    try:
        return text.translate(_BYTE_DECODE_TABLE).encode("latin-1")
    except UnicodeEncodeError:
        out = bytearray()
        for ch in text:
            b = _CHAR_TO_BYTE.get(ch)
            if b is not None:
                out.append(b)
            else:
                out += b"[UNK_BYTE_0x" + ch.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
        return bytes(out)


# detokenize's clean-up of spaces (llama.cpp's three byte passes), as regexes.
_CLEAN_PUNCT = regex.compile(rb" (?=[?!.,])")
_CLEAN_LONE_APOSTROPHE = regex.compile(rb" ' ")
_CLEAN_CONTRACTION = regex.compile(rb" (?='(?:[sm]|re|ve))")


def clean_spaces(raw: bytes) -> bytes:
    """Remove the space in " ?", " !", " .", " ,", around a lone "'", before 's 'm 're 've."""
    raw = _CLEAN_PUNCT.sub(b"", raw)
    raw = _CLEAN_LONE_APOSTROPHE.sub(b"'", raw)
    return _CLEAN_CONTRACTION.sub(b"", raw)


_NOT_ORDINARY = frozenset(b" '?!.,")


def _clean_cut(raw: bytes) -> int:
    """The largest n such that clean_spaces(raw[:n] + more) starts with clean_spaces(raw[:n]).

    Every clean-up pattern starts with a space and spans at most a few of the bytes
    " '?!.,smrev" after it. Cutting right after a byte that is none of " '?!.," and is not
    one or two bytes after an apostrophe keeps every pattern on one side of the cut.
    """
    n = len(raw)
    while n > 0:
        b = raw[n - 1]
        if b not in _NOT_ORDINARY and (n < 2 or raw[n - 2] != 0x27) and (n < 3 or raw[n - 3] != 0x27):
            return n
        n -= 1
    return 0


class StreamDecoder:
    """Turns ids, one at a time, into text; the pieces join up to ``detokenize(ids)``.

    Incomplete UTF-8 sequences are held back until their last byte arrives, and with
    ``clean_spaces`` the bytes a later token could still change are held back too.

    ``continuation``: the ids go on from text before them (a completion of a prompt), so
    the first one keeps the leading space that a SentencePiece vocabulary's words carry
    ("▁andas"), as llama-server sends it; the prompt and its completion then join up.
    Otherwise (a chat reply, which starts a message) it is dropped, as ``detokenize`` and
    SentencePiece drop the space at the start of a text.
    """

    def __init__(self, tok: "Tokenizer", unparse_special: bool = False,
                 continuation: bool = False):
        self._tok = tok
        self._unparse_special = unparse_special
        self._first = not continuation
        self._pending = b""  # raw bytes not yet cleaned (clean_spaces vocabs only)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id) -> str:
        piece = self._tok._piece(token_id, self._unparse_special, lstrip=self._first and self._tok.add_space_prefix)
        self._first = False
        if not self._tok.clean_spaces:
            return self._utf8.decode(piece)
        self._pending += piece
        cut = _clean_cut(self._pending)
        if cut == 0:
            return ""
        ready, self._pending = self._pending[:cut], self._pending[cut:]
        return self._utf8.decode(clean_spaces(ready))

    def flush(self) -> str:
        ready = clean_spaces(self._pending) if self._tok.clean_spaces else b""
        self._pending = b""
        return self._utf8.decode(ready, final=True)


class Tokenizer:
    """A llama.cpp-compatible vocabulary; build it with ``Tokenizer.from_metadata``."""

    # -- loading ------------------------------------------------------------------------

    @classmethod
    def from_metadata(cls, metadata: dict) -> "Tokenizer":
        return cls(metadata)

    def __init__(self, md: dict):
        model = md.get("tokenizer.ggml.model")
        if model is None:
            raise TokenizerError("GGUF has no tokenizer (tokenizer.ggml.model is missing)")
        tokens = md.get("tokenizer.ggml.tokens")
        if tokens is None or isinstance(tokens, (str, bytes)) or len(tokens) == 0:
            raise TokenizerError("GGUF has no token list (tokenizer.ggml.tokens)")
        if model == "llama":
            self.vocab_type = "spm"
        elif model in ("gpt2", "gemma4"):
            self.vocab_type = "bpe"
        elif model in ("bert", "t5", "rwkv", "plamo2", "no_vocab", "none"):
            raise TokenizerError(f"tokenizer.ggml.model '{model}' is not supported (only 'llama' and 'gpt2')")
        else:
            raise TokenizerError(f"unknown tokenizer.ggml.model '{model}'")
        self.model = model
        pre_name = "gemma4" if model == "gemma4" else md.get("tokenizer.ggml.pre", "")
        self.pre_name = pre_name
        n = len(tokens)
        self.n_vocab = n

        # Per-vocab-type defaults, then metadata (llama_vocab::impl::load).
        ids = dict.fromkeys(("bos", "eos", "eot", "eom", "unk", "sep", "pad", "mask", "fim_pre",
                             "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep"))
        self.ignore_merges = False
        self.byte_encode = True
        self.escape_whitespaces = False
        if self.vocab_type == "spm":
            ids.update(bos=1, eos=2, unk=0)
            self.add_space_prefix, self.clean_spaces = True, False
            self.add_bos, self.add_eos = True, False
            self._settings = None
        else:
            ids.update(bos=11, eos=11)
            self.add_space_prefix, self.clean_spaces = False, True
            self.add_bos, self.add_eos = False, False
            settings = pretokenize.PRE_NAMES.get(pre_name)
            if settings is None:
                msg = (f"unknown pre-tokenizer '{pre_name}', using llama.cpp's default regexes"
                       if pre_name else "missing pre-tokenizer type, using 'default'")
                warnings.warn(msg + "; tokenization may differ from the model's own", stacklevel=3)
                log.warning(msg)
                settings = pretokenize.PRE_NAMES["default"]
            self._settings = settings
            self.clean_spaces = settings.clean_spaces
            self.ignore_merges = settings.ignore_merges
            self.add_bos = settings.add_bos or self.add_bos
            self.byte_encode = settings.byte_encode
            self.escape_whitespaces = not settings.byte_encode
            if settings.no_bos:
                ids["bos"] = None
            self._regexes = pretokenize.compile_regexes(settings.regexes)
        if "tokenizer.ggml.add_space_prefix" in md:
            self.add_space_prefix = bool(md["tokenizer.ggml.add_space_prefix"])

        # The vocabulary. dict(zip()) is the fast path; duplicates and empty texts are rare.
        texts = list(tokens)
        token_to_id = dict(zip(texts, range(n)))
        if len(token_to_id) != n or "" in token_to_id:
            token_to_id = {}
            for i, t in enumerate(texts):
                if not isinstance(t, str):
                    raise TokenizerError(f"token {i} is not a string")
                if not t:
                    t = texts[i] = f"[EMPTY_{i}]"
                if token_to_id.setdefault(t, i) != i:
                    log.warning("duplicate token %r (ids %d and %d); keeping the first", t, token_to_id[t], i)
        self._texts = texts
        self._token_to_id = token_to_id
        scores = md.get("tokenizer.ggml.scores")
        if scores is not None and len(scores) < n:
            raise TokenizerError(f"tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
        self._scores = scores if scores is not None else [0.0] * n
        types = md.get("tokenizer.ggml.token_type")
        if types is not None:
            if len(types) < n:
                raise TokenizerError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
            try:
                type_arr = np.asarray(types[:n], dtype=np.int64)
            except (TypeError, ValueError):
                raise TokenizerError("tokenizer.ggml.token_type is not a list of integers") from None
            attr_table = np.array([_TYPE_TO_ATTR[t] for t in range(7)] + [0], dtype=np.int64)
            attrs = attr_table[np.where((type_arr >= 0) & (type_arr < 7), type_arr, 7)].tolist()
        else:
            attrs = [ATTR_NORMAL] * n
        self._attrs = attrs

        if self.vocab_type == "bpe":
            merges = md.get("tokenizer.ggml.merges")
            if merges is None:
                raise TokenizerError("byte-level BPE vocab has no tokenizer.ggml.merges")
            # "a b" -> rank; a pair is looked up as left + " " + right (tokens have no spaces)
            self._ranks = dict(zip(merges, range(len(merges))))

        # Special token ids: defaults out of range are disabled, metadata ids in range win.
        for slot, value in ids.items():
            if value is not None and value >= n:
                ids[slot] = None
        for key, slot in _SPECIAL_KEYS:
            value = md.get("tokenizer.ggml." + key)
            if value is None:
                continue
            if isinstance(value, int) and 0 <= value < n:
                ids[slot] = int(value)
            else:
                log.warning("bad special token tokenizer.ggml.%s = %s, using default %s", key, value, ids[slot])
        if "tokenizer.ggml.add_bos_token" in md:
            self.add_bos = bool(md["tokenizer.ggml.add_bos_token"])
        if self._settings is not None and self._settings.force_bos:
            self.add_bos = True  # llama.cpp overrides Gemma 4 GGUFs that say false
        if "tokenizer.ggml.add_eos_token" in md:
            self.add_eos = bool(md["tokenizer.ggml.add_eos_token"])
        if self.add_bos and ids["bos"] is None:
            raise TokenizerError("tokenizer.ggml.add_bos_token is true, but there is no BOS token")
        if self.add_eos and ids["eos"] is None:
            raise TokenizerError("tokenizer.ggml.add_eos_token is true, but there is no EOS token")

        # Find unnamed EOT/EOM/FIM tokens by text; such tokens become control tokens.
        def find(slot, candidates):
            if ids[slot] is None:
                for text in candidates:
                    tid = token_to_id.get(text)
                    if tid is not None:
                        ids[slot] = tid
                        attrs[tid] |= ATTR_CONTROL
                        return

        find("eot", _EOT_TEXTS)
        find("eom", _EOM_TEXTS)
        for slot, candidates in _FIM_TEXTS.items():
            find(slot, candidates)

        # End-of-generation tokens.
        eog = {ids[s] for s in ("fim_pad", "fim_rep", "fim_sep") if ids[s] is not None}
        for text in _EOG_TEXTS:
            tid = token_to_id.get(text)
            if tid is not None:
                eog.add(tid)
                attrs[tid] |= ATTR_CONTROL
        for text in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):  # gpt-oss
            tid = token_to_id.get(text)
            if tid is not None:
                attrs[tid] = ATTR_USER_DEFINED
        eog.update(ids[s] for s in ("eos", "eot", "eom") if ids[s] is not None)
        eog_texts = {texts[t] for t in eog}
        has_call = "<|call|>" in eog_texts or "<|calls|>" in eog_texts
        if "<|end|>" in eog_texts and has_call and ("<|return|>" in eog_texts or "<|flush|>" in eog_texts):
            # harmony / solar-open: <|end|> ends a message, not the generation
            end_id = next(t for t in eog if texts[t] == "<|end|>")
            eog.discard(end_id)
            attrs[end_id] = ATTR_USER_DEFINED
        s_id = token_to_id.get("</s>")
        if "<|tool_response>" in eog_texts and s_id in eog:
            eog.discard(s_id)
            attrs[s_id] = ATTR_NORMAL
        self.eog_ids = frozenset(eog)
        self._ids = ids

        # Special tokens cut out of the text before tokenizing, longest first.
        special = np.flatnonzero(np.asarray(attrs) & _SPECIAL_ATTRS).tolist()
        for tid in special:
            if attrs[tid] & ATTR_CONTROL and "unused" in texts[tid]:
                attrs[tid] |= ATTR_UNUSED  # only informative: it changes no output
        special.sort(key=lambda t: -len(texts[t].encode("utf-8")))  # llama.cpp sorts by bytes
        self._special = special

        # Per-model token attributes llama.cpp sets by name.
        model_name = str(md.get("general.name", "")).lower()
        arch = str(md.get("general.architecture", ""))
        if any(s in pre_name for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
                any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
            if "<mask>" in token_to_id:
                attrs[token_to_id["<mask>"]] |= ATTR_LSTRIP
        elif "phi-3" in model_name or "phi3" in model_name:
            for t in special:
                attrs[t] |= ATTR_RSTRIP
            for text, on in (("</s>", True), ("<unk>", False), ("<s>", False), ("<|endoftext|>", False)):
                tid = token_to_id.get(text)
                if tid is not None:
                    attrs[tid] = (attrs[tid] | ATTR_RSTRIP) if on else (attrs[tid] & ~ATTR_RSTRIP)
        elif "modern-bert" in model_name and "[MASK]" in token_to_id:
            attrs[token_to_id["[MASK]"]] |= ATTR_LSTRIP

        self._pieces: list = [None] * n  # token_to_piece(special=True) cache, filled lazily
        self._bpe_cache: dict[str, list[int]] = {}
        self._neg_scores: dict[str, float] | None = None  # SPM's merge priorities, when first needed
        self._byte_ids: dict[int, int] = {}

    def __repr__(self):
        return (f"Tokenizer({self.vocab_type}, n_vocab={self.n_vocab}, pre={self.pre_name!r}, "
                f"bos={self.bos_id}, eos={self.eos_id})")

    # -- public properties --------------------------------------------------------------

    @property
    def bos_id(self):
        return self._ids["bos"]

    @property
    def eos_id(self):
        return self._ids["eos"]

    @property
    def eot_id(self):
        return self._ids["eot"]

    @property
    def unk_id(self):
        return self._ids["unk"]

    @property
    def pad_id(self):
        return self._ids["pad"]

    def special_id(self, slot: str):
        """The id of a special token slot ("bos", "eos", "fim_pre", ...), or None."""
        return self._ids[slot]

    def token_text(self, token_id) -> str:
        return self._texts[self._check_id(token_id)]

    def is_control(self, token_id) -> bool:
        return bool(self._attrs[self._check_id(token_id)] & ATTR_CONTROL)

    def is_special(self, token_id) -> bool:
        """A control, user-defined or unknown token: an added token matched whole, not a
        piece of ordinary text (Qwen's <tool_call> is user-defined, <|im_end|> control)."""
        return bool(self._attrs[self._check_id(token_id)] & _SPECIAL_ATTRS)

    def is_eog(self, token_id) -> bool:
        return token_id in self.eog_ids

    def token_id(self, text: str):
        """The id of the token whose text is exactly `text`, or None."""
        return self._token_to_id.get(text)

    def _check_id(self, token_id) -> int:
        try:
            tid = operator.index(token_id)  # ints and NumPy integers, not floats or str
        except TypeError:
            raise TokenizerError(f"token id {token_id!r} is not an integer") from None
        if not 0 <= tid < self.n_vocab:
            raise TokenizerError(f"token id {tid} is out of range for a vocabulary of {self.n_vocab}")
        return tid

    # -- tokenize -----------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"tokenize() needs a str, got {type(text).__name__}")
        if regex.search(r"[\ud800-\udfff]", text):
            # lone surrogates cannot be UTF-8; llama.cpp would see U+FFFD there
            text = regex.sub(r"[\ud800-\udfff]", "\ufffd", text)
        fragments = self._partition(text, parse_special) if text else []
        out: list[int] = []
        if self.vocab_type == "spm":
            if add_special and self.add_bos:
                out.append(self.bos_id)
            prev_special = True
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                    prev_special = True
                else:
                    if self.add_space_prefix and prev_special:
                        frag = " " + frag
                    self._spm(frag.replace(" ", _SPACE), out)
                    prev_special = False
        else:
            if add_special and self.add_bos:
                out.append(self.bos_id)
            for frag in fragments:
                if isinstance(frag, int):
                    out.append(frag)
                else:
                    self._bpe_text(frag, out)
        if add_special and self.add_eos:
            out.append(self.eos_id)
        return out

    def _partition(self, text: str, parse_special: bool) -> list:
        """Cut special tokens out of `text`: a list of str (raw text) and int (token id)."""
        frags: list = [text]
        texts, attrs = self._texts, self._attrs
        for tid in self._special:
            a = attrs[tid]
            if not parse_special and a & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            tok = texts[tid]
            if tok not in text:
                continue
            new: list = []
            for frag in frags:
                if isinstance(frag, int) or tok not in frag:
                    new.append(frag)
                    continue
                rest = frag
                while True:
                    pos = rest.find(tok)
                    if pos < 0:
                        if rest:
                            new.append(rest)
                        break
                    left = rest[:pos]
                    if a & ATTR_LSTRIP:
                        left = left.rstrip(_ASCII_SPACE)
                    if left:
                        new.append(left)
                    new.append(tid)
                    rest = rest[pos + len(tok):]
                    if a & ATTR_RSTRIP:
                        rest = rest.lstrip(_ASCII_SPACE)
            frags = new
        return frags

    def _byte_token(self, byte: int):
        """The token for one raw byte (SPM: <0xNN>, else the byte as a 1-char token)."""
        tid = self._byte_ids.get(byte)
        if tid is None:
            tid = self._token_to_id.get(f"<0x{byte:02X}>")
            if tid is None and byte < 0x80:
                tid = self._token_to_id.get(chr(byte))
            if tid is None:
                tid = self.unk_id
            if tid is None:
                raise TokenizerError(f"the vocabulary has no token for byte 0x{byte:02X} and no unknown token")
            self._byte_ids[byte] = tid
        return tid

    def _spm(self, text: str, out: list):
        """llm_tokenizer_spm: best-score merges over the whole fragment."""
        if not text:
            return
        vocab = self._token_to_id
        if self._neg_scores is None:  # the highest score merges first
            self._neg_scores = {t: -self._scores[i] for t, i in vocab.items()}
        for sym in merge_pairs(list(text), self._neg_scores, ""):
            tid = vocab.get(sym)
            if tid is not None:
                out.append(tid)
            else:
                out.extend(self._byte_token(b) for b in sym.encode("utf-8"))

    def _bpe_text(self, text: str, out: list):
        if self.escape_whitespaces:
            text = text.replace(" ", _SPACE)
        cache = self._bpe_cache
        for word in pretokenize.split(text, self._regexes):
            ids = cache.get(word)
            if ids is None:
                ids = self._bpe_word(word)
                if len(word) <= BPE_CACHE_WORD_MAX:  # a pasted blob is seen once
                    if len(cache) > 200_000:
                        cache.clear()
                    cache[word] = ids
            out.extend(ids)

    def _bpe_word(self, word: str) -> list[int]:
        """llm_tokenizer_bpe on one pre-token: lowest-rank pair first, leftmost on ties."""
        if self.byte_encode:
            word = word.encode("utf-8").decode("latin-1").translate(_BYTE_ENCODE_TABLE)
        vocab = self._token_to_id
        if self.ignore_merges:
            tid = vocab.get(word)
            if tid is not None:
                return [tid]
        ranks = self._ranks
        parts = merge_pairs(list(word), ranks, " ")
        ids = []
        for p in parts:
            tid = vocab.get(p)
            if tid is not None:
                ids.append(tid)
            elif self.byte_encode:
                # llama.cpp looks up each UTF-8 byte as a 1-byte token; only ASCII can match
                for byte in p.encode("utf-8"):
                    if byte < 0x80:
                        t = vocab.get(chr(byte))
                        if t is not None:
                            ids.append(t)
            else:
                for byte in p.encode("utf-8"):
                    t = vocab.get(f"<0x{byte:02X}>")
                    if t is not None:
                        ids.append(t)
        return ids

    # -- detokenize ---------------------------------------------------------------------

    def _render(self, tid: int) -> bytes:
        """token_to_piece with special=True, as llama.cpp caches it."""
        a = self._attrs[tid]
        text = self._texts[tid]
        if a & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
            return text.encode("utf-8")
        if a & ATTR_NORMAL:
            if self.vocab_type == "spm" or self.escape_whitespaces:
                return text.replace(_SPACE, " ").encode("utf-8")
            return _bpe_decode_text(text)
        if a & ATTR_BYTE:
            try:
                return bytes([int(text[3:5], 16)])
            except ValueError:
                return b""
        return b""  # unused / undefined tokens render as nothing

    def _piece(self, token_id, special: bool, lstrip: bool = False) -> bytes:
        tid = self._check_id(token_id)
        if not special and self._attrs[tid] & (ATTR_UNKNOWN | ATTR_CONTROL):
            return b""
        piece = self._pieces[tid]
        if piece is None:
            piece = self._pieces[tid] = self._render(tid)
        if lstrip and piece[:1] == b" ":
            piece = piece[1:]
        return piece

    def token_to_piece(self, token_id, special: bool = False) -> bytes:
        """The bytes one token stands for (control/unknown tokens: b"" unless special)."""
        return self._piece(token_id, special)

    def token_bytes(self) -> TokenBytes:
        """Every token's token_to_piece(t, special=True), end to end, built anew: use
        runtime.token_bytes.table_of(tokenizer), which keeps it. The ordinary tokens (all
        but a few thousand) are rendered together, from one join of every token's text:
        a bytes object per token took 0.2 s for Qwen's vocabulary."""
        attrs = np.fromiter(self._attrs, dtype=np.int64, count=self.n_vocab)
        special = (attrs & _SPECIAL_ATTRS) != 0
        hidden = (attrs & (ATTR_UNKNOWN | ATTR_CONTROL)) != 0
        ordinary = ((attrs & ATTR_NORMAL) != 0) & ~special      # _render's text branch
        rendered = self._render_ordinary(ordinary)
        if rendered is None:          # a text only _render reads right: one at a time
            ordinary[:] = False
            rendered = np.zeros(0, dtype=np.uint8), np.zeros(0, dtype=np.int64)
        rest = np.flatnonzero(~ordinary)
        pieces = [self._render(t) for t in rest.tolist()]
        rest_lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        data, starts = pack(self.n_vocab, [(np.flatnonzero(ordinary), *rendered),
                                           (rest, b"".join(pieces), rest_lengths)])
        return TokenBytes(data, starts, special, hidden)

    def _render_ordinary(self, ordinary: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """_render of the tokens `ordinary` (bool [n]; normal ones), all at once: their
        bytes end to end (uint8) and each one's length; None when a text is no byte-level
        text (_bpe_decode_text's [UNK_BYTE_...] case) or no valid Unicode."""
        chars = np.fromiter(map(len, self._texts), dtype=np.int64, count=self.n_vocab)
        joined = "".join(self._texts)
        keep = np.repeat(ordinary, chars)           # per character: is its token ordinary
        try:
            if self.vocab_type == "spm" or self.escape_whitespaces:
                u8 = np.frombuffer(joined.replace(_SPACE, " ").encode("utf-8"), dtype=np.uint8)
                char_starts = np.append(np.flatnonzero((u8 & 0xC0) != 0x80), u8.size)
                widths = np.diff(char_starts)       # each character's bytes
                token_ends = char_starts[np.cumsum(chars)]
                return u8[np.repeat(keep, widths)], np.diff(token_ends, prepend=0)[ordinary]
            codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)[keep]
        except UnicodeEncodeError:
            return None
        # byte-level BPE: one character per byte, as _bpe_decode_text reads it
        if codes.size and codes.max() >= _BYTE_OF_CHAR.size:
            return None
        raw = _BYTE_OF_CHAR[codes]
        if (raw < 0).any():
            return None
        return raw.astype(np.uint8), chars[ordinary]

    def detokenize(self, ids, remove_special: bool = False, unparse_special: bool = False) -> str:
        ids = [self._check_id(t) for t in ids]
        remove_space = self.add_space_prefix
        if remove_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if remove_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        parts = []
        for i, tid in enumerate(ids):
            parts.append(self._piece(tid, unparse_special, lstrip=remove_space and i == 0))
        raw = b"".join(parts)
        if self.clean_spaces:
            raw = clean_spaces(raw)
        return raw.decode("utf-8", errors="replace")

    def decoder(self, unparse_special: bool = False, continuation: bool = False) -> StreamDecoder:
        return StreamDecoder(self, unparse_special, continuation)

    # -- fill-in-the-middle -------------------------------------------------------------

    def fim_prompt(self, prefix: str, suffix: str, extra: Sequence[tuple[str, str]] = (),
                   prompt: str = "", n_ctx: int | None = None, n_predict: int = -1) -> list[int]:
        """The prompt llama-server's /infill builds, with the repo-level layout of
        Qwen2.5-Coder (arXiv 2409.12186) when the vocabulary has its tokens:

            <fim_rep>myproject\n <file_sep>NAME\n TEXT ... <file_sep>filename\n
            [BOS] <fim_pre> PREFIX PROMPT <fim_suf> SUFFIX <fim_mid>

        `extra` holds (filename, text) chunks of other files; without <file_sep> they are
        joined by a "--- snippet ---" line instead. Long inputs are cut as llama-server
        cuts them: the prefix keeps its last 3/4 of FIM_BATCH_TOK tokens, the suffix its
        first FIM_BATCH_TOK/4 - 2 - len(PROMPT), and the extra context its last
        n_ctx - FIM_BATCH_TOK - 2·n_predict (all of it when n_ctx is None).
        """
        pre, suf, mid = self._ids["fim_pre"], self._ids["fim_suf"], self._ids["fim_mid"]
        if pre is None or suf is None or mid is None:
            raise TokenizerError("this model has no fill-in-the-middle tokens (fim_pre/fim_suf/fim_mid)")
        rep, sep = self._ids["fim_rep"], self._ids["fim_sep"]

        def ids(text: str) -> list[int]:
            return self.tokenize(text, add_special=False, parse_special=False)

        context = [rep, *ids("myproject\n")] if rep is not None else []
        for filename, text in extra:
            context += [sep, *ids(filename + "\n")] if sep is not None else ids(FIM_SNIPPET_SEPARATOR)
            context += ids(text)
        if sep is not None:
            context += [sep, *ids("filename\n")]
        prompt_ids = ids(prompt)
        n_prefix = 3 * (FIM_BATCH_TOK // 4)
        n_suffix = max(0, FIM_BATCH_TOK // 4 - (2 + len(prompt_ids)))
        n_context = len(context) if n_ctx is None else \
            min(len(context), max(0, n_ctx - FIM_BATCH_TOK - 2 * n_predict))
        out = context[len(context) - n_context:]
        if self.add_bos:
            out.append(self.bos_id)
        out += [pre, *ids(prefix)[-n_prefix:], *prompt_ids]
        out += [suf, *ids(suffix)[:n_suffix], mid]
        return out
