"""runtime.line_input on a real pty, in-process: what the executable's terminal chat
reads with (it has no GNU readline). The whole chat on a pty: tests/e2e/test_terminal_pty.py."""
import io
import os

import pytest

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")


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
