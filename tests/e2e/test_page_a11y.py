"""The chat page (runtime/web/) as a screen-reader or keyboard-only user meets it: names
and landmarks, live regions that say a reply once (not word by word), where the focus
goes, contrast in both colour schemes, a window 320 px wide. Headless Chromium against
the real server (tiny fixture model), with canned replies where a test needs to hold one;
each test failed on the page before its fix. Helpers and fixtures are test_page.py's and
test_page_explore.py's.
"""
from __future__ import annotations

import re

from tests.e2e.conftest import require_chromium
from tests.e2e.test_page import (  # noqa: F401 - `page` is a fixture
    TIMEOUT_MS, canned_sse, open_page, page, wait_idle)
from tests.e2e.test_page_explore import hold_replies, import_chat, reply_with, sse, wait_held
from tests.e2e.test_page_recovery import ACTIVE

sync_api = require_chromium()

REPLY = "[data-testid=message][data-role=assistant]"

# The live region (aria-live, or a role that is one) around the element `sel`, if any,
# and whether it is there to hear (rendered) now.
LIVE_AROUND = """(sel) => {
    const e = document.querySelector(sel);
    const live = e.closest('[aria-live]:not([aria-live=off]), [role=status], [role=alert], ' +
                           '[role=log], [role=marquee], [role=timer]');
    return live && {role: live.getAttribute('role') || live.getAttribute('aria-live'),
                    rendered: live.checkVisibility()};
}"""

# From now on, every text the page's own live region (#announce) is given.
RECORD_SAID = """() => {
    window.__said = [];
    const a = document.getElementById('announce');
    if (a) new MutationObserver(() => window.__said.push(a.textContent))
        .observe(a, {childList: true, characterData: true, subtree: true});
}"""


def said(pg):
    return pg.evaluate("window.__said")


def press_on(pg, selector, key="Enter"):
    """The keyboard's way to a control: focus it, press the key."""
    pg.focus(selector)
    pg.keyboard.press(key)


def test_a_reply_is_said_once_it_is_written_not_word_by_word(page):
    """The messages were a live region (aria-live=polite): a screen reader was handed the
    streaming reply again at every frame, and a whole chat whenever one was opened. Now
    nothing around a reply is live, the reply being written is aria-busy, and the page's
    own live region says that a reply is being written (and how to stop it), then the
    reply as the page shows it (no Markdown marks, no "Copy"), once. (Whether a screen
    reader speaks is not seen here: what it is handed is.)"""
    page.emulate_media(reduced_motion="reduce")
    page.evaluate(RECORD_SAID)
    canned_sse(page, "Here is **bold** text.\n\n```python\nprint(1)\n```\n\nDone.")
    held = hold_replies(page)  # (held first; then let go to the canned reply)
    page.keyboard.type("Hello there")  # (the message box has the focus from the start)
    page.keyboard.press("Enter")
    wait_held(page, held, 1)
    assert page.evaluate(LIVE_AROUND, REPLY + " [data-testid=message-body]") is None
    assert page.get_attribute(REPLY, "aria-busy") == "true"
    # prefers-reduced-motion: the cursor after the reply and the list's dot stand still.
    assert page.evaluate("document.getAnimations().length") == 0
    page.wait_for_function("() => window.__said.some(t => t.startsWith('Writing a reply'))")
    # Text selected in the chat as the reply ends: the chat is redrawn only once it goes
    # (it would go with the redraw), and the reply is no longer busy all the same.
    page.evaluate("() => getSelection().selectAllChildren("
                  "document.querySelector('[data-role=user] [data-testid=message-body]'))")
    held[0].fallback()
    wait_idle(page)
    page.wait_for_function("() => window.__said.some(t => t.startsWith('Assistant'))")
    replies = [t for t in said(page) if t.startswith("Assistant")]
    assert [" ".join(t.split()) for t in replies] == ["Assistant: Here is bold text. print(1) Done."]
    assert page.get_attribute(REPLY, "aria-busy") is None
    assert page.evaluate(LIVE_AROUND, "#announce") == {"role": "status", "rendered": True}


