"""The chat page's tabs (runtime/web/app.js, onOtherTabSaved), eighteenth session: more
ways a tab's older copy of a chat was written over a newer one. Each is made in one page:
the other tab's save written to localStorage here, and its storage event dispatched
(as test_page_gaps_s12's last tests do).
"""
from __future__ import annotations

from tests.e2e.conftest import require_chromium
from tests.e2e.test_page import page, stored, wait_idle  # noqa: F401 - `page` is a fixture
from tests.e2e.test_page_reply_life import import_json

require_chromium()

# Another tab's save: the stored chats replaced by `chats`, and this tab told.
OTHER_TAB_SAVES = """(chats) => {
    const key = 'chatfile.conversations';
    localStorage.setItem(key, JSON.stringify(chats));
    window.dispatchEvent(new StorageEvent('storage', {key}));
}"""


def answered(page, text):
    """Sends `text`, waits for the whole reply -> the chat as stored."""
    page.fill("[data-testid=input]", text)
    page.press("[data-testid=input]", "Enter")
    wait_idle(page)
    (chat,) = stored(page)
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant"], chat
    assert not chat["messages"][-1].get("stopped"), chat
    return chat


def test_a_rename_from_the_save_made_while_the_reply_was_written_keeps_it_finished(page):
    """The writing tab's last save while it wrote held the whole reply (no word came
    after it), marked stopped, with the tab's mark; its final save only took the marks
    off. Another tab, one save behind, renames the chat: that save counts up to this
    tab's own, with the same text, and the chat stayed stopped (with Continue) and
    marked as being written, in every tab."""
    mine = answered(page, "Hello there")
    stale = dict(mine, title="Greetings", updated=mine["updated"] + 1000,
                 writingAt=mine["updated"], writingLocked=True,
                 messages=mine["messages"][:-1] + [dict(mine["messages"][-1], stopped=True)])
    page.evaluate(OTHER_TAB_SAVES, [stale])
    page.wait_for_function("() => document.getElementById('conv-title').textContent === 'Greetings'")
    (now,) = stored(page)  # (saved again as the event was heard)
    assert now["messages"] == mine["messages"] and "writingAt" not in now, now
    assert now["title"] == "Greetings" and now["rev"] == mine["rev"] + 1, now
    assert page.locator("[data-testid=stopped-note]").count() == 0


def test_a_renamed_chat_whose_reply_came_in_the_rename_is_not_saved_back_without_it(page):
    """A rename from a copy older than the stored chat (another tab's reply not heard of
    yet) saves the stored messages with the new name, and gave this tab's copy the new
    count, over its older messages. When a third save then came with the count before
    (a tab that had not heard of the rename saving its copy), this tab took its own
    copy for the newer one and saved its older messages over the reply."""
    import_json(page, {"title": "Hello", "messages": [{"role": "user", "content": "Hello there"}]})
    page.wait_for_function("() => document.getElementById('conv-title').textContent === 'Hello'")
    (chat,) = stored(page)
    answered_there = dict(chat, rev=chat["rev"] + 1, messages=chat["messages"] + [
        {"role": "assistant", "content": "General Kenobi"}])
    # The other tab's reply, saved; its storage event not heard yet.
    page.evaluate("(c) => localStorage.setItem('chatfile.conversations', JSON.stringify([c]))",
                  answered_there)
    page.click("[data-testid=rename]")
    page.fill("[data-testid=ask-input]", "Greetings")
    page.click("[data-testid=ask-ok]")
    page.wait_for_function("() => document.getElementById('conv-title').textContent === 'Greetings'")
    (renamed,) = stored(page)
    assert renamed["messages"] == answered_there["messages"], renamed
    # That tab saves again, its copy from before the rename (it had not heard of it).
    page.evaluate(OTHER_TAB_SAVES, [answered_there])
    (now,) = stored(page)
    assert now["messages"] == answered_there["messages"] and now["title"] == "Greetings", now
    assert page.locator("[data-testid=message]").count() == 2


def test_a_rename_just_after_an_older_copy_was_written_over_this_tabs_reply_keeps_it(page):
    """The other way round: the stored copy is older than this tab's (another tab wrote
    its copy from before this tab's reply, and this tab has not heard of it yet). The
    rename saves the stored messages with the new name, but this tab keeps its own, and
    saves them again when it hears of the older copy."""
    mine = answered(page, "Hello there")
    older = dict(mine, rev=mine["rev"] - 1, messages=mine["messages"][:1])
    page.evaluate("(c) => localStorage.setItem('chatfile.conversations', JSON.stringify([c]))", older)
    page.click("[data-testid=rename]")
    page.fill("[data-testid=ask-input]", "Greetings")
    page.click("[data-testid=ask-ok]")
    page.wait_for_function("() => document.getElementById('conv-title').textContent === 'Greetings'")
    page.evaluate("() => window.dispatchEvent(new StorageEvent('storage', {key: 'chatfile.conversations'}))")
    (now,) = stored(page)
    assert now["messages"] == mine["messages"] and now["title"] == "Greetings", now
    assert page.locator("[data-testid=message]").count() == 2
