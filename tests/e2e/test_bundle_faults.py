"""Faults around real bundles: kill -9 while bundling, a full disk, flipped trailer bytes,
and bundles cut short at several places.

What each fault must give (docs/reliability.md, "Bundles: faults and air gap"):
- the target name never holds a partial bundle, whatever happens to `chatfile bundle`;
- a damaged or truncated bundle exits non-zero within seconds, with a message naming the
  file (a pyz cut before its zip end: naming the problem instead) and no Python traceback;
  where chatfile's own code can run (the damage is after the stub's archive) the message
  says "corrupt" or "truncated".

Stubs are expensive (PyInstaller: about a minute), so `session_stub` (tests/e2e/conftest.py)
builds each at most once per pytest session for every bundle test.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Tmpfs, bundle_cmd, bundle_env, session_bundle, session_stub

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "fixtures" / "models" / "tiny-llama-q8_0.gguf"
RUN_TIMEOUT_S = 60
TRACEBACK = "Traceback (most recent call last)"

pytestmark = pytest.mark.slow

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bundle(path: Path, fmt: str, env: dict, *args) -> subprocess.CompletedProcess:
    """Run a (damaged) bundle; it must exit by itself within RUN_TIMEOUT_S."""
    return subprocess.run([*bundle_cmd(path, fmt), *args], capture_output=True, text=True,
                          env=env, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)


def chatfile_cmd(*args, disk_usage_free_bytes: int | None = None) -> list[str]:
    """`python3 -m bundler.cli ARGS`; optionally with shutil.disk_usage reporting more room
    than there is, so the free-space pre-check passes and the write itself runs out."""
    if disk_usage_free_bytes is None:
        return [sys.executable, "-m", "bundler.cli", *map(str, args)]
    code = ("import shutil, sys\n"
            f"FREE = {disk_usage_free_bytes}\n"
            "shutil.disk_usage = lambda p: shutil._ntuple_diskusage(FREE, 0, FREE)\n"
            "from bundler.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    return [sys.executable, "-c", code, *map(str, args)]


def repo_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def temp_name_re(out: Path) -> re.Pattern:
    # splice() writes through tempfile.mkstemp(prefix=".NAME.", suffix=".part").
    return re.compile(re.escape(f".{out.name}.") + r".+\.part")


# ------------------------------------------------------------- 1. kill -9 while bundling

# `chatfile bundle` with its progress callback replaced by one that announces the copy and
# then stalls: SIGKILL then lands deterministically after the GGUF bytes are written and
# before the archive and trailer are.
STALLING_BUNDLE = """\
import sys, time
from bundler import cli
def stall(self, done_bytes, total_bytes):
    print("COPIED", done_bytes, total_bytes, flush=True)
    time.sleep(600)
cli.ProgressBar.__call__ = stall
sys.exit(cli.main(sys.argv[1:]))
"""


def _signal_mid_copy(cmd: list, sig) -> tuple[int, str]:
    """(exit code, stderr) of `cmd` (a STALLING_* script) sent `sig` once it says COPIED."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=repo_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(RUN_TIMEOUT_S)
    try:
        assert line and line[0].startswith("COPIED"), \
            f"never reached the copy: {line} {proc.stderr.read() if proc.poll() is not None else ''}"
    finally:
        proc.send_signal(sig)
        code = proc.wait(RUN_TIMEOUT_S)
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    return code, err


def _kill_while_copying(stub: Path, fmt: str, out: Path, sig=signal.SIGKILL) -> tuple[int, str]:
    """(exit code, stderr) of a bundle sent `sig` mid-copy."""
    return _signal_mid_copy([sys.executable, "-c", STALLING_BUNDLE, "bundle", str(MODEL),
                             "-o", str(out), "--format", fmt, "--stub", str(stub)], sig)


@pytest.mark.parametrize("fmt", ["pyz", "exe"])
def test_kill_9_mid_copy_leaves_no_file_under_the_target_name(tmp_path_factory, tmp_path, fmt):
    stub = session_stub(tmp_path_factory, fmt)
    out = tmp_path / f"killed.{fmt}"
    _kill_while_copying(stub, fmt, out)

    assert not os.path.lexists(out)
    # Nothing can clean up after SIGKILL: the temporary file stays, under a hidden name.
    left = sorted(os.listdir(tmp_path))
    assert len(left) == 1 and temp_name_re(out).fullmatch(left[0]), left
    part = tmp_path / left[0]
    final_bytes = os.path.getsize(session_bundle(tmp_path_factory, fmt))
    assert 0 < part.stat().st_size < final_bytes
    # Even renamed by hand, the partial file refuses to pose as a bundle: its HEAD record
    # (written before the GGUF) survives and the trailer does not.
    from runtime.embedded import BundleError, read_trailer
    with pytest.raises(BundleError, match="truncated"):
        read_trailer(part)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_a_closed_terminal_mid_copy_leaves_nothing(tmp_path_factory, tmp_path, sig):
    # Unlike SIGKILL these can be handled: as Ctrl-C, the temporary file goes too.
    stub = session_stub(tmp_path_factory, "pyz")
    out = tmp_path / "stopped.pyz"
    code, err = _kill_while_copying(stub, "pyz", out, sig)
    assert code == 130 and "interrupted; nothing was written" in err, (code, err)
    assert TRACEBACK not in err
    assert os.listdir(tmp_path) == []


