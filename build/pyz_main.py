# -*- coding: utf-8 -*-
"""A .pyz bundle's first code: choose where shiv unpacks the runtime, then run shiv.

bundler/stub.py writes this file as the archive's __main__.py in place of shiv's
two-line one. shiv's own choice (~/.shiv/<file name>_<build id>) surprises users twice:
- a renamed or copied bundle unpacks ~56 MB again, since the file name is in the path;
- a HOME that cannot be written (a service account, a locked-down kiosk) stops the bundle
  with shiv's traceback before any chatfile code runs.
So the unpacked runtime is named after the build id alone (every copy of one build shares
it), and when ~/.shiv cannot be written a private directory in the temp dir is used.
Every upgrade of chatfile is a new build: the runtimes of builds no bundle has started for
a month, and that no running process uses, are removed so they do not pile up.
SHIV_ROOT, when set, still decides. Only the standard library may be imported here: the
runtime's packages are what is about to be unpacked.
"""
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


def _usable(d: Path, shared_parent: bool = False) -> bool:
    """d exists or can be made and can be written. Under a shared parent (the temp dir) it
    must also be a real directory of this user's that no one else can write: someone
    else's directory or symlink under our name could hand us code to run."""
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if shared_parent and hasattr(os, "getuid"):
            st = d.lstat()
            if d.is_symlink() or not d.is_dir() or st.st_uid != os.getuid() or st.st_mode & 0o022:
                return False
        probe = d / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def _root() -> Path:
    if os.environ.get("SHIV_ROOT"):
        return Path(os.environ["SHIV_ROOT"]).expanduser()
    home = Path("~/.shiv").expanduser()
    if _usable(home):
        return home
    user = str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    fallback = Path(tempfile.gettempdir()) / f"chatfile-shiv-{user}"
    if _usable(fallback, shared_parent=True):
        return fallback
    sys.stderr.write(f"chatfile: error: cannot unpack the runtime: neither {home} nor "
                     f"{fallback} can be written; set SHIV_ROOT to a writable directory\n")
    sys.exit(2)


# A build's runtime is "last used" when a bundle of it last started (its directory's
# mtime, set at every start). A month is long enough that an upgrade is not undone by a
# user going back to an old bundle now and then: that one would only unpack again.
_UNUSED_FOR_S = 30 * 86400
# shiv's build ids are sha256 hex digests; ".tmp" is an unpacking that was cut short.
_BUILD_DIR = re.compile(r"chatfile_[0-9a-f]{64}(\.tmp)?")


def _mapped_files() -> set:
    """Files mapped by this user's processes (Linux): a running chatfile maps NumPy's
    shared libraries out of its unpacked runtime for as long as it lives."""
    mapped = set()
    for pid in os.listdir("/proc"):
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
        sys.stderr.write(f"chatfile: error: cannot unpack the runtime into {target_path}: "
                         f"{e.strerror or e}\n")
        sys.exit(2)


_extract_site_packages = _bootstrap.extract_site_packages
_bootstrap.cache_path = _cache_path
_bootstrap.extract_site_packages = _extract
_bootstrap.bootstrap()
