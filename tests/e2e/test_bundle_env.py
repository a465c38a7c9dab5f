"""Bundles in the environments a user may start them in: no home directory, no usable temp
dir, a file system mounted noexec or full, a terminal that is not UTF-8, a file that a
download added a byte to, a first start stopped with Ctrl+C, no /proc.

What each must give (docs/reliability.md): the bundle runs wherever it can, and where it
cannot, one `chatfile: error:` line that names the place and says what to do; never a
traceback, and never a half-unpacked runtime left behind.

Some environments cannot be made for real without changing the user (an account the
password database does not know) or the whole machine (no temp dir at all): there the
.pyz is started as `python3 BUNDLE` starts it (runpy runs the __main__.py in its zip),
after a few lines that make Python see that environment. The bundles are the session's
(tests/e2e/conftest.py: session_bundle), built once for every bundle test.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import non_ascii_model
from tests.e2e.conftest import Tmpfs, bundle_cmd, bundle_env, session_bundle

RUN_TIMEOUT_S = 60
TRACEBACK = "Traceback (most recent call last)"

pytestmark = pytest.mark.slow


def fresh_env(tmp_path: Path, **changes) -> dict:
    """The environment of a user who never ran a .pyz: no SHIV_ROOT, HOME and TMPDIR of
    the test's own (None removes a variable)."""
    env = {k: v for k, v in os.environ.items() if k != "SHIV_ROOT"}
    for name in ("home", "tmp"):
        (tmp_path / name).mkdir(exist_ok=True)
    env.update(HOME=str(tmp_path / "home"), TMPDIR=str(tmp_path / "tmp"), PYTHONUNBUFFERED="1")
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


# `python3 BUNDLE ARGS`, after SETUP has changed what this Python sees. (`-c` puts the
# working directory first on sys.path, where `python3 BUNDLE` puts the bundle alone.)
AS_STARTED = """\
import runpy, sys
sys.path.remove("")
{setup}
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_pyz(bundle: Path, *args, env: dict, setup: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", AS_STARTED.format(setup=setup), str(bundle),
                           *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=env["HOME"] if os.path.isdir(env.get("HOME", "")) else "/",
                          stdin=subprocess.DEVNULL, timeout=RUN_TIMEOUT_S)


def unpacked_in(root: Path) -> list:
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def one_error_line(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert TRACEBACK not in r.stderr, r.stderr
    assert r.stderr.startswith("chatfile: error: ") and r.stderr.count("\n") == 1, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


# ------------------------------------------------------------------ no home, no temp dir

NO_PASSWD_ENTRY = """\
import pwd
def getpwuid(uid):
    raise KeyError(f"getpwuid(): uid not found: {uid}")
pwd.getpwuid = getpwuid
"""


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="HOME and uids are POSIX's")
@pytest.mark.parametrize("home", ["unset, unknown user", "missing"])
def test_a_pyz_runs_without_a_home_directory(tmp_path_factory, tmp_path, home):
    """`docker run -u 4242` (a uid with no passwd entry) and no HOME: Python cannot tell
    where ~ is, and the .pyz stopped with a RuntimeError traceback. A HOME that does not
    exist (HOME=/nonexistent, as daemons have) was created, parents and all, wherever that
    could be done. Both now unpack into the private directory in the temp dir, and no home
    is created. (HOME="" is handled as no home too; it is not tried here: before, that
    made /.shiv, which a test run as root must not write.)"""
    bundle = session_bundle(tmp_path_factory, "pyz")
    missing = tmp_path / "gone" / "home"
    env = fresh_env(tmp_path, HOME=None if home.startswith("unset") else str(missing))
    r = run_pyz(bundle, "--info", env=env,
                setup=NO_PASSWD_ENTRY if home.startswith("unset") else "")
    assert r.returncode == 0 and TRACEBACK not in r.stderr, r.stderr
    assert "tiny-llama" in r.stdout
    private = tmp_path / "tmp" / f"chatfile-shiv-{os.getuid()}"
    assert len([n for n in unpacked_in(private) if n.startswith("chatfile_")]) == 1, \
        unpacked_in(private)
    assert not (tmp_path / "gone").exists()
    assert unpacked_in(tmp_path / "home") == []


NO_TEMP_DIR = """\
import tempfile
tempfile.tempdir = None
tempfile._candidate_tempdir_list = lambda: []  # as when /tmp, /var/tmp, ... are read-only
"""


def test_a_pyz_with_no_writable_place_says_what_to_do(tmp_path_factory, tmp_path):
    """HOME cannot be written and there is no usable temp dir (a read-only root file
    system): tempfile's "No usable temporary directory found" came as a traceback."""
    bundle = session_bundle(tmp_path_factory, "pyz")
    r = run_pyz(bundle, "--info", env=fresh_env(tmp_path, HOME="/dev/null"), setup=NO_TEMP_DIR)
    one_error_line(r, "cannot unpack the runtime", "/dev/null/.shiv",
                   "no usable temporary directory", "set SHIV_ROOT to a writable directory")


