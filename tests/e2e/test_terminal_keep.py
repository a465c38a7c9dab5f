"""The terminal chat never loses what the user typed: an unknown /command, a message that
could not be sent, keys typed while the model loads. On a real pty (the harness of
tests/e2e/test_terminal_pty.py), with readline and with the own line editor, under a dumb
terminal and under TERM=xterm (bracketed paste on). The model's turn is replaced by an
echo of what the chat would send, except where the model's own answer matters."""
import io
import os
import subprocess

import pytest

from tests.e2e.test_terminal_gaps import reader  # noqa: F401 - the fixture
from tests.e2e.test_terminal_pty import ECHO, Chat, _got, is_prompt

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")

# Run where the chat's model has loaded: the chat starts only once the test creates the
# file, so that keys can be typed "while the model loads", as a person would during the
# seconds a real model takes.
LOADING = """
import os
print("LOADING", flush=True)
while not os.path.exists({flag!r}):
    time.sleep(0.05)
"""


def _loading_chat(reader, term, tmp_path, hook=ECHO):
    flag = tmp_path / "loaded"
    c = Chat(reader + hook + LOADING.format(flag=str(flag)), term)
    out = c.read_until(lambda b: b"LOADING" in b, 120)
    assert b"LOADING" in out, out
    return c, flag


def _ends(c: Chat) -> bytes:
    """What the chat writes until it ends; asserts it ended by itself, with status 0."""
    out = c.read_until_ended(30)
    try:
        code = c.proc.wait(30)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 0, out
    return out


@pytest.mark.parametrize("term", ["dumb", "xterm"])
def test_ctrl_d_typed_while_the_model_loads_ends_the_chat(reader, term, tmp_path):
    """The terminal is in its own (canonical) mode until the chat starts: a Ctrl+D there is
    an end-of-file mark, which became a NUL (ignored) when the line reader left that mode.
    The chat waited at its first prompt as if nothing had been typed."""
    c, loaded = _loading_chat(reader, term, tmp_path)
    try:
        c.write(b"\x04")
        loaded.touch()
        _ends(c)
    finally:
        c.close()


@pytest.mark.parametrize("term", ["dumb", "xterm"])
def test_lines_typed_while_the_model_loads_reach_the_prompts(reader, term, tmp_path):
    """Typed ahead as in a shell: whole lines, one with a Ctrl+D in the middle (which
    ends nothing there), a Ctrl+D that ends the chat once they are answered, and what
    follows it, left in the terminal for the shell."""
    c, loaded = _loading_chat(reader, term, tmp_path)
    try:
        c.write(b"first line\rhel\x04lo\r\x04echo for the shell\r")
        loaded.touch()
        out = _ends(c)
        assert _got("first line") in out and _got("hello") in out, out
        assert out.index(_got("first line")) < out.index(_got("hello")), out
        assert b"got " not in out.split(_got("hello"), 1)[1], out  # nothing after the ^D
    finally:
        c.close()


def test_a_line_begun_while_the_model_loads_is_finished_at_the_prompt(reader, tmp_path):
    c, loaded = _loading_chat(reader, "xterm", tmp_path)
    try:
        c.write(b"begun")
        loaded.touch()
        out = c.read_until(lambda b: b"chatting" in b and b.rstrip().endswith(b"begun"), 60)
        assert b"> begun" in out, out
        c.write(b" and ended\r")
        out = c.read_until(lambda b: b"got " in b and is_prompt(b), 30)
        assert _got("begun and ended") in out, out
        c.write(b"\x04")
        _ends(c)
    finally:
        c.close()


def _started(reader, term, hook=ECHO) -> Chat:
    c = Chat(reader + hook, term)
    out = c.read_until(is_prompt, 120)
    assert is_prompt(out), out
    return c


QUESTION = "/usr/bin/python is slow, why?"


@pytest.mark.parametrize("term", ["dumb", "xterm"])
def test_an_unknown_command_comes_back_to_send_as_a_message(reader, term):
    """"/usr/bin/python is slow, why?" was "unknown command /usr/bin/python", and the
    question was gone. It comes back at the prompt with // in front: Enter sends it."""
    c = _started(reader, term)
    try:
        echo = c.write(QUESTION.encode() + b"\r")
        out = c.read_until(lambda b: b"unknown command" in echo + b
                           and (echo + b).rstrip().endswith(b"why?"), 30)
        out = (echo + out).split(b"unknown command", 1)[1]
        assert out.startswith(b" /usr/bin/python (type /help)"), out
        assert out.rstrip().endswith(b"> /" + QUESTION.encode()), out
        out = c.write(b"\r")
        out += c.read_until(lambda b: b"got " in out + b and is_prompt(out + b), 30)
        assert _got(QUESTION) in out, out
        c.write(b"\x04")
        _ends(c)
    finally:
        c.close()


