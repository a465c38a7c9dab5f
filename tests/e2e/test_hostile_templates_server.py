"""Hostile chat templates through the real server (`--chat-template FILE`).

A template file is code a user may have downloaded from anywhere. Rendering it must not
reach Python internals (`__globals__`, `__mro__`, `os`), and must not hang or flood memory
(`range(10**9)`, recursive macros, `'x' * 10**10`). Through the server that means: the
request that renders it gets a clear JSON error in OpenAI's shape within a few seconds,
and the server stays healthy and keeps answering other requests.

One server per template (each ~2 s to start), so the list is kept short; the attribute
walks share one template and are selected by the user message.

Templates that are hostile to *compile* (nesting too deep, too big, broken syntax), empty,
or failing on a first message are refused when the server starts: the CLI exits 1 with a
one-line message.
"""
from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from tests.e2e.conftest import ROOT, TINY, http_request, post_json, server_command

REQUEST_LIMIT_S = 5.0  # the renderer's own deadline is 2 s
# The status the server gives a template that fails to render (runtime.server.chat_ids maps
# TemplateError to 400: the request's messages cannot be rendered by this template).
TEMPLATE_ERROR_STATUS = 400

# Attribute walks toward Python internals, one per user message. Each line that succeeded
# would print something or create the marker file; the sandbox must stop every one.
WALKS = {
    "mro": "{{ messages.__class__.__mro__[-1].__subclasses__() }}",
    "globals": "{{ raise_exception.__globals__['os'].system('touch MARKER') }}",
    "cycler": "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "lipsum": "{{ lipsum.__globals__['__builtins__']['__import__']('os').system('touch MARKER') }}",
    "attr_filter": "{{ (messages|attr('__class__')|attr('__base__')|attr('__subclasses__'))() }}",
    "format": "{{ '{0.__class__.__mro__}'.format(messages) }}",
    "setattr_list": "{% set x = messages.append({'role': 'user', 'content': 'x'}) %}{{ x }}",
}


def _walk_template(marker) -> str:
    branches = "".join(
        f"{{% {'if' if i == 0 else 'elif'} messages[-1]['content'] == '{name}' %}}"
        + body.replace("MARKER", str(marker))
        for i, (name, body) in enumerate(WALKS.items()))
    return branches + "{% else %}{{ messages[-1]['content'] }}{% endif %}"


def _on_go(attack: str) -> str:
    """The attack for the message "go" only: a template that fails on every message is
    refused when the server starts (it must render a first message), so the attacks that
    reach a running server are those that wait for their input."""
    return ("{% if messages[-1]['content'] == 'go' %}" + attack
            + "{% else %}{{ messages[-1]['content'] }}{% endif %}")


RANGE_1E9 = "{% for i in range(10**9) %}x{% endfor %}"

# name -> (template text, the user messages that trigger the attack)
HOSTILE = {
    "attribute_walks": (None, list(WALKS)),  # the text is built with the marker path
    "range_1e9": (_on_go(RANGE_1E9), ["go"]),
    "nested_loops": (_on_go("{% for a in range(100000) %}{% for b in range(100000) %}"
                            "{{ '' }}{% endfor %}{% endfor %}"), ["go"]),
    "recursive_macro": ("{% macro f(n) %}{{ f(n + 1) }}{{ f(n + 1) }}{% endmacro %}"
                        + _on_go("{{ f(0) }}"), ["go"]),
    "string_bomb": (_on_go("{{ 'x' * 10**10 }}{% set s = 'y' * 10**5 %}{{ s * 10**5 }}"),
                    ["go"]),
}


def _check_error(status, body, elapsed_s, what):
    assert elapsed_s < REQUEST_LIMIT_S, f"{what}: took {elapsed_s:.1f} s"
    assert status == TEMPLATE_ERROR_STATUS, f"{what}: status {status}, body {body}"
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"{what}: {body}"
    err = body["error"]
    assert isinstance(err.get("message"), str) and err["message"].strip(), f"{what}: {err}"
    assert isinstance(err.get("type"), str) and err.get("code") == status, f"{what}: {err}"
    assert "Traceback" not in err["message"]
    return err["message"]


