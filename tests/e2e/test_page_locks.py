"""The chat page (runtime/web/app.js, WRITING_LOCK) with a second tab of the same browser:
the tab that writes a reply in a chat holds that chat's Web Lock (navigator.locks) while
it does, and the other tabs show the reply as being written there for as long as the
lock is held, whatever that tab's timers do. What a user met, each test failing on the
page before its fix:

1. A hidden tab's timers are throttled (one a minute) or frozen while its reply goes on:
   its mark (renewed by a timer) grew old, and the other tab showed the reply as stopped,
   with a Continue that wrote it a second time.
2. A tab gone without a word (crashed, killed: no last save) left the other tab showing
   the reply as being written until its mark was old; now the lock goes with the tab.
3. A tab that began writing in a chat a moment before another tab heard of it: both
   wrote a reply there.
4. Without locks (a page over plain http from another machine is not a secure context),
   the marks still tell, as before.

Helpers and fixtures are those of test_page.py, test_page_reply_life.py and
test_page_tabs.py.
"""
from __future__ import annotations

from tests.e2e.conftest import require_chromium
from tests.e2e.test_page import current_conv, record_chat_requests, send, set_settings, wait_idle
from tests.e2e.test_page_reply_life import LAST_REPLY_LEN, import_json, start_slow_reply
from tests.e2e.test_page_tabs import (ELSEWHERE, SAVED_WITH_WORDS, last_reply,
                                      shown_stopped_with_continue, two_tabs,
                                      whole_reply_reaches_the_other_tab)

sync_api = require_chromium()

WRITER_GONE_MS = 8000  # app.js: a mark older than this is a tab gone (without locks)
WRITING_LOCK = "chatfile-writing:"

# A browser without Web Locks, as a page that is not a secure context is.
NO_LOCKS = "delete Navigator.prototype.locks;"

# The chat's mark (its writing tab's last save), as old as it is by this tab's clock.
MARK_AGE_MS = """() => { const c = JSON.parse(localStorage.getItem('chatfile.conversations'))[0];
    return typeof c.writingAt === 'number' ? Date.now() - c.writingAt : -1; }"""


def writing_tabs(browser, url, init_script=None):
    """Two tabs; A writes a slow reply, saved with its first words, that B shows as being
    written there, words and all -> (ctx, a, b, A's network throttle)."""
    ctx, (a, b) = two_tabs(browser, url, init_script)
    cdp = start_slow_reply(a, "Hello there")
    b.wait_for_selector(ELSEWHERE)
    a.wait_for_function(SAVED_WITH_WORDS)  # (else there is no reply to continue yet)
    b.wait_for_function(f"() => ({LAST_REPLY_LEN})() > 0")
    assert a.is_visible("[data-testid=stop]"), "A's reply had ended: the test proves nothing"
    return ctx, a, b, cdp


def shown_as_written_elsewhere(pg):
    assert pg.is_visible(ELSEWHERE)
    for what in ("continue", "regenerate", "stopped-note"):
        assert pg.locator(f"[data-testid={what}]").count() == 0, what
    assert pg.locator("[data-testid=conv-item][data-elsewhere=true]").count() == 1


def continue_once(pg):
    """Continue in tab `pg` goes on with its chat's stopped reply, in the same message,
    with one request."""
    set_settings(pg, **{"max-tokens": 4})
    before = last_reply(pg)["content"]
    bodies = record_chat_requests(pg)
    pg.click("[data-testid=continue]")
    wait_idle(pg)
    assert len(bodies) == 1 and bodies[0]["messages"][-1]["content"] == before
    after = last_reply(pg)
    assert after["content"].startswith(before) and not after.get("stopped"), after


def freeze(pg):
    """Tab `pg` runs nothing more (no timer, no piece of its reply, no save), as a frozen
    tab, until thaw(): its page waits on a synchronous request that the test holds. (CDP's
    Page.setWebLifecycleState "frozen" leaves a page running in headless Chromium.)"""
    held = []
    pg.route("**/__frozen", lambda route: held.append(route))
    pg.evaluate("""() => { setTimeout(() => {
        const x = new XMLHttpRequest();
        x.open('GET', '/__frozen', false);
        try { x.send(); } catch (e) { /* (let go) */ }
    }, 0); }""")
    return held


def thaw(held, other):
    """Lets the tab frozen by freeze() go on. (`other`, a tab that runs, waits while
    Playwright hands the held request over.)"""
    while not held:
        other.wait_for_timeout(50)
    held[0].fulfill(body="")


# ---------------------------------------------------------------------------------------
# 1. A writing tab whose timers do not run.

