"""Write tests/fixtures/tokenizer/llama-cpp-cases.json: llama.cpp's own ids for hard inputs.

    pip install llama-cpp-python==0.3.36      # llama.cpp, the reference
    python build/tokenizer_cases.py           # rewrites the fixture
    python3.13 build/tokenizer_cases.py --unicode-table

The inputs are the hard cases of a differential fuzzing run (tens of thousands of random
strings per vocabulary against llama.cpp): the ones where runtime.tokenizer disagreed,
cut down to a few characters, and a set of hard ones where it agreed. `COMMON` inputs are
tokenized with every vocab-only GGUF in tests/fixtures/tokenizer/; `FOUND` cases name one
vocab and may change its metadata (say ``tokenizer.ggml.pre``, to reach a pre-tokenizer
no fixture vocab has): llama.cpp then reads a copy of the GGUF with those key-values
rewritten, and tests/runtime/test_tokenizer_llama_cpp_cases.py applies the same change to
the metadata it hands to Tokenizer.

``--unicode-table`` prints runtime.pretokenize._UNICODE_CLASS_RUNS from the interpreter's
unicodedata, which must be Unicode 15.1 (Python 3.13), the version of llama.cpp's tables.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import struct
import sys
import tempfile
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKDIR = ROOT / "tests" / "fixtures" / "tokenizer"
OUT = TOKDIR / "llama-cpp-cases.json"
VOCABS = ("gpt-2", "llama-bpe", "llama-spm", "phi-3", "qwen2")
LLAMA_UNICODE_VERSION = "15.1.0"

# Hard inputs on which we agreed with llama.cpp, and the Unicode 15 ones we did not (the
# last group). Each is tokenized with (add_special, parse_special) off/off, and those with
# special-token text in them also on/on.
COMMON = [
    ("Hello world! It's 2024: 1234567 apples, 3.14159 and -0.5e10.", "prose, digit runs"),
    ("DON'T they'LL we'Re I'rE it'S you'VE 'd 'M ’s 'x ''", "contractions in every case"),
    ("  two leading, two trailing  ", "leading and trailing spaces"),
    ("a\r\nb\r\n\r\nc\rd\n\n\n \n\t\n", "line endings and newline runs"),
    ("x\u00a0y\u3000z\u2009w\u202fv\u205fu\u1680t\u0085s\u2028r\u2029q \u00a0 \t\u3000", "Unicode spaces"),
    ("中文混合English와 한국어 日本語のテキスト", "CJK, Hangul, kana, Latin"),
    ("مرحبا بالعالم ١٢٣ שָׁלוֹם עולם", "Arabic with its digits, Hebrew with points"),
    ("नमस्ते दुनिया १२३ สวัสดีชาวโลก ๑๒", "Devanagari, Thai, their digits"),
    ("👨‍👩‍👧‍👦👍🏽🏳️‍🌈🇯🇵🇩🇪 ❤️‍🔥1️⃣", "emoji: ZWJ, skin tones, flags, keycaps"),
    ("e\u0301 a\u0300\u0323 x\u20dd \u0301\u0301 ক্ষ", "combining marks, alone and stacked"),
    ("<|im_start|>user\nhi<|im_end|>\n<|endoftext|>", "ChatML special tokens"),
    ("<s>[INST] hi [/INST]</s> <unk> <s><s>", "SentencePiece special tokens"),
    ("<start_of_turn>user\nhi<end_of_turn> <|begin_of_text|><|eot_id|>", "Gemma and Llama-3 tokens"),
    ("<|user|> hi <|end|>\n<|assistant|>  x <|endoftext|>", "Phi-3 tokens (rstrip)"),
    ("<|im_start<|im_end|>|> <|<|endoftext|>", "broken and nested special tokens"),
    ("\x00\x01\x1f\x7f\x80\x9f\x00a\x00", "NUL and control characters"),
    ("1" * 40 + " " + "9" * 7 + " 12 123 1234", "long digit runs"),
    ("a" * 300, "one letter 300 times"),
    ("ab" * 60 + " " * 40 + "\n" * 20, "repeats and whitespace runs"),
    ("def f(x):\n    return x ** 2  # note\n\tpass\n\n\nclass A: ...\n", "code"),
    ("\ufffd\uffff\U0010ffff\ue000\U000e0001 \u200b\u200d\ufeff", "replacement, noncharacters, private use, format"),
    ("'''\"\"\"...!!!???,,,---===>>> ... , . ! ? 's 're 've ' 'm", "punctuation runs (and clean-up)"),
    ("$$ ^^ || ~~ `` ++ <= >= => ~/x ~'d =~", "ASCII symbols, '~' among them"),
    ("İstanbul ǅemal ﬁnance Straße ΣΊΣΥΦΟΣ ǈ K Å", "case oddities"),
    ("½ ² Ⅻ ① ３ 𝟗 ৴ ௰", "number-like characters"),
    ("𝐀𝐁𝐂 𝔸𝔹ℂ ｈｅｌｌｏ", "mathematical and fullwidth letters"),
    ("▁ hello▁world ▁▁ Ġx Ċ <0x41> <0x0A>", "vocab notation written in the text"),
    # Unicode 15.0/15.1 code points: Python 3.11's unicodedata (14.0) has them unassigned.
    ("\U00031350's", "CJK Extension H letter (Unicode 15.0) before 's"),
    ("a\U0002EBF0's", "CJK Extension I letter (Unicode 15.1) before 's"),
    ("\U0001D2C0's \U0001D2D3", "Kaktovik numerals (Unicode 15.0, No)"),
    ("G\U00031D06\n  \nx", "CJK Extension H letter before a newline run"),
    ("\U00011F04\U00011F50 \U0001E4D0's \U0001FA75 \U0001E030", "Kawi, Nag Mundari, new emoji, Cyrillic Ext-D"),
]
FLAGS = ((False, False), (True, True))

# Disagreements found by fuzzing pre-tokenizers no fixture vocab uses (on gpt-2's vocab,
# with tokenizer.ggml.pre rewritten), each cut down and fixed.
_PRE = "tokenizer.ggml.pre"
FOUND = [
    *[dict(vocab="gpt-2", metadata={_PRE: "deepseek-v3"}, text=t,
           note="'~' is one of llama.cpp's ASCII \\p{S} characters") for t in ("=~", " ~", "~'d")],
    dict(vocab="gpt-2", metadata={_PRE: "spark2_5"}, text=" ~ a~b",
         note="'~' is one of llama.cpp's ASCII \\p{S} characters"),
    dict(vocab="gpt-2", metadata={_PRE: "afmoe"}, text=" \u00a03",
         note="AFMoE's digit splitter glues the text before a digit run to its first piece"),
    dict(vocab="gpt-2", metadata={_PRE: "afmoe"}, text="ab 12345 x1 \u00a0\u00a0 123",
         note="AFMoE's digit splitter glues the text before a digit run to its first piece"),
    *[dict(vocab="gpt-2", metadata={_PRE: "afmoe"}, text=t,
           note="llama.cpp's AFMoE CJK class covers all of U+4E00-FAFF")
      for t in (" \u205f\uf059", " \u2007\ua000 \ud7b0", "a\ue000b\u3400")],
    *[dict(vocab="gpt-2", metadata={_PRE: "tiny_aya"}, text=t,
           note="Tiny Aya's digit regex is run by the AFMoE digit splitter (no \\b test)")
      for t in ("1111111i", "9972d", "6489O", "12345 678")],
    dict(vocab="gpt-2", metadata={_PRE: "gemma4", "tokenizer.ggml.add_bos_token": False}, text="hi",
         add_special=True, parse_special=False,
         note="Gemma 4's pre-tokenizer adds BOS whatever tokenizer.ggml.add_bos_token says"),
]


# --- GGUF key-value rewriting (vocab-only files: no tensors) ----------------------------

_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _value_end(buf: bytes, pos: int, vtype: int) -> int:
    """Where a GGUF value of type `vtype` starting at `pos` ends."""
    if vtype in _FIXED_SIZES:
        return pos + _FIXED_SIZES[vtype]
    if vtype == 8:  # string
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    if vtype == 9:  # array
        item_type, n = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if item_type in _FIXED_SIZES:
            return pos + n * _FIXED_SIZES[item_type]
        for _ in range(n):
            pos = _value_end(buf, pos, item_type)
        return pos
    raise ValueError(f"unknown GGUF value type {vtype}")


def _encode_value(value) -> bytes:
    if isinstance(value, bool):
        return struct.pack("<IB", 7, value)
    if isinstance(value, int):
        return struct.pack("<Ii", 5, value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return struct.pack("<IQ", 8, len(raw)) + raw
    raise TypeError(f"cannot write {value!r} as a GGUF value")


def rewrite_gguf(buf: bytes, changes: dict) -> bytes:
    """A copy of a tensor-less GGUF with the key-values in `changes` set (None: removed)."""
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", buf, 0)
    if magic != b"GGUF" or n_tensors:
        raise ValueError("not a vocab-only GGUF")
    pos, kvs = 24, {}
    for _ in range(n_kv):
        key_len = struct.unpack_from("<Q", buf, pos)[0]
        key = buf[pos + 8:pos + 8 + key_len].decode("utf-8")
        pos += 8 + key_len
        end = _value_end(buf, pos + 4, struct.unpack_from("<I", buf, pos)[0])
        kvs[key] = buf[pos:end]  # type and value, as stored
        pos = end
    for key, value in changes.items():
        if value is None:
            kvs.pop(key, None)
        else:
            kvs[key] = _encode_value(value)
    body = b"".join(struct.pack("<Q", len(k.encode())) + k.encode() + v for k, v in kvs.items())
    out = struct.pack("<4sIQQ", b"GGUF", version, 0, len(kvs)) + body
    return out + b"\0" * (-len(out) % 32)


# --- llama.cpp ------------------------------------------------------------------------

class Reference:
    """One vocabulary loaded by llama.cpp (through llama-cpp-python's C API)."""

    def __init__(self, path: Path):
        import llama_cpp
        self._api = llama_cpp
        self._llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        self._vocab = self._llm._model.vocab

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        raw = text.encode("utf-8")
        n_max = len(raw) + 8
        buf = (self._api.llama_token * n_max)()
        n = self._api.llama_tokenize(self._vocab, raw, len(raw), buf, n_max, add_special, parse_special)
        if n < 0:
            raise RuntimeError(f"llama_tokenize needs {-n} tokens for {text!r}")
        return list(buf[:n])

    def detokenize(self, ids: list[int], unparse_special: bool) -> str:
        arr = (self._api.llama_token * max(1, len(ids)))(*ids)
        size = 64 + 16 * len(ids)
        while True:
            out = ctypes.create_string_buffer(size)
            n = self._api.llama_detokenize(self._vocab, arr, len(ids), out, size, False, unparse_special)
            if n >= 0:
                return out.raw[:n].decode("utf-8", errors="replace")
            size = -n + 8


def _case(ref: Reference, vocab: str, metadata: dict, text: str, add_special: bool,
          parse_special: bool, note: str) -> dict:
    ids = ref.tokenize(text, add_special, parse_special)
    return {"vocab": f"ggml-vocab-{vocab}.gguf", "metadata": metadata, "text": text,
            "add_special": add_special, "parse_special": parse_special, "ids": ids,
            "detokenized": ref.detokenize(ids, False),
            "detokenized_special": ref.detokenize(ids, True), "note": note}


def build_cases() -> list[dict]:
    cases = []
    for vocab in VOCABS:
        ref = Reference(TOKDIR / f"ggml-vocab-{vocab}.gguf")
        for text, note in COMMON:
            for add_special, parse_special in (FLAGS if "<" in text else FLAGS[:1]):
                cases.append(_case(ref, vocab, {}, text, add_special, parse_special, note))
    with tempfile.TemporaryDirectory() as tmp:
        for i, found in enumerate(FOUND):
            src = (TOKDIR / f"ggml-vocab-{found['vocab']}.gguf").read_bytes()
            path = Path(tmp) / f"case-{i}.gguf"
            path.write_bytes(rewrite_gguf(src, found["metadata"]))
            ref = Reference(path)
            flags = [(found["add_special"], found["parse_special"])] if "add_special" in found else FLAGS
            for add_special, parse_special in flags:
                cases.append(_case(ref, found["vocab"], found["metadata"], found["text"],
                                   add_special, parse_special, found["note"]))
    return cases


# --- the Unicode class table of runtime.pretokenize ------------------------------------

def unicode_class_runs() -> str:
    """pretokenize._UNICODE_CLASS_RUNS's source lines, from this Python's unicodedata."""
    if unicodedata.unidata_version != LLAMA_UNICODE_VERSION:
        raise SystemExit(f"this Python has Unicode {unicodedata.unidata_version}; llama.cpp's "
                         f"tables are {LLAMA_UNICODE_VERSION}: run it with Python 3.13")

    def cls(cp):
        c = unicodedata.category(chr(cp))[0]
        return c if c in "NLPMS" else "C"

    runs, cp = [], 0x80
    while cp < 0x110000:
        c, n = cls(cp), 1
        while cp + n < 0x110000 and cls(cp + n) == c:
            n += 1
        runs.append(f"{c}{n:x}")
        cp += n
    lines, line = [], ""
    for run in runs:
        if len(line) + len(run) > 88:
            lines.append(line)
            line = ""
        line += run
    lines.append(line)
    return "\n".join(f'    "{line}"' for line in lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unicode-table", action="store_true",
                    help="print the Unicode class runs for runtime/pretokenize.py instead")
    args = ap.parse_args()
    if args.unicode_table:
        print(unicode_class_runs())
        return
    import llama_cpp
    cases = build_cases()
    data = {"generator": "build/tokenizer_cases.py",
            "llama_cpp_python": llama_cpp.__version__, "cases": cases}
    # one case a line: small diffs when the cases change
    head = json.dumps({k: v for k, v in data.items() if k != "cases"}, ensure_ascii=False)[:-1]
    lines = ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases)
    OUT.write_text(f'{head}, "cases": [\n{lines}\n]}}\n', encoding="utf-8")
    print(f"wrote {len(cases)} cases to {OUT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
