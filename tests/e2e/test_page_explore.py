"""The chat page (runtime/web/): regressions an exploratory tester found by driving it
in headless Chromium against the real server (tiny fixture model). Each test failed on
the page before its fix. Helpers and fixtures are those of test_page.py.
"""
from __future__ import annotations

import json
import time
import urllib.request

from tests.e2e.conftest import ROOT, require_chromium
from tests.e2e.test_page import (  # noqa: F401 - `page` is a fixture
    MODEL, TIMEOUT_MS, _prompt_tokens, canned_sse, current_conv, open_page, page,
    record_chat_requests, send, set_settings, slow_network, wait_idle)

GEMMA2_TEMPLATE = ROOT / "tests" / "fixtures" / "templates" / "google-gemma-2-2b-it.jinja"

sync_api = require_chromium()

SCROLL = "() => { const b = document.getElementById('messages');" \
         " return {top: b.scrollTop, gap: b.scrollHeight - b.scrollTop - b.clientHeight}; }"


def import_chat(pg, conv):
    pg.set_input_files("[data-testid=import-file]", files=[{
        "name": "chat.json", "mimeType": "application/json", "buffer": json.dumps(conv).encode()}])
    pg.wait_for_selector("[data-testid=message]")


def hold_replies(pg):
    """Chat requests wait, unanswered, in the returned list until the test answers them."""
    held = []
    pg.route("**/v1/chat/completions", lambda route: held.append(route))
    return held


def wait_held(pg, held, n):
    """Until the page has made its n-th chat request (and shows the empty reply)."""
    pg.wait_for_selector(f"[data-testid=message][data-role=assistant] >> nth={0}")
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while len(held) < n:
        assert time.monotonic() < deadline, "the page sent no chat request"
        pg.wait_for_timeout(50)


def sse(text):
    events = [{"choices": [{"index": 0, "delta": {"content": text}}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def test_a_reader_who_scrolled_up_is_not_pulled_down_when_the_reply_ends(page):
    """The end of a reply redrew the chat scrolled to its bottom: someone reading an
    earlier message (or the start of a long reply) lost their place."""
    long_turns = [{"role": r, "content": "\n\n".join(f"{r} paragraph {k}" for k in range(12))}
                  for r in ("user", "assistant") * 3]
    import_chat(page, {"title": "long", "messages": long_turns})
    held = hold_replies(page)
    code = "```python\n" + "\n".join(f"line_{k} = {k}" for k in range(40)) + "\n```"

    # At the bottom: a reply that lands all at once (40 lines of code) is followed.
    send(page, "first")
    wait_held(page, held, 1)
    assert page.evaluate(SCROLL)["gap"] < 100  # (the page's "near the bottom")
    held[-1].fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=sse(code))
    wait_idle(page)
    assert page.evaluate(SCROLL)["gap"] < 5, "the view did not follow the reply to its end"

    # Scrolled up to read: the reply ends, the view stays.
    send(page, "second")
    wait_held(page, held, 2)
    page.evaluate("document.getElementById('messages').scrollTop = 300")
    held[-1].fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=sse(code))
    wait_idle(page)
    assert current_conv(page)["messages"][-1]["content"] == code
    assert page.evaluate(SCROLL)["top"] == 300, "the end of the reply moved the reader"


def test_a_long_chat_title_does_not_widen_the_page_on_a_phone(browser, server_url):
    """At phone width the title sat in a column that sized itself to the whole title, so
    the first example prompt as a title made the page wider than the screen."""
    ctx = browser.new_context(viewport={"width": 360, "height": 740})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    open_page(pg, server_url)
    import_chat(pg, {"title": "Explain what a GGUF file is in two sentences.",
                     "messages": [{"role": "user", "content": "hi"}]})
    r = pg.evaluate("""() => { const t = document.getElementById('conv-title');
        return {doc: document.documentElement.scrollWidth, right: t.getBoundingClientRect().right,
                cut: t.scrollWidth > t.clientWidth}; }""")
    ctx.close()
    assert r["doc"] <= 360 and r["right"] <= 360, r
    assert r["cut"], "the title is cut (with an ellipsis), not wrapped or hidden"


def test_a_question_left_unanswered_does_not_break_a_strict_template(browser, server_factory):
    """Stop before the first word (or an error) leaves a question without a reply; the
    next one made two user messages in a row, which Gemma's and Mistral's templates refuse:
    every later message in that chat failed with "roles must alternate"."""
    url = server_factory(MODEL, "--chat-template", GEMMA2_TEMPLATE).url.rstrip("/") + "/"
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    open_page(pg, url)
    set_settings(pg, temperature=0, **{"max-tokens": 4})
    held = hold_replies(pg)
    send(pg, "What is a GGUF fiel?")
    pg.wait_for_selector("[data-testid=message][data-role=assistant]")
    pg.click("[data-testid=stop]")  # a typo: stopped before the first word
    wait_idle(pg)
    pg.unroute("**/v1/chat/completions")
    bodies = record_chat_requests(pg)
    send(pg, "What is a GGUF file?")
    wait_idle(pg)
    error = pg.text_content("[data-testid=error]") if pg.is_visible("[data-testid=error]") else ""
    conv = current_conv(pg)
    ctx.close()
    assert held and not error, error
    assert [m["role"] for m in conv["messages"]] == ["user", "user", "assistant"]
    # Both questions are sent, as one user turn.
    assert bodies[-1]["messages"] == [
        {"role": "user", "content": "What is a GGUF fiel?\n\nWhat is a GGUF file?"}]


def test_the_enter_that_ends_an_ime_composition_does_not_confirm_a_rename(page):
    """Japanese or Chinese typing: Enter picks the composed characters. In the rename box
    it also pressed OK, so the chat was renamed to a half-typed name."""
    canned_sse(page, "Hello!")
    send(page, "hi")
    wait_idle(page)
    cdp = page.context.new_cdp_session(page)
    page.click("[data-testid=rename]")
    page.fill("[data-testid=ask-input]", "")
    cdp.send("Input.imeSetComposition", {"text": "にほん", "selectionStart": 3, "selectionEnd": 3})
    page.keyboard.press("Enter")  # a keydown with isComposing, as a real IME sends it
    assert page.is_visible("[data-testid=ask-dialog]"), "the composition's Enter confirmed the rename"
    cdp.send("Input.insertText", {"text": "にほんご"})  # the composition ends
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=ask-dialog]", state="hidden")
    assert page.text_content("[data-testid=conv-title]") == "にほんご"