STALLING_EXTRACT = """\
import sys, time
import runtime.__main__ as entry
def stalling(label):
    def report(done_bytes, total_bytes):
        print("COPIED", done_bytes, total_bytes, flush=True)
        time.sleep(600)
    return report
entry._progress = stalling
sys.argv = sys.argv[1:]  # [bundle, --extract, out]: the bundle is argv[0], as when run
entry._entry()
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_a_closed_terminal_mid_extract_leaves_nothing(tmp_path_factory, tmp_path, sig):
    """A bundle's --extract stopped by SIGTERM or SIGHUP left a hidden .part file of up to
    the model's size; it now cleans up as on Ctrl-C."""
    bundle = session_bundle(tmp_path_factory, "pyz")
    out = tmp_path / "model.gguf"
    code, err = _signal_mid_copy([sys.executable, "-c", STALLING_EXTRACT, str(bundle),
                                  "--extract", str(out)], sig)
    assert code == 130 and TRACEBACK not in err, (code, err)
    assert os.listdir(tmp_path) == []


def test_extract_into_a_missing_directory_names_the_user_s_path(tmp_path_factory, tmp_path):
    bundle = session_bundle(tmp_path_factory, "pyz")
    out = tmp_path / "no such dir" / "model.gguf"
    r = subprocess.run([*bundle_cmd(bundle, "pyz"), "--extract", str(out)], cwd=ROOT,
                       env=bundle_env(tmp_path_factory), capture_output=True, text=True,
                       timeout=RUN_TIMEOUT_S)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(f"chatfile: error: cannot write {out}: ") and ".part" not in r.stderr


def test_next_bundle_removes_the_stale_temp_file_of_a_killed_run(tmp_path_factory, tmp_path):
    stub = session_stub(tmp_path_factory, "pyz")
    out = tmp_path / "again.pyz"
    _kill_while_copying(stub, "pyz", out)
    r = subprocess.run(chatfile_cmd("bundle", MODEL, "-o", out, "--format", "pyz",
                                    "--stub", stub),
                       cwd=ROOT, env=repo_env(), capture_output=True, text=True,
                       timeout=RUN_TIMEOUT_S)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == [out.name]


def test_kill_9_real_bundle_mid_copy(tmp_path_factory, tmp_path, qwen_gguf_path):
    """The unmodified command on the real 491 MB model, killed while the GGUF is copied."""
    from runtime.embedded import BundleError, read_trailer, verify
    stub = session_stub(tmp_path_factory, "pyz")
    out = tmp_path / "qwen.pyz"
    pattern = temp_name_re(out)
    cmd = chatfile_cmd("bundle", qwen_gguf_path, "-o", out, "--format", "pyz", "--stub", stub)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=repo_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    part, killed_at_bytes = None, 0
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        # Kill once 64 MiB are in the temp file: well past the stub head, inside the GGUF.
        while proc.poll() is None and time.monotonic() < deadline:
            parts = [n for n in os.listdir(tmp_path) if pattern.fullmatch(n)]
            if parts:
                part = tmp_path / parts[0]
                try:
                    size = part.stat().st_size
                except FileNotFoundError:
                    size = 0
                if size >= 64 * 1024**2:
                    proc.send_signal(signal.SIGKILL)
                    killed_at_bytes = size
                    break
            time.sleep(0.001)
        finished_first = proc.poll() is not None and not killed_at_bytes
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(RUN_TIMEOUT_S)
    try:
        assert not finished_first, f"bundling finished (exit {proc.returncode}) before the kill"
        assert killed_at_bytes, "the temporary file never reached 64 MiB"
        print(f"\nkilled at {killed_at_bytes / 1024**2:.0f} MiB of "
              f"{qwen_gguf_path.stat().st_size / 1024**2:.0f} MiB")
        assert not os.path.lexists(out)
        left = sorted(os.listdir(tmp_path))
        assert left == [part.name], left
        with pytest.raises(BundleError, match="truncated"):
            read_trailer(part)

        # The same command again succeeds; the stale temp file does not get in its way.
        r = subprocess.run(cmd, cwd=ROOT, env=repo_env(), capture_output=True, text=True,
                           timeout=RUN_TIMEOUT_S)
        assert r.returncode == 0, r.stderr
        t = read_trailer(out)
        assert verify(out, t)
    finally:
        for name in os.listdir(tmp_path):  # half a GB each: do not leave them in /tmp
            (tmp_path / name).unlink()


