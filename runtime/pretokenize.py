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
  vertical tab if it is whitespace. The categories are llama.cpp's (Unicode 15.1), carried
  here rather than taken from ``unicodedata``, whose Unicode version changes with the
  interpreter. The ``\\p{..}`` classes become the stand-in byte plus the ASCII members
  llama.cpp lists for them.
* A regex without ``\\p{..}`` runs on the real text with non-ASCII whitespace turned into
  a vertical tab (C++ ``std::wregex`` only knows ASCII whitespace).
* ``\\s``, ``\\d``, ``\\w`` and ``\\b`` are ASCII-only there, so we compile with
  ``regex.ASCII``.

llama.cpp has hand-written splitters for the GPT-2 and Llama-3 regexes; they are meant to
be (and, for the cases that matter, are) identical to the regexes, so we run the regexes.
"""
from __future__ import annotations

import bisect
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
    # llama.cpp's source starts this class with U+4E00-9FFF, but the build we check against
    # (llama-cpp-python 0.3.36) matches all of U+4E00-FAFF with it (Yi, Hangul Jamo
    # Extended-B, private use...); we follow the build.
    "afmoe": ("<afmoe-digits>",
              "[\u4e00-\ufaff\u3400-\u4dbf\uf900-\ufaff\u3040-\u309f\u30a0-\u30ff\uff65-\uff9f\u2f00-\u2fdf\u0e40-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f\uaa60-\uaa7f\ua9e0-\ua9ff\uac00-\ud7af\u1100-\u11ff]+",
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
    force_bos: bool = False        # BOS is added even if tokenizer.ggml.add_bos_token is false
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
    (("gemma4", "granite-embed-multi-311m"), _p("gemma4", byte_encode=False, force_bos=True)),
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
# \p{X} -> stand-in byte plus the ASCII members llama.cpp lists for X.
_CAT_CLASS = {
    "N": "\\xd1" + "0-9",
    "L": "\\xd2" + "A-Za-z",
    "P": "\\xd3" + r"!-#%-*,-/:-;?-@\[-\]_\{\}",
    "M": "\\xd4",
    "S": "\\xd5" + r"\$\+<->\^`\|~",
}
_PROPS = {"N": "N", "L": "L", "P": "P", "M": "M", "S": "S",
          "Lu": "L", "Ll": "L", "Lt": "L", "Lm": "L", "Lo": "L"}


# The Unicode category class (N, L, P, M, S, or C for everything else: controls, format
# characters, unassigned) of every code point from U+0080 to U+10FFFF, as llama.cpp's
# tables have them: Unicode 15.1. Python's unicodedata follows the interpreter (3.10 has
# Unicode 13.0, 3.11 14.0, 3.14 16.0), and each version moves a few thousand code points
# between "unassigned" and a class, which changes the pre-tokens. Written as runs: a class
# letter, then the run's length in hex. `build/tokenizer_cases.py --unicode-table` (under
# a Python whose unicodedata is 15.1, e.g. 3.13) prints it.
_UNICODE_CLASS_RUNS = (
    "C21P1S5P1S2L1P1S1C1S4N2S1L1P2S1N1L1P1N3P1L17S1L1fS1L1caS4LcSeL5S7L1S1L1S11M70L5S1L2C2L4"
    "P1L1C4S2L1P1L3C1L1C1L14C1L53S1L8bS1M7La6C1L26C2L1P6L29P2C2S3C1M2dP1M1P1M2P1M2P1M1C8L1bC4"
    "L4P2C11S3P2S1P2S2MbP1C1P3L2bM15NaP4L2M1L63P1L1M7C1S1M6L2M2S1M4L2NaL3S2L1PeC2L1M1L1eM1bC2"
    "L59MbL1CeNaL21M9L2S1P3L1C2M1S2L16M4L1M9L1M3L1M5C2PfC1L19M3C2P1C1LbC5L18S1L6C9M8L2aM18C1"
    "M21L36M3L1M12L1M7LaM2P2NaP1L10M3C1L8C2L2C2L16C1L7C1L1C3L4C2M1L1M7C2M2C2M3L1C8M1C4L2C1L3"
    "M2C2NaL2S2N6S2L1P1M1C2M3C1L6C4L2C2L16C1L7C1L2C1L2C1L2C2M1C1M5C4M2C2M3C3M1C7L4C1L1C7NaM2"
    "L3M1P1CaM3C1L9C1L3C1L16C1L7C1L2C1L5C2M1L1M8C1M3C1M3C2L1CfL2M2C2NaP1S1C7L1M6C1M3C1L8C2L2"
    "C2L16C1L7C1L2C1L5C2M1L1M7C2M2C2M3C7M3C4L2C1L3M2C2NaS1L1N6CaM1L1C1L6C3L3C1L4C3L2C1L1C1L2"
    "C3L2C3L3C3LcC4M5C3M3C1M4C2L1C6M1CeNdS8C5M5L8C1L3C1L17C1L10C2M1L1M7C1M3C1M4C7M2C1L3C2L1C2"
    "L2M2C2NaC7P1N7S1L1M3P1L8C1L3C1L17C1LaC1L5C2M1L1M7C1M3C1M4C7M2C6L2C1L2M2C2NaC1L2M1CcM4L9"
    "C1L3C1L29M2L1M7C1M3C1M4L1S1C4L3M1N7L3M2C2N13S1L6C1M3C1L12C3L18C1L9C1L1C2L7C3M1C4M6C1M1C1"
    "M8C6NaC2M2P1CcL30M1L2M7C4S1L7M8P1NaP2C25L2C1L1C1L5C1L18C1L1C1LaM1L2M9L1C2L5C1L1C1M7C1Na"
    "C2L4C20L1S3PfS1P1S3M2S6N14S1M1S1M1S1M1P4M2L8C1L24C4M14P1M2L5MbC1M24C1S8M1S6C1S2P5S4P2C25"
    "L2bM14L1NaP6L6M4L4M3L1M3L2M7L3M4LdMcL1M1NaM4S2L26C1L1C5L1C2L2bP1L14dC1L4C2L7C1L1C1L4C2"
    "L29C1L4C2L21C1L4C2L7C1L1C1L4C2LfC1L39C1L4C2L43C2M3P9N14C3L10SaC6L56C2L6C2P1L26cS1P1L11C1"
    "L1aP2C3L4bP3N3L8C7L12M4C9L13M3P2C9L12M2CcLdC1L3C1M2CcL34M20P3L1P3S1L1M1C2NaC6NaC6PbM3C1"
    "M1NaC6L59C7L5M2L22M1L1C5L46CaL1fC1McC4McC4S1C3P2NaL1eC2L5CbL2cC4L1aC6NbC3S22L17M5C2P2L35"
    "MaC1M1dC2M1NaC6NaC6P7L1P6C2M1fC31M5L2fM11L8C3NaP7SaM9S9P2C1M3L1eMdL2NaL2cMeC8P4L24M14C3"
    "P5NaC3L3NaL24P2L9C7L2bC2L3P8C8M3P1M15L4M1L6M1L2M3L1C5Lc0M40L116C2L6C2L26C2L6C2L8C1L1C1L1"
    "C1L1C1L1fC2L35C1L7S1L1S3L3C1L7S3L4C2L6C1S3LdS3C2L3C1L7S2C11P18C8P14S1PdS1PcC11N1L1C2N6S3"
    "P2L1NaS3P2C1LdC3S21CfM21CfS2L1S4L1S2LaS1L1S3L5S6L1S1L1S1L1S1L4S1LbS2L4S5L5S4L1S1N33L2N5"
    "S2C4S178P4S1dP2SfcC19SbC15N3cS4eN16S268PeN1eS31P2S1fPaS193P16S3fP4S20P2S176C2S20C1S69Le5"
    "S6L4M3L2C5P4N1P2L26C1L1C5L1C2L38C7L1P1CeM1L17C9L7C1L7C1L7C1L7C1L7C1L7C1L7C1L7C1M20P2fL1"
    "P20S2PcC22S1aC1S59CcSd6C1aS10C1P3S1L2N1PaS2PcS1N9M6P1L5S2N3L2P1S2C1L56C2M2S2L3P1L5aP1L4"
    "C5L2bC1L5eC1S2N4SaL20S24CbS1L10S1fC1NaS1eN8S1NfS20NaS27NfS140L19c0S40L568dC3S37C9L2eP2"
    "L10dP3L10NaL2C14L2fM4P1MaP1L1fM2L46NaM2P6C8S17L9S2L67S2L40C5L2C1L1C1L5C18L10M1L3M1L4M1"
    "L17M5S4M1C3N6S4C6L34P4C8M2L32M12C8P2NaC6M12L6P3L1P1L2M1NaL1cM8P2L17MdCbP1L1dC3M4L2fMePd"
    "C1L1NaC4P2L5M1LaNaL5C1L29MeC9L3M1L8M2C2NaC2P4L17S3L1M3L32M1L1M3L2M2L5M2L1M1L1C18L3P2LbM5"
    "P2L3M2CaL6C2L6C2L6C9L7C1L7C1L2bS1LeS2C4L73M8P1M2C2NaC6L2ba4CcL17C4L31C2104L16eC2L6aC26L7"
    "CcL5C5L1M1LaS1LdC1L5C1L1C1L2C1L2C1L6cS11C10L16bP2S10L40C2L36C7S1C20LcS4M10PaC6M10P23C1Pe"
    "S1P1S3C1P1S1P2C4L5C1L87C4P3S1P6S1P4NaP2S3P2L1aP3S1P1S1L1aP1S1P1S1P7L59C3L6C2L6C2L6C2L3C3"
    "S7C1S7CdS2C2LcC1L1aC1L13C1L2C1LfC2LeC22L7bC5P3C4N2dC3S9N39S11N2S3C1SdC3S1C2fS2dM1C82L1d"
    "C3L31CfM1N1bC4L20N4C9L14N1L8N1C5L26M5C5L1eC1P1L24C4L8P1N5C2aL9eC2NaC6L24C4L24C4L28C8L34"
    "CbP1LbC1LfC1L7C1L2C1LbC1LfC1L7C1L2C43L137C9L16CaL8C18L6C1L2aC1L9C45L6C2L1C1L2cC1L2C3L1C2"
    "L17C1P1N8L17S2N7L1fC8N9C30L13C1L2C5N5L16N6C3P1L1aC5P1C40L38C4N2L2N10C2N2eL1M3C1M2C5M4L4"
    "C1L3C1L1dC2M3C4M1N9C7P9C7L1dN2P1L1dN3C20L8S1L1cM2C4N5P7C9L36C3P7L16C2N8L13C5N8L12C7P4Cc"
    "N7C50L49C37L33CdL33C7N6L24M4C8NaC126N1fC1L2aC1M2P1C2L2C4bM3L1dNaL1C8L16MbN4P5C16L12M4P4"
    "C26L15N7C14L17C9M3L35MfP7C4N1eM1L2M2L1C9M4L2dMbP2C1P4M1CdL19C7NaC6M3L24MeC1NaP4L1M2L1C8"
    "L23M1P2L1C9M3L30MeL4P4M4P1M2NaL1P1L1P3C1N14CbL12C1L19McP6M1L2M1C3eL7C1L1C1L4C1LfC1LaP1C6"
    "L2fMcC5NaC6M4C1L8C2L2C2L16C1L7C1L2C1L5C1M2L1M7C2M2C2M3C2L1C6M1C5L5M2C2M7C3M5C8bL35M12L4"
    "P5NaP2C1P1M1L3C1eL30M14L2P1L1C8NaCa6L2fM7C2M9P17L4M2C22L30M11P3L1CbNaC6PdC13L2bMdL1P1C6"
    "NaC36L1bC2MfC4NcP3S1L7Cb9L2cMfP1C64L40N13CcL8C2L1C2L8C1L2C1L18M6C1M2C2M4L1M1L1M2P3C9Na"
    "C46L8C2L27M7C2M7L1P1L1M1C1bL1MaL28M7L1M4P8M1C8L1MbL2eM10P3L1P5CdL49C7PaCf6L9C1L25M8C1M8"
    "L1P5CaN1dC3P2L1eC2M16C1MeC49L7C1L2C1L26M6C3M1C1M2C1M7L1M1C8NaC6L6C1L2C1L20M5C1M2C1M5L1C7"
    "NaC136L13M4P2C7M2L1M1LdC1L22M7C3M5PdNaC56L1CfN15S1dCdP1L39aC66N6fC1P5CbLc4Ca4cL61P2Cd"
    "L430C10M1L6MfCfaaL247C21b9L239C7L1fC1NaC4P2L4fC1NaC6L1eC2M5P1CaL30M7P5S4L4P1S1CaNaC1N7C1"
    "L15C5L13C2b0L40N17P4C65L4bC4M1L1M37C7M4LdC40L2P1L1M1CbM2CeL17f8C8L4d6C2aL9C22e7L4C1L7C1"
    "L2C1L123CfL1C1dL3C2L1CeL4C8L18cC904L6bC5LdC3L9C7LaC2S1M2P1C1260M2eC2M17C9S74C3cSf6CaS27"
    "C2S3cM5S3M6C8M8S2M7S1eM4S3dC15S42M3S1C7aN14CcN14CcS57C9N19C87L55C1L47C1L2C2L1C2L2C2L4C1"
    "LcC1L1C1L7C1L41C1L4C2L8C1L7C1L1cC1L4C1L5C1L1C3L7C1L154C2L19S1L19S1L1fS1L19S1L1fS1L19S1"
    "L1fS1L19S1L1fS1L19S1L8C2N32S200M37S4M32S8M1SeM1S2P5CfM5C1MfC450L1fC6L6Cd5M7C1M11C2M7C1M2"
    "C1M5C5L3eC21M1C70L2dC3M7L7C2NaC4L1S1C140L1eM1C11L2cM4NaC5S1C1d0L1cM4NaC2e6L7C1L4C1L2C1Lf"
    "C1Lc5C2N9M7C29L44M7L1C4NaC4P2C311N3bS1N3S1N4C4cN2dS1NfCc2L4C1L1bC1L2C1L1C2L1C1LaC1L4C1L1"
    "C1L1C6L1C4L1C1L1C1L1C1L3C1L2C1L1C2L1C1L1C1L1C1L1C1L1C1L2C1L1C2L4C1L7C1L4C1L4C1L1C1LaC1"
    "L11C5L3C1L5C1L11C34S2C10eS2cC4S64CcSfC2SfC1SfC1S25CaNdSa1C38S1dCdS2cC4S9C7S2CeS6C9aS3d8"
    "C4S11C3SdC3S77C4S5fC6ScC4S1CfScC4S38C8SaC6S28C8S1eC2S2C4eS154CcSeC2SdC3S9C7S2eC1S7C8SeC4"
    "S9C7S9C7S93C1S37C25NaC406La6e0C20L103aC6LdeC2L1682CeL1d31CfL26eC9a2L21eC5e2L134bC5L1060"
    "Cadd50Mf0C2fe10"
)


def _class_runs(packed: str) -> tuple[list[int], str]:
    """(first code point of each run, class letter of each run) from the packed runs."""
    starts, classes = [], []
    cp = 0x80
    for cls, length in regex.findall(r"([NLPMSC])([0-9a-f]+)", packed):
        starts.append(cp)
        classes.append(cls)
        cp += int(length, 16)
    if cp != 0x110000:
        raise ValueError(f"the Unicode class runs end at U+{cp:X}, not U+110000")
    return starts, "".join(classes)


_RUN_STARTS, _RUN_CLASSES = _class_runs(_UNICODE_CLASS_RUNS)


def unicode_class(cp: int) -> str:
    """llama.cpp's category class of a code point >= U+0080: one of "NLPMSC"."""
    return _RUN_CLASSES[bisect.bisect_right(_RUN_STARTS, cp) - 1]


