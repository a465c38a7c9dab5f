"""Entry point of a bundle (PyInstaller executable or shiv .pyz) and of `python -m runtime`.

A bundle reads the trailer of its own file (see runtime/embedded.py), then behaves like
`chatfile run` on the embedded GGUF with the defaults baked in at bundle time, the user's
command-line args applied on top. Only the standard library and runtime.embedded are
imported before we know what to do, so `--help`, `--verify` and errors are instant.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.util
import io
import json
import os
import re
import signal
import sys
import time
import zipfile
from pathlib import Path

from runtime.cli import (HIDDEN_FLAGS, build_parser, describe_args, full_flags, hidden_flag,
                         is_baked_template, started_as, stdout_is_open, tolerant_stdout)
from runtime.embedded import (BundleError, Trailer, extract, interrupt_on_termination,
                              read_trailer, verify)
from runtime.leftovers import clear_for_executable

NO_MODEL_HELP = ("this is a chatfile runtime without a model; use -m model.gguf or "
                 "`chatfile bundle` to make one that carries a model.")

HELP = """usage: {prog} [options]

Chat with the language model inside this file: starts a local server and opens the chat
page in your browser. Close this window (or press Ctrl+C) to stop.

bundle options:
  --port N          port to listen on (default: the baked default or 8080; if it
                    is busy, the next free one, whose page starts with no saved chats)
  --host HOST       address to listen on (default 127.0.0.1)
  --no-browser      do not open the browser
  --api-key KEY     require this key for API requests
  --cli             chat in the terminal instead (reads stdin when piped;
                    --cli -p TEXT answers TEXT and exits)
  -m, --model PATH  use another GGUF file instead of the embedded one
  --info            print the embedded model's metadata summary and sha256
  --verify          re-hash the embedded model against the sha256 in the bundle
  --extract OUT     write the embedded GGUF to OUT (byte-identical)
  --version         print chatfile's version
  --licenses        print the licences of chatfile and of everything this file carries
  -h, --help        show this help

{passed}
Baked-in defaults of this bundle: {baked}
"""


def _passed_through() -> str:
    """The sentence of HELP that names the `chatfile run` options a bundle passes on: read
    from that parser, so that an option added there is never missing here."""
    import textwrap
    listed = {"-h", "--help", "--port", "--host", "--no-browser", "--api-key"}  # above
    run = build_parser().commands["run"]
    flags = [a.option_strings[-1] for a in run._actions
             if a.option_strings and a.help != argparse.SUPPRESS
             and not listed & set(a.option_strings)]
    return textwrap.fill(f"Any other `chatfile run` option ({', '.join(flags)}) is passed "
                         "through.", width=88, break_on_hyphens=False)  # never "--cache-" / "ram"


# Flags that only make sense for the server; dropped when --cli turns a run into a chat.
_SERVER_FLAGS_WITH_VALUE = {"--host", "--port", "--api-key", "--allow-host", "--cache-ram",
                            "--slot-save-path"}
_SERVER_FLAGS = {"--no-browser", "--cors"}


def bundle_path() -> str | None:
    """The file this process was started from, if it can carry a trailer."""
    if getattr(sys, "frozen", False):
        return sys.executable  # PyInstaller: the bootloader's own file
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 and os.path.isfile(argv0) and zipfile.is_zipfile(argv0):
        return os.path.abspath(argv0)  # a zipapp (shiv) run as `./x.pyz` or `python3 x.pyz`
    return None


def _split_own_flags(argv: list[str]) -> tuple[dict, list[str]]:
    """Pull this entry point's own flags out of argv; return them and the rest, in order."""
    own = {"cli": False, "model": None, "info": False, "verify": False, "extract": None,
           "help": False, "version": False, "licenses": False}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        name, eq, val = a.partition("=")
        if a in ("-h", "--help"):
            own["help"] = True
        elif a in ("--cli", "--info", "--verify", "--version", "--licenses"):
            own[a[2:]] = True
        elif name in ("-m", "--model", "--extract"):
            key = "model" if name in ("-m", "--model") else "extract"
            if eq:
                own[key] = val
            elif i + 1 < len(argv):
                i += 1
                own[key] = argv[i]
            else:
                raise SystemExit(f"chatfile: error: {name} needs a value")
            if not own[key]:  # "" would read as not given, and the server would start
                raise SystemExit(f"chatfile: error: {name} needs a value, not an empty one")
        else:
            rest.append(a)
        i += 1
    return own, rest


