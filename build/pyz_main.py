# -*- coding: utf-8 -*-
"""A .pyz bundle's first code: choose where shiv unpacks the runtime, then run shiv.

bundler/stub.py writes this file as the archive's __main__.py in place of shiv's
two-line one. shiv's own choice (~/.shiv/<file name>_<build id>) surprises users twice:
- a renamed or copied bundle unpacks ~56 MB again, since the file name is in the path;
- a HOME that cannot be written (a service account, a locked-down kiosk) stops the bundle
  with shiv's traceback before any chatfile code runs.
So the unpacked runtime is named after the build id alone (every copy of one build shares
it), and when ~/.shiv cannot be written a private directory in the temp dir is used.
SHIV_ROOT, when set, still decides. Only the standard library may be imported here: the
runtime's packages are what is about to be unpacked.
"""
import os
import sys
import tempfile
from pathlib import Path

import _bootstrap  # shiv's bootstrap, stored in the archive next to this file


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


def _cache_path(archive, root_dir, build_id):
    # shiv's signature; root_dir (a build-time --root) is not used by chatfile's stubs.
    return _root() / f"chatfile_{build_id}"


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
