"""`chatfile chat`: talk to the model in the terminal.

Interactive (stdin is a terminal): a streaming REPL that keeps the conversation, with
/reset, /system TEXT, /help and /exit, and \"\"\" ... \"\"\" for a message of several lines.
Piped (`echo question | chatfile chat m.gguf`): all of stdin is one question; the answer
is printed and the program exits, so it can be used in scripts. Generation goes through
the same `Engine` as the server, so the prompt cache makes every turn prefill only the
new message.
"""
from __future__ import annotations

import codecs
import contextlib
import io
import os
import queue
import re
import signal
import sys
import threading
import time
from collections import deque

from runtime import cli, reasoning, signal_wake
from runtime.engine import ContextOverflowError, Engine, Request, chat_prompt_ids
from runtime.line_input import (BACKSPACES, CTRL_U, CTRL_W, PASTE_END, PASTE_OFF, PASTE_ON,
                                 PASTE_START, input_waiting, last_word_units,
                                 paste_marks_wanted, read_waiting, set_handler, set_modes,
                                 waiting_taker)
from runtime.line_input import in_foreground as _in_foreground

HELP = ("commands: /reset (forget the conversation), /system TEXT (set the system prompt "
        "and start over), /exit (quit), /help; \"\"\" starts and ends a message of several "
        "lines; // at the start sends a message that begins with /")
QUIT_HINT = "(use Ctrl+D or /exit to quit)"
MULTILINE = '"""'
CTRL_D = "\x04"
EXIT_WAIT_S = 2.0  # an ending chat waits this long for the worker to stop (as the server)


def _exit_under(e: BaseException) -> SystemExit | None:
    """e if it is a SystemExit, or the SystemExit that e was raised in the handling of;
    else None. A `kill` that comes with a Ctrl+C can raise its SystemExit where the
    Ctrl+C's KeyboardInterrupt left a queue's wait (in threading.Condition.wait's
    `finally`, before it takes its lock back): the queue then failed with "RuntimeError:
    release unlocked lock", a traceback and status 1 in place of the `kill`'s 143."""
    while e is not None:
        if isinstance(e, SystemExit):
            return e
        e = e.__context__
    return None


def _tokens(n: int) -> str:
    return f"{n} token" + ("" if n == 1 else "s")


