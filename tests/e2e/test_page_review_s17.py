"""A fresh look at the page's changes of session 17 (a thinking model's reasoning, the
per-chat save count `rev`), as a user meets them; each test failed on the page before
its fix.

1. A tab of the page from before save counts (left open over an update) saves every chat
   without its `rev`. A newer tab showing a chat kept its own count, higher than the next
   save of that chat by another tab (which counts from none), took that save for an older
   copy written over its own, and wrote its older copy back over it.
2. Every past reply's reasoning went back to the server as reasoning_content, which the
   thinking models' templates do not show before the last question, and which the
   context cut does not count: a long chat with reasoning became too big for the server
   (413) at every message.
3. The keyboard on a reply's "Thinking" summary lost it, to the page, at the next frame
   of the reply and when the reply ended (the section was drawn anew; a redraw put the
   focus back on buttons and links only).
4. A reply that ended in its reasoning (max tokens) was said to no screen reader (only
   its answer was), and it folded its Thinking section, leaving nothing to read.

Helpers and fixtures are those of test_page.py, test_page_s17.py, test_page_tabs.py and
test_page_reasoning.py.
"""
from __future__ import annotations

from tests.e2e.conftest import require_chromium
from tests.e2e.test_page import open_page, send, set_settings, stored, wait_idle
from tests.e2e.test_page_a11y import RECORD_SAID, said
from tests.e2e.test_page_reasoning import REASONING, SCRIPT, page, thinking  # noqa: F401 - fixtures
from tests.e2e.test_page_s17 import TWO_CHATS
from tests.e2e.test_page_tabs import two_tabs

sync_api = require_chromium()

# Counts the tab's own writes of the chats (window.__saves).
COUNT_SAVES = """() => { window.__saves = 0; const set = Storage.prototype.setItem;
    Storage.prototype.setItem = function (k, v) {
        if (k === 'chatfile.conversations') window.__saves += 1;
        return set.call(this, k, v); }; }"""
# What a tab of the page from before `rev` writes: every chat, without it.
SAVE_AS_BEFORE_REV = """() => { const k = 'chatfile.conversations';
    const chats = JSON.parse(localStorage.getItem(k));
    chats.forEach((c) => { delete c.rev; });
    localStorage.setItem(k, JSON.stringify(chats)); }"""
MESSAGES_SHOWN = "(n) => document.querySelectorAll('[data-testid=message]').length === n"


def open_chat(pg, title):
    pg.locator("[data-testid=conv-open]", has_text=title).click()
    pg.wait_for_function("(t) => document.getElementById('conv-title').textContent === t", arg=title)


def test_a_tab_from_before_save_counts_does_not_make_another_tab_undo_a_reply(browser, server_url):
    ctx, (a, b) = two_tabs(browser, server_url)
    chats = [dict(c, rev=5) for c in TWO_CHATS]
    a.evaluate("(chats) => localStorage.setItem('chatfile.conversations', JSON.stringify(chats))", chats)
    open_page(a, server_url)
    open_chat(a, "chatx")
    open_page(b, server_url)
    open_chat(b, "chaty")
    a.evaluate(COUNT_SAVES)
    # A third tab, of the page from before: its save drops every chat's count.
    old = ctx.new_page()
    old.goto(server_url + "/health")
    old.evaluate(SAVE_AS_BEFORE_REV)
    b.wait_for_function("() => !JSON.parse(localStorage.getItem('chatfile.conversations'))[0].rev")

    # Tab B writes in chat x, which tab A shows and did not change.
    open_chat(b, "chatx")
    set_settings(b, **{"max-tokens": 4})
    send(b, "second question")
    wait_idle(b)
    a.wait_for_function(MESSAGES_SHOWN, arg=4)
    b.wait_for_function(MESSAGES_SHOWN, arg=4)
    chat = next(c for c in stored(b) if c["id"] == "chatx")
    assert [m["content"] for m in chat["messages"]][:3] == [
        "question in chatx", "answer in chatx", "second question"], chat
    assert a.evaluate("window.__saves") == 0, "tab A wrote its older copy of the chat back"
    ctx.close()
    assert not a.errors and not b.errors, (a.errors, b.errors)


def long_thinking_chat(turns, reasoning_chars):
    """A chat whose every reply carries `reasoning_chars` of reasoning: short turns, so
    that all of them fit the context, but more than 1 MiB in all."""
    messages = []
    for k in range(turns):
        messages += [{"role": "user", "content": f"question {k}"},
                     {"role": "assistant", "content": f"answer {k}",
                      "reasoning": f"thought {k} " + "x" * reasoning_chars}]
    return {"id": "thinker", "title": "thinker", "created": 1, "updated": 1, "messages": messages}


def test_a_long_chat_with_reasoning_can_still_be_sent_to(page, thinking):
    chat = long_thinking_chat(turns=12, reasoning_chars=100_000)
    page.evaluate("(c) => localStorage.setItem('chatfile.conversations', JSON.stringify([c]))", chat)
    open_page(page, thinking[0] + "/")
    open_chat(page, "thinker")
    send(page, "Thanks")
    wait_idle(page)
    assert page.is_hidden("[data-testid=error]"), page.text_content("[data-testid=error]")
    reply = stored(page)[0]["messages"][-1]
    assert (reply["role"], reply["content"]) == ("assistant", "Thanks"), reply
    sent = thinking[1].seen[-1]
    assert [m["content"] for m in sent[-2:]] == ["answer 11", "Thanks"]
    assert all("reasoning_content" not in m for m in sent), [sorted(m) for m in sent]


THINKING = "[data-testid=message][data-role=assistant] [data-testid=thinking]"
ON_THE_SUMMARY = f"""() => document.activeElement.matches('{THINKING} > summary')"""


def test_the_keyboard_stays_on_the_thinking_summary_as_the_reply_streams_and_ends(page, thinking):
    model = thinking[1]
    model.gate.clear()
    model.gate_at = SCRIPT.index("greet")   # the reasoning stops half way, for the test
    send(page, SCRIPT)
    page.locator(THINKING + " .thinking-text", has_text="I should").wait_for()
    page.focus(THINKING + " > summary")
    page.keyboard.press("Enter")   # the reader folds it while it streams
    assert page.evaluate(f"() => document.querySelector('{THINKING}').open") is False
    model.gate.set()
    wait_idle(page)
    page.locator(THINKING + " .thinking-text", has_text=REASONING).wait_for(state="attached")
    assert page.evaluate(ON_THE_SUMMARY), page.evaluate("document.activeElement.tagName")
    assert page.evaluate(f"() => document.querySelector('{THINKING}').open") is False
    page.keyboard.press("Enter")   # and opens it again, with the keyboard still there
    assert page.evaluate(f"() => document.querySelector('{THINKING}').open") is True


def test_a_reply_that_ends_in_its_reasoning_is_said_and_left_open(page, thinking):
    page.evaluate(RECORD_SAID)
    set_settings(page, **{"max-tokens": 12})   # the reply ends in its thought: "I sh"
    send(page, SCRIPT)
    wait_idle(page)
    page.wait_for_function("() => window.__said.some((t) => t.includes('only its thinking'))")
    assert any(t.startswith("Assistant") for t in said(page)), said(page)
    assert page.evaluate(f"() => document.querySelector('{THINKING}').open") is True
