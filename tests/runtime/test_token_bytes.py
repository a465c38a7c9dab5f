"""One table of every token's bytes per tokenizer (runtime/token_bytes.py), shared by DRY's
breaker search (runtime/dry.py) and the JSON constraint's first-two-bytes filter
(runtime/json_constraint.py).

Each used to scan the whole vocabulary itself (0.4 s for Qwen's 151,936 tokens, each).
Here: the table is built once per tokenizer, however many users and threads ask at once,
and it, and what each user makes of it, equals what the tokenizer gives a token at a time
(token_to_piece), for the fixture vocabularies, stand-in tokenizers and both real models.
"""
from __future__ import annotations

import gc
import threading
import weakref

import pytest

from runtime import dry, json_constraint as jc, token_bytes
from runtime.dry import DRY_SEQUENCE_BREAKERS, dry_breakers_from_text
from runtime.tokenizer import Tokenizer, clean_spaces
from tests.runtime.test_json_constraint import PIECES, FakeTokenizer
from tests.runtime.test_samplers_dry import TINY, CountingTokenizer
from tests.runtime.test_tokenizer import TOKDIR, _metadata, _real_tokenizer

GPT2 = TOKDIR / "ggml-vocab-gpt-2.gguf"      # byte-level BPE, clean_spaces
PHI3 = TOKDIR / "ggml-vocab-phi-3.gguf"      # SPM, add_space_prefix
EXTRA_ROWS = 3      # a model's embedding rows past its tokenizer's vocabulary


def fresh(path) -> Tokenizer:
    """A tokenizer nothing has asked for a table yet."""
    return Tokenizer.from_metadata(_metadata(path))


class CountingTables(weakref.WeakKeyDictionary):
    """token_bytes' cache of tables, counting lookups: a build can wait until every
    thread has looked (and so is waiting for that build, or building too)."""

    def __init__(self):
        super().__init__()
        self.lookups = 0
        self.looked = threading.Condition()

    def get(self, key, default=None):
        with self.looked:
            self.lookups += 1
            self.looked.notify_all()
        return super().get(key, default)


