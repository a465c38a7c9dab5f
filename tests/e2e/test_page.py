"""The offline chat page (runtime/web/) in a real headless Chromium against the real server.

The server runs the tiny llama fixture: its replies are gibberish, but they are real
tokens streamed by the real engine, so these tests drive the whole path from the
textarea to the SSE stream and back into localStorage. Screenshots go to test-artifacts/.
"""
from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "fixtures" / "models" / "tiny-llama-q8_0.gguf"
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_MS = 20_000

from tests.e2e.conftest import post_json, require_chromium  # noqa: E402

sync_api = require_chromium()


# ---------------------------------------------------------------------------------------
# Server: `tiny_server` and `server_factory` come from tests/e2e/conftest.py.

# ---------------------------------------------------------------------------------------
# Browser

@pytest.fixture
def page(browser, server_url):
    """A fresh browser context (empty localStorage) with the page loaded and ready."""
    with page_at(browser, server_url) as pg:
        yield pg


@contextlib.contextmanager
def page_at(browser, url, *, alerts_fail=False):
    """The page at url, loaded and ready, in a fresh browser context (empty localStorage),
    closed afterwards; a JavaScript error on it (and with alerts_fail, a dialog: an
    alert() that model text ran) fails the test."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    if alerts_fail:
        pg.on("dialog", lambda d: errors.append("dialog: " + d.message))
    try:
        open_page(pg, url)
        yield pg
    finally:
        ctx.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_page(pg, url):
    pg.goto(url)
    pg.wait_for_selector("body[data-ready=true]")


def stored(pg):
    return pg.evaluate("JSON.parse(localStorage.getItem('chatfile.conversations') || '[]')")


def current_conv(pg):
    cur = pg.evaluate("JSON.parse(localStorage.getItem('chatfile.current'))")
    return next(c for c in stored(pg) if c["id"] == cur)


def wait_idle(pg):
    pg.wait_for_selector("[data-testid=send]:visible")
    pg.wait_for_selector("[data-testid=stop]", state="hidden")


def set_settings(pg, **fields):
    pg.click("[data-testid=settings-button]")
    for name, value in fields.items():
        pg.fill(f"[data-testid=set-{name}]", str(value))
    pg.click("[data-testid=settings-save]")
    pg.wait_for_selector("[data-testid=settings-dialog]", state="hidden")


def send(pg, text):
    pg.fill("[data-testid=input]", text)
    pg.press("[data-testid=input]", "Enter")


def slow_network(pg, **conditions):
    """Chromium's own network throttling, e.g. downloadThroughput=4000 (bytes/s): the tiny
    model writes hundreds of tokens a second, and this makes a reply take seconds."""
    cdp = pg.context.new_cdp_session(pg)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1,
        **conditions})


def record_chat_requests(pg):
    """Bodies of every POST to /v1/chat/completions the page makes."""
    bodies = []
    pg.on("request", lambda r: bodies.append(json.loads(r.post_data))
          if r.method == "POST" and r.url.endswith("/v1/chat/completions") else None)
    return bodies


def stream_directly(url, body):
    """The server's own answer to `body`, read from its SSE stream without the page."""
    req = urllib.request.Request(url + "v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    text = []
    with urllib.request.urlopen(req, timeout=60) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            for ch in chunk.get("choices", []):
                text.append(ch.get("delta", {}).get("content") or "")
    return "".join(text)


def server_json(server_url, path, body):
    """The server's JSON answer to a POST the page could make (without the page)."""
    status, r = post_json(server_url + path, body)
    assert status == 200, (path, r)
    return r


def assistant_bodies(pg):
    return pg.locator("[data-testid=message][data-role=assistant] [data-testid=message-body]")


# ---------------------------------------------------------------------------------------
# Tests

def test_stream_shows_the_servers_greedy_reply(page, server_url):
    assert page.text_content("[data-testid=model-name]").strip(), "the model's name is shown"
    assert page.locator("[data-testid=example]").count() >= 3, "the first screen offers examples"
    # 200 tokens, about 40 KB of SSE: the tiny model writes them in ~150 ms, which one late
    # frame of a busy headless browser can draw at once. Throttled to 20 KB/s they arrive
    # over about two seconds, so a page that draws as the stream comes must show steps.
    set_settings(page, temperature=0, **{"max-tokens": 200})
    slow_network(page, downloadThroughput=20000)
    bodies = record_chat_requests(page)
    # Record the reply's length at every DOM change: a streamed reply grows in steps.
    page.evaluate("""() => {
        window.__lens = [];
        new MutationObserver(() => {
            const b = document.querySelectorAll('[data-role=assistant] [data-testid=message-body]');
            if (b.length) window.__lens.push(b[b.length - 1].textContent.length);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    }""")
    send(page, "Hello there")
    wait_idle(page)

    assert len(bodies) == 1
    sent = bodies[0]
    assert sent["stream"] is True and sent["temperature"] == 0 and sent["max_tokens"] == 200
    assert sent["messages"][-1] == {"role": "user", "content": "Hello there"}

    conv = current_conv(page)
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    reply = conv["messages"][1]["content"]
    # Greedy decoding is deterministic: the same request sent straight to the server
    # must stream the same text the page received and stored.
    assert reply == stream_directly(server_url, sent)
    assert reply.strip()
    shown = assistant_bodies(page).last.text_content()
    assert shown.strip(), "the reply is rendered"
    lens = [n for n in page.evaluate("window.__lens") if n > 0]
    assert len(set(lens)) >= 2, f"the reply should appear in several steps, saw lengths {lens}"
    assert "tokens/s" in page.text_content("[data-testid=tps]")
    ctx = page.text_content("[data-testid=ctx]")
    props = json.load(urllib.request.urlopen(server_url + "props"))
    m = re.fullmatch(r"context (\d+) / (\d+)( \(full: the oldest messages will be left out\))?", ctx)
    assert m and int(m.group(2)) == props["n_ctx"], ctx
    # past the context the readout says what the next message will do
    assert bool(m.group(3)) == (int(m.group(1)) > props["n_ctx"]), ctx


def test_stop_ends_a_long_reply(page):
    # Greedy "Hello there" runs on to the end of the tiny model's context (no end token).
    set_settings(page, temperature=0, **{"max-tokens": 100000})
    slow_network(page, downloadThroughput=4000)  # so that Stop surely lands mid-stream
    send(page, "Hello there")
    body = assistant_bodies(page).last
    page.wait_for_function(
        "() => { const b = document.querySelectorAll('[data-role=assistant] [data-testid=message-body]');"
        " return b.length && b[b.length-1].textContent.length > 0; }")
    page.click("[data-testid=stop]")
    wait_idle(page)
    page.wait_for_selector("[data-testid=stopped-note]")
    conv = current_conv(page)
    assert conv["messages"][-1]["stopped"] is True
    text_after_stop = conv["messages"][-1]["content"]
    time.sleep(0.5)
    assert current_conv(page)["messages"][-1]["content"] == text_after_stop, "no text after Stop"
    assert body.text_content().strip()


def test_regenerate_replaces_the_last_reply(page):
    set_settings(page, temperature=0, **{"max-tokens": 8})
    bodies = record_chat_requests(page)
    send(page, "first question")
    wait_idle(page)
    first = current_conv(page)["messages"][1]["content"]
    page.click("[data-testid=regenerate]")
    wait_idle(page)
    conv = current_conv(page)
    assert len(bodies) == 2 and bodies[1]["messages"] == bodies[0]["messages"]
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    # Temperature 0: regenerating the same conversation gives the same reply again.
    assert conv["messages"][1]["content"] == first
    assert page.locator("[data-testid=message]").count() == 2


def test_edit_and_resend_truncates_after_the_message(page):
    set_settings(page, temperature=0, **{"max-tokens": 6})
    bodies = record_chat_requests(page)
    send(page, "question one")
    wait_idle(page)
    send(page, "question two")
    wait_idle(page)
    assert page.locator("[data-testid=message]").count() == 4
    page.locator("[data-testid=message][data-role=user]").first.locator("[data-testid=edit]").click()
    page.fill("[data-testid=edit-input]", "question one, edited")
    page.click("[data-testid=edit-send]")
    wait_idle(page)
    conv = current_conv(page)
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert conv["messages"][0]["content"] == "question one, edited"
    assert [m["content"] for m in bodies[-1]["messages"] if m["role"] == "user"] == ["question one, edited"]
    assert page.locator("[data-testid=message]").count() == 2


def test_conversations_persist_and_can_be_managed(page, server_url):
    set_settings(page, temperature=0, **{"max-tokens": 4})
    send(page, "remember me")
    wait_idle(page)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    items = page.locator("[data-testid=conv-item]")
    assert items.count() == 1 and items.first.text_content().strip() == "remember me"
    assert page.locator("[data-testid=message]").count() == 2
    assert page.locator("[data-testid=message][data-role=user]").first.text_content().find("remember me") >= 0

    # New: an empty chat with the first screen.
    page.click("[data-testid=new-chat]")
    page.wait_for_selector("[data-testid=welcome]")
    assert items.count() == 2
    # Rename it.
    page.click("[data-testid=rename]")
    page.fill("[data-testid=ask-input]", "Renamed chat")
    page.click("[data-testid=ask-ok]")
    assert page.text_content("[data-testid=conv-title]") == "Renamed chat"
    assert "Renamed chat" in [c["title"] for c in stored(page)]
    # Cancelling a delete keeps it; confirming removes it.
    page.click("[data-testid=delete]")
    page.click("[data-testid=ask-cancel]")
    assert items.count() == 2
    page.click("[data-testid=delete]")
    page.click("[data-testid=ask-ok]")
    assert items.count() == 1
    assert [c["title"] for c in stored(page)] == ["remember me"]
    # The remaining chat is selected again and can be opened from the sidebar.
    page.locator("[data-testid=conv-open]").first.click()
    assert page.locator("[data-testid=message]").count() == 2


def test_export_json_and_markdown(page):
    set_settings(page, temperature=0, **{"max-tokens": 4})
    send(page, "export **this**")
    wait_idle(page)
    conv = current_conv(page)
    with page.expect_download() as dl:
        page.click("[data-testid=export-json]")
    data = json.loads(Path(dl.value.path()).read_text(encoding="utf-8"))
    assert dl.value.suggested_filename.endswith(".json")
    assert data["title"] == conv["title"]
    # The messages as stored, with their marks (a reply cut at max tokens, stopped), which
    # Import reads back; not the page's own mark of what the last request left out.
    assert data["messages"] == [{k: v for k, v in m.items() if k != "leftOut"} for m in conv["messages"]]
    assert data["messages"][1]["cut"] == "length"  # (4 tokens: the tiny model says more)

    with page.expect_download() as dl:
        page.click("[data-testid=export-md]")
    md = Path(dl.value.path()).read_text(encoding="utf-8")
    assert dl.value.suggested_filename.endswith(".md")
    assert md.startswith("# " + conv["title"])
    assert "export **this**" in md and conv["messages"][1]["content"] in md

    # The exported JSON imports back as a new conversation with the same messages.
    page.set_input_files("[data-testid=import-file]", files=[{
        "name": "again.json", "mimeType": "application/json", "buffer": json.dumps(data).encode()}])
    page.wait_for_function("() => document.querySelectorAll('[data-testid=conv-item]').length === 2")
    assert [m["content"] for m in current_conv(page)["messages"]] == [m["content"] for m in data["messages"]]


def test_settings_persist_across_reload(page):
    set_settings(page, system="You are terse.", temperature="0.3", **{"top-p": "0.5", "max-tokens": "77", "seed": "42"})
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.click("[data-testid=settings-button]")
    assert page.input_value("[data-testid=set-system]") == "You are terse."
    assert float(page.input_value("[data-testid=set-temperature]")) == 0.3
    assert float(page.input_value("[data-testid=set-top-p]")) == 0.5
    assert page.input_value("[data-testid=set-max-tokens]") == "77"
    assert page.input_value("[data-testid=set-seed]") == "42"
    # A bad value is refused with a message, and the dialog stays open.
    page.fill("[data-testid=set-temperature]", "-1")
    page.click("[data-testid=settings-save]")
    assert page.is_visible("[data-testid=settings-error]")
    page.click("[data-testid=settings-cancel]")
    # The saved settings go into the request.
    bodies = record_chat_requests(page)
    send(page, "hi")
    wait_idle(page)
    sent = bodies[0]
    assert sent["messages"][0] == {"role": "system", "content": "You are terse."}
    assert (sent["temperature"], sent["top_p"], sent["max_tokens"], sent["seed"]) == (0.3, 0.5, 77, 42)


def test_enter_sends_and_shift_enter_makes_a_newline(page):
    set_settings(page, temperature=0, **{"max-tokens": 2})
    page.click("[data-testid=input]")
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    assert page.input_value("[data-testid=input]") == "line one\nline two"
    assert page.locator("[data-testid=message]").count() == 0
    page.keyboard.press("Enter")
    wait_idle(page)
    assert page.input_value("[data-testid=input]") == ""
    assert current_conv(page)["messages"][0]["content"] == "line one\nline two"


def test_example_prompt_is_clickable(page):
    set_settings(page, temperature=0, **{"max-tokens": 2})
    example = page.locator("[data-testid=example]").first
    text = example.text_content()
    example.click()
    wait_idle(page)
    assert current_conv(page)["messages"][0]["content"] == text


def test_old_turns_are_dropped_to_fit_and_a_full_context_is_reported(page, server_url):
    props = json.load(urllib.request.urlopen(server_url + "props"))
    n_ctx = props["n_ctx"]
    set_settings(page, temperature=0, **{"max-tokens": 8})
    # A history about twice the context: the page must leave the oldest turns out.
    turn = "word " * (n_ctx // 8)
    history = []
    for k in range(4):
        history += [{"role": "user", "content": f"old question {k} {turn}"},
                    {"role": "assistant", "content": f"old answer {k} {turn}"}]
    page.set_input_files("[data-testid=import-file]", files=[{
        "name": "long.json", "mimeType": "application/json",
        "buffer": json.dumps({"title": "long", "messages": history}).encode()}])
    page.wait_for_selector("[data-testid=message]")
    bodies = record_chat_requests(page)
    send(page, "the latest question")
    wait_idle(page)
    assert "left out to fit the context" in page.text_content("[data-testid=notice]")
    sent = bodies[0]["messages"]
    assert sent[-1] == {"role": "user", "content": "the latest question"}
    assert len(sent) < len(history) + 1
    assert all("old question 0" not in m["content"] for m in sent), "the oldest turn was dropped"
    assert sent[0]["role"] == "user", "the kept history starts on a user turn"
    assert not page.is_visible("[data-testid=error]"), "the server accepted what was sent"
    assert current_conv(page)["messages"][-1]["role"] == "assistant"
    # What was sent fits: count it with the server's own tokenizer.
    joined = "".join(m["content"] for m in sent)
    n_tok = len(server_json(server_url, "tokenize", {"content": joined})["tokens"])
    assert n_tok < n_ctx

    # One message bigger than the whole context: nothing is sent, the page says why.
    page.click("[data-testid=new-chat]")
    send(page, "word " * (n_ctx * 2))
    wait_idle(page)
    assert "no longer fits" in page.text_content("[data-testid=error]")
    assert len(bodies) == 1
    # ... and the context readout does not promise that old turns will be left out.
    page.wait_for_function(
        "document.querySelector('[data-testid=ctx]').textContent.includes('full:')")
    assert page.text_content("[data-testid=ctx]").endswith(
        "(full: the last message alone is too long)")


def test_server_errors_become_clear_messages(page):
    # The server vanished: fetch() itself fails.
    page.route("**/v1/chat/completions", lambda route: route.abort())
    send(page, "anyone there?")
    wait_idle(page)
    assert "chatfile server is not running" in page.text_content("[data-testid=error]")
    page.unroute("**/v1/chat/completions")
    # The unanswered message can be sent again once the server is back.
    set_settings(page, temperature=0, **{"max-tokens": 2})
    page.click("[data-testid=regenerate]")
    wait_idle(page)
    assert [m["role"] for m in current_conv(page)["messages"]] == ["user", "assistant"]
    assert not page.is_visible("[data-testid=error]")
    # The server refuses the prompt as too long for the context (HTTP 400).
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=400, content_type="application/json",
        body=json.dumps({"error": {"message": "the prompt is 999 tokens, more than the context size",
                                   "type": "invalid_request_error", "code": 400}})))
    page.click("[data-testid=new-chat]")
    send(page, "again")
    wait_idle(page)
    assert "no longer fits" in page.text_content("[data-testid=error]")


