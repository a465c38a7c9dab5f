"""The own line editor (the executable's, without GNU readline) in the real chat, on a
narrow pty: what the user sees when a line wraps. The editor's own tests, with the small
terminal emulator (Screen) that stands in for the terminal here, are in
tests/runtime/test_line_input.py; the chat on a pty in tests/e2e/test_terminal_pty.py."""
import os

import pytest

from tests.e2e.test_terminal_pty import ECHO, NO_READLINE, Chat, is_prompt
from tests.runtime.test_line_input import CURSOR, Screen

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")

# Run by the chat before it starts: its terminal made 20 columns wide, as a terminal
# window's size is set before the program runs.
NARROW = """
import fcntl, struct, termios
fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 20, 0, 0))
"""


def test_backspace_across_a_wrapped_row_in_the_chat():
    """A Backspace at the first column of a wrapped line's second row did not go up: the
    rest of the first row stayed on the screen, and the line went on below it."""
    c = Chat(NO_READLINE + NARROW + ECHO)
    try:
        out = c.read_until(is_prompt, 120)
        out += c.write(b"abcdefghijklmnopqrstuvwxyz")  # with "> ", 28 columns: two rows
        out += c.write(b"\x7f" * 10 + b"!\r")
        out += c.read_until(lambda b: b"got " in out + b and is_prompt(out + b), 30)
        c.write(b"\x04")
        assert c.proc.wait(30) == 0
    finally:
        c.close()
    screen = Screen(20, rows=60)
    screen.write(out.decode())
    rows = screen.show()
    assert "> abcdefghijklmnop!" in rows, rows
    at = rows.index("> abcdefghijklmnop!")
    assert rows[at + 1].startswith("got 17 characters"), rows
    assert rows[-1] == "> " + CURSOR, rows
