"""Pre-tokenizers for byte-level BPE vocabularies, as llama.cpp runs them.

A GGUF names its pre-tokenizer in ``tokenizer.ggml.pre``. llama.cpp maps that name to a
*pre-type* (``PRE_NAMES``), and each pre-type to a list of regexes (``PRE_REGEXES``). The
regexes are facts taken from llama.cpp's ``llama-vocab.cpp``; the splitting rules below
follow its ``unicode_regex_split``:

* The regexes run in sequence. Each one splits every piece left by the previous one, and
  the text *between* two matches is kept as a piece of its own (nothing is dropped).
* Each piece is matched on its own, so ``(?!\\S)`` and ``$`` see the piece's end.
* A regex that uses ``\\p{..}`` runs on a "collapsed" copy of the text: every non-ASCII
  code point becomes one stand-in byte for its Unicode category (letter, number, ...), or a
  vertical tab if it is whitespace. The ``\\p{..}`` classes become the stand-in byte plus
  the ASCII members llama.cpp lists. This is why, for example, ``\\p{S}`` does not match
  ``~`` in llama.cpp; copying the scheme keeps us identical to it.
* A regex without ``\\p{..}`` runs on the real text with non-ASCII whitespace turned into
  a vertical tab (C++ ``std::wregex`` only knows ASCII whitespace).
* ``\\s``, ``\\d``, ``\\w`` and ``\\b`` are ASCII-only there, so we compile with
  ``regex.ASCII``.

llama.cpp has hand-written splitters for the GPT-2 and Llama-3 regexes; they are meant to
be (and, for the cases that matter, are) identical to the regexes, so we run the regexes.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import regex

# --- pre-types -------------------------------------------------------------------------

# Reused regex sources (written as llama.cpp has them, in raw-string form).
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEEPSEEK3_MAIN = (r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?"
                   r"[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_UPPER_THEN_LOWER = r"((?=[\p{L}])([^a-z]))"
_LOWER = r"((?=[\p{L}])([^A-Z]))"
_PORO = r" ?[^(\s|.,!?\u2026\u3002\uff0c\u3001\u0964\u06d4\u060c)]+"
_CASED = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_UNCASED = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"

# DeepSeek-LLM's letter class, a literal list of code point ranges from llama.cpp.
_DEEPSEEK_LETTERS = (
    "A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-"
    "\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-"
    "\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5"
    "\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00"
    "-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-"
    "\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-"
    "\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-"
    "\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149"
    "\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
    "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13"
    "-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3"
    "\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df"
    "\U0001e900-\U0001e943"
)

PRE_REGEXES: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "llama3": (_LLAMA3,),
    "dbrx": (_LLAMA3,),
    "smaug": (_LLAMA3,),
    "chatglm4": (_LLAMA3,),
    "jais2": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)"
              r"|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",),
    "deepseek-llm": ("[\r\n]", r"\s?[" + _DEEPSEEK_LETTERS + "]+",
                     r"\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+", r"\s+$", r"[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}+"),
    "deepseek-v3": (r"\p{N}{1,3}", r"[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+", _DEEPSEEK3_MAIN),
    "spark2_5": (r"\p{N}{1,3}", r"[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
                 r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?"
                 r"[\p{L}\p{M}]+| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+", r"\p{N}"),
    "youtu": (r"[\uac00-\ud7a3\u3131-\u318e]+|[\uff01\u2026\u201c\u201d\u2018\u2019\u2014\uff1a\uff1b\uff0c\u3001-\u303f\ufe30-\ufe4f]+|[\u3105-\u312f]+|[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
              r"[^\r\n\p{L}\p{N}]?" + _CASED + "*" + _UNCASED + "+" + _CONTRACTIONS + "?"
              r"|[^\r\n\p{L}\p{N}]?" + _CASED + "+" + _UNCASED + "*" + _CONTRACTIONS + "?"
              r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "deepseek-coder": ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}"),
    "falcon": (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"),
    "starcoder": (r"\p{N}", _GPT2),
    "gpt2": (_GPT2,),
    "qwen2": (_QWEN2,),
    "qwen35": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "poro": (_PORO,),
    "viking": (_PORO, r"\p{N}"),
    "tekken": (r"[^\r\n\p{L}\p{N}]?" + _UPPER_THEN_LOWER + "*" + _LOWER + "+"
               r"|[^\r\n\p{L}\p{N}]?" + _UPPER_THEN_LOWER + "+" + _LOWER + "*"
               r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "chameleon": (r"<sentinel:[0-9]+>", r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", r"([\t\n]|    |  )",
                  r"\p{N}", r"[\p{P}!-/:-@\[-`{-~]", _GPT2),
    "gpt-4o": (r"[^\r\n\p{L}\p{N}]?" + _UPPER_THEN_LOWER + "*" + _LOWER + "+" + _CONTRACTIONS + "?"
               r"|[^\r\n\p{L}\p{N}]?" + _UPPER_THEN_LOWER + "+" + _LOWER + "*" + _CONTRACTIONS + "?"
               r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "granite-emb-multi": (
        r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+" + _CONTRACTIONS + "?"
        r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*" + _CONTRACTIONS + "?"
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "tiny-aya": (r"\d{1,3}(?=(?:\d{3})*\b)",
                 r"[^\r\n\p{L}\p{N}]?" + _CASED + "*" + _UNCASED + "+" + _CONTRACTIONS + "?"
                 r"|[^\r\n\p{L}\p{N}]?" + _CASED + "+" + _UNCASED + "*" + _CONTRACTIONS + "?"
                 r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
    "superbpe": (r"\p{N}+", r"(?=(\d{3})+(?!\d))"),
    "bailingmoe": (r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",),
    "seed-coder": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+"
                   r"|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "ufakzeka": (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "grok-2": (_QWEN2,),
    "afmoe": ("<afmoe-digits>",
              "[\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f\u2f00-\u2fdf\u0e40-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af\u1100-\u11ff]+",
              _DEEPSEEK3_MAIN),
    "laguna": (r"[^\n]+|[\n]+", _QWEN2),
    "exaone-moe": (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}"
                   r"| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",),
    "gemma4": (r"[^\n]+|[\n]+",),
    "minicpm5": (r"\p{N}{1,3}", _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
}
# Pre-types sharing another's regex list.
for _alias, _same in {
    "refact": "starcoder", "command-r": "starcoder", "smollm": "starcoder", "codeshell": "starcoder",
    "exaone": "starcoder", "minerva": "starcoder", "mellum2": "starcoder",
    "mpt": "gpt2", "olmo": "gpt2", "jais": "gpt2", "trillion": "gpt2", "granite-docling": "gpt2",
    "stablelm2": "qwen2", "hunyuan": "qwen2", "solar-open": "qwen2",
    "bloom": "poro", "gpt3-finnish": "poro", "minimax-m2": "gpt-4o",
    "hunyuan-dense": "deepseek-v3", "joyai-llm": "deepseek-v3", "hy-v4": "deepseek-v3",
    "sarvam-moe": "gemma4",
}.items():
    PRE_REGEXES[_alias] = PRE_REGEXES[_same]


@dataclass(frozen=True)
class PreSettings:
    """What llama.cpp's vocab loader sets for one ``tokenizer.ggml.pre`` value."""
    pre_type: str
    clean_spaces: bool = True      # detokenize removes " ," " ." " 's" ... (BPE default)
    ignore_merges: bool = False    # a whole pre-token found in the vocab skips the merges
    add_bos: bool = False          # default of tokenizer.ggml.add_bos_token
    byte_encode: bool = True       # GPT-2 bytes-to-unicode (False: raw UTF-8 with \u2581 spaces)
    no_bos: bool = False           # the default BOS id is cleared (chatglm)
    regexes: tuple[str, ...] = field(default=())


