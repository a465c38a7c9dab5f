"""Unpacked runtimes that a killed executable left behind, and how we clear them.

A one-file executable unpacks its runtime (~88 MB) into a fresh `_MEIxxxxxx` directory of
the temp dir at every start, and PyInstaller's launcher removes it at exit. `kill -9` of
the launcher leaves it, and a user who kills a stuck chat a few times fills /tmp.

Each start of ours holds an advisory lock (flock) on a marker file in its own directory
for as long as the Python process runs. The kernel drops the lock when that process dies,
however it dies. So at start we remove each sibling `_MEI` directory that carries our
marker, belongs to our user and whose marker nobody locks: no chatfile runs from it. A
directory without the marker (another program's, or a chatfile still starting) is never
touched. The marker also names the launcher (the Python process's parent, which removes
the directory once Python ends): while it lives, the directory is left to it. (A chat
that ended as another started was swept under its launcher, which then said "[PYI-...:
WARNING] Failed to remove temporary directory".) The bundler clears its stale `.part`
files by the same rule as the lock's (bundler/splice.py).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

MARKER = ".chatfile-running"
_UNPACKED_NAME = re.compile(r"_MEI\w+")  # PyInstaller's mkdtemp pattern (_MEIxxxxxx)

try:
    import fcntl
except ImportError:  # Windows: no flock; its launcher cleans up, leftovers stay
    fcntl = None

_held = []  # our own marker's open file: its lock lasts as long as this process


def hold_own(unpacked: Path) -> bool:
    """Lock a marker in our own unpacked directory for as long as we run. The marker is
    locked under a temporary name and then renamed, so that a sweeping start never sees
    it unlocked while we live (the lock belongs to the file, and survives the rename).
    It holds our launcher's process id."""
    if fcntl is None:
        return False
    tmp = unpacked / f"{MARKER}.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError:
        return False  # an unwritable temp dir: nothing to mark, nothing lost
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getppid()}\n".encode())
        os.replace(tmp, unpacked / MARKER)
    except OSError:
        os.close(fd)
        return False
    _held.append(fd)
    return True


def sweep(temp_dir: Path, own: Path | None = None) -> list[Path]:
    """Remove the unpacked runtimes in temp_dir that no running chatfile uses; return them."""
    if fcntl is None:
        return []
    removed = []
    try:
        entries = list(os.scandir(temp_dir))
    except OSError:
        return []
    for entry in entries:
        if not _UNPACKED_NAME.fullmatch(entry.name):
            continue
        path = Path(entry.path)
        if own is not None and path == own:
            continue
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        if _remove_if_unused(path):
            removed.append(path)
    return removed


def _remove_if_unused(path: Path) -> bool:
    try:
        fd = os.open(path / MARKER, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False  # no marker: not ours, or still starting
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a chatfile runs from it
        if _alive(_launcher(fd)):
            return False  # Python has ended, and its launcher is removing the directory
        # Holding the lock, so that another start sweeping at the same time skips it.
        # The marker goes last, and only once nothing else is left: a sweep cut short,
        # or one that met a file it may not remove, is tried again by the next start.
        for child in os.scandir(path):
            if child.name == MARKER:
                continue
            if child.is_dir(follow_symlinks=False):
                shutil.rmtree(child.path, ignore_errors=True)
            else:
                _unlink(child.path)
        with os.scandir(path) as left:
            if any(child.name != MARKER for child in left):
                return False
        _unlink(path / MARKER)
        try:
            path.rmdir()
        except OSError:
            return False  # something was left (a file we may not remove)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _launcher(fd: int) -> int | None:
    """The launcher's process id written in a marker; None for none (1 is no launcher
    either: ours had gone when Python started, and init never removes the directory)."""
    try:
        pid = int(os.read(fd, 32).split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid > 1 else None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # (another user's process now has that id: it lives)
        return True
    return True


def _unlink(p) -> None:
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass


def clear_for_executable() -> None:
    """In a one-file executable: mark our own unpacked runtime, and clear the ones that
    killed executables left next to it. Never fails the start."""
    unpacked = getattr(sys, "_MEIPASS", None)
    if not unpacked or not getattr(sys, "frozen", False):
        return
    own = Path(unpacked)
    if not _UNPACKED_NAME.fullmatch(own.name):
        return  # a one-folder build, or an unpack dir we did not make
    try:
        hold_own(own)
        sweep(own.parent, own)
    except OSError:
        pass
