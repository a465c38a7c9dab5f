"""Requests that web pages of other sites make through the user's browser.

A server on 127.0.0.1 is reachable by every page the user's browser opens: by a "simple"
POST (text/plain, no CORS preflight) from any site, and, through DNS rebinding (a name
re-pointed at 127.0.0.1), as a page of its own origin that can read the replies. Both
arrive with headers that say so: a Host that is not a loopback name, an Origin that is not
the server's own. Clients that are not browsers (curl, the openai client) send neither.
"""
import json
import socket
import urllib.parse

import pytest

from tests.e2e.conftest import TINY, http_request

ASK = {"prompt": "hi", "n_predict": 1}


def raw(url, method, path, headers, body=b""):
    """(status, JSON body) of a request whose Host header is ours to choose."""
    u = urllib.parse.urlsplit(url)
    lines = [f"{method} {path} HTTP/1.1", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload) if payload.startswith(b"{") else payload


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "192.168.1.5:8080",
                                  "localhost.evil.example", "[::1", "127.0.0.1:x"])
def test_a_name_that_is_not_loopback_is_refused(tiny_server, host):
    """DNS rebinding: a page of evil.example, re-pointed at 127.0.0.1, read /props (which
    holds the model's absolute path) and the model's replies."""
    status, r = raw(tiny_server.url, "GET", "/props", {"Host": host})
    assert status == 403, r
    assert "localhost only" in r["error"]["message"] and r["error"]["code"] == 403
    status, r = raw(tiny_server.url, "POST", "/completion",
                    {"Host": host, "Content-Type": "application/json"}, json.dumps(ASK).encode())
    assert status == 403, r


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "127.0.0.2", "[::1]", "chat.localhost",
                                  "LocalHost", "localhost."])
def test_loopback_names_are_served(tiny_server, name):
    port = urllib.parse.urlsplit(tiny_server.url).port
    for host in (name, f"{name}:{port}"):
        status, r = raw(tiny_server.url, "GET", "/props", {"Host": host})
        assert status == 200 and r["n_ctx"] > 0, (host, r)


def test_a_post_from_another_sites_page_is_refused(tiny_server):
    """A "simple" POST (text/plain needs no preflight) from any page the user visits made
    the model generate."""
    own = tiny_server.url.rstrip("/")
    for origin in ("http://evil.example", "null", own + "0", "http://localhost"):
        status, _, data = http_request("POST", own + "/completion", json.dumps(ASK),
                                       headers={"Content-Type": "text/plain", "Origin": origin})
        assert status == 403, data
        assert b"--cors" in data
    # The chat page's own requests carry its own origin; other clients none.
    status, _, data = http_request("POST", own + "/completion", ASK, headers={"Origin": own})
    assert status == 200, data
    status, _, data = http_request("POST", own + "/completion", ASK)
    assert status == 200, data


def test_allow_host_serves_a_proxy_name(server_factory):
    """Behind a reverse proxy or a tunnel that passes its own name in Host (or rewrites
    Host and leaves the Origin), the server needs to be told that name; the 403 says how
    (it used to point at --host, which exposes the server to the network)."""
    h = server_factory(TINY, "--allow-host", "Chat.Example.com")
    status, r = raw(h.url, "GET", "/props", {"Host": "other.example"})
    assert status == 403 and "--allow-host other.example" in r["error"]["message"]
    status, r = raw(h.url, "GET", "/props", {"Host": "chat.example.com"})
    assert status == 200, r
    status, _, data = http_request("POST", h.url + "/completion", ASK,
                                   headers={"Origin": "https://chat.example.com"})
    assert status == 200, data


def test_cors_and_other_addresses_serve_everyone():
    """--cors serves other sites' pages; a server bound to another address (--host
    0.0.0.0) is reached under whatever name its network gives it."""
    from tests.e2e.test_api_llama import _fake_state, _wsgi_call
    cases = [({"cors": True}, {"HTTP_ORIGIN": "http://evil.example"}),
             ({"loopback_only": False}, {"HTTP_HOST": "my-laptop.lan:8080"})]
    for state, environ in cases:
        for kw in ({}, state):  # refused without the option, served with it
            st, app = _fake_state(**kw)
            status, _ = _wsgi_call(app, "GET", "/health", environ=environ)
            assert (status == 403) == (not kw), (kw, environ, status)  # (503: loading)
