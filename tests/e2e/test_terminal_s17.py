"""Job control at the chat's prompt where a shell's `bg` comes in: a terminal resized
while the chat runs in the background, and keys typed at the shell then. The shell is a small one of the test's own (JOB_SHELL), which does what
bash does, told by the test through a pipe rather than typed: a command typed at a real
shell can also wake the chat in the background, and the test would not know which came
first. With readline and with the own line editor; the model's turn is an echo."""
import os
import pty
import signal
import sys

import pytest

from tests.e2e.conftest import ROOT, TINY
from tests.e2e.test_terminal_gaps import reader  # noqa: F401 - the fixture
from tests.e2e.test_terminal_pty import ECHO, NO_READLINE, SCRIPT, Chat, _got, is_prompt
from tests.e2e.test_terminal_stop_modes import _in_raw_mode
from tests.e2e.test_terminal_resize_stop import (assert_edited_across_the_wrap,
                                                 backspace_across_the_wrap)
from tests.e2e.test_terminal_suspend_paste import _paste_mode_on
from tests.runtime.test_line_input import Screen, _set_size

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")

# A shell with job control, the session leader of the pty: it starts the chat (argv[3]) as
# a job in front, and obeys one command a line from its pipe (argv[1]), answering on
# argv[2]: "read" (a line typed to it), "status" (the job stopped or not, now), "wait"
# (until the job stops or ends; a stopped job gives the terminal back, as bash takes it),
# "bg" (SIGCONT, the terminal kept), "fg" (the terminal to the job, with SIGCONT only if
# it is stopped: bash's `fg` of a running job sends none).
JOB_SHELL = """
import os, signal, sys
commands, answers = os.fdopen(int(sys.argv[1])), int(sys.argv[2])
signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # (a shell takes the terminal from behind)
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    os.tcsetpgrp(0, os.getpgrp())
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
    os.execv(sys.executable, [sys.executable, sys.argv[3]])
try:
    os.setpgid(pid, pid)
except OSError:  # (the job has set it already, and run its program)
    pass
stopped = False
os.write(answers, f"job {pid}\\n".encode())
for line in commands:
    command = line.strip()
    if command == "wait":
        _, status = os.waitpid(pid, os.WUNTRACED)
        stopped = os.WIFSTOPPED(status)
        if stopped:
            os.tcsetpgrp(0, os.getpgrp())
        said = f"stopped {os.WSTOPSIG(status)}" if stopped else f"ended {status}"
        os.write(answers, (said + "\\n").encode())
    elif command == "read":  # what was typed at the shell, read as the shell would
        os.write(answers, repr(os.read(0, 1024)).encode() + b"\\n")
    elif command == "status":  # the job stopped (and by which signal), or not
        pid_now, status = os.waitpid(pid, os.WNOHANG | os.WUNTRACED)
        stopped = stopped or bool(pid_now)
        said = f"stopped {os.WSTOPSIG(status)}" if pid_now else "not stopped"
        os.write(answers, (said + "\\n").encode())
    elif command == "bg":
        stopped = False
        os.killpg(pid, signal.SIGCONT)
    elif command == "fg":
        os.tcsetpgrp(0, pid)
        if os.waitpid(pid, os.WNOHANG | os.WUNTRACED)[0]:  # (bash learns it from SIGCHLD)
            stopped = True
        if stopped:
            stopped = False
            os.killpg(pid, signal.SIGCONT)
"""


