"""Abuse under concurrency: clients that give up while queued, a server with more than
1024 connections open, a mix of every kind of request with hang-ups in between, and
Ctrl+C / SIGTERM while replies stream.

Each test says what used to break. Traffic goes only to 127.0.0.1; every wait is bounded,
and the time limits are generous (a busy 2-core machine passes them).
"""
from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

from tests.e2e.conftest import TINY, http_request, post_json, start_server, tiny_4k, wait_for

QUEUE = 16   # runtime.engine.Engine's max_queue, as the server makes it


@pytest.fixture(scope="module")
def long_server(tmp_path_factory):
    """The tiny model with a 4096-token context: a reply of 4000 tokens takes seconds,
    long enough to queue other requests behind it."""
    model = tiny_4k(tmp_path_factory.mktemp("ctx"))
    h = start_server(model)
    yield h
    h.stop()


def _addr(url: str) -> tuple[str, int]:
    u = urllib.parse.urlsplit(url)
    assert u.hostname == "127.0.0.1", url
    return u.hostname, u.port


def _send(url: str, path: str, body: dict) -> socket.socket:
    """A raw POST whose answer nobody reads (yet): the caller closes the socket."""
    sock = socket.create_connection(_addr(url), timeout=30)
    payload = json.dumps(body).encode()
    sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    return sock


def _hang_up(sock: socket.socket) -> None:
    """Close with a reset, as a killed client or a closed browser tab does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    sock.close()


def _slots(url: str) -> dict:
    status, _, data = http_request("GET", url + "/slots", timeout=10)
    assert status == 200, data
    return json.loads(data)[0]


def _wait_idle(url: str, limit_s: float = 20) -> dict:
    return wait_for(lambda: (lambda s: s if not s["is_processing"] and not s["queued"] else None)(
        _slots(url)), limit_s, "the worker stays busy")


def test_clients_that_gave_up_while_queued_leave_room_for_new_ones(long_server):
    """16 clients queue behind a long reply and hang up. Their requests used to stay in
    the queue, cancelled, until the worker reached them (as long as the long reply took:
    minutes with a real model), and every newcomer got 503 "too many requests are waiting"
    although nobody was."""
    url = long_server.url
    _wait_idle(url)
    long = _send(url, "/completion", {"prompt": "hi", "n_predict": 4000, "ignore_eos": True,
                                      "stream": True})
    waiting = []
    try:
        wait_for(lambda: _slots(url)["is_processing"], 20, "the long reply never started")
        waiting = [_send(url, "/completion", {"prompt": "hello", "n_predict": 4})
                   for _ in range(QUEUE)]
        wait_for(lambda: _slots(url)["queued"] == QUEUE, 20, "the requests never queued")
        for s in waiting:
            _hang_up(s)
        time.sleep(0.5)  # each request thread notices its client's hang-up within 50 ms
        assert _slots(url)["is_processing"], "the long reply ended too soon for this test"

        got = {}
        newcomer = threading.Thread(target=lambda: got.update(
            r=post_json(url + "/completion", {"prompt": "hello", "n_predict": 4}, timeout=60)))
        newcomer.start()
        # Queued (the fix) or refused (the bug): either shows within seconds.
        wait_for(lambda: not newcomer.is_alive() or _slots(url)["queued"] == 1, 20,
                  "the newcomer was neither queued nor refused")
    finally:
        _hang_up(long)   # cancels the long reply: the newcomer is served next
        for s in waiting:
            s.close()
    newcomer.join(60)
    status, reply = got["r"]
    assert status == 200, reply
    assert reply["tokens_predicted"] == 4 or reply["stop_type"] == "eos", reply
    _wait_idle(url)


def test_a_server_with_over_1024_connections_open_still_serves(server_factory):
    """The hang-up check used select(), which refuses file descriptors of 1024 and more:
    once that many connections were open (idle browsers, slow clients), every new request
    was taken for abandoned: a 400 "the request was cancelled", a stream cut short."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4096
    if hard != resource.RLIM_INFINITY and hard < 1300:
        pytest.skip(f"the hard limit on open files is {hard}: a server cannot hold 1024 "
                    f"connections here")
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    socks = []
    try:
        h = server_factory(TINY)   # inherits the raised limit
        for _ in range(1040):
            s = socket.create_connection(_addr(h.url), timeout=30)
            s.sendall(b"GET /health HTTP/1.1\r\n")   # headers never finished: stays open
            socks.append(s)
        fd_dir = f"/proc/{h.proc.pid}/fd"
        if os.path.isdir(fd_dir):
            wait_for(lambda: len(os.listdir(fd_dir)) > 1040, 30,
                      "the server did not accept the connections")
        else:
            time.sleep(2)
        # Long enough for the hang-up check to run (every 50 ms) a few times.
        status, reply = post_json(h.url + "/completion",
                                  {"prompt": "hi", "n_predict": 200, "ignore_eos": True}, timeout=60)
        assert status == 200, reply
        assert reply["tokens_predicted"] == 200, reply
        status, _, data = http_request("POST", h.url + "/v1/chat/completions",
                                       {"messages": [{"role": "user", "content": "hi"}],
                                        "max_tokens": 200, "ignore_eos": True, "stream": True},
                                       timeout=60)
        assert status == 200
        assert data.rstrip().endswith(b"data: [DONE]"), data[-300:]
        assert b'"finish_reason": "length"' in data, data[-300:]
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ---- a mix of everything, with hang-ups --------------------------------------------------

