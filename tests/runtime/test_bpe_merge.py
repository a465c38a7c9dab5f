"""runtime.tokenizer.merge_pairs: the merge loop both tokenizers share.

Its definition is the simple loop: merge the lowest-priority adjacent pair (the leftmost
on ties), repeat. The heap version must give the same symbols, and must not rescan the
word after every merge: that took 82 s for 100 KB of letters on Qwen's vocabulary.
"""
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import gguf
from runtime.tokenizer import Tokenizer, merge_pairs
from tests.conftest import ROOT


def merge_by_definition(symbols, priority, sep):
    syms = list(symbols)
    while True:
        best = None
        for i in range(len(syms) - 1):
            p = priority.get(syms[i] + sep + syms[i + 1])
            if p is not None and (best is None or p < best[0]):
                best = (p, i)
        if best is None:
            return syms
        i = best[1]
        syms[i:i + 2] = [syms[i] + syms[i + 1]]


@settings(max_examples=400, deadline=None)
@given(word=st.text(alphabet="abcab", max_size=40),
       table=st.dictionaries(st.text(alphabet="abc", min_size=2, max_size=6),
                             st.integers(0, 5), max_size=30))
def test_merges_as_the_definition_does(word, table):
    """Random merge tables, with ties between different pairs: the leftmost wins."""
    assert merge_pairs(list(word), table, "") == merge_by_definition(list(word), table, "")


def test_a_long_word_is_merged_in_linear_many_lookups():
    g = gguf.read(ROOT / "tests" / "fixtures" / "tokenizer" / "ggml-vocab-qwen2.gguf",
                  vocab_only=True)
    tok = Tokenizer.from_metadata(g.metadata)

    class CountingRanks(dict):
        lookups = 0

        def get(self, key, default=None):
            CountingRanks.lookups += 1
            return super().get(key, default)

    tok._ranks = CountingRanks(tok._ranks)
    rnd = random.Random(0)
    word = "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5000))
    ids = tok.tokenize(word, add_special=False)
    assert tok.detokenize(ids) == word
    # One lookup per starting pair and two per merge: under 3 per character. Rescanning
    # after every merge made about 580 per character here.
    assert CountingRanks.lookups < 3 * len(word), CountingRanks.lookups
