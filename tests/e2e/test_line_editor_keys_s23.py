"""The own line editor's cursor keys (runtime/line_input.py, the one-file executable's
line reader, without GNU readline): Left/Right, Home/End and their Ctrl keys move in the
line; typing, pasting and erasing work at the cursor; Ctrl+L draws the line again on a
cleared screen; Enter sends the whole line. Before, the cursor stayed at the line's end:
the keys were swallowed, and Ctrl+A then X appended X. First the editor alone on a real
pty, drawn on the small terminal of tests/runtime/test_line_input.py (Screen), with the
keys readline takes; then the real chat on a pty 20 columns wide."""
import os
import re
import zlib

import pytest

from tests.e2e.test_line_input_pty import NARROW
from tests.e2e.test_terminal_pty import ECHO, NO_READLINE, Chat, is_prompt
from tests.runtime.test_line_input import (  # noqa: F401 (fixtures)
    CURSOR, Screen, _set_size, plain_terminal, term, typed)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")

LEFT, RIGHT, HOME, END, DELETE = "\x1b[D", "\x1b[C", "\x1b[H", "\x1b[F", "\x1b[3~"
CTRL_A, CTRL_B, CTRL_D, CTRL_E, CTRL_F = "\x01", "\x02", "\x04", "\x05", "\x06"
CTRL_K, CTRL_L, CTRL_U, CTRL_W, BACKSPACE = "\x0b", "\x0c", "\x15", "\x17", "\x7f"


def keys(text: str) -> list:
    """One read for each key: a character, a CSI sequence, or an SS3 one (ESC O x)."""
    return [k.encode() for k in re.findall(r"\x1b\[[0-9;]*.|\x1bO.|.", text, re.S)]


class ClearingScreen(Screen):
    """Screen that also obeys the clear screen readline's Ctrl+L writes (xterm's
    terminfo `clear`: CSI H, the cursor to the top left, then CSI 2J, all erased)."""
    CLEAR = "\x1b[H\x1b[2J"

    def write(self, text):
        for i, part in enumerate(text.split(self.CLEAR)):
            if i:
                self.cells = [[" "] * self.cols for _ in range(self.n_rows)]
                self.soft = [False] * self.n_rows
                self.row = self.col = 0
                self.pending = False
            super().write(part)
        return len(text)


def look(screen) -> tuple[list[str], tuple[int, int]]:
    """The rows (right-trimmed, no empty ones at the bottom below the cursor) and the
    cursor's (row, column): the character under the cursor stays visible."""
    rows = ["".join(r).rstrip() for r in screen.cells]
    while len(rows) > screen.row + 1 and not rows[-1]:
        rows.pop()
    return rows, (screen.row, screen.col + screen.pending)


def edit(typed, text, cols=20, screen=None):
    """Type `text` key by key, then Enter: (line, what the screen showed before Enter)."""
    screen = screen or ClearingScreen(cols)
    shots = []
    line, _ = typed(keys(text) + [lambda: shots.append(look(screen)), b"\r"], cols, screen)
    return line, shots[0]


def test_left_then_typing_inserts_at_the_cursor(typed):
    """Ctrl+A then X appended X at the end; Left was swallowed."""
    line, shown = edit(typed, "abc" + LEFT + LEFT + "X")
    assert line == "aXbc"
    assert shown == (["> aXbc"], (0, 4))  # the cursor on the "b"


@pytest.mark.parametrize("home", [HOME, "\x1bOH", "\x1b[1~", "\x1b[7~", CTRL_A],
                         ids=["CSI H", "SS3 H", "CSI 1~", "CSI 7~", "Ctrl+A"])
@pytest.mark.parametrize("end", [END, "\x1bOF", "\x1b[4~", "\x1b[8~", CTRL_E],
                         ids=["CSI F", "SS3 F", "CSI 4~", "CSI 8~", "Ctrl+E"])
