"""The chat page (runtime/web/) with two chats, in a real Chromium, against a server with
the host-memory prompt cache (--cache-ram): going back to a chat after the other one's
reply and sending must evaluate only what is new, not the whole chat again.

The engine's one session holds the last chat's tokens; the other chat's state comes back
from the cache only if the page sends the same history as before, rendered the same way
(the same system prompt, the same earlier turns). The reply's own timings say what was
read from the cache (cache_n) and what was evaluated (prompt_n). The page needed no
change; what it cannot keep is a reply read back as other tokens than the model wrote
(the tiny model's 512-token vocabulary: ' about' comes back as ' a', 'b', ...), and the
oldest turns it leaves out once a chat outgrows the context.
"""
from __future__ import annotations

import pytest

from tests.e2e.conftest import TINY, sse_events, with_context_length
from tests.e2e.test_api_llama import _slots
from tests.e2e.test_page import page_at, send, set_settings, wait_idle

CACHE_RAM_MIB = 8
# Long enough that chat A's prompt is over 100 tokens: more than the 64 a rewind must
# drop for the cache to save it (runtime/prompt_cache.py, MIN_SAVE_TOK).
FIRST_A = "Tell me a long story about " + "a red fox and a river under the old bridge, " * 3
FIRST_B = "Write a title for " + "a green hill under the summer sun and the wind, " * 3


# The page reads a reply's stream as it comes, so Chromium keeps no body to ask for: a
# copy of each chat response's stream is read alongside (Response.clone) and kept.
KEEP_CHAT_STREAMS = """() => {
    window.__chatStreams = [];
    const realFetch = window.fetch;
    window.fetch = async (path, init) => {
        const resp = await realFetch(path, init);
        if (String(path).endsWith("chat/completions")) {
            const slot = window.__chatStreams.push(null) - 1;
            resp.clone().text().then(t => { window.__chatStreams[slot] = t; });
        }
        return resp;
    };
}"""


@pytest.fixture
def cache_page(browser, server_factory, tmp_path):
    # room for two turns without the page leaving the first out (the fixture's 256 is not)
    model = with_context_length(TINY, tmp_path / "tiny-1k.gguf", "llama", 1024)
    server = server_factory(model, "--cache-ram", CACHE_RAM_MIB)
    with page_at(browser, server.url + "/") as pg:
        pg.evaluate(KEEP_CHAT_STREAMS)
        pg.server_url = server.url
        yield pg


def send_and_wait(pg, text):
    """Send text in the open chat and wait for the reply: the server's timings and usage
    of it (from the stream's last payloads)."""
    n = pg.evaluate("window.__chatStreams.length")
    send(pg, text)
    wait_idle(pg)
    pg.wait_for_function("n => window.__chatStreams[n] != null", arg=n)
    got = {}
    for event in sse_events(pg.evaluate("n => window.__chatStreams[n]", n).encode()):
        if isinstance(event, dict):
            got.update({k: event[k] for k in ("timings", "usage") if event.get(k)})
    return got


def open_chat(pg, title_start):
    """Open the chat (of one question and its reply) whose title starts so."""
    pg.locator("[data-testid=conv-item]", has_text=title_start).locator(
        "[data-testid=conv-open]").click()
    pg.wait_for_function("() => document.querySelectorAll('[data-testid=message]').length === 2")


def test_going_back_to_a_chat_reads_only_its_new_turn(cache_page):
    pg = cache_page
    # a system prompt the two chats share: it stays in the session at each switch
    set_settings(pg, temperature=0, system="You are a helpful assistant.",
                 **{"max-tokens": 8})
    first = send_and_wait(pg, FIRST_A)
    assert first["usage"]["prompt_tokens"] >= 100
    pg.click("[data-testid=new-chat]")
    pg.wait_for_selector("[data-testid=welcome]")
    other = send_and_wait(pg, FIRST_B)
    # chat B's prompt shares only the system prompt with A's: A was saved
    assert other["timings"]["cache_n"] < first["usage"]["prompt_tokens"] - 64
    assert _slots(pg.server_url)["prompt_cache"]["prompts"] == 1

    open_chat(pg, "Tell me")
    second = send_and_wait(pg, "And then?")
    t = second["timings"]
    # A's first prompt and its reply come back from the cache; only the new turn (and
    # the reply's tokens if read back differently from how they were made) is evaluated
    assert t["cache_n"] >= first["usage"]["prompt_tokens"]
    new_tok = second["usage"]["prompt_tokens"] - first["usage"]["prompt_tokens"]
    assert t["prompt_n"] <= new_tok
    assert t["cache_n"] + t["prompt_n"] == second["usage"]["prompt_tokens"]

    open_chat(pg, "Write a title")  # and B again: its state comes back in turn
    t = send_and_wait(pg, "Shorter?")["timings"]
    assert t["cache_n"] >= other["usage"]["prompt_tokens"]
