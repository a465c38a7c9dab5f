"""Clients that are slow or idle: they must not starve the chat page or the API.

The server used to give each read of a request its own 120 s socket timeout, so a client
that sent a byte every 100 s held a thread forever, and with the process's file limit
reached by idle connections the server spun at 100% CPU and answered nobody. Now the
request line and headers must arrive within a deadline, the body at a minimum rate, a
reply's writes must be taken in time, and the open connections are capped (the oldest
idle one makes room, else a 503).

Most tests run the server in this process, so that its deadlines can be shortened from
30 s to 1 s (runtime.connections.Handler's class attributes); one starts it as a subprocess
under a low file limit. Raw sockets to 127.0.0.1 only; every wait has a generous bound,
and nothing asserts how long anything took.
"""
from __future__ import annotations

import http.client
import json
import os
import select
import socket
import threading
import time

import pytest

from tests.e2e.conftest import (TINY, http_request, post_json, read_to_close, sse_events, tiny_4k,
                                wait_for)

BOUND_S = 20   # "soon": every deadline in play here is 1 s


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The tiny model (with a 4096-token context, for long replies) served in this process
    with 1 s deadlines for the request head and body. The write timeout keeps its default
    unless a test shortens it."""
    from runtime import connections, server
    mp = pytest.MonkeyPatch()
    # raising=False: the same test runs against a server without these deadlines (and
    # then fails on what it sees, not on a missing attribute).
    mp.setattr(connections.Handler, "head_timeout_s", 1, raising=False)
    mp.setattr(connections.Handler, "body_timeout_s", 1, raising=False)
    model = tiny_4k(tmp_path_factory.mktemp("ctx"))
    srv = server.Server(model, port=0, log=lambda msg: None)
    srv.start_loading()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        wait_for(lambda: srv.state.engine is not None or srv.state.error, 60, "no model")
        assert srv.state.error is None, srv.state.error
        srv.test_url = f"http://127.0.0.1:{srv.port}"
        yield srv
    finally:
        srv.shutdown()
        mp.undo()


def _connect(url: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(BOUND_S)
    sock.connect((host, int(port)))
    return sock


def _head(path: str, body_bytes: int, method: str = "POST") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {body_bytes}\r\n\r\n").encode()


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    """(status, body) of what the server sent before closing; status 0: nothing at all."""
    data = read_to_close(sock)
    if not data:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _trickle(sock: socket.socket, data: bytes, gap_s: float) -> bool:
    """Send data a byte every gap_s until the server answers or closes (True), or BOUND_S
    passes (False)."""
    end = time.monotonic() + BOUND_S
    for i in range(len(data)):
        if time.monotonic() > end:
            return False
        if select.select([sock], [], [], gap_s)[0]:
            return True
        try:
            sock.send(data[i:i + 1])
        except OSError:  # closed under us: the answer (if any) is waiting to be read
            return True
    return bool(select.select([sock], [], [], max(0.0, end - time.monotonic()))[0])


def _still_serves(url: str) -> None:
    """What a user of the page needs: the page itself and a chat reply."""
    status, _, page = http_request("GET", url + "/", timeout=BOUND_S)
    assert status == 200 and b"<html" in page.lower(), (status, page[:200])
    status, reply = post_json(url + "/v1/chat/completions",
                              {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                              timeout=BOUND_S)
    assert status == 200, reply
    assert reply["choices"][0]["message"]["content"] is not None, reply


def _slow_engine(monkeypatch, srv, per_eval_s: float) -> None:
    """Make each forward pass of the server's engine take per_eval_s longer, so that a
    reply lasts well beyond the 1 s deadlines (the tiny model is otherwise very fast)."""
    session = srv.state.engine.session
    fast = session.eval

    def slow(*a, **kw):
        time.sleep(per_eval_s)
        return fast(*a, **kw)
    monkeypatch.setattr(session, "eval", slow)


def _worker_idle(srv) -> bool:
    eng = srv.state.engine
    return not eng.busy.is_set() and eng.queued() == 0


# ---- (a), (b): idle connections and a request head that trickles in ---------------------

def test_an_idle_connection_is_closed_without_an_answer(quick):
    """A connection that never sends anything (a browser's spare preconnection, a port
    scanner) held a thread until its 120 s socket timeout, and was renewed by any client
    that sent a byte now and then. It is now closed after the head deadline, silently:
    there is no request to answer."""
    sock = _connect(quick.test_url)
    try:
        assert select.select([sock], [], [], BOUND_S)[0], "the idle connection stays open"
        assert _answer(sock) == (0, b"")
    finally:
        sock.close()


def test_a_request_head_sent_byte_by_byte_gets_408(quick):
    """Slowloris: a request head sent a byte every 0.2 s never ended, since each byte reset
    the 120 s timeout; enough of them would take every thread. The whole head must now
    arrive within the deadline (30 s; 1 s here), or the client gets a 408 and the
    connection is closed. Meanwhile the page and the API answer others."""
    sock = _connect(quick.test_url)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        _still_serves(quick.test_url)
        assert _trickle(sock, b"X-Slow: " + b"a" * 200 + b"\r\n", gap_s=0.2), \
            f"the trickling head was not cut off within {BOUND_S} s"
        status, body = _answer(sock)
    finally:
        sock.close()
    assert status == 408, body
    err = json.loads(body)["error"]
    assert err["code"] == 408 and "line and headers must come within" in err["message"], err
    _still_serves(quick.test_url)


# ---- (c): a body that trickles in, and one that is slow but steady --------------------------

def test_a_body_that_trickles_gets_408(quick):
    """A POST that declares 100 kB and sends a byte every 0.2 s held its thread for as
    long as it kept sending (a 1 MB body would take two days). After the headers the body
    gets a grace period plus 1 s per 500 bytes received; below that rate the client gets
    a 408 and the connection is closed."""
    sock = _connect(quick.test_url)
    try:
        sock.sendall(_head("/v1/chat/completions", 100_000) + b'{"messages": ')
        _still_serves(quick.test_url)
        assert _trickle(sock, b" " * 1000, gap_s=0.2), \
            f"the trickling body was not cut off within {BOUND_S} s"
        status, body = _answer(sock)
    finally:
        sock.close()
    assert status == 408, body
    err = json.loads(body)["error"]
    assert err["code"] == 408 and "request body came too slowly" in err["message"], err
    _still_serves(quick.test_url)


def test_a_slow_but_steady_body_is_read_whole(quick):
    """A body that takes longer than the grace period but keeps coming faster than the
    minimum rate (a large request over a slow link) is not cut off."""
    # 8 kB, most of it JSON whitespace (the prompt stays short).
    body = (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})[:-1]
            + " " * 8000 + "}").encode()
    sock = _connect(quick.test_url)
    try:
        sock.sendall(_head("/v1/chat/completions", len(body)))
        for i in range(0, len(body), 1000):   # 1000 bytes each 0.3 s: well above 500 B/s
            time.sleep(0.3)
            sock.sendall(body[i:i + 1000])
        status, data = _answer(sock)
    finally:
        sock.close()
    assert status == 200, data
    assert json.loads(data)["usage"]["completion_tokens"] >= 1


# ---- (d): a reply that outlasts every deadline, and one nobody reads ------------------------

def test_a_long_reply_outlasts_the_deadlines(quick, monkeypatch):
    """The deadlines are on what the client sends and reads, never on generation time: a
    reply streamed (and one waited for whole) over several seconds, with every deadline
    at 1 s, arrives complete."""
    from runtime import connections
    monkeypatch.setattr(connections.Handler, "timeout", 1)
    wait_for(lambda: _worker_idle(quick), BOUND_S, "the worker stays busy")
    _slow_engine(monkeypatch, quick, 0.02)   # 120 tokens: 2.4 s at least
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 120,
            "ignore_eos": True}
    status, _, data = http_request("POST", quick.test_url + "/v1/chat/completions",
                                   {**body, "stream": True}, timeout=60)
    assert status == 200
    events = sse_events(data)
    assert events[-1] == "[DONE]", data[-300:]
    assert events[-2]["choices"][0]["finish_reason"] == "length", events[-2]
    status, reply = post_json(quick.test_url + "/v1/chat/completions", body, timeout=60)
    assert status == 200, reply
    assert reply["usage"]["completion_tokens"] == 120, reply


def test_a_stream_nobody_reads_is_abandoned_and_its_generation_cancelled(quick, monkeypatch):
    """A client that starts a stream and stops reading (a frozen tab, a suspended curl)
    never holds the inference worker: tokens go into the request's own queue. Once the
    socket's buffers are full, a write that the client does not take within the write
    timeout (60 s; 1 s here) abandons the stream and cancels the generation, and the
    next request is served."""
    from runtime import connections
    monkeypatch.setattr(connections.Handler, "timeout", 1)
    wait_for(lambda: _worker_idle(quick), BOUND_S, "the worker stays busy")
    _slow_engine(monkeypatch, quick, 0.01)   # 3000 tokens: 30 s at least
    sock = _connect(quick.test_url, rcvbuf=4096)
    try:
        # n_probs 100: about 6 kB per token, so the buffers fill after a few hundred.
        body = json.dumps({"prompt": "hi", "n_predict": 3000, "ignore_eos": True,
                           "n_probs": 100, "stream": True}).encode()
        sock.sendall(_head("/completion", len(body)) + body)
        eng = quick.state.engine
        wait_for(lambda: eng.busy.is_set(), BOUND_S, "the reply never started")
        wait_for(lambda: _worker_idle(quick), 60, "the unread stream's generation went on")
        made = len(eng.session.tokens)
        assert made < 3000, f"the whole reply was generated ({made} tokens) for nobody"
        _still_serves(quick.test_url)
    finally:
        sock.close()


# ---- the cap on connections --------------------------------------------------------------

def test_at_the_cap_the_oldest_idle_connection_makes_room(quick, monkeypatch):
    """With the open connections at the cap, a new one is still served: the oldest
    connection that has not sent its whole request head is closed to make room, so idle
    connections cannot keep the page out."""
    from runtime import connections
    monkeypatch.setattr(connections.Handler, "head_timeout_s", 30, raising=False)
    monkeypatch.setattr(quick.httpd, "max_connections", 4, raising=False)
    wait_for(lambda: not getattr(quick.httpd, "open_conns", {}), BOUND_S,
              "the connections of earlier tests are still open")
    idle = []
    try:
        for _ in range(4):   # accepted in this order, before the ones below
            idle.append(_connect(quick.test_url))
            idle[-1].sendall(b"GET /health HTTP/1.1\r\n")   # and then nothing
        _still_serves(quick.test_url)
        assert select.select([idle[0]], [], [], BOUND_S)[0], "the oldest idle one stays open"
        assert _answer(idle[0]) == (0, b"")
        assert not select.select(idle[2:], [], [], 0)[0], "younger idle ones were closed too"
    finally:
        for s in idle:
            s.close()


def test_beyond_the_cap_with_every_connection_busy_a_503(quick, monkeypatch):
    """When every open connection has sent its request (here: bodies that are still
    coming), a connection beyond the cap gets a clear 503 with Retry-After, and new ones
    are served again once some of them are gone."""
    from runtime import connections
    monkeypatch.setattr(connections.Handler, "body_timeout_s", 30, raising=False)
    monkeypatch.setattr(quick.httpd, "max_connections", 3, raising=False)
    conns = lambda: getattr(quick.httpd, "open_conns", {}).values()  # noqa: E731
    # The earlier tests' connections count until their threads end, and at the cap they
    # would be taken for this test's (once on a machine at load 10).
    wait_for(lambda: not conns(), BOUND_S, "the earlier tests' connections still count")
    busy = []
    try:
        for _ in range(3):
            busy.append(_connect(quick.test_url))
            busy[-1].sendall(_head("/tokenize", 1000) + b'{"content": ')
        wait_for(lambda: len(conns()) == 3 and not any(c.reading_head for c in conns()),
                  BOUND_S, "the three requests never reached their bodies")
        status, headers, data = http_request("GET", quick.test_url + "/", timeout=BOUND_S)
        assert status == 503, (status, data[:200])
        err = json.loads(data)["error"]
        assert "too many open connections" in err["message"], err
        assert headers.get("retry-after") == "1", headers
        # Two go: a connection counts until its thread has ended, which may be just
        # after its client has read the answer (the next request may come first).
        busy.pop().close()
        busy.pop().close()
        wait_for(lambda: len(conns()) < 2, BOUND_S, "the closed connections still count")
        _still_serves(quick.test_url)
    finally:
        for s in busy:
            s.close()


def test_idle_connections_up_to_the_file_limit_do_not_starve_the_server(server_factory):
    """At the process's limit of open files, accept() fails; socketserver ignored that and
    spun on the listening socket at 100% CPU, answering nobody until an idle connection
    timed out (120 s). With a soft limit of 1024, the default of most Linux systems,
    about a thousand idle connections (a browser's preconnections, a port scan, a
    slowloris) took the page away. The cap on connections stays below the file limit,
    and idle connections make room for new ones."""
    resource = pytest.importorskip("resource", reason="the file limit is a POSIX resource")
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        pytest.skip("no /proc here to see which files are open")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Low for the server (it inherits it), yet above every descriptor this process holds.
    low = max(256, max(int(fd) for fd in os.listdir(fd_dir)) + 64)
    if hard != resource.RLIM_INFINITY and hard < low + 400:
        pytest.skip(f"the hard limit on open files is {hard}: too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        h = server_factory(TINY)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    socks = []
    try:
        for _ in range(low + 50):   # more than the server may open
            socks.append(socket.create_connection(("127.0.0.1", h.port), timeout=BOUND_S))
        time.sleep(0.5)
        conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=BOUND_S)
        try:
            conn.request("GET", "/health")
            assert conn.getresponse().status == 200
        finally:
            conn.close()
        _still_serves(h.url)
    finally:
        for s in socks:
            s.close()
    out = h.output()
    assert "Traceback" not in out and "Exception" not in out, out


# ---- stopping while a reply is generating -------------------------------------------------

def test_stopping_the_server_cancels_the_replies_under_way(tmp_path, monkeypatch):
    """A server stopped (Ctrl+C, `kill`, the page's Quit) while replies were generating
    exited with its worker inside a matrix product, and about one stop in 20 hung for
    good in OpenBLAS's exit handler (test_server_stress's stopping test saw it). Stopping
    now cancels every reply, queued ones too, and waits for the worker to go idle."""
    from runtime import server
    model = tiny_4k(tmp_path)
    srv = server.Server(model, port=0, log=lambda msg: None)
    srv.start_loading()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    socks = []
    try:
        wait_for(lambda: srv.state.engine is not None or srv.state.error, 60, "no model")
        assert srv.state.error is None, srv.state.error
        eng = srv.state.engine
        _slow_engine(monkeypatch, srv, 0.01)   # 3000 tokens: 30 s at least
        body = json.dumps({"prompt": "hi", "n_predict": 3000, "ignore_eos": True,
                           "stream": True}).encode()
        for _ in range(2):   # one generating, one queued
            socks.append(_connect(f"http://127.0.0.1:{srv.port}"))
            socks[-1].sendall(_head("/completion", len(body)) + body)
        wait_for(lambda: eng.busy.is_set() and eng.queued() == 1, BOUND_S,
                  "the replies never started")
    finally:
        srv.shutdown()
        for s in socks:
            s.close()
    assert not eng.busy.is_set(), "the worker still generates after the server stopped"


def test_a_request_that_came_in_time_is_read_after_the_deadline():
    """A request thread scheduled late (the inference worker holding the GIL) found its
    deadline passed and answered 408, though the whole request was already waiting in
    the socket. What has arrived is read; only a wait for more times out."""
    import io
    import socket

    from runtime import connections
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        reader = io.BufferedReader(connections._RequestReader(a, connections._Conn(), head_s=0.0))
        assert reader.readline() == b"GET /health HTTP/1.1\r\n"
        assert reader.readline() == b"Host: localhost\r\n"
        assert reader.readline() == b"\r\n"
        with pytest.raises(TimeoutError, match="did not arrive in time"):
            reader.readline()  # nothing more came: no wait
