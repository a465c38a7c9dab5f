"""Where chatfile keeps what it fetched or built once: verified models and runtime stubs.

One root for both, so that the one documented setting moves both:
$CHATFILE_CACHE_DIR, else the platform's user cache directory + "chatfile"
(~/.cache/chatfile on Linux, or $XDG_CACHE_HOME/chatfile).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def root() -> Path:
    if os.environ.get("CHATFILE_CACHE_DIR"):
        return Path(os.environ["CHATFILE_CACHE_DIR"])
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "chatfile"
