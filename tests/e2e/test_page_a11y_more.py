"""The chat page (runtime/web/) as a screen-reader user meets it, continued from
test_page_a11y.py: the notes under a reply (it waits for another reply, or is written in
another tab) said once by the page's live region, what happens while a dialog is open
said from inside it, and message authors as headings. Each test failed on the page
before its fix. Helpers and fixtures are those of test_page_a11y.py, test_page.py,
test_page_explore.py and test_page_tabs.py.
"""
from __future__ import annotations

import json

from tests.e2e.conftest import require_chromium
from tests.e2e.test_page import current_conv, page, send, wait_idle  # noqa: F401 - `page` is a fixture
from tests.e2e.test_page_a11y import LIVE_AROUND, RECORD_SAID, press_on, said
from tests.e2e.test_page_explore import hold_replies, import_chat, reply_with, sse, wait_held
from tests.e2e.test_page_locks import WRITING_LOCK
from tests.e2e.test_page_tabs import ELSEWHERE, two_tabs

sync_api = require_chromium()

WAIT_NOTE = "[data-testid=wait-note]"


def said_with(pg, words):
    """The texts the page's live region was given that hold `words`."""
    return [t for t in said(pg) if words in t]


def test_a_reply_that_waits_says_so_once_and_not_at_each_redraw(page):
    """The note under a reply waiting for another chat's was drawn with its text in a
    live region of its own (role=status): a screen reader may say nothing of a region
    that comes with its text, and each redraw of the chat made a new one. Now the page's
    live region says it, with "Writing a reply", once."""
    page.evaluate(RECORD_SAID)
    held = hold_replies(page)
    send(page, "first")
    wait_held(page, held, 1)
    page.click("[data-testid=new-chat]")
    send(page, "second")
    page.wait_for_selector(WAIT_NOTE)
    wait_held(page, held, 2)
    waits = "Waiting for the reply in \u201cfirst\u201d to finish: the model writes one reply at a time."
    page.wait_for_function("(w) => window.__said.some(t => t.includes(w))", arg=waits)
    assert page.evaluate(LIVE_AROUND, WAIT_NOTE) is None
    # The chat drawn again (renamed) with the note: not said again.
    press_on(page, "[data-testid=rename]")
    page.keyboard.type("renamed")
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=conv-title]:text-is('renamed')")
    page.wait_for_selector(WAIT_NOTE)
    assert said_with(page, "Waiting for") == ["Writing a reply\u2026 Escape stops it. " + waits]
    for route in held:
        reply_with(route, sse("ok"))
    wait_idle(page)


# Another tab's saves of chat `conv`, ending with `extra` messages (its reply so far).
SAVE_AS_OTHER_TAB = """([conv, extra]) => localStorage.setItem('chatfile.conversations',
    JSON.stringify([Object.assign({}, conv, {messages: conv.messages.concat(extra), updated: Date.now()})]))"""


def test_a_reply_written_in_another_tab_is_said_once_not_at_each_of_its_saves(browser, server_url):
    """The note "Being written in another tab…" was drawn with its text in a role=status
    of its own, and drawn again at every save of the other tab's (every 2 s). Now the
    page's live region says it once: not again as the reply gets words, nor as it grows."""
    ctx, (a, x) = two_tabs(browser, server_url)
    import_chat(a, {"title": "Notes", "messages": [{"role": "user", "content": "hi"},
                                                   {"role": "assistant", "content": "hello"}]})
    a.evaluate(RECORD_SAID)
    conv = current_conv(a)
    # Tab X writes a reply in the chat: it holds its lock, and saves as it goes.
    x.evaluate("(name) => { navigator.locks.request(name, () => new Promise((letGo) => {"
               " window.__letGo = letGo; })); }", WRITING_LOCK + conv["id"])
    x.wait_for_function("() => window.__letGo")  # (held from now on)
    question = {"role": "user", "content": "and then?"}
    x.evaluate(SAVE_AS_OTHER_TAB, [conv, [question]])
    a.wait_for_selector(f"{ELSEWHERE}:has-text('A reply to this')")
    for words in ("Once", "Once upon a time"):
        x.evaluate(SAVE_AS_OTHER_TAB, [conv, [question, {"role": "assistant", "content": words}]])
        a.wait_for_function("(w) => [...document.querySelectorAll('[data-role=assistant]')]"
                            ".some(m => m.textContent.includes(w))", arg=words)
        a.wait_for_selector(f"{ELSEWHERE}:has-text('Being written')")
    assert a.evaluate(LIVE_AROUND, ELSEWHERE) is None
    assert said_with(a, "another tab") == [
        "A reply to this is being written in another tab\u2026 It shows here once it is finished."]
    x.evaluate("() => window.__letGo()")
    a.wait_for_selector(ELSEWHERE, state="detached")
    ctx.close()
    assert not a.errors and not x.errors, (a.errors, x.errors)


