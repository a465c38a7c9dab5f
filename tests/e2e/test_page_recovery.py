"""The chat page (runtime/web/) when the server goes away and comes back, when two tabs
share its chats, and what an exploratory round as a non-technical user found. Headless
Chromium against the real server; each test failed on the page before its fix. Helpers
and fixtures are those of test_page.py and test_page_explore.py.
"""
from __future__ import annotations

import json

from tests.e2e.conftest import require_chromium
from tests.e2e.test_page import (  # noqa: F401 - `page` is a fixture
    MODEL, TIMEOUT_MS, canned_sse, current_conv, open_page, page, send, set_settings,
    stored, wait_idle)
from tests.e2e.test_page_explore import OTHER_MODEL, import_chat

sync_api = require_chromium()

# Servers these tests stop and start again on the same port: their own range, so that a
# restart finds its port free (a busy one makes the server move to the next).
PORT = 18120

# The page's setTimeout, sped up 50 times for waits of a second or more. The waits its
# server checks (checkServer) asked for are kept in window.__checkWaits, all waits of a
# second or more in window.__longWaits. The page's rhythm is unchanged; the test only
# sees it sooner.
FAST_CLOCK = """(() => {
    const realSetTimeout = window.setTimeout;
    window.__checkWaits = [];
    window.__longWaits = [];
    window.setTimeout = function (fn, ms, ...args) {
        if (fn && fn.name === 'checkServer') window.__checkWaits.push(ms);
        if (ms >= 1000) window.__longWaits.push(ms);
        return realSetTimeout.call(window, fn, ms >= 1000 ? ms / 50 : ms, ...args);
    };
})()"""

SET_HIDDEN = """(hidden) => {
    Object.defineProperty(document, 'hidden', {configurable: true, get: () => hidden});
    Object.defineProperty(document, 'visibilityState', {configurable: true,
                                                        get: () => hidden ? 'hidden' : 'visible'});
    document.dispatchEvent(new Event('visibilitychange'));
}"""


def new_page(browser, url, fast_clock=False):
    ctx = browser.new_context()
    if fast_clock:
        ctx.add_init_script(FAST_CLOCK)
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    open_page(pg, url)
    return ctx, pg


def health_requests(pg):
    """The URLs of the /health requests the page makes from now on."""
    seen = []
    pg.on("request", lambda r: seen.append(r.url) if r.url.endswith("/health") else None)
    return seen


def error_text(pg):
    return pg.text_content("[data-testid=error]") if pg.is_visible("[data-testid=error]") else ""


# ---------------------------------------------------------------------------------------
# The server stopped and started again while the tab stays open.

def test_a_restart_with_another_model_shows_in_the_header_without_a_send(browser, server_factory):
    """The page only learnt of an outage, and of the model that came back, at the next
    send: a user who had quit and started chatfile again saw the old model's name and
    context size, and nothing told them the server had been gone."""
    first = server_factory(MODEL, "--port", PORT)
    url = first.url + "/"
    ctx, pg = new_page(browser, url)
    old_name = pg.text_content("[data-testid=model-name]")
    canned_sse(pg, "Hello!")
    send(pg, "hi")
    wait_idle(pg)
    pg.unroute("**/v1/chat/completions")
    pg.fill("[data-testid=input]", "a draft, half written")

    first.stop()
    pg.wait_for_function("() => document.getElementById('error').textContent.includes('not running')")
    assert "reconnects by itself" in error_text(pg)
    # It is the server's state, not the chat's: another chat says it too.
    pg.click("[data-testid=new-chat]")
    assert "reconnects by itself" in error_text(pg)
    pg.locator("[data-testid=conv-open]", has_text="hi").click()

    second = server_factory(OTHER_MODEL, "--port", first.port, "--ctx", 128)
    assert second.url == first.url, "the restarted server did not get the same port"
    pg.wait_for_function("(old) => document.getElementById('model-name').textContent !== old",
                         arg=old_name)
    assert pg.text_content("[data-testid=model-name]") == "tiny-qwen2"
    pg.wait_for_function("() => document.getElementById('ctx').textContent.endsWith(' / 128')")
    assert error_text(pg) == ""
    notice = pg.text_content("[data-testid=notice]")
    assert "running again" in notice and "tiny-qwen2" in notice, notice
    # The draft and the chat are as they were.
    assert pg.input_value("[data-testid=input]") == "a draft, half written"
    assert [m["content"] for m in current_conv(pg)["messages"]] == ["hi", "Hello!"]
    assert pg.locator("[data-testid=message]").count() == 2
    ctx.close()
    assert not pg.errors, pg.errors


