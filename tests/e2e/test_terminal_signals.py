"""A `kill` or a Ctrl+C at the terminal chat's prompt is heard at once, not at the next
key. CPython runs a Python signal handler when its main thread runs Python code or is
woken from a wait by the signal. GNU readline (behind input()) draws the prompt, sets
itself up, then waits for a key with no timeout: a signal that landed in between woke
nothing (2-6 of 15 chats signalled as their first prompt appeared, on a loaded 2-core
machine). Here that race is made certain: the chat's main thread blocks the signals, so
the kernel gives them to another thread, where CPython notes them and wakes nothing
(runtime/signal_wake.py then wakes the main thread). On a real pty (the harness of
tests/e2e/test_terminal_pty.py), with readline and with the own line editor."""
import os
import signal
import subprocess

import pytest

from tests.e2e.test_terminal_gaps import reader  # noqa: F401 - the fixture
from tests.e2e.test_terminal_keep import _started
from tests.e2e.test_terminal_pty import ECHO, _got, _sent, is_prompt

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")

# Run in the chat before it starts: an idle thread, which does not block the signals,
# takes them.
UNHEARD = """
import threading
threading.Thread(target=threading.Event().wait, daemon=True).start()
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
"""
WAIT_S = 60  # unheard, a signal waits for a key that never comes


@pytest.mark.parametrize("term", ["dumb", "xterm"])
def test_a_kill_that_woke_nothing_at_the_prompt_ends_the_chat(reader, term):
    import termios
    c = _started(reader, term, ECHO + UNHEARD)
    try:
        c.proc.send_signal(signal.SIGTERM)
        try:
            code = c.proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 128 + signal.SIGTERM, (code, c.read_until(lambda b: False, 1))
        lflag = termios.tcgetattr(c.master)[3]  # the terminal's modes given back
        assert lflag & termios.ECHO and lflag & termios.ICANON
    finally:
        c.close()


def test_a_ctrl_c_that_woke_nothing_at_the_prompt_keeps_the_chat(reader):
    c = _started(reader, "dumb", ECHO + UNHEARD)
    try:
        c.ctrl_c()
        out = c.read_until(lambda b: b"Ctrl+D" in b and is_prompt(b), WAIT_S)
        assert b"(use Ctrl+D or /exit to quit)" in out and is_prompt(out), out
        out = _sent(c, b"still here\r")
        assert _got("still here") in out, out
        c.write(b"\x04")
        assert c.proc.wait(30) == 0
    finally:
        c.close()
