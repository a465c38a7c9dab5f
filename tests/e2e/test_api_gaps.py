"""The API as a browser app or a script meets it, where it fell short.

- The replies the server writes on its own, outside the app (a request head too slow:
  408; one connection too many: 503; a request line http.server cannot read), had no
  CORS headers under --cors while every other reply had them: a browser app on another
  origin saw an opaque network error instead of the JSON error (and could not tell
  "try again shortly" from "server down"). They now carry what the app's replies carry,
  and, without --cors, no CORS headers, as before.
- A --cors preflight allowed three request headers only; the OpenAI JavaScript client
  sends x-stainless-* headers with every request, so the browser never sent one.
- http.server's own errors went out without a status line (read as HTTP/0.9) and with
  the message pasted into JSON unescaped.
- /v1/completions' top_logprobs (a dict keyed by token text) let a less likely token
  overwrite a likelier one that reads the same, e.g. two byte tokens that both read "\ufffd":
  a greedy token's own logprob was then missing from its top list.

Servers run in this process where a deadline or the connection cap must be shortened
(runtime.connections.Handler's class attributes, the server's max_connections), else the
session's tiny_server. Raw sockets to 127.0.0.1 only; nothing asserts how long anything
took.
"""
from __future__ import annotations

import contextlib
import json
import math
import select
import socket
import threading

import pytest

from tests.e2e.conftest import TINY, http_request, post_json, read_to_close, wait_for

BOUND_S = 20   # "soon": the deadlines in play here are 1 s
ORIGIN = "http://app.example"


@pytest.fixture(scope="module")
def servers():
    """serve(cors): the tiny model served in this process, with or without --cors, with a
    1 s deadline for the request head (30 s for the body); one of each per module."""
    from runtime import connections
    mp = pytest.MonkeyPatch()
    mp.setattr(connections.Handler, "head_timeout_s", 1)
    mp.setattr(connections.Handler, "body_timeout_s", 30)
    try:
        with inproc_servers() as serve:
            yield serve
    finally:
        mp.undo()


@contextlib.contextmanager
def inproc_servers(load: bool = True):
    """serve(cors): inproc_server(cors, load), started once for each cors; all shut down
    at the end."""
    started = {}

    def serve(cors: bool):
        if cors not in started:
            started[cors] = inproc_server(cors, load)
        return started[cors]
    try:
        yield serve
    finally:
        for srv in started.values():
            srv.shutdown()


def inproc_server(cors: bool, load: bool = True):
    """The tiny model served in this process (with or without --cors), its model loaded,
    or never loading (every API request then gets the 503 "still loading"). Shut it down
    with .shutdown()."""
    from runtime import server
    srv = server.Server(TINY, port=0, cors=cors, log=lambda msg: None)
    if load:
        srv.start_loading()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    if load:
        wait_for(lambda: srv.state.engine is not None or srv.state.error, 60, "no model")
        assert srv.state.error is None, srv.state.error
    srv.test_url = f"http://127.0.0.1:{srv.port}"
    srv.cors_on = cors
    return srv


@pytest.fixture(params=[False, True], ids=["no-cors", "cors"])
def inproc(request, servers):
    return servers(request.param)


@pytest.fixture
def cors_srv(servers):
    return servers(True)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=BOUND_S)


