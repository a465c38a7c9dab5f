"""The chat page (runtime/web/): a reply's life from its first word to its export, as
users found it wanting (tenth session). A reply goes on in its own chat while another
chat is shown, and a chat can be answered meanwhile; a reply cut at the max-tokens limit
says so and can be continued; a fence just opened leaves no empty code box; a reply's
Copy waits for the whole reply; every chat exports into one file that Import restores.
Each test failed on the page before its fix. Helpers and fixtures are test_page.py's.
"""
from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import require_chromium
from tests.e2e.test_page import (  # noqa: F401 - `page` is a fixture
    ARTIFACTS, TIMEOUT_MS, assistant_bodies, current_conv, open_page, page,
    record_chat_requests, render_md, send, set_settings, stored,
    stream_directly, wait_idle)

sync_api = require_chromium()

# Greedy "Hello there" runs on to the end of the tiny model's context (about 200 tokens
# of SSE chunks, 45 KB): at 3000 bytes/s a reply of many seconds, time enough to leave its
# chat, come back, and answer another. Each test lets it go at full speed once it has seen
# what it looks for. The throttle starts with the reply's own request: Chromium's takes
# half a second for each of the small requests the page makes before it.
SLOW_BYTES_S = 3000
CHAT_URL = "**/v1/chat/completions"

LAST_REPLY_LEN = ("() => { const b = document.querySelectorAll("
                  "'[data-role=assistant] [data-testid=message-body]');"
                  " return b.length ? b[b.length - 1].textContent.length : -1; }")


def conv_titled(pg, title):
    return next(c for c in stored(pg) if c["title"] == title)


def busy_titles(pg):
    return pg.eval_on_selector_all("[data-testid=conv-item][data-busy=true]",
                                   "els => els.map(e => e.textContent.trim())")


def full_speed(cdp, bytes_s=-1):
    """Chromium's network throttling (as test_page.slow_network); -1: none."""
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": bytes_s, "uploadThroughput": -1})


def start_slow_reply(pg, text):
    """Sends `text` in the open chat with the network slowed to SLOW_BYTES_S, and returns
    once the reply's first words are shown: a reply of many seconds (greedy "Hello there"
    runs on to the end of the tiny model's context) -> the throttle (a CDP session) to
    lift with full_speed. Slowed from the start: slowing it from a route handler of the
    reply's own request let the reply come at full speed now and then, under load."""
    set_settings(pg, temperature=0, **{"max-tokens": 100000})
    cdp = pg.context.new_cdp_session(pg)
    cdp.send("Network.enable")
    full_speed(cdp, SLOW_BYTES_S)
    send(pg, text)
    pg.wait_for_function(f"() => ({LAST_REPLY_LEN})() > 0")
    return cdp


def import_json(pg, data, name="chat.json"):
    pg.set_input_files("[data-testid=import-file]", files=[{
        "name": name, "mimeType": "application/json", "buffer": json.dumps(data).encode()}])


def new_page(browser, server_url, **context_args):
    ctx = browser.new_context(accept_downloads=True, **context_args)
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    open_page(pg, server_url)
    return ctx, pg, errors


# ---------------------------------------------------------------------------------------
# 1. A reply belongs to its chat.

def test_a_reply_goes_on_in_its_chat_while_another_is_shown(page, server_url):
    """Starting a new chat (or opening another) while a reply streamed stopped it."""
    bodies = record_chat_requests(page)
    cdp = start_slow_reply(page, "Hello there")
    page.click("[data-testid=new-chat]")
    page.wait_for_selector("[data-testid=welcome]")
    assert busy_titles(page) == ["Hello there"], "the list shows which chat is being answered"
    assert page.is_visible("[data-testid=send]") and not page.is_visible("[data-testid=stop]")
    # Exported meanwhile, the reply so far is there, marked as not finished.
    with page.expect_download() as dl:
        page.click("[data-testid=export-all]")
    exported = json.loads(Path(dl.value.path()).read_text(encoding="utf-8"))["conversations"]
    partial = next(c for c in exported if c["title"] == "Hello there")["messages"][-1]
    assert partial["role"] == "assistant" and partial["content"] and partial["stopped"] is True

    # Back in it: the reply so far, still growing, with its Stop.
    page.locator("[data-testid=conv-open]", has_text="Hello there").click()
    page.wait_for_selector("[data-testid=message].streaming")
    assert page.is_visible("[data-testid=stop]")
    shown = page.evaluate(LAST_REPLY_LEN)
    page.wait_for_function(f"() => ({LAST_REPLY_LEN})() > {shown}")

    # Away again until it ends: it is saved whole, in its own chat.
    page.locator("[data-testid=conv-open]", has_text="New chat").click()
    full_speed(cdp)
    page.wait_for_selector("[data-testid=conv-item][data-busy=true]", state="detached")
    assert len(bodies) == 1
    reply = conv_titled(page, "Hello there")["messages"][-1]
    assert reply["role"] == "assistant" and not reply.get("stopped"), reply
    assert reply["content"] == stream_directly(server_url, bodies[0])
    assert conv_titled(page, "New chat")["messages"] == []
    page.locator("[data-testid=conv-open]", has_text="Hello there").click()
    assert assistant_bodies(page).last.text_content().strip()
    assert not page.is_visible("[data-testid=stopped-note]")


