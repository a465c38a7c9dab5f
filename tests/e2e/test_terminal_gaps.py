"""The terminal chat where a person's key could be lost or misread: a Ctrl+D typed while
an answer is written, a command followed by a tab. On a real pty (the harness of
tests/e2e/test_terminal_pty.py), with readline and with the own line editor, under a
dumb terminal and under TERM=xterm (CI's, which turns bracketed paste on)."""
import io
import os
import subprocess

import pytest

from tests.e2e.test_terminal_pty import NO_READLINE, Chat, is_prompt

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")

# The model's turn replaced by one that takes a while, as a real answer does: it says
# when it begins and ends, so that a key can be typed in between.
SLOW_ANSWER = """
def slow_answer(self, text):
    self._say("ANSWER BEGINS")
    time.sleep(1.5)
    self._say("ANSWER ENDS")
    return text
terminal._Chat.ask = slow_answer
"""


def _answer_ends_then_the_chat(c: Chat) -> None:
    out = c.read_until(lambda b: b"ANSWER ENDS" in b, 30)
    assert b"ANSWER ENDS" in out, out
    try:
        code = c.proc.wait(30)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 0, c.read_until(lambda b: False, 1)


@pytest.fixture(params=["readline", "own line editor"])
def reader(request):
    if request.param == "readline":
        pytest.importorskip("readline", reason="this Python has no readline module")
        return ""
    return NO_READLINE


@pytest.mark.parametrize("term", ["dumb", "xterm"])
def test_ctrl_d_typed_while_an_answer_is_written_ends_the_chat_after_it(reader, term):
    """Between two prompts the terminal was in canonical mode, where Ctrl+D is no byte
    but an end-of-file mark, which became a NUL when the next prompt's reader switched
    the mode: the Ctrl+D was lost, and the chat waited at a new prompt instead of ending."""
    import termios
    c = Chat(reader + SLOW_ANSWER, term)
    try:
        assert is_prompt(c.read_until(is_prompt, 120))
        echo = c.write(b"Tell me a story\r")
        out = c.read_until(lambda b: b"ANSWER BEGINS" in echo + b, 30)
        assert b"ANSWER BEGINS" in echo + out, echo + out
        c.write(b"\x04")  # Ctrl+D, while the answer is still being written
        _answer_ends_then_the_chat(c)
        lflag = termios.tcgetattr(c.master)[3]  # the terminal's modes given back
        assert lflag & termios.ICANON and lflag & termios.ECHO
    finally:
        c.close()


def test_a_tab_after_a_command_name_ends_it(tiny_model):
    """`/system<Tab>Be brief.` (a pasted line; the own line editor keeps a tab) was
    "unknown command /system\\tBe"."""
    from runtime import terminal
    out = io.StringIO()
    code = terminal.chat(tiny_model, n_ctx=256, stdin=io.StringIO("/system\tBe brief.\n/help\t\n"),
                         stdout=out, interactive=True)
    assert code == 0
    said = out.getvalue()
    assert "(system prompt set; conversation reset)" in said, said
    assert "unknown command" not in said and "commands: /reset" in said, said


# An answer that goes on until the test creates a file: long enough for a Ctrl+Z, `fg`
# and a key, however slow the machine.
ANSWER_UNTIL = """
import os
def answer_until(self, text):
    self._say("ANSWER BEGINS")
    while not os.path.exists({flag!r}):
        time.sleep(0.05)
    self._say("ANSWER ENDS")
    return text
terminal._Chat.ask = answer_until
"""


@pytest.mark.parametrize("term", ["dumb", "xterm"])
def test_ctrl_d_typed_after_fg_in_the_middle_of_an_answer_ends_the_chat(reader, term, tmp_path):
    """The shell hands the terminal back after `fg` in its own (canonical) modes: the
    rest of the answer was written in them, and a Ctrl+D typed then was lost again."""
    import signal
    import termios
    import time
    flag = tmp_path / "answered"
    c = Chat(reader + ANSWER_UNTIL.format(flag=str(flag)), term)
    try:
        assert is_prompt(c.read_until(is_prompt, 120))
        echo = c.write(b"Tell me a story\r")
        out = c.read_until(lambda b: b"ANSWER BEGINS" in echo + b, 30)
        assert b"ANSWER BEGINS" in echo + out, echo + out
        # Ctrl+Z (SIGSTOP: SIGTSTP is discarded for this orphaned process group, see
        # test_terminal_pty.test_fg_after_ctrl_z_gives_the_line_editing_back)
        os.killpg(c.proc.pid, signal.SIGSTOP)
        assert os.WIFSTOPPED(os.waitpid(c.proc.pid, os.WUNTRACED)[1])
        attrs = termios.tcgetattr(c.master)  # what the shell does while the job is stopped
        attrs[3] |= termios.ICANON
        termios.tcsetattr(c.master, termios.TCSANOW, attrs)
        os.killpg(c.proc.pid, signal.SIGCONT)  # `fg`
        deadline = time.monotonic() + 10  # (the chat leaves canonical mode at once)
        while termios.tcgetattr(c.master)[3] & termios.ICANON and time.monotonic() < deadline:
            time.sleep(0.05)
        c.write(b"\x04")  # Ctrl+D, while the answer is still being written
        flag.touch()
        _answer_ends_then_the_chat(c)
    finally:
        c.close()
