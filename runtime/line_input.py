"""Reading a line from a terminal without GNU readline.

The one-file executable leaves readline out: it is GPL-3, and the executable is meant to
be handed to others under chatfile's own licence. Python's input() without readline
reads in the terminal's canonical mode, which holds 4095 characters of a line and
silently drops the rest of a longer pasted message. So, on a POSIX terminal, we switch
off canonical mode and echo for the time of one read, and do the line editing a chat
prompt needs ourselves, with readline's keys (as in a shell or llama.cpp's CLI): the
cursor moves with Left/Right or Ctrl+B/Ctrl+F, Home/End or Ctrl+A/Ctrl+E; typed and pasted
text goes in at the cursor; Backspace erases before it, Delete (and Ctrl+D) at it, Ctrl+U
from the line's start to it, Ctrl+W the word before it, Ctrl+K from it to the end; Ctrl+L
clears the screen and shows the line again; Enter sends the whole line, wherever the
cursor is; Ctrl+D on an empty line is the end of input. Other escape sequences (Up,
F-keys) are swallowed instead of typed. Ctrl+C and Ctrl+Z stay the terminal's (ISIG is
left on); after a Ctrl+Z, `fg` gets the raw mode and the line back.

The screen is kept matching the line: the editor knows the row and column where each
character ends (wide East Asian characters and most emoji take two columns, combining
marks none, a tab the spaces to the next tab stop), so the cursor can go up and down
across the rows a long line wrapped into, a change in the middle of the line is shown by
clearing from there and writing the rest again, and a resized terminal gets the line
drawn again.
Bracketed paste is on while a line is read: the lines of a paste stay one message.
"""
from __future__ import annotations

import codecs
import errno
import os
import select
import signal
import threading
import time
import unicodedata
from collections import deque

BACKSPACES = ("\x7f", "\x08")
CTRL_D, CTRL_U, CTRL_W, ESC = "\x04", "\x15", "\x17", "\x1b"
CTRL_A, CTRL_B, CTRL_E, CTRL_F, CTRL_K, CTRL_L = "\x01", "\x02", "\x05", "\x06", "\x0b", "\x0c"
CSI = ESC + "["
SS3 = ESC + "O"
# The cursor keys' sequences, in both forms a terminal sends (CSI; SS3 in its "application
# cursor keys" mode), and Home/End as the VT220 (1~ 4~), rxvt (7~ 8~) and xterm (H F) send
# them. Ctrl+Left and the like (CSI 1;5D) are not in here: swallowed.
KEYS = {CSI + "D": "left", SS3 + "D": "left", CSI + "C": "right", SS3 + "C": "right",
        CSI + "H": "home", SS3 + "H": "home", CSI + "1~": "home", CSI + "7~": "home",
        CSI + "F": "end", SS3 + "F": "end", CSI + "4~": "end", CSI + "8~": "end",
        CSI + "3~": "delete"}
CLEAR_SCREEN = CSI + "H" + CSI + "2J"  # what Ctrl+L writes (readline's clear_screen)
# Bracketed paste: the terminal marks pasted text, so that the lines of a paste stay one
# message (as with readline) instead of going out, and being answered, one by one.
PASTE_ON, PASTE_OFF = CSI + "?2004h", CSI + "?2004l"
PASTE_START, PASTE_END = CSI + "200~", CSI + "201~"
TAB_STOP_COLS = 8     # where a terminal's tab stops are, and so where a typed tab shows to
DEFAULT_COLS = 80     # for a terminal that does not tell its width (a pty nobody sized)
IDLE_S = 0.2          # how often the wait for a key looks at the terminal's size
PASTE_GAP_S = 0.05    # a paste's pieces come closer together than this