class _Chat:
    def __init__(self, model, engine, system, params, max_tokens, out, interactive=True,
                 template_kwargs=None, reasoning_budget=(-1, "")):
        self.model, self.engine, self.params = model, engine, params
        self.reasoning_budget = reasoning_budget  # (tokens, message): see reasoning.budget_for
        self.system, self.max_tokens, self.out = system, max_tokens, out
        self.interactive = interactive
        self.template_kwargs = template_kwargs or None  # --reasoning-budget 0's
        self.prompt_text = ""        # the last prompt sent, as rendered
        self.history: list[dict] = []
        self.told_left_out = False   # the "older messages were left out" notice, once
        self.interrupted = False     # the last answer was stopped by Ctrl+C
        self.thought = None          # the reply's reasoning being shown, for a Ctrl+Z
        self.inert = _Inert(False)   # the reply's text as shown (its controls, on a tty)
        # A long prompt's read is shown as it goes (see _Reading): only when the chat is
        # the terminal's (stdin and stdout), where the reply starts at a line's start.
        self.shows_reading = False
        self.reading = None          # the reply's _Reading, for a Ctrl+Z

    def reset(self):
        self.history.clear()
        self.told_left_out = False

    def messages(self, user_text: str, history=None) -> list[dict]:
        sys_msgs = [{"role": "system", "content": self.system}] if self.system else []
        history = self.history if history is None else history
        return sys_msgs + history + [{"role": "user", "content": user_text}]

    def _reply_reserve(self) -> int:
        # As the chat page does (docs/page.md): room for the reply is the max-tokens
        # setting, capped at half the context so a large setting does not block every
        # message (the engine still stops a reply at the end of the context).
        half = self.engine.n_ctx // 2
        return half if self.max_tokens is None or self.max_tokens < 0 else min(self.max_tokens, half)

    def _fitted_prompt(self, user_text: str) -> list | None:
        """The prompt ids, with the oldest turns left out when the conversation no longer
        fits with room for the reply; None (reported) when the message alone does not."""
        n_ctx = self.engine.n_ctx
        budget_tok = n_ctx - self._reply_reserve()
        renders: dict = {}   # pairs left out -> (prompt text, ids): no prompt made twice
        ids = self._prompt_without(user_text, 0, renders)
        if len(ids) <= budget_tok:   # the common case: one render, nothing left out
            self.prompt_text = renders[0][0]
            return ids
        # Leave out whole user/assistant pairs from the oldest, so the kept history starts
        # on a user turn. Not just the fewest that fit, but enough that a quarter of the
        # context stays free besides the reply's reserve (as llama.cpp's context shift
        # discards a large part at once): a prompt cut to the brim overflows again on the
        # next turn, and a history that loses its oldest pair every turn changes the
        # prompt's start every turn, so the engine's prefix cache keeps nothing and every
        # turn prefills the whole prompt (seconds on a 0.5B model). With the slack, the
        # next turns only append to this prompt and prefill just what they add. When even
        # the message alone leaves no such slack, the fewest pairs that fit at all.
        slack_tok = n_ctx // 4
        found = (self._fewest_pairs_to_fit(user_text, budget_tok - slack_tok, renders)
                 or self._fewest_pairs_to_fit(user_text, budget_tok, renders))
        if found is None:
            found = self._message_alone(user_text, renders)
            if found is None:
                return None
        self.prompt_text = renders[found[0]][0]
        self._leave_out(found[0])
        return found[1]

    def _prompt_without(self, user_text: str, n_pairs: int, renders: dict) -> list:
        """The prompt ids with the oldest n_pairs pairs left out (rendered once, and kept
        with its text in renders[n_pairs])."""
        if n_pairs not in renders:
            kept = self.history[2 * n_pairs:]
            renders[n_pairs] = chat_prompt_ids(
                self.model, self.messages(user_text, kept),
                template_kwargs=self.template_kwargs)
        return renders[n_pairs][1]

    def _fewest_pairs_to_fit(self, user_text: str, limit_tok: int, renders: dict):
        """(pairs, ids): the fewest oldest pairs (at least one) whose leaving out makes the
        prompt at most limit_tok long; None if leaving them all out does not. A binary
        search: the prompt gets shorter as more pairs are left out."""
        lo, hi, best = 1, len(self.history) // 2, None
        while lo <= hi:
            mid = (lo + hi) // 2
            trial = self._prompt_without(user_text, mid, renders)
            if len(trial) <= limit_tok:
                best, hi = (mid, trial), mid - 1
            else:
                lo = mid + 1
        return best

    def _message_alone(self, user_text: str, renders: dict):
        """(pairs, ids) for the message with no history, when even that leaves no full
        reserve: sent if it leaves a useful reply (64 tokens, an eighth of the context if
        less), as the page does; None (reported) if not."""
        n_ctx = self.engine.n_ctx
        n_pairs = len(self.history) // 2
        alone = self._prompt_without(user_text, n_pairs, renders)
        room_tok = min(64, n_ctx // 8)
        if len(alone) + room_tok > n_ctx:
            self._error(self._too_long(user_text, len(alone), room_tok))
            return None
        return n_pairs, alone

    def _too_long(self, user_text: str, prompt_tok: int, room_tok: int) -> str:
        """Why a message cannot be sent. A long system prompt (--system, /system) is named
        as the culprit: "the message is too long ... shorten it" was said of a "hi", and
        of every message after it."""
        n_ctx = self.engine.n_ctx

        def bare_tok(text):  # the prompt's tokens without the system prompt
            return len(chat_prompt_ids(self.model, [{"role": "user", "content": text}],
                                       template_kwargs=self.template_kwargs)[1])
        if self.system and bare_tok(user_text) + room_tok <= n_ctx:
            how = "/system" if self.interactive else "--system"
            return (f"the system prompt is too long for the context of {_tokens(n_ctx)} "
                    f"(--ctx): with it the prompt is {_tokens(prompt_tok)}, and the reply "
                    f"needs room too; shorten it ({how}) or give a larger --ctx")
        said = (f"the message is too long for the context of {_tokens(n_ctx)} (--ctx): its "
                f"prompt is {_tokens(prompt_tok)}, and the reply needs room too")
        empty_tok = bare_tok("")
        if empty_tok + room_tok > n_ctx:  # the chat template's own tokens: no message fits
            return (f"{said}; the chat template alone takes {_tokens(empty_tok)}, so no "
                    f"message fits: give a larger --ctx")
        return f"{said}; shorten it"

    def _leave_out(self, n_pairs: int):
        """Forget the oldest n_pairs pairs; say so the first time."""
        if not n_pairs:
            return
        del self.history[:2 * n_pairs]
        if not self.told_left_out:
            self.told_left_out = True
            self._note("(older messages were left out to fit the context)")

    def ask(self, user_text: str) -> str | None:
        """Stream the answer to stdout; return it (None on an error already reported)."""
        under_way: list = []  # the request, once _ask has submitted it: seen here too
        try:
            return self._ask(user_text, under_way)
        except (SystemExit, RuntimeError) as e:
            # `kill` (see _exit_on_sigterm), or a program that opens the model file for
            # writing (runtime/file_lease.py): the program ends, but not with the worker
            # inside a matrix product, where OpenBLAS's exit handler can wait for it for
            # good (see server.stop_generating). Out here, not beside _ask's Ctrl+C
            # handling: a Ctrl+C and a `kill` at once raised the SystemExit inside that
            # handling (before its cancel, or in its wait), and the chat ended mid-step.
            # (A RuntimeError may be that SystemExit's aftermath: see _exit_under.)
            leaving = _exit_under(e)
            if leaving is None:
                raise
            if under_way:
                under_way[0].cancel.set()
                self._wait_stopped(under_way[0], EXIT_WAIT_S)
            raise leaving from None

    def _ask(self, user_text: str, under_way: list) -> str | None:
        # A thinking model's `<think>` text is split from the answer as it comes
        # (runtime/reasoning.py, as the server splits it), shown apart (_Thought), and kept
        # as the reply's reasoning_content, which the template renders as the model expects.
        split, thought = reasoning.ReasoningSplit(), self._thought()
        self.thought, self.inert = thought, _Inert(_is_terminal(self.out))
        self.reading = _Reading(self._write, self.out) \
            if self.interactive and self.shows_reading else None
        try:
            return self._answer(user_text, under_way, split, thought)
        finally:  # a `kill` or an error mid-thought: the terminal's style is reset
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                self._reading_ends()
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                thought.end(answer_follows=False)
            self.thought = None
            self.reading = None

    def _reading_ends(self) -> None:
        """The reply's text begins, or the reply ends: the read's status line goes."""
        if self.reading is not None:
            self.reading.end()

    def style_off(self) -> None:
        """A Ctrl+Z mid-thought: the shell gets its text in the usual style (see
        _held_after_fg)."""
        if self.reading is not None:  # (erased: the next report draws it again)
            self.reading.hide()
        if self.thought is not None:
            self.thought.style_off()

    def style_back(self) -> None:
        """`fg` mid-thought: the rest of the reasoning is faint again."""
        if self.thought is not None:
            self.thought.style_back()

    def _answer(self, user_text: str, under_way: list, split, thought) -> str | None:
        from runtime.chat_template import TemplateError
        req, parts, done = None, [], None
        self.interrupted = False
        try:
            try:
                ids = self._fitted_prompt(user_text)
                if ids is None:
                    return None
                split.forced_open = reasoning.opens_thinking(self.prompt_text)
                budget = reasoning.budget_for(self.model, *self.reasoning_budget,
                                              forced_open=split.forced_open)
                req = self.engine.submit(Request(prompt_ids=ids, params=self.params,
                                                 max_tokens=self.max_tokens,
                                                 reasoning_budget=budget,
                                                 return_progress=self.reading is not None))
                under_way.append(req)
            except TemplateError as e:
                self._error(f"the chat template refused this conversation: {e}")
                return None
            except ContextOverflowError:
                self._error(f"the message is too long for the context of "
                            f"{_tokens(self.engine.n_ctx)} (--ctx); shorten it")
                return None
            for ev in req.iter_events():
                if ev.kind == "token":
                    self._show(split.push(ev.text), thought, parts)
                elif ev.kind == "progress":
                    if self.reading is not None:
                        self.reading.report(ev.progress or {})
                elif ev.kind == "error":
                    self._reading_ends()
                    thought.end(answer_follows=False)
                    self._write("\n")
                    self._error(str(ev.error))
                    return None
                elif ev.kind == "done":
                    done = ev
            self._show(split.finish(), thought, parts)
        except KeyboardInterrupt:
            # Ctrl+C during an answer stops the answer, not the program.
            self.interrupted = True
            self._reading_ends()
            if req is None:
                self._write("\n")
                return None
            req.cancel.set()
            self._wait_stopped(req)
            thought.end(answer_follows=False)
            self._write(" [stopped]\n")
            return self._remember(user_text, "".join(parts), thought.text)
        self._reading_ends()  # (a reply without text)
        thought.end(answer_follows=False)  # a reply that ended (or was cut) mid-thought
        self._write("\n")
        self._tell_why_cut(done)
        return self._remember(user_text, "".join(parts), thought.text)

    def _show(self, pieces: tuple, thought, parts: list) -> None:
        """Shows a (reasoning, content) pair of new text; the answer's first text ends
        the reasoning shown before it."""
        thinking, content = pieces
        if thinking or content:
            self._reading_ends()
        thought.add(thinking)
        if content:
            thought.end(answer_follows=True)
            parts.append(content)
            self._write(self.inert(content))

    def _thought(self) -> "_Thought":
        """Where a reply's reasoning is shown: with the conversation on a terminal; on
        stderr when piped or -p, so that stdout is the answer only."""
        if self.interactive:
            return _Thought(self._write, _shows_styles(self.out), apart=False, stream=self.out,
                            inert=_is_terminal(self.out))
        err = sys.stderr
        if err is None:  # started with stderr closed: the reasoning is not shown
            return _Thought(lambda text: None, False, apart=True)

        def write(text):
            err.write(text)
            err.flush()
        return _Thought(write, _shows_styles(err), apart=True, stream=err,
                        inert=_is_terminal(err))

    def _wait_stopped(self, req, wait_s: float = float("inf")):
        # The worker notices the cancel between prefill chunks or tokens, which can take a
        # while on a long prompt; a second Ctrl+C meanwhile (an impatient user, or the
        # copy a PyInstaller launcher forwards) must not end the program either.
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            try:
                ev = req.events.get(timeout=0.1)
                if ev.kind in ("done", "error"):  # (not "token", "progress": more to come)
                    return
            except queue.Empty:
                # A Ctrl+C can land just after an event left the queue and lose it: the
                # worker idle with nothing queued means this request is over all the same.
                if not self.engine.busy.is_set() and not self.engine.queued():
                    return
            except KeyboardInterrupt:
                continue

    def _tell_why_cut(self, done):
        """A reply cut by max tokens or by the end of the context says so on its own line
        (on stderr when piped, so stdout stays the answer only)."""
        if done is None or done.finish_reason != "length":
            return
        if self.max_tokens is not None and 0 <= self.max_tokens <= done.completion_tokens:
            self._note("[stopped: max tokens reached]")
        else:
            self._note("[stopped: the context is full]")

    def _remember(self, user_text, answer, thought=""):
        reply = {"role": "assistant", "content": answer}
        if thought:  # as the server's reply carries it, and the page sends it back
            reply["reasoning_content"] = thought
        self.history += [{"role": "user", "content": user_text}, reply]
        return answer

    def _write(self, text):
        try:
            self.out.write(text)
        except UnicodeEncodeError:  # a legacy console code page: show what it can
            enc = getattr(self.out, "encoding", None) or "ascii"
            self.out.write(text.encode(enc, "replace").decode(enc, "replace"))
        self.out.flush()

    def _say(self, msg):
        self.out.write(msg + "\n")
        self.out.flush()

    def _note(self, msg):
        # A remark about the answer: with the conversation on a terminal; on stderr when
        # piped, so that `chatfile chat m.gguf < q.txt > answer.txt` keeps the answer only.
        if self.interactive:
            self._say(msg)
        else:
            print(msg, file=sys.stderr, flush=True)

    def _error(self, msg):
        # stderr, so that `chatfile chat m.gguf < q.txt > answer.txt` keeps answers only.
        # Shown inert as a reply is: an error can quote the GGUF (a chat template's
        # raise_exception text) or what the model or the user wrote.
        print(f"chatfile: error: {_Inert(_is_terminal(sys.stderr))(msg)}", file=sys.stderr,
              flush=True)


DIM, NORMAL = "\x1b[2m", "\x1b[0m"  # SGR 2 (faint) and SGR 0 (every style off)
THINKING, DONE_THINKING = "Thinking...", "...done thinking."  # as `ollama run` marks it


def _shows_styles(stream) -> bool:
    """Whether text written to `stream` may carry the terminal's styles: it is a terminal,
    TERM names one that has them (unset, empty or "dumb": none, as git decides on colours,
    and as the paste marks and the reading status decide), and NO_COLOR is unset or empty
    (https://no-color.org: present and not empty, no styles)."""
    if os.environ.get("NO_COLOR") or not paste_marks_wanted():
        return False
    return _is_terminal(stream)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# The C0 and C1 control characters but the line's end and the tab. In a reply they would
# be obeyed by the terminal: ESC (and CSI, U+009B, alone) starts the sequences that clear
# the screen, retitle the window or set the clipboard (OSC 52), and a prompt-injected
# paste can have the model write them; a backspace or a carriage return writes over text
# shown. (info.shown_name makes a name's unprintable characters spaces; a reply keeps its
# format characters, an emoji's zero-width joiner and variation selectors, and shows its
# controls, the bidirectional ones with them.)
# The Unicode bidirectional controls that reorder a run of text: the embeddings and
# overrides (U+202A-U+202E) and the isolates (U+2066-U+2069). A terminal that implements
# bidi (GNOME's VTE, Konsole, mlterm) obeys them, so a reply that repeats a hostile paste
# shows its text in another order than its characters' ("Trojan Source", CVE-2021-42574):
# a command the model suggests looks unlike the one a copy of it runs. The marks (LRM,
# RLM, ALM) stay: they only set the direction of a neutral character next to them, and
# Hebrew and Arabic text uses them (the nine here are those compilers warn of).
_BIDI = "\u202a-\u202e\u2066-\u2069"
_CONTROLS = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")


def _caret(m) -> str:
    """A control character as `cat -v` shows it: ^[ for ESC, ^G for BEL, ^? for DEL
    (caret notation); a C1 one, which has none, as U+FFFD; a bidirectional control in
    the form `less` shows a character it will not print in (LESSUTFBINFMT's default),
    <U+202E>: plain ASCII, so nothing in it is obeyed, and it says which character was
    there (U+FFFD would not). Each is replaced whole, with no state kept between pieces:
    one that streams in a piece of its own (pieces are whole characters) shows the same."""
    ch = m[0]
    if ch >= "\xa0":
        return f"<U+{ord(ch):04X}>"
    return "^" + chr(ord(ch) ^ 0x40) if ch < "\x80" else "\ufffd"


class _Inert:
    """The model's text as it streams to a terminal (on=True), its controls shown instead
    of obeyed (see _CONTROLS); elsewhere (a file, a pipe) as it is, byte for byte. Piece
    by piece: a sequence split between pieces is taken character by character all the
    same. A \\r\\n stays a line's end (it shows as \\n does): a \\r that ends a piece
    waits for the next one, and one that ends the text is left out (it moved the cursor
    only)."""

    def __init__(self, on: bool):
        self.on, self.cr = on, False

    def __call__(self, text: str) -> str:
        if not self.on or not text:
            return text
        text = ("\r" if self.cr else "") + text
        self.cr = text.endswith("\r")
        return _CONTROLS.sub(_caret, (text[:-1] if self.cr else text).replace("\r\n", "\n"))


class _Thought:
    """A reply's reasoning, shown as it comes: a "Thinking..." line, the reasoning, and
    "...done thinking." and a blank line once the answer begins, all faint on a terminal
    with styles. `write` writes to the answer's stream, or to stderr (apart=True); a
    reasoning cut short (max tokens, Ctrl+C, an error) only gets its style reset, plus a
    line end when apart (the answer's stream ends its own line). stream: the file `write`
    writes to, where a Ctrl+Z's handler turns the style off and `fg` back on. inert: it
    is a terminal, where the reasoning's controls are shown, not obeyed (see _Inert)."""

    def __init__(self, write, styled: bool, apart: bool, stream=None, inert: bool = False):
        self.write, self.styled, self.apart, self.stream = write, styled, apart, stream
        self.shown = _Inert(inert)
        self.pieces: list[str] = []
        self.open = False  # shown, and not ended yet
        self.faint = False  # the reasoning still to come is faint (so after an `fg` too)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def add(self, piece: str) -> None:
        if not piece:
            return
        if not self.pieces:
            self.open = True  # first: a Ctrl+C within the write still gets the style reset
            self.faint = self.styled
            self.write((DIM if self.styled else "") + THINKING + "\n")
        self.pieces.append(piece)
        self.write(self.shown(piece))

    def end(self, answer_follows: bool) -> None:
        if not self.open:
            return
        done = ("" if self.text.endswith("\n") else "\n") + DONE_THINKING
        self.faint = False  # first: an `fg` from now on must not turn it on again
        self.write((done if answer_follows else "") + (NORMAL if self.styled else "")
                   + ("\n\n" if answer_follows else "\n" if self.apart else ""))
        self.open = False  # last: a Ctrl+C within the write leaves it for the next end()

    def style_off(self) -> None:
        """Run by a Ctrl+Z's handler: the style off before the shell has the terminal (it
        stayed faint until `fg`). The text written before it goes first; codes are written
        straight to the file, as the handler may run inside a write to the stream."""
        if self.open and self.styled and self.stream is not None:
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                self.stream.flush()  # (RuntimeError: inside that write; it comes after)
            _write_codes(self.stream, NORMAL)

    def style_back(self) -> None:
        """Run once `fg` gives the terminal back: the reasoning still being written is
        faint again."""
        if self.faint and self.stream is not None:
            _write_codes(self.stream, DIM)


# A read with less than this left when it is first reported shows no status: it would
# flash and go (as the chat page's READ_NOTE_MIN_S, runtime/web/app.js).
READ_NOTE_MIN_S = 1.5
ERASE_LINE = "\r\x1b[K"  # to the line's start, and erase it (CSI K)


def _read_parts(p: dict) -> tuple[int, int, int]:
    """(the prompt's tokens found in the cache, those left to read, those of them read)."""
    total = int(p["total"])
    cached = min(max(int(p.get("cache") or 0), 0), total)
    return cached, total - cached, max(int(p["processed"]) - cached, 0)


def _seconds_left(p: dict) -> float | None:
    """At the rate so far, the seconds left to read; None before there is a rate."""
    done, ms = _read_parts(p)[2], float(p.get("time_ms") or 0)
    return (int(p["total"]) - int(p["processed"])) / (done / ms) / 1e3 \
        if done > 0 and ms > 0 else None


def _reading_text(p: dict, columns: int = 0) -> str:
    """"(reading the conversation: 43%, 1,024 of 2,370 tokens, about 15 s left)", as the
    page's readingText: the percentage counts what had to be read, not what the cache
    held already. With `columns` (> 1), a row of that many that must not wrap: the first
    of the shorter forms that fits ("(reading the conversation: 43%, about 15 s left)",
    "(reading the conversation: 43%)", "(reading: 43%)"), cut only when none does: the
    long one cut to 19 characters, "(reading the conver", never showed how far it got."""
    cached, to_read, done = _read_parts(p)
    pct = min(99, 100 * done // to_read) if to_read > 0 else 0
    left = _seconds_left(p)
    left = "" if left is None else ", about " + (
        f"{max(1, int(left + 0.5))} s" if left < 60 else
        f"{int(left / 60 + 0.5)} min" if left < 3600 else f"{left / 3600:.1f} h") + " left"
    text = (f"(reading the conversation: {pct}%, {done:,} of {to_read:,} "
            f"{'new ' if cached else ''}tokens{left})")
    if columns <= 1:  # (no width known)
        return text
    # Never wrapped: "\\r" goes back to the row's start, and CSI K erases that row only.
    forms = [text, f"(reading the conversation: {pct}%{left})",
             f"(reading the conversation: {pct}%)", f"(reading: {pct}%)"]
    fits = [form for form in forms if len(form) <= columns - 1]
    return fits[0] if fits else forms[-1][:columns - 1]


class _Reading:
    """A long prompt's read, shown on the line the reply starts on (the line reader's
    Enter left the cursor at its start): a status line, faint on a terminal with styles,
    each report written over the last ("\\r"), erased before the reply's first text (and
    when the reply ends without any, is stopped or fails). As the page's note: shown only
    when the first report leaves READ_NOTE_MIN_S or more to read, and gone once all of it
    is read. Until the reply's first text the cursor is on that line, so erasing it is
    always safe then. A Ctrl+Z erases it before the shell has the terminal (hide, see
    _held_after_fg); the next report after `fg` draws it again. Nothing is drawn while
    the chat is in the background (after `bg`: the shell's line would be overwritten)."""

    def __init__(self, write, out):
        self.write, self.out = write, out
        self.styled = _shows_styles(out)
        # CSI K where TERM names a terminal that takes codes (the paste marks' test); a
        # "dumb" one, or none named (\\r only), gets the status overwritten with spaces.
        self.codes = paste_marks_wanted()
        self.wanted = None   # decided by the first report that leaves something to read
        self.drawn = False   # on the screen (written, and not erased since)
        self.width = 0       # the characters the status took when last drawn
        self.over = False    # the reply's text began, or the reply ended: no more status

    def report(self, progress: dict) -> None:
        if self.over:
            return
        try:
            read_all = int(progress["processed"]) >= int(progress["total"])
            if not read_all and self.wanted is None:
                left = _seconds_left(progress)
                self.wanted = left is None or left >= READ_NOTE_MIN_S
            text = _reading_text(progress, self._columns())
        except (KeyError, TypeError, ValueError, ZeroDivisionError):  # (not a report)
            return
        if read_all:  # the reply's first token is next
            self.end()
            return
        if not self.wanted or not self._in_front():
            return
        rest = "\x1b[K" if self.codes else " " * max(self.width - len(text), 0)
        self.drawn = True  # first: a Ctrl+Z within the write erases it (see hide)
        self.write("\r" + (DIM if self.styled else "") + text + (NORMAL if self.styled else "")
                   + rest)
        self.drawn, self.width = True, len(text)

    def end(self) -> None:
        self.over = True
        if self.drawn and self._in_front():
            self.drawn = False
            self.write(self._erasing())

    def hide(self) -> None:
        """Run by a Ctrl+Z's handler: the status erased before the shell has the terminal.
        The codes are written straight to the file (the handler may run inside a write to
        the stream), after the text written before them."""
        if self.drawn:
            self.drawn = False
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                self.out.flush()  # (RuntimeError: inside that write; it comes after)
            _write_codes(self.out, self._erasing())

    def _erasing(self) -> str:
        return ERASE_LINE if self.codes else "\r" + " " * self.width + "\r"

    def _fd(self) -> int | None:
        try:
            return self.out.fileno()
        except (AttributeError, OSError, ValueError):
            return None

    def _in_front(self) -> bool:
        fd = self._fd()
        return fd is None or _in_foreground(fd)

    def _columns(self) -> int:
        fd = self._fd()
        try:
            return os.get_terminal_size(fd).columns if fd is not None else 0
        except (OSError, ValueError):
            return 0


def _let_interrupts_settle(seconds: float = 0.3) -> None:
    """Wait a moment after a Ctrl+C before reading the next line. A one-file executable
    gets each Ctrl+C twice (PyInstaller's launcher forwards its copy a moment later); a
    copy landing while readline sets up the terminal left the prompt unprinted and the
    line unread until Enter (seen 1 time in 5 in tests). Here it lands harmlessly.
    Anything else (python -m, a .pyz) gets each Ctrl+C once, and does not wait."""
    if not getattr(sys, "frozen", False):
        return
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            time.sleep(left)
        except KeyboardInterrupt:
            pass


_LEAVING = [0]  # the signal _leave was run for, noted before it does anything else


def _exit_on_sigterm() -> None:
    """`kill` of a chat in a terminal leaves through the `finally` blocks (status 143, as
    if killed by the signal), so that the terminal gets its line editing and echo back:
    both line readers keep it in raw mode while they wait at the prompt."""
    if threading.current_thread() is threading.main_thread():
        _LEAVING[0] = 0  # a note left by an earlier chat in this process is not ours
        signal.signal(signal.SIGTERM, _leave)


def _leave(signum, frame):
    # Noted first, with no call: input() runs the due handlers a second time with the
    # KeyboardInterrupt of a Ctrl+C still set (a Ctrl+C and a `kill` at once), and there
    # every call fails (a SystemError caused by the KeyboardInterrupt): the `kill` was
    # taken for the Ctrl+C, and the chat went on. The prompt's loop leaves for it then
    # (see _leave_if_killed). A subscript store calls nothing (as signal_wake's NUDGE).
    _LEAVING[0] = signum
    # In the background (Ctrl+Z, then `kill %1`; or after `bg`) the terminal is the
    # shell's, its modes given back at the stop (see _given_back_while_stopped): putting
    # modes back on the way out stopped the chat there (SIGTTOU), "Stopped" until an
    # `fg`, instead of ending it. It ends as the signal ends a program.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        if not _in_foreground(sys.stdin.fileno()):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
    sys.exit(128 + signum)


def _leave_if_killed() -> None:
    """Leave for a `kill` whose handler could not (see _leave), now that it can."""
    if _LEAVING[0]:
        _leave(_LEAVING[0], None)


def _is_ctrl_c(e: BaseException) -> bool:
    """A KeyboardInterrupt, or what input() makes of a second Ctrl+C right after the first:
    it runs the SIGINT handler again with the KeyboardInterrupt still set, and a handler
    written in Python (the bundle's, runtime/__main__.py) then fails with a SystemError
    caused by it (seen with a one-file executable, whose launcher forwards a copy)."""
    while e is not None:
        if isinstance(e, KeyboardInterrupt):
            return True
        if not isinstance(e, SystemError):
            return False
        e = e.__cause__ or e.__context__
    return False


def _on_terminal(stdin, stdout) -> bool:
    """The chat talks to a person at a terminal: both ends are the process's own tty."""
    if stdin is not sys.stdin or stdout is not sys.stdout:
        return False
    try:
        return stdin.isatty() and stdout.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def _keys_kept_as_bytes(stdin, on_terminal: bool):
    """The terminal out of canonical mode for the whole chat, also while an answer is
    written. In canonical mode Ctrl+D is no byte but an end-of-file mark, which became a
    NUL (ignored) when the next prompt's reader left that mode: a Ctrl+D typed while an
    answer was written, or just after it, was lost, and the chat waited at a new prompt.
    Now it is a byte (echoed as ^D) that the next prompt takes for the end of input.
    Echo stays on: readline shows nothing typed on a terminal without echo. Yields a
    function that leaves canonical mode again (after Ctrl+Z and `fg` the shell hands the
    terminal back in its own modes), what was typed while the model loaded (see
    _typed_ahead), and the shell's modes (None off a terminal); they come back however the
    chat ends."""
    saved = None
    if on_terminal and os.name == "posix":
        import termios
        fd = stdin.fileno()
        try:
            saved = termios.tcgetattr(fd)
        except termios.error:
            pass
    if saved is None:
        yield (lambda: None), "", None
        return

    def hold():
        if not _in_foreground(fd):  # (after `bg`: changing the modes would stop us)
            return
        try:
            attrs = termios.tcgetattr(fd)
            if attrs[3] & termios.ICANON:
                attrs[3] &= ~termios.ICANON
                set_modes(fd, attrs)
        except termios.error:  # the terminal went away
            pass
    try:
        typed = _typed_ahead(fd, saved, getattr(stdin, "encoding", None))
        hold()
        yield hold, typed, saved
    finally:
        try:
            set_modes(fd, saved)
        except termios.error:
            pass


@contextlib.contextmanager
def pastes_marked_while_loading(stdin=None, stdout=None):
    """While the model loads (the seconds before the chat's first prompt), a paste is
    marked (bracketed paste), so that its lines reach the chat as one message, as at the
    prompt (see _typed_ahead, _ahead_keys): a question of 5 lines pasted then went out as
    5 messages, and got 5 answers. The terminal's own line editing (canonical mode) echoes
    the marks meanwhile, as "^[[200~" with ECHOCTL on: it is off for that time (the marks
    written as they are are nothing a terminal shows). However the load ends (an error,
    Ctrl+C, `kill`), paste mode is off and the modes are as they were afterwards; the
    shell has them so while a Ctrl+Z stops the load too (see _given_back_while_stopped).
    Only on a terminal that is not "dumb", with the chat in the foreground."""
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    saved = _shell_modes(stdin, stdout) if paste_marks_wanted() else None
    if saved is None:
        yield
        return
    import termios
    fd = stdin.fileno()
    _exit_on_sigterm()  # so that `kill` during the load goes through the finally below
    quiet = list(saved)
    quiet[3] &= ~getattr(termios, "ECHOCTL", 0)

    def ours():
        with contextlib.suppress(termios.error):
            set_modes(fd, quiet)
        _write_codes(stdout, PASTE_ON)

    def the_shells():
        _write_codes(stdout, PASTE_OFF)
        with contextlib.suppress(termios.error):
            set_modes(fd, saved)
    held = None
    try:
        with contextlib.suppress(OSError, ValueError):
            stdout.flush()  # (the codes go straight to the terminal, after what is written)
        ours()
        with _given_back_while_stopped(fd, ours, the_shells) as held:
            yield
    finally:
        if held is None or held():  # (given back and not taken: the shell's already)
            the_shells()


@contextlib.contextmanager
def _given_back_while_stopped(fd: int, take, give, redraw=None):
    """Ctrl+Z while we have changed the terminal: give() hands it to the shell as it was
    before the process stops, take() changes it again once `fg` continues the process.
    The chat stopped with paste mode on and ECHOCTL off (the load's), and the shell then
    got every paste wrapped in "^[[200~ ... ^[[201~". After `bg` the terminal stays the
    shell's until the job has it again: bash's `fg` of a running job sends no SIGCONT, so
    while it runs in the background a thread looks every FG_POLL_S whether it has (the
    rest of the load had no paste marks). Yields a function that says whether the
    terminal is ours (not given back). Python runs the handler between two steps of the
    main thread's code, so a stop waits for a long NumPy call to end. redraw: run on the
    main thread once the terminal is taken back (GNU readline's line is drawn again)."""
    if not hasattr(signal, "SIGTSTP"):
        yield lambda: True
        return
    given = [False]
    # Held from give() until the process is continued: the watcher must not take the
    # terminal back between give() and the stop. (Reentrant: a handler can run inside
    # another on the main thread.)
    lock = threading.RLock()
    done = threading.Event()
    watchers: list[threading.Thread] = []

    redraw_due = [False]
    taking = [False]  # the terminal being taken back after a stop
    again = [False]   # a Ctrl+Z came meanwhile: stop again

    def take_back(signum=None, frame=None):
        with lock:
            if given[0] and _in_foreground(fd):  # (in the background: SIGTTOU would stop us)
                given[0] = False
                take()
                redraw_due[0] = redraw is not None
        if not redraw_due[0]:
            return
        if threading.current_thread() is threading.main_thread():
            redraw_due[0] = False
            redraw()
        else:
            # The watcher noticed the `fg` that sends no signal (after `bg`): readline,
            # which waits in C code for a key, went on at the width the terminal had
            # before `bg`, its line not shown again (a Backspace across a wrapped row
            # left the row above as it was). The signal interrupts that wait, and its
            # handler (this function, on the main thread) draws the line at the width now.
            signal.pthread_kill(threading.main_thread().ident, signal.SIGCONT)

    def watch_for_fg() -> None:
        # Continued in the background (`bg`): only then does a thread look every FG_POLL_S
        # for the `fg` that sends no signal, and it ends once the terminal is taken back.
        while given[0] and not done.wait(FG_POLL_S):
            take_back()

    def stop(signum, frame):
        # A second Ctrl+Z while this one is handled (two within a moment) is part of this
        # stop, as the kernel's own stop takes it. Python ran this handler again inside
        # the first one (at its next step: `frame`, where the main thread was, is then in
        # the first one, or below it), and the chat stopped twice, an `fg` waking it only
        # to stop again: the first time with the prompt's raw mode left to the shell (the
        # second one found the terminal given, in the middle of give()), and after the
        # second `fg` the prompt stayed in the shell's modes (taken back already). (One
        # in the moment between SIG_DFL and the kill below still stops it twice, as any
        # program that stops itself so, vim too, with the terminal the shell's. Blocking
        # SIGTSTP here would not close that moment: the kernel gives a
        # signal sent to the process that this thread blocks to another thread (the
        # engine's, OpenBLAS's), and the process stops all the same. SIGSTOP would, but
        # the shell then says "Stopped (signal)", and it stops a process group that no
        # shell will continue, whose SIGTSTP the kernel discards.)
        if _running_in(frame, stop.__code__):
            # ... but one while `fg` is being taken back is a Ctrl+Z typed after the `fg`:
            # it was dropped, and the chat went on in front. It stops the chat again once
            # the terminal is taken back.
            again[0] = again[0] or taking[0]
            return
        again[0] = True
        while again[0]:
            again[0] = False
            stop_once()

    def stop_once():
        with lock:
            if not given[0] and _in_foreground(fd):
                given[0] = True
                give()
            # Stopped as by the terminal's Ctrl+Z (which the handler took): the shell sees
            # the job stopped. (In an orphaned process group the kernel discards it.)
            # The SIGCONT of `fg` is only noted until this handler is back: Python runs
            # its handler as soon as the kill returns, which took the terminal (raw mode,
            # paste mode) while a Ctrl+Z was still the kernel's, and a Ctrl+Z then
            # stopped the chat with them left to the shell.
            continued: list = []
            on_cont = signal.signal(signal.SIGCONT, lambda signum, frame: continued.append(frame))
            signal.signal(signal.SIGTSTP, signal.SIG_DFL)
            try:
                os.kill(os.getpid(), signal.SIGTSTP)  # returns once continued
            finally:
                signal.signal(signal.SIGTSTP, stop)
                signal.signal(signal.SIGCONT, on_cont)
            taking[0] = True
            try:
                take_back()
                if continued and callable(on_cont) and on_cont is not take_back:
                    on_cont(signal.SIGCONT, continued[0])  # (the line reader's: see above)
            finally:
                taking[0] = False
            if given[0] and not any(w.is_alive() for w in watchers):
                watchers[:] = [threading.Thread(target=watch_for_fg, name="chatfile-fg-watch",
                                                daemon=True)]
                watchers[0].start()
    before_stop = set_handler(signal.SIGTSTP, stop)
    before_cont = set_handler(signal.SIGCONT, take_back)
    try:
        yield lambda: not given[0]
    finally:
        done.set()
        for w in watchers:
            w.join()
        set_handler(signal.SIGTSTP, signal.SIG_DFL if before_stop is None else before_stop)
        set_handler(signal.SIGCONT, signal.SIG_DFL if before_cont is None else before_cont)


def _running_in(frame, code) -> bool:
    """Whether `code` runs at `frame` or in one of its callers."""
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


FG_POLL_S = 0.2  # how often a job given back after `bg` looks whether it is in front again


def _given_back_at_stops(read, fd: int, shells_modes: list, out):
    """`read`, which gives the shell its terminal while a Ctrl+Z stops it, as the load
    does (see _given_back_while_stopped). Both line readers wait in raw mode with paste
    mode on, and a stop left them so: GNU readline does not undo them (Python turns its
    signal handling off), the own line editor did not either. bash resets the modes
    itself, but dash and sh read their commands without echo or line editing then, and
    got every paste wrapped in "^[[200~ ... ^[[201~". Now the shell has the modes it had
    before the chat, and `fg` gives the prompt its own back, and paste mode (a paste of
    several lines is one message still), and shows the line again."""
    import termios
    marks = getattr(read, "marks_pastes", False)
    at_stop: list = []  # the reader's modes when it was stopped

    def give():
        with contextlib.suppress(termios.error):
            at_stop[:] = [termios.tcgetattr(fd)]
        if marks:
            _write_codes(out, PASTE_OFF)
        with contextlib.suppress(termios.error):
            set_modes(fd, shells_modes)

    def take():
        with contextlib.suppress(termios.error):
            if at_stop:
                set_modes(fd, at_stop.pop())
        if marks:
            _write_codes(out, PASTE_ON)

    def read_given_back(prompt, text=""):
        # (The own line editor draws its line again itself.)
        with _given_back_while_stopped(fd, take, give, getattr(read, "after_fg", None)):
            return read(prompt, text)
    read_given_back.__dict__.update(read.__dict__)  # (discard, take_waiting)
    return read_given_back


def _shell_modes(stdin, stdout) -> list | None:
    """The modes of the terminal the chat talks to, when it is in the shell's (canonical)
    ones and ours to change (we are its foreground job); else None: out of canonical mode
    some other program's editor has it."""
    if os.name != "posix" or not _on_terminal(stdin, stdout):
        return None
    import termios
    fd = stdin.fileno()
    try:
        modes = termios.tcgetattr(fd)
    except termios.error:
        return None
    return modes if modes[3] & termios.ICANON and _in_foreground(fd) else None


def _write_codes(out, codes: str) -> None:
    """Terminal codes written straight to `out`'s file: a signal handler may write them
    in the middle of a write to `out`, whose buffer refuses a reentrant one."""
    try:
        os.write(out.fileno(), codes.encode())
    except (OSError, ValueError):  # the terminal went away
        pass


def _typed_ahead(fd: int, saved: list, encoding: str | None) -> str:
    """The whole lines typed while the model loaded, each Ctrl+D in them as CTRL_D; the
    terminal is left out of canonical mode. Until the chat starts, the terminal is in its
    own (canonical) mode, where a Ctrl+D is no byte but an end-of-file mark, which became
    a NUL (ignored) when the chat left that mode: a Ctrl+D typed while the model loaded
    was lost, and the chat waited at its first prompt. So the lines typed by then are read
    in that mode first (a line still being typed stays in the terminal, and reaches the
    prompt as it is); the terminal's Ctrl+D is off meanwhile, so that one typed during
    these reads is kept as a byte. The modes are changed with TCSANOW, which, unlike
    TCSAFLUSH, discards nothing typed. A paste made meanwhile comes whole, with its marks
    (see pastes_marked_while_loading)."""
    import termios
    if not saved[3] & termios.ICANON or not _in_foreground(fd):
        return ""
    try:
        no_eof_char = os.fpathconf(fd, "PC_VDISABLE")
    except (OSError, ValueError):
        no_eof_char = 0
    quiet = termios.tcgetattr(fd)
    quiet[6][termios.VEOF] = bytes([no_eof_char])
    chunks: list[bytes] = []
    try:
        set_modes(fd, quiet)
        while input_waiting(fd):
            data = os.read(fd, 65536)  # in this mode: one line, or up to a Ctrl+D
            if not data:
                # A Ctrl+D on an empty line: the chat ends there, and the lines after it
                # stay in the terminal, for the shell.
                chunks.append(CTRL_D.encode())
                break
            chunks.append(data)
            if not data.endswith(b"\n"):  # a Ctrl+D part way through a line
                chunks.append(CTRL_D.encode())
    except (OSError, termios.error):  # the terminal went away: the line reader finds out
        pass
    finally:
        raw = list(saved)
        raw[3] &= ~termios.ICANON
        with contextlib.suppress(termios.error):
            set_modes(fd, raw)
    typed = b"".join(chunks)
    if _in_paste(typed) and not typed.endswith(CTRL_D.encode()):
        # A paste's last line, with its end mark, waits in the terminal for an Enter not
        # typed yet (canonical mode gives whole lines only): read now, out of that mode,
        # it keeps the paste whole (see pastes_marked_while_loading).
        typed += read_waiting(fd)
    if _in_paste(typed):
        # The end mark is gone, all or part of it: a Backspace after the paste erased it
        # in canonical mode, where it is part of the line. Without it the own line editor
        # took every Enter after for a line end in the paste, and sent nothing.
        typed = _without_end_mark_part(typed) + PASTE_END.encode()
    return typed.decode(encoding or "utf-8", "replace")


def _without_end_mark_part(typed: bytes) -> bytes:
    """The keys without what a Backspace left of a paste's end mark at their end."""
    end = PASTE_END.encode()
    for n in range(len(end) - 1, 0, -1):
        if typed.endswith(end[:n]):
            return typed[:-n]
    return typed


def _in_paste(typed: bytes) -> bool:
    """Whether the keys end inside a bracketed paste (its end mark still to come)."""
    return typed.rfind(PASTE_START.encode()) > typed.rfind(PASTE_END.encode())


@contextlib.contextmanager
def _held_after_fg(hold, shells=None, style_off=lambda: None, style_back=lambda: None):
    """While an answer is written: `fg` after a Ctrl+Z hands the terminal back in the
    shell's (canonical) modes, where a Ctrl+D typed during the rest of the answer was lost
    again; SIGCONT takes it out of that mode at once. (Each line reader sets its own modes
    while it reads: this handler is only for the time between.) The Ctrl+Z itself gives
    the shell its modes first (shells: the terminal and them), as at the prompt (see
    _given_back_at_stops): the chat stopped out of canonical mode, and dash then read its
    commands without line editing (a Backspace went into the command as ^?). It turns a
    faint reasoning's style off too (style_off; style_back after `fg`): the shell's text
    was faint until `fg`."""
    if not hasattr(signal, "SIGCONT"):
        yield
        return
    given_back = contextlib.nullcontext()
    if shells is not None:
        import termios
        fd, shells_modes = shells

        def give():
            style_off()
            with contextlib.suppress(termios.error):
                set_modes(fd, shells_modes)

        def take():
            hold()
            style_back()
        given_back = _given_back_while_stopped(fd, take, give)
    # (Inside it: a stop that is not a Ctrl+Z, SIGSTOP, gets its SIGCONT handled too.)
    with given_back:
        before = set_handler(signal.SIGCONT, lambda signum, frame: hold())
        try:
            yield
        finally:
            set_handler(signal.SIGCONT, signal.SIG_DFL if before is None else before)


def _line_reader(stdin, stdout, typed_ahead: str = ""):
    """A function(prompt, text="") -> line, raising EOFError at the end of input.

    On a terminal, GNU readline (behind input()) reads in raw mode: the terminal's own
    line editing (canonical mode) holds 4095 characters and silently drops the rest of a
    longer pasted message. readline also gives line editing and history. Without it (the
    one-file executable leaves it out, see runtime/line_input.py), a POSIX terminal is
    read by our own small line editor; elsewhere (Windows), or on a pipe, lines are read
    as they come. The two terminal readers take `text` to start the line with (a line
    given back to edit) and have `read.take_waiting()` (see _waiting_text); they take
    `typed_ahead` (see _typed_ahead) before what the terminal holds."""
    if _on_terminal(stdin, stdout):
        try:
            import readline  # noqa: F401 - importing it is what makes input() use it
            return _readline_reader(stdin.fileno(), stdout, typed_ahead,
                                    getattr(stdin, "encoding", None))
        except ImportError:
            pass
        if os.name == "posix":
            from runtime.line_input import raw_line_reader
            return raw_line_reader(stdin.fileno(), stdout, getattr(stdin, "encoding", None),
                                   typed_ahead)

    def read(prompt, text=""):  # (text: no reader here can give a line back)
        stdout.write(prompt)
        stdout.flush()
        line = stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\r\n")
    return read


# Keys read ahead of a prompt (typed while the model loaded, or waiting after a line given
# back): escape sequences (arrow keys) and control characters other than a tab, a line
# end or Ctrl+D are no text (the own line editor drops them too).
NOT_TYPED_TEXT = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|O.|.)?"  # ESC [ ... final, ESC O x, ESC x
                            r"|[\x00-\x03\x05-\x08\x0b-\x1f\x7f-\x9f]")  # not \t \n ^D


