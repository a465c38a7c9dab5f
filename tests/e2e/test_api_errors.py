"""Hundreds of malformed requests: each must get the right 4xx, as JSON in OpenAI's error
shape, and the server must stay healthy. No 5xx, no HTML, no tracebacks."""
import http.client
import json
import socket
import urllib.parse

import pytest

from tests.e2e.conftest import http_request, post_json

CHAT = "/v1/chat/completions"
POST_ROUTES = [CHAT, "/v1/completions", "/completion", "/tokenize", "/detokenize",
               "/apply-template", "/infill"]
OK_MSG = [{"role": "user", "content": "hi"}]

# Bodies that are not a JSON object at all, or not valid UTF-8 / JSON.
BAD_BODIES = {
    "empty": b"",
    "blank": b"   \n",
    "truncated": b'{"messages": [',
    "array": b"[]",
    "null": b"null",
    "number": b"42",
    "string": b'"hello"',
    "single-quotes": b"{'prompt': 'x'}",
    "trailing-comma": b'{"prompt": "x",}',
    "invalid-utf8": b'{"prompt": "\xff\xfe"}',
    "invalid-utf8-key": b'{"\xc3\x28": 1}',
    "latin1": "{\"prompt\": \"caf\u00e9\"}".encode("latin-1"),
    "nan": b'{"prompt": "x", "temperature": NaN}',
    "infinity": b'{"prompt": "x", "top_p": Infinity}',
    "lone-surrogate": b'{"prompt": "\\ud800", "content": "\\udfff", "messages": [{"role": "user", "content": "\\ud800"}]}',
    "deep-nesting": b"[" * 50000 + b"]" * 50000,
    "utf16": '{"prompt": "x"}'.encode("utf-16"),
}


