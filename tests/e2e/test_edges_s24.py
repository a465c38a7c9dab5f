"""Edges left from the twenty-third session.

- A slot restore named after a named pipe (FIFO) in --slot-save-path hung the request's
  thread for ever: open() of a FIFO waits for a writer. A name that is no regular file
  (a FIFO, a link to one, a socket, a directory) is a 400 at once, and a save named after
  one no longer replaces it by its file; the server goes on serving.
- A bundle run with a bad option said "(`tiny.pyz --help` lists the options)", a command
  that runs nowhere but through PATH: it names the bundle as it was started (its path as
  typed, `./tiny.pyz` in the current directory, `python3 tiny.pyz` for a .pyz that is
  not executable), a command that works there.
- `chatfile stub -o some/missing/dir/name` made the missing folders, where `chatfile
  bundle -o` refuses: both refuse, with the same words, before any build. (Here, not in
  tests/bundler/: pytest takes a test file's base name as its module's name.)
"""
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bundler import cli, stub
from tests.e2e.conftest import (BUNDLE_MODEL, TINY, bundle_env, http_request,
                                session_bundle, start_server)

PORT = 19311  # this file's range: 19300-19399
HANG_GUARD_S = 20  # a request that waits this long hangs (it used to wait for ever)


@pytest.fixture(scope="module")
def slot_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("slots24")


@pytest.fixture(scope="module")
def slot_server(slot_dir):
    h = start_server(TINY, "--slot-save-path", slot_dir, "--port", PORT)
    yield h
    h.stop()


def _action(url, action, filename):
    status, _, data = http_request("POST", f"{url}/slots/0?action={action}",
                                   {"filename": filename}, timeout=HANG_GUARD_S)
    return status, json.loads(data)


def _refused(r, words):
    """llama-server's error shape, as the route's other 400s have it."""
    e = r["error"]
    return (e["code"] == 400 and e["type"] == "invalid_request_error" and words in e["message"]
            and "--slot-save-path directory" in e["message"])


def test_a_restore_of_a_named_pipe_is_refused_at_once(slot_server, slot_dir):
    os.mkfifo(slot_dir / "x")
    status, r = _action(slot_server.url, "restore", "x")
    assert status == 400 and _refused(r, "x is a named pipe (FIFO)"), r
    # Through a symbolic link planted beside it: the file opened is checked, not the name.
    os.symlink(slot_dir / "x", slot_dir / "link")
    status, r = _action(slot_server.url, "restore", "link")
    assert status == 400 and _refused(r, "link is a named pipe (FIFO)"), r
    # The server goes on: a save and its restore work, the pipe is untouched.
    assert http_request("GET", slot_server.url + "/health")[0] == 200
    assert _action(slot_server.url, "save", "ok.bin")[0] == 200
    status, r = _action(slot_server.url, "restore", "ok.bin")
    assert status == 200 and r["filename"] == "ok.bin", r
    assert stat.S_ISFIFO(os.lstat(slot_dir / "x").st_mode)


def test_a_save_named_after_a_pipe_or_a_socket_is_refused_and_leaves_it(slot_server, slot_dir):
    """The save's rename replaced a FIFO (or a socket, a device node) by the slot file:
    it never blocked, but the name was someone else's; as a directory's is, a 400."""
    os.mkfifo(slot_dir / "pipe")
    status, r = _action(slot_server.url, "save", "pipe")
    assert status == 400 and _refused(r, "pipe is a named pipe (FIFO)"), r
    assert stat.S_ISFIFO(os.lstat(slot_dir / "pipe").st_mode)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(slot_dir / "sock"))
        for action in ("save", "restore"):  # the restore said "No such device or address"
            status, r = _action(slot_server.url, action, "sock")
            assert status == 400 and _refused(r, "sock is a socket"), (action, r)
        assert stat.S_ISSOCK(os.lstat(slot_dir / "sock").st_mode)
    assert not [p for p in slot_dir.iterdir() if p.name.startswith(".")]  # no temp file left
    (slot_dir / "chats").mkdir()  # the restore said "could not read chats: Is a directory"
    status, r = _action(slot_server.url, "restore", "chats")
    assert status == 400 and _refused(r, "chats is a directory"), r