def _baked_args(trailer: Trailer | None) -> list[str]:
    """The trailer's args in full, without hidden options. A bundle made before chatfile
    bundle wrote them in full may carry `--no-brow --po 9000` (every `--cli` start failed
    with "unrecognized arguments") or `--gguf-o 0` (which pointed every start at the
    bundle's first byte instead of its GGUF): the first are expanded, the second ignored."""
    if trailer is None:
        return []
    try:
        baked = full_flags(list(trailer.args))
    except ValueError:  # (never bundled: the parser refused it); left for it to say
        return list(trailer.args)
    kept, dropped = _without_flags(baked, lambda name, arg: name in HIDDEN_FLAGS
                                   and not is_baked_template(arg))
    if dropped:
        print(f"chatfile: note: the args baked into this bundle (by an older chatfile) set "
              f"{', '.join(dropped)}, which the bundle sets itself; ignored", file=sys.stderr)
    return kept


def _without_flags(args: list[str], drop) -> tuple[list[str], list[str]]:
    """(args without each flag that drop(name, arg) picks, nor its value: the next arg
    unless written --flag=value; the names of those dropped)."""
    kept, dropped, i = [], [], 0
    while i < len(args):
        name, eq, _ = args[i].partition("=")
        if drop(name, args[i]):
            dropped.append(name)
            i += 1 if eq else 2  # with its value
        else:
            kept.append(args[i])
            i += 1
    return kept, dropped


def _drop_server_flags(args: list[str]) -> list[str]:
    """args without the server's options, for a chat in the terminal. Those without a
    value take no next arg, so they can be dropped after the ones with a value."""
    kept, _ = _without_flags(args, lambda name, arg: name in _SERVER_FLAGS_WITH_VALUE)
    return [a for a in kept if a.partition("=")[0] not in _SERVER_FLAGS]


def _progress(label: str):
    """A plain-text progress callback for stderr (no dependencies)."""
    state = {"last": -1}
    # Redraw in place on a terminal; a pipe or log file gets 25% steps only.
    step = 1 if sys.stderr.isatty() else 25

    def report(done: int, total: int) -> None:
        pct = 100 if total == 0 else done * 100 // total
        if pct // step != state["last"] // step or (pct == 100 and state["last"] != 100):
            state["last"] = pct
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{label} [{bar:<25}] {pct:3d}%" if step == 1
                             else f"{label} [{bar:<25}] {pct:3d}%\n")
            if done >= total and step == 1:
                sys.stderr.write("\n")
            sys.stderr.flush()
    return report


def numpy_mismatch() -> str | None:
    """Why this Python cannot load the NumPy it would import, or None (it can, or we cannot
    tell). A .pyz carries NumPy compiled for the Python version and platform that built
    it; started by another `python3`, NumPy's import fails with a long traceback."""
    spec = importlib.util.find_spec("numpy")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    core = Path(next(iter(spec.submodule_search_locations))) / "_core"
    built = sorted(p.name[len("_multiarray_umath"):] for p in core.glob("_multiarray_umath.*"))
    if not built or any(b in importlib.machinery.EXTENSION_SUFFIXES for b in built):
        return None
    tag = built[0].strip(".").rsplit(".", 1)[0]  # e.g. cpython-311-x86_64-linux-gnu
    m = re.fullmatch(r"cpython-(\d)(\d+)-(.+)", tag)
    needs = f"Python {m[1]}.{m[2]} on {m[3]}" if m else tag
    have = f"Python {sys.version_info[0]}.{sys.version_info[1]}"
    run_with = f"python{m[1]}.{m[2]}" if m else "that Python"
    return (f"this bundle's NumPy is compiled for {needs}, and it was started by {have}: "
            f"run it with {run_with}, or use the executable bundle, which needs no Python")