def test_load_progress_then_chat(browser, server_url):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    calls = {"n": 0}

    def health(route):
        calls["n"] += 1
        if calls["n"] <= 3:  # the first polls see a model still loading
            route.fulfill(status=503, content_type="application/json",
                          body=json.dumps({"status": "loading", "progress": 0.42}))
        else:
            route.continue_()
    pg.route("**/health", health)
    pg.goto(server_url)
    pg.wait_for_selector("[data-testid=load-progress]:visible")
    pg.wait_for_function("() => document.querySelector('[data-testid=load-progress]').value > 0.4")
    assert "42%" in pg.text_content("[data-testid=loading-text]")
    pg.wait_for_selector("body[data-ready=true]")
    assert pg.is_visible("[data-testid=input]") and not pg.is_visible("[data-testid=loading]")
    ctx.close()


def test_api_key_is_asked_once_and_kept(browser, server_factory):
    key = "page-test-key"
    url = server_factory(MODEL, "--api-key", key).url.rstrip("/") + "/"
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    urls, console = [], []
    pg.on("request", lambda r: urls.append(r.url))
    pg.on("console", lambda m: console.append(m.text))
    pg.goto(url)
    pg.wait_for_selector("[data-testid=ask-dialog][open]")
    pg.fill("[data-testid=ask-input]", key)
    pg.click("[data-testid=ask-ok]")
    pg.wait_for_selector("body[data-ready=true]")
    assert pg.text_content("[data-testid=model-name]").strip()
    assert pg.evaluate("localStorage.getItem('chatfile.apiKey')") == key
    set_settings(pg, temperature=0, **{"max-tokens": 2})
    send(pg, "hi")
    wait_idle(pg)
    assert not pg.is_visible("[data-testid=error]")
    # Reload: the stored key is used, no second question.
    pg.reload()
    pg.wait_for_selector("body[data-ready=true]")
    assert not pg.is_visible("[data-testid=ask-dialog]")
    assert all(key not in u for u in urls) and all(key not in c for c in console)
    ctx.close()