def test_a_chat_answered_while_another_reply_streams_waits_its_turn(page, server_url):
    """Both replies end whole, each in its own chat; the second says what it waits for."""
    bodies = record_chat_requests(page)
    cdp = start_slow_reply(page, "Hello there")
    page.click("[data-testid=new-chat]")
    set_settings(page, **{"max-tokens": 8})
    # Every note that says the reply waits, as it is drawn (it goes at the first word).
    page.evaluate("""() => {
        window.__waits = [];
        new MutationObserver(() => {
            for (const n of document.querySelectorAll('[data-testid=wait-note]'))
                if (!window.__waits.includes(n.textContent)) window.__waits.push(n.textContent);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true});
    }""")
    send(page, "second question")
    page.wait_for_function("() => window.__waits.length > 0")
    assert page.is_visible("[data-testid=conv-item][data-busy=true] >> text=Hello there"), \
        "the first reply had ended: the test proves nothing"
    full_speed(cdp)
    wait_idle(page)
    page.wait_for_selector("[data-testid=conv-item][data-busy=true]", state="detached")
    waits = page.evaluate("window.__waits")
    assert waits and "Hello there" in waits[0] and "one reply at a time" in waits[0], waits
    assert not page.is_visible("[data-testid=wait-note]")

    assert len(bodies) == 2
    first, second = conv_titled(page, "Hello there"), conv_titled(page, "second question")
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant"]
    assert bodies[1]["messages"][-1] == {"role": "user", "content": "second question"}
    assert all(m["content"] != "Hello there" for m in bodies[1]["messages"]), "no other chat's text"
    for conv, body in ((first, bodies[0]), (second, bodies[1])):
        reply = conv["messages"][-1]
        assert not reply.get("stopped"), reply
        assert reply["content"] == stream_directly(server_url, body)


def test_a_reply_that_waits_can_stop_the_one_it_waits_for(page, server_url):
    bodies = record_chat_requests(page)
    cdp = start_slow_reply(page, "Hello there")
    held = []  # the second chat's request, unanswered until the test lets it go
    page.route(CHAT_URL, lambda route: held.append(route))
    page.click("[data-testid=new-chat]")
    set_settings(page, **{"max-tokens": 8})
    send(page, "second question")
    note = page.wait_for_selector("[data-testid=wait-note]")
    assert "Hello there" in note.text_content()
    assert page.is_visible("[data-testid=stop]"), "this chat's own reply can be stopped too"
    page.click("[data-testid=stop-other]")
    page.wait_for_selector("[data-testid=wait-note]", state="detached")
    page.wait_for_selector("[data-testid=conv-item][data-busy=true] >> text=Hello there",
                           state="detached")
    stopped = conv_titled(page, "Hello there")["messages"][-1]
    assert stopped["stopped"] is True and stopped["content"], stopped
    assert page.evaluate("document.activeElement.id") == "input"

    assert len(held) == 1
    full_speed(cdp)
    held[0].continue_()
    wait_idle(page)
    reply = conv_titled(page, "second question")["messages"][-1]
    assert reply["role"] == "assistant" and not reply.get("stopped"), reply
    assert reply["content"] == stream_directly(server_url, bodies[1])


# ---------------------------------------------------------------------------------------
# 2. Cut at the length limit: a mark, and Continue.