def test_notices_and_errors_are_said_by_live_regions_that_wait_for_them_and_once(page):
    """The notice and the error were live regions themselves, hidden while empty: a screen
    reader may say nothing of a region that appears with its text already in it. And
    every save (every 2 s while a reply is written, a rename) wrote the notice again, so
    that it would be said again."""
    assert page.evaluate(LIVE_AROUND, "#notice") == {"role": "status", "rendered": True}
    assert page.evaluate(LIVE_AROUND, "#error") == {"role": "alert", "rendered": True}
    import_chat(page, {"format": "chatfile-conversations", "conversations": [
        {"title": "kept", "created": 1, "updated": 1, "messages": [{"role": "user", "content": "hi"}]}]})
    page.wait_for_selector("[data-testid=notice]:text('Imported 1 chat.')")
    page.evaluate("""() => { window.__noticeChanges = 0;
        new MutationObserver(() => window.__noticeChanges++).observe(document.getElementById('notice'),
            {childList: true, characterData: true, subtree: true}); }""")
    press_on(page, "[data-testid=rename]")
    page.keyboard.type("renamed")
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=conv-title]:text-is('renamed')")
    assert page.text_content("[data-testid=notice]") == "Imported 1 chat."
    assert page.evaluate("window.__noticeChanges") == 0


def test_a_setting_out_of_range_takes_the_focus_and_says_why(page):
    """Save with a wrong value left the focus on Save, and the error under the fields was
    neither announced nor tied to the field: a screen reader heard nothing happen."""
    expect = sync_api.expect
    press_on(page, "[data-testid=settings-button]")
    assert page.evaluate(ACTIVE) == "set-system"  # (the focus went into the dialog)
    page.fill("[data-testid=set-temperature]", "3")
    press_on(page, "[data-testid=settings-save]")
    temperature = page.locator("[data-testid=set-temperature]")
    expect(temperature).to_be_focused()
    expect(temperature).to_have_attribute("aria-invalid", "true")
    expect(temperature).to_have_accessible_description(re.compile("Temperature must be a number from 0 to 2"))
    assert page.get_attribute("[data-testid=settings-error]", "role") == "alert"
    page.keyboard.press("Escape")  # closes the dialog, the focus back on Settings
    page.wait_for_selector("[data-testid=settings-dialog]", state="hidden")
    assert page.evaluate(ACTIVE) == "settings-btn"
    press_on(page, "[data-testid=settings-button]")
    expect(temperature).not_to_have_attribute("aria-invalid", "true")  # (a fresh start)


# Visible buttons whose accessible name (aria-label, else their text) is empty, or does
# not hold the words they show (WCAG 2.5.3: a voice-control user says what they see).
NAME_LACKS_WORDS = """() => {
    const words = (s) => s.toLowerCase().replace(/[^\\p{L}\\p{N}]+/gu, ' ').trim();
    const bad = [];
    for (const b of document.querySelectorAll('button')) {
        if (!b.checkVisibility({visibilityProperty: true})) continue;
        const name = b.getAttribute('aria-label') || b.textContent, shown = words(b.innerText);
        if (!words(name) || (shown && !words(name).includes(shown))) bad.push([b.innerText, name]);
    }
    return bad;
}"""


def test_every_control_is_named_with_the_words_it_shows(page):
    """Voice control goes by the words on a button ("click MD"): MD was named "Export this
    chat as Markdown", Retry "Send this message again", Quit "Stop chatfile", and the wait
    note's "Stop that reply" "Stop the reply being written in ...". The list of chats had
    no name."""
    def with_quit(route):  # a server started with a browser (a double-clicked bundle)
        r = route.fetch()
        route.fulfill(response=r, json=dict(r.json(), can_quit=True))
    page.route("**/props", with_quit)
    import_chat(page, {"format": "chatfile-conversations", "conversations": [
        {"title": "unanswered", "created": 1, "updated": 2, "messages": [{"role": "user", "content": "hi"}]},
        {"title": "stopped", "created": 1, "updated": 1, "messages": [
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "he", "stopped": True}]}]})
    page.wait_for_selector("[data-testid=regenerate]:text-is('Retry')")
    bad = page.evaluate(NAME_LACKS_WORDS)
    page.locator("[data-testid=conv-open]:text-is('stopped')").click()
    page.wait_for_selector("[data-testid=continue]")
    bad += page.evaluate(NAME_LACKS_WORDS)
    held = hold_replies(page)
    page.click("[data-testid=continue]")  # (its /props brings Quit)
    wait_held(page, held, 1)
    page.click("[data-testid=new-chat]")
    page.keyboard.type("second")
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=stop-other]")
    page.wait_for_selector("[data-testid=quit]")
    bad += page.evaluate(NAME_LACKS_WORDS)
    tree = page.locator("body").aria_snapshot()
    assert bad == [], bad
    for role in ('complementary "Conversations"', 'list "Chats"', "main", 'region "Messages"',
                 'textbox "Message"', 'button "Stop generating"'):
        assert role in tree, (role, tree)
    for route in held:
        reply_with(route, sse("ok"))


