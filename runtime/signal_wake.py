"""Wake the main thread for a signal that it noted and did not act on.

CPython runs a Python signal handler when its main thread next runs Python code, or
when a wait of its own is interrupted by the signal. Python's input() with GNU readline
draws the prompt, reads the terminal's description and the inputrc, and then waits for
a key with no timeout: a signal that lands before that wait is noted, wakes nothing, and
its handler runs only when a key is pressed. A `kill` of a terminal chat, or a Ctrl+C,
sent as its first prompt appeared went unheard in 2-6 of 15 tries on a loaded 2-core
machine, and so did the SIGIO of a copy over the model (runtime/file_lease.py) in 14 of
60 (the own line editor, runtime/line_input.py, looks up every 0.2 s and is not
affected).

While heard() is on, CPython's C-level handler, which runs for every signal that has a
Python handler, also writes the signal's number to a socket (signal.set_wakeup_fd). A
thread reads it and sends NUDGE to the main thread until NUDGE's own handler (which does
nothing else) has run: a signal sent to the main thread interrupts its wait, and CPython
then runs every handler that is due, the unheard one too.
"""
from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time

# A signal whose default action is to do nothing: a nudge that comes after heard() has
# given it back changes nothing. Nothing else in chatfile uses it.
NUDGE = getattr(signal, "SIGURG", None)
RETRY_S = 0.1  # a nudge that lands before the wait is itself unheard: another after this
POLL_S = 0.005  # how often the watcher looks whether the nudge was heard


def _possible() -> bool:
    return (NUDGE is not None and hasattr(signal, "pthread_kill")
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(NUDGE) in (signal.SIG_DFL, signal.SIG_IGN))


@contextlib.contextmanager
def heard():
    """For its time, every signal with a Python handler gets it run soon, whatever the
    main thread waits in. Main thread only; nothing changes elsewhere, without
    pthread_kill (Windows), or where another already takes the wakeup (an event loop)."""
    if not _possible():
        yield
        return
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)  # (set_wakeup_fd asks for it: a signal handler must not block)
    taken = signal.set_wakeup_fd(theirs.fileno(), warn_on_full_buffer=False)
    if taken != -1:  # an event loop's, which wakes by itself: left to it
        signal.set_wakeup_fd(taken)
        ours.close()
        theirs.close()
        yield
        return
    # Plain counts, no threading.Event: input() runs the due handlers a second time
    # with the first one's exception (the `kill`'s SystemExit) still set, and there any
    # call fails ("returned a result with an exception set"). Event.set() failed so
    # with its lock taken, and the watcher waited on that lock for ever, at every `kill`.
    # So NUDGE's handler calls nothing.
    nudges, done = [0], [False]

    def on_nudge(signum, frame):
        nudges[0] += 1
    before = signal.signal(NUDGE, on_nudge)
    watcher = threading.Thread(target=_nudge_on_signal, args=(ours, nudges, done),
                               name="chatfile-signal-wake", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(-1)  # first: a handler that raises here must not leave it set
        done[0] = True
        signal.signal(NUDGE, before)
        with contextlib.suppress(OSError):
            theirs.send(b"\0")  # the watcher's cue to end (no signal is numbered 0)
        theirs.close()
        watcher.join()


def _nudge_on_signal(sock: socket.socket, nudges: list, done: list) -> None:
    main = threading.main_thread().ident
    with sock:
        while not done[0]:
            signums = sock.recv(256)
            if not signums or 0 in signums:
                return
            if set(signums) == {NUDGE}:  # our own nudges
                continue
            # Two rounds: CPython runs the due handlers in one pass, in the order of
            # their numbers, and one that began before the signal came may have passed
            # its number already; the second round's pass begins after the first's ends.
            for _ in range(2):
                _nudge_until_heard(main, nudges, done)


def _nudge_until_heard(main: int, nudges: list, done: list) -> None:
    """Send NUDGE to the main thread until its handler has run once more."""
    seen = nudges[0]
    while not done[0]:
        signal.pthread_kill(main, NUDGE)
        end = time.monotonic() + RETRY_S
        while time.monotonic() < end:
            if nudges[0] != seen or done[0]:
                return
            time.sleep(POLL_S)