class JobShell(Chat):
    """The chat (the harness of tests/e2e/test_terminal_pty.py, `hook` run in it) as a job
    of JOB_SHELL, on a pty that is their controlling terminal."""

    def __init__(self, hook: str, tmp_path, term="xterm", cols=80):
        script = tmp_path / "chat.py"
        script.write_text(SCRIPT.format(tiny=str(TINY), hook=hook))
        shell = tmp_path / "shell.py"
        shell.write_text(JOB_SHELL)
        commands, self.commands = os.pipe()
        self.answers, answers = os.pipe()
        for fd in (commands, answers):
            os.set_inheritable(fd, True)
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8", TERM=term)
        self.pid, self.master = pty.fork()
        if self.pid == 0:
            os.execve(sys.executable, [sys.executable, str(shell), str(commands),
                                       str(answers), str(script)], env)
        os.close(commands)
        os.close(answers)
        _set_size(self.master, cols)
        self.job = int(self.answer().split()[1])

    def tell(self, command: str) -> None:
        os.write(self.commands, command.encode() + b"\n")

    def answer(self) -> str:
        said = b""
        while not said.endswith(b"\n"):
            chunk = os.read(self.answers, 1)
            assert chunk, "the shell ended"
            said += chunk
        return said.decode().strip()

    def wait(self) -> str:
        """What the job did next: "stopped N" (by signal N) or "ended STATUS"."""
        self.tell("wait")
        return self.answer()

    def close(self):
        for pid in (self.job, self.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.waitpid(self.pid, 0)
        for fd in (self.master, self.commands, self.answers):
            os.close(fd)


def _typed(c: JobShell, out: bytes, keys: bytes) -> bytes:
    """Type keys at the prompt, once they are echoed."""
    at = len(out)
    out += c.write(keys)
    out += c.read_until(lambda b: keys in out[at:] + b, 30)
    assert keys in out[at:], out[at:]
    return out


def _ctrl_z_then_bg(c: JobShell) -> None:
    c.write(b"\x1a")  # the terminal stops the job in front
    assert c.wait() == f"stopped {signal.SIGTSTP}"
    c.tell("bg")


def _chat_ends(c: JobShell, out: bytes) -> bytes:
    out += c.write(b"\x04")
    assert c.wait() == "ended 0"
    return out + c.read_until(lambda b: False, 0.5)


WIDE_COLS, NARROW_COLS = 80, 20


def test_a_resize_while_in_the_background_is_seen_after_fg(reader, tmp_path):
    """Ctrl+Z, `bg`, the terminal narrowed (the shell in front is told, not the chat),
    `fg`: GNU readline went on at the old width, its line not shown again (bash's `fg`
    sends no SIGCONT to a running job, so the chat's handlers never ran), and a Backspace
    across a row the line wrapped into left that row as it was. Now the line is drawn
    again below what the shell wrote, at the width now, as after a Ctrl+Z and `fg`."""
    c = JobShell(reader + ECHO, tmp_path, cols=WIDE_COLS)
    screen = Screen(WIDE_COLS, rows=60)
    try:
        out = c.read_until(is_prompt, 120)
        assert is_prompt(out), out
        out = _typed(c, out, b"abcdefghij")
        _ctrl_z_then_bg(c)
        out += c.read_until(lambda b: False, 0.5)  # (the job writes nothing meanwhile)
        screen.write(out.decode())
        _set_size(c.master, NARROW_COLS)
        screen.resize(NARROW_COLS)
        at = len(out)
        c.tell("fg")
        out += c.read_until(lambda b: b"> abcdefghij" in out[at:] + b
                            and _paste_mode_on(out + b), 30)
        assert b"> abcdefghij" in out[at:] and _in_raw_mode(c), out[at:]
        out += c.write(b"klmnopqrstuvwxyz")  # with "> ", 28 columns: two rows
        out += c.read_until(lambda b: b"z" in out[at:] + b, 30)
        out = backspace_across_the_wrap(c, out)
        out = _chat_ends(c, out)
    finally:
        c.close()
    assert_edited_across_the_wrap(screen, out)


# Run in the own line editor's chat: each time its wait for a key is woken while it runs
# in the background, a mark in the file {marks!r}.
WOKEN_MARKED = """
import select as real_select, types
from runtime import line_input
def marked_select(r, w, x, timeout=None):
    woken = real_select.select(r, w, x, timeout)
    if woken[0] and not line_input.in_foreground(r[0]):
        with open({marks!r}, "a") as f:
            f.write("x")
    return woken
line_input.select = types.SimpleNamespace(select=marked_select)
"""


def _woken_twice_in_the_background(c: JobShell, marks) -> bool:
    """Whether the own line editor was woken by the keys twice: it had the chance to
    read them, and was not stopped by that (it would not wait again)."""
    c.read_until(lambda b: marks.exists() and len(marks.read_text()) >= 2, 30)
    return marks.exists() and len(marks.read_text()) >= 2


def test_keys_typed_at_the_shell_after_bg_leave_the_line_whole_at_fg(reader, tmp_path):
    """After `bg`, keys typed at the shell wake the chat too. GNU readline then reads the
    terminal from the background and is stopped (SIGTTIN; bash says "Stopped (tty
    input)"), as python3's own prompt is: job control, not a fault; `fg` goes on with the
    line kept and the prompt's modes back (raw, paste mode). The own line editor was
    stopped so too, and after `fg` waited inside that read, its line not shown until the
    next key: now it leaves the keys to the shell, runs on, and `fg` shows its line."""
    marks = tmp_path / "woken"
    own = WOKEN_MARKED.format(marks=str(marks)) if reader == NO_READLINE else ""
    c = JobShell(reader + ECHO + own, tmp_path)
    try:
        out = c.read_until(is_prompt, 120)
        assert is_prompt(out), out
        out = _typed(c, out, b"abc")
        _ctrl_z_then_bg(c)
        out += c.write(b"ls\r")  # a command for the shell, typed in its modes
        if reader != NO_READLINE:
            assert c.wait() == f"stopped {signal.SIGTTIN}"  # (they woke it: it read)
        else:  # the own line editor leaves the keys to the shell, and runs on
            assert _woken_twice_in_the_background(c, marks)
            c.tell("status")
            assert c.answer() == "not stopped"
        c.tell("read")  # the shell reads its command
        assert c.answer() == repr(b"ls\n")
        at = len(out)
        c.tell("fg")
        # The prompt's modes back, and the line shown again (GNU readline: at the next
        # key, as python3's own prompt does: it waits inside read(), where no handler runs).
        out += c.read_until(lambda b: _paste_mode_on(out + b) and _in_raw_mode(c)
                            and (b"> abc" in out[at:] + b or reader != NO_READLINE), 30)
        assert _paste_mode_on(out) and _in_raw_mode(c), out[at:]
        assert b"> abc" in out[at:] or reader != NO_READLINE, out[at:]
        out += c.write(b"def\r")
        out += c.read_until(lambda b: b"got " in out[at:] + b and is_prompt(out + b), 30)
        assert _got("abcdef") in out, out[at:]
        out = _chat_ends(c, out)
    finally:
        c.close()
