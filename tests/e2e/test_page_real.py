"""What a session with the real default model (Qwen2.5-Coder-0.5B) in the chat page
found: a follow-up sent without the answer it was about on a 1024-token context, nothing
showing which messages the model no longer sees, a stale context readout, a title cut
mid-word, and other small surprises. Each test failed on the page before its fix; they
run on the tiny fixture model (the page's logic does not depend on the model's words).
Helpers and fixtures are those of test_page.py and test_page_explore.py.
"""
from __future__ import annotations

import json
import urllib.request

from tests.e2e.conftest import require_chromium
from tests.e2e.test_page import (  # noqa: F401 - `page` is a fixture
    _prompt_tokens, current_conv, open_page, page, send, set_settings, slow_network, stored,
    wait_idle)
from tests.e2e.test_page_explore import import_chat, reply_with, sse_ending

sync_api = require_chromium()


def n_ctx_of(server_url):
    return json.load(urllib.request.urlopen(server_url + "props"))["n_ctx"]


def answer_chats_with(pg, body):
    """Every chat request is answered with the canned SSE `body`; returns the list of the
    requests' JSON bodies."""
    bodies = []

    def handle(route):
        bodies.append(json.loads(route.request.post_data))
        reply_with(route, body)
    pg.route("**/v1/chat/completions", handle)
    return bodies


def test_a_follow_up_keeps_the_answer_it_is_about(page, server_url):
    """With `--ctx 1024` the page kept half the context for the reply: after one long
    answer (about 560 tokens) the next question ("Add unit tests for that class") was
    sent alone, and the model wrote tests for a class of its own. The reserve is now at
    most a quarter of the context."""
    n_ctx = n_ctx_of(server_url)
    set_settings(page, **{"max-tokens": 100000})  # the reserve is the cap
    question, follow_up = "Write a class.", "Add tests for that class."
    words = 1
    while True:  # an answer that makes the prompt about 60 % of the context
        answer = "code " * words
        msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": answer},
                {"role": "user", "content": follow_up}]
        if _prompt_tokens(server_url, msgs) > 0.6 * n_ctx:
            break
        words += 2
    assert _prompt_tokens(server_url, msgs) < 0.7 * n_ctx
    import_chat(page, {"title": "class", "messages": msgs[:2]})
    bodies = answer_chats_with(page, sse_ending("Here are the tests."))
    send(page, follow_up)
    wait_idle(page)
    assert [m["content"] for m in bodies[0]["messages"]] == [question, answer, follow_up]
    assert not page.is_visible("[data-testid=left-out-line]")