def test_a_reply_cut_at_max_tokens_says_so_and_continues_in_the_same_message(page, server_url):
    set_settings(page, temperature=0, **{"max-tokens": 6})
    bodies = record_chat_requests(page)
    send(page, "Hello there")
    wait_idle(page)
    cut = current_conv(page)["messages"][-1]
    assert cut["cut"] == "length", cut
    assert "max-tokens" in page.text_content("[data-testid=cut-note]")

    # From the keyboard: the button, Enter.
    page.focus("[data-testid=continue]")
    page.keyboard.press("Enter")
    wait_idle(page)
    assert len(bodies) == 2
    sent = bodies[1]
    # llama-server's assistant prefill: the reply so far is the last message sent.
    assert sent["messages"][-2:] == [{"role": "user", "content": "Hello there"},
                                     {"role": "assistant", "content": cut["content"]}]
    conv = current_conv(page)
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"], "the same message"
    added = stream_directly(server_url, sent)
    assert added and conv["messages"][1]["content"] == cut["content"] + added
    assert assistant_bodies(page).count() == 1
    assert page.evaluate("document.activeElement.id") == "input"
    # Cut again at 6 more tokens: still marked, still continuable.
    assert conv["messages"][1]["cut"] == "length"
    assert page.is_visible("[data-testid=continue]")

    # A reply that ran into the end of the context has no room to go on.
    page.click("[data-testid=new-chat]")
    set_settings(page, **{"max-tokens": 100000})
    send(page, "Hello there")  # greedy, the tiny model runs on to the end of its context
    wait_idle(page)
    assert current_conv(page)["messages"][-1]["cut"] == "context"
    assert "end of the context" in page.text_content("[data-testid=cut-note]")
    assert not page.is_visible("[data-testid=continue]")


def test_a_stopped_reply_can_be_continued_and_a_continue_stopped_at_once_changes_nothing(page, server_url):
    chat = {"title": "story", "messages": [{"role": "user", "content": "Tell me a story"},
                                           {"role": "assistant", "content": "Once upon", "stopped": True}]}
    import_json(page, chat)
    page.wait_for_selector("[data-testid=continue]")
    held = []
    page.route("**/v1/chat/completions", lambda route: held.append(route))
    page.click("[data-testid=continue]")
    page.wait_for_selector("[data-testid=message].streaming")
    assert not page.is_visible("[data-testid=stopped-note]"), "the mark goes while it goes on"
    while not held:
        page.wait_for_timeout(20)
    page.click("[data-testid=stop]")
    wait_idle(page)
    assert current_conv(page)["messages"] == chat["messages"], "as it was, mark and all"
    page.wait_for_selector("[data-testid=stopped-note]")

    page.unroute("**/v1/chat/completions")
    set_settings(page, temperature=0, **{"max-tokens": 4})
    bodies = record_chat_requests(page)
    page.click("[data-testid=continue]")
    wait_idle(page)
    reply = current_conv(page)["messages"][-1]
    assert reply["content"] == "Once upon" + stream_directly(server_url, bodies[-1])
    assert not reply.get("stopped") and reply["cut"] == "length", reply


# ---------------------------------------------------------------------------------------
# 3. A fence just opened.

def test_a_fence_just_opened_leaves_no_empty_code_box(page):
    for text in ("Here:\n\n```", "Here:\n\n```python", "Here:\n\n```python\n", "Here:\n\n```python\n\n  ",
                 "1. Run it:\n   ```sh"):
        assert not any("code-block" in b for b in render_md(page, text)["blocks"]), text
        assert "```" not in render_md(page, text)["text"], text
    # Its first line of code makes the box; an empty block that is closed stays one.
    assert render_md(page, "```python\nx = 1")["blocks"] == ["div.code-block"]
    assert render_md(page, "```\n```")["blocks"] == ["div.code-block"]

    # A reply stopped right after its fence opened (here: the stream ends there).
    pieces = [{"choices": [{"index": 0, "delta": {"content": w}}]} for w in ("Here is the code:\n\n", "```python\n")]
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"},
        body="".join(f"data: {json.dumps(p)}\n\n" for p in pieces)))
    send(page, "code please")
    wait_idle(page)
    page.wait_for_selector("[data-testid=stopped-note]")
    body = assistant_bodies(page).last
    assert body.locator(".code-block").count() == 0
    assert body.text_content() == "Here is the code:"


