"""The chat page (runtime/web/) with company: a second tab of the same browser, another
program using the server, a server that comes back only half way. What a user met, each
test failing on the page before its fix:

1. A reply still being written in tab A showed in tab B as "(stopped)" with Continue,
   which wrote it a second time.
2. A message sent while the server answered another tab or program waited without a word.
3. A code block's own Copy, in a reply still streaming, copied the code so far.
4. A server whose /health answered but whose /props failed was announced "running again".
5. Switching chats showed the previous chat's context count until the new one's arrived.

Helpers and fixtures are those of test_page.py, test_page_reply_life.py and
test_page_recovery.py.
"""
from __future__ import annotations

import json
import time

from tests.e2e.conftest import require_chromium, tiny_4k
from tests.e2e.test_page import (  # noqa: F401 - `page` is a fixture
    TIMEOUT_MS, assistant_bodies, current_conv, open_page, page, record_chat_requests,
    send, set_settings, wait_idle)
from tests.e2e.test_api_llama import _send_completion, _slots
from tests.e2e.test_page_recovery import FAST_CLOCK, error_text
from tests.e2e.test_page_reply_life import (
    CHAT_URL, LAST_REPLY_LEN, SLOW_BYTES_S, full_speed, import_json, start_slow_reply)

sync_api = require_chromium()

ELSEWHERE = "[data-testid=elsewhere-note]"


def two_tabs(browser, url, init_script=None):
    """Two tabs of one browser profile (they share localStorage), both showing the page
    (after `init_script`, when given, has run in each)."""
    ctx = browser.new_context()
    if init_script:
        ctx.add_init_script(init_script)
    ctx.grant_permissions(["clipboard-read", "clipboard-write"])
    tabs = []
    for _ in range(2):
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        pg.errors = []
        pg.on("pageerror", lambda e, errs=pg.errors: errs.append(str(e)))
        open_page(pg, url)
        tabs.append(pg)
    return ctx, tabs


# The page's reply streams pass through a stream of the test's, which stops handing on
# their pieces once `window.__holdReply` is set: the reply can no longer end there.
# Without it, a tab closed on a loaded machine now and then got the rest of its reply
# (the tiny server had long sent all of it) while it closed: its last save before the
# close held 44 characters, its final save the whole reply, not stopped, as it should.
HOLD_REPLY = """(() => {
    const realFetch = window.fetch;
    window.__holdReply = false;
    const held = () => new Promise(() => {});
    window.fetch = async (path, init) => {
        const resp = await realFetch(path, init);
        if (!String(path).includes('chat/completions') || !resp.body) return resp;
        const reader = resp.body.getReader();
        const body = new ReadableStream({
            async pull(ctrl) {
                if (window.__holdReply) return held();
                const {done, value} = await reader.read();
                if (window.__holdReply) return held();
                if (done) ctrl.close(); else ctrl.enqueue(value);
            },
            cancel(reason) { return reader.cancel(reason); },
        });
        return new Response(body, {status: resp.status, statusText: resp.statusText,
                                   headers: resp.headers});
    };
})()"""


SAVED_WITH_WORDS = """() => { const c = JSON.parse(localStorage.getItem('chatfile.conversations') || '[]');
    return c.length && c[0].messages.length === 2 && c[0].messages[1].content.length > 0; }"""


def last_reply(pg):
    return current_conv(pg)["messages"][-1]


def whole_reply_reaches_the_other_tab(a, b, cdp) -> dict:
    """Tab A's slow reply goes on at full speed to its end: B then shows the whole of it,
    as an ordinary reply (not stopped). -> A's final reply, as saved."""
    full_speed(cdp)
    wait_idle(a)
    b.wait_for_selector(ELSEWHERE, state="detached")
    final = last_reply(a)
    assert final["role"] == "assistant" and final["content"] and not final.get("stopped"), final
    b.wait_for_function(f"(n) => ({LAST_REPLY_LEN})() === n",
                        arg=len(assistant_bodies(a).last.text_content()))
    assert b.locator("[data-testid=stopped-note]").count() == 0
    return final


