"""The chat page keeps hostile text inert: user input, imported files and model output.

The page is served by the real server (tiny fixture model). Model output that contains
HTML is produced with a route interception that answers /v1/chat/completions with a
canned SSE stream: that exercises exactly the page's streaming and rendering path.
The browser context bypasses the page's Content-Security-Policy, so these tests check
the renderer itself, not the CSP safety net behind it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "runtime" / "web"
TIMEOUT_MS = 20_000

PWN = "window.__pwned=1"
PAYLOADS = [
    f"<script>{PWN}</script>",
    f'<img src=x onerror="{PWN}">',
    f"[x](javascript:{PWN})",
    f"[y](JaVaScRiPt:{PWN})",
    f"[z](  javascript:{PWN})",
    f"[t](java\tscript:{PWN})",
    f"[d](data:text/html,<script>{PWN}</script>)",
    f"[r](/relative/{PWN})",
    f"<svg onload={PWN}>",
    f"<iframe src=javascript:{PWN}></iframe>",
    f"**<b onmouseover={PWN}>bold</b>**",
    f"`<img src=x onerror={PWN}>`",
    f"```html\n<script>{PWN}</script>\n<img src=x onerror=\"{PWN}\">\n```",
    f"~~~\n</code></pre><script>{PWN}</script>\n~~~",
    f"# <script>{PWN}</script>\n- <img src=x onerror={PWN}>\n1. [a](https://ok.example/\"onmouseover=\"{PWN})",
    # A pipe table whose cells hold the same kinds of payload.
    f"| <script>{PWN}</script> | <b onmouseover={PWN}>h</b> |\n|:---|---:|\n"
    f"| <img src=x onerror=\"{PWN}\"> | [x](javascript:{PWN}) |\n"
    f"| `<svg onload={PWN}>` \\| <iframe src=javascript:{PWN}> | [d](data:text/html,<script>{PWN}</script>) |",
]
HOSTILE = "\n\n".join(PAYLOADS)

# Everything the renderer may create inside a message. Anything else is an injection.
ALLOWED_TAGS = {"ARTICLE", "DIV", "SPAN", "P", "BR", "STRONG", "EM", "DEL", "CODE", "PRE",
                "A", "UL", "OL", "LI", "H1", "H2", "H3", "H4", "H5", "H6", "BLOCKQUOTE", "HR",
                "BUTTON", "TEXTAREA", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD"}

from tests.e2e.conftest import require_chromium  # noqa: E402

sync_api = require_chromium()


@pytest.fixture
def page(browser, server_url):
    ctx = browser.new_context(bypass_csp=True)
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    dialogs = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.goto(server_url)
    pg.wait_for_selector("body[data-ready=true]")
    yield pg
    assert not dialogs, f"a script opened a dialog: {dialogs}"
    ctx.close()


def sse_body(text: str, piece_chars: int = 7) -> str:
    """A chat-completions SSE stream that delivers `text` in small pieces, so tags are
    split across chunks the way a model's tokens would split them."""
    events = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    for i in range(0, len(text), piece_chars):
        events.append({"choices": [{"index": 0, "delta": {"content": text[i:i + piece_chars]},
                                    "finish_reason": None}]})
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def canned_reply(pg, text):
    pg.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=sse_body(text)))


def wait_idle(pg):
    pg.wait_for_selector("[data-testid=send]:visible")


INSPECT = """(allowed) => {
    const box = document.getElementById('messages');
    const all = [...box.querySelectorAll('*')];
    return {
        pwned: typeof window.__pwned,
        foreign: [...new Set(all.map(e => e.tagName).filter(t => !allowed.includes(t)))],
        handlers: all.flatMap(e => [...e.attributes].map(a => a.name)).filter(n => n.startsWith('on')),
        hrefs: [...box.querySelectorAll('a')].map(a => a.getAttribute('href')),
        links: [...box.querySelectorAll('a')].map(a => [a.target, a.rel]),
        pageScripts: document.querySelectorAll('script').length,
        pageImages: document.querySelectorAll('img, svg, iframe').length,
        polluted: String(({}).polluted),
    };
}"""