CHAT = "/v1/chat/completions"


def _mixed_client(url: str, seed: int, n: int, out: list) -> None:
    """n requests of random kinds; records (kind, problem) for anything that is not a
    correct answer or a clean JSON error (400 for a prompt too long, 503 for a full queue)."""
    rnd = random.Random(seed)
    host, port = _addr(url)
    for _ in range(n):
        kind = rnd.choice(["chat", "chat_stream", "completion", "llama_stream", "tokenize",
                           "health", "props", "slots", "page", "hang_up_stream",
                           "hang_up_waiting", "hang_up_sending"])
        msgs = [{"role": "user", "content": rnd.choice(["hi", "tell me a story", "x " * 150])}]
        try:
            if kind.startswith("hang_up"):
                body = {"messages": msgs, "max_tokens": 300, "ignore_eos": True,
                        "stream": kind == "hang_up_stream"}
                sock = _send(url, CHAT, body)
                if kind == "hang_up_stream":
                    sock.recv(200)
                elif kind == "hang_up_sending":
                    sock.close()   # _send sent it all; a half-sent body is below
                    sock = socket.create_connection((host, port), timeout=30)
                    sock.sendall(b"POST /completion HTTP/1.1\r\nContent-Length: 500\r\n\r\n{\"pro")
                time.sleep(rnd.uniform(0, 0.2))
                _hang_up(sock)
                continue
            conn = http.client.HTTPConnection(host, port, timeout=60)
            try:
                if kind in ("chat", "chat_stream"):
                    conn.request("POST", CHAT, json.dumps(
                        {"messages": msgs, "max_tokens": rnd.choice([1, 16, 64]),
                         "stream": kind == "chat_stream", "stop": rnd.choice([None, ["a"], ["x" * 50]]),
                         "seed": rnd.choice([None, 2**64 - 1, -(2**63)])}))
                elif kind in ("completion", "llama_stream"):
                    conn.request("POST", "/completion", json.dumps(
                        {"prompt": "once upon", "n_predict": rnd.choice([4, 32]), "n_probs": 5,
                         "stream": kind == "llama_stream",
                         "logit_bias": [[rnd.randrange(512), rnd.uniform(-5, 5)] for _ in range(300)]}))
                elif kind == "tokenize":
                    conn.request("POST", "/tokenize", json.dumps({"content": "hello " * 500,
                                                                  "with_pieces": True}))
                else:
                    conn.request("GET", {"health": "/health", "props": "/props", "slots": "/slots",
                                         "page": "/"}[kind])
                r = conn.getresponse()
                data = r.read()
            finally:
                conn.close()
            if r.status in (400, 503) and kind not in ("health", "props", "slots", "page", "tokenize"):
                err = json.loads(data)["error"]
                if r.status == 400 and "context size" not in err["message"]:
                    out.append((kind, f"400: {err}"))
                continue
            if r.status != 200:
                out.append((kind, f"{r.status}: {data[:200]!r}"))
            elif kind.endswith("stream"):
                payloads = [ln[6:] for ln in data.decode().split("\n") if ln.startswith("data: ")]
                if kind == "chat_stream" and (not payloads or payloads[-1] != "[DONE]"):
                    out.append((kind, f"no [DONE]: {data[-200:]!r}"))
                objs = [json.loads(p) for p in payloads if p != "[DONE]"]
                if any("error" in o for o in objs):
                    out.append((kind, f"error in the stream: {objs[-1]}"))
                if not objs or not (objs[-1].get("stop") or objs[-1].get("choices")):
                    out.append((kind, f"stream ended early: {data[-200:]!r}"))
            elif kind != "page":
                json.loads(data)
        except (OSError, ValueError, KeyError) as e:
            out.append((kind, f"{type(e).__name__}: {e}"))


def test_mixed_concurrent_clients_with_hang_ups(long_server):
    """20 clients, every kind of request, some hanging up while streaming, while queued or
    while sending: each request gets a correct answer or a clean JSON error, /health keeps
    answering, and afterwards the worker is idle and serves the next request whole."""
    url = long_server.url
    _wait_idle(url)
    problems: list = []
    clients = [threading.Thread(target=_mixed_client, args=(url, seed, 8, problems))
               for seed in range(20)]
    for t in clients:
        t.start()
    health = []
    while any(t.is_alive() for t in clients):
        t0 = time.monotonic()
        status, _, _ = http_request("GET", url + "/health", timeout=30)
        health.append((status, time.monotonic() - t0))
        time.sleep(0.1)
    for t in clients:
        t.join(120)
    assert not problems, "\n".join(f"{k}: {p}" for k, p in problems[:20])
    assert all(st == 200 for st, _ in health), health
    assert max(dt for _, dt in health) < 10, max(health, key=lambda x: x[1])
    _wait_idle(url)
    status, reply = post_json(url + CHAT, {"messages": [{"role": "user", "content": "hi"}],
                                           "max_tokens": 32, "ignore_eos": True})
    assert status == 200, reply
    assert reply["usage"]["completion_tokens"] == 32, reply