# -- a bundle's bad option names a command that runs ---------------------------------

def _hint(stderr: str) -> str:
    """The command in "(`CMD --help` lists the options)"."""
    assert stderr.startswith("chatfile: error: ") and stderr.count("\n") == 1, stderr
    start = stderr.index("(`") + 2
    return stderr[start:stderr.index("` lists the options)", start)]


def _runs_here(hint: str, cwd, env) -> bool:
    """Does the hint, typed into a shell in `cwd`, print the bundle's help?"""
    r = subprocess.run(["sh", "-c", hint], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=120)
    return r.returncode == 0 and r.stdout.startswith("usage: ")


def test_a_bundle_s_bad_option_names_a_command_that_runs(tmp_path_factory, tmp_path):
    if not shutil.which("sh"):
        pytest.skip("no sh to type the suggested command into")
    bundle = session_bundle(tmp_path_factory, "pyz")
    home = tmp_path / "x"
    home.mkdir()
    path = home / "tiny.pyz"
    shutil.copyfile(bundle, path)
    os.chmod(path, 0o755)
    env = bundle_env(tmp_path_factory)
    for argv0, cwd, want in (("./tiny.pyz", home, "./tiny.pyz --help"),
                             ("tiny.pyz", home, "./tiny.pyz --help"),  # python3 tiny.pyz
                             (str(path), tmp_path, f"{shlex.quote(str(path))} --help")):
        for bad in (["--bogus"], ["--port", "abc"], ["--t", "1"]):  # (--t: ambiguous)
            r = subprocess.run([sys.executable, argv0, *bad], cwd=cwd, env=env,
                               capture_output=True, text=True, timeout=120)
            assert r.returncode == 2 and "usage:" not in r.stderr, r.stderr
            assert _hint(r.stderr) == want, (argv0, bad, r.stderr)
        assert _runs_here(want, cwd, env), want
    # Not executable (a download loses the bit): only Python runs it, and is named.
    os.chmod(path, 0o644)
    r = subprocess.run([sys.executable, "tiny.pyz", "--bogus"], cwd=home, env=env,
                       capture_output=True, text=True, timeout=120)
    hint = _hint(r.stderr)
    assert r.returncode == 2 and hint.endswith(" tiny.pyz --help"), r.stderr
    assert _runs_here(hint, home, env), hint


# -- stub -o and bundle -o: one check of the output's directory ---------------------

def test_stub_and_bundle_refuse_a_missing_output_directory_alike(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "interrupt_on_termination", lambda: None)  # pytest's signals
    built = []

    def build(fmt, out, log=None):  # a build of a minute, faked
        built.append(out)
        Path(out).write_bytes(b"stub")
        return 0.0
    monkeypatch.setattr(stub, "build_stub", build)
    monkeypatch.setattr(stub, "prune_cache", lambda fmt, new: None)
    out = tmp_path / "some" / "missing" / "dir" / "name"
    said = f"chatfile: error: the output directory {out.parent} does not exist\n"
    assert cli.main(["bundle", str(BUNDLE_MODEL), "--format", "pyz", "-o", str(out),
                     "--stub", str(tmp_path / "no-stub")]) == 1
    assert capsys.readouterr().err == said
    assert cli.main(["stub", "--format", "pyz", "-o", str(out)]) == 1
    assert capsys.readouterr().err == said
    assert built == [] and not (tmp_path / "some").exists()
    # A directory that exists is taken, as before.
    (tmp_path / "here").mkdir()
    assert cli.main(["stub", "--format", "pyz", "-o", str(tmp_path / "here" / "s.pyz")]) == 0
    assert built == [str(tmp_path / "here" / "s.pyz")]
