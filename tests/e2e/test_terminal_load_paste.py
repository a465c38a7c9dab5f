"""A paste made while the model loads, in `chatfile chat` as the CLI runs it: one message,
as the same paste at the prompt, not one message (and one answer) per line. The terminal
marks pastes (bracketed paste) from before the load, and never stays so after the chat,
however it ends. On a real pty (the harness of tests/e2e/test_terminal_pty.py), with
readline and with the own line editor; the model's turn is an echo of what it is sent."""
import os
import signal
import textwrap

import pytest

from tests.e2e.conftest import TINY
from tests.e2e.test_terminal_gaps import reader  # noqa: F401 - the fixture
from tests.e2e.test_terminal_keep import LOADING, _ends, _started
from tests.e2e.test_terminal_pty import ECHO, Chat, _got, is_prompt

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")

# The real CLI (runtime/cli.py's `chat`), whose model loads once the test creates the
# flag file: keys are typed "while the model loads", as during a real model's seconds.
CLI_LOADING = """
from runtime import cli
loaded = m
def load_when_told(*args, **kwargs):
{loading}
    return loaded
Model.load = load_when_told
sys.exit(cli.main(["chat", {tiny!r}, "--ctx", "256"]))
"""

PASTE_ON, PASTE_OFF = b"\x1b[?2004h", b"\x1b[?2004l"
LINES = ["first line", "second line", "third line"]
# What a terminal sends for a paste of three lines while paste mode is on: its line ends
# as Enter (\r), the text between the marks.
PASTE = b"\x1b[200~" + "\r".join(LINES).encode() + b"\x1b[201~"


def _cli_loading(reader, term, tmp_path):
    """The chat started by the CLI, its model loading until the flag is created; and what
    it wrote so far."""
    flag = tmp_path / "loaded"
    loading = textwrap.indent(LOADING.format(flag=str(flag)), "    ")
    c = Chat(reader + ECHO + CLI_LOADING.format(loading=loading, tiny=str(TINY)), term)
    out = c.read_until(lambda b: b"LOADING" in b, 120)
    assert b"LOADING" in out, out
    return c, flag, out


def _pasted_while_loading(c: Chat, keys: bytes) -> bytes:
    """Type or paste `keys` (ending in LINES[-1], maybe an Enter) while the model loads;
    returns their echo, once the terminal has echoed them all. The kernel echoes a pty's
    input a moment after it is written (in a work queue of its own): on a loaded 2-core
    machine a load ended at once after the write gave the shell its ECHOCTL back first,
    and the paste was echoed after the load, as "^[[200~" (seen 1 time in 120). A
    person's paste is echoed long before the load it was made during ends."""
    out = c.write(keys)
    return out + c.read_until(lambda b: LINES[-1].encode() in out + b, 30)


def _paste_at_the_prompt(out: bytes) -> bool:
    """The chat has begun, and shows the paste at its prompt (to be sent with Enter)."""
    return b"chatting" in out and LINES[-1].encode() in out.split(b"chatting", 1)[1]


def _paste_mode_left_off(out: bytes) -> bool:
    return out.rfind(PASTE_OFF) > out.rfind(PASTE_ON)


def _echoctl_back(c: Chat) -> bool:
    import termios
    return bool(termios.tcgetattr(c.master)[3] & termios.ECHOCTL)  # (the slave's modes)


@pytest.mark.parametrize("enter", ["typed while loading", "typed at the prompt"])
def test_a_paste_while_the_model_loads_is_one_message(reader, tmp_path, enter):
    """The lines were read in the terminal's own (canonical) mode, one by one, and each
    went out as a message: 3 messages, 3 answers. Now one, as the paste at the prompt:
    sent by the Enter after it (typed during the load, or at the prompt). The marks do not
    reach the message, nor the screen (as "^[[200~", the echo of canonical mode)."""
    c, loaded, before = _cli_loading(reader, "xterm", tmp_path)
    try:
        assert PASTE_ON in before, before  # on before the load began
        enter_key = b"\r" if enter == "typed while loading" else b""
        out = _pasted_while_loading(c, PASTE + enter_key)
        loaded.touch()
        if enter == "typed at the prompt":
            out += c.read_until(lambda b: _paste_at_the_prompt(out + b), 60)
            assert _paste_at_the_prompt(out) and b"got " not in out, out
            out += c.write(b"\r")
        out += c.read_until(lambda b: b"got " in out + b and is_prompt(out + b), 60)
        assert _got("\n".join(LINES)) in out, out
        assert out.count(b"got ") == 1, out
        c.write(b"\x04")
        out += _ends(c)
        assert b"^[" not in before + out, before + out
        assert _paste_mode_left_off(before + out), before + out
        assert _echoctl_back(c)
    finally:
        c.close()


