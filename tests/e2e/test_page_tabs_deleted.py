"""The chat page (runtime/web/store.js, app.js) with several tabs: a chat deleted in one
tab, and a writer that crashed. What a user met, each test failing on the page before
its fix:

1. A chat deleted in tab A came back when tab B saved at the same instant (a rename, a
   New chat: any save). In Chromium, B's process reads a copy of the storage that A's
   write reaches a moment later: B's save read neither A's tombstone nor A's list
   without the chat, and wrote its copy of the list, deleted chat and all. B then listed
   it again, and so did A once reloaded (or any tab opened later): no tab read the
   tombstones, only saves did.
2. Tab B, whose open chat tab A deleted, showed the first other chat of its list with the
   draft still in the box: Enter sent that draft into an unrelated chat.
3. A reply whose writing tab crashed (or closed) showed as still being written for 3 s
   after its writing lock went (the wait for a final save, which a live tab makes after
   letting its lock go, and a dead one never does). Its test is test_page_tabs_release_s18's
   second, which asserted that wait.

Helpers and fixtures are those of test_page.py, test_page_tabs.py, test_page_s17.py and
test_page_gaps_s12.py.
"""
from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import require_chromium
from tests.e2e.test_page import open_page, send, set_settings, stored, wait_idle
from tests.e2e.test_page_gaps_s12 import HOLD_STORAGE
from tests.e2e.test_page_s17 import LISTED, TWO_CHATS
from tests.e2e.test_page_tabs import two_tabs

sync_api = require_chromium()

# Tab B's copy of the storage held behind the other tabs' writes from __goStale() until
# __catchUp() (its storage events with it: HOLD_STORAGE), as Chromium's is for some 10 ms
# after another tab writes; B's own writes are read back meanwhile, as there. (Tried
# without it, a deletion in A and a rename in B 1 to 8 ms later brought the chat back
# in 6 of 7 tries: made this long, it does every time.)
STALE_COPY = """(() => {
    const get = Storage.prototype.getItem, set = Storage.prototype.setItem;
    let copy = null;
    Storage.prototype.getItem = function (key) {
        return copy && key in copy ? copy[key] : get.call(this, key);
    };
    Storage.prototype.setItem = function (key, value) {
        if (copy) copy[key] = String(value);
        return set.call(this, key, value);
    };
    window.__goStale = () => {
        copy = {};
        for (const key of ['chatfile.conversations', 'chatfile.deleted']) copy[key] = get.call(localStorage, key);
        window.__holding = true;
    };
    window.__catchUp = () => { copy = null; return window.__release(); };
})()"""
DELETED = "() => JSON.parse(localStorage.getItem('chatfile.deleted') || '[]')"


# Chats chatx and chaty stored before the page first starts.
TWO_CHATS_STORED = """if (!localStorage.getItem('chatfile.conversations'))
    localStorage.setItem('chatfile.conversations', '%s');""" % json.dumps(TWO_CHATS)


def tabs_on_two_chats(browser, url):
    """test_page_s17's, with two page loads fewer: tab A shows chat chatx, B chaty."""
    ctx, (a, b) = two_tabs(browser, url, TWO_CHATS_STORED)
    a.wait_for_function("() => document.getElementById('conv-title').textContent === 'chatx'")
    b.locator("[data-testid=conv-open]", has_text="chaty").click()
    b.wait_for_function("() => document.getElementById('conv-title').textContent === 'chaty'")
    return ctx, a, b


def listed(pg):
    return pg.evaluate(LISTED)


def delete_open_chat(pg):
    pg.click("[data-testid=delete]")
    pg.click("[data-testid=ask-ok]")


# ---------------------------------------------------------------------------------------
# 1. A deletion, and a save of a tab whose copy of the storage is behind it.

@pytest.mark.parametrize("b_does", ["delete"])
def test_a_chat_deleted_as_another_tab_saves_stays_deleted(browser, server_url, b_does):
    """Tab A deletes chatx; tab B, not having heard of it, renames (or deletes) chaty,
    and its save writes chatx back (and, deleting, its tombstone list without chatx's)."""
    ctx, a, b = tabs_on_two_chats(browser, server_url)  # A shows chatx, B chaty
    b.evaluate(HOLD_STORAGE)
    b.evaluate(STALE_COPY)
    b.evaluate("() => window.__goStale()")
    delete_open_chat(a)
    a.wait_for_function(f"() => ({DELETED})().includes('chatx')")
    if b_does == "rename":
        b.click("[data-testid=rename]")
        b.fill("[data-testid=ask-input]", "renamed in B")
        b.click("[data-testid=ask-ok]")
    else:
        delete_open_chat(b)
    b.wait_for_function("() => window.__held.length > 0")  # (A heard of B's save meanwhile)
    assert b.evaluate("() => window.__catchUp()") >= 1
    want = ["renamed in B"] if b_does == "rename" else []
    # Neither tab lists it, nor does the storage hold it (or its tombstone is back) ...
    for pg in (a, b):
        pg.wait_for_function(f"(want) => JSON.stringify(({LISTED})()) === JSON.stringify(want)", arg=want)
    a.wait_for_function("() => !localStorage.getItem('chatfile.conversations').includes('chatx')"
                        f" && ({DELETED})().includes('chatx')")
    # ... and a tab opened afresh does not show it.
    open_page(a, server_url)
    assert listed(a) == want
    ctx.close()
    assert not a.errors and not b.errors, (a.errors, b.errors)


# ---------------------------------------------------------------------------------------
# 2. The open chat deleted in another tab, with a draft typed in it.

@pytest.mark.parametrize("typed_in", ["message box", "edit box"])
def test_a_draft_for_a_chat_deleted_in_another_tab_stays_and_starts_a_new_chat(browser, server_url, typed_in):
    ctx, a, b = tabs_on_two_chats(browser, server_url)  # A shows chatx, B chaty
    draft = "my unsent question"
    if typed_in == "message box":
        b.fill("[data-testid=input]", draft)
    else:
        b.click("[data-testid=edit]")
        b.fill("[data-testid=edit-input]", draft)
    a.locator("[data-testid=conv-open]", has_text="chaty").click()
    a.wait_for_function("() => document.getElementById('conv-title').textContent === 'chaty'")
    delete_open_chat(a)
    # B says so, shows no chat (not chatx, where Enter would have sent the draft), and
    # keeps the draft in its box.
    b.wait_for_selector("[data-testid=notice]:has-text('deleted in another tab')")
    assert b.text_content("[data-testid=conv-title]") == "New chat"
    assert b.locator("#conv-list [aria-current=true]").count() == 0
    assert b.input_value("[data-testid=input]") == draft
    notice = b.text_content("[data-testid=notice]")
    assert "\u201cchaty\u201d" in notice and "still in the box" in notice, notice
    # Sent, it starts a new chat; chatx is as it was.
    set_settings(b, **{"max-tokens": 4})
    send(b, draft)
    wait_idle(b)
    chats = {c["title"]: c["messages"] for c in stored(b)}
    assert [m["content"] for m in chats["chatx"]] == ["question in chatx", "answer in chatx"], chats
    assert [m["content"] for m in chats[draft]][0] == draft, chats
    ctx.close()
    assert not a.errors and not b.errors, (a.errors, b.errors)
