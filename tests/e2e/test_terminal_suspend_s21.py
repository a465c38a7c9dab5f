"""A double Ctrl+Z, twenty-first session: Ctrl+Z, `fg`, and Ctrl+Z again at once, while
the chat is still taking its terminal back. On a real pty (the harness of
tests/e2e/test_terminal_pty.py), with readline and with the own line editor.

- With readline, Python ran the SIGCONT handler that takes the terminal back (raw mode,
  paste mode) as soon as the stop returned, while a Ctrl+Z was still the kernel's: that
  Ctrl+Z stopped the chat with the prompt's raw mode and paste mode left to the shell.
- With the own line editor the Ctrl+Z came inside the first one's handler, which took it
  for part of the first stop and dropped it: the chat went on in front.
"""
import os
import signal
import termios

import pytest

from tests.e2e.conftest import wait_for
from tests.e2e.test_terminal_gaps import reader  # noqa: F401 - the fixture
from tests.e2e.test_terminal_keep import _ends
from tests.e2e.test_terminal_load_paste import _paste_mode_left_off
from tests.e2e.test_terminal_pty import ECHO, Chat, is_prompt
from tests.e2e.test_terminal_stop_modes import _fresh_terminal_modes, _one_message_after_fg
from tests.e2e.test_terminal_suspend_paste import (  # noqa: F401 - the fixture
    _ctrl_z, _fg, stoppable)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")

# Run in the chat before it starts: once `armed` exists, the chat's next change of the
# terminal out of canonical mode (taking it back after `fg`) is made, then says
# "<taking>" and waits for `go`, so that the test's Ctrl+Z lands while the terminal is
# being taken back.
TAKE_WHEN_TOLD = """
import os, termios
_real_set_modes = terminal.set_modes
def _set_modes_when_told(fd, attrs):
    _real_set_modes(fd, attrs)
    if os.path.exists({armed!r}) and not attrs[3] & termios.ICANON:
        os.remove({armed!r})
        os.write(1, b"<taking>")
        end = time.monotonic() + 120
        while not os.path.exists({go!r}) and time.monotonic() < end:
            time.sleep(0.01)
terminal.set_modes = _set_modes_when_told
"""


def _stopped(c: Chat) -> bool:
    pid, status = os.waitpid(c.proc.pid, os.WNOHANG | os.WUNTRACED)
    return bool(pid) and os.WIFSTOPPED(status)


def test_a_ctrl_z_right_after_fg_stops_the_chat_again_with_the_shells_terminal(
        reader, stoppable, tmp_path):
    armed, go = tmp_path / "armed", tmp_path / "go"
    c = Chat(reader + ECHO + TAKE_WHEN_TOLD.format(armed=str(armed), go=str(go)), "xterm")
    try:
        out = c.read_until(is_prompt, 120)
        assert is_prompt(out), out
        _ctrl_z(c)
        armed.touch()
        _fg(c)
        out += c.read_until(lambda b: b"<taking>" in b, 60)
        assert b"<taking>" in out, out
        os.killpg(c.proc.pid, signal.SIGTSTP)  # the second Ctrl+Z
        go.touch()
        wait_for(lambda: _stopped(c), 30, "the Ctrl+Z after `fg` did not stop the chat")
        out += c.read_until(lambda b: _paste_mode_left_off(out + b), 10)
        assert termios.tcgetattr(c.master) == _fresh_terminal_modes()
        assert _paste_mode_left_off(out), out
        out = _one_message_after_fg(c, out)  # the prompt's modes back at the next `fg`
        c.write(b"\x04")
        _ends(c)
    finally:
        c.close()