def _width(ch: str) -> int:
    """Columns a character takes on a terminal, as wcwidth() counts them: 2 for wide East
    Asian ones (CJK, most emoji), 0 for combining marks and other zero-width ones
    (variation selectors, joiners, the medial and final jamo of a Hangul syllable), 1 for
    the rest."""
    if ch == "\u00ad":  # the soft hyphen is a format character, but terminals show it
        return 1
    if unicodedata.category(ch) in ("Mn", "Me", "Cf") or "\u1160" <= ch <= "\u11ff":
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _is_text(ch: str) -> bool:
    # A tab is kept (pasted code keeps its tabs); other control characters, C1 ones
    # (U+0080-U+009F, which some terminals obey as escapes) too, are dropped.
    return ch == "\t" or (ch >= " " and unicodedata.category(ch) != "Cc")


def paste_marks_wanted() -> bool:
    # A terminal that says it is "dumb" (or says nothing) may show the codes as text.
    return os.environ.get("TERM", "dumb") not in ("", "dumb")


def _columns(fd: int) -> int:
    try:
        cols = os.get_terminal_size(fd).columns
    except OSError:
        cols = 0
    return max(cols, 2) if cols else DEFAULT_COLS  # 2: a wide character must fit a row


def set_modes(fd: int, attrs: list) -> None:
    """termios.tcsetattr, made again when a signal interrupted it: Python retries most
    system calls then (PEP 475), not this one, and the SIGCONT of an `fg` arriving during
    it was a traceback ("termios.error: (4, 'Interrupted system call')")."""
    import termios
    while True:
        try:
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
            return
        except termios.error as e:
            if not e.args or e.args[0] != errno.EINTR:
                raise


def raw_line_reader(fd: int, out, encoding: str | None = None, typed_ahead: str = ""):
    """A function(prompt, text="") -> line for the terminal `fd` (whose text is in
    `encoding`, UTF-8 if None), echoing to the text stream `out`; the line starts as
    `text` (a line given back to edit). Raises EOFError at Ctrl+D on an empty line or when
    the terminal closes; a Ctrl+C during the read raises KeyboardInterrupt as usual, and
    the line typed so far is lost. `typed_ahead`: keys read before (the caller's, typed
    while the model loaded), taken before those still in the terminal. `read.discard()`
    drops the lines of a paste not read yet (after a Ctrl+C stopped an answer, the next
    lines of the paste must not go out one by one, as in canonical mode, where the
    terminal's Ctrl+C flushes its queue); `read.take_waiting()` takes the keys typed or
    pasted and not read yet (see read_waiting), as they came."""
    import termios  # POSIX only; the caller checks

    pending: deque[str] = deque(typed_ahead)  # typed (pasted) past the line last returned
    # One decoder for the reader's life: a read can end inside a character whose first
    # bytes follow a line end, and that line is returned before the rest arrives.
    decoder = codecs.getincrementaldecoder(encoding or "utf-8")("replace")

    def read(prompt: str, text: str = "") -> str:
        saved = termios.tcgetattr(fd)
        raw = termios.tcgetattr(fd)
        raw[3] &= ~(termios.ICANON | termios.ECHO)  # lflag; \r -> \n (ICRNL) stays on
        raw[6][termios.VMIN], raw[6][termios.VTIME] = 1, 0  # wait for at least one byte
        shown = _Shown(prompt, lambda: _columns(fd), getattr(out, "encoding", None))
        paste_marks = paste_marks_wanted()

        def back_from_stop(signum, frame):
            # The shell hands the terminal back after `fg` in its own (canonical) modes.
            # The line is shown again by the loop below: a handler that wrote now could
            # land in the middle of an echo. Continued in the background (`bg`, or the
            # SIGCONT that comes with `kill %1`), the terminal is the shell's: a change
            # of its modes stopped the chat again (SIGTTOU), and a `kill` then left it
            # "Stopped" instead of ending it (terminal.py takes it back at `fg`).
            shown.stopped = True
            if in_foreground(fd):
                set_modes(fd, raw)
        on_sigcont = set_handler(signal.SIGCONT, back_from_stop)
        try:
            # Raw before the prompt shows: a Ctrl+D typed in canonical mode is an end-of-
            # file mark, not a byte, and switching modes after it would lose it.
            set_modes(fd, raw)
            drawn = [PASTE_ON if paste_marks else "", shown.draw()]
            drawn.append(shown.add("".join(ch for ch in text if _is_text(ch) or ch == "\n")))
            _show(out, "".join(drawn))
            def read_text():
                # Back to Python code every 0.2 s while waiting: the SIGCONT of `fg` can
                # reach another thread (the stopped main thread is passed over), and its
                # handler runs only when this one does. A resized terminal, or `fg`, gets
                # the line drawn again then, without waiting for a key.
                while True:
                    woken = select.select([fd], [], [], IDLE_S)[0]
                    # (After `bg` the screen is the shell's: the line is drawn again
                    # once an `fg`, which sends no signal then, gives the terminal back.)
                    if in_foreground(fd):
                        if woken:
                            break
                        _show(out, shown.refit())
                    elif woken:
                        # Keys typed at the shell wake us too: a read from the
                        # background would stop us (SIGTTIN) inside it, and after `fg`
                        # the line was shown again only at the next key. They are the
                        # shell's: left to it.
                        time.sleep(IDLE_S)
                data = os.read(fd, 65536)
                return decoder.decode(data) if data else None
            return _edit(read_text, shown, pending, out)
        except KeyboardInterrupt:
            pending.clear()
            # The cursor to the line's end first, as readline does: what the chat writes
            # next (its reminder of how to quit) must not land on the line's later rows.
            try:
                _show(out, shown.go(len(shown.units)))
            except (OSError, ValueError):  # the terminal went away
                pass
            raise
        finally:
            set_handler(signal.SIGCONT, on_sigcont)
            set_modes(fd, saved)
            if paste_marks:  # off while the answer is written, and after the chat
                try:
                    _show(out, PASTE_OFF)
                except (OSError, ValueError):  # the terminal went away
                    pass
    read.discard = pending.clear
    read.take_waiting = waiting_taker(fd, pending, decoder)
    read.marks_pastes = paste_marks_wanted()  # (while it reads: see terminal.py's stops)
    return read


