"""The terminal chat where a person's key could be lost or misread: a Ctrl+D typed while
an answer is written, a command followed by a tab. On a real pty (the harness of
tests/e2e/test_terminal_pty.py), with readline and with the own line editor, under a
dumb terminal and under TERM=xterm (CI's, which turns bracketed paste on)."""
import io
import os
import pty
import subprocess
import sys

import pytest

from tests.e2e.conftest import ROOT, TINY
from tests.e2e.test_terminal_pty import NO_READLINE, SCRIPT, Chat, is_prompt

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


class TermChat(Chat):
    """Chat, on a terminal of the given TERM (Chat's is always dumb)."""

    def __init__(self, hook: str, term: str):
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8", TERM=term)
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT.format(tiny=str(TINY), hook=hook)],
            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env,
            start_new_session=True)
        os.close(slave)


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
    c = TermChat(reader + SLOW_ANSWER, term)
    try:
        assert is_prompt(c.read_until(is_prompt, 120))
        echo = c.write(b"Tell me a story\r")
        out = c.read_until(lambda b: b"ANSWER BEGINS" in echo + b, 30)
        assert b"ANSWER BEGINS" in echo + out, echo + out
        c.write(b"\x04")  # Ctrl+D, while the answer is still being written
        out = c.read_until(lambda b: b"ANSWER ENDS" in b, 30)
        assert b"ANSWER ENDS" in out, out
        try:
            code = c.proc.wait(30)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 0, c.read_until(lambda b: False, 1)
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