PASTED = re.compile(re.escape(PASTE_START) + "(.*?)(?:" + re.escape(PASTE_END) + "|$)", re.S)


def _ahead_keys(typed: str) -> deque:
    """The keys typed ahead, as the readline reader takes them: one character each, but
    the text of a bracketed paste as one item, whose line ends are text (the own line
    editor reads the marks itself). As at the prompt, a paste that ends its last line
    waits for Enter."""
    keys: deque = deque()
    at = 0
    for pasted in PASTED.finditer(typed):
        keys.extend(NOT_TYPED_TEXT.sub("", typed[at:pasted.start()]))
        text = NOT_TYPED_TEXT.sub("", pasted.group(1)).replace(CTRL_D, "")
        text = text.removesuffix("\n")
        if text:
            keys.append(text)
        at = pasted.end()
    keys.extend(NOT_TYPED_TEXT.sub("", typed[at:]))
    return keys


def _readline_reader(fd: int, out, typed_ahead: str, encoding: str | None = None):
    """input(), which reads with GNU readline, and what readline cannot do by itself:
    start a line with text (readline's startup hook inserts it), and first take the lines
    typed while the model loaded, which were read before readline ever ran (see
    _typed_ahead): shown after their prompt, as readline would, and kept in its history;
    a paste made then is one message (see _ahead_keys)."""
    import readline
    marks_pastes = _readline_marks_pastes(readline)
    ahead = _ahead_keys(typed_ahead)
    decoder = codecs.getincrementaldecoder(encoding or "utf-8")("replace")
    resized = _readline_resized(readline)
    # GNU readline 8.1 and later end the line themselves at an end of input while paste
    # mode is on (rl_deprep_terminal writes a "\n" then): the chat's own line end after
    # it left an empty row before the shell's prompt (and before the answer of a """
    # message ended by Ctrl+D).
    ends_line = marks_pastes and getattr(readline, "_READLINE_RUNTIME_VERSION", 0) >= 0x0801
    ended = [False]  # the last end of input was readline's, and it ended the line

    def read_input(prompt):
        try:
            return input(prompt)
        except EOFError:
            ended[0] = ends_line
            raise

    def read(prompt, text=""):
        resized()  # (a stop during the answer, or `bg`, missed a resize too)
        ended[0] = False
        line = text
        while ahead:
            ch = ahead.popleft()
            if ch == "\n":
                out.write(f"{prompt}{line}\n")
                out.flush()
                if line:
                    readline.add_history(line)
                return line
            if ch == CTRL_D:
                if not line:  # on an empty line: the end, as readline takes it
                    out.write(prompt)
                    raise EOFError
            else:
                line += ch
        if not line:
            return read_input(prompt)
        readline.set_startup_hook(lambda: readline.insert_text(line))
        try:
            return read_input(prompt)
        finally:
            readline.set_startup_hook(None)
    read.discard = ahead.clear
    read.ended_line = lambda: ended[0]
    read.take_waiting = waiting_taker(fd, ahead, decoder)
    read.marks_pastes = marks_pastes
    read.after_fg = _readline_redraw(readline, out, resized)
    return read