def _p(pre_type, **kw):
    return PreSettings(pre_type=pre_type, regexes=PRE_REGEXES[pre_type], **kw)


_NOCLEAN = {"clean_spaces": False}
# tokenizer.ggml.pre -> settings, transcribed from llama.cpp's llama_vocab::impl::load.
PRE_NAMES: dict[str, PreSettings] = {}
for _names, _settings in [
    (("default",), _p("default")),
    (("minicpm5",), _p("minicpm5", ignore_merges=True)),
    (("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
      "jina-v5-nano"), _p("llama3", ignore_merges=True, add_bos=True)),
    (("deepseek-llm",), _p("deepseek-llm", **_NOCLEAN)),
    (("deepseek-coder",), _p("deepseek-coder", **_NOCLEAN)),
    (("deepseek-v3",), _p("deepseek-v3", **_NOCLEAN)),
    (("spark2_5",), _p("spark2_5", **_NOCLEAN)),
    (("youtu",), _p("youtu", clean_spaces=False, ignore_merges=True)),
    (("falcon",), _p("falcon")),
    (("mpt",), _p("mpt")),
    (("starcoder",), _p("starcoder")),
    (("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
      "mellum", "modern-bert", "exaone4", "jina-v1-en", "jina-v2-code", "roberta-bpe"), _p("gpt2")),
    (("jais-2",), _p("jais2")),
    (("gemma4", "granite-embed-multi-311m"), _p("gemma4", byte_encode=False)),
    (("sarvam-moe",), _p("sarvam-moe", clean_spaces=False, byte_encode=False)),
    (("refact",), _p("refact")),
    (("command-r",), _p("command-r", **_NOCLEAN)),
    (("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2"), _p("qwen2", **_NOCLEAN)),
    (("qwen35",), _p("qwen35", **_NOCLEAN)),
    (("megrez",), _p("qwen2")),
    (("stablelm2",), _p("stablelm2")),
    (("olmo",), _p("olmo")),
    (("dbrx",), _p("dbrx")),
    (("smaug-bpe",), _p("smaug")),
    (("poro-chat",), _p("poro", **_NOCLEAN)),
    (("glm4", "chatglm-bpe"), _p("chatglm4", no_bos=True)),
    (("viking",), _p("viking", **_NOCLEAN)),
    (("jais",), _p("jais")),
    (("tekken",), _p("tekken", clean_spaces=False, ignore_merges=True, add_bos=True)),
    (("smollm",), _p("smollm", **_NOCLEAN)),
    (("codeshell",), _p("codeshell")),
    (("bloom",), _p("bloom")),
    (("gpt3-finnish",), _p("gpt3-finnish")),
    (("exaone",), _p("exaone")),
    (("exaone-moe",), _p("exaone-moe")),
    (("chameleon",), _p("chameleon", clean_spaces=False, add_bos=True)),
    (("minerva-7b",), _p("minerva")),
    (("gpt-4o", "llama4", "kanana2", "talkie"), _p("gpt-4o", **_NOCLEAN)),
    (("granite-embed-multi-97m",), _p("granite-emb-multi", clean_spaces=False, ignore_merges=True)),
    (("tiny_aya", "cohere2moe"), _p("tiny-aya", **_NOCLEAN)),
    (("superbpe",), _p("superbpe", **_NOCLEAN)),
    (("trillion",), _p("trillion", **_NOCLEAN)),
    (("granite-docling",), _p("granite-docling", **_NOCLEAN)),
    (("bailingmoe", "bailingmoe2", "llada-moe"), _p("bailingmoe", **_NOCLEAN)),
    (("seed-coder",), _p("seed-coder", **_NOCLEAN)),
    (("hunyuan",), _p("hunyuan", **_NOCLEAN)),
    (("hunyuan-dense",), _p("hunyuan-dense", **_NOCLEAN)),
    (("hy_v4",), _p("hy-v4", **_NOCLEAN)),
    (("joyai-llm",), _p("joyai-llm", **_NOCLEAN)),
    (("ufakzeka",), _p("ufakzeka", **_NOCLEAN)),
    (("grok-2",), _p("grok-2", **_NOCLEAN)),
    (("afmoe",), _p("afmoe", **_NOCLEAN)),
    (("laguna",), _p("laguna", **_NOCLEAN)),
    (("minimax-m2",), _p("minimax-m2", **_NOCLEAN)),
    (("solar-open",), _p("solar-open", **_NOCLEAN)),
    (("mellum2",), _p("mellum2")),
]:
    for _name in _names:
        PRE_NAMES[_name] = _settings