def test_an_unknown_command_that_comes_back_can_be_edited(reader):
    """A typo in a command's name: the line comes back to be mended, not retyped."""
    c = _started(reader, "xterm")
    try:
        echo = c.write(b"/sytem Be brief.\r")
        c.read_until(lambda b: (echo + b).rstrip().endswith(b"> //sytem Be brief."), 30)
        c.write(b"\x15/help\r")  # Ctrl+U: the line given back goes
        out = c.read_until(lambda b: b"commands: /reset" in b and is_prompt(b), 30)
        assert b"commands: /reset" in out, out
        c.write(b"/frobnicate\r")
        c.read_until(lambda b: b"unknown command" in b and b.rstrip().endswith(b"frobnicate"), 30)
        out = c.write(b"\x7f\x7f\x7f\x7f\x7f\x7fwhatever\r")  # Backspaces: //frob + whatever
        out += c.read_until(lambda b: b"got " in out + b and is_prompt(out + b), 30)
        assert _got("/frobwhatever") in out, out
        c.write(b"\x04")
        _ends(c)
    finally:
        c.close()


def test_an_unknown_command_in_a_paste_keeps_the_lines_after_it(reader):
    """Several lines pasted at once into a terminal without paste marks (TERM=dumb, or
    readline, which Python keeps from asking for them) go one by one: the line after an
    unknown command was sent alone, the command's line lost. They come back together,
    with one notice, and nothing is sent before the user has seen it. (Each line was
    judged on its own: a notice and the whole text again per line.)"""
    c = _started(reader, "dumb")
    try:
        lines = ["/tmp is full", "what now?", "df says 100%", "/var too"]
        out = c.write("\r".join(lines).encode() + b"\r")
        out += c.read_until(lambda b: b"unknown command" in out + b
                            and (out + b).rstrip().endswith(b"/var too"), 30)
        assert b"got " not in out, out
        assert out.count(b"unknown command") == 1, out
        assert (b"unknown command /tmp (type /help); your line is back with the lines after "
                b"it, // in front: Enter sends them as one message") in out, out
        out = c.write(b"\r")
        out += c.read_until(lambda b: b"got " in out + b and is_prompt(out + b), 30)
        assert _got("\n".join(lines)) in out, out
        assert out.count(b"unknown command") == 0, out
        c.write(b"\x04")
        _ends(c)
    finally:
        c.close()


def test_a_message_too_long_for_the_context_comes_back(reader):
    """The context (256 tokens here) cannot hold it: the error said "shorten it", and the
    message was gone, a long paste with it."""
    c = _started(reader, "xterm", hook="")
    try:
        text = " ".join(f"word{i}" for i in range(200)) + " THE END"
        echo = c.write(text.encode() + b"\r")
        out = c.read_until(lambda b: b"too long" in echo + b
                           and (echo + b).rstrip().endswith(b"THE END"), 60)
        out = (echo + out).split(b"the message is too long for the context", 1)
        assert len(out) == 2 and b"> word0 word1" in out[1], out  # (the rest wraps)
        assert out[1].rstrip().endswith(b"THE END"), out
        c.write(b"\x15\x04")  # Ctrl+U: the text goes; Ctrl+D: quit
        _ends(c)
    finally:
        c.close()


def test_a_multi_line_message_that_begins_with_a_slash_is_a_message(tiny_model, monkeypatch):
    """The lines between \"\"\" were taken for a /command when the first began with /:
    "unknown command /usr/bin/python", and every line typed was lost."""
    from runtime import terminal
    def echo(self, text):
        self._say(f"got {text!r}")
        return text
    monkeypatch.setattr(terminal._Chat, "ask", echo)
    out = io.StringIO()
    stdin = io.StringIO('"""\n/usr/bin/python is slow\nwhy?\n"""\n"""/reset"""\n/reset\n')
    assert terminal.chat(tiny_model, n_ctx=256, stdin=stdin, stdout=out, interactive=True) == 0
    said = out.getvalue()
    assert "got '/usr/bin/python is slow\\nwhy?'" in said, said
    assert "got '/reset'" in said and "unknown command" not in said, said
    assert said.count("(conversation reset)") == 1, said  # the plain /reset still is one
