"""The chat page (runtime/web/) while the server reads a long prompt: it asks for
llama-server's `return_progress` and shows, under the pending reply, how much of the
conversation the model has read (a long text pasted is read for many seconds on a CPU,
minutes on a slow one), until the reply's first text. Before, the page showed nothing
but an empty reply meanwhile.

The long prompt runs on the real Qwen model (reading a couple of thousand tokens takes it
seconds); a short prompt, the stream's own counting and the note's upkeep (a part of the
prompt found in the cache, a redraw of the chat, Stop) on the tiny fixture model or a
stream the test feeds itself. Helpers and fixtures are test_page.py's and
test_page_a11y.py's.
"""
from __future__ import annotations

import re

from tests.e2e.conftest import require_chromium
from tests.e2e.test_page import (  # noqa: F401 - `page` is a fixture
    assistant_bodies, page, page_at, record_chat_requests, send, set_settings, wait_idle)
from tests.e2e.test_page_a11y import RECORD_SAID, said

sync_api = require_chromium()

NOTE = "[data-testid=read-progress]"
REPLY = "[data-testid=message][data-role=assistant]"
# "Reading the conversation… 45% (680 of 1,509 tokens), about 12 s left"; with a part of
# the prompt in the server's cache the numbers count what is left to read.
FORMAT = re.compile(r"Reading the conversation\u2026 (\d{1,2})% \(([\d,]+) of ([\d,]+) "
                    r"(?:tokens|new tokens, [\d,]+ already read before)\)"
                    r"(?:, about \d+(?:\.\d)? (?:s|min|h) left)?")
# Long prompts are read for a while on a busy machine: no timing is asserted, only waited.
LONG_WAIT_MS = 600_000

# From now on, every state of the newest reply as the page draws it: its reading note
# (text, and whether it is under the reply) and the reply's text.
WATCH_NOTE = """() => {
    window.__seen = [];
    const box = document.getElementById('messages');
    new MutationObserver(() => {
        const note = box.querySelector('[data-testid=read-progress]');
        const bodies = box.querySelectorAll(
            '[data-testid=message][data-role=assistant] [data-testid=message-body]');
        const last = bodies[bodies.length - 1];
        window.__seen.push({
            note: note && note.textContent,
            under: !!note && !!note.closest('[data-testid=message][data-role=assistant]'),
            text: last ? last.textContent.trim() : ''});
    }).observe(box, {childList: true, subtree: true, characterData: true});
}"""


# The newest reply's text, once it has some.
TEXT = """() => {
    const b = document.querySelectorAll('[data-role=assistant] [data-testid=message-body]');
    const text = b.length ? b[b.length - 1].textContent.trim() : '';
    return text ? {text: text} : null;
}"""
# The reading note under the newest reply, or else its text, once there is either.
NOTE_OR_TEXT = """() => {
    const n = document.querySelector('[data-testid=message][data-role=assistant] '
                                     + '[data-testid=read-progress]');
    return n ? {note: n.textContent} : (%s)();
}""" % TEXT


def seen(pg):
    return pg.evaluate("window.__seen")


def notes_seen(pg):
    texts = []
    for s in seen(pg):
        if s["note"] and (not texts or texts[-1] != s["note"]):
            texts.append(s["note"])
    return texts


