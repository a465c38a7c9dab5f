"""The interactive chat on a real terminal (a pty): what only a terminal does.

A terminal's line editing (canonical mode) holds 4095 characters, Ctrl+C is a SIGINT to
the whole process group (sent here with killpg, as the terminal does), Ctrl+D is the end
of input.
"""
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import ROOT, TINY

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")

# The chat as `chatfile chat` runs it (runtime/cli.py turns a KeyboardInterrupt that gets
# out into 130). HOOK may replace parts of it to observe or slow them down.
SCRIPT = """
import signal, sys, time
# A terminal's foreground job gets Ctrl+C; a test run started in the background (where
# shells ignore SIGINT, and children inherit that) must not make this chat ignore it.
signal.signal(signal.SIGINT, signal.default_int_handler)
from runtime.model import Model
from runtime.sampling import SamplingParams
from runtime import terminal
m = Model.load({tiny!r})
{hook}
try:
    code = terminal.chat(m, n_ctx=256, params=SamplingParams(temperature=0.0), max_tokens=-1)
except KeyboardInterrupt:
    code = 130
sys.exit(code)
"""

# The model's turn replaced by a report of what the chat would send.
ECHO = """
def echo(self, text):
    import zlib
    self._say(f"got {len(text)} characters, crc {zlib.crc32(text.encode())}, ending {text[-12:]!r}")
    return text
terminal._Chat.ask = echo
"""

# Every forward pass takes 0.8 s: the worker notices a cancel only that late, as on a
# long prefill of a big model.
SLOW = """
new_session = m.session
def slow_session(n_ctx):
    s = new_session(n_ctx)
    fast = s.eval
    def slow(ids, *a, **k):
        time.sleep(0.8)
        return fast(ids, *a, **k)
    s.eval = slow
    return s
m.session = slow_session
"""


def is_prompt(buf: bytes) -> bool:
    return buf.rstrip().endswith(b">")


class Chat:
    # A session of its own: killpg reaches the chat alone. Such a process group is an
    # orphan to the kernel, which discards a SIGTSTP that would stop it.
    POPEN_OPTIONS = {"start_new_session": True}

    def __init__(self, hook="", term="dumb"):
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8", TERM=term)
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT.format(tiny=str(TINY), hook=hook)],
            stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env,
            **self.POPEN_OPTIONS)
        os.close(slave)

    def read_until(self, done, timeout_s=60) -> bytes:
        buf, end = b"", time.monotonic() + timeout_s
        while time.monotonic() < end and not done(buf):
            if select.select([self.master], [], [], 0.05)[0]:
                chunk = self._read()
                if not chunk:
                    break
                buf += chunk
        return buf

    def read_until_ended(self, timeout_s=30) -> bytes:
        """All the chat writes until it ends, its last words too: read until the pty's
        other side has closed. (A read_until that stops once the process has ended lost
        what it wrote just before, when the test was not run between its last read and
        that check, seen on a loaded 2-core machine: the line end after the last prompt.)"""
        return self.read_until(lambda b: False, timeout_s)

    def _read(self) -> bytes:
        try:
            return os.read(self.master, 65536)
        except OSError:  # the other side closed
            return b""

    def write(self, data: bytes, timeout_s=60) -> bytes:
        """Type data, reading the echo meanwhile (a full pty would block both sides)."""
        echoed, end = b"", time.monotonic() + timeout_s
        while data and time.monotonic() < end:
            r, w, _ = select.select([self.master], [self.master], [], 0.05)
            if r:
                echoed += self._read()
            if w:
                data = data[os.write(self.master, data[:512]):]
        assert not data, "the chat stopped reading its input"
        return echoed

    def ctrl_c(self):
        os.killpg(self.proc.pid, signal.SIGINT)  # what the terminal does on Ctrl+C

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


# The one-file executable leaves GNU readline out (GPL-3); the chat then reads the terminal
# with runtime/line_input.py. Each test runs with both.
NO_READLINE = "sys.modules['readline'] = None  # import readline fails, as in the executable\n"


@pytest.fixture(params=["readline", "own line editor"])
def chat_factory(request):
    chats = []
    if request.param == "readline":
        pytest.importorskip("readline", reason="this Python has no readline module")

    def start(hook=""):
        chats.append(Chat((NO_READLINE if request.param != "readline" else "") + hook))
        assert is_prompt(chats[-1].read_until(is_prompt, 120))
        # A person types a moment after the prompt shows, not within microseconds, while
        # readline may still be setting the terminal up.
        time.sleep(0.2)
        return chats[-1]
    yield start
    for c in chats:
        c.close()


def test_a_long_pasted_line_arrives_whole(chat_factory):
    """Canonical mode kept 4095 characters of a line and dropped the rest, silently."""
    c = chat_factory(ECHO)
    text = "".join(f"{i % 10}" for i in range(9000)) + " THE END"
    c.write(text.encode() + b"\r")
    out = c.read_until(lambda b: b"got " in b and is_prompt(b))
    import zlib
    got = f"got 9008 characters, crc {zlib.crc32(text.encode())}, ending '6789 THE END'"
    assert got.encode() in out, out[-300:]
    c.write(b"\x04")  # Ctrl+D: leave
    assert c.proc.wait(30) == 0


def test_ctrl_c_at_the_prompt_keeps_the_chat(chat_factory):
    c = chat_factory(ECHO)
    c.ctrl_c()
    out = c.read_until(lambda b: b"Ctrl+D" in b and is_prompt(b), 30)
    assert b"(use Ctrl+D or /exit to quit)" in out, out
    assert c.proc.poll() is None
    c.write(b"still here\r")
    out = c.read_until(lambda b: b"got " in b and is_prompt(b), 30)
    assert b"got 10 characters" in out, out
    c.write(b"\x04")
    assert c.proc.wait(30) == 0