def incomplete_runtime(e: ImportError) -> str:
    """What to say when a module this file carries cannot be imported. NumPy's own message
    is a page of advice for developers; its cause (`from exc`) is the line that matters.
    A .pyz runs from its unpacked copy, which a cleaner of old files in /tmp may have
    thinned out: removed, it is unpacked afresh at the next start."""
    cause = e.__cause__ if isinstance(e.__cause__, Exception) else e
    detail = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
    site = Path(__file__).resolve().parents[1]  # <root>/chatfile_<build>/site-packages
    if site.name == "site-packages" and site.parent.name.startswith("chatfile_"):
        return (f"the runtime unpacked in {site.parent} is incomplete ({detail}); remove "
                "that directory and start again: it is unpacked afresh")
    return f"the runtime is incomplete ({detail})"


def _runtime_cli(argv: list[str]) -> int:
    problem = numpy_mismatch()
    if problem:
        print(f"chatfile: error: {problem}", file=sys.stderr)
        return 2
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "chatfile"
    # NumPy is imported by the command, after cli.main has set the BLAS thread count
    # (--threads): importing it here first would fix the count at every core.
    try:
        from runtime import cli
        return cli.main(argv, bundle=prog) or 0
    except ImportError as e:  # a broken build or unpacking; say so instead of a traceback
        print(f"chatfile: error: {incomplete_runtime(e)}", file=sys.stderr)
        return 2