def assert_inert(pg):
    # Give any injected handler (onerror, onload, onmouseover) a chance to fire.
    pg.mouse.move(200, 200)
    for el in pg.locator("[data-testid=message-body] *").all()[:60]:
        try:
            el.hover(timeout=200, force=True)
        except Exception:  # noqa: BLE001 - off-screen or zero-size: nothing to hover
            pass
    pg.wait_for_timeout(200)
    r = pg.evaluate(INSPECT, sorted(ALLOWED_TAGS))
    assert r["pwned"] == "undefined", "injected script ran"
    assert r["foreign"] == [], f"unexpected elements in the messages: {r['foreign']}"
    assert r["handlers"] == [], f"event-handler attributes in the messages: {r['handlers']}"
    assert r["pageScripts"] == 4, "only the page's own four scripts exist"
    assert r["pageImages"] == 0
    assert r["polluted"] == "undefined", "Object.prototype was polluted"
    for href in r["hrefs"]:
        assert re.match(r"^(https?://|mailto:)", href), f"unsafe link {href!r}"
    for target, rel in r["links"]:
        assert target == "_blank" and rel == "noopener noreferrer"
    return r


def test_no_html_sinks_or_third_party_code_in_the_page_sources():
    sinks = re.compile(r"\.innerHTML|\.outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function\(")
    for js in WEB.glob("*.js"):
        text = js.read_text(encoding="utf-8")
        assert not sinks.search(text), f"{js.name} uses an HTML sink"
    html = (WEB / "index.html").read_text(encoding="utf-8")
    # Every script and stylesheet is one of our own files; nothing from a CDN.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "Content-Security-Policy" in html and "script-src 'self'" in html


def test_hostile_user_message_shows_as_text(page):
    canned_reply(page, "ok")
    page.fill("[data-testid=input]", HOSTILE)
    page.press("[data-testid=input]", "Enter")
    wait_idle(page)
    user = page.locator("[data-testid=message][data-role=user] [data-testid=message-body]")
    assert user.text_content() == HOSTILE, "the user's text is shown exactly as typed"
    assert page.text_content("[data-testid=conv-title]") == "<script>window.__pwned=1</script>"
    assert_inert(page)


def test_hostile_model_output_streams_in_as_text(page):
    canned_reply(page, HOSTILE)
    page.fill("[data-testid=input]", "say something nasty")
    page.press("[data-testid=input]", "Enter")
    wait_idle(page)
    body = page.locator("[data-testid=message][data-role=assistant] [data-testid=message-body]")
    text = body.text_content()
    # Raw HTML stays visible as characters.
    assert f"<script>{PWN}</script>" in text
    assert f'<img src=x onerror="{PWN}">' in text
    assert f"<svg onload={PWN}>" in text
    # Code fences keep HTML as code text.
    codes = body.locator("pre code").all_text_contents()
    assert f"<script>{PWN}</script>\n<img src=x onerror=\"{PWN}\">" in codes
    assert f"</code></pre><script>{PWN}</script>" in codes
    assert f"<img src=x onerror={PWN}>" in body.locator(":not(pre) > code").all_text_contents()
    # Links with unsafe or relative targets are not links; their source is shown instead.
    for p in PAYLOADS[2:8]:
        if "\t" not in p:
            assert p in text, p
    r = assert_inert(page)
    # The only link left is the https one, and its quote stayed inside the URL.
    assert len(r["hrefs"]) == 1 and r["hrefs"][0].startswith("https://ok.example/")
    # The stored reply is the exact text the model sent.
    stored = page.evaluate("JSON.parse(localStorage.getItem('chatfile.conversations'))")
    assert stored[0]["messages"][1]["content"] == HOSTILE


