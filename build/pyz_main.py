# -*- coding: utf-8 -*-
"""A .pyz bundle's first code: choose where shiv unpacks the runtime, then run shiv.

bundler/stub.py writes this file as the archive's __main__.py in place of shiv's
two-line one. shiv's own choice (~/.shiv/<file name>_<build id>) surprises users twice:
- a renamed or copied bundle unpacks ~56 MB again, since the file name is in the path;
- a HOME that cannot be written (a service account, a locked-down kiosk) stops the bundle
  with shiv's traceback before any chatfile code runs.
So the unpacked runtime is named after the build id alone (every copy of one build shares
it), and when ~/.shiv cannot be used (no home, a home that cannot be written, or one on
a file system mounted noexec) a private directory in the temp dir is used.
Every upgrade of chatfile is a new build: the runtimes of builds no bundle has started for
a month, and that no running process uses, are removed so they do not pile up.
SHIV_ROOT, when set, still decides. Only the standard library may be imported here: the
runtime's packages are what is about to be unpacked.
"""
import errno
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _bootstrap  # shiv's bootstrap, stored in the archive next to this file

# PYTHONPATH's directories come before the unpacked packages on sys.path, so a NumPy (or
# a `runtime`) found there would be imported instead of the bundle's own, and fail. The
# bundle carries all it runs, as the executable does, which ignores PYTHONPATH too.
_USER_PATHS = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
sys.path[:] = [p for p in sys.path if not p or os.path.abspath(p) not in _USER_PATHS]


def _noexec(d: Path) -> bool:
    """d (or the nearest directory above it that exists) is on a file system mounted
    noexec, as a hardened /tmp or /home often is: NumPy's compiled modules unpacked there
    cannot be loaded ("failed to map segment from shared object")."""
    while not os.path.exists(d) and d.parent != d:  # (False too for a directory we may not see)
        d = d.parent
    try:
        return bool(os.statvfs(d).f_flag & getattr(os, "ST_NOEXEC", 0))
    except (OSError, AttributeError):  # no statvfs (Windows): cannot tell, so assume not
        return False


def _why_unusable(d: Path, shared_parent: bool = False):
    """Why the runtime cannot be unpacked into d, or None when it can: d exists or can be
    made, can be written, and lies where programs may run. Under a shared parent (the temp
    dir) it must also be a real directory of this user's that no one else can write:
    someone else's directory or symlink under our name could hand us code to run."""
    if _noexec(d):
        return f"{d} is on a file system mounted noexec"
    try:
        try:
            d.mkdir(mode=0o700)  # never its parents: a missing HOME stays missing
        except FileExistsError:  # (or a file of that name: the checks below refuse it)
            pass
        if shared_parent and hasattr(os, "getuid"):
            st = d.lstat()
            if d.is_symlink() or not d.is_dir() or st.st_uid != os.getuid() or st.st_mode & 0o022:
                return f"{d} is not a private directory of this user's"
        probe = d / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return None
    except OSError as e:
        return f"{d} cannot be written ({e.strerror or e})"


def _home_shiv():
    """~/.shiv, or None without a home directory to put it in: HOME empty, or unset for a
    user the password database does not know (a container started with `-u 4242`)."""
    if os.environ.get("HOME") == "":
        return None
    try:
        return Path("~/.shiv").expanduser()
    except RuntimeError:  # "Could not determine home directory."
        return None


def _temp_shiv():
    """The private fallback in the temp dir, or None when there is no usable temp dir."""
    user = str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    try:
        return Path(tempfile.gettempdir()) / f"chatfile-shiv-{user}"
    except OSError:  # "No usable temporary directory found in [...]"
        return None


def _root() -> Path:
    # NumPy's compiled modules cannot be loaded from a noexec mount.
    remedy = ("set SHIV_ROOT to a writable directory on a file system that allows running "
              "programs (not mounted noexec), e.g. SHIV_ROOT=~/chatfile-runtime")
    if os.environ.get("SHIV_ROOT"):
        root = Path(os.environ["SHIV_ROOT"])
        try:
            root = root.expanduser()
        except RuntimeError:  # "~/x" for a user with no home: shiv would fail the same way
            _fail(f"cannot unpack the runtime: SHIV_ROOT {root} starts with ~, but this "
                  f"user has no home directory; {remedy}")
        if _noexec(root):
            _fail(f"cannot unpack the runtime: SHIV_ROOT {root} is on a file system mounted "
                  f"noexec; {remedy}")
        return root
    reasons = []
    for candidate, shared in ((_home_shiv(), False), (_temp_shiv(), True)):
        if candidate is None:
            reasons.append("there is no home directory" if not shared else
                           "there is no usable temporary directory")
            continue
        why = _why_unusable(candidate, shared_parent=shared)
        if why is None:
            return candidate
        reasons.append(why)
    _fail(f"cannot unpack the runtime: {reasons[0]}, and {reasons[1]}; {remedy}")