class _CollapseTable(dict):
    """str.translate table: code point -> collapsed code point, filled on demand."""

    def __missing__(self, cp):
        if cp < 128:
            out = cp
        elif cp in WHITESPACE_CPS:
            out = 0x0B
        else:
            out = _CAT_STANDIN.get(unicode_class(cp), 0xD0)
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


# Regexes llama.cpp does not run as regexes but hands to its AFMoE digit splitter: its
# own marker, and Tiny Aya's digit grouping (whose \b would otherwise fail before a letter).
_DIGIT_SPLITTER_EXPRS = ("<afmoe-digits>", r"\d{1,3}(?=(?:\d{3})*\b)")


def compile_regexes(exprs) -> list[_CompiledRegex]:
    compiled = []
    for expr in exprs:
        if expr in _DIGIT_SPLITTER_EXPRS:
            compiled.append(_CompiledRegex(None, True, afmoe_digits=True))
            continue
        pattern, collapsed = _translate_regex(expr)
        compiled.append(_CompiledRegex(regex.compile(pattern, regex.ASCII), collapsed))
    return compiled


def _afmoe_digit_spans(text: str, start: int, end: int, out: list):
    """AFMoE's custom digit split: a run of n digits -> n % 3 digits, then groups of 3.

    llama.cpp's splitter only cuts after digits, so the text before a run stays glued to
    the run's first piece ("ab12345" -> "ab12", "345"). The later regexes split it again,
    but see the digit while they do: a space then a no-break space then "3" is " ",
    no-break space, "3" there, as the whitespace before the digit is not at a piece's end.
    """
    pos = start
    prev = start
    while pos < end:
        if text[pos] == "\xd1" or "0" <= text[pos] <= "9":
            run_start = pos
            while pos < end and (text[pos] == "\xd1" or "0" <= text[pos] <= "9"):
                pos += 1
            cut = run_start + ((pos - run_start) % 3 or 3)
            while cut <= pos:
                out.append((prev, cut))
                prev = cut
                cut += 3
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
