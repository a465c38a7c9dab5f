"""What the terminal chat writes of the model's text, on a real pty (session 23).

- A reply (and its reasoning) that carries control characters, as a prompt-injected paste
  can make a model write them: on a terminal they are shown, not obeyed (an ESC would
  clear the screen, retitle the window or set the clipboard with OSC 52), as `cat -v`
  shows them (C1 ones, which `cat -v` shows byte by byte, as U+FFFD); piped, the text is
  written byte for byte. The parrot of test_api_reasoning writes the reply one byte a
  token, so every sequence comes split over several pieces.
- TERM set but empty is a terminal without styles, as it is to the paste marks.
- A long read's status on a narrow terminal keeps its percentage: a shorter form, not
  the long one cut ("(reading the conver" at 20 columns).
"""
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import ROOT, TINY, tiny_4k
from tests.e2e.test_terminal_gaps import reader  # noqa: F401 - the fixture
from tests.e2e.test_terminal_keep import _ends
from tests.e2e.test_terminal_progress import LONG, STOPPED_MAX, _chat, _whole_chat
from tests.e2e.test_terminal_pty import SCRIPT, Chat, is_prompt

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")

DIM, NORMAL = b"\x1b[2m", b"\x1b[0m"
# The model's reasoning and answer, written to the terminal: a window title (OSC 0), the
# screen cleared by CSI alone (U+009B), the screen cleared (ESC [ 2J), the clipboard set
# (OSC 52, ended by BEL), backspaces, a carriage return that would write over a line's
# start, shift out (SO), DEL; a tab and a \r\n line end, which stay.
THOUGHT = "Plan: \x1b]0;pwned\x07 then \x9b2J."
ANSWER = ("Done\x1b[2J\x1b]52;c;cm0gLXJmIC8=\x07 ok\x08\x08\r\nnext\rX\x0e\x7f\tend")
REPLY = f"<think>{THOUGHT}</think>{ANSWER}"

# The chat with the parrot under Qwen3's template, a terminal with styles; the message
# "go" makes it write REPLY.
PARROT = f"""
import os
os.environ['TERM'] = 'xterm-256color'
from tests.e2e.test_api_reasoning import QWEN3, ThinkingParrot
from tests.e2e.test_api_tools import N_CTX
m = ThinkingParrot(QWEN3)
m.context_size = lambda n_ctx: N_CTX
_prompt = m.chat_prompt
def canned(messages, *a, **k):
    if messages[-1].get("content") == "go":
        messages = messages[:-1] + [{{"role": "user", "content": {REPLY!r}}}]
    return _prompt(messages, *a, **k)
m.chat_prompt = canned
"""
ASK_GO = """
_chat = terminal.chat
terminal.chat = lambda m, **kw: _chat(m, **{**kw, "prompt": "go"})
"""


def cat_v(text: str) -> str:
    """`text` as `cat -v` shows it (the reference for caret notation: ^[ for ESC, ^G for
    BEL, ^? for DEL), for text whose controls are C0 ones and DEL."""
    return subprocess.run(["cat", "-v"], input=text.encode(), capture_output=True,
                          check=True).stdout.decode()


def on_terminal(text: str) -> bytes:
    """Text with C0 and C1 controls as a pty shows it inert: a \\r\\n is a line end (the
    pty writes \\r\\n for each \\n, ONLCR), a C1 control is U+FFFD."""
    shown = "\ufffd".join(cat_v(part.replace("\r\n", "\n")) for part in text.split("\x9b"))
    return shown.replace("\n", "\r\n").encode()


def obeyed(out: bytes) -> list:
    """The control characters in `out` a terminal would obey, besides the line ends and
    tabs and the chat's own style codes."""
    out = out.replace(DIM, b"").replace(NORMAL, b"").replace(b"\r\n", b"\n")
    return re.findall(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]", out)


def test_a_reply_s_control_characters_are_shown_not_obeyed_on_a_terminal(reader):
    c = Chat(reader + PARROT, "xterm-256color")
    try:
        assert is_prompt(c.read_until(is_prompt, 120))
        time.sleep(0.2)  # a person's pause: readline may still be setting up
        out = c.write(b"go\r")
        out += c.read_until(lambda b: b"end\r\n" in out + b and is_prompt(out + b), 60)
        c.write(b"\x04")
        _ends(c)
    finally:
        c.close()
    # (after the line's echo, and readline's paste mode turned off)
    reply = out[out.index(DIM + b"Thinking..."):out.rindex(b"end\r\n") + len(b"end\r\n")]
    assert reply == (DIM + b"Thinking...\r\n" + on_terminal(THOUGHT) + b"\r\n...done thinking."
                     + NORMAL + b"\r\n\r\n" + on_terminal(ANSWER) + b"\r\n"), reply
    assert b"^[]52;c;cm0gLXJmIC8=^G" in reply and "\ufffd2J".encode() in reply
    assert obeyed(reply) == [], reply


