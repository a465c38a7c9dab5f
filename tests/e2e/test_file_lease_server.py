"""`cp` over the model of a running server: it stops with one clear line, and the copy
goes through.

The model is memory-mapped and read during the load and, in quant mode, at every token
(f32 and int8 modes let go of the file after the load). `cp` truncates and rewrites the file in place, and the
server died of SIGBUS ("Bus error", status -7) at its next read past the new end, or
answered from a mix of the two files. Now a read lease (runtime/file_lease.py) holds the
copy back until the server has stopped.
"""
import http.client
import json
import shutil
import subprocess
import sys
import threading

import pytest

from runtime.file_lease import message
from tests.e2e.conftest import (MODELS, TINY, bundle_cmd, bundle_env, post_json,
                                session_bundle, start_server, wait_for)

OTHER = MODELS / "tiny-llama-q4_0.gguf"  # smaller: a read past its end is a SIGBUS
WAIT_S = 30  # far below the kernel's 45 s lease-break-time

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="file leases (F_SETLEASE) exist on Linux only")


def _copy_over_and_expect_a_clean_stop(proc, lines, path):
    cp = subprocess.Popen(["cp", str(OTHER), str(path)], stderr=subprocess.PIPE, text=True)
    try:
        status = proc.wait(WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert cp.wait(WAIT_S) == 0, cp.stderr.read()
    assert path.read_bytes() == OTHER.read_bytes()
    # The message is the last line; the pipe is drained by another thread.
    wait_for(lambda: message(str(path)) in "".join(lines), 10, "no message")
    out = "".join(lines)
    assert status == 1, out
    assert out.rstrip().endswith(message(str(path))), out
    assert "Traceback" not in out and "Exception" not in out, out


def _server(tmp_path, mode):
    path = tmp_path / "model.gguf"
    shutil.copy(TINY, path)
    h = start_server(path, "--mode", mode)
    assert f"{mode} weights)" in h.output()
    return h, path


def test_a_copy_over_the_model_stops_a_quant_server_in_the_middle_of_a_reply(tmp_path):
    h, path = _server(tmp_path, "quant")
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=WAIT_S)
    try:
        body = json.dumps({"prompt": "Once upon a time", "n_predict": 200,
                           "temperature": 0, "stream": True})
        conn.request("POST", "/completion", body, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        assert reply.status == 200 and reply.readline().startswith(b"data: ")  # under way
        _copy_over_and_expect_a_clean_stop(h.proc, h.lines, path)
    finally:
        conn.close()
        h.stop()


def test_a_copy_over_the_model_of_a_float32_server_goes_through_and_it_answers_as_before(tmp_path):
    """f32 mode copies every weight at load, the token embedding too, and lets go of the
    file: a copy over it goes through at once, and the server answers from the weights it
    holds. (The embedding stayed in the map: a copy stopped even an idle f32 server, and
    before the lease its next answer came from the new file's bytes, or a SIGBUS.)"""
    h, path = _server(tmp_path, "f32")
    try:
        ask = {"prompt": "Hello", "n_predict": 8, "temperature": 0}
        status, before = post_json(h.url + "/completion", ask)
        assert status == 200
        cp = subprocess.run(["cp", str(OTHER), str(path)], capture_output=True, text=True,
                            timeout=WAIT_S)
        assert cp.returncode == 0, cp.stderr
        assert path.read_bytes() == OTHER.read_bytes()
        status, after = post_json(h.url + "/completion", ask)
        assert status == 200 and after["content"] == before["content"], (before, after)
        assert h.proc.poll() is None, h.output()
    finally:
        h.stop()


@pytest.mark.slow
def test_a_copy_over_a_running_pyz_bundle_stops_it(tmp_path, tmp_path_factory):
    """A .pyz holds the model inside it and maps it the same way (here in quant mode,
    which reads it at every step). (An executable cannot
    be opened for writing while it runs: "Text file busy".)"""
    path = tmp_path / "chat.pyz"
    shutil.copy(session_bundle(tmp_path_factory, "pyz"), path)
    proc = subprocess.Popen([*bundle_cmd(path, "pyz"), "--no-browser", "--port", "0",
                             "--mode", "quant"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=bundle_env(tmp_path_factory))
    lines = []

    def drain():
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=drain, daemon=True).start()
    try:
        wait_for(lambda: "weights)" in "".join(lines) or proc.poll() is not None, 120,
                 "the bundle never loaded its model")
        assert proc.poll() is None, "".join(lines)
        _copy_over_and_expect_a_clean_stop(proc, lines, path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_copy_over_the_model_stops_a_terminal_chat_at_its_prompt(tmp_path):
    """`chatfile chat` maps the model too: at its prompt (a terminal in raw mode), a copy
    over the file ends the chat with the line, and the terminal gets its modes back."""
    import os
    import pty
    import termios

    from tests.e2e.conftest import ROOT
    from tests.e2e.test_terminal_pty import Chat, is_prompt
    path = tmp_path / "model.gguf"
    shutil.copy(TINY, path)
    c = Chat.__new__(Chat)  # its reading and closing, around `chatfile chat` itself
    c.master, slave = pty.openpty()
    modes = termios.tcgetattr(slave)
    c.proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "chat", str(path),
                               "--mode", "quant", "--ctx", "256"],
                              stdin=slave, stdout=slave, stderr=slave, cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT), TERM="dumb"),
                              start_new_session=True)
    try:
        assert is_prompt(c.read_until(is_prompt, 120))
        cp = subprocess.Popen(["cp", str(OTHER), str(path)], stderr=subprocess.PIPE, text=True)
        out = c.read_until(lambda b: message(str(path)).encode() in b, WAIT_S)
        assert c.proc.wait(WAIT_S) == 1, out
        assert cp.wait(WAIT_S) == 0, cp.stderr.read()
        assert b"Traceback" not in out, out
        assert termios.tcgetattr(slave)[3] == modes[3]  # lflag: canonical mode, echo back
    finally:
        os.close(slave)
        c.close()
