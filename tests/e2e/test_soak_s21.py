"""A server left up for days with many clients: hang-ups leave nothing stuck or held.

A 13-minute soak (24,612 requests of every route, a fifth of them clients that hung up
mid-stream, mid-prefill, mid-body or mid-head) found the server's threads and descriptors
back at their baseline whenever it was idle, and its RSS flat. It also found one stuck
state: a client that sent bytes after its request (a pipelined request, a stray CRLF
after the body) and then hung up was never noticed, since the peek that looks for the
end of the connection found those bytes instead, and a non-streamed reply went on to its
last token with the worker held (runtime/connections.py, client_connected).

The tiny model served in this process (tests/e2e/test_server_slow_clients.py's `quick`),
with each forward pass slowed so that a reply of 3000 tokens lasts far longer than any
wait here: a reply that ends early was cancelled. Nothing asserts how long anything took.
"""
from __future__ import annotations

import json
import os
import select
import socket
import threading

import pytest

from tests.e2e.conftest import read_to_close, wait_for
from tests.e2e.test_server_slow_clients import (_connect, _head, _slow_engine, _still_serves,
                                                _worker_idle, quick)  # noqa: F401 - a fixture

LONG_TOK = 3000        # a reply that, slowed, outlasts every wait below
SETTLE_S = 60          # generous: the machine is shared
STREAMED = {  # each streamed route: its body asking for LONG_TOK tokens
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": LONG_TOK, "stream": True},
    "/v1/completions": {"prompt": "hi", "max_tokens": LONG_TOK, "stream": True},
    "/completion": {"prompt": "hi", "n_predict": LONG_TOK, "stream": True},
    "/infill": {"input_prefix": "def f(", "input_suffix": "):", "n_predict": LONG_TOK,
                "stream": True},
    "/v1/messages": {"model": "m", "max_tokens": LONG_TOK, "stream": True,
                     "messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": {"input": "hi", "max_output_tokens": LONG_TOK, "stream": True},
}


@pytest.fixture
def slow(quick, monkeypatch):  # noqa: F811 - the imported fixture
    """The in-process server, idle, slowed, its end token banned, with three of the tiny
    vocabulary's tokens taken as fill-in-the-middle tokens (it has none) for /infill."""
    wait_for(lambda: _worker_idle(quick), SETTLE_S, "the worker stays busy")
    for name, tok in (("fim_pre", 509), ("fim_suf", 510), ("fim_mid", 511)):
        monkeypatch.setitem(quick.state.model.tokenizer._ids, name, tok)
    _slow_engine(monkeypatch, quick, 0.01)
    # every reply runs to its max_tokens unless cancelled (ignore_eos, for every route)
    monkeypatch.setattr(quick.state.engine, "eog_ids", frozenset())
    return quick


def _send(srv, path: str, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    sock = _connect(srv.test_url)
    sock.sendall(_head(path, len(data)) + data)
    return sock


def _hang_up(sock: socket.socket, reset: bool) -> None:
    if reset:  # a reset (RST) rather than an orderly close (FIN)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    sock.close()


def _cancelled_soon(srv, what: str) -> None:
    """The worker is free again, and the reply was cut short, not generated for nobody."""
    wait_for(lambda: _worker_idle(srv), SETTLE_S, f"{what}: the worker stayed busy")
    made_tok = len(srv.state.engine.session.tokens)
    assert made_tok < LONG_TOK, f"{what}: the whole reply ({made_tok} tokens) was made for nobody"


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("extra", [b"\r\n", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"],
                         ids=["stray-crlf", "pipelined-request"])
@pytest.mark.parametrize("path", ["/completion", "/v1/chat/completions"])
def test_a_client_that_said_more_then_hung_up_is_noticed(slow, path, extra):
    """A non-streamed reply whose client sent more bytes after its request, then hung up,
    is cancelled: the peek for the connection's end found those bytes instead."""
    body = {k: v for k, v in STREAMED[path].items() if k != "stream"}
    sock = _send(slow, path, body)
    eng = slow.state.engine
    wait_for(lambda: eng.busy.is_set(), SETTLE_S, "the reply never started")
    sock.sendall(extra)  # after the body was read: it stays unread in the socket
    _hang_up(sock, reset=False)
    _cancelled_soon(slow, f"{path} after {extra!r}")
    _still_serves(slow.test_url)


def test_a_client_that_said_more_and_stays_gets_its_reply(slow):
    """The other side: bytes after the request are not taken for a hang-up."""
    body = {"prompt": "hi", "n_predict": 200}
    sock = _send(slow, "/completion", body)
    try:
        wait_for(lambda: slow.state.engine.busy.is_set() or select.select([sock], [], [], 0)[0],
                 SETTLE_S, "the request was never taken")
        sock.sendall(b"\r\n")
        data = read_to_close(sock)
    finally:
        sock.close()
    head, _, reply = data.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], data[:300]
    assert json.loads(reply)["tokens_predicted"] == 200, reply[:300]


def test_hung_up_clients_of_every_route_leave_no_thread_fd_or_busy_slot(slow):
    """Streams dropped after their first bytes (FIN and RST) on each streamed route,
    streams dropped before reading a byte, and bodies dropped half-sent: each generation is
    cancelled, the next request answers, and the threads and descriptors go back to
    where they were (the keep-alive routes' pump threads, the connections' sockets)."""
    base_threads, base_fds = threading.active_count(), _fd_count()
    for path, body in STREAMED.items():
        for reset in (False, True):
            sock = _send(slow, path, body)
            status_line = sock.makefile("rb").readline()
            assert b" 200 " in status_line, f"{path}: {status_line!r}"
            _hang_up(sock, reset)
            _cancelled_soon(slow, f"{path} dropped mid-stream")
        eng = slow.state.engine
        sock = _send(slow, path, body)  # gone once its reply began, before reading a byte
        wait_for(lambda: eng.busy.is_set(), SETTLE_S, f"{path}: the reply never started")
        _hang_up(sock, reset=False)
        _cancelled_soon(slow, f"{path} dropped before its first byte")
        data = json.dumps(body).encode()
        sock = _connect(slow.test_url)
        sock.sendall(_head(path, len(data)) + data[:len(data) // 2])
        _hang_up(sock, reset=True)
    _still_serves(slow.test_url)
    wait_for(lambda: threading.active_count() <= base_threads and _fd_count() <= base_fds,
             SETTLE_S, f"threads/fds stayed up: {threading.active_count()}/{_fd_count()}, "
                       f"were {base_threads}/{base_fds}")