# ------------------------------------------------------- noexec and full file systems

def test_a_pyz_never_unpacks_onto_a_noexec_file_system(tmp_path_factory, tmp_path):
    """/tmp or /home mounted noexec (a common hardening): NumPy's compiled modules unpacked
    there cannot be loaded, and the .pyz stopped with NumPy's page-long ImportError. A
    home on such a mount is now passed over for the temp dir; a SHIV_ROOT on one, or
    both places on one, is one line that says so."""
    bundle = session_bundle(tmp_path_factory, "pyz")
    with Tmpfs(tmp_path / "noexec", 128 * 1024**2, "noexec") as noexec:
        r = run_pyz(bundle, "--info", env=fresh_env(tmp_path, HOME=str(noexec)))
        assert r.returncode == 0 and TRACEBACK not in r.stderr, r.stderr
        assert unpacked_in(noexec) == []
        assert unpacked_in(tmp_path / "tmp" / f"chatfile-shiv-{os.getuid()}")

        r = run_pyz(bundle, "--info", env=fresh_env(tmp_path, SHIV_ROOT=str(noexec / "rt")))
        one_error_line(r, f"SHIV_ROOT {noexec / 'rt'} is on a file system mounted noexec",
                       "set SHIV_ROOT to a writable directory on a file system that allows "
                       "running programs")
        r = run_pyz(bundle, "--info", env=fresh_env(tmp_path, HOME=str(noexec),
                                                    TMPDIR=str(noexec)))
        one_error_line(r, f"{noexec / '.shiv'} is on a file system mounted noexec",
                       f"{noexec / f'chatfile-shiv-{os.getuid()}'} is on a file system "
                       "mounted noexec", "set SHIV_ROOT")
        assert unpacked_in(noexec) == []


def test_a_pyz_on_a_full_disk_says_how_much_room_and_leaves_nothing(tmp_path_factory, tmp_path):
    """The first start unpacks ~57 MB. On a full disk that stopped with "No space left on
    device" and nothing more, and left the part already unpacked (a `.tmp` directory that
    only a month later is removed) on the disk it filled."""
    bundle = session_bundle(tmp_path_factory, "pyz")
    with Tmpfs(tmp_path / "disk", 4 * 1024**2) as disk:
        r = run_pyz(bundle, "--info", env=fresh_env(tmp_path, SHIV_ROOT=str(disk / "rt")))
        one_error_line(r, f"cannot unpack the runtime into {disk / 'rt'}", "No space left",
                       "it needs", "MB: free some space there, or set SHIV_ROOT")
        left = [p.name for p in (disk / "rt").iterdir()]
        assert all(name.endswith("_lock") for name in left), left  # shiv's empty lock file
        assert shutil.disk_usage(disk).used < 64 * 1024, shutil.disk_usage(disk)


CTRL_C_WHILE_UNPACKING = """\
import zipfile
extract = zipfile.ZipFile.extract
count = [0]
def extract_then_stop(self, *args, **kwargs):
    count[0] += 1
    if count[0] == 100:  # a tenth of the way: the user gave up waiting
        raise KeyboardInterrupt
    return extract(self, *args, **kwargs)
zipfile.ZipFile.extract = extract_then_stop
"""


def test_ctrl_c_during_the_first_unpacking_leaves_nothing(tmp_path_factory, tmp_path):
    bundle = session_bundle(tmp_path_factory, "pyz")
    root = tmp_path / "rt"
    r = run_pyz(bundle, "--info", env=fresh_env(tmp_path, SHIV_ROOT=str(root)),
                setup=CTRL_C_WHILE_UNPACKING)
    assert r.returncode == 130 and TRACEBACK not in r.stderr, (r.returncode, r.stderr)
    assert all(name.endswith("_lock") for name in unpacked_in(root)), unpacked_in(root)
    r = run_pyz(bundle, "--info", env=fresh_env(tmp_path, SHIV_ROOT=str(root)))
    assert r.returncode == 0, r.stderr


def test_a_thinned_out_unpacked_runtime_says_to_remove_it(tmp_path_factory, tmp_path):
    """A cleaner of old files in /tmp (systemd-tmpfiles' 10 days on Fedora and Ubuntu)
    deletes the files of the unpacked runtime that were not read lately; shiv unpacks only
    when the directory is missing, so NumPy's page-long ImportError came at every start."""
    bundle = session_bundle(tmp_path_factory, "pyz")
    root = tmp_path / "rt"
    env = fresh_env(tmp_path, SHIV_ROOT=str(root))
    assert run_pyz(bundle, "--info", env=env).returncode == 0
    (unpacked,) = root.glob("chatfile_*")
    for lib in (unpacked / "site-packages" / "numpy" / "_core").glob("_multiarray_umath*"):
        lib.unlink()
    r = run_pyz(bundle, "--info", env=env)
    one_error_line(r, f"the runtime unpacked in {unpacked} is incomplete (",
                   "remove that directory and start again")
    shutil.rmtree(unpacked)
    assert run_pyz(bundle, "--info", env=env).returncode == 0


