"""Ctrl+Z at the chat's prompt, and the shell: while the chat is stopped the shell has the
terminal as it was before the chat began (its modes, no paste mode), and `fg` gives the
prompt what it needs (raw mode, paste mode on), so that a paste of several lines is still
one message; the same after `bg` and `fg` while the model loads (bash's `fg` sends no
SIGCONT then). A user's inputrc that turns readline's bracketed paste off is obeyed. On a
real pty (the harness of tests/e2e/test_terminal_pty.py), with readline and with the own
line editor, under dash and bash too; the model's turn is an echo of what it is sent."""
import contextlib
import os
import pty
import shutil
import signal
import sys
import termios
import textwrap
import types

import pytest

from runtime import terminal
from tests.e2e.conftest import ROOT, TINY
from tests.e2e.test_terminal_gaps import reader  # noqa: F401 - the fixture
from tests.e2e.test_terminal_keep import LOADING, _ends
from tests.e2e.test_terminal_load_paste import (CLI_LOADING, LINES, PASTE_ON, _echoctl_back,
                                                _paste_at_the_prompt, _paste_mode_left_off)
from tests.e2e.test_terminal_pty import ECHO, SCRIPT, Chat, _got, is_prompt
from tests.e2e.test_terminal_suspend_paste import (  # noqa: F401 - fixtures
    GNU_DOC, _ctrl_z, _fg, _paste_mode_on, _pasted, stoppable, with_readline)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")

TWO_LINES = ["first line", "second line"]


def _fresh_terminal_modes() -> list:
    """The modes a new pty starts in: those of the tests' pty before the chat began."""
    master, slave = pty.openpty()
    try:
        return termios.tcgetattr(slave)
    finally:
        os.close(master)
        os.close(slave)


def _in_raw_mode(c: Chat) -> bool:
    return not termios.tcgetattr(c.master)[3] & (termios.ICANON | termios.ECHO)


def _one_message_after_fg(c: Chat, out: bytes, fg=_fg) -> bytes:
    """`fg`, then a paste of two lines and Enter: answered as one message."""
    at = len(out)
    out += fg(c) or b""
    # Paste mode back on, and the prompt shown again (the shell wrote below it).
    out += c.read_until(lambda b: _paste_mode_on(out + b) and is_prompt(out[at:] + b), 30)
    assert _paste_mode_on(out) and is_prompt(out[at:]), out[at:]
    at = len(out)
    out += c.write(_pasted(out, TWO_LINES))
    out += c.read_until(lambda b: TWO_LINES[-1].encode() in out[at:] + b, 30)
    assert _in_raw_mode(c)  # the prompt's modes are back (read with them: one echo)
    out += c.write(b"\r")
    out += c.read_until(lambda b: b"got " in out[at:] + b and is_prompt(out + b), 30)
    assert _got("\n".join(TWO_LINES)) in out and out[at:].count(b"got ") == 1, out[at:]
    return out


def test_ctrl_z_at_the_prompt_gives_the_shell_its_terminal(reader, stoppable):
    """The chat stopped with the prompt's paste mode and raw mode on: a shell that does
    not reset them itself (dash, sh) got every paste wrapped in "^[[200~ ... ^[[201~", and
    its input without echo or line editing. `fg` gave the prompt back neither."""
    c = Chat(reader + ECHO, "xterm")
    try:
        out = c.read_until(is_prompt, 120)
        assert is_prompt(out) and _paste_mode_on(out), out
        _ctrl_z(c)
        out += c.read_until(lambda b: _paste_mode_left_off(out + b), 10)
        assert _paste_mode_left_off(out), out
        assert termios.tcgetattr(c.master) == _fresh_terminal_modes()
        out = _one_message_after_fg(c, out)
        c.write(b"\x04")
        out += _ends(c)
        assert _paste_mode_left_off(out) and _echoctl_back(c), out
    finally:
        c.close()



# Run where the chat's model has loaded: says which process to end should the test fail.
SAYS_PID = """
import os
print("PID", os.getpid(), flush=True)
"""


class ShellChat(Chat):
    """An interactive shell with job control, whose controlling terminal is a pty (the
    harness of tests/e2e/test_terminal_pty.py, with the shell where the chat was), in a
    session of its own: Ctrl+Z and `fg` are typed, as by a person."""

    def __init__(self, shell: str, env: dict, *options):
        self.chat_pid = None
        self.pid, self.master = pty.fork()
        if self.pid == 0:
            os.execve(shell, [shell, *options, "-i"], env)
        assert self.read_until(_shell_prompt, 30).endswith(b"$ ")

    def close(self):
        for pid in (self.chat_pid, self.pid):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.master)


def _shell_prompt(out: bytes) -> bool:
    return out.endswith(b"$ ")


