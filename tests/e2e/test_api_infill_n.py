"""llama-server's `index` on every /completion and /infill result, and n_cmpl on /infill.

llama-server serves /infill through the same path as /completion: n_cmpl (or n) above 1
gives a JSON array of results, each with its `index`, completion j sampled with seed + j;
streamed, every chunk carries its result's `index`. A single result is one object, and it
has `"index": 0` too, streamed or not (llama-server's result objects always carry it).
The tiny fixture models have no fill-in-the-middle tokens: /infill runs on the real
Qwen2.5-Coder (which has them); the reference for result j is a single /infill request of
its own with seed + j.
"""
import pytest

from tests.e2e.conftest import post_json, start_server
from tests.e2e.test_api_choices import stream_http
from tests.e2e.test_api_llama_batch import GREEDY
from tests.e2e.test_api_semantics import bad_request

FILL = {"input_prefix": "# Ten words that rhyme with cat:\n# ", "input_suffix": "\n",
        "n_predict": 3, "temperature": 1.0, "seed": 31}


@pytest.fixture(scope="module")
def qwen_url(qwen_gguf_path):
    h = start_server(qwen_gguf_path, "--ctx", "512")
    yield h.url
    h.stop()


def stream_of(url, path, body) -> list:
    """A streamed llama-server answer's chunks (its stream has no [DONE])."""
    events = stream_http(url, path, body)
    assert events and "[DONE]" not in events
    return events


def by_index(events) -> dict:
    """{index: (the result's text, its last chunk)} of a llama-server stream."""
    out = {}
    for ev in events:
        text, last = out.get(ev["index"], ("", None))
        assert last is None, "a chunk after its result's stop: true"
        out[ev["index"]] = (text + ev["content"], ev if ev["stop"] else None)
    return out


def test_a_single_completion_result_has_index_0_streamed_or_not(tiny_server):
    url = tiny_server.url
    for prompt in ("a", ["a"], [[1, 2]]):  # one prompt, n 1: one object
        status, r = post_json(url + "/completion", {**GREEDY, "prompt": prompt, "n_cmpl": 1})
        assert status == 200 and isinstance(r, dict) and r["index"] == 0 and r["stop"], r
    body = {**GREEDY, "prompt": "Once upon a time"}
    _, whole = post_json(url + "/completion", body)
    events = stream_of(url, "/completion", body)
    assert all(ev["index"] == 0 for ev in events)
    assert by_index(events)[0][0] == whole["content"]
    # every chunk counts the tokens so far and the prompt's, as llama-server's do
    counts = [ev["tokens_predicted"] for ev in events if ev["tokens"]]
    assert counts == list(range(1, len(counts) + 1))
    assert counts[-1] <= events[-1]["tokens_predicted"] == whole["tokens_predicted"]
    assert {ev["tokens_evaluated"] for ev in events} == {whole["tokens_evaluated"]}


def test_infill_n_cmpl_results_are_single_requests_with_seed_plus_j(qwen_url):
    singles = []
    for j in range(3):
        status, r = post_json(qwen_url + "/infill", {**FILL, "seed": FILL["seed"] + j}, timeout=120)
        assert status == 200 and isinstance(r, dict) and r["index"] == 0, r
        singles.append(r)
    assert len({s["content"] for s in singles}) > 1  # sampled results differ
    status, r = post_json(qwen_url + "/infill", {**FILL, "n_cmpl": 3}, timeout=120)
    assert status == 200 and isinstance(r, list), r
    assert [res["index"] for res in r] == [0, 1, 2]
    assert [res["content"] for res in r] == [s["content"] for s in singles]
    assert [res["tokens"] for res in r] == [s["tokens"] for s in singles]
    assert {res["tokens_evaluated"] for res in r} == {singles[0]["tokens_evaluated"]}
    # streamed (and with llama-server's other name, n): each chunk with its result's
    # index, the results one after another (a single streamed result: the test above)
    got = by_index(stream_of(qwen_url, "/infill", {**FILL, "n": 3, "n_probs": 2}))
    assert {k: text for k, (text, _) in got.items()} == {k: s["content"] for k, s in enumerate(singles)}
    assert [got[k][1]["tokens_predicted"] for k in range(3)] == [s["tokens_predicted"] for s in singles]


def test_infill_n_limits_are_clear_400s(qwen_url):
    bad_request(qwen_url, "/infill", {**FILL, "n_cmpl": 129}, "'n_cmpl'", "128")
    bad_request(qwen_url, "/infill", {**FILL, "n": 2, "n_cmpl": 3}, "'n'", "'n_cmpl'")
    # best_of ranks candidates on /v1/completions only
    bad_request(qwen_url, "/infill", {**FILL, "n_cmpl": 2, "best_of": 3}, "'best_of'",
                "/v1/completions")