def _fail(message: str) -> None:
    sys.stderr.write(f"chatfile: error: {message}\n")
    sys.exit(2)


# A build's runtime is "last used" when a bundle of it last started (its directory's
# mtime, set at every start). A month is long enough that an upgrade is not undone by a
# user going back to an old bundle now and then: that one would only unpack again.
_UNUSED_FOR_S = 30 * 86400
# shiv's build ids are sha256 hex digests; ".tmp" is an unpacking that was cut short.
_BUILD_DIR = re.compile(r"chatfile_[0-9a-f]{64}(\.tmp)?")


def _mapped_files():
    """Files mapped by this user's processes (Linux), or None when /proc cannot be read: a
    running chatfile maps NumPy's shared libraries out of its unpacked runtime for as long
    as it lives."""
    mapped = set()
    try:
        pids = os.listdir("/proc")
    except OSError:  # no /proc (a sandbox): nothing can be told to be unused
        return None
    for pid in pids:
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
                for line in f:
                    parts = line.split(None, 5)
                    if len(parts) == 6 and parts[5].startswith("/"):
                        mapped.add(parts[5].rstrip("\n"))
        except OSError:  # gone, or another user's
            continue
    return mapped


def _remove_unused_builds(root: Path, ours: Path) -> None:
    """Remove the runtimes of other chatfile builds that no bundle started for a month and
    no process maps a file of. Linux only: elsewhere "in use" cannot be told cheaply,
    and a runtime removed under a running server would break its next import."""
    if not sys.platform.startswith("linux"):
        return
    try:  # /proc/*/maps names files by their real paths: compare like with like
        root, ours = root.resolve(), ours.resolve()
    except OSError:
        return
    now = time.time()
    try:
        old = [d for d in root.iterdir() if _BUILD_DIR.fullmatch(d.name) and d != ours
               and not d.is_symlink() and d.is_dir()
               and now - d.stat().st_mtime > _UNUSED_FOR_S]
    except OSError:
        return
    if not old:
        return
    mapped = _mapped_files()
    if mapped is None:
        return
    for d in old:
        if any(f.startswith(f"{d}/") for f in mapped):
            continue
        shutil.rmtree(d, ignore_errors=True)
        if d.name.endswith(".tmp"):
            continue  # a cut-short unpacking: its build's lock belongs to its build
        try:  # shiv's extraction lock next to it
            (root / f".{d.name}_lock").unlink()
        except OSError:
            pass


def _cache_path(archive, root_dir, build_id):
    # shiv's signature; root_dir (a build-time --root) is not used by chatfile's stubs.
    root = _root()
    ours = root / f"chatfile_{build_id}"
    try:
        os.utime(ours)  # used now (see _UNUSED_FOR_S); a first start unpacks it fresh
    except OSError:
        pass
    _remove_unused_builds(root, ours)
    return ours


def _extract(archive, target_path, *args, **kwargs):
    try:
        _extract_site_packages(archive, target_path, *args, **kwargs)
    except OSError as e:  # a full disk, a read-only SHIV_ROOT, ...
        _remove_partial(target_path)
        if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            need_mb = sum(i.file_size for i in archive.infolist()
                          if i.filename.startswith("site-packages")) / 1e6
            remedy = (f"it needs {need_mb:.0f} MB: free some space there, or set SHIV_ROOT "
                      "to a directory on a disk with room")
        else:
            remedy = "set SHIV_ROOT to a writable directory"
        _fail(f"cannot unpack the runtime into {target_path}: {e.strerror or e}; {remedy}")
    except KeyboardInterrupt:  # Ctrl+C during the first start's unpacking: no traceback
        _remove_partial(target_path)
        sys.exit(130)


def _remove_partial(target_path: Path) -> None:
    """Remove what an unpacking cut short left in shiv's "<target>.tmp" (up to its ~56 MB,
    on a disk that may be full): the next start would unpack it all again anyway. Only
    when shiv's lock is free at once: another start that holds it is unpacking into that
    directory right now, and the directory is its to finish (FileLock would wait for it,
    and a second Ctrl+C in that wait would be a traceback)."""
    partial = target_path.parent / f"{target_path.name}.tmp"
    lock = str(target_path.parent / f".{target_path.name}_lock")
    filelock = _bootstrap.filelock
    acquire = filelock.acquire_win if os.name == "nt" else filelock.acquire_nix
    try:
        fd = acquire(lock)  # a descriptor holding the lock, or None when another holds it
    except OSError:
        return
    if fd is None:
        return
    try:
        shutil.rmtree(partial, ignore_errors=True)
    finally:
        os.close(fd)  # (closing releases the lock)


_extract_site_packages = _bootstrap.extract_site_packages
_bootstrap.cache_path = _cache_path
_bootstrap.extract_site_packages = _extract
_bootstrap.bootstrap()
