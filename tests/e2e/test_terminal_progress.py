"""A long prompt's read in the terminal chat: on a terminal, a faint status line, "(reading
the conversation: 45%, 1,024 of 2,370 tokens, about 15 s left)", written over itself at
each of the engine's progress reports (Request.return_progress) and erased before the
reply's first text, so that the screen then shows the reply as before; as the page's
note, only for a read that has 1.5 s or more left when first reported. Piped, nothing of
it. On a real pty (the harness of tests/e2e/test_terminal_pty.py, its screen shown by the
small terminal of tests/runtime/test_line_input.py), with readline and with the own line
editor, on the tiny llama with a 4,096-token context: the prompts here are several
micro-batches (256 tokens) long. SLOW makes each micro-batch take 0.8 s, so that the
long read has more than 1.5 s left at its first report whatever the machine.
"""
import json
import os
import re
import subprocess
import sys

import pytest

from tests.e2e.conftest import ROOT, tiny_4k
from tests.e2e.test_terminal_gaps import reader  # noqa: F401 - the fixture
from tests.e2e.test_terminal_keep import _ends
from tests.e2e.test_terminal_pty import SCRIPT, SLOW, Chat, is_prompt
from tests.e2e.test_terminal_suspend_paste import _ctrl_z, _fg, stoppable  # noqa: F401
from tests.runtime.test_line_input import Screen

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs a pty")

MAX_TOK = 4
# About 1,100 tokens: 5 micro-batches, the first report leaving 3 s with SLOW.
LONG = " ".join(f"w{i}" for i in range(300)) + " THE END"
# About 330 tokens: 2 micro-batches, read in a moment (the first report leaves a
# fraction of the time the first micro-batch took).
SHORT = " ".join(f"w{i}" for i in range(90)) + " THE END"
STATUS = re.compile(rb"\r\x1b\[2m\(reading the conversation: \d+%, [\d,]+ of [\d,]+ tokens, "
                    rb"about \d+ s left\)\x1b\[0m\x1b\[K")
ERASE = b"\r\x1b[K"
STOPPED_MAX = "[stopped: max tokens reached]"

# The chat with a 4,096-token context, MAX_TOK tokens a reply.
CTX_4K = f"""
_chat = terminal.chat
terminal.chat = lambda m, **kw: _chat(m, **{{**kw, "n_ctx": 4096, "max_tokens": {MAX_TOK}}})
"""
LOAD = "m = Model.load({model!r})\n"  # (after SCRIPT's model, in its place)
SIZED = """
from tests.runtime.test_line_input import _set_size
_set_size(0, {cols})
"""
# Each event the chat takes from the engine, written to `log` as a JSON line.
TOLD = """
import json
_submit = terminal.Engine.submit
def _told(self, req):
    req = _submit(self, req)
    events = req.iter_events
    def told(*a, **k):
        for ev in events(*a, **k):
            with open({log!r}, "a") as f:
                f.write(json.dumps([ev.kind, ev.progress]) + "\\n")
            yield ev
    req.iter_events = told
    return req
terminal.Engine.submit = _told
"""


@pytest.fixture(scope="module")
def model_4k(tmp_path_factory):
    return tiny_4k(tmp_path_factory.mktemp("progress"))


