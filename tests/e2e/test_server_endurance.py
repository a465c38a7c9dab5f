"""A server left running for weeks: nothing may pile up with the number of requests.

Deterministic checks, no RSS thresholds: after rounds of every kind of request (streamed
and not, logprobs, tool calls and JSON schemas that are each new, new seeds, stop strings,
long prompts, 400/413/503 answers, streams the client drops, the page's files), the
server's own objects, threads and file descriptors are back where they were after the
first round, and its caches are within their bounds. An idle-connection flood does not
keep a new client out, and its threads and descriptors go away with the clients.
docs/reliability.md ("Endurance") has the numbers measured over thousands of requests.
"""
from __future__ import annotations

import collections
import gc
import json
import os
import random
import resource
import socket
import threading
from pathlib import Path

import pytest

from runtime import prompt_cache
from tests.e2e.conftest import (TINY, http_request, post_json, wait_for,
                                with_context_length)

CTX_TOK = 4096          # room for the tool prompts (about 1,100 tokens on the tiny vocabulary)
ROUNDS = 3
BURST = 24              # concurrent clients, above the engine's queue of 16
FLOOD = 1000            # idle connections
SETTLE_S = 60           # generous: the machine is shared


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    from runtime import server
    model = with_context_length(TINY, tmp_path_factory.mktemp("endure") / "tiny-4k.gguf",
                                "llama", CTX_TOK)
    s = server.Server(model, port=0, n_ctx=CTX_TOK, log=lambda msg: None)
    s.start_loading()
    threading.Thread(target=s.serve_forever, daemon=True).start()
    wait_for(lambda: s.state.engine is not None or s.state.error, SETTLE_S, "no model")
    assert s.state.error is None, s.state.error
    s.test_url = f"http://127.0.0.1:{s.port}"
    yield s
    s.shutdown()


# ---- the load ----------------------------------------------------------------------

def _words(rng, n: int) -> str:
    return " ".join(f"{rng.choice(['alpha', 'beta', 'gamma', 'delta'])}{rng.randrange(10**6)}"
                    for _ in range(n))


def _schema(rng) -> dict:
    props = {f"k{rng.randrange(10**9)}": {"type": t} for t in ("string", "integer", "boolean")}
    return {"type": "object", "properties": props, "required": list(props)}


def _tools(rng) -> list:
    return [{"type": "function", "function": {"name": f"fn{rng.randrange(10**9)}",
                                              "description": _words(rng, 2),
                                              "parameters": _schema(rng)}} for _ in range(2)]


def _chat(url, rng, **kw):
    body = {"messages": [{"role": "user", "content": _words(rng, 6)}], "max_tokens": 6,
            "seed": rng.randrange(10**9), "temperature": rng.choice([0, 0.8])}
    return http_request("POST", url + "/v1/chat/completions", {**body, **kw}, timeout=SETTLE_S)[0]


def _dropped_stream(url, rng) -> int:
    """A stream the client closes after its first bytes (a reset every other time)."""
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"messages": [{"role": "user", "content": _words(rng, 4)}],
                       "max_tokens": 200, "stream": True, "temperature": 1,
                       "seed": rng.randrange(10**9)}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=SETTLE_S) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        s.recv(100)
        if rng.random() < 0.5:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    return 0


