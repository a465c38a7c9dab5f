"""runtime/leftovers.py: which unpacked runtimes a start removes, and which it keeps."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime import leftovers

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(leftovers.fcntl is None, reason="no flock on this system")


def _unpacked(parent: Path, name: str, marker: bool) -> Path:
    d = parent / name
    (d / "numpy" / "core").mkdir(parents=True)
    (d / "numpy" / "core" / "lib.so").write_bytes(b"x" * 100)
    (d / "base_library.zip").write_bytes(b"z")
    if marker:
        (d / leftovers.MARKER).write_bytes(b"")
    return d


class _Holder:
    """A chatfile that runs from d: Python, which holds d's marker, under its launcher
    (PyInstaller's, which waits for it and then removes d; this one waits for stdin)."""
    PYTHON = ("import os, sys, time; from pathlib import Path; from runtime import leftovers; "
              "assert leftovers.hold_own(Path(sys.argv[1])); print('held', os.getpid(), "
              "flush=True); time.sleep(60)")
    LAUNCHER = ("import subprocess, sys; p = subprocess.Popen(sys.argv[1:]); p.wait(); "
                "print('ended', flush=True); sys.stdin.read()")

    def __init__(self, d: Path):
        self.launcher = subprocess.Popen(
            [sys.executable, "-c", self.LAUNCHER, sys.executable, "-c", self.PYTHON, str(d)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        said, pid = self.launcher.stdout.readline().split()
        assert said == "held"
        self.python_pid = int(pid)

    def kill_python(self):
        os.kill(self.python_pid, signal.SIGKILL)
        assert self.launcher.stdout.readline().strip() == "ended"  # (its lock is gone)

    def kill(self):
        """kill -9 of both, or of Python after its launcher."""
        if self.launcher.poll() is None:
            try:
                os.kill(self.python_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.launcher.kill()
        self.launcher.wait()
        _wait_gone(self.python_pid)  # SIGKILL is delivered a moment later; its lock goes then


def process_ended(pid: int) -> bool:
    """Whether pid has exited: gone, or a zombie its parent has not reaped yet (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _wait_gone(pid: int, timeout_s: float = 30.0) -> None:
    """Until pid has exited (gone, or a zombie nobody reaped: its lock is released)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if process_ended(pid):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} still runs {timeout_s} s after SIGKILL")


def _holder(d: Path) -> _Holder:
    return _Holder(d)


def test_sweep_removes_only_unused_runtimes_of_ours(tmp_path):
    dead = _unpacked(tmp_path, "_MEIdead01", marker=True)
    live = _unpacked(tmp_path, "_MEIlive01", marker=False)
    foreign = _unpacked(tmp_path, "_MEIforgn1", marker=False)  # another program's
    own = _unpacked(tmp_path, "_MEIown001", marker=True)
    other_name = _unpacked(tmp_path, "chatfile_x", marker=True)
    target = _unpacked(tmp_path, "elsewhere", marker=True)
    (tmp_path / "_MEIlink01").symlink_to(target)
    holder = _holder(live)
    try:
        removed = leftovers.sweep(tmp_path, own)
        assert removed == [dead]
        assert not dead.exists()
        for kept in (live, foreign, own, other_name, target):
            assert (kept / "numpy" / "core" / "lib.so").is_file(), kept
        assert (live / leftovers.MARKER).is_file()
    finally:
        holder.kill()
    # Its processes gone, the next sweep clears it too.
    assert leftovers.sweep(tmp_path, own) == [live]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "_MEIforgn1", "_MEIlink01", "_MEIown001", "chatfile_x", "elsewhere"]


def test_a_sweep_cut_short_is_finished_by_the_next(tmp_path):
    """The marker is removed last: a runtime half removed still carries it."""
    d = _unpacked(tmp_path, "_MEIhalf01", marker=True)
    os.unlink(d / "base_library.zip")  # what an interrupted sweep leaves
    assert leftovers.sweep(tmp_path) == [d]
    assert not d.exists()


def test_a_runtime_with_a_file_left_is_tried_again(tmp_path, monkeypatch):
    """A file the sweep could not remove (ignore_errors hides why) keeps the marker, so
    the next start tries again; it lost its marker and was never retried."""
    d = _unpacked(tmp_path, "_MEIstuck1", marker=True)
    monkeypatch.setattr(leftovers.shutil, "rmtree", lambda path, ignore_errors=False: None)
    assert leftovers.sweep(tmp_path) == []
    assert (d / leftovers.MARKER).is_file() and (d / "numpy").is_dir()
    monkeypatch.undo()
    assert leftovers.sweep(tmp_path) == [d]
    assert not d.exists()


def test_hold_own_marks_while_running(tmp_path):
    d = _unpacked(tmp_path, "_MEImine01", marker=False)
    holder = _holder(d)
    try:
        assert sorted(p.name for p in d.iterdir()) == [leftovers.MARKER, "base_library.zip",
                                                        "numpy"]  # no temporary name left
        assert leftovers.sweep(tmp_path) == []
    finally:
        holder.kill()


def test_an_unwritable_runtime_dir_is_not_an_error(tmp_path):
    assert leftovers.hold_own(tmp_path / "missing") is False
    assert leftovers.sweep(tmp_path / "missing") == []


def test_a_ctrl_c_while_a_start_clears_leftovers_is_no_traceback():
    """The sweep ran before the entry's `try`: a Ctrl+C while it removed runtimes printed
    a KeyboardInterrupt traceback."""
    code = ("import sys\n"
            "import runtime.__main__ as entry\n"
            "def interrupted():\n"
            "    raise KeyboardInterrupt\n"
            "entry.clear_for_executable = interrupted\n"
            "sys.frozen = True  # as in the one-file executable\n"
            "sys.argv = ['chat', '--version']\n"
            "entry._entry()\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 130 and "Traceback" not in r.stderr, (r.returncode, r.stderr)


def test_a_runtime_is_left_to_its_launcher_while_the_launcher_runs(tmp_path):
    """Once Python ends, PyInstaller's launcher removes the directory: a start that swept
    it meanwhile made the launcher say "[PYI-...:WARNING] Failed to remove temporary
    directory" under a chat that had ended well."""
    d = _unpacked(tmp_path, "_MEIending", marker=False)
    holder = _holder(d)
    try:
        holder.kill_python()
        assert leftovers.sweep(tmp_path) == []
        assert (d / "numpy" / "core" / "lib.so").is_file()
    finally:
        holder.kill()
    assert leftovers.sweep(tmp_path) == [d]  # a launcher killed too: the next start clears it
