"""The chat page (runtime/web/app.js, awaitLastSave) with a second tab: the tab that
writes a reply saves its final reply, then lets its writing lock go, and Chromium does
not order the two for the other tabs. What a user met, each test failing on the page
before its fix:

1. Tab B heard of the lock let go before the storage event with A's final save: for that
   moment it drew the chat as A's save before left it (the reply so far, stopped, with
   Continue), and a Send, Continue or Regenerate clicked then saved B's older copy over
   A's final reply. Now B shows the chat as being written in A until that save comes.
2. ... but a tab that crashed sends no final save: B waited for it 3 s, showing the reply
   as still being written. Now the writing tab's alive lock, gone with it, tells B at
   once that no save is coming.

The moment is made as long as a test needs: B's storage events are held
(test_page_gaps_s12's HOLD_STORAGE), and so is B's timer that ends the wait (held_due).
Helpers and fixtures are those of test_page.py, test_page_tabs.py and test_page_locks.py.
"""
from __future__ import annotations

from tests.e2e.conftest import require_chromium
from tests.e2e.test_page import (assistant_bodies, current_conv, send,
                                 set_settings, wait_idle)
from tests.e2e.test_page_gaps_s12 import HOLD_STORAGE
from tests.e2e.test_page_locks import (WRITING_LOCK, continue_once, shown_as_written_elsewhere,
                                       writing_tabs)
from tests.e2e.test_page_reply_life import full_speed
from tests.e2e.test_page_tabs import (ELSEWHERE, held_while_written_elsewhere, last_reply,
                                      shown_stopped_with_continue)

sync_api = require_chromium()

LAST_SAVE_WAIT_MS = 3000  # app.js: how long a tab waits for the final save of a lock let go

# Each tab notes the writing locks it has seen let go (the page's shared requests, see
# watchRelease), once the page has taken that in; and, while window.__holdingDue, holds
# its timers of LAST_SAVE_WAIT_MS until window.__fireDue() (the bounded wait, ended when
# the test says, not when a loaded machine gets round to the next step).
WATCH_RELEASE = """(() => {
    window.__letGoSeen = [];
    const request = LockManager.prototype.request;
    LockManager.prototype.request = function (name, ...rest) {
        const last = rest.length - 1, then = rest[last];
        if (last > 0 && rest[0].mode === 'shared' && typeof then === 'function') {
            rest[last] = function () {
                const out = then.apply(this, arguments);
                window.__letGoSeen.push(name);
                return out;
            };
        }
        return request.call(this, name, ...rest);
    };
    window.__holdingDue = false;
    window.__due = [];
    const realSetTimeout = window.setTimeout;
    window.setTimeout = function (fn, ms, ...args) {
        if (!window.__holdingDue || ms !== %d) return realSetTimeout(fn, ms, ...args);
        window.__due.push(fn);
        return realSetTimeout(() => {}, 0);
    };
    window.__fireDue = () => window.__due.splice(0).forEach((fn) => fn());
})()""" % LAST_SAVE_WAIT_MS


def lock_let_go_in(pg):
    """Waits until tab `pg` has taken in that its open chat's writing lock was let go."""
    name = WRITING_LOCK + current_conv(pg)["id"]
    pg.wait_for_function("(name) => window.__letGoSeen.includes(name)", arg=name)


# ---------------------------------------------------------------------------------------
# 1. The lock let go before the final save is heard of.

def test_a_click_before_the_final_save_arrives_does_not_lose_the_reply(browser, server_url):
    ctx, a, b, cdp = writing_tabs(browser, server_url, HOLD_STORAGE + ";\n" + WATCH_RELEASE)
    b.evaluate("() => { window.__holding = true; window.__holdingDue = true; }")
    full_speed(cdp)
    wait_idle(a)
    final = last_reply(a)
    assert final["content"] and not final.get("stopped"), final
    lock_let_go_in(b)
    # (A's final save reaches B, held: B has not heard of it; its wait goes on meanwhile)
    b.wait_for_function("() => window.__held.includes('chatfile.conversations')")

    # The lock went, the final save is not heard of yet: B still shows the reply as being
    # written in A, and a message sent waits in the box.
    shown_as_written_elsewhere(b)
    bodies = held_while_written_elsewhere(b, "and then?")
    assert b.locator("[data-testid=regenerate]").count() == 0

    # The final save comes: B shows it whole, and the message goes after it.
    b.evaluate("() => window.__release()")
    b.wait_for_selector(ELSEWHERE, state="detached")
    assert assistant_bodies(b).last.text_content() == assistant_bodies(a).last.text_content()
    assert b.locator("[data-testid=stopped-note]").count() == 0
    set_settings(b, **{"max-tokens": 4})
    send(b, "and then?")
    wait_idle(b)
    # (A's reply filled the tiny model's context: the request leaves it out, the chat keeps it)
    assert len(bodies) == 1 and bodies[0]["messages"][-1]["content"] == "and then?"
    kept = current_conv(b)["messages"]
    kept[1].pop("leftOut", None)  # (as the request left it out)
    assert kept[1] == final and kept[2]["content"] == "and then?", kept
    ctx.close()
    assert not a.errors and not b.errors, (a.errors, b.errors)


# ---------------------------------------------------------------------------------------
# 2. The lock let go by a tab that crashed: no final save comes.

def test_a_reply_whose_tab_crashed_is_stopped_without_waiting_for_its_last_save(browser, server_url):
    """Tab A closes mid-reply without a last save, as a crash would (its storage writes
    fail: see test_page_locks). Its alive lock went with it (app.js, holdAlive): B knows
    no save is coming, and shows the reply stopped at once, its wait never ended (it
    waited the whole LAST_SAVE_WAIT_MS before); its Continue goes on."""
    ctx, a, b, _ = writing_tabs(browser, server_url, WATCH_RELEASE)
    b.evaluate("() => { window.__holdingDue = true; }")
    a.evaluate("() => { Storage.prototype.setItem = () => { throw new Error('crashed'); }; }")
    a.close()
    lock_let_go_in(b)
    shown_stopped_with_continue(b)
    assert b.evaluate("() => window.__due.length") == 1  # (the wait, not ended: B did not wait)
    assert "writingAt" in current_conv(b), "A's last save came: the test proves nothing"
    continue_once(b)
    ctx.close()
    assert not b.errors, b.errors