def shell_and_script(name: str, tmp_path, hook: str, *options):
    """An interactive shell `name` on a pty (a skip where it is missing) and a chat script
    running the tiny model with `hook`, for the shell to start: (ShellChat, script)."""
    shell = shutil.which(name)
    if shell is None:
        pytest.skip(f"no {name} here")
    script = tmp_path / "chat.py"
    script.write_text(SCRIPT.format(tiny=str(TINY), hook=hook))
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8", TERM="xterm",
               PS1="$ ")
    env.pop("ENV", None)  # (no startup file)
    return ShellChat(shell, env, *options), script


def test_ctrl_z_at_the_prompt_under_dash(reader, tmp_path):
    """dash, as Debian's and Ubuntu's sh, resets no terminal modes when a job stops: it
    read its commands in the chat's raw mode (no echo), and with paste mode on."""
    c, script = shell_and_script("dash", tmp_path, reader + ECHO + SAYS_PID)
    try:
        shells = termios.tcgetattr(c.master)
        out = c.write(f"{sys.executable} {script}\r".encode())
        out += c.read_until(lambda b: b"PID" in out + b and is_prompt(out + b), 120)
        assert is_prompt(out) and _paste_mode_on(out), out
        c.chat_pid = int(out.split(b"PID ", 1)[1].split()[0])
        at = len(out)
        out += c.write(b"\x1a")  # Ctrl+Z
        out += c.read_until(lambda b: b"Stopped" in out[at:] + b and _shell_prompt(b), 30)
        assert b"Stopped" in out[at:] and _paste_mode_left_off(out), out[at:]
        assert termios.tcgetattr(c.master) == shells
        out = _one_message_after_fg(c, out, lambda c: c.write(b"fg\r"))
        at = len(out)
        out += c.write(b"\x04")
        out += c.read_until(lambda b: _shell_prompt(out[at:] + b), 30)
        assert _shell_prompt(out) and _paste_mode_left_off(out), out[at:]
        assert termios.tcgetattr(c.master) == shells
        c.write(b"exit\r")
    finally:
        c.close()


# --- the user's inputrc: `set enable-bracketed-paste off` is kept ---------------------------

@pytest.mark.parametrize("inputrc, on", [
    ("set enable-bracketed-paste off\n", False),
    ("SET Enable-Bracketed-Paste Off  # the choice\n", False),
    ("set enable-bracketed-paste 0\n", False),
    ("set enable-bracketed-paste yes\n", False),   # readline: "on" or "1" is on, else off
    ("set enable-bracketed-paste on\n", True),
    ("set enable-bracketed-paste 1\n", True),
    ("set enable-bracketed-paste\n", True),        # no value: on
    ("set enable-bracketed-paste off\nset enable-bracketed-paste on\n", True),  # the last
    ("# set enable-bracketed-paste off\nset bell-style none\n", True),
    ("$if Bash\nset enable-bracketed-paste off\n$endif\n", True),   # another program's
    ("$if Python\n  set enable-bracketed-paste off\n$endif\n", False),
    ("$if Bash\n$else\nset enable-bracketed-paste off\n$endif\n", False),
    ("$if term=xterm\nset enable-bracketed-paste off\n$endif\n", False),  # TERM=xterm-256color
    ("$if term=linux\nset enable-bracketed-paste off\n$endif\n", True),
    ("$if mode=vi\nset enable-bracketed-paste off\n$endif\n", True),
    ("set editing-mode vi\n$if mode=vi\nset enable-bracketed-paste off\n$endif\n", False),
    ("$if version >= 8.0\nset enable-bracketed-paste off\n$endif\n", False),
    ("$if Bash\n$if Perl\n$else\nset enable-bracketed-paste off\n$endif\n$endif\n", True),
    ("$include {included}\n", False),
    ("$include {included}\nset enable-bracketed-paste on\n", True),
    ("$include {self}\n", True),                   # a loop ends
])
def test_an_inputrc_that_turns_bracketed_paste_off_is_obeyed(monkeypatch, tmp_path,
                                                              inputrc, on):
    """Python's readline module turns bracketed paste off whatever the inputrc says, and
    the chat turned it on again, over a user's `set enable-bracketed-paste off`."""
    included = tmp_path / "included"
    included.write_text("set enable-bracketed-paste off\n")
    path = tmp_path / "inputrc"
    path.write_text(inputrc.format(included=included, self=path))
    monkeypatch.setenv("INPUTRC", str(path))
    monkeypatch.setenv("TERM", "xterm-256color")
    readline = types.ModuleType("readline", GNU_DOC)
    bound: list = []
    readline.parse_and_bind = bound.append
    assert terminal._readline_marks_pastes(readline) is on
    assert bound == (["set enable-bracketed-paste on"] if on else [])


