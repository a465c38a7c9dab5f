"""The `chatfile` command: `bundle` and `stub` live here; run/chat/info/bench go to runtime.cli."""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import sys
import time
import unicodedata
from pathlib import Path

from runtime.embedded import (BundleError, Trailer, encode_trailer, interrupt_on_termination,
                              read_trailer)

OWN_COMMANDS = ("bundle", "stub")


class ProgressBar:
    """Plain-text progress on stderr: redrawn in place on a terminal, a few lines otherwise."""

    def __init__(self, label: str, stream=None):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_pct = -1
        self.t0 = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        pct = 100 if total <= 0 else done * 100 // total
        step = 1 if self.tty else 25  # a log file gets 0/25/50/75/100 only
        if pct == self.last_pct or (pct < 100 and pct // step == self.last_pct // step):
            return
        self.last_pct = pct
        elapsed_s = time.perf_counter() - self.t0
        rate = done / elapsed_s / 1024**2 if elapsed_s > 0 else 0.0
        bar = "#" * (pct * 30 // 100)
        line = f"{self.label} [{bar:<30}] {pct:3d}% {done / 1024**2:8.1f} MiB {rate:7.1f} MiB/s"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if pct >= 100 else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _default_output(model: str, fmt: str) -> str:
    stem = os.path.splitext(os.path.basename(model))[0]
    if fmt == "pyz":
        return stem + ".pyz"
    return stem + (".exe" if sys.platform == "win32" else ".chatfile")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chatfile",
        description="Bundle a GGUF model into one double-clickable file, or run one.",
        epilog="Also: chatfile run|chat|info|bench MODEL ... (see chatfile run --help).")
    from runtime import __version__
    p.add_argument("--version", action="version", version=f"chatfile {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser("bundle", help="make one executable file that carries MODEL")
    b.add_argument("model", help="the GGUF file to embed")
    b.add_argument("-o", "--output", help="the bundle to write (default: next to here, "
                                          "named after the model)")
    b.add_argument("--format", choices=("exe", "pyz"), default="exe",
                   help="exe: PyInstaller executable (default); pyz: zipapp for python3")
    b.add_argument("--stub", help="use this stub instead of the cached/built one")
    b.add_argument("--args", default="", help='default run args baked in, e.g. "--ctx 4096 --cors"; '
                                             'a single flag needs "=": --args=--cors')
    b.add_argument("--title", default="", help="title shown in the chat page")
    b.add_argument("--force", action="store_true", help="overwrite an existing output")
    s = sub.add_parser("stub", help="build the model-free runtime (cached by `bundle`)")
    s.add_argument("--format", choices=("exe", "pyz"), default="exe")
    s.add_argument("-o", "--output", help="where to write it (default: the stub cache)")
    return p


def _check_baked_args(baked: list[str]) -> str | None:
    """What is wrong with args to bake into a bundle, or None. They are parsed the way
    every start of the bundle will parse them (`chatfile run MODEL *baked`), so that a
    bad one fails now and not on the machine of whoever double-clicks the bundle."""
    from runtime import cli as runtime_cli
    asks_help = next((a for a in baked if a in ("-h", "--help")), None)
    if asks_help:  # argparse would print the help and exit
        return f"{asks_help} is not an option to bake in"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = runtime_cli.build_parser().parse_args(["run", "model.gguf", *baked])
    except SystemExit:
        lines = err.getvalue().strip().splitlines()
        problem = lines[-1].split("error: ", 1)[-1] if lines else "they cannot be parsed"
        stray = problem.removeprefix("unrecognized arguments:").split()
        if not problem.startswith("unrecognized") or not stray:
            return problem
        if stray[0].startswith("-"):  # an option `run` does not have: say whose it is
            return _not_bakeable(stray[0].partition("=")[0]) or problem
        # a word of a value: `--args "--system=Be brief."` is split as a shell splits it
        return problem + ("; --args is split as a shell splits words, so quote a value "
                          "that has spaces: --args \"--system 'Be brief.'\"")
    hidden = runtime_cli.hidden_flag(baked)
    if hidden or args.chat_template_text is not None:  # (also given abbreviated)
        return f"{hidden or runtime_cli.TEMPLATE_TEXT_FLAG} is set by the bundle itself"
    if sum(a.partition("=")[0] == "--chat-template" for a in baked) > 1:
        return "give --chat-template once"
    return runtime_cli.check_args(args)


# A bundle's own options (runtime/__main__.py, _split_own_flags): they say what to do
# at one start (chat in the terminal, print the model's info, ...), not how to run.
BUNDLE_OWN_FLAGS = ("-m", "--model", "--cli", "--info", "--verify", "--extract", "--version",
                    "--licenses")


def _not_bakeable(flag: str) -> str | None:
    """Why FLAG, which `chatfile run` does not know, cannot be baked in, when it is one a
    bundle takes all the same; None for an unknown one. (`--args "--max-tokens 200"` was
    told "unrecognized arguments: --max-tokens 200; ... quote a value that has spaces".)"""
    from runtime import cli as runtime_cli
    if flag in BUNDLE_OWN_FLAGS:
        return (f"{flag} is one of the bundle's own options, given when it is started; "
                f"it cannot be baked in")
    chat_only = runtime_cli.chat_only_flags()
    if flag in chat_only:
        return (f"{flag} is an option of the terminal chat alone, given when it is "
                f"started (--cli {flag} {chat_only[flag]}); baked-in args are those of "
                f"`chatfile run`")
    return None


def _embed_template(baked: list[str]) -> tuple[list[str], str | None]:
    """`--chat-template FILE` among the baked args -> the file's text, checked now (it
    must compile) and carried in the bundle: the path would not exist, or not be the
    same file, on the machine that runs the bundle. Returns the args and FILE (None
    without one), so that later checks of the template can name the user's file.
    Raises ValueError."""
    from runtime import cli as runtime_cli
    from runtime.chat_template import load_template_file

    out, i, path = [], 0, None
    while i < len(baked):
        flag, eq, value = baked[i].partition("=")
        if flag == "--chat-template":
            if not eq:
                i += 1
                value = baked[i]  # (the parser made sure that it has one)
            text, path = load_template_file(value), value
            out.append(f"{runtime_cli.TEMPLATE_TEXT_FLAG}={text}")
        else:
            out.append(baked[i])
        i += 1
    # (An abbreviation such as --chat-t arrives in full: runtime.cli.full_flags.)
    return out, path


# `-o -` wrote a file named "-" (hundreds of MiB) while the pipe that was meant to get
# the bundle got the report. A bundle is written beside its name and renamed into place,
# so that no half-written one is ever left: it cannot stream to stdout.
STDOUT_REFUSED = ("chatfile: error: -o -: the output cannot go to stdout; give a file name "
                  "(-o ./- for a file named \"-\")")


def _is_utf8(text: str) -> bool:
    """False for a command-line value with bytes that are not UTF-8: Python decodes them
    to lone surrogates (surrogateescape), which no UTF-8 file can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_gguf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:  # missing (the usual case), or not to be read: nothing to protect here
        return False


def _special_file(path: str) -> bool:
    """A path that exists but is neither a regular file nor a directory: a FIFO (reading
    one blocks forever) or a device (an output renamed into place would replace it: `-o
    /dev/null` run as root replaced the system's /dev/null)."""
    return os.path.exists(path) and not (os.path.isfile(path) or os.path.isdir(path))


def _cwd_gone(paths: list[str]) -> str | None:
    """What to say when one of `paths` is relative and the current directory was deleted
    (or moved away) while the shell was in it, or None. Python's own message named
    neither: "[Errno 2] No such file or directory"."""
    relative = [p for p in paths if p and not os.path.isabs(p)]
    if not relative:  # absolute paths alone work all the same
        return None
    try:
        os.getcwd()
        return None
    except FileNotFoundError:
        pass
    pwd = os.environ.get("PWD", "")  # the shell's name for it (Python keeps no other)
    where = f" {pwd}" if os.path.isabs(pwd) and not os.path.isdir(pwd) else ""
    return (f"the current directory{where} no longer exists (deleted or moved away?), so "
            f"{relative[0]} cannot be found or written there; cd to a directory that "
            f"exists, or give absolute paths")


def cmd_bundle(a) -> int:
    from bundler import splice, stub
    from runtime import cli as runtime_cli

    gone = _cwd_gone([a.model, a.stub, a.output or _default_output(a.model, a.format)])
    if gone:
        print(f"chatfile: error: {gone}", file=sys.stderr)
        return 1
    for flag, text in (("--args", a.args), ("--title", a.title)):
        if not _is_utf8(text or ""):  # the trailer is UTF-8 JSON: it was a traceback
            print(f"chatfile: error: {flag} {text!r} holds bytes that are not UTF-8 text "
                  f"(typed in a terminal of another encoding?); give it as UTF-8",
                  file=sys.stderr)
            return 2
    try:
        baked = shlex.split(a.args)
    except ValueError as e:
        print(f"chatfile: error: cannot parse --args {a.args!r}: {e}", file=sys.stderr)
        return 2
    try:  # in full: a bundle's start looks for some flags by their full names
        baked = runtime_cli.full_flags(baked)
    except ValueError as e:
        print(f"chatfile: error: --args {a.args!r}: {e}", file=sys.stderr)
        return 2
    problem = _check_baked_args(baked)
    if problem:
        print(f"chatfile: error: --args {a.args!r}: {problem}", file=sys.stderr)
        return 2
    try:
        baked, template_file = _embed_template(baked)
    except ValueError as e:  # TemplateError is one
        print(f"chatfile: error: --args: {e}", file=sys.stderr)
        return 2
    if any(unicodedata.category(ch) == "Cc" for ch in a.title or ""):
        # A newline or an escape sequence would show as such in the page's header and in
        # the terminal that prints it (`--info`), on every machine the bundle goes to.
        print(f"chatfile: error: --title {a.title!r} holds control characters (a newline, "
              f"a tab, an escape); give it on one line", file=sys.stderr)
        return 2
    try:  # the trailer's size limit, before a possibly long stub build
        encode_trailer(Trailer(gguf_offset=0, gguf_size=0, sha256="0" * 64, args=tuple(baked),
                               title=a.title or "", format=a.format))
    except BundleError as e:
        print(f"chatfile: error: {e}", file=sys.stderr)
        return 2
    if a.output == "":  # it would read as not given, the bundle put in the current directory
        print("chatfile: error: -o needs a file name, not an empty one", file=sys.stderr)
        return 2
    if a.output == "-":
        print(STDOUT_REFUSED, file=sys.stderr)
        return 2
    for what, path in (("model", a.model), ("stub", a.stub)):
        if path and _special_file(path):
            print(f"chatfile: error: the {what} {path} is not a regular file (a pipe or a "
                  f"device); give the file itself", file=sys.stderr)
            return 1
    try:
        template = next((arg.partition("=")[2] for arg in baked
                         if runtime_cli.is_baked_template(arg)), None)
        splice.check_model(a.model, template, template_file)  # before a possibly long stub build
    except BundleError as e:
        print(f"chatfile: error: {e}", file=sys.stderr)
        return 1
    out = a.output or _default_output(a.model, a.format)
    if _special_file(out):  # even with --force
        print(f"chatfile: error: {out} is not a regular file (a device or a pipe); give the "
              f"bundle's file name with -o", file=sys.stderr)
        return 1
    try:
        splice.check_output(out, a.force, a.model)  # before a possibly long stub build
    except BundleError as e:
        print(f"chatfile: error: {e}", file=sys.stderr)
        return 1
    if a.stub:
        stub_path = a.stub
    else:
        cached = stub.cached_stub_path(a.format)
        if not cached.is_file():
            stub.check_cache_writable(cached)  # else "building..." came before the refusal
            # Measured on 2 cores: PyInstaller 35-45 s, shiv about 6 s.
            took = "about a minute" if a.format == "exe" else "a few seconds"
            print(f"building the {a.format} runtime stub once (cached in {cached.parent}); "
                  f"this takes {took}...", file=sys.stderr)
        t0 = time.perf_counter()
        stub_path = stub.get_stub(a.format, log=None)
        if time.perf_counter() - t0 > 1:
            print(f"stub built in {time.perf_counter() - t0:.1f} s: {stub_path}", file=sys.stderr)
    result = splice.splice(stub_path, a.model, out, fmt=a.format, args=baked, title=a.title,
                           force=a.force, progress=ProgressBar("bundling"))
    print(f"wrote {result.path} ({result.bundle_bytes / 1024**2:.1f} MiB) in "
          f"{result.seconds:.2f} s")
    print(f"model sha256: {result.sha256}")
    print(f"run it: {shlex.quote(os.path.join('.', result.path) if not os.path.dirname(result.path) else result.path)}"
          + (f" (needs Python {sys.version_info[0]}.{sys.version_info[1]} on the target, "
             f"the version its NumPy is compiled for)" if a.format == "pyz" else
             _needs_glibc() if a.format == "exe" else ""))
    for note in result.notes:  # e.g. a macOS bundle made where codesign does not exist
        print(f"note: {note}", file=sys.stderr)
    return 0


def _needs_glibc() -> str:
    """What a Linux executable built here asks of its target: PyInstaller carries this
    machine's libpython and libstdc++, which need this glibc (at most) or newer."""
    import platform
    lib, version = platform.libc_ver()
    if not sys.platform.startswith("linux") or lib != "glibc" or not version:
        return ""
    return f" (needs Linux with glibc {version} or newer, this machine's)"


def cmd_stub(a) -> int:
    from bundler import splice, stub

    if a.output == "":  # it would read as not given
        print("chatfile: error: -o needs a file name, not an empty one", file=sys.stderr)
        return 2
    if a.output == "-":
        print(STDOUT_REFUSED, file=sys.stderr)
        return 2
    if a.output and _special_file(a.output):
        print(f"chatfile: error: {a.output} is not a regular file (a device or a pipe); give "
              f"the stub's file name with -o", file=sys.stderr)
        return 1
    gone = _cwd_gone([a.output])
    if gone:
        print(f"chatfile: error: {gone}", file=sys.stderr)
        return 1
    if a.output and (os.path.isdir(a.output) or a.output.endswith(os.sep)):  # before "building
        # the stub" is announced; (a missing directory's name made a file without the /)
        print(f"chatfile: error: {a.output} is a directory; give the stub's file name with -o",
              file=sys.stderr)
        return 1
    try:
        carries_model = bool(a.output and os.path.isfile(a.output) and read_trailer(a.output))
    except BundleError:  # damaged: nothing worth keeping
        carries_model = False
    if carries_model:  # a bundle: the bare stub would replace the user's model in it
        print(f"chatfile: error: {a.output} is a bundle that carries a model; give the stub "
              f"another name with -o", file=sys.stderr)
        return 1
    if a.output and _is_gguf(a.output):  # `-o model.gguf` replaced the user's model
        print(f"chatfile: error: {a.output} is a GGUF model; give the stub another name "
              f"with -o", file=sys.stderr)
        return 1
    if a.output:  # as `bundle -o` does (the cache's own directory is made when missing)
        splice.check_output_dir(a.output)  # a BundleError: main says it, exit status 1
    out = a.output or str(stub.cached_stub_path(a.format))
    print(f"building the {a.format} stub -> {out}", file=sys.stderr)
    seconds = stub.build_stub(a.format, out, log=lambda m: print(m, file=sys.stderr))
    stub.prune_cache(a.format, Path(out))  # as `bundle` does after a build
    print(f"built {out} ({os.path.getsize(out) / 1024**2:.1f} MiB) in {seconds:.1f} s")
    return 0


def _args_value_needs_equals(argv: list[str]) -> str | None:
    """`bundle --args --cors`: argparse takes a lone --cors for an option of its own and
    says only "expected one argument". Say how to write it instead. (Taking it as the
    value would be a guess: `--args --force` may just as well mean an empty --args.)"""
    if not argv or argv[0] != "bundle":
        return None
    i = 1
    while i < len(argv) and argv[i] != "--":
        flag, value = argv[i], argv[i + 1] if i + 1 < len(argv) else None
        if len(flag) > 2 and "--args".startswith(flag):  # (argparse takes --arg too)
            if value is None:
                return "--args needs a value, e.g. --args \"--ctx 8192\""
            if value.startswith("-") and " " not in value:  # argparse's own rule
                return (f"--args {value}: a value that starts with \"-\" needs \"=\": write "
                        f"--args={shlex.quote(value)}")
        # Another option's value (--title --args) is not an --args; argparse will refuse.
        i += 2 if flag in ("-o", "--output", "--format", "--stub", "--title") else 1
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from runtime import cli as runtime_cli
    # Not bundle, stub or an option: one of runtime.cli's commands (run, chat, info,
    # bench), or none of ours. (Its parser is not built for bundle and stub.)
    elsewhere = bool(argv) and not argv[0].startswith("-") and argv[0] not in OWN_COMMANDS
    runtime_commands = runtime_cli.build_parser().commands if elsewhere else {}
    if elsewhere and argv[0] in runtime_commands:
        return runtime_cli.main(argv) or 0
    runtime_cli.tolerant_stdout()  # a model's or title's emoji on a Latin-1 terminal
    problem = _args_value_needs_equals(argv)
    if problem:
        print(f"chatfile: error: {problem}", file=sys.stderr)
        return 2
    parser = build_parser()
    if elsewhere:  # none of ours (runtime.cli's parser would list its own commands alone)
        choices = ", ".join(repr(c) for c in (*runtime_commands, *OWN_COMMANDS))
        parser.error(f"argument COMMAND: invalid choice: {argv[0]!r} (choose from {choices})")
    a = parser.parse_args(argv)
    if a.command is None:
        parser.print_help()
        return 2
    interrupt_on_termination()
    try:
        return cmd_bundle(a) if a.command == "bundle" else cmd_stub(a)
    except (BundleError, OSError) as e:
        print(f"chatfile: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("chatfile: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