def test_sigterm_at_the_prompt_gives_the_terminal_back(chat_factory):
    """`kill` of a chat waiting at its prompt left the terminal without echo and line
    editing: the line reader's raw mode was never undone."""
    import termios
    c = chat_factory(ECHO)
    lflag = termios.tcgetattr(c.master)[3]
    assert not lflag & termios.ECHO  # the reader has the terminal in raw mode
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(30) == 128 + signal.SIGTERM
    lflag = termios.tcgetattr(c.master)[3]  # a pty master reports its slave's modes
    assert lflag & termios.ECHO and lflag & termios.ICANON


@pytest.mark.parametrize("chat_factory", ["own line editor"], indirect=True)
def test_fg_after_ctrl_z_gives_the_line_editing_back(chat_factory):
    """A shell hands the terminal back after `fg` in its own modes: the own line editor
    then read in canonical mode until the next prompt (keys echoed twice, Backspace
    seen as a character). (Python's input() with readline is given its modes back too:
    see tests/e2e/test_terminal_stop_modes.py.)"""
    import termios
    c = chat_factory(ECHO)
    c.write(b"abc")
    c.read_until(lambda b: b"abc" in b, 10)
    # Ctrl+Z; SIGTSTP itself is discarded here: the chat leads a session of its own, an
    # orphaned process group to the kernel
    os.killpg(c.proc.pid, signal.SIGSTOP)
    assert os.WIFSTOPPED(os.waitpid(c.proc.pid, os.WUNTRACED)[1])
    attrs = termios.tcgetattr(c.master)  # what the shell does while the job is stopped
    attrs[3] |= termios.ICANON | termios.ECHO
    termios.tcsetattr(c.master, termios.TCSANOW, attrs)
    os.killpg(c.proc.pid, signal.SIGCONT)  # `fg`
    out = c.read_until(lambda b: b"abc" in b, 10)
    assert out.rstrip().endswith(b"> abc"), out  # the prompt and the line, shown again
    assert not termios.tcgetattr(c.master)[3] & (termios.ICANON | termios.ECHO)
    out = _sent(c, b"\x7fd\r")
    assert _got("abd") in out, out
    c.write(b"\x04")
    assert c.proc.wait(30) == 0


def _answer_begun(out: bytes) -> bool:
    return b"there\r\n" in out and len(out.split(b"there\r\n", 1)[1].strip()) > 3


def test_two_ctrl_c_while_the_answer_stops_keep_the_chat(chat_factory):
    """The second Ctrl+C, while the worker is still finishing its step, ended the chat
    (status 130) and lost the conversation."""
    c = chat_factory(SLOW)
    echo = c.write(b"Hello there\r")
    # The prefill takes 0.8 s, then each step 0.8 s: interrupt once the answer has begun,
    # after the whole line's echo (readline echoes it itself, late on a busy machine: the
    # first letters alone once sent the Ctrl+C to the prompt, which dropped the line).
    c.read_until(lambda b: _answer_begun(echo + b), 60)
    c.ctrl_c()
    time.sleep(0.4)
    c.ctrl_c()
    out = c.read_until(lambda b: b"[stopped]" in b and is_prompt(b), 30)
    assert b"[stopped]" in out and is_prompt(out), out
    assert c.proc.poll() is None, out
    c.write(b"/help\r")
    out = c.read_until(lambda b: b"/exit" in b and is_prompt(b), 30)
    assert b"/exit" in out, out
    c.write(b"\x04")
    assert c.proc.wait(30) == 0


def _sent(c, keys: bytes) -> bytes:
    c.write(keys)
    return c.read_until(lambda b: b"got " in b and is_prompt(b), 30)


def _got(text: str) -> bytes:
    import zlib
    return (f"got {len(text)} characters, crc {zlib.crc32(text.encode())}, "
            f"ending {text[-12:]!r}").encode()


@pytest.mark.parametrize("keys, text", [
    (b"helo\x7f\x7fllo there\r", "hello there"),               # Backspace (DEL)
    (b"wrong words\x15right\r", "right"),                      # Ctrl+U erases the line
    (b"one two  \x17three\r", "one three"),                # Ctrl+W erases a word
    ("héllo 世界\x7f界 🙂".encode() + b"\r", "héllo 世界 🙂"),   # UTF-8, a wide character
])
def test_line_editing_keys(chat_factory, keys, text):
    c = chat_factory(ECHO)
    out = _sent(c, keys)
    assert _got(text) in out, out[-300:]
    c.write(b"\x04")
    assert c.proc.wait(30) == 0


@pytest.mark.parametrize("chat_factory", ["own line editor"], indirect=True)
def test_arrow_and_function_keys_are_not_typed(chat_factory):
    """An arrow key's escape sequence used to reach the message as text. Left and Home
    move the cursor (as readline does: "b" goes before "a", "c" at the start); Up (no
    history) and F5 do nothing."""
    c = chat_factory(ECHO)
    out = _sent(c, b"a\x1b[Db\x1b[A\x1bOHc\x1b[15~d\r")
    assert _got("cdba") in out, out[-300:]
    c.write(b"\x04")
    assert c.proc.wait(30) == 0


def test_lines_pasted_at_once_are_read_one_by_one(chat_factory):
    """A paste of several lines arrives in one read; the lines after the first wait for
    the next prompt instead of being lost."""
    c = chat_factory(ECHO)
    out = _sent(c, b'"""first line\rsecond line\rthird"""\r')
    assert _got("first line\nsecond line\nthird") in out, out[-300:]
    c.write(b"\x04")
    assert c.proc.wait(30) == 0
