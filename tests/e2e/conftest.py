"""End-to-end fixtures: the real server in a subprocess, on a free port.

`start_server(model_path, *extra_args) -> ServerHandle` starts
`python3 -m runtime.cli run MODEL --no-browser --port 0 EXTRA...`, reads the URL it
prints, waits for /health to say ok, and returns. `handle.stop()` ends it.

Fixtures: `tiny_server` (session-wide, tests/fixtures/models/tiny-llama-q8_0.gguf) and
`server_factory` (start extra servers that are stopped after the test). Plain helpers
`http_request` and `post_json` speak raw HTTP with http.client.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "fixtures" / "models"
TINY = MODELS / "tiny-llama-q8_0.gguf"
START_TIMEOUT_S = 60


@dataclass
class ServerHandle:
    url: str                       # "http://127.0.0.1:PORT", no trailing slash
    proc: subprocess.Popen
    lines: list = field(default_factory=list)   # everything it printed so far

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.url).port

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        stop_process(self.proc, 5)


def stop_process(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not ended within grace_s; waits for it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace_s)


def server_command(model_path, *extra_args, browser: bool = False) -> list:
    flags = [] if browser else ["--no-browser"]
    return [sys.executable, "-m", "runtime.cli", "run", str(model_path), *flags, "--port", "0",
            *map(str, extra_args)]


def start_server(model_path=TINY, *extra_args, wait_healthy: bool = True,
                 browser: bool = False) -> ServerHandle:
    """browser=True: started as a double-click starts it (no --no-browser), with no
    display to open a browser on."""
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if browser:
        env.update(DISPLAY="", WAYLAND_DISPLAY="")
    proc = subprocess.Popen(server_command(model_path, *extra_args, browser=browser), cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, encoding="utf-8",
                            errors="replace")
    h = ServerHandle(url="", proc=proc)
    found = threading.Event()

    def reader():  # keep draining the pipe so the server never blocks on print()
        for line in proc.stdout:
            h.lines.append(line)
            m = re.search(r"http://([\w.\-\[\]:]+):(\d+)", line)
            if m and not found.is_set():
                h.url = f"http://{m.group(1)}:{m.group(2)}"
                found.set()
        found.set()

    threading.Thread(target=reader, daemon=True).start()
    if not found.wait(START_TIMEOUT_S) or not h.url:
        h.stop()
        raise RuntimeError(f"the server printed no URL:\n{h.output()}")
    if wait_healthy:
        deadline = time.time() + START_TIMEOUT_S
        while True:
            try:
                status, _, _ = http_request("GET", h.url + "/health", timeout=2)
                if status == 200:
                    break
            except OSError:
                status = None
            if proc.poll() is not None or time.time() > deadline:
                h.stop()
                raise RuntimeError(f"the server never became healthy (last {status}):\n{h.output()}")
            time.sleep(0.05)
    return h


def http_request(method, url, body=None, headers=None, timeout=30):
    """Raw HTTP: (status, headers dict with lower-case names, body bytes). `body` may be
    bytes (sent as is), str (UTF-8) or any other object (sent as JSON)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        if body is not None and not isinstance(body, (bytes, bytearray)):
            body = body.encode("utf-8") if isinstance(body, str) else json.dumps(body).encode()
        path = u.path or "/"
        if u.query:
            path += "?" + u.query
        # skip_host etc. are not needed; send the path exactly as given (no normalising).
        conn.putrequest(method, path, skip_accept_encoding=True)
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        hdrs.update(headers or {})
        if body is not None and not any(k.lower() in ("content-length", "transfer-encoding")
                                        for k in hdrs):
            hdrs["Content-Length"] = str(len(body))
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders()
        if body:
            conn.send(body)
        r = conn.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        conn.close()


def post_json(url, body, headers=None, timeout=60):
    """POST a JSON body; (status, parsed JSON or None)."""
    status, _, data = http_request("POST", url, body, headers, timeout=timeout)
    try:
        return status, json.loads(data)
    except ValueError:
        return status, None


def read_to_close(sock) -> bytes:
    """Everything a server sent on a raw socket until it closed (or reset) it."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def sse_events(data: bytes) -> list:
    """The `data:` payloads of an SSE body, JSON-decoded ("[DONE]" kept as a string)."""
    out = []
    for block in data.decode("utf-8").split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                payload = line[6:]
                out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


@pytest.fixture(scope="session")
def tiny_server():
    h = start_server(TINY)
    yield h
    h.stop()


@pytest.fixture
def server_factory():
    started = []

    def factory(model_path=TINY, *extra_args, **kw):
        h = start_server(model_path, *extra_args, **kw)
        started.append(h)
        return h
    yield factory
    for h in started:
        h.stop()


@pytest.fixture(scope="session")
def tiny_model():
    """The same model loaded in this process: the honest reference for the server's output."""
    from runtime.model import Model
    return Model.load(TINY)


