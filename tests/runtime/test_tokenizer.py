"""runtime.tokenizer against llama.cpp's own tokenizations (tests/fixtures/tokenizer/).

Every fixture case must give llama.cpp's ids and llama.cpp's detokenized text, and the
streaming decoder must give that same text. The rest checks properties: error handling,
end-of-generation tokens, fill-in-the-middle layout, the clean-up of spaces, speed.
"""
import functools
import json
import random
import time
import warnings

import pytest
from hypothesis import given, settings, strategies as st

from runtime import gguf
from runtime import pretokenize
from runtime.tokenizer import (FIM_BATCH_TOK, FIM_SNIPPET_SEPARATOR, Tokenizer, TokenizerError,
                               clean_spaces)
from tests.conftest import FIXTURES

TOKDIR = FIXTURES / "tokenizer"
SMALL_FIXTURES = ("gpt-2", "llama-bpe", "llama-spm", "phi-3", "qwen2")


def _cases(name):
    data = json.loads((TOKDIR / f"{name}.json").read_text(encoding="utf-8"))
    return data["vocab"], data["cases"]


@functools.lru_cache(maxsize=None)
def _metadata(path):
    return gguf.read(str(path), vocab_only=True).metadata


@functools.lru_cache(maxsize=None)
def _tokenizer(path):
    return Tokenizer.from_metadata(_metadata(path))


def _check_case(tok, case):
    ids = tok.tokenize(case["text"], add_special=case["add_special"], parse_special=case["parse_special"])
    assert ids == case["ids"], f"tokenize({case['text']!r})"
    text = tok.detokenize(case["ids"])
    assert text == case["detokenized"], f"detokenize of {case['text']!r}"
    dec = tok.decoder()
    pieces = [dec.push(i) for i in case["ids"]] + [dec.flush()]
    assert "".join(pieces) == case["detokenized"], f"streamed detokenize of {case['text']!r}"
    if "\ufffd" not in case["detokenized"]:
        assert not any("\ufffd" in p for p in pieces)


_PARAMS = [pytest.param(name, i, id=f"{name}-{i}")
           for name in SMALL_FIXTURES for i in range(len(_cases(name)[1]))]


@pytest.mark.parametrize("name,index", _PARAMS)
def test_fixture_case(name, index):
    vocab, cases = _cases(name)
    _check_case(_tokenizer(TOKDIR / vocab), cases[index])


def test_gemma_real_model_cases(request):
    """gemma-3-270m.json uses the real Gemma model file as its vocabulary."""
    try:
        path = request.getfixturevalue("gemma_gguf_path")
    except pytest.FixtureLookupError:
        pytest.skip("no gemma_gguf_path fixture in tests/conftest.py (the real Gemma-3-270M model)")
    if path is None:
        pytest.skip("the real Gemma-3-270M model is not available")
    _, cases = _cases("gemma-3-270m")
    tok = Tokenizer.from_metadata(gguf.read(str(path), vocab_only=True).metadata)
    failures = []
    for case in cases:
        try:
            _check_case(tok, case)
        except AssertionError as e:
            failures.append(str(e).splitlines()[0])
    assert not failures, f"{len(failures)}/{len(cases)} Gemma cases differ: {failures[:5]}"


def _real_tokenizer(request, fixture_name):
    try:
        path = request.getfixturevalue(fixture_name)
    except pytest.FixtureLookupError:
        pytest.skip(f"no {fixture_name} fixture in tests/conftest.py")
    return Tokenizer.from_metadata(gguf.read(str(path), vocab_only=True).metadata)


@pytest.mark.parametrize("fixture_name,reference", [
    ("qwen_gguf_path", "qwen2.5-coder-0.5b-instruct.json"),
    ("gemma_gguf_path", "gemma-3-270m-q4_k_m.json"),
])
def test_real_model_prompts(request, fixture_name, reference):
    """tests/fixtures/real/: llama.cpp's prompt ids (add_special and parse_special on)."""
    tok = _real_tokenizer(request, fixture_name)
    data = json.loads((FIXTURES / "real" / reference).read_text(encoding="utf-8"))
    for entry in [*data["prompts"], data["all_positions"]]:
        assert tok.tokenize(entry["prompt"], add_special=True, parse_special=True) == entry["ids"]
        if "greedy_text" in entry:
            assert tok.detokenize(entry["greedy_ids"]) == entry["greedy_text"]


