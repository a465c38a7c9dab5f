"""The interactive terminal chat on a real pty, as a person uses it (session 23): what
surprised. Driven as tests/e2e/test_terminal_pty.py drives it, with readline and with the
own line editor (the one-file executable's), the screen shown by the small terminal of
tests/runtime/test_line_input.py.
"""
import os
import re
import time

import pytest

from tests.e2e.test_terminal_gaps import reader  # noqa: F401 - the fixture
from tests.e2e.test_terminal_keep import _ends
from tests.e2e.test_terminal_pty import ECHO, Chat, _got, is_prompt
from tests.runtime.test_line_input import CURSOR, Screen

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")


def _rows(out: bytes, cols: int = 80) -> list[str]:
    """The screen (the styles left out: the small terminal knows no SGR codes)."""
    screen = Screen(cols, rows=60)
    screen.write(re.sub(r"\x1b\[[0-9;]*m", "", out.decode("utf-8", "replace")))
    return screen.show()


@pytest.mark.parametrize("term", ["xterm", "dumb"])
def test_ctrl_d_leaves_no_empty_row(reader, term):
    """GNU readline (8.1 and later) ends the line itself at Ctrl+D while paste mode is
    on, as it is on a terminal that is not "dumb": the chat's own line end after it left
    an empty row, before the shell's prompt once the chat ended, and between "... " and
    the answer of a \"\"\" message ended by Ctrl+D. One row down, as the own line editor
    and a dumb terminal have it."""
    c = Chat(reader + ECHO, term)
    try:
        out = c.read_until(is_prompt, 120)
        assert is_prompt(out), out
        out += c.write(b'"""\rone\r')
        # (after the "... " that follows "one": only then is the terminal read key by key)
        out += c.read_until(lambda b: b"one" in out + b and (out + b).rstrip().endswith(b"..."),
                            30)
        time.sleep(0.2)  # a person's pause: readline may still be setting the terminal up
        out += c.write(b"\x04")  # Ctrl+D at "... ": the message ends there
        out += c.read_until(lambda b: b"got " in b and is_prompt(b), 30)
        assert _got("one").decode() in out.decode(), out
        time.sleep(0.2)
        out += c.write(b"\x04")  # Ctrl+D at the prompt: the chat ends
        out += _ends(c)
    finally:
        c.close()
    rows = _rows(out)
    at = rows.index("... one")
    assert rows[at + 1].rstrip() == "..." and rows[at + 2].startswith("got 3 characters"), rows
    assert rows[-2:] == [">", CURSOR], rows  # where the shell's prompt then goes


# GNU readline's own keys for the rest of this file, whatever the machine's inputrc says.
OWN_INPUTRC = "import os\nos.environ['INPUTRC'] = os.devnull\n"


def test_readline_keys_and_history_reach_the_message():
    """With readline the chat has its editing and history, as `ollama run` users expect:
    Up and Down recall the messages sent (wide characters and accents too), Ctrl+A and
    Ctrl+E go to the line's start and end, Ctrl+K cuts to the end (emacs mode, readline's
    default). What is sent is the line as edited."""
    pytest.importorskip("readline", reason="this Python has no readline module")
    c = Chat(OWN_INPUTRC + ECHO, "xterm")
    try:
        assert is_prompt(c.read_until(is_prompt, 120))
        sent = []
        for keys in ["first message\r", "日本語 e\u0301🙂 end\r",
                     # Up twice, Down once: the second message; at its start ">>"; at its
                     # end, "end" erased and "fin" typed
                     "\x1b[A\x1b[A\x1b[B\x01>>\x05\x7f\x7f\x7ffin\r",
                     # Up three times: the first message; Ctrl+A, a word skipped with
                     # Alt+F, Ctrl+K
                     "\x1b[A\x1b[A\x1b[A\x01\x1bf\x0b!\r"]:
            time.sleep(0.2)  # a person's pause: readline may still be setting up
            c.write(keys.encode())
            out = c.read_until(lambda b: b"got " in b and is_prompt(b), 30)
            sent.append(out)
        assert _got("first message") in sent[0], sent[0]
        assert _got("日本語 e\u0301🙂 end") in sent[1], sent[1]
        assert _got(">>日本語 e\u0301🙂 fin") in sent[2], sent[2]
        assert _got("first!") in sent[3], sent[3]
        c.write(b"\x04")
        _ends(c)
    finally:
        c.close()


def test_term_unset_gets_no_paste_marks_and_still_edits(reader):
    """TERM unset (`env -i`, some service consoles) counts as a terminal that may show
    codes as text: no bracketed paste mode asked for, no styles; the line is still edited
    (Backspace over a wide character) and Ctrl+D ends the chat, the terminal's line
    editing and echo given back."""
    import termios
    c = Chat(reader + "import os\nos.environ.pop('TERM', None)\n" + ECHO)
    try:
        out = c.read_until(is_prompt, 120)
        assert is_prompt(out), out
        time.sleep(0.2)
        out += c.write("héllo 世界\x7f界!\r".encode())
        out += c.read_until(lambda b: b"got " in b and is_prompt(b), 30)
        assert _got("héllo 世界!") in out, out
        time.sleep(0.2)
        out += c.write(b"\x04")
        out += _ends(c)
        lflag = termios.tcgetattr(c.master)[3]
    finally:
        c.close()
    assert b"\x1b[?2004" not in out and b"\x1b[2m" not in out, out
    assert lflag & termios.ECHO and lflag & termios.ICANON
