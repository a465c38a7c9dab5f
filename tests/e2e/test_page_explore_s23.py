"""What an exploratory round on the chat page (runtime/web/) as a non-technical user found
(session 23): a long prompt's read interrupted (Stop, an edit, a reload, the server
killed), a chat that outgrows a small context, hostile and unusual model text, keyboard
use at 360 px and two tabs. Headless Chromium against the real server on the tiny
fixture model (256-token context), or a stream the test feeds itself; each test failed
on the page before its fix. Helpers and fixtures are test_page.py's,
test_page_read_progress.py's and test_page_recovery.py's.
"""
from __future__ import annotations

from tests.e2e.conftest import require_chromium
from tests.e2e.test_page import (  # noqa: F401 - `page` is a fixture
    MODEL, canned_sse, current_conv, page, record_chat_requests, send,
    set_settings, stored, wait_idle)
from tests.e2e.test_page_read_progress import FED_STREAM, NOTE, content, progress, push
from tests.e2e.test_page_recovery import error_text, new_page

sync_api = require_chromium()

# Servers these tests stop and start again on the same port: their own, so that a
# restart finds it free (a busy one makes the server move to the next).
PORT = 19250


def reading(pg, text, report):
    """Send `text` and feed its reply's stream one progress report: the note shows."""
    pg.evaluate("window.__push = null")
    send(pg, text)
    pg.wait_for_function("() => !!window.__push")
    push(pg, report)
    pg.locator(NOTE).wait_for()


def test_a_server_gone_during_a_long_read_says_to_press_retry_the_button_there(browser, server_factory):
    """The server stopped while it read a long prompt, before the reply's first word: no
    reply is kept, so the question has Retry. The page said "stopped in the middle of this
    reply … press Regenerate", and once the server was back "Press Regenerate for a whole
    reply": neither the reply nor the button was there."""
    srv = server_factory(MODEL, "--port", PORT)
    ctx, pg = new_page(browser, srv.url + "/", fast_clock=True)
    pg.evaluate(FED_STREAM)
    reading(pg, "Summarise this long text", progress(3000, 0, 256, 2000))
    srv.stop()
    pg.evaluate("window.__cut()")
    wait_idle(pg)
    error = error_text(pg)
    assert pg.locator(NOTE).count() == 0
    # nothing lost: the question stays, with the button the error names
    assert [m["content"] for m in current_conv(pg)["messages"]] == ["Summarise this long text"]
    assert pg.locator("[data-testid=message]").count() == 1
    assert pg.locator("[data-testid=regenerate]").inner_text() == "Retry"
    assert "Retry" in error and "Regenerate" not in error and "middle of this reply" not in error, error

    again = server_factory(MODEL, "--port", srv.port)
    assert again.url == srv.url
    pg.wait_for_function("() => document.getElementById('notice').textContent.includes('running again')")
    notice = pg.text_content("[data-testid=notice]")
    assert "Press Retry" in notice and "Regenerate" not in notice, notice
    pg.evaluate("window.__unfeed()")
    set_settings(pg, temperature=0, **{"max-tokens": 4})
    pg.click("[data-testid=regenerate]")
    wait_idle(pg)
    roles = [m["role"] for m in current_conv(pg)["messages"]]
    errors, error = pg.errors, error_text(pg)
    ctx.close()
    assert roles == ["user", "assistant"] and error == "" and not errors, (roles, error, errors)


