"""--cache-ram over HTTP: two conversations that take turns each keep their prompt.

The server's one session holds one conversation; without the host-memory cache, the
other conversation's request between two turns made the next turn read its whole prompt
again. Here the returning turn evaluates only what is new (timings' cache_n and
prompt_n), and /slots says what the cache holds.
"""
import numpy as np
import pytest

from tests.e2e.conftest import TINY, post_json, start_server
from tests.e2e.test_api_llama import _slots

CACHE_RAM_MIB = 8


@pytest.fixture(scope="module")
def cache_server():
    h = start_server(TINY, "--cache-ram", CACHE_RAM_MIB)
    yield h
    h.stop()


def _completion(url, ids, n_predict=0):
    status, r = post_json(url + "/completion", {"prompt": ids, "n_predict": n_predict,
                                                "temperature": 0})
    assert status == 200, r
    return r


def _two_conversations(seed):
    rng = np.random.default_rng(seed)
    a = [1] + [int(x) for x in rng.integers(3, 500, 120)]
    b = [1] + [int(x) for x in rng.integers(3, 500, 110)]
    return a, b, [int(x) for x in rng.integers(3, 500, 5)]


def test_alternating_conversations_evaluate_only_their_new_tokens(cache_server):
    url = cache_server.url
    a, b, more = _two_conversations(21)
    _completion(url, a)
    _completion(url, b)  # drops a from the session: saved first
    slot = _slots(url)["prompt_cache"]
    assert slot["prompts"] == 1 and slot["tokens"] == len(a)
    assert 0 < slot["bytes"] <= slot["limit_bytes"] == CACHE_RAM_MIB << 20
    t = _completion(url, a + more)["timings"]
    assert (t["cache_n"], t["prompt_n"]) == (len(a), len(more))
    t = _completion(url, b + more)["timings"]
    assert (t["cache_n"], t["prompt_n"]) == (len(b), len(more))
    # what comes out of a restored state is what a fresh prefill gives
    cached = _completion(url, a + more + [7], n_predict=6)
    status, fresh = post_json(url + "/completion", {"prompt": a + more + [7], "n_predict": 6,
                                                    "temperature": 0, "cache_prompt": False})
    assert cached["timings"]["cache_n"] == len(a) + len(more)
    assert cached["content"] == fresh["content"]


def _chat(url, messages):
    status, r = post_json(url + "/v1/chat/completions",
                          {"messages": messages, "max_tokens": 12, "temperature": 0})
    assert status == 200, r
    return r


def test_a_chat_that_comes_back_reads_only_its_new_turn(cache_server):
    url = cache_server.url
    first = [{"role": "user", "content": "Tell me a long story about " + "a red fox and a river, " * 3}]
    other = [{"role": "user", "content": "Write a title for " + "a green hill under the sun, " * 3}]
    r1 = _chat(url, first)
    _chat(url, other)  # a side request between two turns
    second = first + [{"role": "assistant", "content": r1["choices"][0]["message"]["content"]},
                      {"role": "user", "content": "And then?"}]
    r2 = _chat(url, second)
    t = r2["timings"]
    # the first turn's prompt came back from the cache: only the reply and the new turn
    # are evaluated (a reply read back may tokenize differently from how it was made)
    assert t["cache_n"] >= r1["usage"]["prompt_tokens"]
    assert t["prompt_n"] <= r2["usage"]["prompt_tokens"] - r1["usage"]["prompt_tokens"]


def test_with_cache_ram_0_the_returning_conversation_is_read_again(server_factory):
    url = server_factory(TINY, "--cache-ram", "0").url
    a, b, more = _two_conversations(22)
    _completion(url, a)
    _completion(url, b)
    assert "prompt_cache" not in _slots(url)
    t = _completion(url, a + more)["timings"]
    assert t["cache_n"] == 1 and t["prompt_n"] == len(a) + len(more) - 1  # the BOS alone
