"""The terminal chat's faint reasoning (see test_terminal_reasoning.py, which also checks
NO_COLOR) and a Ctrl+Z mid-thought: the style goes off before the shell has the terminal
(its text was faint until `fg`), and on again after `fg`, in the chat and with -p (the
reasoning then on stderr).
"""
import os

import pytest

from tests.e2e.test_terminal_pty import SLOW, Chat, chat_factory, is_prompt  # noqa: F401
from tests.e2e.test_terminal_reasoning import DIM, NORMAL, PARROT, STYLED, one_reader
from tests.e2e.test_terminal_suspend_paste import _ctrl_z, _fg, stoppable  # noqa: F401

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")

LONG_THOUGHT = ("<think>" + "step " * 60 + "</think>Done.").encode() + b"\r"


def _faint_at_end(out: bytes) -> bool:
    return out.rfind(DIM) > out.rfind(NORMAL)


def _stopped_and_continued(c: Chat, out: bytes) -> bytes:
    """Ctrl+Z mid-thought (`out`: faint at its end), then `fg`: the style is off while the
    chat is stopped, and on again before the reasoning goes on."""
    assert _faint_at_end(out), out
    _ctrl_z(c)
    # Stopped: what it wrote is all there, and it must end with the style off.
    out += c.read_until(lambda b: not _faint_at_end(out + b), 30)
    assert not _faint_at_end(out), out
    at_stop = len(out)
    _fg(c)
    # The reasoning goes on, faint again from its first piece after `fg`.
    out += c.read_until(lambda b: b"step" in b, 60)
    assert out[at_stop:].startswith(DIM) and b"step" in out[at_stop:], out[at_stop:]
    return out


@one_reader
def test_ctrl_z_mid_thought_gives_the_shell_its_style_and_fg_the_faint_back(
        chat_factory, stoppable):
    c = chat_factory(STYLED + PARROT + SLOW)  # each forward pass 0.8 s: a long thought
    c.write(LONG_THOUGHT)
    out = _stopped_and_continued(c, c.read_until(lambda b: b"Thinking...\r\nstep" in b))
    c.ctrl_c()
    out += c.read_until(lambda b: b"[stopped]" in b and is_prompt(b))
    assert NORMAL + b" [stopped]\r\n" in out, out
    c.write(b"\x04")
    assert c.proc.wait(30) == 0


# `chatfile chat -p TEXT` on a terminal: the reasoning goes to stderr, faint there too.
PROMPTED = """
_chat = terminal.chat
terminal.chat = lambda m, **kw: _chat(m, **{**kw, "prompt": %r})
""" % LONG_THOUGHT.decode().rstrip("\r")


def test_ctrl_z_mid_thought_with_p_gives_the_shell_its_style_too(stoppable):
    c = Chat(STYLED + PARROT + SLOW + PROMPTED)
    try:
        _stopped_and_continued(c, c.read_until(lambda b: b"Thinking...\r\nstep" in b, 120))
    finally:
        c.close()