def test_an_inputrc_that_includes_itself_many_times_is_read_a_bounded_number_of_times(
        monkeypatch, tmp_path):
    """Ten `$include` lines of itself were followed 10 deep: 10^8 reads, a chat that never
    showed its prompt. The includes followed in all are capped."""
    path = tmp_path / "inputrc"
    path.write_text(f"$include {path}\n" * 10 + "set enable-bracketed-paste off\n")
    monkeypatch.setenv("INPUTRC", str(path))
    reads, real = [], terminal._inputrc_lines

    def counted(p):
        reads.append(p)
        if len(reads) > 10 * terminal.INPUTRC_MAX_FILES:
            raise AssertionError("the includes are not bounded")
        return real(p)
    monkeypatch.setattr(terminal, "_inputrc_lines", counted)
    assert terminal._inputrc_value("enable-bracketed-paste") == "off"
    assert len(reads) <= terminal.INPUTRC_MAX_FILES + 1


def test_inputrc_files_are_looked_for_as_readline_does(monkeypatch, tmp_path):
    """$INPUTRC alone when set (readable or not), else ~/.inputrc, else /etc/inputrc."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".inputrc").write_text("set enable-bracketed-paste off\n")
    monkeypatch.delenv("INPUTRC", raising=False)
    assert terminal._inputrc_value("enable-bracketed-paste") == "off"
    monkeypatch.setenv("INPUTRC", str(tmp_path / "missing"))
    assert terminal._inputrc_value("enable-bracketed-paste") is None
    monkeypatch.setenv("INPUTRC", "")   # empty: as unset
    assert terminal._inputrc_value("enable-bracketed-paste") == "off"


def test_paste_mode_stays_off_at_the_readline_prompt_when_the_inputrc_says_so(
        with_readline, monkeypatch, tmp_path, stoppable):
    """On a terminal: no paste mode at the prompt, nor after Ctrl+Z and `fg`."""
    inputrc = tmp_path / "inputrc"
    inputrc.write_text("set enable-bracketed-paste off\n")
    monkeypatch.setenv("INPUTRC", str(inputrc))
    c = Chat(ECHO, "xterm")
    try:
        out = c.read_until(is_prompt, 120)
        assert is_prompt(out), out
        _ctrl_z(c)
        at = len(out)
        _fg(c)
        out += c.read_until(lambda b: is_prompt(out[at:] + b), 30)  # (shown again)
        assert is_prompt(out[at:]), out[at:]
        out += c.write(b"hello\r")
        out += c.read_until(lambda b: b"got " in out[at:] + b and is_prompt(out + b), 30)
        assert _got("hello") in out, out
        c.write(b"\x04")
        out += _ends(c)
        assert PASTE_ON not in out, out
    finally:
        c.close()


# --- `bg`, then `fg`, while the model loads ---------------------------------------------------

def test_bg_then_fg_while_the_model_loads_marks_pastes_again(reader, tmp_path):
    """bash's `fg` of a job running in the background (after `bg`) sends no SIGCONT: the
    rest of the load went without paste marks, and a paste then was one message a line.
    (bash without its line editor, whose own paste codes would hide the chat's.)"""
    flag = tmp_path / "loaded"
    loading = textwrap.indent(LOADING.format(flag=str(flag)), "    ")
    cli = CLI_LOADING.format(loading=loading, tiny=str(TINY))
    c, script = shell_and_script("bash", tmp_path, reader + ECHO + SAYS_PID + cli,
                                 "--norc", "--noprofile", "--noediting")
    try:
        out = c.write(f"{sys.executable} {script}\r".encode())
        out += c.read_until(lambda b: b"LOADING" in out + b, 120)
        assert b"LOADING" in out and _paste_mode_on(out), out
        c.chat_pid = int(out.split(b"PID ", 1)[1].split()[0])
        for keys, done in [(b"\x1a", b"Stopped"), (b"bg\r", b"&")]:  # Ctrl+Z, `bg`
            at = len(out)
            out += c.write(keys)
            out += c.read_until(lambda b: done in out[at:] + b and _shell_prompt(b), 30)
            assert done in out[at:] and _paste_mode_left_off(out), out[at:]
        at = len(out)
        out += c.write(b"fg\r")
        out += c.read_until(lambda b: _paste_mode_on(out[at:] + b), 30)
        assert _paste_mode_on(out[at:]) and not _echoctl_back(c), out[at:]
        at = len(out)
        out += c.write(_pasted(out, LINES))
        flag.touch()
        out += c.read_until(lambda b: _paste_at_the_prompt(out[at:] + b), 60)
        assert _paste_at_the_prompt(out[at:]), out[at:]
        out += c.write(b"\r")
        out += c.read_until(lambda b: b"got " in out[at:] + b and is_prompt(out + b), 30)
        assert _got("\n".join(LINES)) in out and out[at:].count(b"got ") == 1, out[at:]
        at = len(out)
        out += c.write(b"\x04")
        out += c.read_until(lambda b: _shell_prompt(out[at:] + b), 30)
        assert _paste_mode_left_off(out) and _echoctl_back(c), out[at:]
        c.write(b"exit\r")
    finally:
        c.close()