def test_fim_prompt_on_real_qwen_coder(request):
    """Qwen2.5-Coder has <|repo_name|> and <|file_sep|>: llama-server's repo-level layout."""
    tok = _real_tokenizer(request, "qwen_gguf_path")

    def ids(text):
        return tok.tokenize(text, add_special=False)
    special = {name: tok.token_id(f"<|{name}|>") for name in
               ("repo_name", "file_sep", "fim_prefix", "fim_suffix", "fim_middle")}
    repo, sep, pre, suf, mid = special.values()
    got = tok.fim_prompt("def f(", "):\n    pass\n", prompt="x",
                         extra=[("util.py", "import os\n"), ("b.py", "")])
    assert got == [repo, *ids("myproject\n"), sep, *ids("util.py\n"), *ids("import os\n"),
                   sep, *ids("b.py\n"), sep, *ids("filename\n"),
                   pre, *ids("def f("), *ids("x"), suf, *ids("):\n    pass\n"), mid]
    plain = tok.fim_prompt("a", "b")
    assert plain == [repo, *ids("myproject\n"), sep, *ids("filename\n"),
                     pre, *ids("a"), suf, *ids("b"), mid]
    assert {tok.token_id(t) for t in ("<|im_end|>", "<|endoftext|>", "<|fim_pad|>")} <= tok.eog_ids


# --- streaming ----------------------------------------------------------------------------

def test_stream_holds_back_split_utf8():
    """'ＡＢＣ' is "▁" + 9 byte tokens in llama-spm: each character arrives in 3 pushes."""
    tok = _tokenizer(TOKDIR / "ggml-vocab-llama-spm.gguf")
    ids = tok.tokenize("ＡＢＣ", add_special=False)
    assert len(ids) == 10 and all(len(tok.token_to_piece(i)) == 1 for i in ids[1:])
    dec = tok.decoder()
    pieces = [dec.push(i) for i in ids]
    assert pieces == ["", "", "", "Ａ", "", "", "Ｂ", "", "", "Ｃ"]
    assert "".join(pieces) + dec.flush() == tok.detokenize(ids)


def test_stream_incomplete_tail_flushes_like_detokenize():
    tok = _tokenizer(TOKDIR / "ggml-vocab-llama-spm.gguf")
    ids = tok.tokenize("ＡＢＣ", add_special=False)[:-1]  # cut inside the last character
    dec = tok.decoder()
    streamed = "".join(dec.push(i) for i in ids)
    assert "\ufffd" not in streamed
    assert streamed + dec.flush() == tok.detokenize(ids)


@pytest.mark.parametrize("vocab", ["ggml-vocab-gpt-2.gguf", "ggml-vocab-llama-bpe.gguf"])
def test_stream_with_clean_spaces(vocab):
    """gpt-2 and llama-bpe clean " ," and " 's": the stream must match the whole decode."""
    tok = _tokenizer(TOKDIR / vocab)
    assert tok.clean_spaces
    text = "He said , ' yes ' and it 's fine . Really ? They 're here , we 've gone !"
    ids = tok.tokenize(text, add_special=False)
    dec = tok.decoder()
    streamed = "".join(dec.push(i) for i in ids) + dec.flush()
    assert streamed == tok.detokenize(ids)
    assert streamed != text  # the clean-up did something