def test_a_reply_is_kept_up_to_the_moment_the_tab_reloads(page):
    """A streaming reply was saved only every 2 s: reloading before the first save lost
    it all (the chat came back as an unanswered question), and a later reload lost what
    had arrived since the last save."""
    set_settings(page, temperature=0, **{"max-tokens": 100000})
    slow_network(page, downloadThroughput=3000)  # a reply of several seconds
    # The page's clock stands still, so its periodic save never comes: whatever survives
    # the reload was saved when the tab went away.
    page.evaluate("performance.now = () => 0")
    send(page, "Hello there")
    page.wait_for_function(
        "() => { const b = document.querySelectorAll('[data-role=assistant] [data-testid=message-body]');"
        " return b.length && b[b.length - 1].textContent.length > 0; }")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    last = current_conv(page)["messages"][-1]
    assert last["role"] == "assistant" and last["content"] and last["stopped"] is True, last


def test_pressing_send_leaves_the_focus_in_the_message_box(page):
    """Send hides itself while the reply is written; the focus went with it, so the next
    message could not be typed without clicking the box again."""
    canned_sse(page, "Hello!")
    page.fill("[data-testid=input]", "hi")
    page.click("[data-testid=send]")
    wait_idle(page)
    assert page.evaluate("document.activeElement.id") == "input"
    page.keyboard.type("typed straight away")
    assert page.input_value("[data-testid=input]") == "typed straight away"


def test_an_export_is_named_after_a_title_in_any_script(page):
    """Only Latin letters were kept in the file name: every Japanese, Chinese, Arabic or
    Russian chat was exported as "chat.json"."""
    import_chat(page, {"title": "日本語 のチャット", "messages": [{"role": "user", "content": "hi"}]})
    with page.expect_download() as dl:
        page.click("[data-testid=export-json]")
    assert dl.value.suggested_filename == "日本語-のチャット.json"
    import_chat(page, {"title": "Привет, мир!", "messages": [{"role": "user", "content": "hi"}]})
    with page.expect_download() as dl:
        page.click("[data-testid=export-md]")
    assert dl.value.suggested_filename == "привет-мир.md"


