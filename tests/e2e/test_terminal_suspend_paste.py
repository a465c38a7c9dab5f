"""Paste mode and the shell: Ctrl+Z while the model loads gives the shell a normal
terminal (no paste mode, its own modes) and `fg` takes it back; with GNU readline at the
prompt, a paste of several lines is one message. On a real pty (the harness of
tests/e2e/test_terminal_pty.py); the model's turn is an echo of what it is sent."""
import os
import signal
import sys
import types

import pytest

from runtime import terminal
from tests.e2e.test_terminal_gaps import reader  # noqa: F401 - the fixture
from tests.e2e.test_terminal_keep import _ends
from tests.e2e.test_terminal_load_paste import (LINES, PASTE, PASTE_OFF, PASTE_ON,
                                                _cli_loading, _echoctl_back,
                                                _paste_at_the_prompt, _paste_mode_left_off,
                                                _pasted_while_loading)
from tests.e2e.test_terminal_pty import ECHO, Chat, _got, is_prompt

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")


@pytest.fixture
def stoppable(monkeypatch):
    """The chat in a process group of its own in the tests' session, as a shell with job
    control starts a command: not an orphan, so a SIGTSTP stops it."""
    options = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    monkeypatch.setattr(Chat, "POPEN_OPTIONS", options)


def _ctrl_z(c: Chat) -> None:
    """What the terminal does on Ctrl+Z; returns once the chat has stopped."""
    os.killpg(c.proc.pid, signal.SIGTSTP)
    assert os.WIFSTOPPED(os.waitpid(c.proc.pid, os.WUNTRACED)[1])


def _fg(c: Chat) -> None:
    os.killpg(c.proc.pid, signal.SIGCONT)


def test_ctrl_z_after_the_load_is_as_before():
    """The load's handlers go when it ends: at the prompt, and while an answer is
    written, a Ctrl+Z is what it was (the load's would give the shell its modes, and set
    the load's again on `fg`, canonical ones, under a line reader in raw mode)."""
    before = signal.getsignal(signal.SIGTSTP), signal.getsignal(signal.SIGCONT)
    with terminal._given_back_while_stopped(0, lambda: None, lambda: None):
        assert signal.getsignal(signal.SIGTSTP) is not before[0]
    assert (signal.getsignal(signal.SIGTSTP), signal.getsignal(signal.SIGCONT)) == before


def _paste_mode_on(out: bytes) -> bool:
    return out.rfind(PASTE_ON) > out.rfind(PASTE_OFF)


def test_ctrl_z_while_the_model_loads_gives_the_shell_a_normal_terminal(reader, tmp_path,
                                                                         stoppable):
    """The chat stopped with paste mode on and ECHOCTL off until `fg`: the shell got
    "^[[200~ ... ^[[201~" around every paste, and no ^C shown for a Ctrl+C. Now the shell
    has the terminal as it was; `fg` turns paste mode back on for the rest of the load,
    and a paste then is still one message."""
    c, loaded, out = _cli_loading(reader, "xterm", tmp_path)
    try:
        assert _paste_mode_on(out) and not _echoctl_back(c), out
        _ctrl_z(c)
        # (Stopped: all it wrote is there to read; nothing more comes.)
        out += c.read_until(lambda b: _paste_mode_left_off(out + b), 10)
        assert _paste_mode_left_off(out), out
        assert _echoctl_back(c)
        _fg(c)
        out += c.read_until(lambda b: _paste_mode_on(out + b), 30)
        assert _paste_mode_on(out) and not _echoctl_back(c), out
        at = len(out)
        out += _pasted_while_loading(c, PASTE)
        loaded.touch()
        out += c.read_until(lambda b: _paste_at_the_prompt(out[at:] + b), 60)
        out += c.write(b"\r")
        out += c.read_until(lambda b: b"got " in out[at:] + b and is_prompt(out + b), 60)
        assert _got("\n".join(LINES)) in out and out.count(b"got ") == 1, out
        c.write(b"\x04")
        out += _ends(c)
        assert b"^[" not in out, out
        assert _paste_mode_left_off(out) and _echoctl_back(c), out
    finally:
        c.close()


def _pasted(out: bytes, lines: list[str]) -> bytes:
    """What a terminal sends for a paste of `lines`: marked when the program has turned
    paste mode on (the last of its codes in `out`), else the bare keys."""
    keys = "\r".join(lines).encode()
    return b"\x1b[200~" + keys + b"\x1b[201~" if _paste_mode_on(out) else keys


@pytest.fixture
def with_readline():
    pytest.importorskip("readline", reason="this Python has no readline module")
    import readline
    if "libedit" in (readline.__doc__ or ""):
        pytest.skip("readline is libedit here: pastes go line by line (see the test below)")


@pytest.mark.parametrize("end", ["Ctrl+D", "kill"])
def test_a_paste_at_the_readline_prompt_is_one_message(with_readline, end):
    """Python's readline module turns GNU readline's bracketed paste off: the terminal
    was never told to mark a paste, and a paste of 3 lines was 3 messages with 3 answers.
    Now paste mode is on while readline reads a line (off while the answer is written,
    and after the chat, however it ends), and the paste is one message, its line ends
    kept."""
    c = Chat(ECHO, "xterm")
    try:
        out = c.read_until(is_prompt, 120)
        assert _paste_mode_on(out), out
        at = len(out)
        out += c.write(_pasted(out, LINES))
        out += c.read_until(lambda b: LINES[-1].encode() in out[at:] + b, 30)
        out += c.write(b"\r")
        out += c.read_until(lambda b: b"got " in out[at:] + b and is_prompt(out + b), 30)
        assert _got("\n".join(LINES)) in out and out.count(b"got ") == 1, out
        answer = out.rindex(b"got ")
        assert not _paste_mode_on(out[:answer]) and _paste_mode_on(out), out
        if end == "Ctrl+D":
            c.write(b"\x04")
            out += _ends(c)
        else:
            c.proc.send_signal(signal.SIGTERM)
            out += c.read_until_ended(30)
            assert c.proc.wait(30) == 128 + signal.SIGTERM, out
        assert _paste_mode_left_off(out), out
    finally:
        c.close()


GNU_DOC = "Importing this module enables command line editing using GNU readline."
LIBEDIT_DOC = "Importing this module enables command line editing using libedit readline."


@pytest.mark.parametrize("doc, term, bound", [
    (GNU_DOC, "xterm", ["set enable-bracketed-paste on"]),
    (LIBEDIT_DOC, "xterm", []),  # its init lines are another language: left as it was
    (GNU_DOC, "dumb", []),       # a terminal that may show the codes as text
], ids=["GNU readline", "libedit", "dumb terminal"])
def test_bracketed_paste_is_turned_on_for_gnu_readline_only(monkeypatch, doc, term, bound):
    monkeypatch.setenv("TERM", term)
    readline = types.ModuleType("readline", doc)
    lines: list = []
    readline.parse_and_bind = lines.append
    terminal._readline_marks_pastes(readline)
    assert lines == bound