# The contrasts a person sees, from computed styles: each visible text against what is
# behind it (every layer's opacity applied: the actions under a message are at 75%), each
# text box's placeholder, and its edge against what is around it (3:1, WCAG 1.4.11).
# Disabled controls are exempt. -> the ones under what WCAG AA asks.
LOW_CONTRAST = """() => {
    const rgba = (c) => { const v = c.match(/[\\d.]+/g).map(Number); return v.length === 3 ? [...v, 1] : v; };
    const over = (top, under) => under.map((u, i) => top[i] * top[3] + u * (1 - top[3]));
    // The colour seen where `e` paints `paint` over its background (null: the background).
    const seen = (e, paint) => {
        const chain = [];
        for (let x = e; x; x = x.parentElement) chain.unshift(x);
        const layer = (i, under) => {
            const cs = getComputedStyle(chain[i]), o = parseFloat(cs.opacity);
            let c = over(rgba(cs.backgroundColor), under);
            c = i + 1 < chain.length ? layer(i + 1, c) : (paint ? over(paint, c) : c);
            return c.map((v, k) => v * o + under[k] * (1 - o));
        };
        return layer(0, [255, 255, 255]);
    };
    const lin = (x) => { x /= 255; return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4; };
    const lum = ([r, g, b]) => 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
    const ratio = (e, paint) => {
        const a = lum(seen(e, paint)), b = lum(seen(e, null));
        return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    };
    const low = [];
    const need = (what, r, min) => { if (r < min) low.push([what, +r.toFixed(2)]); };
    for (const e of document.querySelectorAll('body *')) {
        if (!e.checkVisibility({visibilityProperty: true, opacityProperty: true}) || e.closest(':disabled')) continue;
        const cs = getComputedStyle(e), px = parseFloat(cs.fontSize);
        const what = e.id || e.getAttribute('data-testid') || e.className || e.tagName;
        if ([...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) {
            const large = px >= 24 || (px >= 18.66 && parseInt(cs.fontWeight) >= 700);
            need(what + ': ' + e.textContent.trim().slice(0, 20), ratio(e, rgba(cs.color)), large ? 3 : 4.5);
        }
        if (e.matches('textarea, input:not([type=file])')) {
            const ph = getComputedStyle(e, '::placeholder'), c = rgba(ph.color);
            c[3] *= parseFloat(ph.opacity);
            if (e.placeholder) need(what + ' placeholder', ratio(e, c), 4.5);
            need(what + ' edge', ratio(e.parentElement, rgba(cs.borderTopColor)), 3);
        }
    }
    return low;
}"""


def test_text_and_text_boxes_keep_their_contrast_in_light_and_dark(page):
    """Measured as seen (opacity applied): in dark mode the message box's placeholder was
    Chromium's grey, 3.9:1; in light mode a link in a table's grey row was 4.3:1; and the
    text boxes' edges were 1.4-1.5:1 in both, where a box that is only a box by its edge
    needs 3:1."""
    import_chat(page, {"title": "colours", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "stopped": True, "content":
            "# Title\n\nA [link](https://example.com), `code`, **bold**.\n\n> a quote\n\n"
            "```python\ncode\n```\n\n| a | b |\n|---|---|\n| 1 | [one](https://a.example) |\n"
            "| 2 | [two](https://b.example) |"}]})
    page.evaluate("""() => { for (const [id, text] of [['notice', 'a notice'], ['error', 'an error']]) {
        const e = document.getElementById(id); e.textContent = text; e.hidden = false; }
        document.getElementById('stop-btn').hidden = false; }""")
    low = {}
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        low[scheme] = page.evaluate(LOW_CONTRAST)
    press_on(page, "[data-testid=settings-button]")
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        low[scheme + " settings"] = page.evaluate(LOW_CONTRAST)
    assert low == {"light": [], "dark": [], "light settings": [], "dark settings": []}, low


