"""llama.cpp's infill sampler through the real server: `samplers` naming "infill", as
llama.vim and llama.vscode send on /infill (["top_k", "top_p", "infill"]).

The tiny fixture models have no fill-in-the-middle tokens, so /infill answers them 400
(test_api_llama); /completion reads `samplers` through the same code (server.py's
llama_requests), and is used here. top_k K and n_probs K: the K tokens n_probs lists
are the step's candidates, with their probabilities up to one factor. The reference of
tests/runtime/test_sampler_infill.py, on those and the tokens' texts, says which tokens
the step keeps: every token drawn must be one of them (or the end token, when it keeps
no text), where top-k alone draws any of the K.
"""
from tests.e2e.conftest import post_json
from tests.runtime.test_sampler_infill import ref_infill

K = 6
BODY = {"prompt": "Once upon a time", "n_predict": 24, "top_k": K, "top_p": 1.0, "n_probs": K,
        "samplers": ["top_k", "top_p", "infill"], "cache_prompt": False}


class WithoutTexts:
    """The tokenizer as the step would see it if no text started another: no merges."""

    def __init__(self, tok):
        self.eog_ids, self.eot_id, self.eos_id = tok.eog_ids, tok.eot_id, tok.eos_id

    def token_to_piece(self, t, special=False):
        return b""


def test_infill_draws_only_what_the_step_keeps(tiny_server, tiny_model):
    tok = tiny_model.tokenizer
    steps = merged = cut = 0
    unmerged = WithoutTexts(tok)
    for seed in range(6):
        status, r = post_json(tiny_server.url + "/completion", {**BODY, "seed": seed})
        assert status == 200, r
        for entry in r["completion_probabilities"]:
            cands = {t["id"]: t["logprob"] for t in entry["top_logprobs"]}
            assert len(cands) == K
            kept = ref_infill(cands, tok)
            assert entry["id"] in kept, (seed, entry["id"], kept, cands)
            steps += 1
            merged += set(kept) != set(ref_infill(cands, unmerged))
            cut += len(kept) < K
    # some steps kept other tokens for the merges, and most cut some of the K, or the
    # check above would prove little
    assert merged > 0 and cut > steps / 2, (steps, merged, cut)