def test_escape_that_cancels_an_ime_composition_does_not_stop_the_reply(page):
    """Escape stops a reply; during an IME composition it only cancels the composition."""
    held = hold_replies(page)
    send(page, "hi")
    wait_held(page, held, 1)
    cdp = page.context.new_cdp_session(page)
    page.focus("[data-testid=input]")
    cdp.send("Input.imeSetComposition", {"text": "にほん", "selectionStart": 3, "selectionEnd": 3})
    page.keyboard.press("Escape")  # a keydown with isComposing
    assert page.is_visible("[data-testid=stop]"), "Escape in the composition stopped the reply"
    cdp.send("Input.insertText", {"text": ""})  # the composition ends
    page.keyboard.press("Escape")
    wait_idle(page)
    assert [m["role"] for m in current_conv(page)["messages"]] == ["user"]


# ---------------------------------------------------------------------------------------
# Second round.

OTHER_MODEL = ROOT / "tests" / "fixtures" / "models" / "tiny-qwen2-q8_0.gguf"


def sse_ending(text, finish="stop", **last):
    """A canned stream of `text` whose final chunk ends with `finish` and carries `last`
    (e.g. timings=...)."""
    events = [{"choices": [{"index": 0, "delta": {"content": text}}]},
              {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}], **last}]
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def reply_with(route, body):
    route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)


def new_page(browser, url):
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    open_page(pg, url)
    return ctx, pg


def test_the_server_gone_message_says_what_works_rather_than_reload(browser, server_factory):
    """With the server stopped the page said "...then reload this page": a reload shows the
    browser's connection-refused page while the server is down, and once it runs again the
    Retry button works without one."""
    srv = server_factory(MODEL)
    ctx, pg = new_page(browser, srv.url.rstrip("/") + "/")
    set_settings(pg, temperature=0, **{"max-tokens": 4})
    srv.stop()
    send(pg, "are you there?")
    wait_idle(pg)
    error = pg.text_content("[data-testid=error]")
    assert "not running" in error and "Start it again" in error, error
    assert "reload" not in error.lower() and "Retry" in error, error
    retry = pg.locator("[data-testid=regenerate]")
    assert retry.text_content() == "Retry"  # the button the message names
    # Started again (on the same port, as `chatfile run` does): Retry answers, no reload.
    again = server_factory(MODEL, "--port", srv.port)
    assert again.url == srv.url
    retry.click()
    wait_idle(pg)
    assert not pg.is_visible("[data-testid=error]")
    assert [m["role"] for m in current_conv(pg)["messages"]] == ["user", "assistant"]
    # Cut off half way: the reply is kept, and its button is Regenerate.
    pg.route("**/v1/chat/completions", lambda route: reply_with(
        route, f"data: {json.dumps({'choices': [{'index': 0, 'delta': {'content': 'Once'}}]})}\n\n"))
    send(pg, "tell me a story")
    wait_idle(pg)
    error = pg.text_content("[data-testid=error]")
    ctx.close()
    assert "stopped in the middle" in error and "Regenerate" in error, error
    assert "reload" not in error.lower(), error