def field_cases():
    """(route, body, status): one wrong value per field, for every field we read."""
    c = []
    chat = lambda **kw: {"messages": OK_MSG, **kw}      # noqa: E731
    bad_messages = ["x", 1, {}, [], [1], [None], [{}], [{"role": 1, "content": "x"}],
                    [{"role": "wizard", "content": "x"}], [{"role": "", "content": "x"}],
                    [{"content": "x"}], [{"role": "user"}], [{"role": "user", "content": 1}],
                    [{"role": "user", "content": {"text": "x"}}], [{"role": "user", "content": [1]}],
                    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
                    [{"role": "user", "content": [{"type": "text"}]}],
                    [{"role": "user", "content": [{"type": "text", "text": 5}]}],
                    [{"role": "user", "content": "x", "name": 3}], [{"role": "USER", "content": "x"}]]
    for m in bad_messages:
        c.append((CHAT, {"messages": m}, 400))
        c.append(("/apply-template", {"messages": m}, 400))
    c.append((CHAT, {}, 400))
    c.append(("/apply-template", {}, 400))
    c.append((CHAT, {"messages": None}, 400))
    wrong = {
        "temperature": ["hot", -1, 2.5, True, [], {}],
        "top_p": ["x", 1.5, -0.1, False],
        "max_tokens": [-2, -100, "10", 1.5, True, 2**40, []],
        "max_completion_tokens": [-5, "x", 2**31],
        "stop": [1, [1], {"a": 1}, [None], ["x"] * 17, True],
        "seed": ["x", 1.5, [], 2**70],
        "presence_penalty": ["x", 5, -3],
        "frequency_penalty": [-3, "y", 2.5],
        "n": [129, "1", 0, -1, 1.5],   # n goes up to 128 (tests/e2e/test_api_choices.py)
        "stream": ["yes", 1, 0, []],
        "stream_options": ["x", 1, {"include_usage": "yes"}],
        "logprobs": ["x", 1],
        "top_logprobs": [-1, 21, "x"],
        "model": [1, [], {}],
        "top_k": ["x", 1.5, -2],
        "min_p": [2, "x"],
        "repeat_penalty": [-1, "x", 0, 1e-40],  # logits are divided by it
        "cache_prompt": ["x", 1],
    }
    for key, values in wrong.items():
        for v in values:
            c.append((CHAT, chat(**{key: v}), 400))
    comp = lambda **kw: {"prompt": "hi", **kw}          # noqa: E731
    for p in [None, 1, 1.5, {}, [], [-1], [10**9], [1.5], [True], [None], [[1, -2]], [{}]]:
        c.append(("/v1/completions", {"prompt": p}, 400))
        c.append(("/completion", {"prompt": p}, 400))
    # Several prompts at once. (llama-server reads a list with a token id among strings as
    # one prompt, and a list of strings or of lists as several.) Both routes answer them
    # (tests/e2e/test_api_echo_logprobs.py, test_api_llama_batch.py): one bad one is a 400.
    for p in [["a", []], [[1, 2], [-3]], ["a", [1.5]], [["a"], [None]]]:
        c.append(("/completion", {"prompt": p}, 400))
    c.append(("/v1/completions", {}, 400))
    c.append(("/completion", {}, 400))
    for key, v in [("max_tokens", -2), ("max_tokens", "x"), ("echo", "yes"), ("logprobs", 6),
                   ("logprobs", "x"), ("suffix", 1), ("best_of", 0), ("n", 129), ("temperature", 9),
                   ("stop", 5), ("stream", "no"), ("stream_options", [])]:
        c.append(("/v1/completions", comp(**{key: v}), 400))
    for key, v in [("n_predict", -2), ("n_predict", "x"), ("n_predict", 1.5), ("n_probs", -1),
                   ("n_probs", 1000), ("n_probs", "x"), ("top_k", "x"), ("min_p", 2),
                   ("repeat_penalty", -1), ("repeat_penalty", 0), ("repeat_last_n", -2), ("repeat_last_n", "x"),
                   ("cache_prompt", "x"), ("stream", "x"), ("temperature", "x"), ("seed", "x"),
                   ("stop", [3]), ("top_p", 7), ("presence_penalty", 9)]:
        c.append(("/completion", comp(**{key: v}), 400))
    c += unsupported_field_cases()
    for body in [{}, {"content": 1}, {"content": None}, {"content": []}, {"content": {}},
                 {"content": "x", "add_special": "yes"}, {"content": "x", "with_pieces": 1},
                 {"content": "x", "parse_special": []}]:
        c.append(("/tokenize", body, 400))
    for body in [{}, {"tokens": "x"}, {"tokens": [1.5]}, {"tokens": ["a"]}, {"tokens": [-1]},
                 {"tokens": [10**6]}, {"tokens": [True]}, {"tokens": None}, {"tokens": {"0": 1}},
                 {"tokens": [[1]]}]:
        c.append(("/detokenize", body, 400))
    for body in [{"input_prefix": 1}, {"input_suffix": []}, {"prompt": 1},
                 {"input_extra": "x"}, {"input_prefix": "a", "input_suffix": "b"}]:
        c.append(("/infill", body, 400))
    # Context overflow: the tiny model's context is 256 tokens.
    c.append(("/completion", {"prompt": [5] * 300}, 400))
    c.append(("/v1/completions", {"prompt": [5] * 257}, 400))
    c.append((CHAT, {"messages": [{"role": "user", "content": "word " * 400}]}, 400))
    c.append(("/completion", {"prompt": "word " * 400, "n_predict": 1}, 400))
    return c


# llama-server's sampling fields that our sampler lacks, at a value that switches them on,
# and llama-server's other fields at values we cannot honour: a 400, not a silent no-op.
# (mirostat, typical_p, XTC, dynatemp, top_n_sigma, min_keep, DRY and adaptive-p are ours now,
# their bad values 400s too: tests/e2e/test_api_samplers.py.)
UNSUPPORTED = [("grammar", 'root ::= "yes" | "no"'), ("post_sampling_probs", True),
               ("id_slot", 3), ("lora", [{"id": 0, "scale": 1.0}])]