def test_screenshots_desktop_and_phone(browser, server_url):
    ARTIFACTS.mkdir(exist_ok=True)
    conv = {"title": "Markdown tour", "messages": [
        {"role": "user", "content": "Show me some **markdown**, please."},
        {"role": "assistant", "content":
            "## A heading\n\nSome **bold**, *italic* and `inline code`, plus a "
            "[link](https://example.com).\n\n- one\n- two\n  - nested\n\n1. first\n2. second\n\n"
            "```python\ndef hello():\n    print(\"<b>hi</b>\")\n```\n\n> a quote\n\n"
            "| Fruit | Color | Price |\n|:------|:-----:|------:|\n| Apple | **red** | 1.20 |\n"
            "| Banana | yellow | 0.50 |\n| `a|b` | x \\| y | 10.00 |"},
    ]}
    for name, size in (("desktop", (1280, 800)), ("phone", (390, 844))):
        ctx = browser.new_context(viewport={"width": size[0], "height": size[1]})
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        open_page(pg, server_url)
        pg.screenshot(path=str(ARTIFACTS / f"page-{name}-welcome.png"))
        pg.set_input_files("[data-testid=import-file]", files=[{
            "name": "tour.json", "mimeType": "application/json", "buffer": json.dumps(conv).encode()}])
        pg.wait_for_selector("[data-testid=copy-code]")
        pg.screenshot(path=str(ARTIFACTS / f"page-{name}-chat.png"))
        if name == "phone":
            # The sidebar is hidden behind the menu button at phone width.
            assert not pg.locator("[data-testid=sidebar]").is_visible()
            pg.click("[data-testid=menu]")
            pg.wait_for_function("() => document.querySelector('[data-testid=sidebar]').getBoundingClientRect().x >= 0")
            pg.screenshot(path=str(ARTIFACTS / "page-phone-sidebar.png"))
            pg.click("[data-testid=scrim]", position={"x": 370, "y": 400})
            pg.wait_for_selector("[data-testid=sidebar]", state="hidden")
        else:
            assert pg.locator("[data-testid=sidebar]").bounding_box()["x"] == 0
            pg.emulate_media(color_scheme="dark")
            pg.screenshot(path=str(ARTIFACTS / "page-desktop-chat-dark.png"))
            bg = pg.evaluate("() => getComputedStyle(document.body).backgroundColor")
            assert bg != "rgb(255, 255, 255)", "dark mode follows the system setting"
        # Nothing sticks out sideways at this width.
        assert pg.evaluate("document.documentElement.scrollWidth") <= size[0]
        ctx.close()