def held_while_written_elsewhere(pg, text) -> list:
    """A message typed for a chat whose reply another tab writes waits in the box, and the
    page says why; nothing is sent. -> the chat request bodies, recorded from here on."""
    bodies = record_chat_requests(pg)
    send(pg, text)
    pg.wait_for_selector("[data-testid=notice]:has-text('another tab')")
    assert pg.input_value("[data-testid=input]") == text
    assert bodies == []
    return bodies


def shown_stopped_with_continue(b) -> dict:
    """The reply another tab wrote is no longer shown as written there: B shows it
    stopped, with Continue. -> that reply, as B has it."""
    b.wait_for_selector(ELSEWHERE, state="detached")
    b.wait_for_selector("[data-testid=stopped-note]")
    assert b.is_visible("[data-testid=continue]")
    reply = last_reply(b)
    assert reply["stopped"] is True and reply["content"], reply
    return reply


# ---------------------------------------------------------------------------------------
# 1. A reply being written in another tab.

def test_a_reply_being_written_in_another_tab_is_shown_as_such_and_its_end_arrives(browser, server_url):
    ctx, (a, b) = two_tabs(browser, server_url)
    cdp = start_slow_reply(a, "Hello there")  # tab A writes a reply of many seconds
    b.wait_for_function("() => document.getElementById('conv-title').textContent === 'Hello there'")
    note = b.wait_for_selector(ELSEWHERE)
    assert "another tab" in note.text_content()
    assert a.is_visible("[data-testid=stop]"), "A's reply had ended: the test proves nothing"
    # Nothing in B that would write the reply again, or cut the chat under it.
    for what in ("continue", "regenerate", "stopped-note"):
        assert b.locator(f"[data-testid={what}]").count() == 0, what
    assert b.locator("[data-testid=copy-message]").last.is_disabled()
    assert all(e.is_disabled() for e in b.locator("[data-testid=edit]").all())
    bodies_b = held_while_written_elsewhere(b, "a question from tab B")

    # A ends its reply: B shows the whole of it, as an ordinary reply.
    final = whole_reply_reaches_the_other_tab(a, b, cdp)
    assert "another tab" not in b.text_content("[data-testid=notice]")
    assert b.locator("[data-testid=copy-message]").last.is_enabled()
    assert b.locator("[data-testid=regenerate]").last.is_enabled()
    # The message B kept is sent now, in the same chat, after A's reply.
    send(b, "a question from tab B")
    wait_idle(b)
    assert len(bodies_b) == 1
    assert bodies_b[0]["messages"][-1] == {"role": "user", "content": "a question from tab B"}
    assert [m["content"] for m in current_conv(b)["messages"][:3]] == [
        "Hello there", final["content"], "a question from tab B"]
    ctx.close()
    assert not a.errors and not b.errors, (a.errors, b.errors)


def test_a_reply_whose_tab_closed_is_stopped_and_can_be_continued(browser, server_url):
    """A tab closed mid-reply leaves it stopped: at once, as its last save (on pagehide)
    has no mark; or, should the browser not have let it save as it went, once the mark
    of its last periodic save is old."""
    ctx, (a, b) = two_tabs(browser, server_url, HOLD_REPLY)
    start_slow_reply(a, "Hello there")
    b.wait_for_selector(ELSEWHERE)
    a.wait_for_function(SAVED_WITH_WORDS)  # (else there is no reply to continue yet)
    a.evaluate("() => { window.__holdReply = true; }")  # (so that it cannot end as A closes)
    assert a.is_visible("[data-testid=stop]"), "A's reply had ended: the test proves nothing"
    a.close()
    shown_stopped_with_continue(b)
    ctx.close()
    assert not b.errors, b.errors


# ---------------------------------------------------------------------------------------
# 2. The server answering someone else.

def _start_long_completion(url, n_predict=4000):
    """A streamed /completion from "another program" that runs for seconds (end of text
    banned), on a raw socket that the test closes to cancel it."""
    return _send_completion(url, {
        "prompt": [1, 50, 60, 70], "n_predict": n_predict, "temperature": 1.0, "seed": 5,
        "stream": True, "cache_prompt": False,
        "logit_bias": [[2, False], [507, False], [508, False]]})