# ---------------------------------------------------------------------------------------
# Headless Chromium: Debian's package, driven by Playwright through executable_path
# (browser downloads are impossible). One browser for the whole session.

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def require_chromium():
    """The Playwright module, or a visible skip when Playwright or Chromium is missing."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (CI installs Debian's chromium)", allow_module_level=True)
    return sync_api


@pytest.fixture(scope="session")
def browser():
    sync_api = require_chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server_url(tiny_server):
    return tiny_server.url.rstrip("/") + "/"


# ---------------------------------------------------------------------------------------
# Bundles: stubs are expensive (PyInstaller: about a minute), so each is built at most
# once per pytest session and shared by every bundle test.

BUNDLE_MODEL = ROOT / "tests" / "fixtures" / "models" / "tiny-llama-q8_0.gguf"
_STUBS: dict = {}
_BUNDLES: dict = {}


# ---------------------------------------------------------------------------- helpers

def session_stub(tmp_path_factory, fmt: str) -> Path:
    """A bare stub of `fmt`, built at most once per session (or skip: builder missing)."""
    builder = {"exe": "PyInstaller", "pyz": "shiv"}[fmt]
    try:
        __import__(builder)
    except ImportError:
        pytest.skip(f"{builder} is not installed: cannot build a {fmt} stub")
    base = tmp_path_factory.getbasetemp()
    key = (str(base), fmt)
    if key not in _STUBS:
        from bundler.stub import build_stub
        path = base / "shared-stubs" / f"stub-{fmt}"
        path.parent.mkdir(exist_ok=True)
        build_s = build_stub(fmt, path)
        print(f"\nbuilt the {fmt} stub in {build_s:.1f} s ({path.stat().st_size} bytes)")
        _STUBS[key] = path
    return _STUBS[key]


def session_bundle(tmp_path_factory, fmt: str) -> Path:
    """The tiny fixture model bundled into a `fmt` stub, once per session."""
    stub = session_stub(tmp_path_factory, fmt)
    key = (str(tmp_path_factory.getbasetemp()), fmt)
    if key not in _BUNDLES:
        from bundler.splice import splice
        d = tmp_path_factory.getbasetemp() / "shared-bundles"
        d.mkdir(exist_ok=True)
        path = d / f"tiny.{fmt}"
        splice(stub, BUNDLE_MODEL, path, fmt=fmt, args=["--ctx", "256"], title="Tiny bundle",
               force=True)
        _BUNDLES[key] = path
    return _BUNDLES[key]


def bundle_cmd(path: Path, fmt: str) -> list[str]:
    return [str(path)] if fmt == "exe" else [sys.executable, str(path)]


def bundle_env(tmp_path_factory) -> dict:
    # shiv extracts site-packages once per SHIV_ROOT; one per session keeps starts fast.
    return dict(os.environ, SHIV_ROOT=str(tmp_path_factory.getbasetemp() / "shiv-root"),
                PYTHONUNBUFFERED="1")


def greedy_reference(model, ids, max_tokens, continuation: bool = False):
    """Our own Model's greedy ids up to the first end-of-generation token (excluded), and
    their text: the reference for what the server must answer at temperature 0. (Model's
    greedy output is itself checked against llama.cpp in tests/runtime/test_parity.py.)
    continuation: the text is what the reply adds to the prompt's text (a completion, which
    keeps a SentencePiece word's leading space) instead of a text of its own (a chat reply)."""
    out = []
    for t in model.generate(ids, max_tokens, temperature=0.0, n_ctx=model.n_ctx_train):
        if t in model.eog_ids:
            break
        out.append(t)
    return out, continued_text(model, ids, out) if continuation else model.detokenize(out)


def continued_text(model, prompt_ids, ids) -> str:
    """What `ids` add to the text of `prompt_ids`."""
    before, after = model.detokenize(prompt_ids), model.detokenize([*prompt_ids, *ids])
    assert after.startswith(before), (before, after)
    return after[len(before):]


def with_context_length(src, dst, arch, n_ctx):
    """A copy of a GGUF whose `<arch>.context_length` (a u32) says n_ctx. The tiny fixtures
    are trained for 256 tokens, and their 512-token vocabularies spend more than a token
    per character: a prompt that describes tools is longer than that. Their weights are
    random, so later positions are no worse than early ones."""
    data = bytearray(src.read_bytes())
    key = f"{arch}.context_length".encode()
    at = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    assert struct.unpack_from("<I", data, at)[0] == 4  # GGUF's u32 type
    struct.pack_into("<I", data, at + 4, n_ctx)
    dst.write_bytes(bytes(data))
    return dst


def tiny_4k(directory: Path) -> Path:
    """The tiny llama with a 4,096-token context (with_context_length), written into
    `directory`: room for long prompts (tools, several micro-batches)."""
    return with_context_length(TINY, directory / "tiny-4k.gguf", "llama", 4096)


class Tmpfs:
    """A small tmpfs mounted for one test (root only); unmounted, lazily if busy, after."""

    def __init__(self, path: Path, size_bytes: int, *options: str):
        self.path, self.size_bytes, self.options = path, size_bytes, options

    def __enter__(self) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs (noexec, or small enough to fill) needs root; "
                        "CI runs as root")
        self.path.mkdir()
        opts = ",".join([f"size={self.size_bytes // 1024}k", *self.options])
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(self.path)],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
        return self.path

    def __exit__(self, *exc) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def wait_for(what, limit_s: float, why: str):
    """what()'s first truthy answer, asked every 20 ms; fails after limit_s."""
    end = time.monotonic() + limit_s
    while True:
        got = what()
        if got:
            return got
        assert time.monotonic() < end, f"{why}: not after {limit_s} s"
        time.sleep(0.02)