def test_checks_back_off_while_the_server_is_gone_and_pause_while_hidden(browser, server_factory):
    """While the server is gone the page asks again at growing intervals (1 s up to 10 s),
    one request at a time; a hidden tab asks nothing until it is shown again."""
    srv = server_factory(MODEL, "--port", PORT + 1)
    ctx, pg = new_page(browser, srv.url + "/", fast_clock=True)
    pg.fill("[data-testid=input]", "typed while it was down")
    health = health_requests(pg)
    srv.stop()
    pg.wait_for_function("() => window.__checkWaits.filter(ms => ms === 10000).length >= 3")
    waits = pg.evaluate("window.__checkWaits")
    gone = waits[waits.index(1000):]
    assert gone[:5] == [1000, 2000, 4000, 8000, 10000], waits
    assert set(gone[5:]) == {10000}, waits
    # One /health per check: no bursts, no retries in between.
    assert len(health) <= len(waits) + 1, (len(health), waits)

    pg.evaluate(SET_HIDDEN, True)
    pg.wait_for_timeout(300)  # a check already on its way may still land
    asked = len(health)
    pg.wait_for_timeout(1500)  # 75 s of the page's time
    assert len(health) == asked, "a hidden tab kept asking the server"

    again = server_factory(MODEL, "--port", srv.port)
    assert again.url == srv.url
    pg.wait_for_timeout(500)
    assert error_text(pg), "a hidden tab noticed the server without asking"
    with pg.expect_request("**/health"):
        pg.evaluate(SET_HIDDEN, False)  # shown: it asks at once
    pg.wait_for_function("() => document.getElementById('error').hidden")
    assert "running again" in pg.text_content("[data-testid=notice]")
    assert pg.input_value("[data-testid=input]") == "typed while it was down"
    ctx.close()
    assert not pg.errors, pg.errors


def test_a_retry_that_works_means_the_server_is_back(browser, server_factory):
    """A Retry that worked did not tell the page the server was back: its next check,
    still due from the outage, announced "running again" and took away the error of a
    later reply (one cut off half way), with the button it named."""
    srv = server_factory(MODEL, "--port", PORT + 2)
    ctx, pg = new_page(browser, srv.url + "/")
    set_settings(pg, temperature=0, **{"max-tokens": 2})
    srv.stop()
    with pg.expect_event("requestfailed", lambda r: r.url.endswith("/health")):
        send(pg, "are you there?")  # (and the check that follows finds no server)
    wait_idle(pg)
    assert "not running" in error_text(pg)
    checks = []  # the page's checks of the server wait, unanswered, until released
    pg.route("**/health", lambda route: checks.append(route))
    again = server_factory(MODEL, "--port", srv.port)
    assert again.url == srv.url
    pg.click("[data-testid=regenerate]")  # Retry: it works
    wait_idle(pg)
    assert error_text(pg) == ""
    pg.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"},
        body=f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': 'Once'}}]})}\n\n"))
    send(pg, "tell me a story")
    wait_idle(pg)
    assert "stopped in the middle" in error_text(pg)
    deadline_ms = TIMEOUT_MS
    while not checks and deadline_ms > 0:  # the check due from the outage
        pg.wait_for_timeout(100)
        deadline_ms -= 100
    assert checks, "the page stopped checking the server"
    checks[0].continue_()
    while len(checks) < 2 and deadline_ms > 0:  # it has been answered and handled
        pg.wait_for_timeout(100)
        deadline_ms -= 100
    assert len(checks) >= 2
    error = error_text(pg)
    notice = pg.text_content("[data-testid=notice]")
    ctx.close()
    assert "stopped in the middle" in error and "Regenerate" in error, error
    assert "running again" not in notice, notice