def test_home_and_end(typed, home, end):
    line, shown = edit(typed, "bc" + home + "a" + end + "d")
    assert line == "abcd"
    assert shown == (["> abcd"], (0, 6))


@pytest.mark.parametrize("left, right", [(LEFT, RIGHT), ("\x1bOD", "\x1bOC"), (CTRL_B, CTRL_F)],
                         ids=["CSI", "SS3", "Ctrl+B/F"])
def test_left_and_right(typed, left, right):
    line, shown = edit(typed, "ace" + left * 2 + "b" + right + "d" + right * 3 + "f")
    assert line == "abcdef"
    assert shown == (["> abcdef"], (0, 8))


def test_moving_stops_at_the_line_s_ends(typed):
    line, shown = edit(typed, "b" + LEFT * 3 + "a" + RIGHT * 3 + "c")
    assert line == "abc"
    assert shown == (["> abc"], (0, 5))


def test_backspace_delete_and_ctrl_d_at_the_cursor(typed):
    """Backspace erases before the cursor, Delete and Ctrl+D (on a line with text, as
    readline) at it; Ctrl+D at the end of a line with text does nothing."""
    line, shown = edit(typed, "abcdef" + LEFT * 3 + BACKSPACE + DELETE + CTRL_D)
    assert line == "abf"
    assert shown == (["> abf"], (0, 4))  # on the "f"
    line, shown = edit(typed, "abc" + CTRL_D + HOME + DELETE)
    assert line == "bc"
    assert shown == (["> bc"], (0, 2))


def test_ctrl_k_u_w_at_the_cursor(typed):
    line, shown = edit(typed, "hello world" + LEFT * 5 + CTRL_K)
    assert line == "hello "
    assert shown == (["> hello"], (0, 8))
    line, shown = edit(typed, "hello world" + LEFT * 5 + CTRL_U)
    assert line == "world"
    assert shown == (["> world"], (0, 2))
    line, shown = edit(typed, "one two three" + LEFT * 5 + CTRL_W)
    assert line == "one three"
    assert shown == (["> one three"], (0, 6))


def test_enter_sends_the_whole_line_from_its_middle(typed):
    """Enter with the cursor on the first row of a wrapped line: the answer goes below
    the line's last row, not over it."""
    screen = ClearingScreen(10)
    line, _ = typed(keys("abcdefghijklmnopqrst" + HOME + "\r"), 10, screen)
    screen.write("answer\n")
    assert line == "abcdefghijklmnopqrst"
    assert screen.show() == ["> abcdefgh", "ijklmnopqr", "st", "answer", CURSOR]


def test_inserting_in_a_wrapped_line(typed):
    """10 columns: "> " and 20 letters take rows of 8, 10 and 2. A letter put in at the
    start pushes the rest on by one, across both row ends; Right and Left go across a
    row's end."""
    line, shown = edit(typed, "abcdefghijklmnopqrst" + HOME + "X", cols=10)
    assert line == "Xabcdefghijklmnopqrst"
    assert shown == (["> Xabcdefg", "hijklmnopq", "rst"], (0, 3))
    # After "h" (the end of the first row): the cursor on the second row's first
    # column, where a letter then goes.
    line, shown = edit(typed, "abcdefghijklmnopqrst" + HOME + RIGHT * 8 + "Y", cols=10)
    assert line == "abcdefghYijklmnopqrst"
    assert shown == (["> abcdefgh", "Yijklmnopq", "rst"], (1, 1))
    # From the third row back up to the first: Left across two row ends, then erase.
    line, shown = edit(typed, "abcdefghijklmnopqrst" + LEFT * 13 + BACKSPACE, cols=10)
    assert line == "abcdefhijklmnopqrst"
    assert shown == (["> abcdefhi", "jklmnopqrs", "t"], (0, 8))
    # Ctrl+K from the first row: the rows below it go too.
    line, shown = edit(typed, "abcdefghijklmnopqrst" + HOME + RIGHT * 3 + CTRL_K, cols=10)
    assert line == "abc"
    assert shown == (["> abc"], (0, 5))


