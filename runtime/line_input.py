"""Reading a line from a terminal without GNU readline.

The one-file executable leaves readline out: it is GPL-3, and the executable is meant to
be handed to others under chatfile's own licence. Python's input() without readline
reads in the terminal's canonical mode, which holds 4095 characters of a line and
silently drops the rest of a longer pasted message. So, on a POSIX terminal, we switch
off canonical mode and echo for the time of one read, and do the little line editing a
chat prompt needs ourselves: Backspace, Ctrl+U (erase the line), Ctrl+W (erase a word),
Ctrl+D on an empty line (end of input). Escape sequences (arrow keys, Home, F-keys) are
swallowed instead of typed. Ctrl+C and Ctrl+Z stay the terminal's (ISIG is left on);
after a Ctrl+Z, `fg` gets the raw mode and the line back.
"""
from __future__ import annotations

import codecs
import os
import select
import signal
import threading
import unicodedata
from collections import deque

BACKSPACES = ("\x7f", "\x08")
CTRL_D, CTRL_U, CTRL_W, ESC = "\x04", "\x15", "\x17", "\x1b"


def _width(ch: str) -> int:
    """Columns a character takes on a terminal: 2 for wide East Asian, 0 for combining."""
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def raw_line_reader(fd: int, out, encoding: str | None = None):
    """A function(prompt) -> line for the terminal `fd` (whose text is in `encoding`,
    UTF-8 if None), echoing to the text stream `out`. Raises EOFError at Ctrl+D on an
    empty line or when the terminal closes; a Ctrl+C during the read raises
    KeyboardInterrupt as usual, and the line typed so far is lost. `read.discard()` drops
    the lines of a paste not read yet (after a Ctrl+C stopped an answer, the next lines
    of the paste must not go out one by one, as in canonical mode, where the terminal's
    Ctrl+C flushes its queue)."""
    import termios  # POSIX only; the caller checks

    pending: deque[str] = deque()  # typed (pasted) past the end of the line last returned
    # One decoder for the reader's life: a read can end inside a character whose first
    # bytes follow a line end, and that line is returned before the rest arrives.
    decoder = codecs.getincrementaldecoder(encoding or "utf-8")("replace")

    def read(prompt: str) -> str:
        saved = termios.tcgetattr(fd)
        raw = termios.tcgetattr(fd)
        raw[3] &= ~(termios.ICANON | termios.ECHO)  # lflag; \r -> \n (ICRNL) stays on
        raw[6][termios.VMIN], raw[6][termios.VTIME] = 1, 0  # wait for at least one byte
        line: list[str] = []  # typed so far: shown again after a Ctrl+Z and `fg`

        def back_from_stop(signum, frame):
            # The shell hands the terminal back after `fg` in its own (canonical) modes.
            termios.tcsetattr(fd, termios.TCSANOW, raw)
            _show(out, "\n" + prompt + "".join(line))
        on_sigcont = _handle(signal.SIGCONT, back_from_stop)
        try:
            # Raw before the prompt shows: a Ctrl+D typed in canonical mode is an end-of-
            # file mark, not a byte, and switching modes after it would lose it.
            termios.tcsetattr(fd, termios.TCSANOW, raw)
            out.write(prompt)
            out.flush()
            def read_text():
                # Back to Python code every 0.2 s while waiting: the SIGCONT of `fg` can
                # reach another thread (the stopped main thread is passed over), and its
                # handler runs only when this one does.
                while not select.select([fd], [], [], 0.2)[0]:
                    pass
                data = os.read(fd, 65536)
                return decoder.decode(data) if data else None
            return _edit(read_text, out, pending, line)
        except KeyboardInterrupt:
            pending.clear()
            raise
        finally:
            _handle(signal.SIGCONT, on_sigcont)
            termios.tcsetattr(fd, termios.TCSANOW, saved)
    read.discard = pending.clear
    return read


def _handle(signum, handler):
    """Set a signal's handler where Python allows it (the main thread); the one it
    replaces, for putting back. None (no handler set) leaves things as they are."""
    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signum, handler)


def _edit(read_text, out, pending: deque[str], line: list[str]) -> str:
    """Apply keys to `line` until the end of a line, and return it; what comes after it
    stays in `pending`. read_text() returns the next decoded text ("" when only part of a
    character came), None at the end of input."""
    escape = ""  # an escape sequence being swallowed, from its ESC
    while True:
        if not pending:
            text = read_text()
            if text is None:
                raise EOFError  # the terminal went away
            pending.extend(text)
        echo: list[str] = []  # written once per chunk: a long paste echoes at once
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
                        escape = ""
                    continue
                if ch == "\n":
                    echo.append("\n")
                    return "".join(line)
                if ch == ESC:
                    escape = ch
                elif ch in BACKSPACES:
                    if line:
                        echo.append(_erase(line.pop()))
                elif ch == CTRL_U:
                    echo.extend(_erase(line.pop()) for _ in range(len(line)))
                elif ch == CTRL_W:
                    while line and line[-1].isspace():
                        echo.append(_erase(line.pop()))
                    while line and not line[-1].isspace():
                        echo.append(_erase(line.pop()))
                elif ch == CTRL_D:
                    if not line:
                        raise EOFError
                elif ch == "\t" or ch >= " ":
                    line.append(ch)
                    echo.append(ch)
                # Other control characters are not text: dropped.
        finally:
            _show(out, "".join(echo))


def _show(out, text: str) -> None:
    encoding = getattr(out, "encoding", None) or "utf-8"
    # A character the terminal's encoding cannot show is echoed as "?", not a crash.
    out.write(text.encode(encoding, "replace").decode(encoding))
    out.flush()


def _erase(ch: str) -> str:
    n = _width(ch)
    return "\b" * n + " " * n + "\b" * n