# --------------------------------------------------------------------- 2. a full disk

def _bundle_into_tmpfs(tmp_path, stub, size_bytes, disk_usage_free_bytes=None):
    with Tmpfs(tmp_path / "disk", size_bytes) as disk:
        out = disk / "full.pyz"
        r = subprocess.run(chatfile_cmd("bundle", MODEL, "-o", out, "--format", "pyz",
                                        "--stub", stub,
                                        disk_usage_free_bytes=disk_usage_free_bytes),
                           cwd=ROOT, env=repo_env(), capture_output=True, text=True,
                           timeout=RUN_TIMEOUT_S)
        return r, sorted(os.listdir(disk))


def test_full_disk_is_refused_before_writing(tmp_path_factory, tmp_path):
    stub = session_stub(tmp_path_factory, "pyz")
    # Half of what the bundle needs: the pre-check must refuse without writing a byte.
    size_bytes = (stub.stat().st_size + MODEL.stat().st_size) // 2
    r, left = _bundle_into_tmpfs(tmp_path, stub, size_bytes)
    assert r.returncode == 1
    assert "not enough free disk space" in r.stderr, r.stderr
    assert TRACEBACK not in r.stderr
    assert left == []


# Where the write runs out: inside the GGUF copy (1 MiB holds the 64 KiB head and part of
# the 1.5 MB model) or in the archive after it (the model fits, the 17 MB zip does not).
ENOSPC_CASES = {"in-gguf": 1024**2, "in-archive": 4 * 1024**2}


@pytest.mark.parametrize("where", ENOSPC_CASES)
def test_disk_full_mid_write_leaves_no_file(tmp_path_factory, tmp_path, where):
    stub = session_stub(tmp_path_factory, "pyz")
    r, left = _bundle_into_tmpfs(tmp_path, stub, ENOSPC_CASES[where],
                                 disk_usage_free_bytes=1 << 40)
    assert r.returncode != 0, r.stdout
    assert left == [], f"left behind after ENOSPC: {left}"


@pytest.mark.parametrize("where", ENOSPC_CASES)
def test_disk_full_mid_write_gives_a_clear_error(tmp_path_factory, tmp_path, where):
    stub = session_stub(tmp_path_factory, "pyz")
    r, _ = _bundle_into_tmpfs(tmp_path, stub, ENOSPC_CASES[where],
                              disk_usage_free_bytes=1 << 40)
    assert r.returncode == 1
    assert TRACEBACK not in r.stderr, r.stderr
    # The progress bar may come first; the error is its own line, and never a traceback.
    assert any(line.startswith("chatfile: error:") and "space" in line
               for line in r.stderr.splitlines()), r.stderr
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------- 3. a flipped trailer byte

def _footer_fields(t, file_bytes: int) -> dict:
    """Absolute byte ranges of the footer's fields (runtime/embedded.py FOOTER_FORMAT)."""
    from runtime.embedded import FOOTER_BYTES
    foot = file_bytes - FOOTER_BYTES
    return {"payload_len": range(foot, foot + 4), "crc": range(foot + 4, foot + 8),
            "version": range(foot + 8, foot + 12), "reserved": range(foot + 12, foot + 16),
            "magic": range(foot + 16, foot + 24),
            "payload": range(file_bytes - t.trailer_bytes, foot)}


@pytest.mark.parametrize("fmt", ["pyz", "exe"])
def test_every_flipped_trailer_byte_is_caught(tmp_path_factory, tmp_path, fmt):
    """Flip each trailer byte (one bit, and all eight bits) and read the trailer."""
    from runtime.embedded import BundleError, read_trailer
    src = session_bundle(tmp_path_factory, fmt)
    good = read_trailer(src)
    path = tmp_path / src.name
    path.write_bytes(src.read_bytes())
    n = path.stat().st_size
    reserved = _footer_fields(good, n)["reserved"]
    caught = 0
    with open(path, "r+b") as f:
        for pos in range(n - good.trailer_bytes, n):
            f.seek(pos)
            orig = f.read(1)[0]
            for mask in (0x01, 0xFF):
                f.seek(pos)
                f.write(bytes([orig ^ mask]))
                f.flush()
                if pos in reserved:
                    # The reserved u32 is not checked (format.md: "=0"); a flip there is
                    # harmless, and the trailer must then read exactly as before.
                    assert read_trailer(path) == good
                else:
                    with pytest.raises(BundleError, match="corrupt|truncated|version"):
                        read_trailer(path)
                    caught += 1
            f.seek(pos)
            f.write(bytes([orig]))
    assert caught == 2 * (good.trailer_bytes - len(reserved))