@pytest.fixture(scope="module")
def piped(model_4k):
    """LONG piped to the chat, stdout and stderr a pipe, TERM a terminal with styles."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONIOENCODING="utf-8",
               TERM="xterm-256color")
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(tiny=str(model_4k), hook=CTX_4K)],
                       input=LONG, capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=180)
    assert r.returncode == 0, r.stderr
    return r


def _chat(reader, model, cols=80, slow=True, log=None) -> Chat:
    hook = reader + SIZED.format(cols=cols) + LOAD.format(model=str(model)) + CTX_4K \
        + (SLOW if slow else "")
    c = Chat(hook + (TOLD.format(log=str(log)) if log else ""), "xterm")
    out = c.read_until(is_prompt, 120)
    assert is_prompt(out), out
    c.shown = out
    return c


def _rows(out: bytes, cols: int) -> list[str]:
    """The screen (the styles left out: the small terminal knows no SGR codes)."""
    screen = Screen(cols, rows=120)
    screen.write(re.sub(r"\x1b\[[0-9;]*m", "", out.decode("utf-8", "replace")))
    return screen.show()


def _read_shown(out: bytes) -> bool:
    return STATUS.search(out) is not None


def _whole_chat(c, message: str) -> bytes:
    """All the chat showed: `message` sent, its reply cut at MAX_TOK, then Ctrl+D."""
    try:
        out = c.shown + c.write(message.encode() + b"\r")
        out += c.read_until(lambda b: STOPPED_MAX.encode() in b and is_prompt(b), 120)
        c.write(b"\x04")
        return out + _ends(c)
    finally:
        c.close()


@pytest.mark.parametrize("cols", [80, 40])
def test_a_long_read_shows_how_far_it_got_then_the_reply_in_its_place(reader, model_4k, piped,
                                                                      cols):
    """The status goes where the reply then starts (after the line's echo), and is gone
    before it: the screen shows the reply as piped stdout has it. Piped, no trace of it.
    On a terminal narrower than the status, it is cut to fit one row (a wrapped one
    would not go back to its start with "\\r", nor be erased whole)."""
    out = _whole_chat(_chat(reader, model_4k, cols), LONG)
    reply = piped.stdout.removesuffix("\n")
    sent = out.index(b"THE END\r\n")
    statuses = re.findall(rb"\r\x1b\[2m\(reading the conversation: [^\x1b]*\x1b\[0m\x1b\[K",
                          out[sent:])
    assert statuses, out[sent:]
    if cols == 80:
        assert all(STATUS.fullmatch(s) for s in statuses), statuses
    for s in statuses:   # one row: at most cols - 1 characters
        assert len(re.sub(rb"\x1b\[[0-9;]*[mK]|\r", b"", s)) <= cols - 1, s
    last = out.rindex(statuses[-1]) + len(statuses[-1])
    assert out[last:].startswith(ERASE), out[last:]            # erased before the reply
    assert b"reading" not in out[last:]
    rows = _rows(out, cols)
    at = rows.index(STOPPED_MAX)
    assert rows[at - 1] == reply and rows[at - 2].endswith("THE END"), rows
    assert not any("reading" in r for r in rows), rows
    # Piped: stdout is the answer alone, stderr the note only.
    assert "reading" not in piped.stdout + piped.stderr and "\x1b" not in piped.stdout
    assert piped.stderr.strip() == STOPPED_MAX, piped.stderr


def _told(log) -> list:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_a_short_read_shows_nothing(reader, model_4k, tmp_path):
    """A read with less than 1.5 s left at its first report shows no status (it would
    flash and go), though the chat asked for the reports and had them."""
    log = tmp_path / "events"
    out = _whole_chat(_chat(reader, model_4k, slow=False, log=log), SHORT)
    progress = [p for kind, p in _told(log) if kind == "progress"]
    assert progress and progress[0]["processed"] < progress[0]["total"], progress
    after = out[out.index(b"THE END\r\n"):]
    assert b"reading" not in after and ERASE not in after, after
    rows = _rows(out, 80)
    assert rows[rows.index(STOPPED_MAX) - 2].endswith("THE END"), rows  # the reply between


def test_ctrl_c_while_reading_leaves_no_status(reader, model_4k):
    c = _chat(reader, model_4k)
    try:
        out = c.shown + c.write(LONG.encode() + b"\r")
        out += c.read_until(_read_shown, 60)
        assert _read_shown(out), out
        c.ctrl_c()
        out += c.read_until(lambda b: b"[stopped]" in b and is_prompt(b), 60)
        assert ERASE + b" [stopped]\r\n" in out, out
        c.write(b"\x04")
        out += _ends(c)
    finally:
        c.close()
    rows = _rows(out, 80)
    at = rows.index(" [stopped]")  # on the row where the reply would have started
    assert rows[at - 1].endswith("THE END") and rows[at + 1].startswith(">"), rows
    assert not any("reading" in r for r in rows), rows


def test_ctrl_z_while_reading_erases_the_status_until_fg(reader, model_4k, piped, stoppable):
    """A Ctrl+Z erases the status before the shell has the terminal (the shell's
    "[1]+ Stopped" would follow it on its row); after `fg` the read goes on, and the
    reply comes in its place as before."""
    c = _chat(reader, model_4k)
    try:
        out = c.shown + c.write(LONG.encode() + b"\r")
        out += c.read_until(_read_shown, 60)
        assert _read_shown(out), out
        _ctrl_z(c)
        out += c.read_until(lambda b: False, 1)  # (stopped: all it wrote is there)
        assert out.endswith(ERASE), out[-200:]
        assert _rows(out, 80)[-1] == "█", _rows(out, 80)  # an empty row for the shell
        _fg(c)
        out += c.read_until(lambda b: STOPPED_MAX.encode() in b and is_prompt(b), 120)
        c.write(b"\x04")
        out += _ends(c)
    finally:
        c.close()
    rows = _rows(out, 80)
    at = rows.index(STOPPED_MAX)
    assert rows[at - 1] == piped.stdout.removesuffix("\n"), rows
    assert not any("reading" in r for r in rows), rows