def _model_args(path: str, trailer: Trailer | None, title: bool = True) -> list[str]:
    if trailer is None:
        return [path]
    out = [path, "--gguf-offset", str(trailer.gguf_offset), "--gguf-size", str(trailer.gguf_size)]
    if trailer.title and title:
        out += ["--title", trailer.title]
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "chatfile"
    try:
        own, user_args = _split_own_flags(argv)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    shows = next((f"--{k}" for k in ("help", "version", "licenses") if own[k]), None)
    if shows and not stdout_is_open(shows):
        return 2
    if own["version"]:  # even from a damaged bundle: it is the runtime's, not the model's
        from runtime import __version__
        print(f"chatfile {__version__}")
        return 0
    if own["licenses"]:  # even from a damaged bundle, and without loading NumPy
        from runtime.licenses import print_notices
        return print_notices()
    try:  # in full, as hidden_flag looks for them; read by the command they go to
        typed, user_args = user_args, full_flags(user_args, ("chat",) if own["cli"] else ("run",))
    except ValueError as e:
        print(f"chatfile: error: {e} (`{started_as(prog)} --help` lists the options)",
              file=sys.stderr)
        return 2
    hidden = hidden_flag(user_args)
    if hidden:  # named as typed: `--gguf-o` is not told the hidden option's whole name
        name = next(t for t, a in zip(typed, user_args) if a.partition("=")[0] == hidden)
        print(f"chatfile: error: {name.partition('=')[0]} is not an option (the bundle sets "
              f"it itself)", file=sys.stderr)
        return 2
    path = bundle_path()
    try:
        trailer = read_trailer(path) if path else None
    except BundleError as e:
        print(f"chatfile: error: {e}", file=sys.stderr)
        return 2
    if trailer is not None and trailer.appended_bytes:
        n = trailer.appended_bytes
        print(f"chatfile: note: {path} has {n} byte{'s' * (n != 1)} more at its end than it "
              "was made with (added by a download or an editor?); they are ignored",
              file=sys.stderr)
    baked = _baked_args(trailer)

    if own["help"]:
        print(HELP.format(prog=prog, passed=_passed_through(),
                          baked=describe_args(baked) or "(none)"))
        if trailer is None:
            print(NO_MODEL_HELP)
        return 0

    if own["model"]:
        model_path, model_trailer = own["model"], None
        # A chat template baked in is the embedded model's, not another model's.
        baked = [a for a in baked if not is_baked_template(a)]
    elif trailer is not None:
        model_path, model_trailer = path, trailer
    else:
        print(f"chatfile: {NO_MODEL_HELP}\nRun with --help for the options.", file=sys.stderr)
        return 2

    actions = [f for f in ("--info", "--verify", "--extract") if own[f[2:]]]
    if len(actions) > 1:  # one would quietly win over the others
        print(f"chatfile: error: {' and '.join(actions)} cannot be combined; give one",
              file=sys.stderr)
        return 2
    if own["verify"] or own["extract"]:
        if own["model"]:
            print("chatfile: error: --verify and --extract work on the embedded model; "
                  "leave out -m", file=sys.stderr)
            return 2
    if own["verify"] or own["extract"] or (own["info"] and not own["model"]):
        if model_trailer is None:
            print("chatfile: error: --verify, --info and --extract need an embedded model; "
                  f"{NO_MODEL_HELP}", file=sys.stderr)
            return 2
    extra = [a for a in user_args if a != "--json"]  # --info --json: the summary as JSON
    if (own["verify"] or own["extract"] or own["info"]) and extra:
        print(f"chatfile: error: unexpected arguments with --verify, --info or --extract: "
              f"{' '.join(extra)}", file=sys.stderr)
        return 2
    try:
        if own["verify"]:
            ok = verify(path, trailer, _progress("verifying"))
            if ok:
                print(f"OK: the embedded model matches sha256 {trailer.sha256}")
                return 0
            print(f"FAILED: the embedded model in {path} does not match its sha256 "
                  f"{trailer.sha256}: the bundle is corrupt; copy or download it again.",
                  file=sys.stderr)
            return 1
        if own["extract"]:
            interrupt_on_termination()
            digest = extract(path, trailer, own["extract"], _progress("extracting"))
            print(f"wrote {own['extract']} ({trailer.gguf_size} bytes, sha256 {digest})")
            return 0
    except BundleError as e:
        print(f"chatfile: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"chatfile: error: {e}", file=sys.stderr)
        return 1

    model = _model_args(model_path, model_trailer)
    if own["info"]:
        template = [a for a in baked if is_baked_template(a)]
        info_args = ["info", *_model_args(model_path, model_trailer, title=False), *template]
        if "--json" in user_args:
            return _info_json(info_args, model_trailer, baked)
        code = _runtime_cli(info_args)
        if model_trailer is not None:
            print(f"sha256: {model_trailer.sha256}")
            print(f"embedded at offset {model_trailer.gguf_offset}, "
                  f"{model_trailer.gguf_size} bytes")
            print(f"baked-in args: {describe_args(baked) or '(none)'}")
            if model_trailer.title:  # the page's and the window's name (--title)
                print(f"title: {model_trailer.title}")
        return code
    if own["cli"]:
        return _runtime_cli(["chat", *model, *_drop_server_flags(baked + user_args)])
    # The server prints the URL and "close this window (or press Ctrl+C) to stop".
    return _runtime_cli(["run", *model, *baked, *user_args])


def _info_json(info_args: list[str], trailer: Trailer | None, baked: list[str]) -> int:
    """`--info --json`: the model's summary, plus what the bundle adds (its sha256, where
    the GGUF sits, the baked-in args) under "bundle", so that a script reads one object."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # errors go to stderr as usual
        code = _runtime_cli([*info_args, "--json"])
    if code != 0 or trailer is None:
        sys.stdout.write(out.getvalue())
        return code
    d = json.loads(out.getvalue())
    d["bundle"] = {"sha256": trailer.sha256, "gguf_offset": trailer.gguf_offset,
                   "gguf_size": trailer.gguf_size, "format": trailer.format,
                   "title": trailer.title,
                   # A baked chat template is counted in "chat_template_from_bundle".
                   "args": [a for a in baked if not is_baked_template(a)]}
    print(json.dumps(d, indent=2))
    return 0


def _one_interrupt_per_keypress() -> None:
    """In a PyInstaller one-file executable, Ctrl+C reaches this process twice: from the
    terminal (the launcher and we share its process group), and again forwarded by the
    launcher. The second would stop the program right after the first stopped an answer
    (or break the server's shutdown), so two SIGINTs within a quarter second count as one."""
    last_s = [-1.0]

    def on_sigint(signum, frame):
        now_s = time.monotonic()
        if now_s - last_s[0] < 0.25:
            return
        last_s[0] = now_s
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)


def _restore_library_path() -> None:
    """Give programs we start (the browser, through xdg-open) the user's LD_LIBRARY_PATH.
    PyInstaller's bootloader puts the bundle's own libraries (libstdc++, libssl, ...)
    first on it, and a browser made for a newer system can fail with them. This process
    is not affected: the dynamic loader read the variable when the process started."""
    orig = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if orig is not None:
        os.environ["LD_LIBRARY_PATH"] = orig
    else:
        os.environ.pop("LD_LIBRARY_PATH", None)


def _keep_reading_the_started_file() -> None:
    """Point PyInstaller's module reader at the file this process started from, not at its
    name. The reader opens the executable by name at each import it has not done yet (the
    first chat imports more), so a bundle rebuilt under the same name (`chatfile bundle
    -o my-chat --force`) or replaced while it ran fed the running one another file's bytes:
    each chat then failed with "internal server error". An open descriptor keeps the
    started file, even renamed, replaced or deleted; /proc/self/fd reopens it (Linux)."""
    importer = sys.modules.get("pyimod02_importers")
    archive = getattr(importer, "pyz_archive", None)
    name = getattr(archive, "_filename", None)
    if not isinstance(name, str) or not os.path.isdir("/proc/self/fd"):
        return
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return  # the reader keeps reading by name, as before
    archive._filename = f"/proc/self/fd/{fd}"


def _entry() -> None:
    """Console entry: exit with main's code; keep a double-clicked window open on error."""
    tolerant_stdout()
    forwarded = getattr(sys, "frozen", False) and os.name == "posix"
    if forwarded:
        _one_interrupt_per_keypress()
    if getattr(sys, "frozen", False):
        _keep_reading_the_started_file()
        _restore_library_path()
    try:
        if getattr(sys, "frozen", False):
            # The unpacked runtimes of killed executables; in the try, as a Ctrl+C while
            # it removes them (88 MB each) is one that stops the start, not a traceback.
            clear_for_executable()
        code = main()
    except KeyboardInterrupt:
        code = 130
    except OSError as e:
        # Only writing to stdout gets here (main and runtime.cli catch the rest where it
        # happens): `--help | head -1` read by then, or `--licenses > notices.txt` on a full
        # disk. The output is dropped so that Python's flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if isinstance(e, BrokenPipeError):
            code = 0
        else:
            print(f"chatfile: error: cannot write the output: {e.strerror or e}",
                  file=sys.stderr)
            code = 1
    if forwarded:  # a late forwarded copy must not kill the exit itself
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if code not in (0, 130) and getattr(sys, "frozen", False) and len(sys.argv) == 1:
        # Started by a double-click: the window would vanish before the error is read.
        try:
            if sys.stdin is not None and sys.stdin.isatty():
                input("press Enter to close this window")
        except (EOFError, OSError):
            pass
    sys.exit(code)


if __name__ == "__main__":
    _entry()