@pytest.mark.parametrize("fmt", ["pyz", "exe"])
@pytest.mark.parametrize("field", ["payload", "crc", "magic"])
def test_flipped_trailer_byte_gives_a_clear_error(tmp_path_factory, tmp_path, fmt, field):
    from runtime.embedded import read_trailer
    src = session_bundle(tmp_path_factory, fmt)
    data = bytearray(src.read_bytes())
    where = _footer_fields(read_trailer(src), len(data))[field]
    data[where[len(where) // 2]] ^= 0x01
    path = tmp_path / src.name
    path.write_bytes(bytes(data))
    path.chmod(0o755)
    env = bundle_env(tmp_path_factory)
    for args in (["--no-browser", "--port", str(free_port())], ["--verify"]):
        r = run_bundle(path, fmt, env, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("chatfile: error:"), r.stderr
        assert str(path) in r.stderr and re.search("corrupt|truncated", r.stderr), r.stderr
        assert TRACEBACK not in r.stderr


# ------------------------------------------------------------------ 4. truncated bundles

def _cut_points(path: Path, fmt: str) -> dict:
    """Named byte counts to keep, each strictly inside one region of the bundle."""
    from bundler.splice import PYI_COOKIE_BYTES, PYI_COOKIE_MAGIC
    from runtime.embedded import read_trailer
    t = read_trailer(path)
    data = path.read_bytes()
    n = len(data)
    trailer_at = n - t.trailer_bytes
    gguf_end = t.gguf_offset + t.gguf_size
    cuts = {"trailer": n - t.trailer_bytes // 2,
            "gguf": t.gguf_offset + t.gguf_size // 2,
            "archive": (gguf_end + trailer_at) // 2}
    if fmt == "exe":
        cookie_end = data.rfind(PYI_COOKIE_MAGIC) + PYI_COOKIE_BYTES
        assert cookie_end < trailer_at - 16  # ELF: the section headers follow the archive
        cuts["after-archive"] = (cookie_end + trailer_at) // 2
    else:
        cuts["zip-end-record"] = trailer_at - 10  # the 22-byte end of central directory
    return cuts


# Cuts after the stub's archive leave chatfile's own code runnable: it must say "truncated".
# Earlier cuts remove the archive (the PyInstaller cookie or the zip end record sits at its
# end), so Python or the bootloader answers before any chatfile code runs.
TRUNCATIONS = [("pyz", "trailer"), ("pyz", "zip-end-record"), ("pyz", "archive"),
               ("pyz", "gguf"), ("exe", "trailer"), ("exe", "after-archive"),
               ("exe", "archive"), ("exe", "gguf")]


@pytest.mark.parametrize("fmt,where", TRUNCATIONS)
def test_truncated_bundle_refuses_to_start(tmp_path_factory, tmp_path, fmt, where):
    src = session_bundle(tmp_path_factory, fmt)
    keep = _cut_points(src, fmt)[where]
    path = tmp_path / f"cut-{where}.{fmt}"
    with open(src, "rb") as f:
        path.write_bytes(f.read(keep))
    path.chmod(0o755)
    t0 = time.perf_counter()
    r = run_bundle(path, fmt, bundle_env(tmp_path_factory), "--no-browser", "--port",
                   str(free_port()))
    print(f"\n{fmt} cut in {where}: exit {r.returncode} after "
          f"{time.perf_counter() - t0:.2f} s: {r.stderr.strip()[-300:]!r}")
    assert r.returncode != 0
    assert TRACEBACK not in r.stderr, r.stderr
    if fmt == "pyz" and where != "trailer":
        # Python sees no zip and compiles the file: the "encoding" line 2 of the bundle
        # (bundler.splice.TRUNCATED_PYZ_LINE) turns that into a message for the user.
        assert "chatfile-bundle-is-incomplete-or-this-python-is-older-than-3.8" in r.stderr, r.stderr
    else:
        assert str(path) in r.stderr, r.stderr  # every other message names the file
    if where in ("trailer", "after-archive"):
        assert r.returncode == 2
        assert r.stderr.startswith("chatfile: error:") and "truncated" in r.stderr, r.stderr
