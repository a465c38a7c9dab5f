"""The chat page and a thinking model: its reasoning (the server's reasoning_content) shows
as a "Thinking" section above the answer, open while it streams and closed once the
answer starts, as inert text; it is saved with the message, survives a reload, goes into
exports, and is sent back as reasoning_content with a Continue.

The server is the real app serving test_api_reasoning's parrot under Qwen3's template:
it replies with the text the user sends, and holds the answer back (a gate) until the
test has seen the reasoning stream in."""
from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import require_chromium
from tests.e2e.test_api_reasoning import QWEN3, serve_thinking
from tests.e2e.test_page import (current_conv, open_page, page_at, send, set_settings,
                                 wait_idle)

require_chromium()

REASONING = "I should greet <b>them</b> & <img src=x onerror=alert(1)>."
SCRIPT = "<think>\n" + REASONING + "\n</think>\n\nHello **there**!"


@pytest.fixture(scope="module")
def thinking():
    yield from serve_thinking(QWEN3)


@pytest.fixture
def page(browser, thinking):
    with page_at(browser, thinking[0] + "/", alerts_fail=True) as pg:
        try:
            yield pg
        finally:
            thinking[1].gate_at = None
            thinking[1].gate.set()


def test_reasoning_shows_open_while_it_streams_then_folds_under_the_answer(page, thinking):
    model = thinking[1]
    model.gate.clear()
    model.gate_at = SCRIPT.index("</think>")   # the answer waits for the test
    send(page, SCRIPT)
    box = page.locator("[data-testid=message][data-role=assistant] [data-testid=thinking]")
    box.locator(".thinking-text", has_text=REASONING).wait_for()
    assert box.evaluate("d => d.open") is True
    assert box.locator("summary").text_content() == "Thinking\u2026"
    body = page.locator("[data-testid=message][data-role=assistant] [data-testid=message-body]")
    assert "Hello" not in body.text_content()

    model.gate.set()
    wait_idle(page)
    page.wait_for_function("() => !document.querySelector('[data-testid=thinking]').open")
    assert box.locator("summary").text_content() == "Thinking"
    assert body.locator("strong").text_content() == "there"   # the answer is Markdown
    # The reasoning is text: the model's tags are characters, not elements.
    assert box.locator(".thinking-text").text_content() == REASONING
    assert box.locator(".thinking-text *").count() == 0
    # The reader may open it again; it stays open.
    box.locator("summary").click()
    assert box.evaluate("d => d.open") is True

    m = current_conv(page)["messages"][-1]
    assert (m["reasoning"], m["content"]) == (REASONING, "Hello **there**!")

    # Not sent back with the next question: Qwen3's template shows no reasoning of the
    # turns before the last question (a Continue sends it: see the test below).
    send(page, "Thanks")
    wait_idle(page)
    sent = [x for x in model.seen[-1] if x["role"] == "assistant"]
    assert "reasoning_content" not in sent[0]
    assert sent[0]["content"] == "Hello **there**!"

    # Saved: a reload (the store cleans what it reads) shows it again, folded.
    open_page(page, thinking[0] + "/")
    again = page.locator("[data-testid=message][data-role=assistant] [data-testid=thinking]").first
    assert again.locator(".thinking-text").text_content() == REASONING
    assert again.evaluate("d => d.open") is False

    # Exports: the JSON keeps it (Import reads it back), the Markdown quotes it.
    conv = current_conv(page)
    exported = json.loads(page.evaluate("c => ChatStore.exportJson(c)", conv))
    assert exported["messages"][1]["reasoning"] == REASONING
    back = page.evaluate("t => ChatStore.parseImport(t)", json.dumps(exported))
    assert back["convs"][0]["messages"][1]["reasoning"] == REASONING
    md = page.evaluate("c => ChatStore.exportMarkdown(c)", conv)
    assert "> *Thinking:*\n>\n> " + REASONING + "\n\nHello **there**!" in md


def test_a_reply_cut_mid_thought_is_kept_and_continued_as_reasoning(page, thinking):
    # max tokens 12: the reply ends inside its thought ("<think>\\n" and 4 bytes), no answer.
    set_settings(page, **{"max-tokens": 12})
    send(page, SCRIPT)
    wait_idle(page)
    m = current_conv(page)["messages"][-1]
    assert (m["reasoning"], m["content"], m.get("cut")) == ("I sh", "", "length")
    set_settings(page, **{"max-tokens": 512})
    page.click("[data-testid=continue]")
    wait_idle(page)
    m = current_conv(page)["messages"][-1]
    assert (m["reasoning"], m["content"]) == (REASONING, "Hello **there**!")
