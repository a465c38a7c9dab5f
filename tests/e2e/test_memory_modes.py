"""The server in each memory mode: it says which one it loaded, and why when it chose.

int8 mode is a different approximation of the weights than float32, so its reference is
our own Model loaded in int8 mode (whose error against llama.cpp is bounded in
tests/runtime/test_parity.py)."""
import pytest

from runtime.model import Model
from tests.e2e.conftest import TINY, greedy_reference, post_json


def test_auto_mode_says_float32(tiny_server):
    assert "f32 weights)" in tiny_server.output()


@pytest.mark.parametrize("mode", ["int8", "quant"])
def test_a_forced_mode_serves_the_same_greedy_answer_as_the_model(server_factory, mode):
    h = server_factory(TINY, "--mode", mode)
    assert f"{mode} weights)" in h.output()  # forced: no "would not fit" explanation
    model = Model.load(TINY, mode=mode)
    ids = model.tokenize("The capital of France is")
    want_ids, want_text = greedy_reference(model, ids, 12, continuation=True)
    assert want_ids, "the reference ended at once: pick another prompt"
    status, body = post_json(h.url + "/completion",
                             {"prompt": ids, "n_predict": 12, "temperature": 0})
    assert status == 200, body
    assert body["content"] == want_text
