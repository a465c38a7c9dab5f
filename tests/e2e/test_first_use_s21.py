"""A first-time user and a first-time bundler, twenty-first session: what a 20-minute
session with a real bundle ran into that the earlier reviews did not check.

- A developer rebuilt a bundle under the name of the one still running
  (`chatfile bundle model.gguf -o my-chat --force`): the running one's next chat was
  "internal server error". PyInstaller reads each module it has not imported yet from the
  executable by name, and the name now held another file.
- A double-clicked bundle that stopped (Quit, its window closed) left its page saying
  "Start it again (for example `chatfile run`)": a command its user never typed. The page
  names the file to open again.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading

import pytest

from tests.e2e.conftest import (bundle_cmd, bundle_env, post_json, require_chromium, stop_process,
                                session_bundle, wait_for)
from tests.e2e.test_page import page_at

pytestmark = pytest.mark.slow


def _start_bundle(path, tmp_path_factory, fmt="exe", *extra_args):
    """The `fmt` bundle at `path` serving on a free port: (process, its output lines,
    its URL), once its model is loaded."""
    proc = subprocess.Popen([*bundle_cmd(path, fmt), "--no-browser", "--port", "0", *extra_args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=bundle_env(tmp_path_factory))
    lines: list[str] = []

    def drain():  # the server must never block on a full pipe
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=drain, daemon=True).start()
    wait_for(lambda: "weights)" in "".join(lines) or proc.poll() is not None, 120,
             "the bundle never loaded its model")
    assert proc.poll() is None, "".join(lines)
    url = re.search(r"http://127\.0\.0\.1:\d+", "".join(lines)).group(0)
    return proc, lines, url


def _stop(proc):
    stop_process(proc, 30)


def test_a_bundle_replaced_under_its_name_while_it_runs_still_answers(tmp_path, tmp_path_factory):
    answers_when_replaced_under_its_name(tmp_path / "my-chat", tmp_path_factory, "exe")


def answers_when_replaced_under_its_name(path, tmp_path_factory, fmt, *extra_args):
    """The `fmt` bundle copied to `path` and started answers chats after a new file was
    renamed over its name, and after that name was deleted."""
    shutil.copy(session_bundle(tmp_path_factory, fmt), path)
    proc, lines, url = _start_bundle(path, tmp_path_factory, fmt, *extra_args)
    try:
        # As `chatfile bundle --force` writes: a new file renamed over the name. Its bytes
        # are another stub's (a rebuilt runtime): here zeros, which no module reads as.
        new = path.with_name(path.name + ".new")
        new.write_bytes(bytes(path.stat().st_size))
        os.replace(new, path)
        status, r = post_json(url + "/v1/chat/completions",
                              {"messages": [{"role": "user", "content": "Say hello."}],
                               "max_tokens": 4, "temperature": 0}, timeout=120)
        assert status == 200, (r, "".join(lines)[-3000:])
        path.unlink()  # deleted as well: still the started file
        status, r = post_json(url + "/v1/completions", {"prompt": "Hi", "max_tokens": 2},
                              timeout=120)
        assert status == 200, (r, "".join(lines)[-3000:])
    finally:
        _stop(proc)


def test_the_page_of_a_stopped_bundle_says_to_open_that_file_again(tmp_path, tmp_path_factory,
                                                                   browser):
    require_chromium()
    path = tmp_path / "my-chat"
    shutil.copy(session_bundle(tmp_path_factory, "exe"), path)
    proc, lines, url = _start_bundle(path, tmp_path_factory)
    try:
        with page_at(browser, url + "/") as pg:
            # (the server's settings read: the count shows its context, --ctx 256)
            pg.wait_for_function(
                "() => document.getElementById('ctx').textContent.includes('/ 256')")
            _stop(proc)
            pg.wait_for_function("() => document.querySelector('[data-testid=error]')"
                                 ".textContent.includes('not running')", timeout=60_000)
            error = pg.text_content("[data-testid=error]")
    finally:
        _stop(proc)
    assert "open \u201cmy-chat\u201d again" in error and "chatfile run" not in error, error