# ---------------------------------------------------------------------------------------
# Found by an exploratory tester: each of these failed on the page before its fix.

def test_two_tabs_keep_each_others_chats(browser, server_url):
    # Every save wrote this tab's whole list: a second tab's chats vanished.
    ctx = browser.new_context()
    a = ctx.new_page()
    a.set_default_timeout(TIMEOUT_MS)
    open_page(a, server_url)
    set_settings(a, temperature=0, **{"max-tokens": 2})
    b = ctx.new_page()
    b.set_default_timeout(TIMEOUT_MS)
    open_page(b, server_url)
    send(a, "tab A message")
    wait_idle(a)
    b.click("[data-testid=new-chat]")
    send(b, "tab B message")
    wait_idle(b)
    # Tab A sees tab B's chat without a reload, and its own next save keeps it.
    a.wait_for_function("() => document.querySelectorAll('[data-testid=conv-item]').length === 2")
    send(a, "tab A again")
    wait_idle(a)
    titles = sorted(c["title"] for c in stored(a))
    assert titles == ["tab A message", "tab B message"], titles
    chat_a = next(c for c in stored(a) if c["title"] == "tab A message")
    assert [m["content"] for m in chat_a["messages"] if m["role"] == "user"] == ["tab A message", "tab A again"]
    # A chat deleted in one tab stays deleted: the other tab's next save does not bring it back.
    a.locator("[data-testid=conv-open]", has_text="tab B message").click()
    a.click("[data-testid=delete]")
    a.click("[data-testid=ask-ok]")
    b.wait_for_function("() => document.querySelectorAll('[data-testid=conv-item]').length === 1")
    # (B had that chat open: none is open now, so what B sends starts a new chat, not
    # one in A's chat; see tests/e2e/test_page_tabs_deleted.py)
    send(b, "tab B after the delete")
    wait_idle(b)
    assert sorted(c["title"] for c in stored(b)) == ["tab A message", "tab B after the delete"]
    b.reload()
    b.wait_for_selector("body[data-ready=true]")
    assert sorted(b.locator("[data-testid=conv-item]").all_text_contents()) == sorted(
        c["title"] for c in stored(b))
    assert b.locator("[data-testid=conv-item]").count() == 2
    ctx.close()


def test_settings_refuse_values_the_server_would_refuse(page):
    for field, value, why in (("temperature", "5", "from 0 to 2"),
                              ("seed", "99999999999999999999", "Seed must be a whole number from 0 to")):
        page.click("[data-testid=settings-button]")
        page.fill(f"[data-testid=set-{field}]", value)
        page.click("[data-testid=settings-save]")
        assert page.is_visible("[data-testid=settings-error]")
        assert why in page.text_content("[data-testid=settings-error]")
        page.keyboard.press("Escape")
        page.wait_for_selector("[data-testid=settings-dialog]", state="hidden")


def test_tapping_the_open_chat_does_not_stop_its_reply(page):
    # On a phone the natural way to close the chat list is tapping the open chat.
    set_settings(page, temperature=0, **{"max-tokens": 40})
    slow_network(page, downloadThroughput=4000)
    send(page, "Hello there")
    page.wait_for_selector("[data-testid=stop]:visible")
    page.locator("[data-testid=conv-open]").first.click()
    assert page.is_visible("[data-testid=stop]"), "the reply had already ended: the test proves nothing"
    wait_idle(page)
    last = current_conv(page)["messages"][-1]
    assert last["role"] == "assistant" and last["content"] and not last.get("stopped")
    assert not page.is_visible("[data-testid=stopped-note]")


def test_regenerate_with_nothing_to_answer_changes_nothing(page, tmp_path):
    # A chat of a system message and a reply: there is no question to answer again.
    f = tmp_path / "chat.json"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hello!"}]
    f.write_text(json.dumps({"messages": msgs}))
    page.set_input_files("[data-testid=import-file]", str(f))
    page.wait_for_selector("[data-testid=regenerate]")
    page.click("[data-testid=regenerate]")
    time.sleep(0.3)
    assert not page.is_visible("[data-testid=error]"), page.text_content("[data-testid=error]")
    assert [(m["role"], m["content"]) for m in current_conv(page)["messages"]] == \
        [(m["role"], m["content"]) for m in msgs]


def test_a_key_entered_after_a_failed_start_still_fits_the_context(browser, server_factory, tmp_path):
    # A wrong key at start left the page without /props: the context size was unknown
    # and no old turn was ever dropped, so a long chat got the server's 400.
    key = "page-test-key"
    url = server_factory(MODEL, "--api-key", key).url.rstrip("/") + "/"
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(url)
    # Two wrong keys: the page starts without the server's properties.
    pg.wait_for_selector("[data-testid=ask-dialog][open]")
    pg.fill("[data-testid=ask-input]", "wrong")
    pg.click("[data-testid=ask-ok]")
    pg.wait_for_selector("#ask-message:has-text('not accepted')")
    pg.fill("[data-testid=ask-input]", "wrong again")
    pg.click("[data-testid=ask-ok]")
    pg.wait_for_selector("body[data-ready=true]")
    long_turns = [{"role": r, "content": f"turn {i} " + "lorem ipsum dolor sit amet " * 12}
                  for i in range(12) for r in ("user", "assistant")]
    chat = tmp_path / "long-chat.json"
    chat.write_text(json.dumps({"messages": long_turns}))
    pg.set_input_files("[data-testid=import-file]", str(chat))
    bodies = record_chat_requests(pg)
    send(pg, "and now?")
    pg.wait_for_selector("[data-testid=ask-dialog][open]")
    pg.fill("[data-testid=ask-input]", key)
    pg.click("[data-testid=ask-ok]")
    wait_idle(pg)
    assert not pg.is_visible("[data-testid=error]"), pg.text_content("[data-testid=error]")
    assert bodies and len(bodies[-1]["messages"]) < len(long_turns) + 1  # old turns dropped
    assert "/ 256" in pg.text_content("#ctx")
    ctx.close()