def test_a_server_restarted_with_another_model_is_read_again(browser, server_factory):
    """The server came back on the same port with another model, the tab still open: the
    page kept the old model's name, context size and token counts (cached by text only),
    so it fitted the chat to the wrong context until a reload."""
    first = server_factory(MODEL, "--ctx", 128)
    url = first.url.rstrip("/") + "/"
    chat = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "general kenobi"}]
    n_first = _prompt_tokens(url, chat)
    ctx, pg = new_page(browser, url)
    set_settings(pg, temperature=0, **{"max-tokens": 4})
    import_chat(pg, {"title": "measured", "messages": chat})
    pg.wait_for_function("(want) => document.getElementById('ctx').textContent === want",
                         arg=f"context {n_first} / 128")
    first.stop()
    # The page notices: regenerating fails with the server gone.
    pg.click("[data-testid=regenerate]")
    wait_idle(pg)
    assert "not running" in pg.text_content("[data-testid=error]")

    # (The fixtures share one vocabulary: a chat template makes the prompt's size differ.)
    second = server_factory(OTHER_MODEL, "--chat-template", GEMMA2_TEMPLATE, "--port", first.port)
    assert second.url == first.url
    props = json.loads(urllib.request.urlopen(url + "props").read())
    n_second = _prompt_tokens(url, chat)
    assert props["n_ctx"] != 128 and n_second != n_first  # (what the test relies on)
    bodies = record_chat_requests(pg)
    pg.click("[data-testid=regenerate]")  # Retry, as the message says
    wait_idle(pg)
    assert not pg.is_visible("[data-testid=error]"), pg.text_content("[data-testid=error]")
    assert len(bodies) == 1
    assert pg.text_content("[data-testid=model-name]") == props["model_name"]
    assert pg.text_content("[data-testid=ctx]").endswith(f" / {props['n_ctx']}")
    # The same messages are measured again, by the new model's tokenizer.
    pg.click("[data-testid=new-chat]")
    import_chat(pg, {"title": "measured again", "messages": chat})
    # (Until its count comes, the new empty chat's "context 0", or "context: measuring…",
    # shows: on a slow machine either was taken for the imported chat's count.)
    pg.wait_for_function("() => /^context [1-9][0-9]* \\//.test(document.getElementById('ctx').textContent)")
    shown = pg.text_content("[data-testid=ctx]")
    ctx.close()
    assert shown == f"context {n_second} / {props['n_ctx']}", (shown, n_first)


def test_copying_a_reply_says_copied(page):
    """A code block's Copy says "Copied"; a whole reply's Copy showed nothing."""
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    canned_sse(page, "Hello **world**!")
    send(page, "hi")
    wait_idle(page)
    copy = page.locator("[data-testid=copy-message]")
    copy.click()
    page.wait_for_selector("[data-testid=copy-message]:text-is('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == "Hello **world**!"
    page.wait_for_selector("[data-testid=copy-message]:text-is('Copy')")  # and back


def test_the_speed_shown_is_never_a_previous_replys(page):
    """The tokens/s of the last finished reply stayed after a reply was stopped or failed,
    as if that one had run at that speed."""
    held = hold_replies(page)
    send(page, "first")
    wait_held(page, held, 1)
    reply_with(held[-1], sse_ending("Hello!", timings={"predicted_per_second": 123.4}))
    wait_idle(page)
    assert page.text_content("[data-testid=tps]") == "123.4 tokens/s"
    send(page, "second")
    wait_held(page, held, 2)
    page.click("[data-testid=stop]")  # before its first word
    wait_idle(page)
    assert page.text_content("[data-testid=tps]") == ""
    send(page, "third")
    wait_held(page, held, 3)
    held[-1].fulfill(status=500, content_type="application/json",
                     body=json.dumps({"error": {"message": "boom", "type": "server_error", "code": 500}}))
    wait_idle(page)
    assert "boom" in page.text_content("[data-testid=error]")
    assert page.text_content("[data-testid=tps]") == ""


def test_stop_and_regenerate_leave_the_focus_in_the_message_box(page):
    """Stop, Retry and Regenerate hide (or redraw) themselves once pressed, and the focus
    went with them: the next message could not be typed without clicking the box."""
    held = hold_replies(page)
    send(page, "hi")
    wait_held(page, held, 1)
    page.click("[data-testid=stop]")
    wait_idle(page)
    assert page.evaluate("document.activeElement.id") == "input"
    for n, (label, reply) in enumerate((("Retry", "Hello!"), ("Regenerate", "Hello again!")), 2):
        assert page.text_content("[data-testid=regenerate]") == label
        page.click("[data-testid=regenerate]")
        wait_held(page, held, n)
        assert page.evaluate("document.activeElement.id") == "input"
        reply_with(held[-1], sse_ending(reply))
        wait_idle(page)
    page.keyboard.type("typed straight away")
    assert page.input_value("[data-testid=input]") == "typed straight away"


def test_a_full_storage_does_not_hide_the_max_tokens_notice(page):
    """When saving failed, the "could not save" notice replaced the one saying why the
    reply stopped: the reader saw a cut-off reply and no reason."""
    page.evaluate("""() => { const set = Storage.prototype.setItem;
        Storage.prototype.setItem = function (k, v) {
            if (k === 'chatfile.conversations') throw new DOMException('full', 'QuotaExceededError');
            return set.call(this, k, v);
        }; }""")
    page.route("**/v1/chat/completions", lambda route: reply_with(route, sse_ending("Once upon", "length")))
    send(page, "tell me a story")
    wait_idle(page)
    notice = page.text_content("[data-testid=notice]")
    assert page.is_visible("[data-testid=notice]")
    assert "max-tokens limit" in notice and "could not save" in notice, notice


def test_quit_stops_a_chat_started_with_a_browser(browser, server_url):
    """A bundle started by a double-click may have no window to close: it kept the model's
    memory until the machine shut down. The page's Quit stops it; a server started for
    scripts (--no-browser) has neither the button nor /quit."""
    from tests.e2e.conftest import http_request, start_server
    h = start_server(MODEL, browser=True)
    pg = browser.new_page()
    try:
        open_page(pg, h.url)
        pg.click("[data-testid=quit]")
        pg.click("#ask-ok")
        pg.wait_for_selector("text=chatfile has stopped")
        assert h.proc.wait(30) == 0, h.output()
        time.sleep(0.2)  # the reader thread drains what is left of the output
        assert "chatfile: stopped from the chat page." in h.output()
        open_page(pg, server_url)  # started with --no-browser
        assert pg.is_hidden("[data-testid=quit]")
        status, _, _ = http_request("POST", server_url + "/quit", {})
        assert status == 404
    finally:
        pg.close()
        h.stop()



def test_a_chat_whose_model_failed_to_load_can_be_quit(browser, tmp_path):
    """With a browser, a failed load keeps the server up to show the error on the page;
    the page then offers Quit, since that server can do nothing else."""
    from tests.e2e.conftest import start_server
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"not a GGUF file" * 20)
    h = start_server(bad, browser=True, wait_healthy=False)
    pg = browser.new_page()
    try:
        pg.goto(h.url)
        pg.wait_for_selector("text=The model failed to load")
        pg.click("[data-testid=loading-quit]")
        pg.click("#ask-ok")
        pg.wait_for_selector("text=chatfile has stopped")
        assert h.proc.wait(30) == 0, h.output()
    finally:
        pg.close()
        h.stop()