def test_the_table_is_built_once_for_dry_json_and_threads_at_once(monkeypatch):
    tok = fresh(TINY)
    tables = CountingTables()
    monkeypatch.setattr(token_bytes, "_TABLES", tables)
    builds = []
    build = token_bytes._build
    n_threads = 4

    def counting_build(t, n):
        builds.append(t)
        # the first build's own second look, then every other thread's first: they all
        # ask while this one builds
        with tables.looked:
            tables.looked.wait_for(lambda: tables.lookups >= n_threads + 1, timeout=60)
        return build(t, n)

    monkeypatch.setattr(token_bytes, "_build", counting_build)
    start = threading.Barrier(n_threads)
    errors = []

    def ask(use):
        try:
            start.wait(timeout=60)
            use()
        except Exception as e:       # noqa: BLE001 (reported by the assertion below)
            errors.append(e)

    uses = [lambda: dry_breakers_from_text(tok, DRY_SEQUENCE_BREAKERS),
            lambda: jc.vocab_of(tok, tok.n_vocab).heads()] * (n_threads // 2)
    threads = [threading.Thread(target=ask, args=(use,)) for use in uses]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors and not any(th.is_alive() for th in threads)
    assert builds == [tok]
    # and later users (a new schema, new breakers, a constraint) find it too
    dry_breakers_from_text(tok, ["Once upon"])
    jc.TokenConstraint(jc.value_grammar(jc.ANY), tok, (), tok.n_vocab).candidates()
    assert builds == [tok]
    assert dry._vocab_texts(tok).texts.special is token_bytes.table_of(tok).special


# ---- the table and its users against token_to_piece, token by token --------------------

def dry_text_reference(tok, t: int) -> bytes:
    """DRY's text of a token as runtime/dry.py read it a token at a time: llama.cpp's
    detokenize of that token alone, special tokens written out."""
    piece = tok.token_to_piece(t, special=True)
    if tok.add_space_prefix and piece[:1] == b" ":
        piece = piece[1:]
    return clean_spaces(piece) if tok.clean_spaces else piece


def heads_reference(tok, n_vocab: int) -> tuple[list, list]:
    """Each token's first two bytes (-1, 256: none) of token_to_piece(t), as the JSON
    constraint read them a token at a time; rows past the vocabulary have none."""
    first, second = [-1] * n_vocab, [256] * n_vocab
    for t in range(n_vocab):
        try:
            piece = tok.token_to_piece(t)
        except (IndexError, ValueError, KeyError):
            continue
        if piece:
            first[t] = piece[0]
            if len(piece) > 1:
                second[t] = piece[1]
    return first, second


def check_against_token_to_piece(tok, n_vocab: int, dry_rule: bool = True) -> None:
    table = token_bytes.table_of(tok, n_vocab)
    n = len(table)
    assert table.starts[0] == 0 and table.starts[-1] == table.data.size
    assert list(table) == [tok.token_to_piece(t, special=True) for t in range(n)]
    is_special = getattr(tok, "is_special", lambda t: False)
    assert table.special.tolist() == [bool(is_special(t)) for t in range(n)]
    # the constraint's rule: a hidden (control) token has no bytes
    assert [b"" if h else p for h, p in zip(table.hidden.tolist(), table)] == \
        [tok.token_to_piece(t) for t in range(n)]
    first, second = jc.vocab_of(tok, n_vocab + EXTRA_ROWS).heads()
    assert (first.tolist(), second.tolist()) == heads_reference(tok, n_vocab + EXTRA_ROWS)
    if dry_rule:
        assert list(dry._vocab_texts(tok).texts) == [dry_text_reference(tok, t) for t in range(n)]


@pytest.mark.parametrize("path", [TINY, GPT2, PHI3], ids=["tiny-llama", "gpt-2", "phi-3"])
def test_fixture_vocabularies_agree_with_token_to_piece(path):
    tok = fresh(path)
    check_against_token_to_piece(tok, tok.n_vocab)


@pytest.mark.parametrize("fixture_name", ["qwen_gguf_path", "gemma_gguf_path"])
def test_real_models_agree_with_token_to_piece(request, fixture_name):
    tok = _real_tokenizer(request, fixture_name)
    check_against_token_to_piece(tok, tok.n_vocab)


def edited_gpt2(texts: dict) -> Tokenizer:
    """The gpt-2 fixture vocabulary with some tokens' texts replaced ({id: text})."""
    md = dict(_metadata(GPT2))
    tokens = list(md["tokenizer.ggml.tokens"])
    for t, text in texts.items():
        tokens[t] = text
    md["tokenizer.ggml.tokens"] = tokens
    return Tokenizer.from_metadata(md)


def test_a_text_outside_the_byte_alphabet_is_read_on_its_own():
    """A byte-level token whose text has a character no byte maps to renders as
    _bpe_decode_text's [UNK_BYTE_...]: the whole-vocabulary rendering gives way to the
    token-at-a-time one, with the same bytes."""
    tok = edited_gpt2({300: "abc€"})
    assert b"[UNK_BYTE_0x" in tok.token_to_piece(300)
    check_against_token_to_piece(tok, tok.n_vocab)


def test_every_clean_up_of_spaces_reaches_dry():
    """clean_spaces' three patterns (" ?", a lone " ' ", " 's"), one token each (Ġ is
    the byte-level space): only tokens holding a space before ?!.,' are cleaned."""
    tok = edited_gpt2({301: "xĠ?Ġ?", 302: "aĠ'Ġb", 303: "Ġ'sĠ're", 304: "Ġ'xĠ!"})
    assert [clean_spaces(tok.token_to_piece(t)) for t in (301, 302, 303, 304)] == \
        [b"x??", b"a'b", b"'s're", b" 'x!"]
    check_against_token_to_piece(tok, tok.n_vocab)


def test_both_space_rules_at_once():
    """DRY's texts drop the first space, then clean spaces, as detokenize does: an SPM
    vocabulary with clean_spaces set has both."""
    tok = fresh(PHI3)
    tok.clean_spaces = True
    assert any(clean_spaces(tok.token_to_piece(t)) != tok.token_to_piece(t) for t in range(tok.n_vocab))
    check_against_token_to_piece(tok, tok.n_vocab)


def test_stand_in_tokenizers_are_read_a_token_at_a_time():
    """A tokenizer without the whole-vocabulary rendering (the tests' stand-ins) gets
    the same table, from token_to_piece; without n_vocab, the model's count is used."""
    check_against_token_to_piece(FakeTokenizer(PIECES, special=(11, 13)), len(PIECES),
                                 dry_rule=False)
    counting = CountingTokenizer(fresh(TINY))
    check_against_token_to_piece(counting, counting.n_vocab)
    with pytest.raises(ValueError, match="n_vocab"):
        token_bytes.table_of(FakeTokenizer(PIECES))


def test_a_table_is_not_kept_past_its_tokenizer():
    tok = fresh(TINY)
    table = weakref.ref(token_bytes.table_of(tok))
    del tok
    gc.collect()
    assert table() is None