def test_a_reply_cut_by_the_context_is_not_blamed_on_max_tokens(page):
    set_settings(page, temperature=0, **{"max-tokens": 4})
    send(page, "Hello there")
    wait_idle(page)
    assert "max-tokens limit" in page.text_content("[data-testid=notice]")
    # Greedy "Hello there" runs on to the end of the tiny model's 256-token context.
    page.click("[data-testid=new-chat]")
    set_settings(page, **{"max-tokens": 100000})
    send(page, "Hello there")
    wait_idle(page)
    notice = page.text_content("[data-testid=notice]")
    assert "end of the context" in notice and "max-tokens" not in notice, notice


def test_stop_before_the_first_word_keeps_no_empty_reply(page):
    set_settings(page, temperature=0, **{"max-tokens": 8})
    held = []  # the reply's request, held unanswered: no word can arrive
    page.route("**/v1/chat/completions", lambda route: held.append(route))
    send(page, "Hello there")
    page.wait_for_selector("[data-testid=message][data-role=assistant]")  # the empty bubble
    assert held
    page.click("[data-testid=stop]")
    wait_idle(page)
    assert [m["role"] for m in current_conv(page)["messages"]] == ["user"]
    assert page.locator("[data-testid=message][data-role=assistant]").count() == 0


def test_a_reply_streaming_when_the_tab_reloads_is_kept_as_stopped(page):
    set_settings(page, temperature=0, **{"max-tokens": 100000})
    slow_network(page, downloadThroughput=3000)  # a reply of several seconds
    send(page, "Hello there")
    page.wait_for_function(
        "() => { const c = JSON.parse(localStorage.getItem('chatfile.conversations') || '[]');"
        " return c.length && c[0].messages.length === 2 && c[0].messages[1].content; }",
        timeout=15_000)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    last = current_conv(page)["messages"][-1]
    assert last["role"] == "assistant" and last["content"] and last["stopped"] is True
    page.wait_for_selector("[data-testid=stopped-note]")


def _prompt_tokens(server_url, messages):
    """The server's own count of the prompt these messages make."""
    prompt = server_json(server_url, "apply-template", {"messages": messages})["prompt"]
    return len(server_json(server_url, "tokenize", {"content": prompt, "add_special": True})["tokens"])


def test_a_message_bigger_than_the_reply_reserve_is_still_sent(page, server_url):
    # The page keeps min(max tokens, n_ctx / 2) for the reply; a first message between
    # that and the context (less some room for a reply) used to be refused, though the
    # server would answer it.
    n_ctx = json.load(urllib.request.urlopen(server_url + "props"))["n_ctx"]
    set_settings(page, temperature=0, **{"max-tokens": 100000})  # reserve: n_ctx / 2
    n = 1
    while _prompt_tokens(server_url, [{"role": "user", "content": "word " * n}]) <= n_ctx * 0.6:
        n += 4
    text = "word " * n
    size = _prompt_tokens(server_url, [{"role": "user", "content": text}])
    assert n_ctx / 2 < size < n_ctx - 64
    bodies = record_chat_requests(page)
    send(page, text.strip())
    wait_idle(page)
    assert not page.is_visible("[data-testid=error]"), page.text_content("[data-testid=error]")
    assert len(bodies) == 1 and current_conv(page)["messages"][-1]["role"] == "assistant"


def test_a_model_without_a_chat_template_is_called_a_base_model(page, browser, server_factory):
    """Gemma-3-270M's GGUF has no chat template: it echoes questions, which looks broken
    unless the page says why. A model with a template gets no such note."""
    page.wait_for_selector("[data-testid=welcome]")
    assert "probably a base model" in page.text_content("[data-testid=base-model-note]")
    template = ROOT / "tests" / "fixtures" / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja"
    url = server_factory(MODEL, "--chat-template", str(template)).url.rstrip("/") + "/"
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    open_page(pg, url)
    pg.wait_for_selector("[data-testid=welcome]")
    assert pg.locator("[data-testid=base-model-note]").count() == 0
    ctx.close()


# ---------------------------------------------------------------------------------------
# GFM pipe tables in model replies. Most cases call the page's own renderer
# (ChatMarkdown.render, which app.js calls with the reply's text at every streamed frame)
# on a detached element in the loaded page; one goes through a canned streamed reply.

# The rendered blocks of `text`, and every table in them as plain data.
RENDER_TABLES = """(text) => {
    const d = document.createElement('div');
    d.className = 'msg-body';
    d.appendChild(ChatMarkdown.render(text));
    document.body.appendChild(d);  // attached, so that computed styles exist
    const cells = (row) => [...row.children].map(c => ({
        tag: c.tagName.toLowerCase(), text: c.textContent,
        align: getComputedStyle(c).textAlign,
        code: [...c.querySelectorAll('code')].map(e => e.textContent),
        inner: [...c.querySelectorAll('*')].map(e => e.tagName.toLowerCase())}));
    const ancestors = (e) => e === d ? [] :  // tags from the message body down to e
        ancestors(e.parentElement).concat(e.tagName.toLowerCase());
    const r = {
        blocks: [...d.children].map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '')),
        paragraphs: [...d.querySelectorAll('p')].map(p => p.innerText),
        text: d.textContent,
        tables: [...d.querySelectorAll('table')].map(t => ({
            within: ancestors(t.parentElement),
            item: t.closest('li') && t.closest('li').firstChild.textContent,
            head: [...t.querySelectorAll(':scope > thead > tr')].map(cells),
            body: [...t.querySelectorAll(':scope > tbody > tr')].map(cells)})),
    };
    d.remove();
    return r;
}"""


def render_md(pg, text):
    return pg.evaluate(RENDER_TABLES, text)


def texts(rows):
    return [[c["text"] for c in row] for row in rows]


def canned_sse(pg, text, piece_chars=5):
    """Answer the next chat request with `text`, streamed in small SSE pieces."""
    events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    events += [{"choices": [{"index": 0, "delta": {"content": text[i:i + piece_chars]}}]}
               for i in range(0, len(text), piece_chars)]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    pg.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=body))


FRUIT_TABLE = ("| Fruit | Color |\n"
               "|---|---|\n"
               "| Apple | **Red** |\n"
               "| Banana | *Yellow* and `#ff0` |\n")


