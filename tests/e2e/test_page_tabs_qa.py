"""The chat page (runtime/web/) as someone with several tabs and windows uses it: what
was lost or written twice, each test failing on the page before its fix.

1. A tab without Web Locks (a page loaded before locks came, still open; or one opened
   where they are missing) writing a reply beside a tab that has them: that tab ignored
   the writer's marks, showed the reply as stopped with Continue, and a message sent
   there was then overwritten by the writer's next save.
2. An edit being typed in one tab went, text and all, as soon as another tab wrote in
   that chat (a message sent, a reply coming): the chat was drawn again without it.
3. A chat a tab could not save (the browser's storage was full) went from that tab, with
   its messages, when another tab saved once there was room again; the next message
   went into another chat.

Helpers and fixtures are those of test_page.py, test_page_reply_life.py, test_page_tabs.py
and test_page_locks.py.
"""
from __future__ import annotations

from tests.e2e.conftest import require_chromium
from tests.e2e.test_page import (TIMEOUT_MS, current_conv, open_page, record_chat_requests,
                                 send, set_settings, stored, wait_idle)
from tests.e2e.test_page_locks import NO_LOCKS, shown_as_written_elsewhere
from tests.e2e.test_page_reply_life import LAST_REPLY_LEN, full_speed, start_slow_reply
from tests.e2e.test_page_tabs import (ELSEWHERE, SAVED_WITH_WORDS, held_while_written_elsewhere,
                                      two_tabs, whole_reply_reaches_the_other_tab)

sync_api = require_chromium()


def tab(ctx, url, init_script=None):
    """A tab of browser context `ctx` showing the page (after `init_script` has run in
    it, when given), its JavaScript errors kept in .errors."""
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    if init_script:
        pg.add_init_script(init_script)
    pg.errors = []
    pg.on("pageerror", lambda e, errs=pg.errors: errs.append(str(e)))
    open_page(pg, url)
    return pg


# ---------------------------------------------------------------------------------------
# 1. A tab without locks beside one with them.

def test_a_reply_written_in_a_tab_without_locks_is_shown_as_such_in_one_with_them(browser, server_url):
    ctx = browser.new_context()
    old = tab(ctx, server_url, NO_LOCKS)
    new = tab(ctx, server_url)
    assert old.evaluate("() => navigator.locks") is None
    assert new.evaluate("() => !!navigator.locks")
    cdp = start_slow_reply(old, "Hello there")
    old.wait_for_function(SAVED_WITH_WORDS)
    new.wait_for_function(f"() => ({LAST_REPLY_LEN})() > 0")
    assert old.is_visible("[data-testid=stop]"), "the reply had ended: the test proves nothing"
    # The tab with locks shows the reply as being written elsewhere, offers nothing that
    # would write it again, and keeps a message for that chat in the box.
    new.wait_for_selector(ELSEWHERE)
    shown_as_written_elsewhere(new)
    bodies = held_while_written_elsewhere(new, "a question from the other tab")

    # The reply ends: shown whole, once; the kept message then goes after it.
    final = whole_reply_reaches_the_other_tab(old, new, cdp)
    send(new, "a question from the other tab")
    wait_idle(new)
    assert len(bodies) == 1
    sent = [m["content"] for m in current_conv(new)["messages"][:3]]
    assert sent == ["Hello there", final["content"], "a question from the other tab"], sent
    ctx.close()
    assert not old.errors and not new.errors, (old.errors, new.errors)


# ---------------------------------------------------------------------------------------
# 2. An edit being typed while another tab writes in the chat.

EDIT = "[data-testid=edit-input]"


def test_an_edit_being_typed_stays_while_another_tab_writes_in_the_chat(browser, server_url):
    ctx, (a, b) = two_tabs(browser, server_url)
    set_settings(a, **{"max-tokens": 4})
    send(a, "first")
    wait_idle(a)
    b.wait_for_selector("[data-testid=message][data-role=assistant]")
    b.locator("[data-testid=edit]").first.click()
    b.fill(EDIT, "my careful edit")
    bodies_b = record_chat_requests(b)

    # Tab A writes a reply in this chat: B draws it as written there, the edit box kept.
    cdp = start_slow_reply(a, "Hello there")
    b.wait_for_selector(ELSEWHERE)
    assert b.input_value(EDIT) == "my careful edit"
    # Sent now, the edit would cut the chat under A's reply: it waits in its box.
    b.press(EDIT, "Enter")
    b.wait_for_selector("[data-testid=notice]:has-text('send your edit once it is finished')")
    assert b.input_value(EDIT) == "my careful edit"
    assert bodies_b == []

    # A's reply ends: B shows it, the edit box still open; the edit then goes.
    full_speed(cdp)
    wait_idle(a)
    b.wait_for_selector(ELSEWHERE, state="detached")
    b.wait_for_function("() => document.querySelectorAll('[data-testid=message]').length === 4")
    assert b.input_value(EDIT) == "my careful edit"
    b.press(EDIT, "Enter")
    b.wait_for_selector(EDIT, state="detached")
    wait_idle(b)
    assert len(bodies_b) == 1
    msgs = current_conv(b)["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert msgs[0]["content"] == "my careful edit"
    ctx.close()
    assert not a.errors and not b.errors, (a.errors, b.errors)


# ---------------------------------------------------------------------------------------
# 3. Storage full.

# Fills this origin's localStorage to the last byte, with keys of its own ("filler<i>").
FILL_STORAGE = """() => { let i = 0;
    for (let size = 1 << 20; size >= 1; size = size >> 1) {
        const s = 'x'.repeat(size);
        for (;;) { try { localStorage.setItem('filler' + (i++), s); } catch (e) { break; } } }
    return i; }"""
FREE_STORAGE = """() => { Object.keys(localStorage).filter((k) => k.startsWith('filler'))
    .forEach((k) => localStorage.removeItem(k)); }"""
NOT_SAVED = "[data-testid=notice]:has-text('could not save the chats')"


def test_a_chat_that_could_not_be_saved_stays_when_another_tab_saves(browser, server_url):
    ctx, (a, b) = two_tabs(browser, server_url)
    set_settings(b, **{"max-tokens": 4})
    assert b.evaluate(FILL_STORAGE) > 0
    send(b, "from tab B")
    wait_idle(b)
    b.wait_for_selector(NOT_SAVED)
    assert stored(b) == []
    # Room again (something else let go of it); tab A saves a chat of its own.
    b.evaluate(FREE_STORAGE)
    set_settings(a, **{"max-tokens": 4})
    send(a, "from tab A")
    wait_idle(a)
    b.wait_for_function("() => document.querySelectorAll('[data-testid=conv-open]').length === 2")
    # B still shows its chat, open, question and reply; its next message goes there.
    assert b.text_content("#conv-title") == "from tab B"
    assert b.locator("[data-testid=message]").count() == 2
    send(b, "again from tab B")
    wait_idle(b)
    b.wait_for_selector(NOT_SAVED, state="detached")
    by_title = {c["title"]: [m["content"] for m in c["messages"]] for c in stored(a)}
    assert sorted(by_title) == ["from tab A", "from tab B"], by_title
    assert by_title["from tab B"][0::2] == ["from tab B", "again from tab B"], by_title
    assert len(by_title["from tab A"]) == 2
    a.wait_for_function("() => document.querySelectorAll('[data-testid=conv-open]').length === 2")
    ctx.close()
    assert not a.errors and not b.errors, (a.errors, b.errors)
