"""What a review of the user's documents against the real behaviour found (session 23).

- docs/terminal.md's example of the long read's status said "45%, 1,024 of 2,370 tokens":
  1,024 of 2,370 is 43%, and the status counts exactly so (the share of what had to be
  read, rounded down, as the page's note does).
- A second start of a chat that was already running (a second double-click, over SSH)
  exits at once, having pointed to the running one, yet told the user to "stop this
  (Ctrl+C)" before chatting in the terminal: there was nothing left to stop.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import ROOT, TINY, start_server

DOCS = Path(__file__).resolve().parents[2] / "docs"
PORT = 19590  # this file's own (19590-19599)


def _examples(text: str, pattern: str) -> list[tuple[int, int, int]]:
    """(percent, done, of) of every example of the status in `text` (the docs' own words,
    wrapped across lines)."""
    flat = " ".join(text.split())
    return [(int(p), int(d.replace(",", "")), int(t.replace(",", "")))
            for p, d, t in re.findall(pattern, flat)]


def test_the_documented_reading_examples_add_up_as_the_status_counts():
    terminal = _examples((DOCS / "terminal.md").read_text(),
                         r"reading the conversation: (\d+)%, ([\d,]+) of ([\d,]+)")
    page = _examples((DOCS / "page.md").read_text(),
                     r"(\d+)% \(([\d,]+) of ([\d,]+) (?:new )?tokens")
    assert terminal and len(page) >= 2, (terminal, page)
    for pct, done, of in terminal + page:
        # The share of what had to be read, rounded down (never 100 before the end).
        assert pct == min(99, 100 * done // of), (pct, done, of)
    # And the terminal shows it so: its first words for the documented numbers.
    from runtime.terminal import _reading_text
    pct, done, of = terminal[0]
    said = _reading_text({"total": of, "cache": 0, "processed": done, "time_ms": 0})
    assert said.startswith(f"(reading the conversation: {pct}%, {done:,} of {of:,} tokens"), said


def test_a_second_start_that_opens_the_running_chat_does_not_ask_to_be_stopped():
    first = start_server(TINY, "--port", str(PORT))
    try:
        port = first.port
        env = dict(os.environ, PYTHONPATH=str(ROOT), DISPLAY="", WAYLAND_DISPLAY="")
        r = subprocess.run([sys.executable, "-m", "runtime.cli", "run", str(TINY), "--port",
                            str(port)], cwd=ROOT, env=env, timeout=60,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
    finally:
        first.stop()
    assert r.returncode == 0, r.stderr
    assert f"already running at http://127.0.0.1:{port}/" in r.stdout, r.stdout
    # It has ended: the way to the terminal chat is said without stopping anything first.
    assert f"run `chatfile chat {TINY}` to chat in this terminal" in r.stdout, r.stdout
    assert "Ctrl+C" not in r.stdout, r.stdout