def test_hostile_imported_conversation_stays_inert(page):
    data = {
        "title": f'<img src=x onerror="{PWN}">',
        "__proto__": {"polluted": True},
        "id": f"<script>{PWN}</script>",
        "messages": [
            {"role": "system", "content": f"<script>{PWN}</script>"},
            {"role": f"<img src=x onerror={PWN}>", "content": "a bad role is dropped"},
            {"role": "user", "content": HOSTILE},
            {"role": "assistant", "content": HOSTILE},
            {"role": "user", "content": [{"type": "text", "text": f"<img src=x onerror=\"{PWN}\">"}]},
            {"role": "assistant", "content": {"toString": PWN}},
            "not a message",
        ],
    }
    raw = json.dumps(data).encode()
    page.set_input_files("[data-testid=import-file]", files=[
        {"name": "evil.json", "mimeType": "application/json", "buffer": raw}])
    page.wait_for_selector("[data-testid=message]")
    roles = page.eval_on_selector_all("[data-testid=message]", "els => els.map(e => e.dataset.role)")
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert page.text_content("[data-testid=conv-title]") == data["title"]
    assert page.locator("[data-testid=conv-open]").first.text_content() == data["title"]
    bodies = page.locator("[data-testid=message-body]")
    assert bodies.nth(0).text_content() == data["messages"][0]["content"]
    assert bodies.nth(1).text_content() == HOSTILE
    assert bodies.nth(3).text_content() == f"<img src=x onerror=\"{PWN}\">"
    assert bodies.nth(4).text_content() == json.dumps({"toString": PWN}, separators=(",", ":"))
    assert_inert(page)
    # Stored ids are our own, never the file's.
    stored = page.evaluate("JSON.parse(localStorage.getItem('chatfile.conversations'))")
    assert re.fullmatch(r"[a-z0-9]+", stored[0]["id"])
    # Broken files are refused with a message, not a crash.
    page.set_input_files("[data-testid=import-file]", files=[
        {"name": "bad.json", "mimeType": "application/json", "buffer": b"{not json"}])
    page.wait_for_selector("[data-testid=error]:visible")
    assert "not valid JSON" in page.text_content("[data-testid=error]")