# --- text collapsing -------------------------------------------------------------------

# llama.cpp's whitespace set (the Unicode White_Space property).
WHITESPACE_CPS = frozenset([*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                            0x2028, 0x2029, 0x202F, 0x205F, 0x3000])

_CAT_STANDIN = {"N": 0xD1, "L": 0xD2, "P": 0xD3, "M": 0xD4, "S": 0xD5}
# \p{X} -> stand-in byte plus the ASCII members llama.cpp lists for X (note: no '~' in S).
_CAT_CLASS = {
    "N": "\\xd1" + "0-9",
    "L": "\\xd2" + "A-Za-z",
    "P": "\\xd3" + r"!-#%-*,-/:-;?-@\[-\]_\{\}",
    "M": "\\xd4",
    "S": "\\xd5" + r"\$\+<->\^`\|",
}
_PROPS = {"N": "N", "L": "L", "P": "P", "M": "M", "S": "S",
          "Lu": "L", "Ll": "L", "Lt": "L", "Lm": "L", "Lo": "L"}


class _CollapseTable(dict):
    """str.translate table: code point -> collapsed code point, filled on demand."""

    def __missing__(self, cp):
        if cp < 128:
            out = cp
        elif cp in WHITESPACE_CPS:
            out = 0x0B
        else:
            out = _CAT_STANDIN.get(unicodedata.category(chr(cp))[0], 0xD0)
        self[cp] = out
        return out