def long_text(tokens_wanted):
    """A pasted text of about tokens_wanted Qwen tokens (about 28 a sentence)."""
    sentence = ("The river ran past the old mill, where the miller's daughter counted sacks "
                "of grain and wrote the numbers in a ledger that nobody else ever read. ")
    return "Summarise this text in one sentence:\n\n" + sentence * (tokens_wanted // 31)


def test_a_long_prompt_shows_how_much_of_it_is_read(browser, server_factory, qwen_gguf_path):
    server = server_factory(qwen_gguf_path, "--ctx", "4096")
    with page_at(browser, server.url + "/") as pg:
        set_settings(pg, temperature=0, **{"max-tokens": 4})
        bodies = record_chat_requests(pg)
        pg.evaluate(WATCH_NOTE)
        pg.evaluate(RECORD_SAID)
        send(pg, long_text(2200))
        # (b) the note comes under the pending reply while the prompt is read, before
        # the reply's text
        first = pg.wait_for_function(NOTE_OR_TEXT, timeout=LONG_WAIT_MS).json_value()
        assert "note" in first, f"the reply began with no reading note before it: {first}"
        assert FORMAT.fullmatch(first["note"]) and int(FORMAT.fullmatch(first["note"]).group(1)) < 100
        # (a) the page asked for the progress chunks
        assert len(bodies) == 1 and bodies[0]["return_progress"] is True
        # (c) the reply's text comes, and the note has gone
        assert "text" in pg.wait_for_function(TEXT, timeout=LONG_WAIT_MS).json_value()
        assert pg.locator(NOTE).count() == 0
        wait_idle(pg)
        assert pg.locator(NOTE).count() == 0
        assert assistant_bodies(pg).last.inner_text().strip()

        states = seen(pg)
        texts = notes_seen(pg)
        assert texts, "no reading note was shown"
        percents = []
        for text in texts:
            m = FORMAT.fullmatch(text)
            assert m, text
            percents.append(int(m.group(1)))
            assert int(m.group(3).replace(",", "")) > 2000  # the whole prompt is counted
        assert all(p < 100 for p in percents) and percents == sorted(percents)
        # a later report has a rate to go on: the estimate of the time left
        assert any(text.endswith(" left") for text in texts)
        assert all(s["under"] for s in states if s["note"])
        # never the note and the reply's text at once
        assert not [s for s in states if s["note"] and s["text"]]
        # said once by #announce as it came, not at every report
        assert len([t for t in said(pg) if t.startswith("Reading the conversation")]) == 1


def test_a_short_prompt_shows_no_note_and_replies_as_before(page):
    set_settings(page, temperature=0, **{"max-tokens": 8})
    bodies = record_chat_requests(page)
    page.evaluate(WATCH_NOTE)
    send(page, "Hello there")
    wait_idle(page)
    assert bodies[0]["return_progress"] is True
    assert assistant_bodies(page).last.inner_text().strip()
    assert page.locator(NOTE).count() == 0
    assert seen(page) and not notes_seen(page)
    assert page.locator("[data-testid=stopped-note]").count() == 0


def test_progress_chunks_are_reported_and_not_counted_as_content(page):
    """Api.streamChat against the real server: each chunk's prompt_progress goes to
    onProgress, and result.chunks counts the content pieces only."""
    got = page.evaluate("""async () => {
        const pieces = [], reports = [];
        const result = await window.ChatApi.streamChat(
            {messages: [{role: 'user', content: 'Hello there'}], stream: true, max_tokens: 6,
             temperature: 0, return_progress: true},
            (piece) => pieces.push(piece), undefined, (p) => reports.push(p));
        return {pieces: pieces.length, chunks: result.chunks, reports: reports};
    }""")
    assert got["pieces"] >= 1 and got["chunks"] == got["pieces"]
    assert len(got["reports"]) == 1  # a short prompt: one report, all of it read
    r = got["reports"][0]
    assert r["processed"] == r["total"] > 0 and set(r) >= {"total", "cache", "processed", "time_ms"}


# The chat requests get a stream the test writes: window.__push(payload) sends one SSE
# event, window.__end() ends the stream, window.__cut() closes it as a server that died
# leaves it (no [DONE], no finish_reason); window.__unfeed() gives the page its own fetch
# back.
FED_STREAM = """() => {
    const realFetch = window.fetch;
    window.__unfeed = () => { window.fetch = realFetch; };
    window.fetch = async (path, init) => {
        if (!String(path).endsWith('chat/completions')) return realFetch(path, init);
        let ctl;
        const stream = new ReadableStream({start(c) { ctl = c; }});
        const enc = new TextEncoder();
        window.__push = (p) => ctl.enqueue(enc.encode('data: ' + JSON.stringify(p) + '\\n\\n'));
        window.__end = () => { ctl.enqueue(enc.encode('data: [DONE]\\n\\n')); ctl.close(); };
        window.__cut = () => ctl.close();
        // (Stop: as a real response's body, it fails with an AbortError)
        init.signal.addEventListener('abort', () => ctl.error(new DOMException('aborted', 'AbortError')));
        return new Response(stream, {status: 200, headers: {'Content-Type': 'text/event-stream'}});
    };
}"""


def progress(total, cache, processed, time_ms):
    return {"choices": [{"index": 0, "delta": {}, "finish_reason": None}],
            "prompt_progress": {"total": total, "cache": cache, "processed": processed,
                                "time_ms": time_ms}}


def content(text, finish=None):
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


def push(pg, payload):
    pg.evaluate("p => window.__push(p)", payload)


def send_and_report(pg, text, report):
    """Send `text`, feed the reply's stream one progress report, and wait for the note."""
    send(pg, text)
    pg.wait_for_function("() => !!window.__push")
    push(pg, report)
    note = pg.locator(f"{REPLY} {NOTE}")
    note.wait_for()
    return note


def test_the_note_counts_what_was_not_cached_and_outlives_a_redraw(page):
    page.evaluate(FED_STREAM)
    page.evaluate(RECORD_SAID)
    # 1,000 of 1,509 tokens were in the cache: half of the other 509 is read
    note = send_and_report(page, "A long text", progress(1509, 1000, 1256, 2000))
    assert note.inner_text() == ("Reading the conversation\u2026 50% (256 of 509 new tokens, "
                                 "1,000 already read before), about 2 s left")
    assert "msg-note" in note.get_attribute("class")
    push(page, progress(1509, 1000, 1384, 4000))
    page.wait_for_function(f"() => document.querySelector('{NOTE}').textContent.includes('75%')")
    # another chat opened, and this one again: drawn anew, with its note
    page.click("[data-testid=new-chat]")
    page.wait_for_selector("[data-testid=welcome]")
    assert page.locator(NOTE).count() == 0
    page.locator("[data-testid=conv-open]", has_text="A long text").click()
    note.wait_for()
    assert note.inner_text().startswith("Reading the conversation\u2026 75% (384 of 509 new tokens")
    push(page, progress(1509, 1000, 1509, 5000))  # all read: the first word comes next
    page.wait_for_selector(NOTE, state="detached")
    push(page, content("Hi", "stop"))
    page.evaluate("window.__end()")
    wait_idle(page)
    assert assistant_bodies(page).last.inner_text() == "Hi"
    assert len([t for t in said(page) if t.startswith("Reading the conversation")]) == 1


def test_the_note_goes_with_the_first_word_or_a_stop(page):
    page.evaluate(FED_STREAM)
    note = send_and_report(page, "A long text", progress(3000, 0, 256, 2000))
    # an estimate once a rate is known (none before: below)
    assert note.inner_text() == "Reading the conversation\u2026 8% (256 of 3,000 tokens), about 21 s left"
    push(page, content("Hello"))
    page.wait_for_selector(NOTE, state="detached")
    page.wait_for_function(f"() => document.querySelector('{REPLY}').innerText.includes('Hello')")
    assert page.locator(NOTE).count() == 0
    push(page, content(" there", "stop"))
    page.evaluate("window.__end()")
    wait_idle(page)

    page.evaluate("window.__push = null")
    note = send_and_report(page, "Another long text", progress(3000, 0, 0, 0))  # no rate yet
    assert note.inner_text() == "Reading the conversation\u2026 0% (0 of 3,000 tokens)"
    page.click("[data-testid=stop]")
    wait_idle(page)
    assert page.locator(NOTE).count() == 0


NOTE_SEEN = """() => {
    window.__noteSeen = false;
    new MutationObserver(() => {
        if (document.querySelector('[data-testid=read-progress]')) window.__noteSeen = true;
    }).observe(document.body, {childList: true, subtree: true});
}"""


def test_a_read_about_to_end_shows_no_note(page):
    """A report that leaves under READ_NOTE_MIN_S to read (at the rate so far) shows no
    note: it would flash and go. A longer one in the same chat does show it."""
    page.evaluate(FED_STREAM)
    page.evaluate(NOTE_SEEN)
    send(page, "A short text")
    page.wait_for_function("() => !!window.__push")
    push(page, progress(300, 0, 256, 1000))  # 44 tokens left at 256 a second
    push(page, content("Hi", "stop"))
    page.evaluate("window.__end()")
    wait_idle(page)
    assert assistant_bodies(page).last.inner_text() == "Hi"
    assert page.evaluate("window.__noteSeen") is False

    page.evaluate("window.__push = null")
    send_and_report(page, "A long text", progress(3000, 0, 256, 1000))  # 11 s left
    assert page.evaluate("window.__noteSeen") is True
