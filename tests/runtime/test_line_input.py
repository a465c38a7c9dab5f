"""runtime.line_input on a real pty, in-process: what the executable's terminal chat
reads with (it has no GNU readline). The whole chat on a pty: tests/e2e/test_terminal_pty.py."""
import io
import os

import pytest

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")


@pytest.fixture(autouse=True)
def plain_terminal(monkeypatch):
    """TERM=dumb unless a test says otherwise: no bracketed-paste codes in what is checked,
    whatever terminal the tests run in."""
    monkeypatch.setenv("TERM", "dumb")


@pytest.fixture
def term():
    import pty
    master, slave = pty.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def _reader(slave, out=None, encoding=None):
    from runtime.line_input import raw_line_reader
    out = out or io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    return raw_line_reader(slave, out, encoding), out


def test_a_character_split_across_reads_after_a_line_end_survives(term):
    """A read that ended inside a character after a line end lost its first bytes: the
    next line began with U+FFFD (seen in 4 of 60 lines of a pasted Cyrillic text)."""
    master, slave = term
    read, _ = _reader(slave)
    os.write(master, "first\n".encode() + "п".encode()[:1])
    assert read("> ") == "first"
    os.write(master, "п".encode()[1:] + "ривет\n".encode())
    assert read("> ") == "привет"


def test_discard_drops_the_rest_of_a_paste(term):
    master, slave = term
    read, _ = _reader(slave)
    os.write(master, b"one\ntwo\nthree\n")
    assert read("> ") == "one"
    read.discard()  # what the chat does after a Ctrl+C stopped the answer to "one"
    os.write(master, b"four\n")
    assert read("> ") == "four"


def test_enter_after_a_lone_escape_ends_the_line(term):
    """Esc took the next key as an Alt+key pair: Enter was swallowed."""
    master, slave = term
    read, _ = _reader(slave)
    os.write(master, b"ab\x1b\ncd\x1b[1;5Ce\n")  # Esc, Enter; Ctrl+Right (a CSI with ';')
    assert read("> ") == "ab"
    assert read("> ") == "cde"


def test_a_character_the_output_cannot_encode_is_echoed_as_a_question_mark(term):
    """With an ASCII or Latin-1 terminal, typing a character outside it crashed the chat
    with UnicodeEncodeError from the echo."""
    master, slave = term
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    read, out = _reader(slave, out)
    os.write(master, "café\n".encode())
    assert read("> ") == "café"
    out.flush()
    assert out.buffer.getvalue() == b"> caf?\n"


def test_the_terminal_encoding_is_used_to_decode(term):
    master, slave = term
    read, _ = _reader(slave, encoding="latin-1")
    os.write(master, "café\n".encode("latin-1"))
    assert read("> ") == "café"


def test_the_terminal_mode_is_restored(term):
    import termios
    master, slave = term
    before = termios.tcgetattr(slave)
    read, _ = _reader(slave)
    os.write(master, b"x\n")
    read("> ")
    assert termios.tcgetattr(slave) == before


# ---------------------------------------------------------------------------------------
# What the user sees. The keys go through a real pty, one read per key as a person types
# (or in big reads, as a paste arrives); the editor's output goes to Screen, a tiny
# terminal, and the tests compare its rows, with the cursor drawn as "█".

import re
import select
import signal
import struct
import unicodedata

CURSOR = "█"


def _cells(ch: str) -> int:
    """The emulator's own idea of a character's width (xterm's, for what is tested)."""
    assert unicodedata.category(ch) != "Cc", f"the editor wrote the control character {ch!r}"
    if ch == "\u00ad":  # the soft hyphen: a format character that xterm shows
        return 1
    if unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