def _readline_function(readline, name: str):
    """GNU readline's C function `name` (called for its effect: no result is read), which
    Python's module leaves out, looked up in the libraries the module was loaded with;
    None where it is not found (libedit)."""
    try:
        import ctypes
        function = getattr(ctypes.CDLL(getattr(readline, "__file__", None)), name)
    except (ImportError, OSError, AttributeError):
        return None
    function.restype = None
    return function


def _readline_resized(readline):
    """A function that has readline read the terminal's size again. It learns it at its
    first prompt, and from SIGWINCH, which the terminal sends to the job in front only: a
    terminal resized while the chat was stopped (Ctrl+Z, or `bg`) told the shell, and
    readline went on at the old width (a Backspace across a wrapped row stayed on the
    row below, the rest of the row above left on the screen). rl_reset_screen_size, not
    rl_resize_terminal, which also redraws the line where it was: after `fg` the line is
    drawn again below what the shell wrote (see _readline_redraw)."""
    return _readline_function(readline, "rl_reset_screen_size") or (lambda: None)


def _readline_redraw(readline, out, resized):
    """A function that shows readline's prompt and line again on a line of their own,
    after `fg` (the shell wrote below them meanwhile), as the own line editor does, at the
    terminal's width now (resized(): see _readline_resized): GNU readline's
    rl_forced_update_display (see _readline_function). Does nothing where it is not found."""
    redraw = _readline_function(readline, "rl_forced_update_display")
    if redraw is None:
        return lambda: None

    def after_fg():
        resized()
        _write_codes(out, "\r\n")  # (where the redraw takes the cursor to be)
        redraw()
    return after_fg


