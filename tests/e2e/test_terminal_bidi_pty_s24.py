"""The Unicode bidirectional controls in what the terminal chat writes, on a real pty
(session 24).

A reply that repeats hostile text (a pasted file, say) can carry the overrides and
isolates of the bidi algorithm; a terminal that implements bidi (GNOME's VTE, Konsole,
mlterm) obeys them, and a command the model suggests looks unlike the characters a copy
of it gives ("Trojan Source", CVE-2021-42574). On a terminal the reply and its reasoning show
them as <U+XXXX>; written to a file, the text is as the model wrote it. (The model's name
at the start is made printable where it is read: each control a space.) The parrot (tests/e2e/test_terminal_output_s23.py) writes its reply
one byte a token, so each control comes as a piece of its own.
"""
import os
import time

import pytest

from tests.e2e import test_terminal_output_s23 as s23
from tests.e2e.conftest import TINY
from tests.e2e.test_terminal_gaps import reader  # noqa: F401 - the fixture
from tests.e2e.test_terminal_keep import _ends
from tests.e2e.test_terminal_pty import Chat, is_prompt
from tests.runtime.test_terminal_bidi_s24 import BIDI, FAMILY, HEART, shown

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")

# The reasoning hides an isolate; the answer suggests a command whose file name is
# reversed by RLO (shown as "notes exe.txt" where bidi is obeyed), and keeps an emoji's
# joiners and variation selector.
THOUGHT = "The user wants \u2067rm -rf ~\u2069 run."
ANSWER = (f'Run: cat "notes\u202etxt.exe\u202c" \u200f(ok)\nLRE..PDI: {BIDI} '
          f"{FAMILY}{HEART} end")
REPLY = f"<think>{THOUGHT}</think>{ANSWER}"


@pytest.fixture
def parrot(monkeypatch):
    """s23's parrot and `-p go`, with REPLY for its reply."""
    assert repr(s23.REPLY) in s23.PARROT
    monkeypatch.setattr(s23, "PARROT", s23.PARROT.replace(repr(s23.REPLY), repr(REPLY)))


def on_terminal(text: str) -> bytes:
    """text as the pty shows it inert: bidi controls as <U+XXXX>, \\n as \\r\\n (ONLCR)."""
    return shown(text).replace("\n", "\r\n").encode()


def no_bidi(out: bytes) -> bool:
    return not set(out.decode()) & set(BIDI)


def test_the_answer_on_a_terminal_shows_its_bidi_controls_the_reasoning_to_a_file_as_is(
        parrot, tmp_path):
    shown_out, thought = s23._asked_with_p("stdout", tmp_path)
    assert shown_out == on_terminal(ANSWER) + b"\r\n", shown_out
    assert 'cat "notes<U+202E>txt.exe<U+202C>" \u200f(ok)'.encode() in shown_out  # RLM kept
    assert FAMILY.encode() + HEART.encode() in shown_out  # joiners and VS16 kept
    assert no_bidi(shown_out)
    assert thought == ("Thinking...\n" + THOUGHT + "\n...done thinking.\n\n").encode()


def test_the_answer_to_a_file_is_as_written_the_reasoning_on_a_terminal_shown(
        parrot, tmp_path):
    answer, shown_err = s23._asked_with_p("stderr", tmp_path)
    assert answer == (ANSWER + "\n").encode()  # byte for byte, bidi controls and all
    assert shown_err == (s23.DIM + b"Thinking...\r\n" + on_terminal(THOUGHT)
                         + b"\r\n...done thinking." + s23.NORMAL + b"\r\n\r\n"), shown_err
    assert b"<U+2067>rm -rf ~<U+2069>" in shown_err and no_bidi(shown_err)


def test_the_model_s_file_name_at_the_start_is_printed_without_its_controls(reader, tmp_path):
    """A GGUF without a general.name is called by its file's name, which may carry
    controls too (a downloaded file's name is anyone's): made printable as general.name
    is (info.shown_name: each a space), for the terminal chat and the server's log."""
    data = TINY.read_bytes()
    old = (b"general.name" + (8).to_bytes(4, "little") + (10).to_bytes(8, "little")
           + b"tiny-llama")  # a string (type 8) of 10 bytes
    assert data.count(old) == 1
    name = "chat\u202efdp\x1b[2J.gguf"
    path = tmp_path / name
    path.write_bytes(data.replace(old, old[:-10] + b" " * 10))  # blank: no name
    c = Chat(reader + f"m = Model.load({str(path)!r})\n", "xterm-256color")
    try:
        out = c.read_until(is_prompt, 120)
        assert is_prompt(out), out
        time.sleep(0.2)  # a person's pause: readline may still be setting up
        c.write(b"\x04")
        out += _ends(c)
    finally:
        c.close()
    assert b"chatfile: chatting with chat fdp [2J.gguf. commands:" in out, out
    assert no_bidi(out) and b"\x1b[2J" not in out, out


# A chat template whose refusal carries a window title (OSC 0) and an override.
REFUSING = """
m.chat_template = "{{ raise_exception('no \\x1b]0;pwned\\x07 \\u202eok') }}"
"""


def test_a_chat_template_s_refusal_is_shown_inert(reader):
    """The text of a GGUF chat template's raise_exception reached the terminal as it was
    (stderr, a tty here): its escape sequences were obeyed."""
    c = Chat(reader + REFUSING, "xterm")
    try:
        out = c.read_until(is_prompt, 120)
        assert is_prompt(out), out
        out += c.write(b"hello\r")
        # The message not sent is given back at the prompt: Ctrl+U clears it, Ctrl+D ends.
        out += c.read_until(lambda b: (out + b).endswith(b"> hello"), 30)
        c.write(b"\x15\x04")
        out += _ends(c)
    finally:
        c.close()
    assert b"conversation: chat template error: no ^[]0;pwned^G <U+202E>ok" in out, out
    assert b"\x1b]0;" not in out and no_bidi(out)
