"""runtime/signal_wake.py: a signal that CPython noted, and that woke nothing, has its
handler run while the main thread waits in C code. Python's input() with GNU readline
waits for a key so; a `kill` or a Ctrl+C that landed as it set up the prompt was heard
only at the next key. Here the race is made certain: the signal lands on another thread
once the main thread sleeps in a read. tests/e2e/test_terminal_signals.py drives the chat.
"""
import os
import signal
import socket
import sys
import threading
import time

import pytest

from runtime import signal_wake

WAIT_S = 60  # the "key" comes this late: far above any nudge, however loaded the machine

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="needs pthread_kill and /proc/self/task")


class Heard(Exception):
    """The test's handler raises it: it ends the main thread's wait, as the chat's
    handlers (sys.exit, KeyboardInterrupt) end input()."""


def _reading(tid: int, fd: int) -> bool:
    """Whether thread `tid` of this process sleeps in a read of `fd` (/proc shows the
    system call a sleeping thread is in, with its arguments; a read's first is the fd)."""
    with open(f"/proc/self/task/{tid}/syscall") as f:
        call = f.read().split()
    return len(call) > 1 and call[1] == hex(fd)


def test_a_signal_that_woke_nothing_is_heard_while_the_main_thread_waits():
    r, w = os.pipe()
    main_tid = threading.get_native_id()
    pressed = threading.Event()
    when = []

    def on_signal(signum, frame):
        when.append("after the key" if pressed.is_set() else "while waiting")
        raise Heard

    def signal_once_the_main_thread_reads():
        end = time.monotonic() + WAIT_S
        while not _reading(main_tid, r) and time.monotonic() < end:
            time.sleep(0.01)
        # To this thread: CPython notes it, and the main thread's read goes on.
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)

    def press_a_key():
        pressed.set()
        os.write(w, b"\n")
    key = threading.Timer(WAIT_S, press_a_key)
    before = signal.signal(signal.SIGUSR1, on_signal)
    try:
        with signal_wake.heard():
            key.start()
            threading.Thread(target=signal_once_the_main_thread_reads, daemon=True).start()
            with pytest.raises(Heard):
                os.read(r, 1)  # the wait for a key
    finally:
        key.cancel()
        signal.signal(signal.SIGUSR1, before)
        os.close(r)
        os.close(w)
    assert when == ["while waiting"]


def _watchers() -> list:
    return [t for t in threading.enumerate() if t.name == "chatfile-signal-wake"]


def test_everything_is_given_back():
    with signal_wake.heard():
        assert _watchers()
        assert signal.getsignal(signal_wake.NUDGE) is not signal.SIG_DFL
    assert not _watchers()
    assert signal.getsignal(signal_wake.NUDGE) is signal.SIG_DFL
    assert signal.set_wakeup_fd(-1) == -1


def test_an_event_loop_s_wakeup_is_left_to_it():
    """asyncio's loop (the server's) takes the wakeup for itself, and wakes by itself."""
    a, b = socket.socketpair()
    b.setblocking(False)
    signal.set_wakeup_fd(b.fileno())
    try:
        with signal_wake.heard():
            assert not _watchers()
            assert signal.set_wakeup_fd(b.fileno()) == b.fileno()
    finally:
        assert signal.set_wakeup_fd(-1) == b.fileno()
        a.close()
        b.close()


def test_off_the_main_thread_nothing_changes():
    done = []

    def run():
        with signal_wake.heard():
            done.append(not _watchers())
    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert done == [True]
