"""Several completions in one llama-server /completion request: a list of prompts, or
n_cmpl (n) above 1. llama-server answers them as a JSON array of its usual result
objects, each with its `index` (prompt-major: prompt i's completion j at i * n + j);
streamed, every chunk carries its result's `index`. The reference for each result is a
single request of its own made through the same server (with seed + j for completion j).
"""
import pytest

from tests.e2e.conftest import http_request, post_json, sse_events
from tests.e2e.test_api_llama import PROMPT, ids_of
from tests.e2e.test_api_semantics import bad_request

GREEDY = {"n_predict": 5, "temperature": 0}


def alone(url, body) -> dict:
    status, r = post_json(url + "/completion", body)
    assert status == 200 and isinstance(r, dict), r
    return r


def test_a_list_of_prompts_answers_an_array_of_results_in_order(tiny_server, tiny_model):
    url = tiny_server.url
    # llama-server's shapes: strings, token ids, and a mixed list are each one prompt
    prompts = ["Once upon a time", ids_of(tiny_model, PROMPT), [ids_of(tiny_model, "A")[0], "dog"]]
    singles = [alone(url, {**GREEDY, "prompt": p}) for p in prompts]
    for path in ("/completion", "/completions"):  # the alias too
        status, r = post_json(url + path, {**GREEDY, "prompt": prompts})
        assert status == 200 and isinstance(r, list) and len(r) == 3, r
        assert [res["index"] for res in r] == [0, 1, 2]
        assert [res["content"] for res in r] == [s["content"] for s in singles]
        for res, single in zip(r, singles):  # the fields of a single answer, plus index
            assert set(res) == set(single) | {"index"}
            assert res["tokens"] == single["tokens"] and res["stop"] is True
            assert res["tokens_evaluated"] == single["tokens_evaluated"]


def test_n_cmpl_results_are_single_requests_with_seed_plus_j(tiny_server):
    url = tiny_server.url
    body = {"prompt": "The cat", "n_predict": 8, "temperature": 1.0, "seed": 4321}
    singles = [alone(url, {**body, "seed": 4321 + j})["content"] for j in range(3)]
    assert len(set(singles)) > 1  # sampled results differ, as separate requests do
    for key in ("n_cmpl", "n"):
        status, r = post_json(url + "/completion", {**body, key: 3})
        assert status == 200 and [res["index"] for res in r] == [0, 1, 2], r
        assert [res["content"] for res in r] == singles
    # prompts × n_cmpl: prompt-major, prompt i's completion j at index i * n + j
    prompts = ["The cat", "A dog"]
    status, r = post_json(url + "/completion", {**body, "prompt": prompts, "n_cmpl": 2})
    assert status == 200 and [res["index"] for res in r] == [0, 1, 2, 3], r
    for i, p in enumerate(prompts):
        for j in range(2):
            assert r[i * 2 + j]["content"] == alone(url, {**body, "prompt": p, "seed": 4321 + j})["content"]


@pytest.mark.parametrize("n_probs", [0, 2])
def test_a_streamed_list_of_prompts_reassembles_per_index(tiny_server, n_probs):
    url = tiny_server.url
    prompts = ["Once upon a time", "The cat"]
    body = {**GREEDY, "n_probs": n_probs}
    singles = [alone(url, {**body, "prompt": p}) for p in prompts]
    status, headers, data = http_request("POST", url + "/completion",
                                         {**body, "prompt": prompts, "stream": True}, timeout=60)
    assert status == 200 and headers["content-type"].startswith("text/event-stream"), data[:300]
    evs = sse_events(data)
    assert "[DONE]" not in evs  # llama-server's own stream has none, as a single one here
    texts, ends = {}, {}
    for ev in evs:
        k = ev["index"]
        assert k not in ends, "a chunk after its result's stop: true"
        texts[k] = texts.get(k, "") + ev["content"]
        assert len(ev.get("completion_probabilities", [])) == (n_probs and len(ev["tokens"]))
        if ev["stop"]:
            ends[k] = ev
    assert texts == {k: s["content"] for k, s in enumerate(singles)}
    assert sorted(ends) == [0, 1]  # each result ends with a stop: true chunk of its own
    assert [ends[k]["tokens_predicted"] for k in (0, 1)] == [s["tokens_predicted"] for s in singles]


def test_above_the_cap_is_a_clear_400_and_a_single_prompt_stays_one_object(tiny_server):
    url = tiny_server.url
    bad_request(url, "/completion", {"prompt": ["a", "b", "c"], "n_cmpl": 50},
                "150 choices", "at most 128")
    bad_request(url, "/completion", {"prompt": ["a"] * 129}, "129 prompts", "at most 128")
    bad_request(url, "/completion", {"prompt": ["a", 3.5]}, "'prompt[1]'")
    # one prompt, n 1: one object, with index 0 (streamed too: test_api_infill_n)
    for prompt in ("a", ["a"], [[1, 2]]):
        r = alone(url, {**GREEDY, "prompt": prompt, "n_cmpl": 1})
        assert r["index"] == 0 and r["stop"] is True