def _processing(url):
    return _slots(url)["is_processing"]


def test_a_message_waiting_for_another_programs_reply_says_so(browser, server_factory, tmp_path):
    model = tiny_4k(tmp_path)
    srv = server_factory(model)
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    open_page(pg, srv.url + "/")
    set_settings(pg, temperature=0, **{"max-tokens": 8})
    # Three long requests of another program, one after the other: many seconds of work.
    others = [_start_long_completion(srv.url) for _ in range(3)]
    try:
        deadline = time.monotonic() + 20
        while not _processing(srv.url):
            assert time.monotonic() < deadline, "the server never started the other requests"
            time.sleep(0.02)
        send(pg, "hi")
        note = pg.wait_for_selector("[data-testid=wait-note]:has-text('another tab or program')")
        assert pg.locator("[data-testid=message].streaming").count() == 1
        assert "Waiting for the server" in note.text_content()
    finally:
        for s in others:
            s.close()  # the server cancels them: this page's turn comes
    wait_idle(pg)
    assert pg.locator("[data-testid=wait-note]").count() == 0
    reply = current_conv(pg)["messages"][-1]
    assert reply["role"] == "assistant" and reply["content"] and not reply.get("stopped"), reply
    ctx.close()
    assert not errors, errors


def test_the_server_note_is_for_a_reply_that_waits_behind_another(page):
    """A server busy with this very reply (a long prompt takes a while before the first
    word) has nothing else waiting: no note then. The note comes once /slots says other
    requests wait (as this page's does), and goes with the first word."""
    slots = {"answer": [{"id": 0, "is_processing": True, "queued": 0}], "asked": 0}

    def fake_slots(route):
        slots["asked"] += 1
        route.fulfill(status=200, content_type="application/json", body=json.dumps(slots["answer"]))
    page.route("**/slots", fake_slots)
    held = []
    page.route(CHAT_URL, lambda route: held.append(route))
    set_settings(page, temperature=0, **{"max-tokens": 8})
    send(page, "hi")
    deadline_ms = TIMEOUT_MS
    while slots["asked"] < 2 and deadline_ms > 0:
        page.wait_for_timeout(50)
        deadline_ms -= 50
    assert slots["asked"] >= 2, "the page never asked /slots about a reply that waits"
    assert page.locator("[data-testid=wait-note]").count() == 0
    slots["answer"] = [{"id": 0, "is_processing": True, "queued": 1}]
    page.wait_for_selector("[data-testid=wait-note]:has-text('another tab or program')")
    held[0].continue_()
    wait_idle(page)
    assert page.locator("[data-testid=wait-note]").count() == 0


# ---------------------------------------------------------------------------------------
# 3. A code block's Copy while its reply streams.

def test_a_code_blocks_copy_waits_for_the_whole_reply(page):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    import_json(page, {"title": "code", "messages": [
        {"role": "user", "content": "Write some code"},
        {"role": "assistant", "content": "Here:\n\n```python\nx = 1\n", "stopped": True}]})
    page.wait_for_selector("[data-testid=continue]")
    assert page.locator("[data-testid=copy-code]").is_enabled()
    set_settings(page, temperature=0, **{"max-tokens": 100000})
    held = []
    page.route(CHAT_URL, lambda route: held.append(route))
    cdp = page.context.new_cdp_session(page)  # (slowed from before its request)
    cdp.send("Network.enable")
    full_speed(cdp, SLOW_BYTES_S)
    page.click("[data-testid=continue]")
    page.wait_for_selector("[data-testid=message].streaming")
    copy = page.locator("[data-testid=copy-code]")
    assert copy.is_disabled(), "before its first new word"
    while not held:
        page.wait_for_timeout(20)
    # The reply streams, slowly: each redraw keeps the block's Copy disabled.
    shown = page.evaluate(LAST_REPLY_LEN)
    held[0].continue_()
    page.wait_for_function(f"() => ({LAST_REPLY_LEN})() > {shown}")
    assert page.is_visible("[data-testid=stop]"), "the reply had ended: the test proves nothing"
    assert copy.first.is_disabled()
    full_speed(cdp)
    wait_idle(page)
    assert copy.first.is_enabled()
    copy.first.click()
    page.wait_for_selector("[data-testid=copy-code]:text-is('Copied')")
    code = page.text_content("[data-testid=message][data-role=assistant] pre")
    assert page.evaluate("navigator.clipboard.readText()") == code
    assert code.startswith("x = 1")