# Wrong types for the fields we accept without effect (docs/api.md says why each is inert).
INERT_WRONG = [("ignore_eos", "yes"), ("ignore_eos", 1), ("mirostat", "2"), ("typical_p", "x"),
               ("mirostat_tau", "x"), ("dry_sequence_breakers", "x"), ("dry_sequence_breakers", [1]),
               ("samplers", 5), ("samplers", [1]), ("n_indent", "x"), ("t_max_predict_ms", []),
               ("timings_per_token", "yes"), ("response_fields", "content"), ("n_keep", "x")]


def unsupported_field_cases():
    c = []
    bodies = {CHAT: {"messages": OK_MSG}, "/v1/completions": {"prompt": "hi"},
              "/completion": {"prompt": "hi"}}   # (/infill: test_api_llama, in process)
    for route, base in bodies.items():
        for key, v in UNSUPPORTED + INERT_WRONG:
            c.append((route, {**base, key: v}, 400))
    c.append(("/completion", {"prompt": "hi", "n": 129}, 400))   # above the cap
    c.append(("/completion", {"prompt": "hi", "n": 2, "n_cmpl": 3}, 400))
    c.append(("/v1/completions", {"prompt": "hi", "suffix": "}"}, 400))   # that is /infill
    c.append((CHAT, {"messages": OK_MSG, "n_predict": -2}, 400))
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    for body in [{"functions": [tool["function"]]}, {"function_call": "auto"},
                 {"function_call": {"name": "f"}, "tools": [tool]},
                 {"tools": [{"type": "nonfunction"}]}, {"tools": [tool, {"type": "retrieval"}]}]:
        c.append((CHAT, {"messages": OK_MSG, **body}, 400))
        c.append(("/apply-template", {"messages": OK_MSG, **body}, 400))
    two = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"},
           {"role": "assistant", "content": "b"}]
    c.append((CHAT, {"messages": two}, 400))
    c.append(("/apply-template", {"messages": two}, 400))
    c.append(("/apply-template", {"messages": OK_MSG, "add_generation_prompt": "no"}, 400))
    return c


BAD_PATHS = [
    ("GET", "/nope", 404), ("GET", "/v2/chat/completions", 404), ("GET", "/v1/chat", 404),
    ("POST", "/v1/chat/completions/x", 404), ("POST", "/nope", 404), ("GET", "/favicon.ico", 404),
    ("GET", "/../../etc/passwd", 404), ("GET", "/%2e%2e/%2e%2e/etc/passwd", 404),
    ("GET", "/..%2f..%2fetc%2fpasswd", 404), ("GET", "/%2e%2e/server.py", 404),
    ("GET", "/../server.py", 404), ("GET", "/../__init__.py", 404), ("GET", "/./index.html/..", 404),
    ("GET", "/..\\..\\windows\\win.ini", 404), ("GET", "/%5c..%5cserver.py", 404),
    ("GET", "/web/../../server.py", 404), ("GET", "/%00", 404), ("GET", "/index.html%00.js", 404),
    ("GET", "//etc/passwd", 404), ("GET", "/.git/config", 404), ("GET", "/etc/passwd", 404),
    ("GET", "/%252e%252e/server.py", 404), ("DELETE", "/nothing", 404),
    ("GET", CHAT, 405), ("GET", "/completion", 405), ("GET", "/tokenize", 405),
    ("PUT", "/health", 405), ("DELETE", "/v1/models", 405), ("POST", "/health", 405),
    ("POST", "/props", 405), ("PATCH", "/", 405), ("PUT", CHAT, 405), ("OPTIONS", CHAT, 405),
    # Not UTF-8: Bottle dropped the bad bytes, so /%ff was the page and /health%ff health.
    ("GET", "/%ff", 400), ("GET", "/health%ff", 400), ("GET", "/v1/models%c3", 400),
]