def test_a_server_loading_or_failing_after_a_restart_says_so(browser, server_url):
    """Started again, a server first loads its model (a real one takes seconds), or fails
    to: the page says which, and then that it is back."""
    ctx, pg = new_page(browser, server_url, fast_clock=True)
    pg.fill("[data-testid=input]", "my draft")
    answers = [(503, {"status": "loading", "progress": 0.42})] * 3 + [
        (503, {"status": "error", "message": "not a GGUF file"})] * 3

    def health(route):
        if not answers:
            return route.continue_()
        status, body = answers.pop(0)
        route.fulfill(status=status, content_type="application/json", body=json.dumps(body))
    pg.route("**/health", health)
    pg.wait_for_function("() => document.getElementById('notice').textContent.includes('42%')")
    assert "loading the model" in pg.text_content("[data-testid=notice]")
    pg.wait_for_function("() => document.getElementById('error').textContent.includes('not a GGUF file')")
    assert "failed to load" in error_text(pg)
    pg.click("[data-testid=new-chat]")  # the server's state, not the chat's
    assert "not a GGUF file" in error_text(pg)
    pg.wait_for_function("() => document.getElementById('error').hidden")
    assert "running again" in pg.text_content("[data-testid=notice]")
    assert pg.input_value("[data-testid=input]") == "my draft"
    ctx.close()
    assert not pg.errors, pg.errors


def test_a_page_opened_before_the_server_runs_asks_less_and_less_often(browser, server_url):
    """Opened while the server was not running (a bookmark, a reopened browser), the page
    asked every 2 s for as long as it stayed open, hidden or not."""
    ctx = browser.new_context()
    ctx.add_init_script(FAST_CLOCK)
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.route("**/health", lambda route: route.abort())  # nothing listens
    pg.goto(server_url)
    pg.wait_for_function("() => window.__longWaits.filter(ms => ms === 10000).length >= 2")
    waits = pg.evaluate("window.__longWaits")
    assert waits[:6] == [1000, 2000, 4000, 8000, 10000, 10000], waits
    assert "not running" in pg.text_content("[data-testid=loading-text]")
    pg.unroute("**/health")
    pg.wait_for_selector("body[data-ready=true]")
    ctx.close()


# ---------------------------------------------------------------------------------------
# Two tabs on one server (a second double-click opens the running chat in a new tab).

def two_tabs(browser, url):
    ctx = browser.new_context()
    tabs = []
    for _ in range(2):
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        open_page(pg, url)
        canned_sse(pg, "Hello!")
        tabs.append(pg)
    return ctx, tabs


def test_a_rename_in_one_tab_is_not_undone_by_the_other(browser, server_url):
    """Tab B kept its own copy of the chat it shows: renamed in tab A, the chat kept its
    old name in B, and B's next message saved the old name over the new one."""
    ctx, (a, b) = two_tabs(browser, server_url)
    send(a, "the first chat")
    wait_idle(a)
    b.wait_for_function("() => document.getElementById('conv-title').textContent === 'the first chat'")
    a.click("[data-testid=rename]")
    a.fill("[data-testid=ask-input]", "Holiday plans")
    a.click("[data-testid=ask-ok]")
    b.wait_for_function("() => document.getElementById('conv-title').textContent === 'Holiday plans'")
    send(b, "and a question from tab B")
    wait_idle(b)
    titles = [c["title"] for c in stored(a)]
    ctx.close()
    assert titles == ["Holiday plans"], titles


def test_settings_saved_in_one_tab_are_used_in_the_other(browser, server_url):
    """Settings are kept for the browser, but an open tab went on with the ones it had
    read at start: a system prompt set in tab A was not sent by tab B until a reload."""
    ctx, (a, b) = two_tabs(browser, server_url)
    set_settings(a, system="Answer in French.")
    bodies = []
    b.on("request", lambda r: bodies.append(json.loads(r.post_data))
         if r.url.endswith("/v1/chat/completions") else None)
    send(b, "hello")
    wait_idle(b)
    ctx.close()
    assert bodies[-1]["messages"][0] == {"role": "system", "content": "Answer in French."}


# ---------------------------------------------------------------------------------------
# An exploratory round as a non-technical user: keyboard, phone width, dark mode, long
# messages and replies, Markdown as models write it.

ACTIVE = "() => { const e = document.activeElement; return e.id || e.getAttribute('data-testid') || e.tagName; }"


