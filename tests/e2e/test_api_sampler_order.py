"""llama-server's `samplers` through the real server: the order reaches the sampler, as
names (with llama-server's aliases) or letters, unknown names skipped, and the default
order sent is no order sent. How each order chooses tokens is checked against a reference
in tests/runtime/test_sampler_order.py; here n_probs shows the model's distribution at
each step, and so which tokens a chain could have drawn.

min-p 0.5 keeps the tokens at least half as likely as the best one. After a temperature of
4 the probabilities are p^(1/4), renormalised: it then keeps p_i >= 0.5^4 p_best, many more.
"""
import json
import math

from runtime.sampling import DEFAULT_SAMPLERS
from tests.e2e.conftest import http_request, post_json

PROMPT = "Once upon a time"
HOT_MIN_P = {"prompt": PROMPT, "n_predict": 24, "temperature": 4.0, "top_k": 0, "top_p": 1.0,
             "min_p": 0.5, "n_probs": 1, "cache_prompt": False}
SLACK = 1e-9   # logprobs are rounded: a ratio at the bound may come out a hair below it


def completion(server, seed, **extra) -> dict:
    status, r = post_json(server.url + "/completion", {**HOT_MIN_P, "seed": seed, **extra})
    assert status == 200, r
    return r


def ratios_to_best(r) -> list:
    """Each drawn token's probability over the best token's, from n_probs."""
    return [math.exp(p["logprob"] - p["top_logprobs"][0]["logprob"])
            for p in r["completion_probabilities"]]


def test_temperature_before_min_p_lets_less_likely_tokens_through(tiny_server):
    first, after = [], []
    for seed in range(4):
        first += ratios_to_best(completion(tiny_server, seed, samplers=["temperature", "min_p"]))
        after += ratios_to_best(completion(tiny_server, seed))   # the default: min-p first
    assert min(after) >= 0.5 - SLACK
    assert min(first) >= 0.5 ** 4 - SLACK and min(first) < 0.5, first


def test_letters_aliases_and_unknown_names_give_the_same_chain(tiny_server):
    named = completion(tiny_server, 7, samplers=["temperature", "min_p"])
    for same in ("tm", "t?m", ["temp", "no_such_sampler", "Min-P"], ["TEMPERATURE", "minp"]):
        assert completion(tiny_server, 7, samplers=same)["content"] == named["content"], same
    assert completion(tiny_server, 7)["content"] != named["content"]


def test_the_default_order_sent_is_no_order_sent(tiny_server):
    body = {"temperature": 1.3, "top_k": 30, "min_p": 0.02, "typical_p": 0.95,
            "repeat_penalty": 1.2}
    plain = completion(tiny_server, 11, **body)["content"]
    for order in (list(DEFAULT_SAMPLERS), "edskypmxta", "edskypmxt"):
        assert completion(tiny_server, 11, **body, samplers=order)["content"] == plain, order
    assert completion(tiny_server, 11, **body, samplers="ta")["content"] != plain
    # the OpenAI route takes it as well
    chat = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 16,
            "seed": 5, "temperature": 2.0, "min_p": 0.5}  # OpenAI: at most 2
    status, a = post_json(tiny_server.url + "/v1/chat/completions", chat)
    status_b, b = post_json(tiny_server.url + "/v1/chat/completions",
                            {**chat, "samplers": "edskypmxt"})
    status_c, c = post_json(tiny_server.url + "/v1/chat/completions", {**chat, "samplers": "tm"})
    assert status == status_b == status_c == 200
    text = [x["choices"][0]["message"]["content"] for x in (a, b, c)]
    assert text[0] == text[1] != text[2]


def test_props_lists_the_order_and_a_wrong_type_is_a_400(tiny_server):
    status, _, body = http_request("GET", tiny_server.url + "/props")
    assert status == 200
    samplers = json.loads(body)["default_generation_settings"]["params"]["samplers"]
    assert samplers == ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p",
                        "xtc", "temperature", "adaptive_p"]
    status, r = post_json(tiny_server.url + "/completion", {"prompt": "hi", "samplers": 5})
    assert status == 400 and "'samplers'" in r["error"]["message"]
    assert "letters" in r["error"]["message"]