def waiting_taker(fd: int, pending: deque, decoder):
    """A reader's take_waiting(): the keys it read ahead (`pending`) and those waiting in
    the terminal `fd`, as text, taken (what was read ahead is cleared)."""
    def take_waiting() -> str:
        keys = "".join(pending)
        pending.clear()
        return keys + decoder.decode(read_waiting(fd))
    return take_waiting


def input_waiting(fd: int, within_s: float = 0.0) -> bool:
    """Whether the terminal has keys to read now, or gets some within within_s (the rest
    of a paste, or typed ahead)."""
    try:
        return bool(select.select([fd], [], [], within_s)[0])
    except (OSError, ValueError):
        return False


def read_waiting(fd: int) -> bytes:
    """The bytes the terminal (out of canonical mode) holds, with those that follow
    within PASTE_GAP_S of them: a long paste comes in pieces. Nothing waiting: b"" at
    once."""
    chunks: list[bytes] = []
    while input_waiting(fd, PASTE_GAP_S if chunks else 0.0):
        try:
            data = os.read(fd, 65536)
        except OSError:  # the terminal went away: the next read finds out
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def in_foreground(fd: int) -> bool:
    """Whether this process's group has the terminal (a background job that changes its
    modes is stopped by SIGTTOU)."""
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:  # not our controlling terminal: no job control to mind
        return True