def test_the_phone_menu_takes_the_focus_and_escape_closes_it(browser, server_url):
    """At phone width the list of chats slides over the chat, but the focus stayed behind
    it: Tab walked the chat's buttons hidden under the scrim, and Escape did nothing."""
    ctx = browser.new_context(viewport={"width": 360, "height": 740})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    open_page(pg, server_url)
    import_chat(pg, {"title": "a chat", "messages": [{"role": "user", "content": "hi"}]})
    pg.focus("[data-testid=menu]")
    pg.keyboard.press("Enter")
    assert pg.evaluate(ACTIVE) == "conv-open"  # the open chat, in the list
    sidebar = set()
    for _ in range(6):  # Tab stays in the list (and the browser's own controls)
        pg.keyboard.press("Tab")
        inside = pg.evaluate("() => !document.querySelector('main').contains(document.activeElement)")
        sidebar.add(inside)
    assert sidebar == {True}, "Tab went to the chat behind the list"
    pg.keyboard.press("Escape")
    pg.wait_for_selector("[data-testid=sidebar]", state="hidden")
    assert pg.evaluate(ACTIVE) == "menu-btn"
    # Choosing a chat from the list: the focus goes to the message box.
    pg.keyboard.press("Enter")
    pg.keyboard.press("Enter")
    pg.wait_for_selector("[data-testid=sidebar]", state="hidden")
    assert pg.evaluate(ACTIVE) == "input"
    ctx.close()


def test_the_focus_is_never_left_on_nothing(page):
    """Choosing a chat, Escape in the edit box, or an example prompt redrew the buttons
    that had the focus: it fell to the page, and the next Tab started from the top."""
    canned_sse(page, "Hello!")
    page.focus("[data-testid=example] >> nth=0")
    page.keyboard.press("Enter")
    wait_idle(page)
    assert page.evaluate(ACTIVE) == "input"
    page.click("[data-testid=new-chat]")
    send(page, "second chat")
    wait_idle(page)
    page.locator("[data-testid=conv-open]").nth(1).focus()
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.getElementById('conv-title').textContent !== 'second chat'")
    assert page.evaluate(ACTIVE) == "conv-open"
    assert page.evaluate("document.activeElement.getAttribute('aria-current')") == "true"
    page.focus("[data-testid=edit]")
    page.keyboard.press("Enter")
    assert page.evaluate(ACTIVE) == "edit-input"
    page.keyboard.press("Escape")
    assert page.evaluate(ACTIVE) == "edit"


def test_a_long_reply_can_be_scrolled_with_the_keyboard(page):
    """The messages could not take the focus: a reply longer than the screen could only be
    read with a mouse (Page Up in the message box moves its cursor)."""
    canned_sse(page, "\n\n".join(f"Paragraph {k} of a long answer." for k in range(80)))
    send(page, "a long answer please")
    wait_idle(page)
    box = "document.getElementById('messages')"
    bottom = page.evaluate(f"{box}.scrollTop")
    assert bottom > 0
    page.focus("[data-testid=delete]")
    page.keyboard.press("Tab")  # from the chat's buttons to the messages under them
    assert page.evaluate(ACTIVE) == "messages"
    page.keyboard.press("PageUp")
    page.wait_for_function(f"(b) => {box}.scrollTop < b", arg=bottom)


# The contrast of each visible, enabled element's own text against what is behind it
# (WCAG's formula); those under 4.5:1 (3:1 for large text).
LOW_CONTRAST = """() => {
    const rgb = (c) => c.match(/[\\d.]+/g).map(Number);
    const lin = (x) => { x /= 255; return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4; };
    const lum = ([r, g, b]) => 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
    const behind = (e) => {
        for (; e; e = e.parentElement) {
            const c = rgb(getComputedStyle(e).backgroundColor);
            if (c.length < 4 || c[3] === 1) return c.slice(0, 3);
        }
        return [255, 255, 255];
    };
    const low = [];
    for (const e of document.querySelectorAll('body *')) {
        if (!e.checkVisibility() || e.disabled) continue;
        if (![...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
        const cs = getComputedStyle(e);
        const a = lum(rgb(cs.color)), b = lum(behind(e));
        const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
        const large = parseFloat(cs.fontSize) >= 24;
        if (ratio < (large ? 3 : 4.5)) low.push([e.id || e.className || e.tagName, e.textContent.trim().slice(0, 20), ratio.toFixed(2)]);
    }
    return low;
}"""


def test_text_is_readable_in_dark_mode(browser, server_url):
    """In dark mode the filled buttons (New chat, Send, Stop) had white text on a light
    blue or red: 3.0-3.2:1, under the 4.5:1 that small text needs."""
    for scheme in ("light", "dark"):
        ctx = browser.new_context(color_scheme=scheme)
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        open_page(pg, server_url)
        import_chat(pg, {"title": "colours", "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "A [link](https://example.com), `code`,\n\n> a quote\n\n"
                                             "```\ncode\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |"}]})
        pg.evaluate("""() => { for (const [id, text] of [['notice', 'a notice'], ['error', 'an error']]) {
            const e = document.getElementById(id); e.textContent = text; e.hidden = false; }
            document.getElementById('stop-btn').hidden = false; }""")
        low = pg.evaluate(LOW_CONTRAST)
        ctx.close()
        assert low == [], (scheme, low)