def test_a_wide_character_put_in_before_others(typed):
    """Wide characters move on as a whole: one that no longer fits at a row's end goes to
    the next row, leaving that last column empty."""
    line, shown = edit(typed, "世界世界" + HOME + "a", cols=10)
    assert line == "a世界世界"
    assert shown == (["> a世界世", "界"], (0, 3))
    line, shown = edit(typed, "abcdefg" + HOME + RIGHT * 3 + "世", cols=10)
    assert line == "abc世defg"
    assert shown == (["> abc世def", "g"], (0, 7))
    # The cursor after a wide character, then erasing it: two columns back.
    line, shown = edit(typed, "a世b" + LEFT + BACKSPACE, cols=10)
    assert line == "ab"
    assert shown == (["> ab"], (0, 3))


def test_a_letter_with_its_accent_is_one_step(typed):
    """"e" + U+0301 shows as one "é": Left goes over both, Backspace erases both."""
    line, shown = edit(typed, "cafe\u0301!" + LEFT + BACKSPACE + LEFT + "X")
    assert line == "caXf!"
    assert shown == (["> caXf!"], (0, 5))
    # An accent typed in the middle goes with the character before the cursor.
    line, shown = edit(typed, "cafe" + LEFT + "\u0301")
    assert line == "caf\u0301e"
    assert shown == (["> caf\u0301e"], (0, 5))


def test_a_paste_in_the_middle(typed):
    """A bracketed paste goes in at the cursor, its lines too, and the rest follows it."""
    screen = ClearingScreen(20)
    shots = []
    steps = keys("a" + "Z" + LEFT) + [b"\x1b[200~b\nc\x1b[201~",
                                      lambda: shots.append(look(screen)), b"\r"]
    line, _ = typed(steps, 20, screen)
    assert line == "ab\ncZ"
    assert shots[0] == (["> ab", "cZ"], (1, 1))


def test_keys_in_a_paste_are_text(typed):
    """Pasted code may hold a form feed (^L) or a vertical tab (^K): as with readline, a
    paste is text, not keys that clear the screen, erase the rest of the line or move."""
    screen = ClearingScreen(20)
    shots = []
    steps = [b"xy", LEFT.encode(), b"\x1b[200~a\x01b\x0bc\x0cd\x1b[De\x1b[201~",
             lambda: shots.append(look(screen)), b"\r"]
    line, _ = typed(steps, 20, screen)
    assert line == "xabcdey"
    assert shots[0] == (["> xabcdey"], (0, 8))


def test_ctrl_l_clears_the_screen_and_keeps_the_cursor(typed):
    screen = ClearingScreen(10)
    screen.write("earlier\nanswer\n")
    line, shown = edit(typed, "abcdefghijkl" + HOME + RIGHT + CTRL_L + "X", 10, screen)
    assert line == "aXbcdefghijkl"
    assert shown == (["> aXbcdefg", "hijkl"], (0, 4))


@pytest.mark.parametrize("reflow", [False, True], ids=["xterm", "reflowing"])
def test_a_resize_with_the_cursor_in_the_line(typed, reflow):
    """Narrowed from 20 columns to 10 with the cursor on the first row: the line is drawn
    again at 10 (both kinds of terminal keep that row the line's first), the cursor back
    in its place, and a letter typed then goes there. The answer above stays."""
    screen = ClearingScreen(20)
    screen.write("earlier answer\n")
    shots = []

    def resize():
        _set_size(typed.slave, 10)
        screen.resize(10, reflow)

    steps = keys("abcdefghijklmnopqrstuvwxyz" + HOME + RIGHT * 2) + [
        resize, None, lambda: shots.append(look(screen)), b"X",
        lambda: shots.append(look(screen)), b"\r"]
    line, _ = typed(steps, 20, screen)
    assert line == "abXcdefghijklmnopqrstuvwxyz"
    above = ["earlier an", "swer"] if reflow else ["earlier an"]
    row = len(above)
    assert shots[0] == (above + ["> abcdefgh", "ijklmnopqr", "stuvwxyz"], (row, 4))
    assert shots[1] == (above + ["> abXcdefg", "hijklmnopq", "rstuvwxyz"], (row, 5))


