"""Ctrl+Z and the shell where tests/e2e/test_terminal_stop_modes.py does not look: while
an answer is written, and `kill` of a chat that a Ctrl+Z stopped. On a real pty (the
harness of tests/e2e/test_terminal_pty.py), with readline and with the own line editor,
under bash too; the model's turn is replaced by one that takes a while, or an echo."""
import os
import signal
import sys
import termios

import pytest

from tests.e2e.test_terminal_gaps import ANSWER_UNTIL, reader  # noqa: F401 - the fixture
from tests.e2e.test_terminal_pty import ECHO, Chat, is_prompt
from tests.e2e.test_terminal_stop_modes import (SAYS_PID, _fresh_terminal_modes,
                                                _shell_prompt, shell_and_script)
from tests.e2e.test_terminal_suspend_paste import _ctrl_z, _fg, stoppable  # noqa: F401
from tests.runtime.test_leftovers import process_ended

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")


def test_ctrl_z_while_an_answer_is_written_gives_the_shell_its_terminal(reader, tmp_path,
                                                                         stoppable):
    """The chat keeps the terminal out of canonical mode while it writes an answer (so
    that a Ctrl+D then is a byte): a Ctrl+Z then stopped it so, and a shell that does not
    reset the modes itself (dash, sh) read its commands without line editing (Backspace
    went into the command as ^?). Now the shell has its modes; `fg` goes on with the
    answer out of canonical mode, and a Ctrl+D typed then ends the chat after it."""
    flag = tmp_path / "answered"
    c = Chat(reader + ANSWER_UNTIL.format(flag=str(flag)), "xterm")
    try:
        assert is_prompt(c.read_until(is_prompt, 120))
        out = c.write(b"Tell me a story\r")
        out += c.read_until(lambda b: b"ANSWER BEGINS" in out + b, 30)
        assert b"ANSWER BEGINS" in out, out
        _ctrl_z(c)
        assert termios.tcgetattr(c.master) == _fresh_terminal_modes()
        _fg(c)
        out += c.read_until(lambda b: not termios.tcgetattr(c.master)[3] & termios.ICANON
                            or b"ANSWER ENDS" in b, 30)
        assert not termios.tcgetattr(c.master)[3] & termios.ICANON
        c.write(b"\x04")  # Ctrl+D, while the answer is still being written
        flag.touch()
        out += c.read_until_ended(30)
        assert b"ANSWER ENDS" in out and c.proc.wait(30) == 0, out
    finally:
        c.close()


def _gone(pid: int) -> bool:
    """Whether the process has ended. A zombie counts: bash does not always reap a job
    that ends during its `kill` builtin before its next command (seen under load: the
    chat had ended, and was still a zombie 30 s later, bash waiting at its prompt)."""
    if sys.platform.startswith("linux"):
        return process_ended(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("how", ["stopped", "after bg"])
def test_kill_of_a_chat_in_the_background_ends_it(reader, tmp_path, how):
    """Ctrl+Z, then `kill %1` (or `bg`, then `kill PID`): the chat put its terminal modes
    back on the way out, from the background, where that stops a process (SIGTTOU): it
    stayed "Stopped", and ended only after an `fg`. The own line editor was stopped so at
    `bg` already. The terminal is the shell's then, given back at the Ctrl+Z: the chat
    ends as the signal ends a program."""
    c, script = shell_and_script("bash", tmp_path, reader + ECHO + SAYS_PID,
                                 "--norc", "--noprofile", "--noediting")
    try:
        shells = termios.tcgetattr(c.master)
        out = c.write(f"{sys.executable} {script}\r".encode())
        out += c.read_until(lambda b: b"PID" in out + b and is_prompt(out + b), 120)
        assert is_prompt(out), out
        c.chat_pid = int(out.split(b"PID ", 1)[1].split()[0])
        for keys, done in [(b"\x1a", b"Stopped")] + [(b"bg\r", b"&")] * (how == "after bg"):
            at = len(out)
            out += c.write(keys)
            out += c.read_until(lambda b: done in out[at:] + b and _shell_prompt(b), 30)
            assert done in out[at:], out[at:]
        at = len(out)
        if how == "stopped":
            out += c.write(b"kill %1\r")  # (the shell sends SIGTERM, then SIGCONT)
        else:  # (not typed: a chat running in the background could read the keys first)
            os.kill(c.chat_pid, signal.SIGTERM)
        out += c.read_until(lambda b: _gone(c.chat_pid), 30)
        assert _gone(c.chat_pid), out[at:]
        c.chat_pid = None
        assert termios.tcgetattr(c.master) == shells
        c.write(b"exit\r")
    finally:
        c.close()
