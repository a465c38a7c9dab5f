"""--slot-save-path over HTTP: llama-server's POST /slots/{id}?action=save|restore|erase.

A prompt's state saved to a file, the slot erased, the file restored (also by a server
started afresh): a prompt that shares the prefix then evaluates only its new tokens
(timings' cache_n and prompt_n), and replies as a fresh prefill does. Without the option
the actions are a 501, as llama-server's; names that are paths, other slots and files
that are not this model's are 400s that leave the slot as it was.
"""
import json
import os
import threading
import time

import numpy as np
import pytest

from tests.e2e.conftest import MODELS, TINY, http_request, post_json, start_server
from tests.e2e.test_api_llama import _slots
from tests.e2e.test_prompt_cache_e2e import _completion
from tests.runtime.test_cli import chatfile


@pytest.fixture(scope="module")
def slot_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("slots")


@pytest.fixture(scope="module")
def slot_server(slot_dir):
    # --cache-ram 0: what comes back after an erase comes from the file, not from RAM
    h = start_server(TINY, "--slot-save-path", slot_dir, "--cache-ram", "0")
    yield h
    h.stop()


def _action(url, action, body=None, slot="0"):
    status, _, data = http_request("POST", f"{url}/slots/{slot}?action={action}", body)
    return status, json.loads(data)


def _prompt(seed, n):
    rng = np.random.default_rng(seed)
    return [1] + [int(x) for x in rng.integers(3, 500, n)]


def test_save_erase_restore_then_only_the_new_tokens_are_evaluated(slot_server, slot_dir):
    url = slot_server.url
    a, more = _prompt(31, 120), _prompt(32, 6)[1:]
    _completion(url, a)
    status, r = _action(url, "save", {"filename": "a.bin"})
    assert status == 200, r
    size = (slot_dir / "a.bin").stat().st_size
    assert r["id_slot"] == 0 and r["filename"] == "a.bin" and r["n_saved"] == len(a)
    assert r["n_written"] == size and r["timings"]["save_ms"] >= 0
    assert _action(url, "erase") == (200, {"id_slot": 0, "n_erased": len(a)})
    assert _slots(url)["n_past"] == 0
    status, r = _action(url, "restore", {"filename": "a.bin"})
    assert status == 200, r
    assert (r["id_slot"], r["filename"], r["n_restored"], r["n_read"]) == (0, "a.bin", len(a), size)
    assert r["timings"]["restore_ms"] >= 0 and _slots(url)["n_past"] == len(a)
    reply = _completion(url, a + more, n_predict=6)
    assert (reply["timings"]["cache_n"], reply["timings"]["prompt_n"]) == (len(a), len(more))
    status, fresh = post_json(url + "/completion", {"prompt": a + more, "n_predict": 6,
                                                    "temperature": 0, "cache_prompt": False})
    assert reply["content"] == fresh["content"]


def test_a_server_started_afresh_restores_the_file(slot_server, slot_dir, server_factory):
    a = _prompt(33, 90)
    _completion(slot_server.url, a)
    assert _action(slot_server.url, "save", {"filename": "b.bin"})[0] == 200
    url = server_factory(TINY, "--slot-save-path", slot_dir, "--ctx", "512").url
    assert _action(url, "restore", {"filename": "b.bin"})[1]["n_restored"] == len(a)
    t = _completion(url, a + [7, 8])["timings"]
    assert (t["cache_n"], t["prompt_n"]) == (len(a), 2)


def test_a_save_waits_for_the_reply_being_generated(slot_server):
    """The save runs between requests: it holds the whole reply, never part of one."""
    url = slot_server.url
    a, n_predict = _prompt(34, 40), 200
    done = {}
    # sampled, so one token a step (greedy speculation may evaluate drafts past the end)
    t = threading.Thread(target=lambda: done.update(r=post_json(url + "/completion", {
        "prompt": a, "n_predict": n_predict, "temperature": 1.0, "seed": 3,
        "ignore_eos": True}, timeout=300)))
    t.start()
    deadline = time.monotonic() + 120
    while t.is_alive() and not _slots(url)["is_processing"] and time.monotonic() < deadline:
        time.sleep(0.01)  # polling a condition, not a guess at a duration
    status, r = _action(url, "save", {"filename": "c.bin"})
    t.join(300)
    assert status == 200 and done["r"][0] == 200
    assert r["n_saved"] == len(a) + n_predict  # the last token is evaluated too


@pytest.mark.parametrize("name", ["../escaped.bin", "sub/x.bin", "..", "", "/tmp/x.bin",
                                  "a\\b.bin", None])
def test_a_name_that_is_a_path_is_refused(slot_server, slot_dir, name):
    for action in ("save", "restore"):
        status, r = _action(slot_server.url, action, {"filename": name})
        assert status == 400 and "Invalid filename" in r["error"]["message"]
    assert not (slot_dir.parent / "escaped.bin").exists() and not os.path.exists("/tmp/x.bin")


def test_other_slots_actions_and_files_are_400s_that_leave_the_slot_alone(slot_server, slot_dir):
    url = slot_server.url
    _completion(url, _prompt(35, 30))
    held = _slots(url)["n_past"]
    (slot_dir / "junk.bin").write_bytes(b"not a slot file at all" * 10)
    for slot, action, body, words in [
            ("1", "save", {"filename": "x.bin"}, "Invalid slot ID"),
            ("abc", "erase", None, "Invalid slot ID"),
            ("0", "load", {"filename": "x.bin"}, "Invalid action"),
            ("0", "restore", {"filename": "missing.bin"}, "no file missing.bin"),
            ("0", "restore", {"filename": "junk.bin"}, "not a chatfile slot file"),
            ("0", "save", {}, "Invalid filename")]:
        status, r = _action(url, action, body, slot=slot)
        assert status == 400 and words in r["error"]["message"], (slot, action, r)
    assert _slots(url)["n_past"] == held


def test_another_model_s_file_is_refused(slot_server, slot_dir, server_factory):
    _completion(slot_server.url, _prompt(36, 20))
    assert _action(slot_server.url, "save", {"filename": "llama.bin"})[0] == 200
    url = server_factory(MODELS / "tiny-qwen2-q8_0.gguf", "--slot-save-path", slot_dir).url
    status, r = _action(url, "restore", {"filename": "llama.bin"})
    assert status == 400 and "saved by another model" in r["error"]["message"]


def test_without_slot_save_path_the_actions_are_refused(tiny_server):
    for action, body in (("save", {"filename": "x.bin"}), ("restore", {"filename": "x.bin"}),
                         ("erase", None)):
        status, r = _action(tiny_server.url, action, body)
        assert status == 501 and r["error"]["type"] == "not_supported_error"
        assert "Start it with `--slot-save-path`" in r["error"]["message"]


def test_slot_save_path_must_be_a_directory(tmp_path):
    r = chatfile("run", TINY, "--no-browser", "--port", "0", "--slot-save-path",
                 tmp_path / "nope", timeout=60)
    assert r.returncode == 1 and "--slot-save-path: not a directory" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
