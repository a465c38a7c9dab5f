"""runtime.tokenizer against llama.cpp on hard inputs (tests/fixtures/tokenizer/llama-cpp-cases.json).

The fixture is written by build/tokenizer_cases.py with llama-cpp-python: the inputs where
differential fuzzing found us disagreeing with llama.cpp (cut down and since fixed) and
hard ones where we agreed, with llama.cpp's ids and detokenized text for each vocab-only
GGUF of the fixture directory. A case may change the vocab's metadata (a pre-tokenizer no
fixture vocab has, say); the generator gave llama.cpp a GGUF with the same change.
"""
import functools
import json
import unicodedata

import pytest

from runtime import gguf, pretokenize
from runtime.tokenizer import Tokenizer
from tests.conftest import FIXTURES

TOKDIR = FIXTURES / "tokenizer"
CASES = json.loads((TOKDIR / "llama-cpp-cases.json").read_text(encoding="utf-8"))["cases"]


@functools.lru_cache(maxsize=None)
def _metadata(vocab):
    return gguf.read(str(TOKDIR / vocab), vocab_only=True).metadata


@functools.lru_cache(maxsize=None)
def _tokenizer(vocab, changes):
    md = dict(_metadata(vocab))
    md.update(changes)
    return Tokenizer.from_metadata(md)


def _case_id(i, case):
    pre = case["metadata"].get("tokenizer.ggml.pre")
    name = case["vocab"].removeprefix("ggml-vocab-").removesuffix(".gguf") + (f"+{pre}" if pre else "")
    return f"{i}-{name}-{'special' if case['parse_special'] else 'plain'}"


@pytest.mark.parametrize("case", [pytest.param(c, id=_case_id(i, c)) for i, c in enumerate(CASES)])
def test_llama_cpp_case(case):
    tok = _tokenizer(case["vocab"], tuple(sorted(case["metadata"].items())))
    what = f"{case['text']!r} ({case['note']})"
    ids = tok.tokenize(case["text"], add_special=case["add_special"], parse_special=case["parse_special"])
    assert ids == case["ids"], f"tokenize {what}"
    assert tok.detokenize(ids) == case["detokenized"], f"detokenize {what}"
    assert tok.detokenize(ids, unparse_special=True) == case["detokenized_special"], f"detokenize {what}"
    dec = tok.decoder()
    streamed = "".join(dec.push(i) for i in ids) + dec.flush()
    assert streamed == case["detokenized"], f"streamed detokenize {what}"


def test_fixture_covers_every_vocab_and_the_fixed_cases():
    vocabs = {c["vocab"] for c in CASES}
    assert vocabs == {p.name for p in TOKDIR.glob("ggml-vocab-*.gguf")}
    pres = {c["metadata"].get("tokenizer.ggml.pre") for c in CASES}
    assert {"deepseek-v3", "afmoe", "tiny_aya", "gemma4"} <= pres


# --- the Unicode classes pretokenize carries ----------------------------------------------

@pytest.mark.parametrize("cp,cls", [
    (0x80, "C"), (0xE9, "L"), (0x0301, "M"), (0x0660, "N"), (0x00BF, "P"), (0x20AC, "S"),
    (0x4E00, "L"), (0x31350, "L"), (0x2EBF0, "L"), (0x1D2C0, "N"), (0x1FA75, "S"),
    (0x11F00, "M"), (0xE000, "C"), (0x10FFFF, "C"),
])
def test_unicode_class_examples(cp, cls):
    """Unicode 15.1 classes, whatever this interpreter's unicodedata says (3.11: 14.0)."""
    assert pretokenize.unicode_class(cp) == cls


def test_unicode_class_table_agrees_with_this_python_where_it_knows():
    """Every code point this interpreter's unicodedata assigns (Unicode 14.0 on 3.11,
    15.1 on 3.13) has that category's class in the table; the table's only additions
    are the code points assigned since. (On 3.13 this checks the whole table; a newer
    Unicode, 16.0 on 3.14, may assign code points that 15.1 leaves unassigned.)"""
    newer = tuple(map(int, unicodedata.unidata_version.split("."))) > (15, 1, 0)
    for cp in range(0x80, 0x110000):
        category = unicodedata.category(chr(cp))
        if category == "Cn":  # unassigned here; maybe assigned in 15.1
            continue
        c = category[0]
        got = pretokenize.unicode_class(cp)
        if got != (c if c in "NLPMS" else "C"):
            assert newer and got == "C", hex(cp)