def test_a_paragraph_gets_its_direction_once_it_is_whole(page):
    """Every piece of inline formatting added to a paragraph made Chromium work out the
    paragraph's text direction (dir=auto) again: a line of 30,000 code spans took 10 s
    per render, and a streamed reply renders every frame. The direction is now set once
    the paragraph holds all its pieces: the test records, at each setting of `dir`, how
    many pieces the element held then (a count, not a time)."""
    seen = page.evaluate("""() => {
        const desc = Object.getOwnPropertyDescriptor(HTMLElement.prototype, 'dir');
        const setAttribute = Element.prototype.setAttribute;
        const seen = [];
        Object.defineProperty(HTMLElement.prototype, 'dir', {configurable: true, get: desc.get,
            set(v) { seen.push([this.tagName, this.childNodes.length, v]); desc.set.call(this, v); }});
        Element.prototype.setAttribute = function (name, v) {
            if (name === 'dir') seen.push([this.tagName, this.childNodes.length, v]);
            return setAttribute.call(this, name, v);
        };
        try {
            const d = document.createElement('div');
            d.appendChild(ChatMarkdown.render('`a` '.repeat(500)));
            if (d.querySelectorAll('p code').length !== 500) throw new Error('code spans lost');
            seen.push(['final', d.querySelector('p').childNodes.length, d.querySelector('p').dir]);
        } finally {
            Object.defineProperty(HTMLElement.prototype, 'dir', desc);
            Element.prototype.setAttribute = setAttribute;
        }
        return seen;
    }""")
    *sets, (_, final_pieces, final_dir) = seen
    assert final_dir == "auto" and final_pieces >= 500, seen[-1]
    p_sets = [s for s in sets if s[0] == "P"]
    assert p_sets == [["P", final_pieces, "auto"]], p_sets[:5]


def rendered(pg, text):
    """The message body Markdown makes of `text`, as nested [tag, children | text]."""
    return pg.evaluate("""(text) => {
        const tree = (n) => n.nodeType === 3 ? n.textContent :
            [n.tagName.toLowerCase(), [...n.childNodes].filter(c => c.nodeType !== 3 || c.textContent.trim())
                                                     .map(tree)];
        const d = document.createElement('div');
        d.appendChild(ChatMarkdown.render(text));
        return tree(d)[1];
    }""", text)


def test_steps_apart_and_their_code_stay_one_list(page):
    """Models write steps with blank lines between them, and a step's code indented under
    it after a blank line. The list ended at each blank line: the code fell out of its
    step, and bullets came out as separate lists."""
    steps = "1. Install it:\n\n   ```bash\n   pip install x\n   ```\n\n2. Run it.\n\n3. Done."
    [ol] = rendered(page, steps)
    assert ol[0] == "ol" and [li[0] for li in ol[1]] == ["li", "li", "li"], ol
    assert ol[1][0][1][0] == "Install it:" and ol[1][0][1][1][0] == "div", ol  # the code, in step 1
    code = page.evaluate("(t) => { const d = document.createElement('div'); d.appendChild(ChatMarkdown.render(t));"
                         " return d.querySelector('li pre').textContent; }", steps)
    assert code == "pip install x"
    assert rendered(page, "- a\n\n- b") == [["ul", [["li", ["a"]], ["li", ["b"]]]]]
    # What is not indented after the blank line ends the list, as before.
    assert rendered(page, "- a\n\nafter") == [["ul", [["li", ["a"]]]], ["p", ["after"]]]
    assert rendered(page, "- a\n\n after") == [["ul", [["li", ["a"]]]], ["p", [" after"]]]
    assert rendered(page, "- a\n\n1. b") == [["ul", [["li", ["a"]]]], ["ol", [["li", ["b"]]]]]


def test_a_link_in_angle_brackets_shows_without_them(page):
    """<https://example.com>, as models write a bare address, showed its brackets around
    the link."""
    assert rendered(page, "See <https://example.com/a_b> now.") == [
        ["p", ["See ", ["a", ["https://example.com/a_b"]], " now."]]]
    # Only a safe address becomes a link; anything else stays text.
    assert rendered(page, "<javascript:alert(1)> <b>x</b>") == [["p", ["<javascript:alert(1)> <b>x</b>"]]]