# (the body: past the last control, the browser's own controls have the focus)
FOCUS_SHOWN = """() => { const e = document.activeElement, cs = getComputedStyle(e);
    return e === document.body || cs.boxShadow !== 'none' ||
        cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) >= 1; }"""


def test_the_keyboard_keeps_its_place_when_a_reply_ends(page):
    """A reply that ended redrew its chat and the list of chats: the Copy button, or the
    chat in the list, that the keyboard was on went, and the focus fell to the page (the
    next Tab started from the top again). Stop, hidden as its reply ended by itself, left
    it on nothing too. A Copy that worked was said to no screen reader."""
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.evaluate(RECORD_SAID)
    import_chat(page, {"format": "chatfile-conversations", "conversations": [
        {"title": "code", "created": 1, "updated": 2, "messages": [
            {"role": "user", "content": "code?"}, {"role": "assistant", "content": "```\nprint(1)\n```"}]},
        {"title": "other", "created": 1, "updated": 1, "messages": [{"role": "user", "content": "hi"}]}]})
    held = hold_replies(page)
    where = "() => [document.activeElement.getAttribute('data-testid'), document.activeElement.textContent]"

    def reply_ends_with_the_focus_on(key, n, selector):
        """A message sent with the keyboard; the focus put on `selector` while its reply
        is written; then the reply ends (it is the n-th held one)."""
        press_on(page, "[data-testid=input]", key)
        page.keyboard.press("Enter")
        wait_held(page, held, n)
        page.focus(selector)
        reply_with(held[n - 1], sse("done"))
        wait_idle(page)

    reply_ends_with_the_focus_on("m", 1, "[data-index='1'] [data-testid=copy-code]")
    assert page.evaluate(where) == ["copy-code", "Copy"]
    assert page.evaluate("document.activeElement.closest('[data-index]').dataset.index") == "1"
    page.keyboard.press("Enter")
    page.wait_for_function("() => window.__said.includes('Copied')")
    reply_ends_with_the_focus_on("n", 2, "[data-testid=conv-open]:text-is('other')")
    assert page.evaluate(where) == ["conv-open", "other"]
    reply_ends_with_the_focus_on("o", 3, "[data-testid=stop]")
    assert page.evaluate(ACTIVE) == "input"

    # Every stop of Tab, round the page, shows where it is.
    page.focus("[data-testid=new-chat]")
    unshown = []
    for _ in range(40):
        if not page.evaluate(FOCUS_SHOWN):
            unshown.append(page.evaluate(ACTIVE))
        page.keyboard.press("Tab")
    assert unshown == [], unshown


OVERFLOW = """() => { const d = document.documentElement, m = document.getElementById('messages');
    return {page: d.scrollWidth - d.clientWidth, messages: m.scrollWidth - m.clientWidth}; }"""
FITS = {"page": 0, "messages": 0}
# A name in one long word, as a model's, a file's or a chat's may be (no break inside).
ONE_WORD = "qwen2.5_coder_0.5b_instruct_q4_k_m_finetuned_for_this_office"


def narrow_page(browser, server_url, props=None):
    """A window 320 px wide (a laptop's at 400% zoom, WCAG's reflow) on the page, whose
    /props says `props` too."""
    ctx = browser.new_context(viewport={"width": 320, "height": 480})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)

    def with_props(route):
        r = route.fetch()
        route.fulfill(response=r, json=dict(r.json(), **(props or {})))
    pg.route("**/props", with_props)
    return ctx, pg