def _timed_post(url, body):
    t0 = time.monotonic()
    status, data = post_json(url, body, timeout=30)
    return status, data, time.monotonic() - t0


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_template_gets_a_json_error_and_the_server_lives(server_factory, tmp_path, name):
    marker = tmp_path / "PWNED"
    text, messages = HOSTILE[name]
    tpl = tmp_path / f"{name}.jinja"
    tpl.write_text(_walk_template(marker) if text is None else text, encoding="utf-8")
    h = server_factory(TINY, "--chat-template", tpl)

    # /health is polled while the attacks render (the slowest runs into the 2 s deadline):
    # rendering happens on the request's thread and must not stall the others.
    health_s, stop = [], threading.Event()

    def poll_health():
        while not stop.is_set():
            t0 = time.monotonic()
            st, _, _ = http_request("GET", h.url + "/health", timeout=5)
            health_s.append((st, time.monotonic() - t0))
            stop.wait(0.05)

    poller = threading.Thread(target=poll_health, daemon=True)
    poller.start()
    seen = []
    for content in messages:
        msgs = [{"role": "user", "content": content}]
        what = f"{name}/{content}"
        status, body, dt = _timed_post(h.url + "/apply-template", {"messages": msgs})
        seen.append(_check_error(status, body, dt, what + " /apply-template"))
        for stream in (False, True):
            status, body, dt = _timed_post(h.url + "/v1/chat/completions",
                                           {"messages": msgs, "max_tokens": 4, "stream": stream})
            _check_error(status, body, dt, f"{what} /v1/chat/completions stream={stream}")

        # Healthy and still answering, right after each attack.
        t0 = time.monotonic()
        status, _, _ = http_request("GET", h.url + "/health", timeout=5)
        assert status == 200 and time.monotonic() - t0 < 1.0
    stop.set()
    poller.join(10)
    assert health_s and all(st == 200 for st, _ in health_s), health_s
    assert max(dt for _, dt in health_s) < 1.0, max(dt for _, dt in health_s)
    status, body = post_json(h.url + "/v1/completions",
                             {"prompt": "Hello", "max_tokens": 4, "temperature": 0}, timeout=30)
    assert status == 200 and body["choices"][0]["finish_reason"] in ("length", "stop"), body
    status, _, data = http_request("GET", h.url + "/slots", timeout=5)
    assert status == 200 and json.loads(data)[0]["is_processing"] in (False, True)

    assert not marker.exists(), "a template reached the operating system"
    assert h.proc.poll() is None
    assert "Traceback" not in h.output(), h.output()
    # The messages say what went wrong, not just "error".
    assert all(len(m) > 10 for m in seen), seen


# Templates refused before the server starts: the CLI must exit 1 with one clear line.
COMPILE_HOSTILE = {
    "too_deep": "{% if 1 %}" * 200 + "x" + "{% endif %}" * 200,
    "syntax": "{% for m in messages %}{{ m.content }",
    "too_big": "{{ 'x' }}" + " " * (1 << 20),
    "not_utf8": b"{{ '\xff\xfe' }}",
    "fails_every_render": RANGE_1E9,  # (rendered once, on a first message, at start)
    "empty": "  \n",
}


@pytest.mark.parametrize("name", list(COMPILE_HOSTILE))
def test_template_hostile_to_compile_is_refused_at_start(tmp_path, name):
    tpl = tmp_path / f"{name}.jinja"
    content = COMPILE_HOSTILE[name]
    if isinstance(content, bytes):
        tpl.write_bytes(content)
    else:
        tpl.write_text(content, encoding="utf-8")
    t0 = time.monotonic()
    r = subprocess.run(server_command(TINY, "--chat-template", tpl), cwd=ROOT,
                       capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    elapsed = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out, out
    assert "template" in r.stderr.lower(), r.stderr
    assert "http://" not in r.stdout, "the server started anyway"
    assert elapsed < 20, f"took {elapsed:.1f} s"