NO_PROC = """\
import os
listdir = os.listdir
def no_proc(path="."):
    if str(path) == "/proc":
        raise FileNotFoundError(2, "No such file or directory", "/proc")
    return listdir(path)
os.listdir = no_proc
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="old runtimes are only removed where /proc shows which are in use")
def test_without_proc_old_runtimes_stay_and_the_bundle_starts(tmp_path_factory, tmp_path):
    """A sandbox without /proc: looking for the runtimes still in use raised
    FileNotFoundError (a traceback) once an old build's runtime was there to remove."""
    bundle = session_bundle(tmp_path_factory, "pyz")
    root = tmp_path / "rt"
    old = root / ("chatfile_" + "a" * 64)
    (old / "site-packages").mkdir(parents=True)
    month_ago_s = time.time() - 31 * 86400
    os.utime(old, (month_ago_s, month_ago_s))
    r = run_pyz(bundle, "--info", env=fresh_env(tmp_path, SHIV_ROOT=str(root)), setup=NO_PROC)
    assert r.returncode == 0 and TRACEBACK not in r.stderr, r.stderr
    assert old.is_dir()  # in use or not cannot be told: kept


# --------------------------------------------------------- a terminal that is not UTF-8

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_latin1_terminal_shows_question_marks_not_a_traceback(tmp_path_factory, tmp_path):
    """Under a Latin-1 locale (LANG=de_DE.ISO-8859-1; PYTHONIOENCODING gives Python the same
    stdout), a model name with an emoji made --info end in a UnicodeEncodeError traceback,
    and the server say that the model "failed to load" (the bundle "may be damaged")."""
    bundle = session_bundle(tmp_path_factory, "pyz")
    model = non_ascii_model(tmp_path)
    env = dict(bundle_env(tmp_path_factory), PYTHONIOENCODING="latin-1")
    cmd = bundle_cmd(bundle, "pyz")
    r = subprocess.run([*cmd, "--info", "-m", str(model)], capture_output=True, env=env,
                       timeout=RUN_TIMEOUT_S)
    assert r.returncode == 0 and TRACEBACK.encode() not in r.stderr, r.stderr
    assert "tïny-?".encode("latin-1") in r.stdout, r.stdout

    port = free_port()
    proc = subprocess.Popen([*cmd, "-m", str(model), "--no-browser", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as h:
                    if b'"ok"' in h.read():
                        break
            except OSError:
                pass
            time.sleep(0.1)
    finally:
        proc.terminate()
        out = proc.communicate(timeout=RUN_TIMEOUT_S)[0].decode("latin-1")
    assert "model tïny-? loaded" in out and "failed to load" not in out, out


# ------------------------------------------------------- bytes added after the bundle

@pytest.mark.parametrize("fmt", ["pyz", "exe"])
@pytest.mark.parametrize("added", [b"\n", b"\r\n" + bytes(1000)])
def test_bytes_added_at_the_end_are_ignored(tmp_path_factory, tmp_path, fmt, added):
    """A download tool or an editor that adds a newline: the bundle said it was "truncated
    or corrupt" (it is neither), and refused to start. Nothing it reads has moved, so it now
    runs, and says what it ignores."""
    src = session_bundle(tmp_path_factory, fmt)
    path = tmp_path / f"downloaded.{fmt}"
    path.write_bytes(src.read_bytes() + added)
    path.chmod(0o755)
    r = subprocess.run([*bundle_cmd(path, fmt), "--verify"], capture_output=True, text=True,
                       env=bundle_env(tmp_path_factory), timeout=RUN_TIMEOUT_S)
    assert r.returncode == 0 and r.stdout.startswith("OK: "), r.stderr
    n = len(added)
    assert r.stderr.startswith(f"chatfile: note: {path} has {n} byte{'s' * (n != 1)} more at "
                               "its end than it was made with"), r.stderr

    # Cut instead (or the trailer damaged): refused as before, and said which.
    from runtime.embedded import BundleError, read_trailer
    data = src.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(BundleError, match=r"is truncated: it should be \d+ bytes but is only"):
        read_trailer(path)
    path.write_bytes(data[:-10] + bytes(10) + added)
    with pytest.raises(BundleError, match=r"is corrupt: it should be \d+ bytes but is \d+, "
                                          "and its trailer is missing"):
        read_trailer(path)
    path.write_bytes(data[:-10] + bytes(10))
    with pytest.raises(BundleError, match="has the right size .* the trailer at its end "
                                          "is damaged"):
        read_trailer(path)
