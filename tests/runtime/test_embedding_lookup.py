"""The token embedding's lookup in each memory mode (runtime/weights.py).

Quant mode reads the embedding's rows from the mapped file; f32 and int8 modes keep them
in memory, so that the file can go after the load (tests/runtime/test_file_lease.py). A
float32 model with a tied head (Gemma) reads them as the head's columns: those must be
the blocks' rows bit for bit, for every quant type, or the logits would move.
"""
import numpy as np
import pytest

from runtime import gguf
from runtime.model import Model
from runtime.weights import HeadColumns, QuantMatrix, WeightLoader
from tests.conftest import MODELS

FILES = sorted(MODELS.glob("tiny-*.gguf"))


def _blocks(g) -> QuantMatrix:
    t = g.tensors["token_embd.weight"]
    return QuantMatrix(g.raw("token_embd.weight"), t.ggml_type, t.shape)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_a_float32_head_s_columns_are_the_embedding_s_rows_bit_for_bit(path):
    g = gguf.read(path)
    blocks = _blocks(g)
    n_vocab, n_embd = blocks.shape
    head = WeightLoader(g, "f32", None).matrix(["token_embd.weight"], n_embd, [n_vocab])
    ids = np.array([0, n_vocab - 1, 7, 7, *range(1, n_vocab, 37)])
    rows = HeadColumns(head).take(ids)
    assert rows.flags.c_contiguous and rows.shape == (ids.size, n_embd)
    assert np.array_equal(rows, blocks.take(ids))


@pytest.mark.parametrize("mode", ["f32", "int8", "quant"])
def test_each_mode_looks_up_the_same_rows(mode):
    """Tied (Gemma 3) and untied (Llama): the rows every mode looks up are the file's."""
    for path in (MODELS / "tiny-gemma3-q4_k_m.gguf", MODELS / "tiny-llama-q5_0.gguf"):
        m = Model.load(path, mode=mode)
        ids = np.arange(m.n_vocab)
        assert np.array_equal(m.embd.take(ids), _blocks(gguf.read(path)).take(ids))
        tied = "output.weight" not in m.gguf.tensors
        assert isinstance(m.embd, HeadColumns) == (tied and mode == "f32")
