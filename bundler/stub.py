"""Build the model-free runtime ("stub") once, and cache it per version/platform/format.

exe: PyInstaller onefile from build/chatfile.spec (runtime/ + its dependencies only).
pyz: shiv, from a site-packages assembled OFFLINE out of the distributions installed in
     this Python (build/shiv.json names them) plus runtime/ from this checkout.

In a source checkout the build settings are read from build/ and the runtime from
runtime/ beside bundler/. An installed chatfile (a wheel: pip or pipx) has no checkout
around it: its wheel carries copies of the build settings in bundler/_build/
(pyproject.toml's force-include), and the runtime is the installed `runtime` package.

The cache key includes a hash of every file under runtime/ and of the build settings, so
editing the runtime rebuilds the stub, and bundling afterwards is just a byte splice.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import runtime
from bundler import cache
from runtime.embedded import BundleError

ROOT = Path(__file__).resolve().parent.parent
# A checkout first (its build/ is what a developer edits), the installed package otherwise.
CHECKOUT = (ROOT / "build" / "chatfile.spec").is_file() and (ROOT / "runtime").is_dir()
BUILD_DIR = ROOT / "build" if CHECKOUT else Path(__file__).resolve().parent / "_build"
RUNTIME_DIR = ROOT / "runtime" if CHECKOUT else Path(runtime.__file__).resolve().parent
SOURCE_ROOT = RUNTIME_DIR.parent  # on PyInstaller's path: where `runtime` is imported from
SPEC = BUILD_DIR / "chatfile.spec"
ENTRY = BUILD_DIR / "entry.py"
SHIV_SETTINGS = BUILD_DIR / "shiv.json"
PYZ_MAIN = BUILD_DIR / "pyz_main.py"  # the .pyz's __main__.py: where shiv unpacks


def chatfile_version() -> str:
    try:
        return importlib.metadata.version("chatfile")
    except importlib.metadata.PackageNotFoundError:
        return "0+src"


def cache_dir() -> Path:
    """The stubs' directory in chatfile's cache (see bundler/cache.py)."""
    return cache.root() / "stubs"


def sources_hash() -> str:
    """sha256 over runtime/ sources and the build settings (paths and contents). Each file
    is named as in a checkout ("runtime/...", "build/..."), wherever it lies: the same
    sources give the same key in a checkout and in an installed chatfile."""
    h = hashlib.sha256()
    files = [(f"runtime/{p.relative_to(RUNTIME_DIR).as_posix()}", p)
             for p in sorted(RUNTIME_DIR.rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    files += [(f"build/{p.name}", p) for p in (SPEC, SHIV_SETTINGS, PYZ_MAIN, ENTRY) if p.is_file()]
    for name, p in files:
        h.update(name.encode() + b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def platform_tag() -> str:
    # The stub embeds (exe) or needs (pyz, for NumPy's binary wheels) this Python's version.
    return (f"{sys.platform}-{platform.machine().lower()}-"
            f"py{sys.version_info.major}{sys.version_info.minor}")


def _stub_suffix(fmt: str) -> str:
    return ".exe" if fmt == "exe" and sys.platform == "win32" else ("" if fmt == "exe" else ".pyz")


def cached_stub_path(fmt: str) -> Path:
    name = f"chatfile-{chatfile_version()}-{platform_tag()}-{fmt}-{sources_hash()}{_stub_suffix(fmt)}"
    return cache_dir() / name


def get_stub(fmt: str, log=None) -> Path:
    """The cached stub for this runtime, building it first if needed."""
    path = cached_stub_path(fmt)
    if path.is_file():
        try:
            os.utime(path)  # used now: the pruning below keeps recently used stubs
        except OSError:
            pass
        return path
    check_cache_writable(path)  # said now, not after a build of a minute
    build_stub(fmt, path, log=log)
    prune_cache(fmt, path)
    return path


# Stubs of other runtime versions kept per format and platform, most recently used first:
# each is 17-36 MB, and one is only used again when the sources go back to its version.
KEEP_STUBS = 3


def prune_cache(fmt: str, new: Path) -> None:
    """Remove this format's and platform's cached stubs (of any version) beyond the
    KEEP_STUBS most recently used, the new one among them. `new` is the stub just built
    (by `bundle` or `stub`); outside the cache (`chatfile stub -o`) nothing is removed."""
    try:
        if Path(new).resolve().parent != cache_dir().resolve():
            return
    except OSError:
        return
    mine = re.compile(rf"chatfile-[^-]+-{re.escape(platform_tag())}-{fmt}-[0-9a-f]+"
                      rf"{re.escape(_stub_suffix(fmt))}")
    try:
        same = [p for p in Path(new).parent.iterdir() if mine.fullmatch(p.name) and p.is_file()]
        same.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return
    for old in same[KEEP_STUBS:]:
        if old.resolve() != Path(new).resolve():
            old.unlink(missing_ok=True)


def build_stub(fmt: str, out: str | os.PathLike, log=None) -> float:
    """Build a stub at `out` (atomically); return the build time in seconds."""
    out = Path(out).resolve()
    if fmt not in ("exe", "pyz"):
        raise BundleError(f"unknown stub format {fmt!r} (expected exe or pyz)")
    if out.is_dir():
        raise BundleError(f"{out} is a directory; give the stub's file name with -o")
    check_build_files(fmt)
    problem = unwritable_dir(out.parent)
    if problem:  # before the build, not after it
        raise BundleError(f"cannot write the stub {out}: {problem}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chatfile-stub-") as work:
        built = (_build_exe if fmt == "exe" else _build_pyz)(Path(work), log)
        tmp = out.parent / f".{out.name}.{os.getpid()}.part"
        try:
            shutil.copyfile(built, tmp)
            os.chmod(tmp, 0o755)
            os.replace(tmp, out)
        except BaseException as e:
            tmp.unlink(missing_ok=True)
            if isinstance(e, OSError):  # (a full disk): name the stub, not our temp file
                raise BundleError(f"cannot write the stub {out}: {e.strerror or e}") from None
            raise
    return time.perf_counter() - t0


def check_build_files(fmt: str) -> None:
    """Raise BundleError if a build setting the `fmt` stub's build reads is missing (an
    installed chatfile whose wheel was built without them): said plainly, not as the
    OSError of a file opened halfway through the build."""
    needed = (SPEC, ENTRY, SHIV_SETTINGS) if fmt == "exe" else (SHIV_SETTINGS, PYZ_MAIN)
    missing = [p for p in needed if not p.is_file()]
    if missing:
        where = "this checkout" if CHECKOUT else "this installed chatfile"
        raise BundleError(f"{missing[0]} is missing from {where}: building a {fmt} stub "
                          "needs chatfile's build settings (build/ in a source checkout, "
                          "bundler/_build/ in an installed wheel); reinstall chatfile, or "
                          "give a stub with --stub FILE")


def check_cache_writable(stub_path: Path) -> None:
    """Raise BundleError if the cache cannot take the stub `stub_path`: before a build
    of a minute, and before `chatfile bundle` announces one."""
    problem = unwritable_dir(stub_path.parent)
    if problem:
        raise BundleError(f"cannot keep the stub in chatfile's cache: {problem}; set "
                          "CHATFILE_CACHE_DIR to a directory you can write, or give a stub "
                          "with --stub FILE")


def unwritable_dir(path: Path) -> str | None:
    """Why the directory `path` (created if missing) cannot take a new file, or None.
    Raw, the OS said "[Errno 30] Read-only file system: '/home/me/.cache'" (a HOME that
    cannot be written), without the setting that avoids it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create {path}: {e.strerror or e}"
    if not os.access(path, os.W_OK):  # (also says so for a read-only file system)
        return f"{path} is not writable"
    return None