def assert_error_shape(status, data, expected):
    assert status == expected, (status, data[:300])
    body = json.loads(data)
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert err["code"] == expected
    assert b"Traceback" not in data and b"<html" not in data.lower()


CASES = ([(f"bad-body-{name}-{route}", "POST", route, raw, 400)
          for name, raw in BAD_BODIES.items() for route in POST_ROUTES]
         + [(f"field-{i}-{route}", "POST", route, body, status)
            for i, (route, body, status) in enumerate(field_cases())]
         + [(f"path-{m}-{p}", m, p, None, s) for m, p, s in BAD_PATHS])


def test_there_are_enough_cases():
    assert len(CASES) >= 200


@pytest.mark.parametrize("name,method,path,body,status", CASES, ids=[c[0] for c in CASES])
def test_malformed_request(tiny_server, name, method, path, body, status):
    got, headers, data = http_request(method, tiny_server.url + path, body, timeout=30)
    if got != status:
        pytest.fail(f"{name}: expected {status}, got {got}: {data[:300]!r}")
    assert headers.get("content-type", "").startswith("application/json")
    assert_error_shape(got, data, status)


@pytest.mark.parametrize("route,base", [(CHAT, {"messages": OK_MSG}), ("/completion", {"prompt": "hi"})])
def test_an_unsupported_field_is_named_in_its_400(tiny_server, route, base):
    for key, v in UNSUPPORTED:
        status, r = post_json(tiny_server.url + route, {**base, key: v, "max_tokens": 1})
        assert status == 400 and f"'{key}'" in r["error"]["message"], (key, r)
    status, r = post_json(tiny_server.url + route, {**base, "grammar": "root ::= [a-z]+"})
    assert "'json_schema'" in r["error"]["message"] and "'response_format'" in r["error"]["message"]


def test_llama_server_defaults_are_accepted(tiny_server):
    """What llama-server's own web UI and clients send on every request: each sampler we
    do not have at the value that switches it off, and the fields that have no effect."""
    defaults = {"grammar": "", "mirostat": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1,
                "typical_p": 1.0, "dynatemp_range": 0.0, "dynatemp_exponent": 1.0,
                "dry_multiplier": 0.0, "dry_base": 1.75, "dry_allowed_length": 2,
                "dry_penalty_last_n": -1, "dry_sequence_breakers": ["\n", ":", "\"", "*"],
                "xtc_probability": 0.0, "xtc_threshold": 0.1, "top_n_sigma": -1.0,
                "min_keep": 0, "n_keep": 0, "n_cmpl": 1, "n_indent": 0, "id_slot": -1,
                "ignore_eos": False, "post_sampling_probs": False, "return_tokens": True,
                "timings_per_token": False, "samplers": "edkypmxt", "lora": [],
                "response_fields": [], "t_max_predict_ms": 0, "n_cache_reuse": 0}
    for route, base in [(CHAT, {"messages": OK_MSG}), ("/v1/completions", {"prompt": "hi"}),
                        ("/completion", {"prompt": "hi"})]:
        for extra in ({}, {"grammar": None, "samplers": ["dry", "top_k", "typ_p", "top_p",
                                                          "min_p", "xtc", "temperature"]}):
            status, r = post_json(tiny_server.url + route,
                                  {**base, **defaults, **extra, "max_tokens": 2})
            assert status == 200, (route, r)


def test_huge_body_is_413(tiny_server):
    big = b'{"prompt": "' + b"a" * (10 << 20) + b'"}'
    for route in ("/v1/chat/completions", "/completion", "/tokenize"):
        status, _, data = http_request("POST", tiny_server.url + route, big, timeout=60)
        assert_error_shape(status, data, 413)