# ---------------------------------------------------------------------------------------
# 4. A server back, but not whole.

def test_running_again_is_said_only_once_props_are_read(browser, server_url):
    ctx = browser.new_context()
    ctx.add_init_script(FAST_CLOCK)
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    open_page(pg, server_url)
    pg.fill("[data-testid=input]", "my draft")
    pg.route("**/health", lambda route: route.abort())  # the server is gone
    pg.wait_for_function("() => document.getElementById('error').textContent.includes('not running')")

    props = []

    def broken_props(route):
        props.append(route.request.url)
        route.fulfill(status=500, content_type="application/json",
                      body=json.dumps({"error": {"message": "props are not ready", "type": "server_error"}}))
    pg.route("**/props", broken_props)
    health = []
    pg.on("request", lambda r: health.append(r.url) if r.url.endswith("/health") else None)
    pg.unroute("**/health")  # /health answers again, /props does not
    pg.wait_for_function("() => true")
    deadline_ms = TIMEOUT_MS
    while (len(props) < 2 or len(health) < 3) and deadline_ms > 0:
        pg.wait_for_timeout(50)
        deadline_ms -= 50
    assert health, "the page stopped checking the server"
    notice = pg.text_content("[data-testid=notice]")
    assert "running again" not in notice, notice
    assert len(props) >= 2, "a /props that failed was not asked again"
    assert "props are not ready" in error_text(pg), error_text(pg)
    pg.unroute("**/props")
    pg.wait_for_function("() => document.getElementById('notice').textContent.includes('running again')")
    assert error_text(pg) == ""
    assert pg.input_value("[data-testid=input]") == "my draft"
    ctx.close()
    assert not errors, errors


# ---------------------------------------------------------------------------------------
# 5. The context count of the chat shown, not of the last one.

def test_the_context_count_of_the_previous_chat_is_not_shown_while_measuring(page):
    chats = [
        {"id": "short1", "title": "short", "created": 1, "updated": 1,
         "messages": [{"role": "user", "content": "hi"}]},
        {"id": "long1", "title": "long", "created": 2, "updated": 2,
         "messages": [{"role": "user", "content": "a longer question " * 6},
                      {"role": "assistant", "content": "and a longer answer " * 6}]},
    ]
    page.evaluate("""(chats) => { localStorage.setItem('chatfile.conversations', JSON.stringify(chats));
        localStorage.setItem('chatfile.current', JSON.stringify('long1')); }""", chats)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_function("() => /^context \\d+ \\/ \\d+/.test(document.getElementById('ctx').textContent)")
    long_count = page.text_content("[data-testid=ctx]")
    held, holding = [], [True]

    def hold(route):  # the measuring requests wait until the test lets them go
        if holding[0]:
            held.append(route)
        else:
            route.continue_()
    for path in ("**/apply-template", "**/tokenize"):
        page.route(path, hold)
    page.locator("[data-testid=conv-open]", has_text="short").click()
    page.wait_for_function("() => document.getElementById('conv-title').textContent === 'short'")
    while not held:
        page.wait_for_timeout(20)
    shown = page.text_content("[data-testid=ctx]")
    assert shown != long_count, "the long chat's count, under the short chat"
    assert "measuring" in shown, shown
    holding[0] = False
    for route in held:
        route.continue_()
    page.wait_for_function("() => /^context \\d+ \\/ \\d+/.test(document.getElementById('ctx').textContent)")
    short_count = page.text_content("[data-testid=ctx]")
    assert short_count != long_count, (short_count, long_count)