def _run(cmd: list[str], what: str, log, env=None) -> None:
    if log:
        log(f"{what}: {' '.join(cmd)}")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, cwd=str(SOURCE_ROOT))
    if proc.returncode:
        tail = "\n".join(proc.stdout.splitlines()[-25:])
        raise BundleError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def _build_exe(work: Path, log) -> Path:
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        raise BundleError("PyInstaller is not installed: pip install 'chatfile[build]'") from None
    # The spec finds runtime/ (its page files) through CHATFILE_SOURCE_ROOT: beside the
    # spec in a checkout, but not in an installed chatfile's bundler/_build/.
    env = dict(os.environ, CHATFILE_STUB_NAME="chatfile-stub", CHATFILE_SOURCE_ROOT=str(SOURCE_ROOT))
    _run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
          "--distpath", str(work / "dist"), "--workpath", str(work / "build"), str(SPEC)],
         "PyInstaller", log, env=env)
    name = "chatfile-stub.exe" if sys.platform == "win32" else "chatfile-stub"
    built = work / "dist" / name
    if not built.is_file():
        raise BundleError(f"PyInstaller finished but {built} is missing")
    return built


def _build_pyz(work: Path, log) -> Path:
    try:
        import shiv  # noqa: F401
    except ImportError:
        raise BundleError("shiv is not installed: pip install 'chatfile[build]'") from None
    settings = json.loads(SHIV_SETTINGS.read_text())
    site = work / "site-packages"
    _copy_runtime(site / "runtime")
    excluded = tuple(settings.get("exclude_prefixes", ()))
    for dist_name in settings["distributions"]:
        _copy_distribution(dist_name, site, excluded)
    # shiv puts its bootstrap code into the .pyz: its licence goes along (--licenses).
    _copy_distribution("shiv", site, excluded, metadata_only=True)
    out = work / "chatfile-stub.pyz"
    cmd = [sys.executable, "-m", "shiv", "--site-packages", str(site),
           "-e", settings["entry_point"], "-p", settings["python"], "-o", str(out)]
    cmd.append("--compressed" if settings.get("compressed", True) else "--uncompressed")
    if settings.get("reproducible"):
        cmd.append("--reproducible")
    _run(cmd, "shiv", log)
    final = work / "chatfile-stub-main.pyz"
    _replace_main(out, final, PYZ_MAIN.read_bytes())
    return final