def _readline_marks_pastes(readline) -> bool:
    """Bracketed paste on in GNU readline: it reads a marked paste as text, its line
    ends too, so that a paste of several lines is one input() and one message. Python's
    readline module turns it off when imported, over the user's inputrc, and again in
    read_init_file() (bpo-42819: its interactive interpreter wants a paste line by line),
    and the terminal was never told to mark a paste: its lines went out, and were
    answered, one by one. Not with libedit (macOS's Python), whose init lines are another
    language; nor on a "dumb" terminal (see paste_marks_wanted); nor where the user's
    inputrc turns it off (see _inputrc_value): that choice was overridden. Returns whether
    it is on."""
    if not paste_marks_wanted() or "libedit" in (readline.__doc__ or ""):
        return False
    said = _inputrc_value("enable-bracketed-paste")
    # As GNU readline reads a boolean variable: "on" or "1" (or no value) is on, all else off.
    if said is not None and said.lower() not in ("", "on", "1"):
        return False
    readline.parse_and_bind("set enable-bracketed-paste on")
    return True


INPUTRC_MAX_BYTES = 1 << 20   # an inputrc is a few KiB; more is read no further
INPUTRC_MAX_INCLUDES = 8      # $include depth (a file that includes itself ends there)
INPUTRC_MAX_FILES = 64        # $include lines followed in all
READLINE_NAME = "python"      # the application name `$if` tests (Python's rl_readline_name)


