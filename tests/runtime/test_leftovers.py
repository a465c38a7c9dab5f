"""runtime/leftovers.py: which unpacked runtimes a start removes, and which it keeps."""
import os
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


def _holder(d: Path):
    """A process that runs from d, as a live chatfile does: it holds d's marker."""
    code = ("import sys, time; from pathlib import Path; from runtime import leftovers; "
            "assert leftovers.hold_own(Path(sys.argv[1])); print('held', flush=True); "
            "time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(d)], cwd=ROOT,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


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
        holder.wait()
    time.sleep(0.1)
    # Its process gone, the next sweep clears it too.
    assert leftovers.sweep(tmp_path, own) == [live]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "_MEIforgn1", "_MEIlink01", "_MEIown001", "chatfile_x", "elsewhere"]


def test_a_sweep_cut_short_is_finished_by_the_next(tmp_path):
    """The marker is removed last: a runtime half removed still carries it."""
    d = _unpacked(tmp_path, "_MEIhalf01", marker=True)
    os.unlink(d / "base_library.zip")  # what an interrupted sweep leaves
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
        holder.wait()


def test_an_unwritable_runtime_dir_is_not_an_error(tmp_path):
    assert leftovers.hold_own(tmp_path / "missing") is False
    assert leftovers.sweep(tmp_path / "missing") == []
