"""The chat page (runtime/web/), eighteenth session: the context count and a thinking
model. The count (how much of the model's context the chat fills before the next reply)
counted the last reply's reasoning, which the next question does not send: the server's
usage after the reply (its completion tokens are mostly thought), and the measure after a
reload (the reasoning went to /apply-template as the reply's reasoning_content, which
Qwen3's template shows after the last question). A long thought made the chat look far
fuller than it was, "full" even when the next question had room.

The server is test_page_reasoning's: test_api_reasoning's parrot under Qwen3's template.
"""
from __future__ import annotations

from tests.e2e.conftest import post_json, require_chromium
from tests.e2e.test_page import open_page, send, wait_idle
from tests.e2e.test_page_reasoning import page, thinking  # noqa: F401 - fixtures

require_chromium()

THOUGHT = "Let me think this through with care. " * 10  # (a reply of 512 tokens at most)
SCRIPT = "<think>\n" + THOUGHT + "\n</think>\n\nFine."


def prompt_tok(url, messages):
    """Tokens of `messages` as the server's template renders them (the page's measure)."""
    status, r = post_json(url + "/apply-template", {"messages": messages})
    assert status == 200, r
    status, r = post_json(url + "/tokenize", {"content": r["prompt"], "add_special": True})
    assert status == 200, r
    return len(r["tokens"])


def count_settles_at(pg, tok):
    """Waits for the context count to read `tok` tokens; fails with what it reads."""
    shown = f"context {tok} / "
    try:
        pg.wait_for_function("(s) => document.getElementById('ctx').textContent.startsWith(s)",
                             arg=shown, timeout=10_000)
    except Exception:
        assert pg.text_content("[data-testid=ctx]").startswith(shown), \
            (pg.text_content("[data-testid=ctx]"), tok)


def test_the_context_count_leaves_out_the_reasoning_the_next_question_does_not_send(page, thinking):
    url = thinking[0]
    send(page, SCRIPT)
    wait_idle(page)
    sent = [{"role": "user", "content": SCRIPT}, {"role": "assistant", "content": "Fine."}]
    tok = prompt_tok(url, sent)
    # After the reply: the server's usage counted the thought.
    count_settles_at(page, tok)

    # After a reload, measured: the chat goes to /apply-template without its reply's
    # reasoning. (This server renders a last assistant message as the start of a reply,
    # without it; a template that shows it counted it.)
    asked = []

    def note(route):
        asked.append(route.request.post_data_json["messages"])
        route.continue_()
    page.route("**/apply-template", note)
    open_page(page, url + "/")
    count_settles_at(page, tok)
    assert asked and all("reasoning_content" not in m for msgs in asked for m in msgs), asked

    # The next question is indeed sent without it.
    send(page, "Thanks")
    wait_idle(page)
    assert thinking[1].seen[-1][:2] == sent