def _inputrc_value(name: str) -> str | None:
    """The value the user's inputrc sets readline variable `name` to (its first word, ""
    if none), the last it sets; None if it sets none. The file readline reads: $INPUTRC,
    else ~/.inputrc, else /etc/inputrc. `$include` is followed; `$if` tests the
    application, term= and mode= as readline does, and takes others (version) as true."""
    path = os.environ.get("INPUTRC")
    for candidate in [path] if path else ["~/.inputrc", "/etc/inputrc"]:
        lines = _inputrc_lines(candidate)
        if lines is not None:
            return _inputrc_set(lines, name.lower(), {"mode": "emacs"}, 0)
    return None


def _inputrc_lines(path: str) -> list[str] | None:
    try:
        with open(os.path.expanduser(path), encoding="utf-8", errors="replace") as f:
            return f.read(INPUTRC_MAX_BYTES).splitlines()
    except (OSError, ValueError):
        return None


def _inputrc_set(lines: list[str], name: str, state: dict, depth: int) -> str | None:
    value = None
    ifs: list[tuple[bool, bool]] = []   # per open $if: (its lines read?, the test held?)
    for line in lines:
        words = line.split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        head, rest = words[0].lower(), (words[1] if len(words) > 1 else "").strip()
        reading = all(on for on, _ in ifs)
        if head == "$if":
            held = _inputrc_if_holds(rest, state)
            ifs.append((reading and held, held))
        elif head == "$else" and ifs:
            held = not ifs.pop()[1]
            ifs.append((all(on for on, _ in ifs) and held, held))
        elif head == "$endif" and ifs:
            ifs.pop()
        elif not reading:
            continue
        elif head == "$include" and depth < INPUTRC_MAX_INCLUDES \
                and state.setdefault("read", 0) < INPUTRC_MAX_FILES:
            state["read"] += 1  # (a file that includes itself twice doubled at each depth)
            included = _inputrc_lines(rest)
            said = _inputrc_set(included, name, state, depth + 1) if included else None
            value = value if said is None else said
        elif head == "set":
            var, val = (rest.split(None, 1) + ["", ""])[:2]
            var, val = var.lower(), (val.split() or [""])[0]
            if var == "editing-mode":
                state["mode"] = val.lower()
            if var == name:
                value = val
    return value