# ---- stopping the server while it streams -----------------------------------------------

def _streaming_clients(url: str, n: int) -> list:
    socks = [_send(url, CHAT, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3000,
                               "ignore_eos": True, "stream": True}) for _ in range(n)]
    socks[0].recv(100)   # the first stream has begun
    return socks


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_stopping_while_replies_stream_is_prompt_and_quiet(tmp_path, sig):
    if not hasattr(signal, sig) or os.name == "nt":
        pytest.skip(f"no {sig} to send here")
    model = tiny_4k(tmp_path)
    h = start_server(model)
    socks = []
    try:
        socks = _streaming_clients(h.url, 4)
        t0 = time.monotonic()
        h.proc.send_signal(getattr(signal, sig))
        try:
            h.proc.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server still runs 15 s after {sig}:\n{h.output()}")
        took = time.monotonic() - t0
    finally:
        for s in socks:
            s.close()
        h.stop()
    time.sleep(0.2)   # the reader thread drains what is left of the output
    out = h.output()
    assert "Traceback" not in out and "Fatal" not in out and "Exception" not in out, out
    assert took < 10, f"{sig} took {took:.1f} s"
    # SIGTERM (`kill`, `systemctl stop`) stops as Ctrl+C does; the server used to die by
    # it (status -15), which service managers count as a failure.
    assert h.proc.returncode == 0, out
    assert out.rstrip().endswith("chatfile: stopped."), out


# ---- clients that vanish or stall: no traceback on the server's console --------------------

def test_clients_that_reset_while_sending_leave_no_traceback(server_factory):
    """A reset while the server read the request line or the headers, or wrote curl's
    "100 Continue", escaped wsgiref: socketserver printed "Exception occurred during
    processing of request" and a traceback on the console that the user watches."""
    h = server_factory(TINY)
    starts = [b"GET /hea", b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */",
              b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
              b"Content-Length: 100\r\n\r\n"]
    for _ in range(3):
        for start in starts:
            sock = socket.create_connection(_addr(h.url), timeout=30)
            sock.sendall(start)
            time.sleep(0.1)   # the server is reading: the reset comes in the middle
            _hang_up(sock)
    time.sleep(0.5)
    status, _, _ = http_request("GET", h.url + "/health")
    assert status == 200
    out = h.output()
    assert "Traceback" not in out and "Exception occurred" not in out, out


def test_a_stream_nobody_reads_times_out_quietly(capfd, monkeypatch, tmp_path):
    """A client that stops reading a stream (a frozen tab, a stopped process): after the
    socket's timeout the write fails with TimeoutError, which wsgiref printed with a
    traceback (it knows only resets and broken pipes as a client's doing). In-process, to
    shorten the timeout from 120 s to 1 s."""
    from runtime import connections, server
    monkeypatch.setattr(connections.Handler, "timeout", 1)
    model = tiny_4k(tmp_path)
    srv = server.Server(model, port=0, log=lambda msg: None)
    srv.start_loading()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        wait_for(lambda: srv.state.engine is not None or srv.state.error, 60, "no model")
        assert srv.state.error is None, srv.state.error
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.port))
        # n_probs 100: about 6 kB per token, far more than the socket buffers hold.
        body = json.dumps({"prompt": "hi", "n_predict": 3000, "ignore_eos": True, "n_probs": 100,
                           "stream": True}).encode()
        sock.sendall(b"POST /completion HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        eng = srv.state.engine
        wait_for(lambda: eng.busy.is_set() or len(eng.session.tokens) > 0, 20, "never started")
        wait_for(lambda: not eng.busy.is_set(), 30, "the worker stays busy")
        time.sleep(2.5)   # the request thread's write times out after 1 s
        sock.close()
        time.sleep(0.3)
    finally:
        srv.shutdown()
    err = capfd.readouterr().err
    assert "Traceback" not in err, err


def test_a_socket_closed_under_a_read_ends_its_connection_quietly():
    """A stop under heavy load closed a connection's socket while its thread was about
    to read: `settimeout` raised "Bad file descriptor", which was not taken for the
    connection's end, and socketserver printed a traceback on the console."""
    from runtime.connections import client_gone
    a, b = socket.socketpair()
    a.close()
    with pytest.raises(OSError) as e:
        a.settimeout(1.0)
    b.close()
    assert client_gone(e.value)