class _WhitespaceTable(dict):
    """str.translate table: non-ASCII whitespace -> vertical tab, the rest unchanged."""

    def __missing__(self, cp):
        out = 0x0B if (cp >= 128 and cp in WHITESPACE_CPS) else cp
        self[cp] = out
        return out


_COLLAPSE = _CollapseTable()
_WS_ONLY = _WhitespaceTable()


def _translate_regex(expr: str) -> tuple[str, bool]:
    """Turn one llama.cpp regex into a Python `regex` pattern; returns (pattern, collapsed)."""
    collapsed = regex.search(r"\\p\{(?:N|L|P|M|S|Lu|Ll|Lt|Lm|Lo)\}", expr) is not None
    out = []
    inside = False
    i = 0
    while i < len(expr):
        c = expr[i]
        if c == "\\" and i + 1 < len(expr):
            m = regex.match(r"\\p\{([A-Za-z]+)\}", expr[i:])
            if collapsed and m and m.group(1) in _PROPS:
                cls = _CAT_CLASS[_PROPS[m.group(1)]]
                out.append(cls if inside else "[" + cls + "]")
                i += m.end()
                continue
            out.append(expr[i:i + 2])
            i += 2
            continue
        if c == "[" and not inside:
            inside = True
        elif c == "]" and inside:
            inside = False
        elif c == "$" and not inside:
            c = r"\Z"  # ECMAScript '$' is the end of the input only
        out.append(c)
        i += 1
    return "".join(out), collapsed


@dataclass
class _CompiledRegex:
    pattern: "regex.Pattern | None"
    collapsed: bool
    afmoe_digits: bool = False


def compile_regexes(exprs) -> list[_CompiledRegex]:
    compiled = []
    for expr in exprs:
        if expr == "<afmoe-digits>":
            compiled.append(_CompiledRegex(None, True, afmoe_digits=True))
            continue
        pattern, collapsed = _translate_regex(expr)
        compiled.append(_CompiledRegex(regex.compile(pattern, regex.ASCII), collapsed))
    return compiled


def _afmoe_digit_spans(text: str, start: int, end: int, out: list):
    """AFMoE's custom digit split: a run of n digits -> n % 3 digits, then groups of 3."""
    pos = start
    prev = start
    while pos < end:
        if text[pos] == "\xd1" or "0" <= text[pos] <= "9":
            run_start = pos
            while pos < end and (text[pos] == "\xd1" or "0" <= text[pos] <= "9"):
                pos += 1
            if run_start > prev:
                out.append((prev, run_start))
            cut = run_start + (pos - run_start) % 3
            if cut > run_start:
                out.append((run_start, cut))
            while cut < pos:
                out.append((cut, cut + 3))
                cut += 3
            prev = pos
        else:
            pos += 1
    if prev < end:
        out.append((prev, end))


def split(text: str, compiled: list[_CompiledRegex]) -> list[str]:
    """Split `text` into pre-tokens the way llama.cpp's unicode_regex_split does."""
    if not text:
        return []
    views = {}
    spans = [(0, len(text))]
    for rx in compiled:
        key = rx.collapsed
        view = views.get(key)
        if view is None:
            view = text.translate(_COLLAPSE if key else _WS_ONLY)
            views[key] = view
        new_spans = []
        for start, end in spans:
            if rx.afmoe_digits:
                _afmoe_digit_spans(view, start, end, new_spans)
                continue
            prev = start
            # pos/endpos bound the piece: lookarounds and \Z see its edges as the text's.
            for m in rx.pattern.finditer(view, start, end):
                s, e = m.span()
                if s > prev:
                    new_spans.append((prev, s))
                if e > s:
                    new_spans.append((s, e))
                prev = max(prev, e)
            if prev < end:
                new_spans.append((prev, end))
        spans = new_spans
    return [text[s:e] for s, e in spans]