def test_text_selected_in_a_streaming_reply_stays_selected(page):
    """Each frame of a streaming reply redrew it whole, so a reader selecting a sentence
    to copy lost the selection within a frame. The reply now waits while text in it is
    selected, and catches up once the selection goes."""
    set_settings(page, temperature=0, **{"max-tokens": 100000})
    slow_network(page, downloadThroughput=3000)  # a reply of several seconds
    send(page, "Hello there")
    body = "[data-testid=message][data-role=assistant] .msg-body"
    page.wait_for_function(f"() => (document.querySelector('{body}') || {{}}).textContent?.length > 20",
                           timeout=TIMEOUT_MS)
    picked = page.evaluate(f"""() => {{
        const r = document.createRange();
        r.selectNodeContents(document.querySelector('{body}'));
        getSelection().removeAllRanges();
        getSelection().addRange(r);
        return getSelection().toString(); }}""")
    assert picked
    # More of the reply arrives (the page saves it every 2 s) while the text is selected.
    page.wait_for_function(
        "n => { const c = JSON.parse(localStorage.getItem('chatfile.conversations') || '[]');"
        " return c.length && (c[0].messages[1] || {}).content?.length > n + 20; }",
        arg=len(picked), timeout=TIMEOUT_MS)
    assert page.evaluate("() => getSelection().toString()") == picked
    page.evaluate("() => getSelection().removeAllRanges()")
    page.wait_for_function(f"n => document.querySelector('{body}').textContent.length > n + 20",
                           arg=len(picked), timeout=TIMEOUT_MS)
    page.click("[data-testid=stop]")
    wait_idle(page)
    shown = page.inner_text(body)
    assert shown.strip() and current_conv(page)["messages"][-1]["content"].startswith(shown.strip()[:20])