def _clean_reference(raw: bytes) -> bytes:
    """llama_detokenize's three clean-up passes, transcribed loop for loop."""
    text = bytearray(raw)
    n = len(text)
    total = 1 if n else 0
    for i in range(1, n):
        x = text[i]
        if text[i - 1] == 0x20 and x in b"?!.,":
            total -= 1
        text[total] = x
        total += 1
    n, total, i = total, (1 if total else 0), 1
    while i < n:
        x = text[i]
        if x == 0x27 and i + 1 < n and text[i - 1] == 0x20 and text[i + 1] == 0x20:
            total -= 1
            i += 1
            text[i] = 0
        text[total] = x
        total += 1
        i += 1
    n, total = total, (1 if total else 0)
    for i in range(1, n):
        x = text[i]
        if text[i - 1] == 0x20 and x == 0x27 and i + 1 < n:
            if text[i + 1] in b"sm" or (i + 2 < n and bytes(text[i + 1:i + 3]) in (b"re", b"ve")):
                total -= 1
        text[total] = x
        total += 1
    return bytes(text[:total])


_CLEAN_ALPHABET = st.binary(max_size=0) | st.lists(st.sampled_from(list(b" '?!.,smrevtdlax")), max_size=16).map(bytes)


@settings(max_examples=400, deadline=None)
@given(_CLEAN_ALPHABET)
def test_clean_spaces_matches_llama_cpp_loops(raw):
    assert clean_spaces(raw) == _clean_reference(raw)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["Ġ", "'", ",", ".", "s", "re", "ve", "'s", "!", "?", "a", "t", "Ġ'"]),
                max_size=12))
def test_stream_equals_detokenize_for_any_split(pieces):
    tok = _tokenizer(TOKDIR / "ggml-vocab-gpt-2.gguf")
    ids = [tok.token_id(p) for p in pieces]
    assert None not in ids
    dec = tok.decoder()
    assert "".join(dec.push(i) for i in ids) + dec.flush() == tok.detokenize(ids)


# --- special tokens, errors ---------------------------------------------------------------

def test_qwen2_end_of_generation_tokens():
    tok = _tokenizer(TOKDIR / "ggml-vocab-qwen2.gguf")
    for text in ("<|im_end|>", "<|endoftext|>"):
        tid = tok.token_id(text)
        assert tid is not None and tid in tok.eog_ids and tok.is_control(tid)
    assert tok.eos_id in tok.eog_ids
    assert tok.token_id("<|im_start|>") not in tok.eog_ids


def test_llama_bpe_adds_bos_and_spm_keeps_space_after_bos():
    bpe = _tokenizer(TOKDIR / "ggml-vocab-llama-bpe.gguf")
    assert bpe.tokenize("hi")[0] == bpe.bos_id
    assert _tokenizer(TOKDIR / "ggml-vocab-qwen2.gguf").tokenize("hi", add_special=True) == \
        _tokenizer(TOKDIR / "ggml-vocab-qwen2.gguf").tokenize("hi", add_special=False)
    spm = _tokenizer(TOKDIR / "ggml-vocab-llama-spm.gguf")
    assert spm.detokenize(spm.tokenize("Hello")) == " Hello"
    # remove_special drops the BOS but, as in llama.cpp, then keeps the leading space
    assert spm.detokenize(spm.tokenize("Hello"), remove_special=True) == " Hello"
    assert spm.detokenize(spm.tokenize("Hello", add_special=False)) == "Hello"


@pytest.mark.parametrize("bad", [-1, 10**9, "x", None])
def test_bad_token_ids_raise(bad):
    tok = _tokenizer(TOKDIR / "ggml-vocab-qwen2.gguf")
    with pytest.raises(TokenizerError):
        tok.detokenize([1, bad])
    with pytest.raises(TokenizerError):
        tok.token_to_piece(bad)
    with pytest.raises(TokenizerError):
        tok.decoder().push(bad)
    with pytest.raises(TokenizerError):
        tok.token_text(bad)


def test_out_of_range_message_names_the_id():
    tok = _tokenizer(TOKDIR / "ggml-vocab-qwen2.gguf")
    with pytest.raises(TokenizerError, match=str(tok.n_vocab)):
        tok.detokenize([tok.n_vocab])


