"""Review of the reasoning budget and the content-only chat logprobs (session 18).

Served by test_api_reasoning's thinking parrot (its greedy reply is the script in the
request, one token per byte, so a character of several bytes is several tokens), under
Qwen3's template (the model writes `<think>`) or DeepSeek-R1-Distill's, which opens
`<think>` in the prompt.
"""
import pytest

from tests.e2e.conftest import http_request, sse_events
from tests.e2e.test_api_gaps_s18 import assert_streamed_lp_is_the_content, lp_text, whole_lp
from tests.e2e.test_api_reasoning import ask, qwen3, r1  # noqa: F401

THINKING = {"chat_template_kwargs": {"enable_thinking": True}}


@pytest.mark.parametrize("reply, content", [
    ("  <think>a b c</think>  \n x", "  x"),
    ("\n\n<think>x</think>\n\n<think>y</think>z", "\n\nz"),
])
def test_whitespace_before_a_think_the_model_writes_in_an_opened_thought_has_logprobs(
        r1, reply, content):
    """The prompt opened a thought and the model writes `<think>` itself after some
    whitespace: the split keeps that whitespace as content, so its tokens are listed
    in logprobs.content too (they were left out: the list did not spell the content)."""
    body = {"messages": ask(reply), **THINKING}
    c = whole_lp(r1[0], body)
    assert c["message"]["content"] == content
    assert lp_text(c["logprobs"]["content"]) == content
    assert_streamed_lp_is_the_content(r1[0], body, content)


def lp_bytes(entries) -> str:
    return b"".join(bytes(e["bytes"]) for e in entries).decode("utf-8", errors="replace")


def streamed_lp_bytes(url, body) -> tuple:
    """(content, the content logprobs' bytes as text) of a streamed reply."""
    status, _, data = http_request("POST", url + "/v1/chat/completions",
                                   {**body, "stream": True, "temperature": 0, "logprobs": True})
    assert status == 200, data[:300]
    choices = [e["choices"][0] for e in sse_events(data)[:-1] if e["choices"]]
    entries = [e for c in choices for e in (c["logprobs"] or {}).get("content") or []]
    return "".join(c["delta"].get("content") or "" for c in choices), lp_bytes(entries)


@pytest.mark.parametrize("reply, extra, content", [
    ("<think>x</think>\U0001F600 ok", {}, "\U0001F600 ok"),        # 4 byte tokens, 1 text
    ("<think>x</think>\n\n\u00e9t\u00e9", {}, "\u00e9t\u00e9"),
    ("<think>x</think>\n\nParis", {"stop": ["Pax"]}, "Paris"),  # "Pa" held for the stop
])
def test_tokens_whose_text_comes_later_after_the_thought_have_logprobs(
        qwen3, reply, extra, content):
    """After `</think>`, a token whose text comes out with a later token's (the first
    bytes of a character, text held for a stop string) is the content's when that text
    is: its entry was left out, so the bytes listed did not spell the content."""
    body = {"messages": ask(reply), **extra}
    c = whole_lp(qwen3[0], body)
    assert c["message"]["content"] == content
    assert lp_bytes(c["logprobs"]["content"]) == content
    assert streamed_lp_bytes(qwen3[0], body) == (content, content)