def _replace_main(src: Path, dst: Path, main_py: bytes) -> None:
    """Copy the zip application src to dst with another __main__.py (same shebang, same
    entry order and timestamps, so a reproducible build stays reproducible)."""
    data = src.read_bytes()
    with zipfile.ZipFile(src) as zin:
        infos = zin.infolist()
        first = min(i.header_offset for i in infos)
        names = [i.filename for i in infos]
        if "__main__.py" not in names or "_bootstrap/__init__.py" not in names:
            raise BundleError("shiv built a .pyz without __main__.py or _bootstrap: "
                              "this shiv version is not supported")
        bootstrap = zin.read("_bootstrap/__init__.py")
        # pyz_main.py wraps these two functions of shiv's bootstrap.
        for fn in (b"def cache_path(", b"def extract_site_packages(", b"def bootstrap("):
            if fn not in bootstrap:
                raise BundleError(f"shiv's bootstrap has no {fn[4:-1].decode()}(): "
                                  "this shiv version is not supported")
        with open(dst, "wb") as f:
            f.write(data[:first])  # the shebang line
            with zipfile.ZipFile(f, "w") as zout:
                for info in infos:
                    body = main_py if info.filename == "__main__.py" else zin.read(info)
                    zout.writestr(info, body, compress_type=info.compress_type)


def _copy_runtime(dst: Path) -> None:
    shutil.copytree(RUNTIME_DIR, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _copy_distribution(name: str, site: Path, excluded: tuple[str, ...],
                       metadata_only: bool = False) -> None:
    """Copy an installed distribution's files (per its RECORD) into `site`; with
    metadata_only, only its dist-info (which holds its licence files)."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise BundleError(f"{name} is not installed in {sys.executable}; the .pyz stub is "
                          "assembled from installed packages (pip install chatfile)") from None
    for f in dist.files or ():
        rel = str(f).replace("\\", "/")
        if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyc"):
            continue  # scripts in bin/ and byte-code: not importable payload
        if any(rel.startswith(p) for p in excluded):
            continue
        if metadata_only and not rel.split("/", 1)[0].endswith(".dist-info"):
            continue
        src = Path(f.locate())
        if not src.is_file():
            continue
        target = site / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