def test_tokenize_rejects_non_text():
    with pytest.raises(TokenizerError):
        _tokenizer(TOKDIR / "ggml-vocab-qwen2.gguf").tokenize(b"bytes")


@pytest.mark.parametrize("change,message", [
    ({"tokenizer.ggml.model": None}, "tokenizer.ggml.model"),
    ({"tokenizer.ggml.model": "bert"}, "not supported"),
    ({"tokenizer.ggml.model": "klingon"}, "unknown"),
    ({"tokenizer.ggml.tokens": []}, "token list"),
    ({"tokenizer.ggml.merges": None}, "merges"),
])
def test_bad_metadata_raises(change, message):
    md = dict(_metadata(TOKDIR / "ggml-vocab-gpt-2.gguf"))
    for key, value in change.items():
        if value is None:
            md.pop(key)
        else:
            md[key] = value
    with pytest.raises(TokenizerError, match=message):
        Tokenizer.from_metadata(md)


def test_unknown_pre_tokenizer_warns_and_uses_default():
    md = dict(_metadata(TOKDIR / "ggml-vocab-qwen2.gguf"))
    md["tokenizer.ggml.pre"] = "no-such-pre-tokenizer"
    with pytest.warns(UserWarning, match="no-such-pre-tokenizer"):
        tok = Tokenizer.from_metadata(md)
    text = "DON'T STOP, 12345 apples!"
    ids = tok.tokenize(text, add_special=False)
    assert ids and tok.detokenize(ids) == text
    md["tokenizer.ggml.pre"] = "default"
    assert ids == Tokenizer.from_metadata(md).tokenize(text, add_special=False)
    # qwen2's own regex keeps "'T" together; the default one does not
    assert ids != _tokenizer(TOKDIR / "ggml-vocab-qwen2.gguf").tokenize(text, add_special=False)


def test_known_pre_tokenizer_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Tokenizer.from_metadata(_metadata(TOKDIR / "ggml-vocab-qwen2.gguf"))


@pytest.mark.parametrize("name", sorted(pretokenize.PRE_NAMES))
def test_every_pre_tokenizer_splits_losslessly(name):
    compiled = pretokenize.compile_regexes(pretokenize.PRE_NAMES[name].regexes)
    text = "Hello, World! It's 2024: 12345 ÄÖÜ naïve — 東京 \u00a0tab\there\r\n  end~ 'S ✓"
    pieces = pretokenize.split(text, compiled)
    assert "".join(pieces) == text and all(pieces)


# --- fill-in-the-middle -------------------------------------------------------------------

