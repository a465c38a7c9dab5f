"""OpenAI's legacy `best_of` on /v1/completions: best_of candidates are made for each
prompt (candidate j with seed + j, as n's choices are) and the n with the highest mean
token logprob come back, best first, with indexes 0..n-1; `usage.completion_tokens`
counts every candidate's tokens (OpenAI bills them all).

The reference for each candidate is a single request made through the same server with
its seed and `logprobs`: its mean `token_logprobs` is its score, so the ranking is
checked against the numbers `logprobs` reports, never against hard-coded texts.
"""
import pytest

from tests.e2e.conftest import post_json
from tests.e2e.test_api_choices import CHAT, CMPL, MSGS
from tests.e2e.test_api_semantics import bad_request

openai = pytest.importorskip("openai", reason="the openai client is not installed")

SAMPLED = {"temperature": 1.0, "max_tokens": 6, "seed": 7}


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.url + "/v1", api_key="x", max_retries=0, timeout=60)


def candidates(url, body, best_of) -> list:
    """Each candidate alone: (its mean token logprob, its choice, its usage), candidate j
    being the single request with seed + j."""
    out = []
    for j in range(best_of):
        status, r = post_json(url + CMPL, {**body, "seed": body["seed"] + j,
                                           "logprobs": max(body.get("logprobs", 0), 1)})
        assert status == 200, r
        lps = r["choices"][0]["logprobs"]["token_logprobs"]  # echo: the prompt's come first
        lps = lps[r["usage"]["prompt_tokens"] if body.get("echo") else 0:]
        assert lps, "a candidate without tokens: pick another seed"
        out.append((sum(lps) / len(lps), r["choices"][0], r["usage"]))
    return out


def top(cands, n) -> list:
    """The n best candidates' indexes, best first. The scores must be apart by more than
    the float noise between two runs of one candidate (a prompt evaluated whole or found
    in the cache: about 1e-6), or which one ranks first would be chance."""
    order = sorted(range(len(cands)), key=lambda j: -cands[j][0])
    scores = [cands[j][0] for j in order]
    assert all(a - b > 1e-3 for a, b in zip(scores, scores[1:])), "near-tie: pick another seed"
    return order[:n]


def test_best_of_returns_the_top_n_candidates_by_mean_logprob(client, tiny_server):
    cands = candidates(tiny_server.url, {"prompt": "The cat", **SAMPLED}, 4)
    want = top(cands, 2)
    assert want != [0, 1], "the ranking must change the order for this test to mean anything"
    r = client.completions.create(model="x", prompt="The cat", best_of=4, n=2, **SAMPLED)
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.text for c in r.choices] == [cands[j][1]["text"] for j in want]
    assert [c.finish_reason for c in r.choices] == [cands[j][1]["finish_reason"] for j in want]
    assert all(c.logprobs is None for c in r.choices)  # not asked for: ranked all the same
    # the prompt counted once; every candidate's tokens, returned or not
    assert r.usage.prompt_tokens == cands[0][2]["prompt_tokens"]
    assert r.usage.completion_tokens == sum(u["completion_tokens"] for _, _, u in cands)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # n left out is 1: the single best
    one = client.completions.create(model="x", prompt="The cat", best_of=4, **SAMPLED)
    assert [c.text for c in one.choices] == [cands[want[0]][1]["text"]]


def test_the_returned_choices_keep_their_logprobs_and_echo(tiny_server):
    body = {"prompt": "Once upon a", **SAMPLED, "seed": 11, "logprobs": 2, "echo": True}
    cands = candidates(tiny_server.url, body, 3)
    status, r = post_json(tiny_server.url + CMPL, {**body, "best_of": 3, "n": 2})
    assert status == 200, r
    # each returned choice is its candidate's single answer, the echoed prompt and its
    # logprobs included (only the first candidate evaluates them; every choice shows them)
    n_prompt = r["usage"]["prompt_tokens"]
    for c, j in zip(r["choices"], top(cands, 2)):
        alone = cands[j][1]
        assert (c["text"], c["finish_reason"]) == (alone["text"], alone["finish_reason"])
        for key in ("tokens", "text_offset"):
            assert c["logprobs"][key] == alone["logprobs"][key]
        assert [set(t) for t in c["logprobs"]["top_logprobs"][1:]] == \
            [set(t) for t in alone["logprobs"]["top_logprobs"][1:]]
        # (a candidate that found the prompt in the cache differs in the last digits)
        assert c["logprobs"]["token_logprobs"][1:] == \
            pytest.approx(alone["logprobs"]["token_logprobs"][1:], abs=1e-4)
        assert c["logprobs"]["token_logprobs"][:n_prompt] == \
            r["choices"][0]["logprobs"]["token_logprobs"][:n_prompt]
    assert [c["index"] for c in r["choices"]] == [0, 1]


def test_each_prompt_of_a_list_gets_its_own_best(tiny_server):
    prompts = ["The cat", "A dog"]
    per_prompt = [candidates(tiny_server.url, {"prompt": p, **SAMPLED}, 3) for p in prompts]
    status, r = post_json(tiny_server.url + CMPL, {"prompt": prompts, **SAMPLED, "best_of": 3})
    assert status == 200, r
    assert [c["index"] for c in r["choices"]] == [0, 1]
    assert [c["text"] for c in r["choices"]] == [cands[top(cands, 1)[0]][1]["text"]
                                                 for cands in per_prompt]
    assert r["usage"]["prompt_tokens"] == sum(c[0][2]["prompt_tokens"] for c in per_prompt)
    assert r["usage"]["completion_tokens"] == sum(u["completion_tokens"]
                                                  for c in per_prompt for _, _, u in c)


def test_best_of_limits_and_refusals_are_clear_400s(client, tiny_server):
    url = tiny_server.url
    with pytest.raises(openai.BadRequestError, match="'best_of' must be between 1 and 128"):
        client.completions.create(model="x", prompt="a", best_of=129)
    bad_request(url, CMPL, {"prompt": ["a", "b", "c"], "best_of": 50},
                "3 prompts × best_of=50", "150 candidates", "at most 128")
    bad_request(url, CMPL, {"prompt": "a", "n": 3, "best_of": 2}, "'best_of'", "at least")
    bad_request(url, CMPL, {"prompt": "a", "best_of": 3, "stream": True}, "'best_of'", "'stream'")
    # only OpenAI's legacy completions rank candidates
    bad_request(url, CHAT, {"messages": MSGS, "best_of": 2}, "'best_of'", "/v1/completions")
    bad_request(url, "/completion", {"prompt": "a", "best_of": 2}, "'best_of'", "/v1/completions")
    status, r = post_json(url + CMPL, {"prompt": ["a"] * 2, "best_of": 64, "max_tokens": 1})
    assert status == 200 and len(r["choices"]) == 2  # 2 × 64: the cap exactly
