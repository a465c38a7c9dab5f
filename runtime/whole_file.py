"""A file written whole or not at all.

It is written under a temporary name in its own directory and renamed over the real name
once complete, so a failed write (a full disk, a crash, Ctrl+C) leaves what was there
before, or nothing, and never a cut-off file. runtime/slot_files.py's saves and
runtime/bench.py's --json results are written this way.
"""
from __future__ import annotations

import contextlib
import os
import secrets


@contextlib.contextmanager
def replacing(path: str, mode: str = "wb", *, private: bool = False):
    """Open a new temporary file beside `path` for writing (`mode` "wb" or "w", UTF-8);
    when the `with` body ends without an error, rename it over `path`. On any error the
    temporary file is removed and the error goes on. `private`: readable by the owner
    only (0600), else as the umask says."""
    directory, name = os.path.split(os.path.abspath(path))
    # The name cut to 200 bytes: a temporary name is 14 bytes longer, and a name of 242
    # to 255 bytes (the most a file system takes) failed with "File name too long".
    short = name.encode("utf-8", "surrogateescape")[:200].decode("utf-8", "ignore")
    tmp = os.path.join(directory, f".{short}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