def test_markdown_table_basic(page):
    r = render_md(page, FRUIT_TABLE)
    assert r["blocks"] == ["div.table-wrap"], r["blocks"]
    [t] = r["tables"]
    assert [[c["tag"] for c in row] for row in t["head"]] == [["th", "th"]]
    assert [[c["tag"] for c in row] for row in t["body"]] == [["td", "td"], ["td", "td"]]
    assert texts(t["head"]) == [["Fruit", "Color"]]
    assert texts(t["body"]) == [["Apple", "Red"], ["Banana", "Yellow and #ff0"]]
    # Inline formatting works inside cells as it does elsewhere.
    assert t["body"][0][1]["inner"] == ["strong"]
    assert t["body"][1][1]["inner"] == ["em", "code"] and t["body"][1][1]["code"] == ["#ff0"]
    assert "|" not in r["text"] and "---" not in r["text"]

    # The same table in a real streamed reply lands in the message bubble.
    canned_sse(page, "Here you go:\n\n" + FRUIT_TABLE)
    send(page, "a table please")
    wait_idle(page)
    body = assistant_bodies(page).last
    assert body.locator(":scope > .table-wrap > table > thead th").all_text_contents() == ["Fruit", "Color"]
    assert body.locator("table tbody td").all_text_contents() == ["Apple", "Red", "Banana", "Yellow and #ff0"]
    assert current_conv(page)["messages"][-1]["content"] == "Here you go:\n\n" + FRUIT_TABLE


def test_markdown_table_alignment(page):
    r = render_md(page, "| Left | Center | Right | None |\n"
                        "|:-----|:------:|------:|------|\n"
                        "| a | b | c | d |")
    [t] = r["tables"]
    want = ["left", "center", "right", "left"]
    assert [c["align"] for c in t["head"][0]] == want
    assert [c["align"] for c in t["body"][0]] == want
    # Leading and trailing pipes are optional; one hyphen per column is enough.
    r = render_md(page, "Name | Score\n:-: | -:\nAda | 10\nBob | 9")
    [t] = r["tables"]
    assert texts(t["head"]) == [["Name", "Score"]] and texts(t["body"]) == [["Ada", "10"], ["Bob", "9"]]
    assert [c["align"] for c in t["body"][1]] == ["center", "right"]


def test_markdown_table_escaped_pipe_and_code_span_with_a_pipe(page):
    r = render_md(page, "| Expression | Meaning |\n"
                        "| --- | --- |\n"
                        "| `a | b` | bitwise or |\n"
                        "| x \\| y | an escaped pipe |\n"
                        "| `p \\|\\| q` | escaped inside code |\n"
                        "| back\\\\ | slash |\n")
    [t] = r["tables"]
    assert texts(t["body"]) == [["a | b", "bitwise or"],
                                ["x | y", "an escaped pipe"],
                                ["p || q", "escaped inside code"],
                                ["back\\", "slash"]]
    assert t["body"][0][0]["code"] == ["a | b"] and t["body"][2][0]["code"] == ["p || q"]
    # An unclosed backtick is only a character: the pipe after it still splits.
    [t] = render_md(page, "| a | b |\n|---|---|\n| ` | x |")["tables"]
    assert texts(t["body"]) == [["`", "x"]]


def test_markdown_table_ragged_rows_are_padded_or_cut(page):
    r = render_md(page, "| one | two | three |\n"
                        "|-----|-----|-------|\n"
                        "| 1 |\n"
                        "| 1 | 2 | 3 | 4 | five |\n"
                        "| | mid |\n")
    [t] = r["tables"]
    assert texts(t["head"]) == [["one", "two", "three"]]
    assert texts(t["body"]) == [["1", "", ""], ["1", "2", "3"], ["", "mid", ""]]
    assert all(c["tag"] == "td" for row in t["body"] for c in row)
    assert "five" not in r["text"] and "4" not in r["text"]
    # A header and a delimiter row of different widths are no table (GFM).
    r = render_md(page, "| a | b |\n|---|---|---|\n| 1 | 2 |")
    assert r["tables"] == [] and r["blocks"] == ["p"]


def test_markdown_table_after_a_paragraph_line_ends_at_a_blank_line(page):
    r = render_md(page, "Here is the comparison:\n"
                        "| Model | Size |\n"
                        "|-------|------|\n"
                        "| Qwen | 0.5B |\n"
                        "| Gemma | 270M |\n"
                        "\n"
                        "| not a row |\n"
                        "That was all.")
    assert r["blocks"] == ["p", "div.table-wrap", "p"], r["blocks"]
    assert r["paragraphs"][0] == "Here is the comparison:"
    assert r["paragraphs"][1] == "| not a row |\nThat was all."
    [t] = r["tables"]
    assert texts(t["body"]) == [["Qwen", "0.5B"], ["Gemma", "270M"]]
    # A line without a pipe ends the table as well, and so does another block.
    r = render_md(page, "a | b\n--|--\n1 | 2\nThe end.\n\nx | y\n-|-\n3 | 4\n## Next\n- item")
    assert r["blocks"] == ["div.table-wrap", "p", "div.table-wrap", "h2", "ul"], r["blocks"]
    assert [texts(t["body"]) for t in r["tables"]] == [[["1", "2"]], [["3", "4"]]]
    assert r["paragraphs"] == ["The end."]


def test_markdown_lines_with_pipes_but_no_delimiter_row_stay_text(page):
    for text in ("Use `a | b` or x | y here.\nAnd | this | too.",
                 "| Fruit | Color |\n| Apple | Red |",
                 "a | b\n---",                      # a rule, not a one-column delimiter
                 "| a | b |\n| -- | x |",           # not a delimiter row
                 "cat file | grep x | wc -l"):
        r = render_md(page, text)
        assert r["tables"] == [], text
        assert "table" not in " ".join(r["blocks"]), (text, r["blocks"])
        for line in text.split("\n"):
            if line != "---":
                assert line.replace("`", "") in r["text"], (text, r["text"])
    # A table inside a code fence is code.
    r = render_md(page, "```\n| a | b |\n|---|---|\n| 1 | 2 |\n```")
    assert r["tables"] == [] and r["blocks"] == ["div.code-block"]


