"""The chat page (runtime/web/) with several tabs, and after its own Quit: what was lost,
each test failing on the page before its fix.

1. Two tabs saving at the same instant: the later save wrote the other tab's chat as it
   was before that tab's save (in Chromium, a tab's process reads a copy of the storage
   that another tab's write reaches a moment later), and that change was lost, in the
   storage and in both tabs. (Seen at every try of a rename or a New chat made in two
   tabs within a millisecond.)
2. The tab whose Quit stopped the server said "stopped" for good: started again, the
   server was not noticed, and only a reload (which lost the draft) brought the chat back.
3. A redraw (another tab writing in the chat) kept the first open edit box of the chat,
   and a second one went with its text.

Helpers and fixtures are those of test_page.py, test_page_recovery.py and test_page_tabs.py.
"""
from __future__ import annotations

from tests.e2e.conftest import TINY, require_chromium
from tests.e2e.test_page import open_page, send, set_settings, stored, wait_idle
from tests.e2e.test_page_recovery import new_page
from tests.e2e.test_page_tabs import ELSEWHERE, two_tabs

sync_api = require_chromium()

PORT = 19540  # (a server stopped and started again on the same port: see test_page_recovery)

# Clicks `selector` at `at` (ms since 1970), to the millisecond: a busy wait from a few
# ms before, so that two tabs' clicks (and the saves they make) land at one instant.
CLICK_AT = """([selector, at]) => { setTimeout(() => {
    while (Date.now() < at) {}
    document.querySelector(selector).click();
}, Math.max(0, at - Date.now() - 50)); }"""
TWO_CHATS = [{"id": cid, "title": cid, "created": 1, "updated": 1, "rev": 1,
              "messages": [{"role": "user", "content": f"question in {cid}"},
                           {"role": "assistant", "content": f"answer in {cid}"}]}
             for cid in ("chatx", "chaty")]
LISTED = "() => [...document.querySelectorAll('[data-testid=conv-open]')].map((b) => b.textContent).sort()"


def clicked_at_one_instant(tabs, selector):
    """Each tab clicks `selector` at the same instant, half a second from now."""
    at_ms = tabs[0].evaluate("Date.now()") + 500
    for pg in tabs:
        pg.evaluate(CLICK_AT, [selector, at_ms])


def tabs_on_two_chats(browser, url):
    """Two tabs of one browser, the first showing chat "chatx", the second "chaty"."""
    ctx, (a, b) = two_tabs(browser, url)
    a.evaluate("(chats) => localStorage.setItem('chatfile.conversations', JSON.stringify(chats))", TWO_CHATS)
    for pg, chat in ((a, "chatx"), (b, "chaty")):
        open_page(pg, url)
        pg.locator("[data-testid=conv-open]", has_text=chat).click()
        pg.wait_for_function("(t) => document.getElementById('conv-title').textContent === t", arg=chat)
    return ctx, a, b


def both_tabs_list(a, b, titles):
    """The storage and both tabs' lists come to hold exactly `titles`."""
    want = sorted(titles)
    for pg in (a, b):
        pg.wait_for_function(f"(want) => JSON.stringify(({LISTED})()) === JSON.stringify(want)", arg=want)
    a.wait_for_function("""(want) => JSON.stringify(JSON.parse(localStorage.getItem('chatfile.conversations'))
        .map((c) => c.title).sort()) === JSON.stringify(want)""", arg=want)
    assert sorted(c["title"] for c in stored(b)) == want


# ---------------------------------------------------------------------------------------
# 1. Two tabs saving at the same instant.

def test_renames_saved_at_one_instant_in_two_tabs_both_stay(browser, server_url):
    ctx, a, b = tabs_on_two_chats(browser, server_url)
    for pg, name in ((a, "renamed in A"), (b, "renamed in B")):
        pg.click("[data-testid=rename]")
        pg.fill("[data-testid=ask-input]", name)
    clicked_at_one_instant([a, b], "#ask-ok")
    both_tabs_list(a, b, ["renamed in A", "renamed in B"])
    ctx.close()
    assert not a.errors and not b.errors, (a.errors, b.errors)