def _inputrc_if_holds(test: str, state: dict) -> bool:
    """An inputrc `$if`'s test, as GNU readline takes it."""
    word = (test.split() or [""])[0].lower()
    if word.startswith("term="):  # the terminal's name, or its part before the first "-"
        term = os.environ.get("TERM", "").lower()
        return word[5:] in (term, term.split("-", 1)[0])
    if word.startswith("mode="):
        return word[5:] == state["mode"]
    if word == "version" or any(op in test for op in "=<>!"):  # not judged here
        return True
    return word == READLINE_NAME


def _read_message(read, out, text: str = "") -> tuple[str, bool]:
    """One message: a line, or the lines between \"\"\" and \"\"\" (as Ollama does), and
    whether it may be a /command (the lines between \"\"\" never are: a message that began
    with a path, "/usr/bin/python is slow", was "unknown command" and lost, all its lines).
    The line starts as `text` (a line given back). Raises EOFError and KeyboardInterrupt
    as `read` does, except that the end of input inside \"\"\" ends the message there:
    Ctrl+D at "... " used to quit the chat, and the lines typed and the conversation were
    lost (as is a file that ends inside one). The next Ctrl+D, at the prompt, quits."""
    line = read("> ", text) if text else read("> ")
    if not line.lstrip().startswith(MULTILINE):
        return line.strip(), True
    first = line.lstrip()[len(MULTILINE):]
    if first.rstrip().endswith(MULTILINE):            # """one line"""
        return first.rstrip()[:-len(MULTILINE)].strip(), False
    lines = [first]
    while True:
        try:
            line = read("... ")
        except EOFError:
            _end_line_at_eof(read, out)  # the answer starts on a line of its own
            return "\n".join(lines).strip(), False
        if line.rstrip().endswith(MULTILINE):
            lines.append(line.rstrip()[:-len(MULTILINE)])
            return "\n".join(lines).strip(), False
        lines.append(line)


def _end_line_at_eof(read, out) -> None:
    """At an end of input (Ctrl+D), the cursor to the next row's start, not after the
    prompt, unless the reader took it there already (see _readline_reader)."""
    if not getattr(read, "ended_line", lambda: False)():
        out.write("\n")
        out.flush()


def _command(c: _Chat, line: str) -> bool | str | None:
    """Obey a /command. Returns False to quit, True when done, the text to send, or None
    for a command it does not know (said by _unknown_command)."""
    if line.startswith("//"):   # a message that begins with "/"
        return line[1:]
    # Any whitespace ends the command's name: "/system<Tab>Be brief." (pasted, or typed
    # by hand in the one-file executable, whose line editor keeps a tab) was "unknown
    # command /system\tBe".
    cmd, arg = (line.split(None, 1) + [""])[:2]
    if cmd in ("/exit", "/quit", "/bye"):
        return False
    if cmd == "/reset":
        c.reset()
        c._say("(conversation reset)")
    elif cmd == "/system":
        c.system = arg.strip() or None
        c.reset()
        c._say("(system prompt set; conversation reset)" if c.system
               else "(system prompt cleared; conversation reset)")
    elif cmd in ("/help", "/?"):
        c._say(HELP)
    else:
        return None
    return True


def _unknown_command(c: _Chat, line: str, read) -> str:
    """Say that a /command is unknown, and return the text the next prompt starts with.
    The line is not lost ("/usr/bin/python is slow, why?" was a question, gone after
    the notice): the prompt gives it back with // in front, so that Enter sends it as a
    message, and it can be edited (Ctrl+U drops it), as a shell's Up would give it back.
    The lines typed or pasted after it come back with it (see _waiting_text). A reader
    that cannot give a line back (piped, Windows): the notice says what to do."""
    cmd = line.split(None, 1)[0]
    if not hasattr(read, "take_waiting"):
        c._say(f"unknown command {cmd} (type /help; start a message with // to send it as text)")
        return ""
    more = _waiting_text(read)
    back = "your line is back with the lines after it" if more else "your line is back"
    sends = "them as one message" if more else "it as a message"
    c._say(f"unknown command {cmd} (type /help); {back}, // in front: Enter sends {sends}")
    return "/" + line + more