def _raw_exchange(url, request: bytes) -> tuple[bytes, bytes]:
    """Send raw request bytes, half-close, read everything: (status line + headers, body)."""
    u = urllib.parse.urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def test_declared_huge_length_is_413_without_reading(tiny_server):
    head, body = _raw_exchange(
        tiny_server.url, b"POST /completion HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999\r\n\r\n{}")
    assert b" 413 " in head.split(b"\r\n")[0]
    assert_error_shape(413, body, 413)


def test_chunked_body_over_limit_is_413(tiny_server):
    u = urllib.parse.urlsplit(tiny_server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    chunks = (b"x" * 65536 for _ in range(40))   # 2.5 MB > the 1 MB limit
    conn.request("POST", "/tokenize", body=chunks, encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    r = conn.getresponse()
    assert_error_shape(r.status, r.read(), 413)
    conn.close()


def test_chunked_body_within_limit_works(tiny_server):
    u = urllib.parse.urlsplit(tiny_server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    conn.request("POST", "/tokenize", body=iter([b'{"content": ', b'"world"}']),
                 encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["tokens"]
    conn.close()


def test_malformed_chunked_body_is_400(tiny_server):
    head, body = _raw_exchange(
        tiny_server.url,
        b"POST /tokenize HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n")
    assert_error_shape(400, body, 400)


@pytest.fixture(scope="module")
def keyed_server():
    from tests.e2e.conftest import TINY, start_server
    h = start_server(TINY, "--api-key", "sekret-key")
    yield h
    h.stop()


AUTH_ROUTES = [("POST", CHAT, {"messages": OK_MSG, "max_tokens": 1}),
               ("POST", "/v1/completions", {"prompt": "a", "max_tokens": 1}),
               ("POST", "/completion", {"prompt": "a", "n_predict": 1}),
               ("POST", "/tokenize", {"content": "a"}), ("POST", "/detokenize", {"tokens": [5]}),
               ("POST", "/apply-template", {"messages": OK_MSG}), ("GET", "/v1/models", None),
               ("GET", "/props", None), ("GET", "/slots", None)]
BAD_AUTH = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer "},
            {"Authorization": "sekret-key"}, {"Authorization": "Basic c2VrcmV0LWtleQ=="},
            {"Authorization": "Bearer sekret-key2"}, {"Authorization": "Bearer sekret-ke"},
            {"X-Api-Key": "nope"},
            # bytes that are not UTF-8 (http.client sends these as latin-1): still a 401
            {"Authorization": "Bearer \xff"}, {"X-Api-Key": "sekret-k\xe9y"}]


def test_api_key_is_required(keyed_server):
    n = 0
    for method, path, body in AUTH_ROUTES:
        for hdrs in BAD_AUTH:
            status, headers, data = http_request(method, keyed_server.url + path, body, hdrs)
            assert_error_shape(status, data, 401)
            assert headers.get("www-authenticate") == "Bearer"
            n += 1
        status, _, data = http_request(method, keyed_server.url + path, body,
                                       {"Authorization": "Bearer sekret-key"})
        assert status == 200, (path, data[:200])
    assert n == len(AUTH_ROUTES) * len(BAD_AUTH)
    # The page and /health stay open, so the page can load and ask for the key.
    assert http_request("GET", keyed_server.url + "/health")[0] == 200
    status, headers, _ = http_request("GET", keyed_server.url + "/")
    assert status in (200, 404) and headers["content-type"].startswith(("text/html", "application/json"))
    # Without CORS enabled, no CORS header is sent.
    assert "access-control-allow-origin" not in headers


def test_server_is_healthy_afterwards(tiny_server):
    status, _, data = http_request("GET", tiny_server.url + "/health")
    assert status == 200
    status, r = post_json(tiny_server.url + "/completion", {"prompt": "Hi", "n_predict": 3})
    assert status == 200 and r["tokens_predicted"] >= 1
    assert "Traceback" not in tiny_server.output()