def test_a_message_too_long_for_the_context_does_not_make_every_later_one_fail(page):
    """A message too long for the model's context is not sent, and stays in the chat to be
    edited. The next message, short, was sent with it as one question (they had no reply
    between them), did not fit either, and so on: every later message in the chat failed
    with "no longer fits". It is left out now, as an older message."""
    set_settings(page, temperature=0, **{"max-tokens": 4})
    bodies = record_chat_requests(page)
    huge = "word " * 300  # past the tiny model's 256-token context by itself
    send(page, huge)
    page.wait_for_function("() => document.getElementById('error').textContent.includes('no longer fits')")
    wait_idle(page)
    assert bodies == []

    send(page, "ok")
    wait_idle(page)
    assert error_text(page) == ""
    assert len(bodies) == 1 and bodies[0]["messages"] == [{"role": "user", "content": "ok"}]
    # nothing lost: the long message stays in the chat, greyed above the line
    msgs = current_conv(page)["messages"]
    assert [(m["role"], m["content"]) for m in msgs[:2]] == [("user", huge), ("user", "ok")]
    assert msgs[2]["role"] == "assistant" and msgs[2]["content"]
    articles = page.locator("[data-testid=message]")
    assert articles.count() == 3
    assert "left-out" in articles.nth(0).get_attribute("class")
    assert "left-out" not in (articles.nth(1).get_attribute("class") or "")
    assert page.locator("[data-testid=left-out-line]").count() == 1
    assert "left out to fit the context" in page.text_content("[data-testid=notice]")

    # the chat goes on: the next question is sent with "ok" and its reply
    send(page, "and then?")
    wait_idle(page)
    assert error_text(page) == ""
    sent = bodies[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"] == "ok" and sent[-1]["content"] == "and then?"


def test_a_title_cut_from_emoji_keeps_them_whole(page):
    """A chat's title is its first message's first line, cut past 40 characters (UTF-16
    units), and a name typed in Rename is kept to 80. An emoji is two units and a family
    several emoji joined: a cut between them showed "\ufffd" (half an emoji) or a part of
    the family, in the header and the list."""
    smiles = "Emoji: " + "\U0001F600" * 20  # the 40th unit is half of the 17th
    canned_sse(page, "Nice.")
    send(page, smiles)
    wait_idle(page)
    title = page.text_content("[data-testid=conv-title]")
    assert title == "Emoji: " + "\U0001F600" * 16 + "\u2026", ascii(title)

    family = "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466"  # 11 units, one character
    page.click("[data-testid=new-chat]")
    send(page, "Families: " + family * 4)  # the 40th unit is inside the third family
    wait_idle(page)
    title = page.text_content("[data-testid=conv-title]")
    assert title == "Families: " + family * 2 + "\u2026", ascii(title)
    assert page.locator("[data-testid=conv-open]").first.inner_text() == title

    page.click("[data-testid=rename]")
    page.fill("[data-testid=ask-input]", "a" * 79 + "\U0001F600")  # 81 units
    page.click("[data-testid=ask-ok]")
    page.wait_for_selector("[data-testid=ask-dialog]", state="hidden")
    assert page.text_content("[data-testid=conv-title]") == "a" * 79
    assert [c["title"] for c in stored(page)][0] == "a" * 79



def test_escape_during_a_long_read_keeps_the_question_and_retry_reads_it_again(page):
    """Verified behaviour, not tested before: Escape in the message box during a long
    read stops it (the note goes, the old stream brings it back no more), the question
    stays with its Retry (Edit and Retry are disabled only while a reply is written), and
    Retry reads it again, with its note, to a reply."""
    page.evaluate(FED_STREAM)
    reading(page, "A long text to read", progress(3000, 0, 256, 2000))
    page.evaluate("window.__old = window.__push")
    page.focus("[data-testid=input]")
    page.keyboard.press("Escape")
    wait_idle(page)
    assert page.locator(NOTE).count() == 0
    try:  # (a report the stopped stream might still bring)
        page.evaluate("p => window.__old(p)", progress(3000, 0, 1024, 4000))
    except sync_api.Error:
        pass  # (cancelled: nothing more can be fed to it)
    assert page.locator(NOTE).count() == 0
    assert [m["content"] for m in current_conv(page)["messages"]] == ["A long text to read"]
    retry = page.locator("[data-testid=regenerate]")
    assert retry.inner_text() == "Retry" and retry.is_enabled()
    assert page.locator("[data-testid=edit]").is_enabled()

    page.evaluate("window.__push = null")
    retry.click()
    page.wait_for_function("() => !!window.__push")
    push(page, progress(3000, 0, 512, 2000))
    page.locator(NOTE).wait_for()
    push(page, content("A summary.", "stop"))
    page.evaluate("window.__end()")
    wait_idle(page)
    assert page.locator(NOTE).count() == 0
    msgs = current_conv(page)["messages"]
    assert [(m["role"], m["content"]) for m in msgs] == [
        ("user", "A long text to read"), ("assistant", "A summary.")]


def test_a_server_gone_during_a_continue_says_to_press_continue(browser, server_factory):
    """The server stopped while a Continue went on with a reply cut at the max-tokens
    limit. The page said "… press Regenerate", and once the server was back "Press
    Regenerate for a whole reply": that would throw away the reply the user was having
    continued. It names Continue, which is there and keeps the reply."""
    srv = server_factory(MODEL, "--port", PORT)
    ctx, pg = new_page(browser, srv.url + "/", fast_clock=True)
    pg.evaluate(FED_STREAM)
    pg.evaluate("window.__push = null")
    send(pg, "Tell me a story")
    pg.wait_for_function("() => !!window.__push")
    push(pg, content("Once upon a time", finish="length"))
    pg.evaluate("window.__end()")
    wait_idle(pg)
    for more in ("", " there was"):  # cut off before anything new, and after a few words
        pg.evaluate("window.__push = null")
        pg.click("[data-testid=continue]")
        pg.wait_for_function("() => !!window.__push")
        if more:
            push(pg, content(more))
            pg.wait_for_function("t => document.body.innerText.includes(t)", arg="Once upon a time" + more)
        srv.stop()
        pg.evaluate("window.__cut()")
        wait_idle(pg)
        error = error_text(pg)
        assert "Continue" in error and "Regenerate" not in error, error
        # nothing lost: the reply is kept as far as it got, and Continue is there
        replies = [m["content"] for m in current_conv(pg)["messages"] if m["role"] == "assistant"]
        assert replies == ["Once upon a time" + more], replies
        assert pg.locator("[data-testid=continue]").is_enabled()

        srv = server_factory(MODEL, "--port", srv.port)
        pg.wait_for_function("() => document.getElementById('notice').textContent.includes('running again')")
        notice = pg.text_content("[data-testid=notice]")
        assert "Press Continue" in notice and "Regenerate" not in notice, notice
    ctx.close()