def test_lines_typed_by_hand_while_the_model_loads_stay_lines(reader, tmp_path):
    """Without paste marks, each line typed is a message of its own, as before."""
    c, loaded, before = _cli_loading(reader, "xterm", tmp_path)
    try:
        out = c.write(b"first line\rsecond line\r")
        loaded.touch()
        out += c.read_until(lambda b: (out + b).count(b"got ") == 2 and is_prompt(out + b), 60)
        assert _got("first line") in out and _got("second line") in out, out
        assert out.index(_got("first line")) < out.index(_got("second line")), out
        c.write(b"\x04")
        _ends(c)
    finally:
        c.close()


@pytest.mark.parametrize("stop, code", [("Ctrl+C", 130), ("kill", 128 + signal.SIGTERM)])
def test_paste_mode_is_off_after_a_chat_stopped_while_loading(tmp_path, stop, code):
    """Paste mode left on would make every later paste into the shell arrive wrapped in
    "^[[200~ ... ^[[201~" where the shell does not read the marks (dash, an old bash)."""
    c, loaded, before = _cli_loading("", "xterm", tmp_path)
    try:
        assert PASTE_ON in before, before
        c.write(b"half a line")
        if stop == "Ctrl+C":
            c.ctrl_c()
        else:
            c.proc.send_signal(signal.SIGTERM)
        out = c.read_until_ended(30)
        assert c.proc.wait(30) == code, out
        assert _paste_mode_left_off(before + out), before + out
        assert _echoctl_back(c)
    finally:
        c.close()


def test_a_dumb_terminal_is_sent_no_paste_mode(tmp_path):
    """A terminal that says it is "dumb" may show the codes as text."""
    c, loaded, before = _cli_loading("", "dumb", tmp_path)
    try:
        loaded.touch()
        out = c.read_until(is_prompt, 60)
        c.write(b"\x04")
        out += _ends(c)
        assert b"\x1b[?2004" not in before + out, before + out
    finally:
        c.close()


def test_a_backspace_after_a_paste_while_the_model_loads(reader, tmp_path):
    """The terminal's own line editing took the Backspace to the paste's end mark, the
    last thing on the line: without it the own line editor took every Enter after for a
    line end in the paste, and sent nothing; readline's message ended in "201"."""
    c, loaded, _ = _cli_loading(reader, "xterm", tmp_path)
    try:
        paste_with_line_end = PASTE.replace(b"\x1b[201~", b"\r\x1b[201~")
        out = c.write(paste_with_line_end + b"\x7f")
        loaded.touch()
        out += c.read_until(lambda b: _paste_at_the_prompt(out + b), 60)
        assert _paste_at_the_prompt(out) and b"got " not in out, out
        out += c.write(b"\r")
        out += c.read_until(lambda b: b"got " in out + b and is_prompt(out + b), 60)
        assert _got("\n".join(LINES)) in out, out
        c.write(b"\x04")
        _ends(c)
    finally:
        c.close()


def test_ctrl_d_while_the_model_loads_still_ends_the_chat(tmp_path):
    """As without paste mode (tests/e2e/test_terminal_keep.py), and paste mode goes off."""
    c, loaded, before = _cli_loading("", "xterm", tmp_path)
    try:
        c.write(b"\x04")
        loaded.touch()
        out = _ends(c)
        assert b"got " not in out, out
        assert _paste_mode_left_off(before + out), before + out
    finally:
        c.close()


def test_editing_keys_typed_before_an_unknown_command_notice_count(reader):
    """The keys typed after an unknown /command, before its notice shows, come back with
    it (tests/e2e/test_terminal_keep.py); Backspace, Ctrl+U and Ctrl+W among them were
    left out, not applied: "helo", two Backspaces and "lp" came back as "helolp"."""
    c = _started(reader, "dumb")
    try:
        out = c.write(b"/frobnicate\rhelo\x7f\x7flp\rwrong\x15right words\x17all\r")
        out += c.read_until(lambda b: b"unknown command" in out + b
                            and (out + b).rstrip().endswith(b"right all"), 30)
        out += c.write(b"\r")
        out += c.read_until(lambda b: b"got " in out + b and is_prompt(out + b), 30)
        assert _got("/frobnicate\nhelp\nright all") in out, out
        c.write(b"\x04")
        _ends(c)
    finally:
        c.close()