def test_the_messages_the_model_no_longer_sees_are_marked(page, browser, server_url):
    """Past the context the oldest messages were left out of the request, but the chat
    looked the same: the model answered "please provide more context" under the very
    code it was asked about, and nothing said which messages it still had. They are now
    greyed out above a line that says so, also after a reload."""
    n_ctx = n_ctx_of(server_url)
    set_settings(page, **{"max-tokens": 8})
    turn = "word " * (n_ctx // 8)
    history = []
    for k in range(4):
        history += [{"role": "user", "content": f"old question {k} {turn}"},
                    {"role": "assistant", "content": f"old answer {k} {turn}"}]
    import_chat(page, {"title": "long", "messages": history})
    assert not page.is_visible("[data-testid=left-out-line]")
    bodies = answer_chats_with(page, sse_ending("a reply"))
    send(page, "the latest question")
    wait_idle(page)
    sent = [m["content"] for m in bodies[0]["messages"]]
    assert sent[-1] == "the latest question" and len(sent) < len(history) + 1

    def check():
        classes = page.eval_on_selector_all(
            "#messages > *", "els => els.map(e => e.getAttribute('data-testid') === 'left-out-line'"
            " ? 'LINE' : (e.classList.contains('left-out') ? 'out' : 'in'))")
        n_out = len(history) - (len(sent) - 1)
        assert classes == ["out"] * n_out + ["LINE"] + ["in"] * (len(sent) + 1), classes
        # What is below the line is exactly what was sent (and the reply).
        shown = page.eval_on_selector_all(
            "[data-testid=message]:not(.left-out) [data-testid=message-body]",
            "els => els.map(e => e.textContent)")
        assert shown == sent + ["a reply"]
        line = page.text_content("[data-testid=left-out-line]")
        assert "no longer sees the messages above" in line and str(n_ctx) in line, line

    check()
    notice = page.text_content("[data-testid=notice]")
    assert "left out to fit the context" in notice and "new chat" in notice
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    check()
    # The readout counts what the model is sent, not the greyed messages: it said
    # "context 2743 / 1024" after a reload, when it no longer had the server's count.
    want = _prompt_tokens(server_url, bodies[0]["messages"] + [{"role": "assistant", "content": "a reply"}])
    page.wait_for_function("(t) => document.getElementById('ctx').textContent === t",
                           arg=f"context {want} / {n_ctx}", timeout=5000)
    # The marks are the page's own: an export carries the messages only.
    with page.expect_download() as dl:
        page.click("[data-testid=export-json]")
    exported = json.loads(open(dl.value.path(), encoding="utf-8").read())
    assert all(set(m) == {"role", "content"} for m in exported["messages"])


def test_the_context_readout_is_not_the_replaced_replys(page, server_url):
    """The readout kept the server's count for the last reply while the chat had as many
    messages: after an edit or Regenerate whose reply brought no count (stopped, cut off)
    it showed the count of the reply that was no longer there."""
    n_ctx = n_ctx_of(server_url)
    answer_chats_with(page, sse_ending("first reply", usage={
        "prompt_tokens": 150, "completion_tokens": 50, "total_tokens": 200}))
    send(page, "hello")
    wait_idle(page)
    page.wait_for_function("() => document.getElementById('ctx').textContent.startsWith('context 200 /')")
    page.unroute("**/v1/chat/completions")
    answer_chats_with(page, sse_ending("second"))  # no usage this time
    page.click("[data-testid=edit]")
    page.fill("[data-testid=edit-input]", "hello again")
    page.click("[data-testid=edit-send]")
    wait_idle(page)
    want = _prompt_tokens(server_url, [{"role": "user", "content": "hello again"},
                                       {"role": "assistant", "content": "second"}])
    page.wait_for_function("(t) => document.getElementById('ctx').textContent === t",
                           arg=f"context {want} / {n_ctx}", timeout=5000)


def test_a_long_first_message_makes_a_title_cut_at_a_word(page):
    """The title was the first 40 characters: "Write a Python function that checks whet"."""
    answer_chats_with(page, sse_ending("ok"))
    send(page, "Write a Python function that checks whether a string is a palindrome.")
    wait_idle(page)
    assert page.text_content("[data-testid=conv-title]") == "Write a Python function that checks\u2026"
    assert current_conv(page)["title"] == "Write a Python function that checks\u2026"
    # Short ones, and a single long word, as before.
    page.click("[data-testid=new-chat]")
    send(page, "What is a Python decorator?")
    wait_idle(page)
    assert page.text_content("[data-testid=conv-title]") == "What is a Python decorator?"
    page.click("[data-testid=new-chat]")
    send(page, "https://example.com/a/very/long/address/without/any/spaces/in/it")
    wait_idle(page)
    assert page.text_content("[data-testid=conv-title]") == "https://example.com/a/very/long/address/\u2026"


def test_delete_is_confirmed_with_a_red_button(page):
    """Deleting a chat (which cannot be undone) was confirmed with the same blue button
    as a rename."""
    import_chat(page, {"title": "to delete", "messages": [{"role": "user", "content": "hi"}]})
    red = page.eval_on_selector("[data-testid=stop]", "e => getComputedStyle(e).backgroundColor")
    page.click("[data-testid=delete]")
    ok = page.locator("[data-testid=ask-ok]")
    assert ok.text_content() == "Delete"
    assert ok.evaluate("e => getComputedStyle(e).backgroundColor") == red
    page.click("[data-testid=ask-cancel]")
    page.click("[data-testid=rename]")
    assert ok.evaluate("e => getComputedStyle(e).backgroundColor") != red
    page.click("[data-testid=ask-cancel]")
    assert [c["title"] for c in stored(page)] == ["to delete"]


def test_a_reply_stopped_by_leaving_its_chat_shows_no_speed_in_the_other(page):
    """Opening another chat while a reply streamed stopped it, and its speed then showed
    under the other chat, which had no reply being written."""
    import_chat(page, {"title": "other chat", "messages": [{"role": "user", "content": "hi"}]})
    page.click("[data-testid=new-chat]")
    set_settings(page, temperature=0, **{"max-tokens": 100000})
    slow_network(page, downloadThroughput=3000)  # a reply of several seconds
    send(page, "Hello there")
    page.wait_for_function(
        "() => { const b = document.querySelectorAll('[data-role=assistant] [data-testid=message-body]');"
        " return b.length && b[b.length - 1].textContent.length > 20; }")
    page.locator("[data-testid=conv-open]", has_text="other chat").click()
    wait_idle(page)
    page.wait_for_timeout(300)  # (the stopped reply's end has run by now)
    assert page.text_content("[data-testid=tps]") == ""
    assert page.text_content("[data-testid=conv-title]") == "other chat"


def test_importing_a_markdown_export_says_what_import_reads(page):
    """A Markdown export, imported, gave "That file is not valid JSON."."""
    page.set_input_files("[data-testid=import-file]", files=[{
        "name": "chat.md", "mimeType": "text/markdown",
        "buffer": b"# chat\n\n**User:**\n\nhi\n"}])
    page.wait_for_selector("[data-testid=error]:visible")
    error = page.text_content("[data-testid=error]")
    assert "JSON button" in error and "Markdown" in error, error


def test_a_reply_that_fills_the_context_says_the_chat_can_go_on(page):
    """A reply that ran into the end of the context said "start a new chat to go on",
    though the next message is answered (the oldest ones are left out)."""
    set_settings(page, temperature=0, **{"max-tokens": 100000})
    send(page, "Hello there")  # greedy, the tiny model runs on to the end of its context
    wait_idle(page)
    notice = page.text_content("[data-testid=notice]")
    assert "end of the context" in notice and "send another message to go on" in notice, notice
    send(page, "and then?")
    wait_idle(page)
    assert not page.is_visible("[data-testid=error]"), page.text_content("[data-testid=error]")
    assert [m["role"] for m in current_conv(page)["messages"]] == ["user", "assistant"] * 2
    assert page.is_visible("[data-testid=left-out-line]")