def _burst(url, rng) -> int:
    seeds = [rng.randrange(10**9) for _ in range(BURST)]
    codes = []

    def one(seed):
        codes.append(_chat(url, random.Random(seed), max_tokens=2))
    threads = [threading.Thread(target=one, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(codes) <= {200, 503}, codes
    return 200


def _kinds(url):
    post = lambda path, body: http_request("POST", url + path, body, timeout=SETTLE_S)[0]  # noqa: E731
    get = lambda path: http_request("GET", url + path, timeout=SETTLE_S)[0]  # noqa: E731
    return {  # kind: (request(rng) -> status, the statuses it may answer)
        "chat": (lambda r: _chat(url, r), {200}),
        "chat stream": (lambda r: _chat(url, r, stream=True), {200}),
        "stop strings": (lambda r: _chat(url, r, stop=["a", "\n"], max_tokens=20), {200}),
        "chat logprobs": (lambda r: _chat(url, r, logprobs=True, top_logprobs=3), {200}),
        "completions logprobs": (lambda r: post("/v1/completions", {
            "prompt": _words(r, 8), "logprobs": 3, "max_tokens": 5, "seed": r.randrange(99),
            "stream": r.random() < 0.5}), {200}),
        "json_schema": (lambda r: _chat(url, r, max_tokens=30, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": _schema(r)}}), {200}),
        "tool call": (lambda r: _chat(url, r, tools=_tools(r), tool_choice="required",
                                      max_tokens=30), {200}),
        "tools offered": (lambda r: _chat(url, r, tools=_tools(r)), {200}),
        "llama json_schema": (lambda r: post("/completion", {
            "prompt": _words(r, 30), "n_predict": 4, "json_schema": _schema(r)}), {200}),
        "near the context": (lambda r: post("/completion", {
            "prompt": _words(r, 360), "n_predict": 3}), {200}),
        "dropped stream": (lambda r: _dropped_stream(url, r), {0}),
        "burst": (lambda r: _burst(url, r), {200}),
        "bad json": (lambda r: post("/v1/chat/completions", b"{bad"), {400}),
        "too large": (lambda r: post("/v1/chat/completions", b"x" * ((1 << 20) + 1)), {413}),
        "context overflow": (lambda r: post("/completion", {"prompt": _words(r, 1000)}), {400}),
        "slots": (lambda r: get("/slots"), {200}),
        "props": (lambda r: get("/props"), {200}),
        "tokenize": (lambda r: post("/tokenize", {"content": _words(r, 9), "with_pieces": True}),
                     {200}),
        "apply-template": (lambda r: post("/apply-template", {
            "messages": [{"role": "user", "content": "hi"}],
            "chat_template_kwargs": {f"v{r.randrange(10**9)}": 1}}), {200}),
        "health": (lambda r: get("/health"), {200}),
        "page": (lambda r: get(r.choice(["/", "/app.js", "/style.css", "/nothing.txt"])),
                 {200, 404}),
        # Last, the same each round: the worker holds on to the request it served last.
        "last": (lambda r: post("/completion", {"prompt": "hello", "n_predict": 2}), {200}),
    }


def _run_round(url, rng) -> None:
    for name, (send, allowed) in _kinds(url).items():
        status = send(rng)
        assert status in allowed, (name, status)


# ---- what the server holds ---------------------------------------------------------

OWN_MODULES = ("runtime.", "bottle", "socket", "threading", "queue", "wsgiref", "select")


def _held_objects() -> collections.Counter:
    """The server's own live objects by type (gc-tracked ones), in this process."""
    gc.collect()
    names = (f"{getattr(type(o), '__module__', '')}.{type(o).__qualname__}"
             for o in gc.get_objects())
    return collections.Counter(n for n in names if n.startswith(OWN_MODULES))


def _fd_count(pid="self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settle(s, threads: int) -> None:
    """Wait until every connection is closed (refused ones too), the worker is idle and
    the request threads are gone."""
    eng = s.state.engine

    def quiet():
        return (not s.httpd.open_conns and not s.httpd.refused and not eng.busy.is_set()
                and eng.queued() == 0 and threading.active_count() == threads)
    wait_for(quiet, SETTLE_S, "the server never went quiet")


def test_rounds_of_every_request_leave_nothing_behind(srv):
    rng = random.Random(20260101)
    threads = threading.active_count()
    _run_round(srv.test_url, rng)
    _settle(srv, threads)
    fds, held = _fd_count(), _held_objects()
    for _ in range(ROUNDS - 1):
        _run_round(srv.test_url, rng)
    _settle(srv, threads)
    assert _fd_count() == fds
    # The prompt cache keeps the conversations it saw, by design, within its bounds
    # (checked below); anything else that grows is a leak.
    grown = {k: (held[k], n) for k, n in _held_objects().items()
             if n > held[k] and not k.startswith("runtime.prompt_cache.")}
    assert not grown, f"objects that piled up over {ROUNDS - 1} rounds: {grown}"
    cache = srv.state.engine.prompt_cache
    assert cache.stats()["prompts"] <= prompt_cache.MAX_SNAPSHOTS
    assert 0 < cache.stats()["bytes"] <= cache.limit_bytes
    # Only the request the worker served last is still referenced, by the worker.
    assert len(srv.state.cancels) <= 1


def test_caches_stay_within_their_bounds(srv):
    """The caches that requests fill: per template, per tokenizer, per word."""
    from runtime import chat_template, json_constraint, tokenizer
    rng = random.Random(7)
    # (other tests' models, still alive, may have their own entry: only new ones count)
    vocabs_before = set(json_constraint._VOCABS.keys())
    for _ in range(40):  # more distinct templates (kwargs) and schemas than any bound
        _kinds(srv.test_url)["apply-template"][0](rng)
        _kinds(srv.test_url)["json_schema"][0](rng)
    info = chat_template._compile_cached.cache_info()
    assert info.currsize <= info.maxsize
    assert chat_template.tool_support.cache_info().currsize <= 32
    tok = srv.state.model.tokenizer
    # one per tokenizer, not one per schema
    assert set(json_constraint._VOCABS.keys()) - vocabs_before <= {tok}
    assert len(tok._bpe_cache) <= 200_000
    assert len(tok._pieces) == tok.n_vocab
    assert len(srv.state.engine.session.tokens) <= CTX_TOK


# ---- idle connections ------------------------------------------------------------------

def _proc_threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("Threads:")).split()[1])


def _raise_file_limit(want: int) -> int:
    """Raise this process's soft limit on open files toward `want` (the server, started
    after, inherits it); the limit there is."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def test_an_idle_connection_flood_keeps_no_one_out_and_goes_away(server_factory):
    soft = _raise_file_limit(FLOOD + 400)
    flood = min(FLOOD, soft - 200)  # this process holds the clients' ends
    h = server_factory(TINY)
    pid = h.proc.pid
    base_threads, base_fds = _proc_threads(pid), _fd_count(pid)
    socks = []
    try:
        for i in range(flood):
            s = socket.create_connection(("127.0.0.1", h.port), timeout=SETTLE_S)
            if i % 2:  # half of them with a request head that never ends
                s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            socks.append(s)
        wait_for(lambda: _proc_threads(pid) >= base_threads + flood // 2, SETTLE_S,
                 "the idle connections were never accepted")
        assert http_request("GET", h.url + "/", timeout=SETTLE_S)[0] == 200
        status, body = post_json(h.url + "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}, timeout=SETTLE_S)
        assert status == 200, body
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: _proc_threads(pid) <= base_threads and _fd_count(pid) <= base_fds,
             SETTLE_S, f"threads/fds stayed up: {_proc_threads(pid)}/{_fd_count(pid)}, "
                       f"were {base_threads}/{base_fds}")
