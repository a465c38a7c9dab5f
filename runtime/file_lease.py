"""Stop, rather than crash, when another program overwrites the model file under us.

The GGUF is memory-mapped (runtime/gguf.py). The load reads all of it, and quant mode
reads every weight from the map at every step after it (f32 and int8 modes copy every
weight, the token embedding too, and close the map after the load: Model._load).
`cp new.gguf model.gguf` truncates and rewrites that same file in place: a read past its
new end kills the process with SIGBUS ("Bus error"), and a read of new bytes silently
mixes two models. (A rename, as `mv` or rsync do it, leaves the
old file to the map; a running one-file executable cannot be opened for writing at all,
"Text file busy".)

On Linux a read lease (fcntl F_SETLEASE) has the kernel warn us first: a program that
opens the file for writing or truncation is held up to /proc/sys/fs/lease-break-time
seconds (45 unless changed), and we get SIGIO. Our handler says so in one line and
raises Overwritten in the main thread, which leaves through the program's usual clean
paths (the server's stop, a terminal chat's `finally` blocks); the lease goes with the
process and the copy proceeds.

SIGIO's default action ends the process, so the handler must be in place before any
lease is taken, and Python installs handlers only from the main thread. So the
program's main thread arms before the model loads (the server's serve() and the
terminal chat do, with armed()), and gguf.read() then takes leases from any thread (the
server loads in a background one). Where no lease can be had (not Linux, not the file's
owner, a filesystem without leases, a writer that already has the file open) or nothing
armed, nothing changes.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

EXIT_STATUS = 1
# The clean stop gets this long at most, then the process ends at once: past the
# kernel's lease-break-time the copy would go ahead under us.
MAX_STOP_S = 10.0

_leased: dict[int, str] = {}  # our descriptor of each leased file -> its path as given
_stopping = threading.Event()


class Overwritten(SystemExit):
    """Raised in the main thread when a leased file is opened for writing. The handler
    has printed why; uncaught, it ends the process with EXIT_STATUS and no traceback."""


def supported() -> bool:
    return fcntl is not None and hasattr(fcntl, "F_SETLEASE") and hasattr(signal, "SIGIO")


def arm() -> bool:
    """Let gguf.read() take leases, from any thread. Call from the main thread before the
    model loads. False (no lease will be taken) off the main thread, without leases, or
    when SIGIO already has another handler or is ignored: the break would go unheard,
    and the copy would wait 45 s and then truncate the map under us all the same."""
    if not supported() or threading.current_thread() is not threading.main_thread():
        return False
    handler = signal.getsignal(signal.SIGIO)
    if handler is _on_sigio:
        return True
    if handler is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGIO, _on_sigio)
    return True


@contextlib.contextmanager
def armed():
    """arm() for the run of a command (the server, a terminal chat), and disarm() after
    it, unless it ends by Overwritten: that process is on its way out, and its leases
    must hold the writer back until it is gone. Left armed, a process that goes on (a
    test running a command in-process) took a lease at every later gguf.read, and a
    write to one of those files, its own too, stopped it; and a copy during Python's
    shutdown met the handler in an exit hook ("Exception ignored ... Overwritten")."""
    ours = supported() and signal.getsignal(signal.SIGIO) is not _on_sigio and arm()
    try:
        yield
    except Overwritten:
        ours = False
        raise
    finally:
        if ours:
            disarm()


def disarm() -> None:
    """Give back every lease and SIGIO's default action. Main thread only."""
    for fd in list(_leased):
        _unlease(fd)
    _stopping.clear()
    if supported() and signal.getsignal(signal.SIGIO) is _on_sigio:
        signal.signal(signal.SIGIO, signal.SIG_DFL)


def hold(fd: int, path: str) -> bool:
    """Take a read lease on `fd` (opened O_RDONLY) if arm() was called; it lasts until
    let_go(fd). False, with nothing changed, where the kernel refuses one."""
    if not supported() or signal.getsignal(signal.SIGIO) is not _on_sigio:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError:  # EAGAIN: open for writing; EACCES: not ours; EINVAL: no leases here
        return False
    try:
        # The kernel signals the thread that took the lease; the server's loader thread
        # ends after the load, and the signal would be lost (the copy then waits 45 s
        # and goes ahead under us). The whole process must get it.
        fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
    except OSError:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    _leased[fd] = path
    return True


def let_go(fd: int) -> None:
    """Give back fd's lease and close fd (gguf.py calls it when the map goes)."""
    _unlease(fd)
    os.close(fd)


def _unlease(fd: int) -> None:
    if _leased.pop(fd, None) is not None:
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        except OSError:
            pass


def message(path: str) -> str:
    # The kernel tells only that a program opened the file for writing: a `cp` over it,
    # or a `touch` (GNU touch opens for writing, then sets the times), which breaks the
    # lease all the same. Say what is known.
    return (f"chatfile: another program opened {path} for writing; stopped, since a model "
            "file changed under a running chat crashes it or mixes two models. Start "
            "chatfile again once that program is done.")


def _being_overwritten() -> str | None:
    """The path of a leased file whose lease is being broken (F_GETLEASE then reports
    the type it is being broken to: F_UNLCK for a writer), or None."""
    for fd, path in dict(_leased).items():  # a copy: another thread may add one
        try:
            if fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_UNLCK:
                return path
        except OSError:
            continue
    return None


def _on_sigio(signum, frame) -> None:
    path = _being_overwritten()
    if path is None or _stopping.is_set():  # another SIGIO, or a second writer meanwhile
        return
    _stopping.set()
    _say(message(path))
    threading.Thread(target=_end_soon, name="chatfile-overwritten", daemon=True).start()
    raise Overwritten(EXIT_STATUS)


def _say(line: str) -> None:
    """Straight to fd 2: sys.stderr may be in the middle of a write of this thread. A
    terminal chat's prompt keeps the terminal in raw mode, where a line feed does not
    return the carriage: there the line starts and ends with both."""
    tty = os.isatty(2)
    text = ("\r\n" if tty else "") + line + ("\r\n" if tty else "\n")
    try:
        os.write(2, text.encode("utf-8", "backslashreplace"))
    except OSError:
        pass


def _end_soon() -> None:
    """If the clean stop takes too long (a reply that does not notice its cancel, a
    hang at exit), end the process before the kernel lets the writer in."""
    time.sleep(_stop_budget_s())
    os._exit(EXIT_STATUS)


def _stop_budget_s() -> float:
    try:
        with open("/proc/sys/fs/lease-break-time") as f:
            break_s = int(f.read())
    except (OSError, ValueError):
        break_s = 45
    return max(0.0, min(MAX_STOP_S, break_s / 2))