def test_ctrl_c_leaves_the_cursor_after_the_line(typed):
    """A Ctrl+C with the cursor on a wrapped line's first row: the chat's reminder went
    over the line's later rows."""
    screen = ClearingScreen(10)

    def ctrl_c():
        raise KeyboardInterrupt  # as the SIGINT handler raises it, in the wait for a key

    with pytest.raises(KeyboardInterrupt):
        typed(keys("abcdefghijklmnopqrst" + HOME + RIGHT) + [ctrl_c], 10, screen)
    screen.write("\nhint\n")
    assert screen.show() == ["> abcdefgh", "ijklmnopqr", "st", "hint", CURSOR]


# --------------------------------------------------------------------------------------
# The real chat.


def got(text: str) -> str:
    """The line the ECHO hook writes for a message `text`."""
    return f"got {len(text)} characters, crc {zlib.crc32(text.encode())}"


def squeezed(rows: list[str]) -> str:
    """Rows joined without spaces (a space at a row's end is trimmed from it)."""
    return "".join(rows).replace(" ", "")


def type_keys(c: Chat, text: str) -> bytes:
    """Each key written on its own, as typed."""
    out = b""
    for key in keys(text):
        out += c.write(key)
    return out


def test_editing_inside_a_wrapped_line_with_a_wide_character():
    c = Chat(NO_READLINE + NARROW + ECHO)
    try:
        out = c.read_until(is_prompt, 120)
        # 26 letters after "> ": two rows. Home, three letters on, a wide character put
        # in; End, back two, Ctrl+K erases "yz"; "!" at the end; Enter.
        out += type_keys(c, "abcdefghijklmnopqrstuvwxyz" + "\x1b[H" + "\x1b[C" * 3 + "世"
                         + "\x1bOF" + "\x1b[D\x1b[D" + "\x0b" + "!\r")
        out += c.read_until(lambda b: b"got " in out + b and is_prompt(out + b), 30)
        # Ctrl+A, Ctrl+F, Ctrl+B moves, then Ctrl+L: the screen holds just this line.
        first = "abc世defghijklmnopqrstuvwx!"
        out += type_keys(c, "wrld" "\x01" "\x06" "o" "\x02\x02" "hello " "\x05" "\x0c" "!\r")
        out += c.read_until(lambda b: out.count(b"got ") + b.count(b"got ") == 2
                            and is_prompt(out + b), 30)
        c.write(b"\x04")
        assert c.proc.wait(30) == 0
    finally:
        c.close()
    text = out.decode()
    assert got(first) in text.replace("\r\n", "")
    screen = ClearingScreen(20, rows=60)
    before_clear, _, after_clear = text.rpartition("\x1b[H\x1b[2J")
    screen.write(before_clear)
    rows = screen.show()
    # "> abc", "世" on two columns, then letters to the 20th column; the rest below.
    at = rows.index("> abc世defghijklmnop")
    assert rows[at + 1] == "qrstuvwx!", rows
    assert squeezed(rows[at + 2:]).startswith(squeezed([got(first)])), rows
    screen.write("\x1b[H\x1b[2J" + after_clear)
    rows = screen.show()
    second = "hello world!"
    assert rows[0] == "> " + second, rows
    assert squeezed(rows[1:]).startswith(squeezed([got(second)])), rows
    assert rows[-1] == "> " + CURSOR, rows