def test_a_reply_whose_tab_is_frozen_is_still_shown_as_written_there(browser, server_url):
    ctx, a, b, cdp = writing_tabs(browser, server_url)
    bodies_b = record_chat_requests(b)
    held = freeze(a)
    # A's mark grows old (A saves nothing more: the mark's age shows it is frozen) ...
    b.wait_for_function(f"() => ({MARK_AGE_MS})() > {WRITER_GONE_MS + 1000}", timeout=60_000)
    # ... but A still writes the reply: B says so, and offers nothing that would write it
    # again, nor does a B opened afresh.
    shown_as_written_elsewhere(b)
    b.reload()
    b.wait_for_selector("body[data-ready=true]")
    shown_as_written_elsewhere(b)

    # A goes on: B shows the whole reply, written once.
    thaw(held, b)
    whole_reply_reaches_the_other_tab(a, b, cdp)
    assert bodies_b == []
    ctx.close()
    assert not a.errors and not b.errors, (a.errors, b.errors)


# ---------------------------------------------------------------------------------------
# 2. A writing tab gone without a word.

def test_a_reply_whose_tab_closed_without_a_word_is_stopped_as_its_lock_goes(browser, server_url):
    """Tab A closes mid-reply without a last save, as a crash would (its storage writes
    fail from now on: a closing tab saves the reply as stopped, and removes its mark).
    B's clock stands still, so that A's mark stays young in B's eyes: only the lock,
    which the browser lets go with the tab, tells B that A went. B then shows the reply
    stopped, and its Continue goes on with it."""
    ctx, a, b, _ = writing_tabs(browser, server_url)
    b.evaluate("() => { const now = Date.now(); Date.now = () => now; }")
    a.evaluate("() => { Storage.prototype.setItem = () => { throw new Error('crashed'); }; }")
    a.close()
    shown_stopped_with_continue(b)
    assert "writingAt" in current_conv(b), "A's last save came: the test proves nothing"
    continue_once(b)
    ctx.close()
    assert not b.errors, b.errors


# ---------------------------------------------------------------------------------------
# 3. Two tabs starting a reply in one chat.

def test_a_message_sent_as_another_tab_begins_writing_there_waits_in_the_box(browser, server_url):
    """Tab X takes the chat's lock (it begins writing there) and has saved nothing yet:
    tab A, which has not heard of it, sends a message in that chat. Nothing is sent; the
    message waits in the box, as it does in a chat A knows to be written elsewhere, and
    goes once X lets go."""
    ctx, (a, x) = two_tabs(browser, server_url)
    import_json(a, {"title": "Notes", "messages": [{"role": "user", "content": "hi"},
                                                    {"role": "assistant", "content": "hello"}]})
    a.wait_for_function("() => document.getElementById('conv-title').textContent === 'Notes'")
    name = WRITING_LOCK + current_conv(a)["id"]
    x.evaluate("""(name) => new Promise((taken) => navigator.locks.request(name, () => {
        taken();
        return new Promise((letGo) => { window.__letGo = letGo; });
    }))""", name)
    set_settings(a, **{"max-tokens": 4})
    bodies = record_chat_requests(a)
    send(a, "a question from tab A")
    a.wait_for_selector("[data-testid=notice]:has-text('another tab')")
    a.wait_for_selector(ELSEWHERE)
    assert a.input_value("[data-testid=input]") == "a question from tab A"
    assert a.locator("[data-testid=message]").count() == 2
    assert bodies == []

    x.evaluate("() => window.__letGo()")
    a.wait_for_selector(ELSEWHERE, state="detached")
    send(a, "a question from tab A")
    wait_idle(a)
    assert len(bodies) == 1
    sent = [m["content"] for m in current_conv(a)["messages"][:3]]
    assert sent == ["hi", "hello", "a question from tab A"], sent
    ctx.close()
    assert not a.errors and not x.errors, (a.errors, x.errors)


# ---------------------------------------------------------------------------------------
# 4. Without locks: the marks.

def test_without_locks_a_reply_whose_tab_vanished_is_stopped_after_a_while(browser, server_url):
    """A tab that could not say it went (frozen, crashed, its browser killed) stops
    renewing its mark: the other tab gives up waiting and offers Continue."""
    ctx, a, b, _ = writing_tabs(browser, server_url, NO_LOCKS)
    assert b.evaluate("() => navigator.locks") is None
    # Tab A hangs: it runs nothing more (no save, no pagehide) until the test ends.
    a.evaluate("() => { setTimeout(() => { for (;;) {} }, 0); }")
    b.wait_for_selector(ELSEWHERE, state="detached")
    b.wait_for_selector("[data-testid=stopped-note]")
    assert b.is_visible("[data-testid=continue]")
    continue_once(b)
    ctx.close()
    assert not b.errors, b.errors