def test_safe_markdown_is_still_formatted(page):
    md = ("## Title\n\nSome **bold**, *italic*, ~~gone~~ and `code`; snake_case_name stays.\n\n"
          "- a\n- b\n  - c\n\n3. three\n4. four\n\n"
          "[site](https://example.com/a?b=1&c=2) <mailto:me@example.com> [mail](mailto:me@example.com) "
          "https://example.org/x.\n\n```js\nlet x = 1 < 2;\n```")
    canned_reply(page, md)
    page.fill("[data-testid=input]", "format please")
    page.press("[data-testid=input]", "Enter")
    wait_idle(page)
    body = page.locator("[data-testid=message][data-role=assistant] [data-testid=message-body]")
    assert body.locator("h2").text_content() == "Title"
    assert body.locator("strong").text_content() == "bold"
    assert body.locator("em").text_content() == "italic"
    assert body.locator("del").text_content() == "gone"
    assert "snake_case_name" in body.text_content()
    assert body.locator(":scope > ul > li").count() == 2 and body.locator("ul ul > li").text_content() == "c"
    assert body.locator("ol").get_attribute("start") == "3"
    hrefs = body.locator("a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert hrefs[0] == "https://example.com/a?b=1&c=2"
    assert "mailto:me@example.com" in hrefs and "https://example.org/x" in hrefs
    assert body.locator("pre code").text_content() == "let x = 1 < 2;"
    assert body.locator("[data-testid=copy-code]").get_attribute("aria-label") == "Copy code"
    assert_inert(page)


def test_hostile_server_props_stay_text(browser, server_url):
    ctx = browser.new_context(bypass_csp=True)
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    name = f'<img src=x onerror="{PWN}">'

    def props(route):
        resp = route.fetch()
        body = resp.json()
        body.update(model_name=name, title=f"<script>{PWN}</script>")
        route.fulfill(response=resp, body=json.dumps(body))
    pg.route("**/props", props)
    pg.goto(server_url)
    pg.wait_for_selector("body[data-ready=true]")
    assert pg.text_content("[data-testid=model-name]") == name
    assert name in pg.text_content("[data-testid=welcome]")
    assert pg.title() == f"<script>{PWN}</script>"
    assert pg.evaluate("typeof window.__pwned") == "undefined"
    assert pg.evaluate("document.querySelectorAll('img, script:not([src])').length") == 0
    ctx.close()


def test_unclosed_emphasis_on_a_long_line_renders_in_linear_time(page):
    # Every unclosed `_`, `*`, `~~` or `**` used to search the rest of the line again:
    # 60 KB of them took 2.5-4.5 s per render, and a streamed reply renders every frame.
    # 180 KB now takes a fraction of a second; the bound is 10 s only to tell linear from
    # quadratic (about 40 s here), not to measure speed.
    for unit in ("_a ", "*a ", "~~a ", "**a ", "__a "):
        ms = page.evaluate(
            "(unit) => { const t = unit.repeat(60000); const t0 = performance.now();"
            " const d = document.createElement('div'); d.appendChild(ChatMarkdown.render(t));"
            " if (d.textContent.split('a').length !== 60001) throw new Error('text lost');"
            " return performance.now() - t0; }", unit)
        assert ms < 10_000, (unit, ms)


def test_hostile_table_cells_stay_inert(page):
    # Every cell is rendered like any other inline text: HTML stays characters, links are
    # made only for http(s)/mailto targets, and nothing in a cell becomes an attribute.
    cells = [f"<img src=x onerror=\"{PWN}\">", f"[js](javascript:{PWN})", f"[JS](  JaVaScRiPt:{PWN})",
             f"<script>{PWN}</script>", f"`<svg onload={PWN}>`", f"**<b onmouseover={PWN}>b</b>**",
             f"<a href=\"javascript:{PWN}\">a</a> \\| <style>*{{}}</style>", "[ok](https://ok.example/t)"]
    header = f'| <img src=x onerror={PWN}> | " onmouseover="{PWN} | <td onclick={PWN}> | :--- |'
    md = (f"Table:\n{header}\n|:---|:---:|---:|---|\n"
          f"| {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |\n"
          f"| {cells[4]} | {cells[5]} | {cells[6]} | {cells[7]} | extra <img src=x onerror={PWN}> |\n"
          f"| <img src=x onerror={PWN}>\n\nafter")
    canned_reply(page, md)
    page.fill("[data-testid=input]", "a nasty table")
    page.press("[data-testid=input]", "Enter")
    wait_idle(page)
    body = page.locator("[data-testid=message][data-role=assistant] [data-testid=message-body]")
    assert body.locator("table").count() == 1
    assert body.locator("thead th").all_text_contents() == [
        f"<img src=x onerror={PWN}>", f'" onmouseover="{PWN}', f"<td onclick={PWN}>", ":---"]
    tds = body.locator("tbody td").all_text_contents()
    assert tds == [
        f"<img src=x onerror=\"{PWN}\">", f"[js](javascript:{PWN})", f"[JS](  JaVaScRiPt:{PWN})",
        f"<script>{PWN}</script>", f"<svg onload={PWN}>", f"<b onmouseover={PWN}>b</b>",
        f"<a href=\"javascript:{PWN}\">a</a> | <style>*{{}}</style>", "ok",
        f"<img src=x onerror={PWN}>", "", "", ""]
    assert body.locator("tbody code").all_text_contents() == [f"<svg onload={PWN}>"]
    assert body.locator("tbody strong").all_text_contents() == [f"<b onmouseover={PWN}>b</b>"]
    # Cells carry no attributes but an alignment style and our dir="auto".
    attrs = body.locator("th, td").evaluate_all(
        "cs => [...new Set(cs.flatMap(c => [...c.attributes].map(a => a.name + '=' + "
        "(a.name === 'dir' ? a.value : ''))))]")
    assert set(attrs) <= {"style=", "dir=auto"}, attrs
    r = assert_inert(page)
    assert r["hrefs"] == ["https://ok.example/t"]
    assert body.locator("p").last.text_content() == "after"


def test_a_table_row_of_unclosed_backticks_renders_in_linear_time(page):
    # Splitting a row into cells looks for code spans (a pipe inside one does not split):
    # each unclosed backtick must not search the rest of the row again. 240 KB rows.
    for unit in ("` | ", "`` | `"):
        ms, cells = page.evaluate(
            "(unit) => { const t = '| a | b |\\n|---|---|\\n' + unit.repeat(60000);"
            " const t0 = performance.now(); const d = document.createElement('div');"
            " d.appendChild(ChatMarkdown.render(t));"
            " return [performance.now() - t0, d.querySelectorAll('td').length]; }", unit)
        assert cells == 2 and ms < 10_000, (unit, ms, cells)