def _response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of what the server sent before
    closing; status 0: no status line."""
    data = read_to_close(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        return 0, {}, data
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _cors_like_the_app(srv, headers: dict) -> None:
    """CORS headers exactly when the server was started with --cors, as on its other
    replies; never without it."""
    assert ("access-control-allow-origin" in headers) == srv.cors_on, headers
    if srv.cors_on:
        assert headers["access-control-allow-origin"] == "*", headers


def test_an_ordinary_reply_to_another_origin_has_cors_headers_only_with_cors(inproc):
    """The rule the raw replies below must follow (and already followed by the app)."""
    status, headers, _ = http_request("GET", inproc.test_url + "/health",
                                      headers={"Origin": ORIGIN})
    assert status == (200 if inproc.cors_on else 403)
    _cors_like_the_app(inproc, headers)


def test_a_request_head_too_slow_gets_a_408_a_browser_can_read(inproc):
    """The 408 for a request head that did not arrive in time is written by the
    connection's handler, not the app: under --cors it had no Access-Control-Allow-Origin,
    so a page of another origin saw a network error."""
    sock = _connect(inproc.port)
    try:
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {ORIGIN}\r\n".encode())
        assert select.select([sock], [], [], BOUND_S)[0], "the slow head was never cut off"
        status, headers, body = _response(sock)
    finally:
        sock.close()
    assert status == 408, body
    assert json.loads(body)["error"]["code"] == 408
    _cors_like_the_app(inproc, headers)


def one_connection_too_many(srv, monkeypatch):
    """GET /health (with a foreign Origin) from a connection beyond a cap of two, both
    taken by requests whose bodies are still coming -> (status, headers, body)."""
    monkeypatch.setattr(srv.httpd, "max_connections", 2)
    wait_for(lambda: not srv.httpd.open_conns, BOUND_S,
             "the connections of earlier tests are still open")
    busy = []
    try:
        for _ in range(2):
            busy.append(_connect(srv.port))
            busy[-1].sendall(b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        conns = lambda: list(srv.httpd.open_conns.values())  # noqa: E731
        wait_for(lambda: len(conns()) == 2 and not any(c.reading_head for c in conns()),
                 BOUND_S, "the two requests never reached their bodies")
        return http_request("GET", srv.test_url + "/health", headers={"Origin": ORIGIN},
                            timeout=BOUND_S)
    finally:
        for s in busy:
            s.close()


def test_one_connection_too_many_gets_a_503_a_browser_can_read(inproc, monkeypatch):
    """The 503 for a connection beyond the cap is written by the accepting thread: under
    --cors it had no Access-Control-Allow-Origin, so a page of another origin could not
    see "try again shortly"."""
    status, headers, data = one_connection_too_many(inproc, monkeypatch)
    assert status == 503, data
    assert "too many open connections" in json.loads(data)["error"]["message"]
    assert headers.get("retry-after") == "1", headers
    _cors_like_the_app(inproc, headers)


@pytest.mark.parametrize("line", [b'GET / HTTP/1.1"x', b"GET / HTTP/1.1'\"\\", b"GARBAGE",
                                  b"PRI * HTTP/2.0"])
def test_a_request_line_http_server_cannot_read_gets_a_whole_json_error(inproc, line):
    """http.server's own errors: the reply had no status line (a client read it as
    HTTP/0.9, or not at all: curl refuses HTTP/0.9) and its JSON broke on a quote in the
    echoed line. An HTTP/2 request line gets its 505 the same way."""
    sock = _connect(inproc.port)
    try:
        sock.sendall(line + b"\r\nHost: 127.0.0.1\r\nOrigin: " + ORIGIN.encode() + b"\r\n\r\n")
        status, headers, body = _response(sock)
    finally:
        sock.close()
    assert status in (400, 505), body
    err = json.loads(body)["error"]
    assert err["code"] == status and err["message"], err
    assert headers["content-type"] == "application/json"
    _cors_like_the_app(inproc, headers)


PREFLIGHT_HEADERS = ("authorization", "content-type", "x-stainless-os", "x-stainless-lang",
                     "x-stainless-package-version", "x-stainless-retry-count",
                     "x-stainless-timeout", "openai-organization")


def test_a_preflight_allows_the_headers_the_openai_javascript_client_sends(inproc):
    """A browser asks before a request with headers of its own. The OpenAI JavaScript
    client sends x-stainless-* headers with every request (as Ollama found, #4388); we
    allowed Authorization, Content-Type and X-Api-Key only, so the browser never sent
    the request. Without --cors there is no preflight to pass: a 405, no CORS headers."""
    status, headers, _ = http_request("OPTIONS", inproc.test_url + "/v1/chat/completions",
                                      headers={"Origin": ORIGIN,
                                               "Access-Control-Request-Method": "POST",
                                               "Access-Control-Request-Headers":
                                                   ",".join(PREFLIGHT_HEADERS)})
    _cors_like_the_app(inproc, headers)
    if not inproc.cors_on:
        assert status == 403   # another origin, without --cors
        return
    assert status == 204
    allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
    assert set(PREFLIGHT_HEADERS) <= allowed, allowed
    assert "POST" in headers["access-control-allow-methods"]


@pytest.mark.parametrize("asked", ["x-a, (bad)", "x-a;b", "é", "x" * 5000])
def test_a_preflight_that_asks_for_malformed_headers_gets_the_usual_list(cors_srv, asked):
    status, headers, _ = http_request("OPTIONS", cors_srv.test_url + "/v1/chat/completions",
                                      headers={"Origin": ORIGIN,
                                               "Access-Control-Request-Method": "POST",
                                               "Access-Control-Request-Headers": asked})
    assert status == 204
    allowed = [h.strip().lower() for h in headers["access-control-allow-headers"].split(",")]
    assert allowed == ["authorization", "content-type", "x-api-key"], allowed


def test_a_browser_app_on_another_origin_reads_the_503_and_calls_like_the_openai_client(
        browser, tiny_server, cors_srv, monkeypatch):
    """In Chromium: a page of another origin (tiny_server's address) calls the --cors
    server with the OpenAI JavaScript client's headers, and then reads the 503 of one
    connection too many. Before, the first failed its preflight and the second was an
    opaque "Failed to fetch"."""
    ctx = browser.new_context()
    try:
        page = ctx.new_page()
        page.goto(tiny_server.url + "/health")   # a document of another origin, no CSP
        call = """async ([url, headers, body]) => {
            try {
                const r = await fetch(url, body ? {method: "POST", headers, body} : {});
                return [r.status, await r.text()];
            } catch (e) { return [0, String(e)]; }
        }"""
        headers = {"Authorization": "Bearer x", "Content-Type": "application/json",
                   "X-Stainless-OS": "Linux", "X-Stainless-Lang": "js",
                   "X-Stainless-Retry-Count": "0", "X-Stainless-Timeout": "600"}
        body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        status, text = page.evaluate(call, [cors_srv.test_url + "/v1/chat/completions",
                                            headers, body])
        assert status == 200, text
        assert json.loads(text)["object"] == "chat.completion"

        monkeypatch.setattr(cors_srv.httpd, "max_connections", 2)
        wait_for(lambda: not cors_srv.httpd.open_conns, BOUND_S,
                 "the browser's connections are still open")
        busy = []
        try:
            for _ in range(2):
                busy.append(_connect(cors_srv.port))
                busy[-1].sendall(b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            conns = lambda: list(cors_srv.httpd.open_conns.values())  # noqa: E731
            wait_for(lambda: len(conns()) == 2 and not any(c.reading_head for c in conns()),
                     BOUND_S, "the two requests never reached their bodies")
            status, text = page.evaluate(call, [cors_srv.test_url + "/health", {}, None])
        finally:
            for s in busy:
                s.close()
        assert status == 503, text
        assert "too many open connections" in json.loads(text)["error"]["message"]
    finally:
        ctx.close()


# ---- /v1/completions' top_logprobs ------------------------------------------------------

def test_completions_top_logprobs_keep_the_likeliest_of_tokens_that_read_the_same(tiny_server):
    """OpenAI's legacy top_logprobs is a dict keyed by the token's text. Byte tokens of an
    unfinished UTF-8 character all read "\ufffd", and the later (less likely) one
    replaced the earlier: a greedy token's top list gave it a lower logprob than its
    own. The reference is /completion's n_probs, a list of ids, from the same server."""
    prompt = "hello world, this is"
    body = {"prompt": prompt, "temperature": 0, "cache_prompt": False}
    status, r = post_json(tiny_server.url + "/v1/completions",
                          {**body, "max_tokens": 12, "logprobs": 5})
    assert status == 200, r
    lp = r["choices"][0]["logprobs"]
    status, ref = post_json(tiny_server.url + "/completion",
                            {**body, "n_predict": 12, "n_probs": 5})
    assert status == 200, ref
    ref_probs = ref["completion_probabilities"]
    assert len(ref_probs) == len(lp["tokens"]) > 0
    collided = 0
    for i, (tok, tok_lp, tops) in enumerate(zip(lp["tokens"], lp["token_logprobs"],
                                                 lp["top_logprobs"])):
        best: dict = {}
        for alt in ref_probs[i]["top_logprobs"]:
            best.setdefault(alt["token"], alt["logprob"])   # listed best first
        collided += len(best) < len(ref_probs[i]["top_logprobs"])
        assert tops.keys() == best.keys(), (i, tops, best)
        for text, value in tops.items():
            assert math.isclose(value, best[text], rel_tol=1e-9, abs_tol=1e-12), (i, text, tops, best)
        assert math.isclose(tops[tok], tok_lp, rel_tol=1e-9), (i, tok, tok_lp, tops)  # greedy
    assert collided, "no two of the listed tokens read the same: the case is not tested"


# ---- seed -1 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_seed_minus_one_is_random_on_openais_routes_too(tiny_server, path):
    """llama-server reads seed -1 as "a random seed" on every route, its OpenAI ones too,
    and apps that always send a seed send -1 for none (vLLM took it the same way). Here
    the OpenAI routes read it as a seed like any other, so every regenerated reply came
    out the same. Samplers wide open and a hot temperature: four equal replies of 12
    tokens would be chance beyond any test run's lifetime. A real seed still repeats."""
    body = {"temperature": 1.5, "top_k": 0, "top_p": 1, "min_p": 0, "max_tokens": 12,
            "cache_prompt": False}
    body.update({"messages": [{"role": "user", "content": "Say something."}]}
                if "chat" in path else {"prompt": "Say something."})

    def text(seed):
        status, r = post_json(tiny_server.url + path, {**body, "seed": seed})
        assert status == 200, r
        choice = r["choices"][0]
        return choice["message"]["content"] if "chat" in path else choice["text"]
    assert len({text(-1) for _ in range(4)}) > 1, "seed -1 gave the same reply every time"
    assert len({text(12345) for _ in range(3)}) == 1