def test_markdown_table_inside_a_list_item(page):
    # An indented table under an item belongs to that item (as on GitHub), with the rules of
    # a top-level table: it needs its delimiter row, and it ends where the item ends.
    r = render_md(page, "- item\n  | a | b |\n  |---|---|\n  | 1 | 2 |")
    assert r["blocks"] == ["ul"], r["blocks"]
    [t] = r["tables"]
    assert t["within"] == ["ul", "li", "div"] and t["item"] == "item", t
    assert [[c["tag"] for c in row] for row in t["head"] + t["body"]] == [["th", "th"], ["td", "td"]]
    assert texts(t["head"]) == [["a", "b"]] and texts(t["body"]) == [["1", "2"]]
    assert "|" not in r["text"] and "---" not in r["text"]

    r = render_md(page, "1. First\n"
                        "2. Sizes:\n"
                        "   | Model | **Params** |\n"
                        "   | :-- | --: |\n"
                        "   | Qwen | 0.5B |\n"
                        "   | Gemma | 270M |\n"
                        "   Both are small.\n"
                        "3. Third\n"
                        "| not | in the list |")
    assert r["blocks"] == ["ol", "p"], r["blocks"]
    [t] = r["tables"]
    assert t["within"] == ["ol", "li", "div"] and t["item"] == "Sizes:", t
    assert texts(t["head"]) == [["Model", "Params"]] and t["head"][0][1]["inner"] == ["strong"]
    assert texts(t["body"]) == [["Qwen", "0.5B"], ["Gemma", "270M"]]
    assert [c["align"] for c in t["body"][0]] == ["left", "right"]
    items = page.evaluate("""(text) => [...ChatMarkdown.render(text).querySelector('ol').children]
        .map(li => [...li.childNodes].map(n => n.nodeName.toLowerCase()))""",
                          "1. First\n2. Sizes:\n   | a | b |\n   |---|---|\n   Both are small.\n3. Third")
    # The text after the table follows it directly, without a stray line break.
    assert items == [["#text"], ["#text", "div", "#text"], ["#text"]], items
    assert r["paragraphs"] == ["| not | in the list |"]

    # Under a nested item, the table goes into that item; a later item is its own.
    r = render_md(page, "- top\n  - sub\n    x | y\n    --|--\n    3 | 4\n  - next")
    [t] = r["tables"]
    assert t["within"] == ["ul", "li", "ul", "li", "div"] and t["item"] == "sub", t
    assert texts(t["body"]) == [["3", "4"]] and r["text"].endswith("next")

    # While a reply streams in, the item's lines stay text until the delimiter row is complete.
    text = "- Sizes:\n  | Model | Params |\n  | :-- | --: |\n  | Qwen | 0.5B |"
    delim_done = text.index("--: |") + len("--: |")
    for n in range(2, len(text) + 1):  # from "- " on
        r = render_md(page, text[:n])
        assert r["blocks"] == ["ul"], (n, r["blocks"])
        assert len(r["tables"]) == (n >= delim_done), (n, r["tables"])
        if n >= delim_done:
            assert texts(r["tables"][0]["head"]) == [["Model", "Params"]], n


def test_markdown_list_items_with_pipes_but_no_table_stay_text(page):
    for text in ("- run `a | b`\n  or cat f | grep x\n  | one | row |",
                 "- item\n  | a | b |\n  |---|---|---|",     # widths differ
                 "- item\n  | a | b |\n  | -- | x |",         # not a delimiter row
                 "- item\n  | a | b |\n|---|---|\n| 1 | 2 |",  # delimiter row not in the item
                 "1. item\n   | a | b |\n   |---|---"):        # still streaming
        r = render_md(page, text)
        assert r["tables"] == [], text
        assert r["blocks"][0] in ("ul", "ol"), (text, r["blocks"])
        for line in text.split("\n"):
            assert re.sub(r"^\s*(- |1\. )?", "", line).replace("`", "") in r["text"], (text, r["text"])


def test_markdown_partial_table_while_streaming(page):
    # app.js renders the reply received so far at every frame: every prefix of a table
    # must render as something sensible. The lines stay a paragraph until the delimiter
    # row is complete (its closing pipe or the next line has arrived); from then on the
    # table has its final shape and alignment, and only its rows grow.
    text = ("Sizes:\n"
            "| Model | Params |\n"
            "| :---- | -----: |\n"
            "| Qwen2.5-Coder | 0.5B |\n"
            "| Gemma 3 | 270M |\n"
            "\nDone.")
    delim_done = text.index("-----: |") + len("-----: |")
    full = [["Qwen2.5-Coder", "0.5B"], ["Gemma 3", "270M"]]
    for n in range(1, len(text) + 1):
        r = render_md(page, text[:n])
        if n < delim_done:
            assert r["tables"] == [], f"a table before its delimiter row is complete: {text[:n]!r}"
            assert r["blocks"] == ["p"], (n, r["blocks"])
            assert r["text"].replace("\n", "") == text[:n].replace("\n", ""), n
            continue
        assert r["blocks"][:2] == ["p", "div.table-wrap"], (n, r["blocks"])
        assert r["paragraphs"][0] == "Sizes:"
        [t] = r["tables"]
        assert texts(t["head"]) == [["Model", "Params"]], (n, t)
        assert [c["align"] for c in t["head"][0]] == ["left", "right"], n
        assert len(t["body"]) <= 2 and all(len(row) == 2 for row in t["body"]), (n, t)
        for k, row in enumerate(texts(t["body"])):
            for got, want in zip(row, full[k]):
                assert want.startswith(got), (n, row)
    assert texts(r["tables"][0]["body"]) == full and r["paragraphs"][-1] == "Done."
    # Without a closing pipe the delimiter row is complete when the next line begins.
    assert render_md(page, "Model | Params\n:-- | --:")["tables"] == []
    [t] = render_md(page, "Model | Params\n:-- | --:\n")["tables"]
    assert texts(t["head"]) == [["Model", "Params"]] and t["body"] == []


def test_wide_table_scrolls_inside_the_message_on_a_phone(browser, server_url):
    wide = ("| " + " | ".join(f"column_{k}_with_a_long_name" for k in range(8)) + " |\n"
            + "|" + "---|" * 8 + "\n"
            + "| " + " | ".join(f"value_{k}_that_is_long_too" for k in range(8)) + " |\n")
    conv = {"title": "wide", "messages": [{"role": "user", "content": "wide table"},
                                          {"role": "assistant", "content": wide}]}
    for scheme in ("light", "dark"):
        ctx = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme=scheme)
        pg = ctx.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        open_page(pg, server_url)
        pg.set_input_files("[data-testid=import-file]", files=[{
            "name": "wide.json", "mimeType": "application/json", "buffer": json.dumps(conv).encode()}])
        pg.wait_for_selector(".msg-body table")
        m = pg.evaluate("""() => {
            const w = document.querySelector('.msg-body .table-wrap');
            const td = w.querySelector('td'), th = w.querySelector('th');
            const cs = getComputedStyle(td);
            return {wrapScroll: w.scrollWidth, wrapClient: w.clientWidth,
                    docScroll: document.documentElement.scrollWidth,
                    overflowX: getComputedStyle(w).overflowX,
                    border: cs.borderTopStyle, pad: parseFloat(cs.paddingLeft),
                    tdColor: cs.color, thBg: getComputedStyle(th).backgroundColor,
                    bodyColor: getComputedStyle(document.body).color};
        }""")
        assert m["docScroll"] <= 390, "the table pushes the page sideways"
        assert m["overflowX"] == "auto" and m["wrapScroll"] > m["wrapClient"], m
        assert m["border"] == "solid" and m["pad"] >= 4, m
        assert m["tdColor"] == m["bodyColor"], "cells use the page's text colour (dark mode too)"
        assert m["thBg"] != "rgb(255, 255, 255)" or scheme == "light", m
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"page-phone-table-{scheme}.png"))
        ctx.close()


