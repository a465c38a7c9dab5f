"""Hostile but valid sampler settings through the server, as a client of llama-server
sends them: each gets its reply, where it got "inference failed: ValueError:
Probabilities contain NaN" (a 500) before (tests/runtime/test_samplers_qa.py has the
sampler's side)."""
from tests.e2e.conftest import post_json
# Every filter off leaves a banned token among the candidates, with probability 0.
from tests.runtime.test_samplers_more import NO_FILTERS as ALL_IN


def test_xtc_at_threshold_zero_with_a_banned_token_answers_every_choice(tiny_server):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "n": 2,
            "seed": 1, "xtc_probability": 1.0, "xtc_threshold": 0.0,
            "logit_bias": {"5": False}, **ALL_IN}
    for path in ("/v1/chat/completions", "/v1/completions"):
        body = dict(body, prompt="Hi") if path == "/v1/completions" else body
        status, r = post_json(tiny_server.url + path, body)
        assert status == 200, r
        assert [c["finish_reason"] for c in r["choices"]] == ["length"] * 2
    assert "Probabilities contain NaN" not in tiny_server.output()


def test_a_huge_temperature_and_dynatemp_range_on_completion_answers(tiny_server):
    """/completion takes any temperature; 1e308 + a range of 1e308 overflowed to inf.
    (ignore_eos: at such a temperature the end token is as likely as any other.)"""
    status, r = post_json(tiny_server.url + "/completion",
                          {"prompt": "Hi", "n_predict": 4, "temperature": 1e308, "seed": 1,
                           "ignore_eos": True, "dynatemp_range": 1e308,
                           "logit_bias": [[5, False]], **ALL_IN})
    assert status == 200 and r["tokens_predicted"] == 4, r