def _asked_with_p(tty_for: str, tmp_path) -> tuple[bytes, bytes]:
    """(stdout, stderr) of `chatfile chat -p go` (the parrot writes REPLY), one of them
    (tty_for) a terminal, the other a file."""
    master, slave = pty.openpty()
    written = tmp_path / "written"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8",
               TERM="xterm-256color")
    proc = None
    try:
        with open(written, "wb") as file:
            outs = {"stdout": file, "stderr": file, tty_for: slave}
            proc = subprocess.Popen(
                [sys.executable, "-c", SCRIPT.format(tiny=str(TINY), hook=PARROT + ASK_GO)],
                stdin=subprocess.DEVNULL, cwd=ROOT, env=env, start_new_session=True, **outs)
        os.close(slave)
        shown, end = b"", time.monotonic() + 120
        while time.monotonic() < end:
            if select.select([master], [], [], 0.05)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # (the chat ended)
                    break
                if not chunk:
                    break
                shown += chunk  # (until the chat's end closes the pty: its last words too)
        assert proc.wait(30) == 0, shown + written.read_bytes()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return (shown, written.read_bytes()) if tty_for == "stdout" else \
        (written.read_bytes(), shown)


def test_the_answer_to_a_file_is_as_written_the_reasoning_on_a_terminal_inert(tmp_path):
    """`chatfile chat m.gguf -p go > answer.txt`: the answer byte for byte; the reasoning,
    on stderr, a terminal, is shown inert."""
    answer, shown = _asked_with_p("stderr", tmp_path)
    assert answer == (ANSWER + "\n").encode()
    assert shown == (DIM + b"Thinking...\r\n" + on_terminal(THOUGHT)
                     + b"\r\n...done thinking." + NORMAL + b"\r\n\r\n"), shown
    assert obeyed(shown) == [], shown


def test_the_reasoning_to_a_file_is_as_written_the_answer_on_a_terminal_inert(tmp_path):
    """`chatfile chat m.gguf -p go 2> thought.txt`: the reasoning byte for byte; the
    answer, on the terminal, inert."""
    shown, thought = _asked_with_p("stdout", tmp_path)
    assert thought == ("Thinking...\n" + THOUGHT + "\n...done thinking.\n\n").encode()
    assert shown == on_terminal(ANSWER) + b"\r\n", shown
    assert obeyed(shown) == [], shown


def test_term_set_but_empty_gets_no_styles(reader):
    """TERM="" is a terminal that may show codes as text, to the paste marks and the
    reading status (line_input.paste_marks_wanted): no faint reasoning either."""
    hook = PARROT.replace("os.environ['TERM'] = 'xterm-256color'", "")
    c = Chat(reader + hook, "")
    try:
        assert is_prompt(c.read_until(is_prompt, 120))
        time.sleep(0.2)
        out = c.write(b"<think>The user wants a city.</think>Paris.\r")
        out += c.read_until(lambda b: b"Paris.\r\n" in b and is_prompt(b), 60)
        c.write(b"\x04")
        out += _ends(c)
    finally:
        c.close()
    assert (b"Thinking...\r\nThe user wants a city.\r\n...done thinking.\r\n\r\nParis.\r\n"
            in out), out
    assert DIM not in out and NORMAL not in out, out


@pytest.fixture(scope="module")
def model_4k(tmp_path_factory):
    return tiny_4k(tmp_path_factory.mktemp("narrow"))


# The status's forms that fit (from docs/terminal.md), at each width.
NARROW = {20: rb"\(reading: \d+%\)",
          50: rb"\(reading the conversation: \d+%, about \d+ s left\)"}


@pytest.mark.parametrize("cols", sorted(NARROW))
def test_a_narrow_terminal_still_shows_how_far_the_read_got(reader, model_4k, cols):
    out = _whole_chat(_chat(reader, model_4k, cols), LONG)
    after = out[out.index(b"THE END\r\n"):]
    statuses = re.findall(rb"\r\x1b\[2m([^\x1b]*)\x1b\[0m\x1b\[K", after)
    assert statuses, after
    for s in statuses:
        assert re.fullmatch(NARROW[cols], s) and len(s) <= cols - 1, statuses
    last = after.rindex(statuses[-1]) + len(statuses[-1]) + len(NORMAL + b"\x1b[K")
    assert after[last:].startswith(b"\r\x1b[K"), after[last:]  # erased before the reply
    assert STOPPED_MAX.encode() in after
