"""Review of Anthropic's Messages API (/v1/messages): what count_tokens counts must be
the prompt the reply is made from, whatever the request's fields change in it."""
import pytest

from tests.e2e.conftest import post_json
from tests.e2e.test_api_messages import ask
from tests.e2e.test_api_reasoning import QWEN3, serve_thinking


@pytest.fixture(scope="module")
def qwen3():
    yield from serve_thinking(QWEN3)


def test_count_tokens_reads_chat_template_kwargs(qwen3):
    """Qwen3's enable_thinking false adds an empty thought to the prompt: count_tokens
    counted the prompt without it, fewer tokens than the reply's input_tokens."""
    url = qwen3[0]
    body = {"model": "x", "messages": ask("Hi"),
            "chat_template_kwargs": {"enable_thinking": False}}
    status, m = post_json(url + "/v1/messages", {**body, "max_tokens": 20})
    assert status == 200, m
    status, plain = post_json(url + "/v1/messages/count_tokens",
                              {"model": "x", "messages": ask("Hi")})
    assert status == 200 and m["usage"]["input_tokens"] > plain["input_tokens"]
    status, counted = post_json(url + "/v1/messages/count_tokens", body)
    assert (status, counted) == (200, {"input_tokens": m["usage"]["input_tokens"]})
    # and a bad one is refused there too, not quietly counted without it
    status, r = post_json(url + "/v1/messages/count_tokens",
                          {**body, "chat_template_kwargs": {"messages": 1}})
    assert status == 400 and "chat_template_kwargs" in r["error"]["message"], r