def test_at_320_px_a_message_goes_and_its_reply_reads_without_sideways_scrolling(browser, server_url):
    """A model named in one long word on the first screen, and an error that names a
    file, made the chat (or the whole page) scroll sideways at 320 px: their lines did
    not break inside words. (And the page's live region must not be in the chat, which is
    inert while the list of chats is open over it.)"""
    ctx, pg = narrow_page(browser, server_url, {"model_name": ONE_WORD})
    open_page(pg, server_url)
    pg.wait_for_selector(f"[data-testid=welcome] h2:text('{ONE_WORD}')")
    first_screen = pg.evaluate(OVERFLOW)
    pg.route("**/v1/chat/completions", lambda route: route.fulfill(status=500, json={"error": {
        "message": f"cannot read /home/someone/Downloads/{ONE_WORD}.gguf", "type": "server_error"}}))
    pg.keyboard.type("hi")
    pg.keyboard.press("Enter")
    pg.wait_for_selector("[data-testid=error]:text('cannot read')")
    with_error = pg.evaluate(OVERFLOW)
    pg.unroute("**/v1/chat/completions")
    canned_sse(pg, "Fine: " + "word" * 30 + "\n\n```\n" + "x = 1; " * 40 + "\n```")
    pg.keyboard.type("again")
    pg.keyboard.press("Enter")
    wait_idle(pg)
    pg.wait_for_selector(f"{REPLY} [data-testid=message-body]:has-text('Fine:')")
    with_reply = pg.evaluate(OVERFLOW)
    send_box = pg.locator("[data-testid=send]").bounding_box()
    # The list of chats, over the chat (inert meanwhile): what a reply brought is still said.
    press_on(pg, "[data-testid=menu]")
    said_from_inert = pg.evaluate("() => !!document.getElementById('announce').closest('[inert]')")
    ctx.close()
    assert [first_screen, with_error, with_reply] == [FITS] * 3, (first_screen, with_error, with_reply)
    assert send_box["x"] + send_box["width"] <= 320
    assert not said_from_inert


def test_at_320_px_a_name_in_one_long_word_breaks_where_the_page_says_it(browser, server_url):
    """The Delete dialog naming a chat, the note of a reply waiting for that chat's, and
    the screen of a model that failed to load naming its file: each scrolled sideways at
    320 px, or widened the page."""
    ctx, pg = narrow_page(browser, server_url)
    open_page(pg, server_url)
    import_chat(pg, {"title": ONE_WORD, "messages": [{"role": "user", "content": "hi"}]})
    press_on(pg, "[data-testid=delete]")
    dialog = pg.evaluate("() => { const d = document.getElementById('ask-dialog');"
                         " return d.scrollWidth - d.clientWidth; }")
    pg.keyboard.press("Escape")
    held = hold_replies(pg)
    press_on(pg, "[data-testid=input]", "a")
    pg.keyboard.press("Enter")
    wait_held(pg, held, 1)
    press_on(pg, "[data-testid=menu]")  # (the list of chats, over the chat at this width)
    pg.click("[data-testid=new-chat]")
    pg.keyboard.press("b")
    pg.keyboard.press("Enter")
    pg.wait_for_selector(f"[data-testid=wait-note]:has-text('{ONE_WORD}')")
    waiting = pg.evaluate(OVERFLOW)
    pg.route("**/health", lambda route: route.fulfill(status=503, json={
        "status": "error", "message": f"cannot read /tmp/_MEI12345/{ONE_WORD}.gguf"}))
    pg.goto(server_url)
    pg.wait_for_selector("[data-testid=loading-text]:text('failed to load')")
    failed = pg.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    ctx.close()
    assert (dialog, waiting, failed) == (0, FITS, 0)


def test_with_reduced_motion_the_bar_of_a_page_waiting_for_its_server_stands_still(browser, server_url):
    """Opened while the server does not answer, the page shows a bar with no value:
    Chromium's own, which sweeps to and fro even when the system asks for reduced motion.
    (The cursor of a reply being written and the list's marks: see the first test.)"""
    ctx = browser.new_context(reduced_motion="reduce")
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.route("**/health", lambda route: route.abort())
    pg.goto(server_url)
    pg.wait_for_selector("[data-testid=loading-text]:text('not running')")
    bar = pg.locator("[data-testid=load-progress]")
    looks = set()
    for _ in range(6):  # (a moving bar differs from one look to the next)
        looks.add(bar.screenshot(animations="allow"))
        pg.wait_for_timeout(100)
    ctx.close()
    assert len(looks) == 1
