"""What a security probe of the real server found (session 23), each fixed.

- JSON nested a few hundred levels deep parses (Python's parser goes to about 990), but
  the code that shows tools to a model without a tool format of its own walked it
  recursively: a tool's `parameters`, or an earlier call's `arguments`, 500 levels deep
  was a 500 "internal server error" instead of a 400 that says why.
- A POST (or PUT, DELETE...) on a path outside the page's directory answered 405 when a
  file of that name existed and 404 when not, before any --api-key check: anyone who
  could reach the server learned which files exist (`/../../../home/USER/.ssh/id_rsa`).
- A --slot-save-path file name of 242 to 255 bytes, which the name check allows, failed to
  save with a 500 ("File name too long"): the temporary file beside it is 14 bytes longer.
"""
import json

import pytest

from tests.e2e.conftest import TINY, http_request, post_json, start_server

KEY = "probe-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def nested(depth: int):
    """An object `depth` levels deep: {"a": {"a": ... "x" ...}}."""
    value = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    slots = tmp_path_factory.mktemp("slots")
    h = start_server(TINY, "--api-key", KEY, "--slot-save-path", slots)
    h.slot_dir = slots
    yield h
    h.stop()


def test_deeply_nested_tools_are_a_400_not_a_500(tiny_server):
    url = tiny_server.url
    deep = nested(600)  # well inside what the JSON parser takes
    tool = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": deep}}}}
    user = {"role": "user", "content": "hi"}
    call = {"role": "assistant", "content": None, "tool_calls": [{
        "id": "c1", "type": "function", "function": {"name": "f", "arguments": deep}}]}
    cases = [
        ("/v1/chat/completions", {"messages": [user], "max_tokens": 1, "tools": [tool]}),
        ("/v1/chat/completions", {"messages": [call, {"role": "tool", "tool_call_id": "c1",
                                                      "content": "ok"}, user], "max_tokens": 1}),
        ("/apply-template", {"messages": [user], "tools": [tool]}),
    ]
    for route, body in cases:
        status, r = post_json(url + route, body)
        assert status == 400, (route, status, r)
        assert "nested too deeply" in r["error"]["message"], r
    # Anthropic's route answers in its own error shape
    status, r = post_json(url + "/v1/messages", {
        "model": "m", "max_tokens": 1, "messages": [user],
        "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {"a": deep}}}]})
    assert status == 400 and r["type"] == "error", r
    assert r["error"]["type"] == "invalid_request_error" and "nested too deeply" in r["error"]["message"]
    # the same tool, shallow, is shown to the model (the tiny model's 256-token context
    # is too small to generate with it)
    shallow = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string"}}}}}
    status, r = post_json(url + "/apply-template", {"messages": [user], "tools": [shallow]})
    assert status == 200 and '"name": "f"' in r["prompt"], r


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_methods_do_not_tell_which_files_exist_outside_the_page(keyed_server, method):
    """runtime/web/../server.py exists, runtime/web/../no-such-file.py does not: without the
    key, both must get the same answer (404), as any path outside the page does."""
    url = keyed_server.url
    answers = {}
    for rel in ("../server.py", "../no-such-file.py", "../../../../../../../etc/passwd",
                "..%2fserver.py", "%2e%2e/server.py"):
        status, _, data = http_request(method, f"{url}/{rel}", b"{}")
        answers[rel] = status
        assert status == 404, (rel, status, data)
        assert json.loads(data)["error"]["code"] == 404
    # The page's own files and the API's paths still say which methods they take.
    status, headers, _ = http_request(method, url + "/app.js", b"{}")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    status, headers, _ = http_request(method, url + "/props", b"{}")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_a_slot_file_name_of_255_bytes_saves_and_restores(keyed_server):
    url, slot_dir = keyed_server.url, keyed_server.slot_dir
    status, r = post_json(url + "/completion", {"prompt": "hello there", "n_predict": 2}, AUTH)
    assert status == 200, r
    for name in ("x" * 251 + ".bin", "é" * 120 + "y" * 11 + ".bin"):  # 255 bytes each
        assert len(name.encode()) == 255
        status, r = post_json(url + "/slots/0?action=save", {"filename": name}, AUTH)
        assert status == 200, r
        assert (slot_dir / name).stat().st_size == r["n_written"]
        status, r = post_json(url + "/slots/0?action=restore", {"filename": name}, AUTH)
        assert status == 200 and r["n_restored"] > 0, r
    assert sorted(p.name for p in slot_dir.iterdir() if p.name.startswith(".")) == []
    # one byte more is refused by the name check, as docs/api.md says
    status, r = post_json(url + "/slots/0?action=save", {"filename": "x" * 256}, AUTH)
    assert status == 400 and "at most 255 bytes" in r["error"]["message"], r


def test_a_model_name_with_escape_sequences_is_not_printed_raw(tmp_path, server_factory):
    """A GGUF's general.name went to the terminal as it was, in the server's "model ...
    loaded" line and in `chatfile info`: a downloaded model could clear the user's
    screen, retitle the window or, where the terminal allows OSC 52, set the clipboard.
    The copy here has the fixture's name replaced by as many bytes of ESC ] 0 ; X BEL
    (set the title) and ESC [ 2 J (clear the screen)."""
    import subprocess
    import sys

    from tests.e2e.conftest import ROOT
    data = TINY.read_bytes()
    old = b"general.name" + (8).to_bytes(4, "little") + (10).to_bytes(8, "little") + b"tiny-llama"
    hostile = b"\x1b]0;X\x07\x1b[2J"
    assert data.count(old) == 1 and len(hostile) == 10  # the same length: nothing moves
    path = tmp_path / "hostile.gguf"
    path.write_bytes(data.replace(old, old[:-10] + hostile))

    h = server_factory(path)
    status, props = post_json(h.url + "/tokenize", {"content": "hi"})  # (the model is loaded)
    assert status == 200
    loaded = [line for line in h.lines if "loaded (" in line]
    assert loaded and not any(c in loaded[0] for c in "\x1b\x07"), loaded
    status, _, data = http_request("GET", h.url + "/props")
    name = json.loads(data)["model_name"]
    assert name and name.isprintable(), repr(name)
    out = subprocess.run([sys.executable, "-m", "runtime.cli", "info", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("name:") and "\x1b" not in out and "\x07" not in out, repr(out[:80])


def test_a_slot_save_over_a_directory_is_the_client_s_mistake(keyed_server):
    """A save named after a directory in --slot-save-path was a 500 ("Is a directory"),
    as a full disk is: it is a 400 that says to give another name, and the directory
    and the session stay as they were."""
    url, slot_dir = keyed_server.url, keyed_server.slot_dir
    (slot_dir / "chats").mkdir()
    status, r = post_json(url + "/slots/0?action=save", {"filename": "chats"}, AUTH)
    assert status == 400 and "is a directory" in r["error"]["message"], r
    assert (slot_dir / "chats").is_dir() and not any((slot_dir / "chats").iterdir())
    assert not [p for p in slot_dir.iterdir() if p.name.startswith(".")]
    status, r = post_json(url + "/slots/0?action=save", {"filename": "chats.bin"}, AUTH)
    assert status == 200, r