def test_new_chats_made_at_one_instant_in_two_tabs_both_stay(browser, server_url):
    ctx, a, b = tabs_on_two_chats(browser, server_url)
    clicked_at_one_instant([a, b], "#new-chat")
    both_tabs_list(a, b, ["New chat", "New chat", "chatx", "chaty"])
    # Each tab stays in its own new chat.
    assert a.evaluate("JSON.parse(localStorage.getItem('chatfile.current'))") not in ("chatx", "chaty")
    for pg in (a, b):
        assert pg.text_content("#conv-title") == "New chat"
    ctx.close()
    assert not a.errors and not b.errors, (a.errors, b.errors)


# ---------------------------------------------------------------------------------------
# 2. Started again after the page's own Quit.

def test_the_tab_that_quit_comes_back_when_the_server_is_started_again(browser, server_factory):
    first = server_factory(TINY, "--port", PORT, browser=True)
    ctx, pg = new_page(browser, first.url + "/", fast_clock=True)
    set_settings(pg, **{"max-tokens": 4})
    send(pg, "hi")
    wait_idle(pg)
    pg.fill("[data-testid=input]", "typed before the quit")
    pg.click("[data-testid=quit]")
    pg.click("#ask-ok")
    pg.wait_for_selector("text=chatfile has stopped")
    assert first.proc.wait(30) == 0, first.output()

    again = server_factory(TINY, "--port", first.port, browser=True)
    assert again.url == first.url, "the restarted server did not get the same port"
    pg.wait_for_selector("[data-testid=input]:visible")
    pg.wait_for_function("() => document.getElementById('notice').textContent.includes('running again')")
    assert pg.is_hidden("[data-testid=loading]")
    assert pg.input_value("[data-testid=input]") == "typed before the quit"
    assert pg.locator("[data-testid=message]").count() == 2
    # Usable: a message sent gets a reply, and Quit is there again.
    send(pg, "and again")
    wait_idle(pg)
    msgs = [m for c in stored(pg) for m in c["messages"]]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"], msgs
    assert msgs[-1]["content"] and not msgs[-1].get("stopped"), msgs
    assert pg.is_visible("[data-testid=quit]")
    ctx.close()
    assert not pg.errors, pg.errors


# ---------------------------------------------------------------------------------------
# 3. Two edit boxes open while another tab writes in the chat.

EDIT_AT = "[data-index='{}'] [data-testid=edit-input]"
SELECTION = "(sel) => { const t = document.querySelector(sel); return [t.selectionStart, t.selectionEnd]; }"


def test_every_open_edit_box_stays_while_another_tab_writes_in_the_chat(browser, server_url):
    ctx, (a, b) = two_tabs(browser, server_url)
    set_settings(a, **{"max-tokens": 4})
    for text in ("first", "second"):
        send(a, text)
        wait_idle(a)
    b.wait_for_function("() => document.querySelectorAll('[data-testid=message]').length === 4")
    typed = {0: "my first edit", 2: "my second edit"}
    for index, text in typed.items():
        b.click(f"[data-index='{index}'] [data-testid=edit]")
        b.fill(EDIT_AT.format(index), text)
    # The caret in each: after "my " in the first, a word selected in the second (typed last: it has the focus).
    b.evaluate("(sel) => document.querySelector(sel).setSelectionRange(3, 3)", EDIT_AT.format(0))
    b.evaluate("(sel) => document.querySelector(sel).setSelectionRange(3, 9)", EDIT_AT.format(2))
    b.focus(EDIT_AT.format(2))

    # Tab A writes in the chat: B draws it again, as being written there, then whole.
    send(a, "third")
    wait_idle(a)
    b.wait_for_function("() => document.querySelectorAll('[data-testid=message]').length === 6")
    b.wait_for_selector(ELSEWHERE, state="detached")
    for index, text in typed.items():
        assert b.input_value(EDIT_AT.format(index)) == text, index
    assert b.evaluate(SELECTION, EDIT_AT.format(0)) == [3, 3]
    assert b.evaluate(SELECTION, EDIT_AT.format(2)) == [3, 9]
    assert b.evaluate("(sel) => document.activeElement === document.querySelector(sel)", EDIT_AT.format(2))
    ctx.close()
    assert not a.errors and not b.errors, (a.errors, b.errors)