# ---------------------------------------------------------------------------------------
# Found by a tester (2026-11-29, seventh session).

@pytest.mark.parametrize("how", ["other chat", "new chat", "delete"])
def test_leaving_a_streaming_chat_brings_the_send_button_back(page, how):
    """Switching chats or starting one leaves the reply streaming in its own chat (see
    test_page_reply_life.py), deleting it stops it: either way the chat shown has Send,
    not the Stop of another chat's reply."""
    set_settings(page, temperature=0, **{"max-tokens": 4})
    send(page, "first chat")
    wait_idle(page)
    page.click("[data-testid=new-chat]")
    set_settings(page, **{"max-tokens": 100000})
    slow_network(page, downloadThroughput=3000)  # a reply of several seconds
    send(page, "Hello there")
    page.wait_for_selector("[data-testid=message][data-role=assistant]")
    assert page.is_visible("[data-testid=stop]")
    if how == "other chat":
        page.locator("[data-testid=conv-open]").nth(1).click()
    elif how == "new chat":
        page.click("[data-testid=new-chat]")
    else:
        page.click("[data-testid=delete]")
        page.click("[data-testid=ask-ok]")
    wait_idle(page)  # Send visible and Stop hidden, without another keypress
    assert not page.is_visible("[data-testid=stop]")


def test_a_reply_cut_off_by_a_server_that_went_away_is_marked_and_explained(page):
    """The server ends a stream by closing the connection, so one that died mid-answer
    must not pass for a finished reply: no [DONE], no finish_reason."""
    pieces = [{"choices": [{"index": 0, "delta": {"content": w}}]} for w in ("Once ", "upon ", "a")]
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"},
        body="".join(f"data: {json.dumps(p)}\n\n" for p in pieces)))
    send(page, "Tell me a story")
    wait_idle(page)
    assert "stopped in the middle of this reply" in page.text_content("[data-testid=error]")
    last = current_conv(page)["messages"][-1]
    assert last == {"role": "assistant", "content": "Once upon a", "stopped": True}, last
    page.wait_for_selector("[data-testid=stopped-note]")
    # A complete stream (finish_reason and [DONE]) is still a finished reply.
    page.unroute("**/v1/chat/completions")
    canned_sse(page, "The end.")
    page.click("[data-testid=new-chat]")
    send(page, "again")
    wait_idle(page)
    assert not page.is_visible("[data-testid=error]")
    assert current_conv(page)["messages"][-1] == {"role": "assistant", "content": "The end."}


def test_clearing_the_servers_default_system_prompt_sends_none(browser, server_factory):
    url = server_factory(MODEL, "--system", "Always answer in French.").url.rstrip("/") + "/"
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    open_page(pg, url)
    bodies = record_chat_requests(pg)
    set_settings(pg, temperature=0, **{"max-tokens": 2})
    send(pg, "hi")
    wait_idle(pg)
    set_settings(pg, system="")
    pg.click("[data-testid=new-chat]")
    send(pg, "hi")
    wait_idle(pg)
    ctx.close()
    assert bodies[0]["messages"][0] == {"role": "system", "content": "Always answer in French."}
    # Cleared: an empty system message, which keeps the server from adding its default.
    assert bodies[1]["messages"][0] == {"role": "system", "content": ""}, bodies[1]
    status, r = post_json(url + "apply-template", {"messages": bodies[1]["messages"]})
    assert status == 200 and "French" not in r["prompt"], r


MARKDOWN_BLOCKS = """(text) => {
    const d = document.createElement('div');
    d.className = 'msg-body';
    d.dir = 'auto';
    d.appendChild(ChatMarkdown.render(text));
    document.body.appendChild(d);
    const r = {
        html: d.innerHTML,
        lists: [...d.querySelectorAll(':scope > ol, :scope > ul')].length,
        code: [...d.querySelectorAll('pre code')].map(c => ({
            text: c.textContent, inItem: !!c.closest('li'),
            direction: getComputedStyle(c.closest('pre')).direction})),
        links: [...d.querySelectorAll('a')].map(a => [a.textContent, a.href]),
        paragraphs: [...d.querySelectorAll('p')].map(p => [p.textContent, getComputedStyle(p).direction]),
    };
    d.remove();
    return r;
}"""


def test_markdown_code_under_a_list_item_loses_the_items_indent(page):
    text = ("1. Define it:\n"
            "   ```python\n"
            "   def f():\n"
            "       return 1\n"
            "   ```\n"
            "2. Call it:\n"
            "  ```\n"
            "  f()\n"
            "  ```\n")
    r = page.evaluate(MARKDOWN_BLOCKS, text)
    assert [c["text"] for c in r["code"]] == ["def f():\n    return 1", "f()"], r
    assert all(c["inItem"] for c in r["code"]) and r["lists"] == 1, r["html"]
    # A fence at the top level indented by a few spaces loses them too.
    r = page.evaluate(MARKDOWN_BLOCKS, "  ```\n  x = 1\n    y = 2\n  ```")
    assert [c["text"] for c in r["code"]] == ["x = 1\n  y = 2"]


def test_markdown_links_with_parentheses_and_bold_italic(page):
    r = page.evaluate(MARKDOWN_BLOCKS,
                      "See [Foo](https://en.wikipedia.org/wiki/Foo_(bar)) and "
                      "https://en.wikipedia.org/wiki/Baz_(qux). ***both***")
    assert r["links"] == [["Foo", "https://en.wikipedia.org/wiki/Foo_(bar)"],
                          ["https://en.wikipedia.org/wiki/Baz_(qux)",
                           "https://en.wikipedia.org/wiki/Baz_(qux)"]], r["links"]
    assert "<em><strong>both</strong></em>" in r["html"], r["html"]
    assert r["paragraphs"][0][0].endswith("both"), r


def test_right_to_left_text_reads_right_to_left_and_code_stays_left_to_right(page):
    r = page.evaluate(MARKDOWN_BLOCKS, "مرحبا بالعالم!\n\nHello world!\n\n```\nprint(1)\n```")
    assert [d for _, d in r["paragraphs"]] == ["rtl", "ltr"], r["paragraphs"]
    assert [c["direction"] for c in r["code"]] == ["ltr"]