def ax_nodes(pg, selector):
    """Chromium's accessibility-tree nodes of the elements `selector` matches: what it
    hands a screen reader (Playwright's own role queries compute some of it otherwise)."""
    cdp = pg.context.new_cdp_session(pg)
    cdp.send("Accessibility.enable")
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    ids = cdp.send("DOM.querySelectorAll", {"nodeId": root, "selector": selector})["nodeIds"]
    nodes = [cdp.send("Accessibility.getPartialAXTree", {"nodeId": i, "fetchRelatives": False})["nodes"][0]
             for i in ids]
    cdp.detach()
    return nodes


def ignored_by_screen_readers(pg, selector):
    """Whether Chromium's accessibility tree leaves `selector` out (the page behind a
    modal dialog is), with why."""
    node = ax_nodes(pg, selector)[0]
    return node["ignored"] and [r["name"] for r in node["ignoredReasons"]]


def fail(route):
    route.fulfill(status=500, content_type="application/json",
                  body=json.dumps({"error": {"message": "out of memory", "type": "server_error"}}))


def test_a_reply_or_an_error_that_comes_while_a_dialog_is_open_is_said(page):
    """A modal dialog makes the rest of the page inert, and the live regions with it: a
    reply that ended, or an error, while Settings was open was said to no one. Now the
    page's live region is in the open dialog meanwhile, and says them; with no dialog,
    an error is said by its own alert, and not by that region too."""
    page.evaluate(RECORD_SAID)
    held = hold_replies(page)
    for n, end in ((1, lambda route: reply_with(route, sse("Done here."))), (2, fail)):
        send(page, f"question {n}")
        wait_held(page, held, n)
        press_on(page, "[data-testid=settings-button]")
        assert ignored_by_screen_readers(page, "#announce") is False
        assert page.text_content("#announce") == ""  # ("Writing a reply…" is not said again)
        end(held[n - 1])
        wait_idle(page)
        page.wait_for_selector("[data-testid=settings-dialog]", state="visible")
        press_on(page, "[data-testid=settings-cancel]")
        page.wait_for_selector("[data-testid=settings-dialog]", state="hidden")
    page.wait_for_function("() => window.__said.includes('Assistant: Done here.')")
    page.wait_for_function("() => window.__said.some(t => t.includes('out of memory'))")
    assert page.evaluate("document.getElementById('announce').parentNode === document.body")
    # No dialog: the error line's own alert says it.
    page.unroute("**/v1/chat/completions")
    page.route("**/v1/chat/completions", fail)
    page.click("[data-testid=regenerate]")
    page.wait_for_function("() => document.getElementById('error').textContent.includes('out of memory')")
    assert len(said_with(page, "out of memory")) == 1


def test_each_message_is_a_heading_under_the_chats_title(page):
    """A message's author ("You", "Assistant") was a plain div: a screen reader could not
    go from message to message by headings. They are headings now, under the chat's
    title (the h1), and look as they did (no heading's margins)."""
    import_chat(page, {"title": "Notes", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}]})
    headings = page.get_by_role("heading")
    assert page.get_by_role("heading", level=1).all_text_contents() == ["Notes"]
    authors = page.locator("#messages").get_by_role("heading", level=2)
    assert authors.all_text_contents() == ["System", "You", "Assistant"]
    assert headings.count() == 4
    assert authors.first.evaluate("(h) => getComputedStyle(h).margin") == "0px 0px 2px"


def test_a_replys_own_headings_sit_under_its_author(page):
    """A reply's "# Title" was an h1 like the chat's title, above the authors' h2s in the
    heading order: a screen reader's heading list put the reply's parts outside its
    message. They are levels 3-6 now, drawn as the markdown asked (an h1's size)."""
    import_chat(page, {"title": "Notes", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "# Title\n\n## Part\n\n###### Small\n\ntext"}]})
    levels = {n["name"]["value"]: [p["value"]["value"] for p in n["properties"] if p["name"] == "level"]
              for n in ax_nodes(page, "h1, h2, h3, h4, h5, h6") if not n["ignored"]}
    assert levels == {"Notes": [1], "You": [2], "Assistant": [2], "Title": [3], "Part": [4],
                      "Small": [6]}, levels
    assert page.locator("#messages .msg-body h1").count() == 1  # still an h1 to look at