def _qwen2_vocab_with_fim_tokens():
    """The qwen2 vocab fixture predates Qwen's FIM tokens; Qwen2.5-Coder names them
    <|fim_prefix|> ...: give three unused slots those names. (tokenizer, their ids)"""
    md = dict(_metadata(TOKDIR / "ggml-vocab-qwen2.gguf"))
    tokens = list(md["tokenizer.ggml.tokens"])
    pads = [i for i, t in enumerate(tokens) if t.startswith("[PAD")][:3]
    for i, text in zip(pads, ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")):
        tokens[i] = text
    md["tokenizer.ggml.tokens"] = tokens
    return Tokenizer.from_metadata(md), pads


def test_fim_prompt_layout_on_qwen2_vocab():
    plain = Tokenizer.from_metadata(dict(_metadata(TOKDIR / "ggml-vocab-qwen2.gguf")))
    with pytest.raises(TokenizerError, match="fill-in-the-middle"):
        plain.fim_prompt("a", "b")
    tok, pads = _qwen2_vocab_with_fim_tokens()
    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    ids = tok.fim_prompt(prefix, suffix)
    pre, suf, mid = pads
    assert ids == [pre, *tok.tokenize(prefix, add_special=False), suf,
                   *tok.tokenize(suffix, add_special=False), mid]
    assert all(tok.is_control(t) for t in pads)
    # Without <|file_sep|>, other files' chunks are joined by llama-server's snippet line,
    # and they come first.
    with_extra = tok.fim_prompt(prefix, suffix, extra=[("a.py", "x = 1"), ("b.py", "y = 2")])
    snippet = tok.tokenize(FIM_SNIPPET_SEPARATOR, add_special=False)
    assert with_extra == [*snippet, *tok.tokenize("x = 1", add_special=False),
                          *snippet, *tok.tokenize("y = 2", add_special=False), *ids]


def test_fim_prompt_cuts_long_inputs_as_llama_server():
    tok, (pre, suf, mid) = _qwen2_vocab_with_fim_tokens()
    word = tok.tokenize(" word", add_special=False)
    assert len(word) == 1
    n = FIM_BATCH_TOK  # longer than either share
    ids = tok.fim_prompt(" word" * n, " word" * n, prompt=" word" * 10,
                         extra=[("a", " word" * n)], n_ctx=FIM_BATCH_TOK + 300, n_predict=50)
    n_extra = 300 - 2 * 50  # what the context leaves after one batch and twice n_predict
    n_prefix, n_suffix = 3 * FIM_BATCH_TOK // 4, FIM_BATCH_TOK // 4 - 2 - 10
    assert ids.index(pre) == n_extra and ids.index(suf) == n_extra + 1 + n_prefix + 10
    assert len(ids) == n_extra + 1 + n_prefix + 10 + 1 + n_suffix + 1 and ids[-1] == mid


def test_fim_prompt_adds_bos_when_the_vocab_does():
    md = dict(_metadata(TOKDIR / "ggml-vocab-llama-spm.gguf"))
    md["tokenizer.ggml.fim_pre_token_id"] = 3
    md["tokenizer.ggml.fim_suf_token_id"] = 4
    md["tokenizer.ggml.fim_mid_token_id"] = 5
    tok = Tokenizer.from_metadata(md)
    ids = tok.fim_prompt("x = ", "\n")
    assert ids[:2] == [tok.bos_id, 3] and ids[-1] == 5 and 4 in ids


# --- speed --------------------------------------------------------------------------------

def _pseudo_prose(tok, n_bytes, seed=0):
    """English-like text: Zipf-distributed vocabulary words, some glued into longer words."""
    rng = random.Random(seed)
    words = sorted({tok.token_text(i)[1:] for i in range(tok.n_vocab)
                    if tok.token_text(i).startswith("Ġ") and tok.token_text(i)[1:].isascii()
                    and tok.token_text(i)[1:].isalpha() and tok.token_text(i)[1:].islower()
                    and len(tok.token_text(i)) > 3})
    rng.shuffle(words)
    weights = [1.0 / (r + 1) for r in range(len(words))]
    out, size = [], 0
    while size < n_bytes:
        sentence = rng.choices(words, weights, k=rng.randint(5, 20))
        if rng.random() < 0.3:
            sentence[0] = sentence[0] + rng.choice(words)  # a rare, multi-merge word
        s = " ".join(sentence).capitalize() + rng.choice([".", ".", ",", "?", "!\n", ".\n\n"]) + " "
        out.append(s)
        size += len(s)
    return "".join(out)[:n_bytes]


def test_tokenize_100kb_of_prose_with_qwen():
    """Round-trips 100 KB; the time is printed (the bar is 1 s), never asserted: timings
    belong to `chatfile bench`, which also reports tokenizer speed."""
    md = _metadata(TOKDIR / "ggml-vocab-qwen2.gguf")
    text = _pseudo_prose(_tokenizer(TOKDIR / "ggml-vocab-qwen2.gguf"), 100_000)
    start = time.perf_counter()
    tok = Tokenizer.from_metadata(md)  # fresh: no cached words
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    ids = tok.tokenize(text)
    tokenize_s = time.perf_counter() - start
    print(f"\nqwen2 vocab: from_metadata {build_s:.2f} s, tokenize 100 KB {tokenize_s:.2f} s")
    assert tok.detokenize(ids) == text
    assert len(ids) < len(text) / 3  # real merges happened: prose is ~4+ bytes per token