# ---------------------------------------------------------------------------------------
# 4. Copy copies the whole reply.

def test_a_replys_copy_waits_for_the_whole_reply(page):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    cdp = start_slow_reply(page, "Hello there")
    copy = page.locator("[data-testid=copy-message]").last
    assert copy.is_disabled(), "Copy would copy the reply so far"
    assert page.is_visible("[data-testid=stop]"), "the reply had ended: the test proves nothing"
    full_speed(cdp)
    wait_idle(page)
    assert copy.is_enabled()
    copy.click()
    page.wait_for_selector("[data-testid=copy-message]:text-is('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == current_conv(page)["messages"][-1]["content"]


# ---------------------------------------------------------------------------------------
# 5. Export all, and Import reads it back.

CHATS = [
    {"title": "first", "messages": [{"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "hello", "stopped": True}]},
    {"title": "second", "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "<b>tags</b> stay text"},
                                     {"role": "assistant", "content": "cut here", "cut": "length"}]},
    {"title": "third", "messages": [{"role": "user", "content": "just a question"}]},
]


def test_export_all_restores_every_chat_and_bad_files_change_nothing(browser, server_url, tmp_path):
    ctx, pg, errors = new_page(browser, server_url)
    assert pg.is_disabled("[data-testid=export-all]"), "nothing to export yet"
    for chat in CHATS:
        import_json(pg, chat)
        pg.wait_for_selector(f"[data-testid=conv-title]:text-is('{chat['title']}')")
    with pg.expect_download() as dl:
        pg.click("[data-testid=export-all]")
    assert dl.value.suggested_filename.endswith(".json")
    data = json.loads(Path(dl.value.path()).read_text(encoding="utf-8"))
    assert data["format"] == "chatfile-conversations"
    assert [c["title"] for c in data["conversations"]] == ["third", "second", "first"]  # newest first
    assert [c["messages"] for c in data["conversations"]][::-1] == [c["messages"] for c in CHATS]
    ctx.close()
    assert not errors, errors

    # Another browser (an empty one): Import restores every chat, in the same order.
    ctx, pg, errors = new_page(browser, server_url)
    import_json(pg, data, "all.json")
    pg.wait_for_function("() => document.querySelectorAll('[data-testid=conv-item]').length === 3")
    assert "Imported 3 chats." in pg.text_content("[data-testid=notice]")
    assert pg.locator("[data-testid=conv-open]").all_text_contents() == ["third", "second", "first"]
    assert {c["title"]: c["messages"] for c in stored(pg)} == {c["title"]: c["messages"] for c in CHATS}
    pg.locator("[data-testid=conv-open]", has_text="second").click()
    pg.wait_for_selector("[data-testid=continue]")  # the cut reply can still go on
    assert pg.locator("[data-testid=message-body]").nth(1).text_content() == "<b>tags</b> stay text"

    # The same file again adds nothing; a single chat's export still imports as a copy.
    import_json(pg, data, "all.json")
    pg.wait_for_selector("[data-testid=notice]:has-text('Nothing new to import')")
    assert "3 chats in the file were here already" in pg.text_content("[data-testid=notice]")
    assert len(stored(pg)) == 3
    import_json(pg, {"format": "chatfile-conversation", **CHATS[2]})
    pg.wait_for_function("() => document.querySelectorAll('[data-testid=conv-item]').length === 4")

    # Bad files: a clear message, and every chat stays as it was.
    before = stored(pg)
    for raw, says in ((b'{"conversations": [1, "x", {"title": "no messages"}]}', "holds no chat"),
                      (b'{"title": "neither"}', "neither"),
                      (b"[not json", "not valid JSON")):
        pg.set_input_files("[data-testid=import-file]", files=[{
            "name": "bad.json", "mimeType": "application/json", "buffer": raw}])
        pg.wait_for_selector(f"[data-testid=error]:has-text('{says}')")
        assert "Import failed" in pg.text_content("[data-testid=error]")
        assert stored(pg) == before
    # A file with a stray entry imports its chats and says what it left out.
    import_json(pg, {"conversations": [{"title": "fourth", "messages": [{"role": "user", "content": "x"}]}, 42]})
    pg.wait_for_selector("[data-testid=notice]:has-text('1 entry in the file was not a chat')")
    assert len(stored(pg)) == 5
    ctx.close()
    assert not errors, errors


def test_the_new_controls_fit_a_phone_in_dark_mode(browser, server_url):
    ctx, pg, errors = new_page(browser, server_url, viewport={"width": 390, "height": 844},
                               color_scheme="dark")
    import_json(pg, CHATS[1])
    pg.wait_for_selector("[data-testid=continue]")
    overflow = pg.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than the phone"
    note = pg.evaluate("""() => { const n = document.querySelector('[data-testid=cut-note]');
        const s = getComputedStyle(n), b = getComputedStyle(document.body);
        return {color: s.color, bg: b.backgroundColor}; }""")
    assert note["bg"] != "rgb(255, 255, 255)" and note["color"] != note["bg"], note
    pg.click("[data-testid=menu]")
    pg.wait_for_function("() => getComputedStyle(document.getElementById('sidebar')).transform === 'none'")
    side = pg.locator("[data-testid=sidebar]").bounding_box()
    btn = pg.locator("[data-testid=export-all]").bounding_box()
    assert btn["x"] >= side["x"] and btn["x"] + btn["width"] <= side["x"] + side["width"] + 0.5
    assert btn["height"] < 50, "one line: the label does not wrap"
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / "page-phone-dark-export-all.png"))
    pg.keyboard.press("Escape")
    pg.wait_for_selector("[data-testid=sidebar]", state="hidden")
    pg.screenshot(path=str(ARTIFACTS / "page-phone-dark-continue.png"))
    ctx.close()
    assert not errors, errors


# ---------------------------------------------------------------------------------------
# 6. Review of the above (eleventh session): a Continue with no room, hostile imports.

def test_a_continue_with_no_room_left_says_so_and_is_offered_no_more(page):
    """A reply cut at max tokens a few tokens short of the end of the context offered
    Continue, which failed with "edit your message to make it shorter" at every press."""
    set_settings(page, temperature=0, **{"max-tokens": 190})
    bodies = record_chat_requests(page)
    send(page, "Hello there")  # about 60 tokens, and 190 more of reply: 7 short of 256
    wait_idle(page)
    before = current_conv(page)["messages"][-1]
    assert before["cut"] == "length", before  # (else the test proves nothing)
    page.click("[data-testid=continue]")
    page.wait_for_selector("[data-testid=error]:has-text('cannot go on')")
    wait_idle(page)
    assert len(bodies) == 1, "nothing was sent"
    after = current_conv(page)["messages"][-1]
    assert after["content"] == before["content"] and after["cut"] == "context", after
    assert not page.is_visible("[data-testid=continue]")
    assert "end of the context" in page.text_content("[data-testid=cut-note]")
    # The chat goes on with a new message, the old turn left out.
    send(page, "Next")
    wait_idle(page)
    assert len(bodies) == 2 and bodies[1]["messages"] == [{"role": "user", "content": "Next"}]

    # The same reply stopped rather than cut: Stop's mark stays, and so did Continue.
    import_json(page, {"title": "stopped", "messages": [
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": before["content"], "stopped": True}]})
    page.click("[data-testid=continue]")
    page.wait_for_selector("[data-testid=error]:has-text('cannot go on')")
    wait_idle(page)
    assert len(bodies) == 2
    assert current_conv(page)["messages"][-1]["cut"] == "context"
    assert page.is_visible("[data-testid=stopped-note]")
    assert not page.is_visible("[data-testid=continue]")


def test_an_import_with_odd_dates_and_marks_keeps_its_chats(browser, server_url):
    """A date that Number() cannot convert failed the whole file ("Import failed: Cannot
    convert object to primitive value"), one of 1e400 kept the chat first in the list for
    ever (Infinity); a cut mark on a question showed a note under it. A failed import
    left the last import's notice beside its error."""
    ctx, pg, errors = new_page(browser, server_url)
    raw = (b'{"conversations": ['
           b'{"title": "odd date", "created": {"valueOf": 1, "toString": 1},'
           b' "messages": [{"role": "user", "content": "a"}]},'
           b'{"title": "far future", "updated": 1e400, "created": "1e400",'
           b' "messages": [{"role": "user", "content": "b", "cut": "length"}]},'
           b'{"title": "plain", "messages": [{"role": "user", "content": "c"}]}]}')
    pg.set_input_files("[data-testid=import-file]", files=[{
        "name": "all.json", "mimeType": "application/json", "buffer": raw}])
    pg.wait_for_selector("[data-testid=notice]:has-text('Imported 3 chats.')")
    assert not pg.is_visible("[data-testid=error]")
    pg.set_input_files("[data-testid=import-file]", files=[{
        "name": "bad.json", "mimeType": "application/json", "buffer": b"[not json"}])
    pg.wait_for_selector("[data-testid=error]:has-text('Import failed')")
    assert not pg.is_visible("[data-testid=notice]"), pg.text_content("[data-testid=notice]")
    for c in stored(pg):
        assert isinstance(c["created"], (int, float)) and isinstance(c["updated"], (int, float)), c
        assert "cut" not in c["messages"][0], c
    pg.locator("[data-testid=conv-open]", has_text="far future").click()
    assert pg.locator("[data-testid=cut-note]").count() == 0
    # The chat changed last comes first, whatever date the file gave the others.
    pg.locator("[data-testid=conv-open]", has_text="plain").click()
    pg.click("#rename-btn")
    pg.fill("dialog[open] input", "renamed")
    pg.click("dialog[open] button:has-text('Rename')")
    pg.wait_for_function("() => document.querySelector('[data-testid=conv-open]').textContent === 'renamed'")
    ctx.close()
    assert not errors, errors


# ---------------------------------------------------------------------------------------
# 7. A session with the real model (twelfth): what a user met pressing Continue.

def test_a_continue_that_has_not_begun_keeps_its_replys_mark_in_saves_and_exports(page):
    """A reply cut at max tokens, whose Continue waited for its first word (the server
    busy with another chat's reply), was saved and exported as "(stopped)": a reload then
    showed a reply the user never stopped, and its cut note was gone for good."""
    chat = {"title": "cut", "messages": [{"role": "user", "content": "Write a function"},
                                         {"role": "assistant", "content": "def f(", "cut": "length"}]}
    import_json(page, chat)
    page.wait_for_selector("[data-testid=continue]")
    held = []
    page.route(CHAT_URL, lambda route: held.append(route))  # never answered: it waits
    page.click("[data-testid=continue]")
    page.wait_for_selector("[data-testid=message].streaming")
    while not held:
        page.wait_for_timeout(20)
    with page.expect_download() as dl:
        page.click("[data-testid=export-json]")
    exported = json.loads(Path(dl.value.path()).read_text(encoding="utf-8"))
    assert exported["messages"] == chat["messages"]
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert current_conv(page)["messages"] == chat["messages"]
    assert "max-tokens" in page.text_content("[data-testid=cut-note]")
    assert not page.is_visible("[data-testid=stopped-note]")


def test_a_markdown_export_closes_the_code_block_a_cut_reply_left_open(page):
    """A reply cut (or stopped) inside a code block left its fence open in the Markdown
    export: every message after it read as code in any Markdown viewer. The fence is
    closed at the end of the message, with the opening fence's indent (inside a list
    item, a fence at the margin would end the item and open another block)."""
    chat = {"title": "cut code", "messages": [
        {"role": "user", "content": "Write a function"},
        {"role": "assistant", "content": "Here:\n\n```python\ndef f(", "cut": "length"},
        {"role": "user", "content": "next question"},
        {"role": "assistant", "content": "1. Run it:\n   ````sh\n   make", "stopped": True},
        {"role": "user", "content": "last question, with a fence I left open:\n~~~\ny"},
        {"role": "assistant", "content": "closed:\n```\nx\n```\n"}]}
    import_json(page, chat)
    page.wait_for_selector("[data-testid=conv-title]:text-is('cut code')")
    with page.expect_download() as dl:
        page.click("[data-testid=export-md]")
    md = Path(dl.value.path()).read_text(encoding="utf-8")
    # Read back with the page's own Markdown: the code is code, the questions are not.
    code = page.evaluate("""(md) => [...ChatMarkdown.render(md).querySelectorAll('pre')]
        .map(p => p.textContent)""", md)
    assert code == ["def f(", "make", "y", "x"], md
    # (markdown.js ends a block at a fence with any indent; CommonMark viewers need it)
    assert "1. Run it:\n   ````sh\n   make\n   ````\n" in md, md
    assert "closed:\n```\nx\n```\n" in md, "a closed block is left as it was"
