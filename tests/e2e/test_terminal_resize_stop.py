"""A terminal resized while the chat is stopped (Ctrl+Z, resize, `fg`). The terminal tells
the job in front of it (SIGWINCH), the shell then, not the chat: GNU readline went on at
the width it had, and a Backspace across a wrapped row left the row above as it was. Now
the chat learns the width when it is continued (and at every prompt), with readline and
with the own line editor; a resize while it runs still works as before. On a real pty
(the harness of tests/e2e/test_terminal_pty.py), whose screen is shown by the small
terminal of tests/runtime/test_line_input.py. The pty is no process's controlling
terminal here, so a resize signals nobody, as for a stopped job; where the chat is in
front, the test sends the SIGWINCH that the terminal would."""
import os
import signal

import pytest

from tests.e2e.test_terminal_gaps import ANSWER_UNTIL, reader  # noqa: F401 - the fixture
from tests.e2e.test_terminal_keep import _ends
from tests.e2e.test_terminal_pty import ECHO, Chat, _got, is_prompt
from tests.e2e.test_terminal_suspend_paste import _ctrl_z, _fg, stoppable  # noqa: F401
from tests.runtime.test_line_input import Screen, _set_size

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")

WIDE_COLS, NARROW_COLS = 80, 20
# Run by the chat before it starts: its terminal WIDE_COLS wide (a new pty has no size).
WIDE = f"""
from tests.runtime.test_line_input import _set_size
_set_size(0, {WIDE_COLS})
"""
# The chat's first answer waits for the test's flag file (ANSWER_UNTIL), the next ones
# are echoes.
FIRST_WAITS = """
echo_turn = terminal._Chat.ask
{answer_until}
def first_waits(self, text):
    terminal._Chat.ask = echo_turn
    return answer_until(self, text)
terminal._Chat.ask = first_waits
"""


@pytest.mark.parametrize("resized", ["while stopped at the prompt",
                                     "while stopped in an answer",
                                     "while at the prompt"])
def test_backspace_across_a_wrapped_row_after_a_resize(reader, stoppable, tmp_path, resized):
    flag = tmp_path / "answered"
    in_answer = resized == "while stopped in an answer"
    waits = FIRST_WAITS.format(answer_until=ANSWER_UNTIL.format(flag=str(flag)))
    c = Chat(reader + WIDE + ECHO + (waits if in_answer else ""), "xterm")
    screen = Screen(WIDE_COLS, rows=60)
    try:
        out = c.read_until(is_prompt, 120)
        assert is_prompt(out), out
        if in_answer:
            out += c.write(b"Tell me a story\r")
            out += c.read_until(lambda b: b"ANSWER BEGINS" in out + b, 30)
            assert b"ANSWER BEGINS" in out, out
        screen.write(out.decode())
        if resized.startswith("while stopped"):
            _ctrl_z(c)
            _set_size(c.master, NARROW_COLS)  # (the shell's SIGWINCH, not the chat's)
            screen.resize(NARROW_COLS)
            _fg(c)
        else:
            _set_size(c.master, NARROW_COLS)
            screen.resize(NARROW_COLS)
            os.killpg(c.proc.pid, signal.SIGWINCH)
        flag.touch()
        # The prompt drawn again (after `fg`, or at the new width), or the next one.
        out = c.read_until(lambda b: is_prompt(b) and b"ANSWER BEGINS" not in b, 30)
        assert is_prompt(out), out
        out += c.write(b"abcdefghijklmnopqrstuvwxyz")  # with "> ", 28 columns: two rows
        out += c.read_until(lambda b: b"z" in out + b, 30)
        out = backspace_across_the_wrap(c, out)
        c.write(b"\x04")
        out += _ends(c)
    finally:
        c.close()
    assert_edited_across_the_wrap(screen, out)


def backspace_across_the_wrap(c, out: bytes) -> bytes:
    """Ten Backspaces from the end of "abcdefghijklmnopqrstuvwxyz", wrapped into a second
    row on a narrow terminal, then "!" and Enter: -> out and the chat's echo of it."""
    out += c.write(b"\x7f" * 10 + b"!\r")
    return out + c.read_until(lambda b: _got("abcdefghijklmnop!") in out + b
                              and is_prompt(out + b), 30)


def assert_edited_across_the_wrap(screen, out: bytes) -> None:
    """The screen shows the line as edited (no row left as it was) and the echo of it."""
    screen.write(out.decode())
    rows = screen.show()
    assert "> abcdefghijklmnop!" in rows, rows
    at = rows.index("> abcdefghijklmnop!")
    assert rows[at + 1].startswith("got 17 characters"), rows