def _waiting_text(read) -> str:
    """The lines typed or pasted after a line that is given back, which go back with it
    ("" if none). A paste comes line by line where the terminal does not mark it (libedit,
    a dumb terminal), and those lines were judged one by one: a notice and the whole text
    again for each line (a 30-line log pasted from /var/log: 30 notices, 465 lines shown),
    and the last line's notice was the one to act on."""
    try:
        keys = read.take_waiting()
    except KeyboardInterrupt:  # while the last pieces of a paste were awaited: they go
        return ""
    # Enter is a \r where readline had the terminal when the keys came (its mode leaves
    # the \r as it is).
    more = _as_edited(_universal_newlines(keys)).replace(CTRL_D, "").rstrip("\n")
    return "\n" + more if more.strip() else ""


EDITING_KEYS = (*BACKSPACES, CTRL_U, CTRL_W)


def _as_edited(keys: str) -> str:
    """The text that keys typed make: Backspace, Ctrl+U and Ctrl+W applied to the line
    they were typed on, as both line readers do (they were left out: "helo", two
    Backspaces and "lp" came back as "helolp"); what is no text left out."""
    lines: list[list[str]] = [[]]
    for key in NOT_TYPED_TEXT.sub(lambda m: m[0] if m[0] in EDITING_KEYS else "", keys):
        line = lines[-1]
        if key == "\n":
            lines.append([])
        elif key in BACKSPACES:
            del line[-1:]
        elif key == CTRL_U:
            line.clear()
        elif key == CTRL_W:
            del line[len(line) - last_word_units(line):]
        else:
            line.append(key)
    return "\n".join("".join(line) for line in lines)


def _as_typed(text: str) -> str:
    """What to type to send `text` again: // for a message that begins with /."""
    return "/" + text if text.startswith("/") else text


PIPED_MAX_CHARS = 16 << 20  # a piped question: 16 Mi characters, ~100× the longest context
UTF8_MAX_BYTES_PER_CHAR = 4


def _read_piped(stdin) -> str:
    """All of a piped stdin (at most PIPED_MAX_CHARS + 1 characters), as text whatever its
    bytes. Read as UTF-8 (a BOM dropped) when it is, else in the locale's encoding with
    what does not decode replaced by U+FFFD: a Latin-1 file piped in under a strict UTF-8
    locale (or PYTHONIOENCODING=utf-8) failed with the codec's bare words, "'utf-8' codec
    can't decode byte 0xe9 in position 3", and a UTF-8 one under an ASCII locale too."""
    buffer = getattr(stdin, "buffer", None)
    if buffer is None:  # a text stream with no bytes below it (io.StringIO)
        return stdin.read(PIPED_MAX_CHARS + 1)
    data = buffer.read((PIPED_MAX_CHARS + 1) * UTF8_MAX_BYTES_PER_CHAR)
    try:
        return _universal_newlines(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        at = e.start
    encoding = getattr(stdin, "encoding", None) or "utf-8"
    try:
        utf8 = codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        encoding, utf8 = "utf-8", True
    if utf8:
        print(f"chatfile: note: stdin is not UTF-8 text (byte {data[at]:#04x} at offset "
              f"{at:,}); what does not decode is replaced with U+FFFD", file=sys.stderr, flush=True)
    return _universal_newlines(data.decode(encoding, "replace"))


def _universal_newlines(text: str) -> str:
    # A file from Windows (\r\n) or an old Mac (\r) sends its lines as the terminal
    # would, with \n alone (sys.stdin translated them on Windows only).
    return text.replace("\r\n", "\n").replace("\r", "\n")


PROMPT_EXAMPLE = "-p 'Hello'"


def empty_question(source: str, example: str) -> str:
    """The error line for a piped question or a -p that holds nothing to ask."""
    return f"chatfile: error: {source} is empty; give a question, for example: {example}\n"


def chat(model, *, n_ctx: int, system: str | None = None, stdin=None, stdout=None,
         params=None, max_tokens: int = -1, interactive: bool | None = None,
         piped_example: str | None = None, prompt: str | None = None,
         template_kwargs: dict | None = None, reasoning_budget: int = -1,
         reasoning_budget_message: str = "") -> int:
    """Run the chat; returns the process exit code. interactive=None: stdin.isatty().
    piped_example: the command line an empty stdin is told to follow (a bundle's own).
    prompt: the one question to answer (`-p TEXT`), as if piped in; stdin is not read.
    template_kwargs: more variables for the chat template (--reasoning-budget 0's).
    reasoning_budget, reasoning_budget_message: --reasoning-budget's (-1: no limit)."""
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    if prompt is not None:
        stdin, interactive = io.StringIO(prompt), False
    if interactive is None:
        try:
            interactive = stdin.isatty()
        except (AttributeError, ValueError):
            interactive = False
    engine = Engine(model, model.context_size(n_ctx))
    c = _Chat(model, engine, system, params, max_tokens, stdout, interactive, template_kwargs,
              (reasoning_budget, reasoning_budget_message))

    if not interactive:
        question = _read_piped(stdin)
        source = "stdin" if prompt is None else "--prompt"
        if len(question) > PIPED_MAX_CHARS:  # `yes | chatfile chat`: never ends by itself
            sys.stderr.write(f"chatfile: error: {source} holds more than {PIPED_MAX_CHARS:,} "
                             "characters, far more than a context holds; give a question\n")
            return 2
        question = question.strip()
        if not question:
            example = PROMPT_EXAMPLE if prompt is not None else \
                piped_example or cli.piped_example(None)
            sys.stderr.write(empty_question(source, example))
            return 2
        with _style_off_at_stops(c):
            return 0 if c.ask(question) is not None else 1

    stdout.write(f"chatfile: chatting with {getattr(model, 'name', 'the model')}. {HELP}\n")
    stdout.flush()
    _exit_on_sigterm()
    on_terminal = _on_terminal(stdin, stdout)
    c.shows_reading = on_terminal
    # A `kill` or Ctrl+C that lands as readline sets up its prompt is heard at once, not
    # at the next key (see runtime/signal_wake.py).
    with _keys_kept_as_bytes(stdin, on_terminal) as (hold, typed_ahead, shells_modes), \
            (signal_wake.heard() if on_terminal else contextlib.nullcontext()):
        read = _line_reader(stdin, stdout, typed_ahead)
        shells = None if shells_modes is None else (stdin.fileno(), shells_modes)
        if shells is not None:
            read = _given_back_at_stops(read, *shells, stdout)
        return _converse(c, read, stdout, hold, shells)


def _style_off_at_stops(c: _Chat):
    """Piped or -p, the reasoning faint on a terminal's stderr: a Ctrl+Z turns the style
    off for the shell and `fg` on again, as in the interactive chat (see _held_after_fg)."""
    err = sys.stderr
    if err is None or not _shows_styles(err):
        return contextlib.nullcontext()
    return _given_back_while_stopped(err.fileno(), c.style_back, c.style_off)


def _converse(c: _Chat, read, stdout, hold, shells=None) -> int:
    """The interactive chat's loop: read a message, obey it or answer it. A message that
    was not sent (an unknown /command, one too long for the context, a failed answer) is
    given back at the next prompt, where the reader can (see _line_reader). shells: the
    terminal and the shell's modes, given back at a Ctrl+Z during an answer (None off a
    terminal)."""
    back = ""  # the text the next prompt starts with
    while True:
        hold()
        text, back = back, ""
        try:
            line, may_be_command = _read_message(read, stdout, text)
        except EOFError:       # Ctrl+D, or the end of piped input
            _end_line_at_eof(read, stdout)
            return 0
        except (KeyboardInterrupt, SystemError) as e:
            if not _is_ctrl_c(e):
                raise
            _leave_if_killed()  # (a `kill` that came with the Ctrl+C ends the chat)
            # As Ollama: Ctrl+C at the prompt drops the line being typed, not the chat.
            c._say("\n" + QUIT_HINT)
            _let_interrupts_settle()
            continue
        if not line:
            continue
        if may_be_command and line.startswith("/"):
            todo = _command(c, line)
            if todo is False:
                return 0
            if todo is None:
                back = _unknown_command(c, line, read)
                continue
            if todo is True:
                continue
            line = todo
        answer = None
        try:
            with _held_after_fg(hold, shells, c.style_off, c.style_back):
                answer = c.ask(line)
        except KeyboardInterrupt:  # a Ctrl+C that landed between two steps of ask
            c._say("")
            c.interrupted = True
        if c.interrupted:
            _let_interrupts_settle()
            getattr(read, "discard", lambda: None)()  # the rest of a paste goes too
        elif answer is None and hasattr(read, "take_waiting"):  # not sent: the error said why
            back = _as_typed(line) + _waiting_text(read)
