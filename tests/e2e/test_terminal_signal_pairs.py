"""Two signals at once at the terminal chat: a Ctrl+C and a `kill` (SIGTERM), at the
prompt and during an answer, and a second Ctrl+Z while the first is being handled. On a
real pty (the harness of tests/e2e/test_terminal_pty.py), with readline and with the own
line editor; the model's turn is an echo, or slowed down."""
import os
import signal
import subprocess
import termios

import pytest

from tests.e2e.test_terminal_gaps import reader  # noqa: F401 - the fixture
from tests.e2e.test_terminal_keep import _ends, _started
from tests.e2e.test_terminal_load_paste import _paste_mode_left_off
from tests.e2e.test_terminal_pty import ECHO, SLOW, Chat, _answer_begun, is_prompt
from tests.e2e.test_terminal_stop_modes import _fresh_terminal_modes, _one_message_after_fg
from tests.e2e.test_terminal_suspend_paste import stoppable  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")


def _ctrl_c_and_kill(c: Chat) -> tuple[int | None, bytes]:
    """A Ctrl+C and a `kill` sent back to back; the chat's exit status (None if it goes
    on) and what it wrote meanwhile."""
    os.kill(c.proc.pid, signal.SIGINT)
    os.kill(c.proc.pid, signal.SIGTERM)
    out = c.read_until_ended(30)
    try:
        return c.proc.wait(30), out
    except subprocess.TimeoutExpired:
        return None, out


@pytest.mark.parametrize("term", ["dumb", "xterm"])
def test_ctrl_c_and_kill_at_once_at_the_prompt_end_the_chat(reader, term):
    """input() ran the `kill`'s handler with the Ctrl+C's KeyboardInterrupt still set,
    where it failed (SystemError) and was taken for a second Ctrl+C: the chat said "(use
    Ctrl+D or /exit to quit)" and went on, the `kill` lost."""
    c = _started(reader, term, ECHO)
    try:
        code, out = _ctrl_c_and_kill(c)
        assert code == 128 + signal.SIGTERM, out
        assert b"Traceback" not in out, out
        lflag = termios.tcgetattr(c.master)[3]  # the terminal's modes given back
        assert lflag & termios.ECHO and lflag & termios.ICANON
        assert term == "dumb" or _paste_mode_left_off(out), out
    finally:
        c.close()


# Each forward pass (SLOW: 0.8 s each) marked on the terminal where it begins and ends.
STEPS_MARKED = SLOW + """
import os
slowed_session = m.session
def marked_session(n_ctx):
    s = slowed_session(n_ctx)
    step = s.eval
    def marked(ids, *a, **k):
        os.write(1, b"<step")
        try:
            return step(ids, *a, **k)
        finally:
            os.write(1, b"step>")
    s.eval = marked
    return s
m.session = marked_session
"""


def test_ctrl_c_and_kill_at_once_in_an_answer_end_the_chat_between_steps(reader):
    """The `kill`'s SystemExit came inside the Ctrl+C's handling (stopping the answer),
    past the code that waits for the worker on the way out: the chat ended with the
    worker inside a step, which can hang for good in OpenBLAS's exit handler (see
    server.stop_generating). Now it ends once the step under way is done."""
    c = _started(reader, "dumb", STEPS_MARKED)
    try:
        echo = c.write(b"Hello there\r")
        out = echo + c.read_until(lambda b: _answer_begun(echo + b), 60)
        assert _answer_begun(out), out
        code, after = _ctrl_c_and_kill(c)
        out += after
        assert code == 128 + signal.SIGTERM, out
        assert out.rfind(b"step>") > out.rfind(b"<step"), out  # no step cut off
    finally:
        c.close()


# Run in the chat before it starts: handing the terminal to the shell at a Ctrl+Z takes a
# while, so that a second Ctrl+Z comes while the first is handled.
SLOW_GIVE = """
real_write_codes = terminal._write_codes
def slow_write_codes(out, codes):
    real_write_codes(out, codes)
    if codes == terminal.PASTE_OFF:
        time.sleep(0.5)
terminal._write_codes = slow_write_codes
"""


def test_a_second_ctrl_z_while_the_first_is_handled_stops_the_chat_once(reader, stoppable):
    """The handler ran again inside the first one: the chat stopped with the prompt's raw
    mode left to the shell, stopped again at `fg`, and after the next `fg` read in the
    shell's modes (every key echoed twice)."""
    c = _started(reader, "xterm", ECHO + SLOW_GIVE)
    try:
        out = b""
        os.killpg(c.proc.pid, signal.SIGTSTP)
        # The first being handled: paste mode off is the start of the hand-over.
        out += c.read_until(lambda b: _paste_mode_left_off(b), 30)
        assert _paste_mode_left_off(out), out
        os.killpg(c.proc.pid, signal.SIGTSTP)
        assert os.WIFSTOPPED(os.waitpid(c.proc.pid, os.WUNTRACED)[1])
        assert termios.tcgetattr(c.master) == _fresh_terminal_modes()
        out = _one_message_after_fg(c, out)  # (stopped again, it would not answer)
        c.write(b"\x04")
        out += _ends(c)
        assert _paste_mode_left_off(out), out
    finally:
        c.close()