def set_handler(signum, handler):
    """Set a signal's handler where Python allows it (the main thread); the one it
    replaces, for putting back. None (no handler set) leaves things as they are."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signum, handler)


def _edit(read_text, shown: "_Shown", pending: deque[str], out) -> str:
    """Apply keys to the line `shown` until the end of a line, and return it; what comes
    after it stays in `pending`. read_text() returns the next decoded text ("" when only
    part of a character came), None at the end of input."""
    escape = ""  # an escape sequence being swallowed, from its ESC
    pasting = False  # between the marks of a bracketed paste: a line end is text
    while True:
        if not pending:
            text = read_text()
            if text is None:
                raise EOFError  # the terminal went away
            pending.extend(text)
        # Written once per chunk: a long paste echoes at once. A resize since the last
        # chunk is drawn first, at the width the keys after it are shown at.
        echo: list[str] = [shown.refit()]
        try:
            while pending:
                ch = pending.popleft()
                if escape and ch < " ":
                    escape = ""  # a lone Esc: the key after it (Enter too) counts
                if escape:
                    escape += ch
                    # ESC [ ... final byte (CSI), ESC O x (SS3), or ESC x.
                    if (escape.startswith(ESC + "[") and len(escape) > 2 and "@" <= ch <= "~") \
                            or (escape.startswith(ESC + "O") and len(escape) == 3) \
                            or (len(escape) == 2 and ch not in "[O"):
                        if escape == PASTE_START:
                            pasting = True
                        elif escape == PASTE_END:
                            pasting = False
                            if shown.at and shown.units[shown.at - 1] == "\n":
                                # A paste that ends its last line waits for Enter, as
                                # readline's does: the message can still be added to.
                                echo.append(shown.erase(shown.at - 1, shown.at))
                        elif escape in KEYS and not pasting:
                            echo.append(_key(shown, KEYS[escape]))
                        escape = ""
                    continue
                if ch == "\n" and not pasting:
                    echo.append(shown.go(len(shown.units)) + shown.finish())
                    return shown.text()
                if _is_text(ch) or ch == "\n":  # (a line of a paste: the message goes on)
                    # The text typed or pasted in a row goes in at once: the rest of the
                    # line after the cursor is written again once, not once per character.
                    run = [ch]
                    while pending and (_is_text(pending[0]) or pasting and pending[0] == "\n"):
                        run.append(pending.popleft())
                    echo.append(shown.add("".join(run)))
                elif ch == ESC:
                    escape = ch
                elif pasting:
                    # Pasted text is text, as with readline: a form feed (^L) or vertical
                    # tab (^K) in pasted code is dropped, not a key that clears the screen
                    # or erases the rest of the line.
                    pass
                elif ch == CTRL_D and not shown.units:
                    raise EOFError
                else:
                    echo.append(_key(shown, ch))
        finally:
            _show(out, "".join(echo))


def _key(shown: "_Shown", key: str) -> str:
    """What an editing key (a control character, or a name from KEYS) does to the line:
    what to write for it. Other keys do nothing."""
    at = shown.at
    if key in ("left", CTRL_B):
        return shown.go(at - 1)
    if key in ("right", CTRL_F):
        return shown.go(at + 1)
    if key in ("home", CTRL_A):
        return shown.go(0)
    if key in ("end", CTRL_E):
        return shown.go(len(shown.units))
    if key in BACKSPACES:
        return shown.erase(at - 1, at)
    if key in ("delete", CTRL_D):  # (Ctrl+D on an empty line is the end of input)
        return shown.erase(at, at + 1)
    if key == CTRL_U:
        return shown.erase(0, at)
    if key == CTRL_W:
        return shown.erase(at - last_word_units(shown.units[:at]), at)
    if key == CTRL_K:
        return shown.erase(at, len(shown.units))
    if key == CTRL_L:
        return CLEAR_SCREEN + shown.draw()
    return ""


def last_word_units(units: list[str]) -> int:
    """How many units at the end Ctrl+W erases: the spaces there, and the word before."""
    n = len(units)
    while n and units[n - 1][0].isspace():
        n -= 1
    while n and not units[n - 1][0].isspace():
        n -= 1
    return len(units) - n


def _up_and_clear(rows_up: int, col: int) -> str:
    """The cursor up `rows_up` rows to column `col`, and the screen cleared from there."""
    return ((f"{CSI}{rows_up}A" if rows_up else "") + "\r" + (f"{CSI}{col}C" if col else "")
            + CSI + "J")


def _move(start: tuple[int, int], to: tuple[int, int]) -> str:
    """The cursor from (row, column) `start` to `to`, rows that exist (CSI B does not
    scroll a new one in)."""
    if start == to:
        return ""
    rows = to[0] - start[0]
    return ((f"{CSI}{-rows}A" if rows < 0 else f"{CSI}{rows}B" if rows else "")
            + "\r" + (f"{CSI}{to[1]}C" if to[1] else ""))


class _Shown:
    """The prompt and the line as the terminal shows them, and what to write to keep the
    screen matching the line (each method returns it).

    The line is a list of units: a character with the zero-width ones that follow it (an
    accent, a variation selector), which show in one cell and go with one Backspace.
    ends[0] is where the prompt ends, ends[i + 1] where units[i] does, as (row, column)
    counted from the prompt's first cell at the width the line was drawn at. The cursor
    stands before units[at], at ends[at] (after the line, ends[-1], unless moved). A change
    there (a key typed, erased) is shown by clearing the screen from the first unit it
    changes, writing the units from there to the end again, and going back to ends[at]:
    a tab or a wide character after it may now sit elsewhere, and a terminal has no
    insert mode that knows about wrapped rows. A row filled to its last column is
    followed by " \r":
    terminals keep the cursor on the last column until the next character (and a
    Backspace or a move from there lands one column short), the space makes the wrap
    happen, so the cursor is truly where ends[-1] says, on a row that exists (a CSI B
    would not scroll a new one in)."""

    def __init__(self, prompt: str, columns, encoding: str | None):
        self.prompt = prompt
        self.columns = columns   # function() -> the terminal's width now
        self.encoding = encoding or "utf-8"
        self.units: list[str] = []
        self.ends = [(0, 0)]
        self.at = 0              # the cursor's place: before units[at]
        self.width_cols = columns()
        self.stopped = False     # set after Ctrl+Z and `fg`: show it all again

    def text(self) -> str:
        return "".join(self.units)

    def draw(self) -> str:
        """Prompt and line, from the first column of the row the cursor is on; the cursor
        then goes back to its place in the line."""
        self.width_cols = self.columns()
        shown, self.ends[0] = self._place(self.prompt, (0, 0))
        return shown + self._place_units(0) + _move(self.ends[-1], self.ends[self.at])

    def finish(self) -> str:
        """What Enter writes: the cursor goes to the start of the next row. After a row
        filled to its end the cursor already stands on a new empty row, and a newline
        there would leave it empty above the answer: the last character is written again
        instead, which leaves the cursor on the full row, and the newline goes from there.
        The cursor must be at the line's end (go() there first)."""
        k = len(self.units) - 1
        if k < 0 or self.ends[-1][1] or self.ends[-1][0] == self.ends[k][0]:
            return "\n"
        shown, _ = self._place(self.units[k], self.ends[k])
        return self._back_to(k) + shown.removesuffix(" \r") + "\n"

    def refit(self) -> str:
        """The line drawn again if the terminal was resized, or stopped and continued."""
        if self.stopped:
            self.stopped = False
            return "\n" + self.draw()   # the shell wrote below it meanwhile
        if self.columns() == self.width_cols:
            return ""
        # Some terminals rewrap the rows a long line wrapped into (VTE, Konsole, kitty,
        # Windows Terminal), others cut or pad them (xterm): the cursor's row in the line
        # is then its row at the new width or at the old one, and nothing tells which. Go
        # up the rows both have: never into the conversation above, at the price of a
        # stale copy of the line's first rows in the other case.
        rows_old = self.ends[self.at][0]
        shown = self.draw()
        return self._home(min(rows_old, self.ends[self.at][0])) + shown

    def add(self, chars: str) -> str:
        """Put `chars` (typed or pasted) in at the cursor, which goes after them."""
        k = at = self.at  # k: the first unit changed
        for ch in chars:
            if _width(ch) == 0 and at:
                # Written again with its character, so the terminal puts it in that cell,
                # also when the character ended a row and the cursor went on to the next.
                self.units[at - 1] += ch
                k = min(k, at - 1)
            elif at < len(self.units) and not _width(self.units[at][0]) and ch != "\n":
                # Before marks typed first (a unit may begin with one only at the line's
                # start): they belong to this character now, as they show on it.
                self.units[at] = ch + self.units[at]
                at += 1
            else:
                self.units.insert(at, ch)
                at += 1
        return self._redraw(k, at)

    def erase(self, start: int, stop: int) -> str:
        """Erase units[start:stop] (start at most the cursor's place); the cursor goes to
        where they were."""
        start, stop = max(start, 0), min(stop, len(self.units))
        if start >= stop:
            return ""
        del self.units[start:stop]
        return self._redraw(start, start)

    def go(self, k: int) -> str:
        """The cursor to its place before units[k] (the line's start or end at most)."""
        k = max(0, min(k, len(self.units)))
        move = _move(self.ends[self.at], self.ends[k])
        self.at = k
        return move

    def _redraw(self, k: int, at: int) -> str:
        """What to write once units[k:] changed (units[:k] did not, nor ends[:k + 1]), with
        the cursor still at ends[self.at] (k at most self.at) and to go before units[at]."""
        if k == self.at == len(self.ends) - 1:  # (ends: still the line's before the change)
            # Typed at the line's end, the usual case: nothing after it to clear.
            self.at = at
            return self._place_units(k)
        if not k:
            # From the prompt on: marks typed first sit on the prompt's last cell, which a
            # redraw of the line alone would leave them on.
            home = self._home(self.ends[self.at][0])
            self.at = at
            return home + self.draw()
        back = self._back_to(k)
        self.at = at
        return back + self._place_units(k) + _move(self.ends[-1], self.ends[at])

    def _home(self, rows_up: int) -> str:
        """Up `rows_up` rows to the first column, and clear from there down."""
        return _up_and_clear(rows_up, 0)

    def _back_to(self, k: int) -> str:
        """From the cursor back to where units[k] begins (k at most self.at), clearing
        all after it."""
        row, col = self.ends[k]
        return _up_and_clear(self.ends[self.at][0] - row, col)

    def _place_units(self, k: int) -> str:
        """Show units[k:] from ends[k] (where the cursor is), noting where each ends."""
        del self.ends[k + 1:]
        parts = []
        for unit in self.units[k:]:
            shown, end = self._place(unit, self.ends[-1])
            parts.append(shown)
            self.ends.append(end)
        return "".join(parts)

    def _place(self, text: str, at: tuple[int, int]) -> tuple[str, tuple[int, int]]:
        """What to write for `text` with the cursor at `at`, and where the cursor ends."""
        row, col = at
        width = self.width_cols
        if text.startswith("\t"):  # the spaces to the next tab stop; a tab never wraps
            text = " " * min(TAB_STOP_COLS - col % TAB_STOP_COLS, width - col) + text[1:]
        # What the terminal's encoding cannot show is shown as "?" (and counted so).
        text = text.encode(self.encoding, "replace").decode(self.encoding)
        filled = False
        for ch in text:
            if ch == "\n":  # a pasted line end: the text goes on at the next row's start
                row, col, filled = row + 1, 0, False
                continue
            w = _width(ch)
            if not w:
                continue
            if col + w > width:  # a wide character that does not fit wraps whole
                row, col = row + 1, 0
            col += w
            filled = col == width
            if filled:
                row, col = row + 1, 0
        return (text + " \r" if filled else text), (row, col)


def _show(out, text: str) -> None:
    if not text:
        return
    encoding = getattr(out, "encoding", None) or "utf-8"
    # A character the terminal's encoding cannot show is echoed as "?", not a crash.
    out.write(text.encode(encoding, "replace").decode(encoding))
    out.flush()