class Screen:
    """A terminal `cols` wide that obeys the codes the editor writes (CR, LF, BS, TAB,
    CSI n A/B/C/D/G/J/K), with xterm's rules: a character written in the last column
    leaves the cursor on it until the next one wraps (a BS then lands on the column before
    it), a wide character that does not fit the row goes whole to the next one, a zero-
    width character joins the cell before the cursor, and "\\n" is CR LF (the tty's ONLCR).
    Any other code fails the test. resize() narrows or widens it as xterm does (rows cut
    or padded) or, with reflow, as VTE, Konsole, kitty or Windows Terminal do (wrapped
    rows joined and wrapped again at the new width, the cursor moving with its text)."""
    encoding = "utf-8"

    def __init__(self, cols, rows=24):
        self.cols, self.n_rows = cols, rows
        self.cells = [[" "] * cols for _ in range(rows)]
        self.soft = [False] * rows   # the row's text wrapped on into the next row
        self.row = self.col = 0
        self.pending = False         # the last column was written: the next character wraps
        self.writes: list[str] = []
        self.paste_marks = False     # bracketed paste switched on

    def flush(self):
        pass

    def write(self, text):
        self.writes.append(text)
        i = 0
        while i < len(text):
            ch = text[i]
            if text.startswith(("\x1b[?2004h", "\x1b[?2004l"), i):  # bracketed paste on/off
                self.paste_marks = text[i + 7] == "h"
                i += 8
                continue
            if ch == "\x1b":
                m = re.match(r"\x1b\[(\d*)([ABCDGJK])", text[i:])
                assert m, f"the editor wrote an unexpected escape sequence {text[i:i + 8]!r}"
                self._csi(int(m[1] or 0), m[2])
                i += m.end()
                continue
            if ch == "\r":
                self.col, self.pending = 0, False
            elif ch == "\n":
                self.col, self.pending = 0, False
                self._linefeed()
            elif ch == "\b":
                self.col, self.pending = max(0, self.col - 1), False
            elif ch == "\t":
                self.col, self.pending = min(self.cols - 1, self.col // 8 * 8 + 8), False
            else:
                self._put(ch)
            i += 1
        return len(text)

    def _csi(self, n, final):
        step = max(n, 1)  # CSI 0 A moves one row, as CSI A does
        if final == "A":
            self.row = max(0, self.row - step)
        elif final == "B":
            self.row = min(self.n_rows - 1, self.row + step)
        elif final == "C":
            self.col = min(self.cols - 1, self.col + step)
        elif final == "D":
            self.col = max(0, self.col - step)
        elif final == "G":
            self.col = min(self.cols - 1, step - 1)
        else:
            assert n == 0, f"CSI {n}{final}: only erasing to the end is expected"
            self.cells[self.row][self.col:] = [" "] * (self.cols - self.col)
            if final == "J":
                for r in range(self.row + 1, self.n_rows):
                    self.cells[r] = [" "] * self.cols
                for r in range(self.row, self.n_rows):
                    self.soft[r] = False
        self.pending = False

    def _linefeed(self):
        if self.row == self.n_rows - 1:  # scroll
            del self.cells[0], self.soft[0]
            self.cells.append([" "] * self.cols)
            self.soft.append(False)
        else:
            self.row += 1

    def _put(self, ch):
        w = _cells(ch)
        if w == 0:
            c = self.col if self.pending else max(0, self.col - 1)
            while c > 0 and self.cells[self.row][c] == "":
                c -= 1
            self.cells[self.row][c] += ch
            return
        if self.pending or self.col + w > self.cols:
            self.soft[self.row] = True
            self.col, self.pending = 0, False
            self._linefeed()
        row = self.cells[self.row]
        if row[self.col] == "":          # half of a wide character overwritten
            row[self.col - 1] = " "
        row[self.col:self.col + w] = [ch] + [""] * (w - 1)
        if self.col + w < self.cols and row[self.col + w] == "":
            row[self.col + w] = " "
        self.col += w
        if self.col == self.cols:
            self.col, self.pending = self.cols - 1, True

    def resize(self, cols, reflow=False):
        if not reflow:
            self.cells = [(r + [" "] * cols)[:cols] for r in self.cells]
            self.cols, self.col, self.pending = cols, min(self.col, cols - 1), False
            return
        lines, cursor = [], None  # logical lines (lists of cells); the cursor's (line, offset)
        r = 0
        while r < self.n_rows:
            cells = []
            while True:
                if r == self.row:
                    cursor = (len(lines), len(cells) + self.col + self.pending)
                cells += self.cells[r]
                r += 1
                if not self.soft[r - 1] or r == self.n_rows:
                    break
            while cells and cells[-1] == " " and not (cursor and cursor[0] == len(lines)
                                                      and len(cells) <= cursor[1]):
                cells.pop()
            lines.append(cells)
        while len(lines) > cursor[0] + 1 and not lines[-1]:
            lines.pop()  # the empty rows below the text are no lines to rewrap
        self.cols = cols
        self.cells, self.soft = [], []
        for n, cells in enumerate(lines):
            row, col = [" "] * cols, 0
            for k, cell in enumerate(cells + [None]):
                w = 0 if cell in ("", None) else 1 + (k + 1 < len(cells) and cells[k + 1] == "")
                if w and col + w > cols:
                    self.cells.append(row)
                    self.soft.append(True)
                    row, col = [" "] * cols, 0
                if cursor == (n, k):
                    self.row, self.col = len(self.cells), min(col, cols - 1)
                    self.pending = col == cols
                if cell is not None and cell != "":
                    row[col:col + w] = [cell] + [""] * (w - 1)
                    col += w
            self.cells.append(row)
            self.soft.append(False)
        while len(self.cells) < self.n_rows:
            self.cells.append([" "] * cols)
            self.soft.append(False)
        extra = len(self.cells) - self.n_rows
        del self.cells[:extra], self.soft[:extra]
        self.row -= extra

    def show(self) -> list[str]:
        """The rows, right-trimmed, without the empty ones at the bottom, and the cursor
        as "█" (after the last column while a wrap is pending)."""
        rows = [list(r) for r in self.cells]
        if self.pending:
            rows[self.row].append(CURSOR)
        else:
            rows[self.row][self.col] = CURSOR
        text = ["".join(r).rstrip() for r in rows]
        while text and not text[-1]:
            text.pop()
        return text


def _set_size(fd, cols, rows=24):
    import fcntl
    import termios
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def keys(data) -> list:
    """Steps for typed(): one read for each key (each character; one escape sequence)."""
    text = data if isinstance(data, str) else data.decode()
    return [k.encode() for k in re.findall(r"\x1b\[[0-9;]*.|.", text, re.S)]


@pytest.fixture
def typed(term, monkeypatch):
    """typed(steps, cols, screen=None) -> (line, screen): raw_line_reader("> ") on a pty
    `cols` wide, drawing on `screen` (the same reader again for the same screen). A step
    is the bytes of one read (the next is sent once it is read and the editor waits
    again), a function to call at that point, or None: the wait times out once (0.2 s
    without a key)."""
    import termios
    master, slave = term
    attrs = termios.tcgetattr(slave)
    attrs[3] &= ~(termios.ICANON | termios.ECHO)  # the pty must not edit the keys itself
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    real_read, real_select = os.read, select.select
    readers = {}  # one reader for each screen: the lines of a paste wait in it

    def run(steps, cols, screen=None):
        screen = screen or Screen(cols)
        _set_size(slave, cols)
        steps, unread = list(steps), 0

        def counting_read(fd, n):
            nonlocal unread
            data = real_read(fd, n)
            if fd == slave:
                unread -= len(data)
            return data

        def next_key_select(r, w, x, timeout=None):
            nonlocal unread
            while slave in r and not unread:
                assert steps, "the line did not end"
                step = steps.pop(0)
                if step is None:
                    return [], [], []
                if callable(step):
                    step()
                    continue
                unread += os.write(master, step)
            return real_select(r, w, x, timeout)

        monkeypatch.setattr(os, "read", counting_read)
        monkeypatch.setattr(select, "select", next_key_select)
        try:
            if id(screen) not in readers:
                readers[id(screen)] = _reader(slave, screen)[0]
            line = readers[id(screen)]("> ")
        finally:
            monkeypatch.setattr(os, "read", real_read)
            monkeypatch.setattr(select, "select", real_select)
        assert not steps, f"keys left unread: {steps}"
        return line, screen
    run.slave = slave  # for resizing it
    return run


def seen(screen, into):
    """A step that keeps what the screen shows at that point."""
    return lambda: into.append(screen.show())


def type_and_look(typed, text, cols, screen=None):
    """Type `text` then Enter; returns (line, what the screen showed before the Enter)."""
    screen = screen or Screen(cols)
    shots = []
    line, _ = typed(keys(text) + [seen(screen, shots), b"\r"], cols, screen)
    return line, shots[0]


def test_backspace_goes_back_across_a_row_boundary(typed):
    """The BS that should leave the second row stayed in its first column: the last
    character of the row above stayed on the screen and the next key went on the row below."""
    line, shown = type_and_look(typed, "abcdefghij\x7f\x7f\x7fX", cols=10)
    assert line == "abcdefgX"
    assert shown == ["> abcdefgX", CURSOR]


def test_backspace_of_the_character_in_the_last_column(typed):
    """After a character in the last column the terminal keeps the cursor on it, and a BS
    lands one column further left: the erase hit the character before it."""
    line, shown = type_and_look(typed, "abcdefgh\x7f\x7fXY", cols=10)
    assert line == "abcdefXY"
    assert shown == ["> abcdefXY", CURSOR]


def test_a_full_row_puts_the_cursor_on_the_next_one(typed):
    assert type_and_look(typed, "abcdefgh", cols=10) == ("abcdefgh", ["> abcdefgh", CURSOR])


def test_enter_after_a_full_row_leaves_no_empty_row(typed):
    screen = Screen(10)
    line, _ = typed(keys("abcdefgh\r"), 10, screen)
    screen.write("answer\n")
    assert line == "abcdefgh"
    assert screen.show() == ["> abcdefgh", "answer", CURSOR]


def test_ctrl_u_erases_every_row_of_the_line(typed):
    line, shown = type_and_look(typed, "abcdefghijklmnopqrstu\x15ok", cols=10)
    assert line == "ok"
    assert shown == ["> ok" + CURSOR]


def test_ctrl_w_erases_a_word_across_rows(typed):
    line, shown = type_and_look(typed, "abc defghijklmnop\x17x", cols=10)
    assert line == "abc x"
    assert shown == ["> abc x" + CURSOR]


def test_wide_characters(typed):
    """A wide character that does not fit in the last column goes whole to the next row;
    erasing it must bring the cursor back to the gap it left."""
    line, shown = type_and_look(typed, "a世界世界\x7fb", cols=10)
    assert line == "a世界世b"
    assert shown == ["> a世界世b", CURSOR]
    line, shown = type_and_look(typed, "世界世界世🙂\x7f\x7f!", cols=10)
    assert line == "世界世界!"
    assert shown == ["> 世界世界", "!" + CURSOR]


def test_a_letter_with_a_combining_mark_is_erased_whole(typed):
    """"e" + U+0301 shows as one "é"; a BS erased only the invisible accent, so the screen
    kept "é" while the line had lost it."""
    line, shown = type_and_look(typed, "cafe\u0301\x7f!", cols=20)
    assert line == "caf!"
    assert shown == ["> caf!" + CURSOR]
    line, shown = type_and_look(typed, "cafe\u0301!", cols=20)
    assert line == "cafe\u0301!"
    assert shown == ["> cafe\u0301!" + CURSOR]


def test_a_combining_mark_after_the_last_column_joins_its_letter(typed):
    line, shown = type_and_look(typed, "abcdefge\u0301", cols=10)
    assert line == "abcdefge\u0301"
    assert shown == ["> abcdefge\u0301", CURSOR]


def test_a_tab_is_kept_and_shown_as_spaces_to_the_next_tab_stop(typed):
    """A tab was echoed as a tab (the terminal jumps to the next stop) and erased as one
    column, which left the cursor in the middle of the gap."""
    line, shown = type_and_look(typed, "a\tb", cols=20)
    assert line == "a\tb"
    assert shown == ["> a     b" + CURSOR]
    line, shown = type_and_look(typed, "a\tb\x7f\x7fc", cols=20)
    assert line == "ac"
    assert shown == ["> ac" + CURSOR]
    # Near the end of the row, it fills the row (a terminal's tab never wraps).
    line, shown = type_and_look(typed, "abcdef\tx", cols=10)
    assert line == "abcdef\tx"
    assert shown == ["> abcdef", "x" + CURSOR]


def test_control_characters_are_not_shown(typed):
    """A C1 control character (U+009B is an 8-bit CSI to some terminals) was echoed as is."""
    line, shown = type_and_look(typed, "a\x07b\u009bc\x7f\x7fd", cols=20)
    assert line == "ad"
    assert shown == ["> ad" + CURSOR]


def test_bracketed_paste_marks_are_not_typed(typed):
    """Bracketed paste is not switched on, but a program that crashed may leave it on."""
    line, _ = typed([b"\x1b[200~one two\x1b[201~", b"\r"], cols=20)
    assert line == "one two"


def test_lines_pasted_at_once_show_one_by_one(typed):
    screen = Screen(20)
    line, _ = typed([b"first\rsecond\r"], cols=20, screen=screen)
    assert line == "first"
    assert screen.show() == ["> first", CURSOR]
    line, _ = typed([], cols=20, screen=screen)  # the next prompt reads the rest
    assert line == "second"
    assert screen.show() == ["> first", "> second", CURSOR]


EARLIER = "earlier answer\n"


@pytest.mark.parametrize("reflow", [False, True], ids=["xterm", "reflowing"])
@pytest.mark.parametrize("new_cols", [10, 30])
def test_a_resized_terminal_gets_the_line_redrawn(typed, new_cols, reflow):
    """After a resize, a wrapped line was left as the terminal made it, and a BS across a
    row boundary then went wrong at the new width. Now the line is drawn again at the new
    width, once the editor sees it (0.2 s, or the next key). Whether the terminal rewraps
    its rows cannot be told, so the editor goes up only the rows both cases have: never
    into the conversation above, at the price of a stale copy of the line's first rows
    in two cases (a reflowing terminal narrowed, xterm widened)."""
    screen = Screen(20)
    screen.write(EARLIER)
    shots = []

    def resize():
        _set_size(typed.slave, new_cols)
        screen.resize(new_cols, reflow)

    text = "abcdefghijklmnopqrstuvwxyz"  # with the prompt: 28 columns, two rows of 20
    steps = keys(text) + [resize, None, seen(screen, shots), b"\x7f", b"!",
                          seen(screen, shots), b"\r"]
    line, _ = typed(steps, 20, screen)
    assert line == text[:-1] + "!"
    expected = {
        (10, False): ["earlier an", "> abcdefgh", "ijklmnopqr", "stuvwxyz" + CURSOR],
        (10, True): ["earlier an", "swer", "> abcdefgh",
                     "> abcdefgh", "ijklmnopqr", "stuvwxyz" + CURSOR],
        (30, False): ["earlier answer", "> abcdefghijklmnopqr",
                      "> abcdefghijklmnopqrstuvwxyz" + CURSOR],
        (30, True): ["earlier answer", "> abcdefghijklmnopqrstuvwxyz" + CURSOR],
    }[new_cols, reflow]
    assert shots[0] == expected  # redrawn while waiting for a key
    assert shots[1] == expected[:-1] + [expected[-1].replace("z" + CURSOR, "!" + CURSOR)]


def test_a_10000_character_paste_then_keys_at_its_end(typed):
    """A long line arrives in big reads and is echoed once per read; a key after it
    writes a few bytes, not the whole line again (which would make every key slow)."""
    screen = Screen(80, rows=24)
    text = "".join(chr(ord("a") + i % 26) for i in range(10_000))
    data = text.encode()
    marks = []
    steps = [data[i:i + 4000] for i in range(0, len(data), 4000)]
    steps += [lambda: marks.append(len("".join(screen.writes))), b"\x7f", b"\x7f", b"!",
              lambda: marks.append(len("".join(screen.writes))), b"\r"]
    line, _ = typed(steps, 80, screen)
    assert line == text[:-2] + "!"
    assert marks[1] - marks[0] < 100, "".join(screen.writes)[marks[0]:]
    # "> " and 9,998 characters fill 125 rows of 80; the "!" starts the 126th; Enter
    # goes on to the next.
    assert screen.show()[-3:] == [text[9_918:9_998], "!", CURSOR]


def test_a_resize_then_a_key_at_once(typed):
    """The key right after a resize is shown at the new width (xterm, narrowed: the BS
    has to go up from the third row of 10 to the second)."""
    screen = Screen(20)

    def resize():
        _set_size(typed.slave, 10)
        screen.resize(10)

    shots = []
    steps = keys("abcdefghijklmnopqrs") + [resize] + keys("\x7f\x7f!")
    steps += [seen(screen, shots), b"\r"]
    line, _ = typed(steps, 20, screen)
    assert line == "abcdefghijklmnopq!"
    assert shots[0] == ["> abcdefgh", "ijklmnopq!", CURSOR]


def test_fg_after_ctrl_z_shows_the_line_again(typed):
    screen = Screen(20)
    shots = []
    steps = keys("abc") + [lambda: os.kill(os.getpid(), signal.SIGCONT), None,
                           seen(screen, shots), b"d", seen(screen, shots), b"\r"]
    line, _ = typed(steps, 20, screen)
    assert line == "abcd"
    assert shots == [["> abc", "> abc" + CURSOR], ["> abc", "> abcd" + CURSOR]]


def test_a_character_the_terminal_cannot_show_takes_the_width_of_its_question_mark(typed):
    """On an ASCII terminal "世" shows as "?", one column: erasing it as two erased the
    character before it too."""
    screen = Screen(20)
    screen.encoding = "ascii"
    line, shown = type_and_look(typed, "a世\x7fb世", cols=20, screen=screen)
    assert line == "ab世"
    assert shown == ["> ab?" + CURSOR]


def test_marks_typed_first_are_shown_once(typed):
    """Combining marks typed at the start of a line join the prompt's last cell, which
    rewriting the line alone did not clear: each new mark showed all the earlier ones
    again (six on the screen for three typed)."""
    line, shown = type_and_look(typed, "\u0301\u0301\u0301", cols=10)
    assert line == "\u0301\u0301\u0301"
    assert shown == ["> \u0301\u0301\u0301" + CURSOR]


def test_a_bracketed_paste_of_several_lines_is_one_message(typed, monkeypatch):
    """Lines pasted at once went out as separate messages, each one answered (readline
    keeps them as one). The editor switches bracketed paste on while it reads (on a
    terminal that is not "dumb"), keeps the line ends of a paste in the line, and leaves
    a last pasted line end to the Enter that sends it; the marks are off again after."""
    monkeypatch.setenv("TERM", "xterm-256color")
    screen = Screen(20)
    shots = []
    line, _ = typed([b"\x1b[200~first\rsecond\r\x1b[201~", seen(screen, shots), b"!\r"], 20, screen)
    assert line == "first\nsecond!"
    assert shots[0] == ["> first", "second" + CURSOR]
    assert screen.writes[0].startswith("\x1b[?2004h") and not screen.paste_marks
    monkeypatch.setenv("TERM", "dumb")  # a terminal that may print the codes: none sent
    screen = Screen(20)
    line, _ = typed([b"plain\r"], 20, screen)
    assert line == "plain" and not any("2004" in w for w in screen.writes)


def test_a_signal_during_a_mode_change_is_no_error(term, monkeypatch):
    """The SIGCONT of `fg` arriving during tcsetattr made it fail with EINTR, which Python
    does not retry for this call: a traceback instead of the prompt."""
    import termios
    master, slave = term
    real, failed = termios.tcsetattr, []

    def interrupted_once(fd, when, attrs):
        if not failed:
            failed.append(fd)
            raise termios.error(4, "Interrupted system call")
        return real(fd, when, attrs)
    monkeypatch.setattr(termios, "tcsetattr", interrupted_once)
    before = termios.tcgetattr(slave)
    read, _ = _reader(slave)
    os.write(master, b"x\n")
    assert read("> ") == "x" and failed
    assert termios.tcgetattr(slave) == before
