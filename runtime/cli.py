"""The runtime's commands: run (server + page), chat (terminal), info, bench.

`chatfile` (bundler/cli.py) hands these subcommands here, and a bundle's entry point
(runtime/__main__.py) calls `main()` with the model's place inside its own file through
the hidden flags --gguf-offset/--gguf-size.

NumPy is imported only after the arguments are parsed, because the BLAS thread count
(--threads) must be in the environment before NumPy loads its BLAS.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys


def _add_model_args(p: argparse.ArgumentParser, threads: bool = True) -> None:
    p.add_argument("model", help="path of a GGUF model file")
    # The GGUF inside a bigger file (a bundle); not for people.
    p.add_argument("--gguf-offset", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--gguf-size", type=int, default=None, help=argparse.SUPPRESS)
    if threads:
        p.add_argument("-t", "--threads", type=int, default=None, metavar="N",
                       help="CPU threads for matrix products (default: all cores)")


TEMPLATE_TEXT_FLAG = "--chat-template-text"

# The API's range (OpenAI's): a default the page would send and the API refuse would
# make every message of the page fail.
MAX_TEMP = 2.0


def _add_session_args(p: argparse.ArgumentParser, temp_help: str) -> None:
    p.add_argument("-c", "--ctx", type=int, default=4096, metavar="N",
                   help="context size in tokens (0: the model's trained context; capped at it)")
    p.add_argument("--chat-template", metavar="FILE", help="a Jinja chat template to use instead of the model's")
    # The text of a template baked into a bundle (`--args "--chat-template FILE"` reads
    # the file at bundle time): a path would not exist on the machine that runs it.
    p.add_argument(TEMPLATE_TEXT_FLAG, default=None, help=argparse.SUPPRESS)
    p.add_argument("--system", metavar="TEXT", help="default system prompt")
    p.add_argument("--temp", type=float, default=None, metavar="T", help=temp_help)
    # model.MODES, spelled out: importing runtime.model would import NumPy before
    # set_threads has set the BLAS thread count.
    p.add_argument("--mode", choices=("auto", "f32", "int8", "quant"), default="auto",
                   help="weights resident as float32, as int8 (approximate logits, a quarter of the memory), "
                        "or kept quantized (auto: float32 if it fits in 60%% of free RAM, else quantized)")
    p.add_argument("--title", default=None, help=argparse.SUPPRESS)
    add_reasoning_budget_args(p)


# llama.cpp's --reasoning-budget is an int32 (and so is a request's reasoning_budget_tokens)
REASONING_BUDGET_MAX_TOK = 2**31 - 1


def add_reasoning_budget_args(p: argparse.ArgumentParser) -> None:
    """--reasoning-budget and --reasoning-budget-message, as llama-server takes them (also
    `python -m runtime.server`'s)."""
    p.add_argument("--reasoning-budget", type=int, default=-1, metavar="N",
                   help="a thinking model's thinking: -1 unlimited (the default), 0 none "
                        "(its template gets enable_thinking false, and a thought it opens "
                        "anyway is closed at once), N: a thought is closed after N tokens, "
                        "as llama-server's")
    p.add_argument("--reasoning-budget-message", default="", metavar="MESSAGE",
                   help="text written before the end of a thought that the budget closes "
                        "(such as ' Time to answer.'), as llama-server's")


def add_cache_ram_arg(p: argparse.ArgumentParser) -> None:
    """--cache-ram, as llama-server's (also `python -m runtime.server`'s)."""
    p.add_argument("--cache-ram", type=int, default=None, metavar="MIB",
                   help="host memory for the prompts of other conversations, so that one "
                        "that comes back is not read again (default: 1024, or a quarter of "
                        "the RAM available after loading if less; 0: off; -1: no limit)")


def cache_ram_problem(mib: int | None) -> str | None:
    """What is wrong with a --cache-ram, or None."""
    if mib is not None and mib < -1:
        return "--cache-ram must be 0 or more MiB (0: off, -1: no limit)"
    return None


def add_slot_save_path_arg(p: argparse.ArgumentParser) -> None:
    """--slot-save-path, as llama-server's (also `python -m runtime.server`'s)."""
    p.add_argument("--slot-save-path", default=None, metavar="DIR",
                   help="a directory for POST /slots/0?action=save|restore: the server's "
                        "prompt state written to a file there and read back (default: off)")


def slot_save_path_problem(path: str | None) -> str | None:
    """What is wrong with a --slot-save-path, or None. Checked when the server starts
    (not when a bundle bakes it in: the directory is the running machine's)."""
    if path is not None and not os.path.isdir(path):
        return f"--slot-save-path: not a directory: {path}"
    return None


def reasoning_budget_problem(n: int) -> str | None:
    """What is wrong with a --reasoning-budget, or None."""
    if not -1 <= n <= REASONING_BUDGET_MAX_TOK:
        return (f"--reasoning-budget must be -1 (unlimited thinking), 0 (no thinking) or "
                f"a number of tokens up to {REASONING_BUDGET_MAX_TOK}")
    return None


def reasoning_kwargs(args) -> dict:
    """The chat template's variables for --reasoning-budget: 0 turns thinking off as
    llama-server did before its budgets counted tokens, with enable_thinking false
    (Qwen3's template then writes an empty `<think></think>`, DeepSeek-R1-Distill's does
    not open one); the budget itself closes a thought that a template opens anyway. Other
    values add nothing."""
    return {"enable_thinking": False} if getattr(args, "reasoning_budget", -1) == 0 else {}


def build_parser() -> argparse.ArgumentParser:
    from runtime import __version__
    ap = argparse.ArgumentParser(prog="chatfile", description="Chat with a GGUF model, offline.")
    ap.add_argument("--version", action="version", version=f"chatfile {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="start the chat server and open the chat page")
    _add_model_args(p)
    _add_session_args(p, "sampling temperature for requests that do not set one, 0 to 2 "
                         "(default 0.8; 0: greedy)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; the next free one if busy)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on the API")
    p.add_argument("--cors", action="store_true", help="allow cross-origin requests")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests for this host name (a reverse proxy's or a "
                        "tunnel's); bound to 127.0.0.1, only localhost names are answered")
    add_cache_ram_arg(p)
    add_slot_save_path_arg(p)

    p = sub.add_parser("chat", help="chat in the terminal (or answer piped stdin and exit)")
    _add_model_args(p)
    _add_session_args(p, "sampling temperature, 0 to 2 (default 0.8, as the server's; 0: "
                         "greedy, the same answer every time)")
    p.add_argument("-n", "--max-tokens", type=int, default=1024, metavar="N",
                   help="longest answer in tokens (default 1024; -1: until the context is full)")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="sampling seed: the same answers again for the same seed and --temp "
                        "(default: a new seed each run)")
    p.add_argument("-p", "--prompt", metavar="TEXT",
                   help="answer TEXT once and exit, as a question piped in is answered "
                        "(llama-cli's and llamafile's -p)")

    p = sub.add_parser("info", help="describe a GGUF model")
    _add_model_args(p, threads=False)
    p.add_argument(TEMPLATE_TEXT_FLAG, default=None, help=argparse.SUPPRESS)  # a bundle's
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("bench", help="measure load, prefill and decode speed")
    _add_model_args(p)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--mode", choices=("auto", "f32", "int8", "quant"), default="auto")
    p.add_argument("--against-llama-cpp", action="store_true",
                   help="also run llama.cpp (pip install 'chatfile[bench]') on the same file")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--plot", metavar="FILE", help="plot tok/s against prompt length (needs matplotlib)")
    ap.commands = sub.choices  # name -> its parser, for errors about its own arguments
    return ap


def set_threads(n: int | None) -> None:
    """Set the BLAS thread count (n > 0: check_args and build/bench_8b.py check it).
    Only effective before NumPy is first imported."""
    if n is None:
        return
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


HIDDEN_FLAGS = ("--gguf-offset", "--gguf-size", TEMPLATE_TEXT_FLAG)  # set by the bundle itself


def is_baked_template(arg: str) -> bool:
    """A bundle's baked-in arg that carries a chat template's text: FLAG=TEXT."""
    return arg.startswith(TEMPLATE_TEXT_FLAG + "=")


def describe_args(args: list[str]) -> str:
    """Baked-in args as a person would type them (quoted), a baked template's text
    summarised: `--chat-template (embedded, 1234 characters)`."""
    shown = []
    for a in args:
        if is_baked_template(a):
            text = a.partition("=")[2]
            shown.append(f"--chat-template (embedded, {len(text)} characters)")
        else:
            shown.append(shlex.quote(a))
    return " ".join(shown)


def hidden_flag(argv: list[str]) -> str | None:
    """The first of HIDDEN_FLAGS in argv (which a person must not set), or None."""
    return next((a.partition("=")[0] for a in argv if a.partition("=")[0] in HIDDEN_FLAGS), None)


def full_flags(args: list[str], commands=("run",), parser=None) -> list[str]:
    """The args with each abbreviated long option of `commands` written in full
    (`--no-brow` -> `--no-browser`), one for one, as argparse reads them. Some flags are
    looked for by their full names (a bundle's --cli drops the server's, the hidden ones
    are refused): a baked `--no-brow` made every `--cli` start fail with "unrecognized
    arguments", and a baked `--gguf-o 0` broke every start. `chatfile bundle` writes baked
    args in full with this, and a bundle's start does it again for bundles made before.
    A public option wins over a hidden one (`--chat-t`: --chat-template). Raises
    ValueError for an abbreviation of several, naming only the public ones: argparse's
    "ambiguous option" listed the hidden --gguf-offset and --gguf-size to a bundle's user.
    Unknown ones are left for the parser to refuse."""
    parser = parser or build_parser()
    public, hidden = {}, {}  # dicts: argparse's order, no repeats
    for command in commands:
        for action in parser.commands[command]._actions:
            names = hidden if action.help == argparse.SUPPRESS else public
            names.update(dict.fromkeys(f for f in action.option_strings if f.startswith("--")))
    out = list(args)
    for i, arg in enumerate(args):
        if arg == "--":  # what follows is no option
            break
        name, eq, value = arg.partition("=")
        if not name.startswith("--") or len(name) < 3 or name in public or name in hidden:
            continue
        matches = [f for f in public if f.startswith(name)]
        if len(matches) > 1:
            raise ValueError(f"ambiguous option: {name} could match {', '.join(matches)}")
        matches = matches or [f for f in hidden if f.startswith(name)]
        if len(matches) > 1:  # hidden ones alone: as if unknown, and not named
            raise ValueError(f"unrecognized arguments: {arg}")
        if matches:
            out[i] = matches[0] + eq + value
    return out


def check_args(args) -> str | None:
    """What is wrong with parsed arguments that argparse's types cannot catch, or None.
    (Also used by `chatfile bundle` on the arguments it bakes into a bundle.)"""
    if getattr(args, "threads", None) is not None and args.threads <= 0:
        return "--threads must be positive"
    if getattr(args, "ctx", 0) < 0:
        return "--ctx must be positive (or 0 for the model's trained context)"
    if not 0 <= getattr(args, "port", 0) <= 65535:
        return "--port must be between 0 and 65535"
    for flag in ("prompt_tokens", "gen_tokens"):
        if getattr(args, flag, 1) <= 0:
            return f"--{flag.replace('_', '-')} must be positive"
    problem = cache_ram_problem(getattr(args, "cache_ram", None))
    if problem:
        return problem
    if (getattr(args, "seed", None) or 0) < 0:
        return "--seed must be 0 or more"
    problem = reasoning_budget_problem(getattr(args, "reasoning_budget", -1))
    if problem:
        return problem
    max_tokens = getattr(args, "max_tokens", 1)
    if max_tokens == 0 or max_tokens < -1:
        return "--max-tokens must be positive (or -1 for no limit)"
    temp = getattr(args, "temp", None)
    if temp is not None and not 0 <= temp <= MAX_TEMP:  # also refuses nan
        return f"--temp must be between 0 and {MAX_TEMP:g}"
    if getattr(args, "model", None) == "":
        return "the model's path is empty; give the path of a .gguf file"
    # An empty value reads as "not given": --api-key '' would leave the API open, and an
    # empty file name would quietly be no file.
    for flag in ("api_key", "chat_template", "json", "plot"):
        if getattr(args, flag, None) == "":  # (info's --json is True/False)
            return f"--{flag.replace('_', '-')} needs a value, not an empty one"
    for name in getattr(args, "allow_host", ()):
        problem = _host_name_problem(name)
        if problem:
            return f"--allow-host {name!r}: {problem}"
    return None


def _host_name_problem(name: str) -> str | None:
    """Why NAME cannot be a Host header's name, or None. The server compares the name
    alone (no scheme, port or path), so `http://x.com/` or `x.com:443` would never match,
    and "" would match a malformed Host header or an `Origin: null`."""
    import ipaddress
    import urllib.parse
    try:
        ipaddress.IPv6Address(name)
        return None  # (the one form with ":" that is a name alone)
    except ValueError:
        pass
    try:
        parts = urllib.parse.urlsplit("//" + name)
        alone = parts.hostname == name.lower() and parts.port is None
    except ValueError:
        alone = False
    if not name.strip(".") or not alone or any(c.isspace() for c in name):
        return "give a host name alone, such as chat.example.com (no http://, port or path)"
    return None


def chat_only_flags(parser=None) -> dict[str, str]:
    """The terminal chat's options that `run` does not take, each with its metavar."""
    commands = (parser or build_parser()).commands
    run_flags = {f for a in commands["run"]._actions for f in a.option_strings}
    return {f: a.metavar or "N" for a in commands["chat"]._actions
            for f in a.option_strings if f not in run_flags}


def main(argv: list[str] | None = None, bundle: str | None = None) -> int:
    """`bundle`: the name of the bundle that runs this, whose user never typed a command."""
    tolerant_stdout()
    parser = build_parser()
    if bundle:
        # Its user never typed `chatfile run MODEL`: errors name the bundle and its --help,
        # not that usage line.
        def bundle_error(message):  # named as it was started: a command that runs here
            print(f"chatfile: error: {message} (`{started_as(bundle)} --help` lists the "
                  f"options)", file=sys.stderr)
            sys.exit(2)
        for p in (parser, *parser.commands.values()):
            p.error = bundle_error
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in parser.commands:  # abbreviations resolved as argparse would,
        try:  # but without naming the hidden options in its "ambiguous option"
            argv[1:] = full_flags(argv[1:], (argv[0],), parser)
        except ValueError as e:
            parser.commands[argv[0]].error(str(e))
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        chat_only = chat_only_flags(parser)
        asked = [a.partition("=")[0] for a in unknown if a.partition("=")[0] in chat_only]
        if bundle and args.command == "run" and asked:  # `./my-chat -p Hi`, without --cli
            parser.error(f"{asked[0]} is an option of the terminal chat: start it as "
                         f"`{started_as(bundle)} --cli {asked[0]} {chat_only[asked[0]]}`")
        # argparse would blame the top-level `chatfile COMMAND` usage; name the command's.
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    problem = check_args(args)
    if problem:
        print(f"chatfile: error: {problem}", file=sys.stderr)
        return 2
    set_threads(getattr(args, "threads", None))
    args.bundle = bundle
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `chatfile info m.gguf | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    except (OSError, ValueError, MemoryError) as e:  # GGUFError, TemplateError, ... are ValueErrors
        print(f"chatfile: error: {e}", file=sys.stderr)
        return 1


def _use_embedded_model(args) -> None:
    """A chatfile bundle given as MODEL: use the GGUF inside it (its trailer says where)."""
    with open(args.model, "rb") as f:
        if f.read(4) == b"GGUF":
            return
    from runtime.embedded import bare_stub_format, read_trailer, stub_without_model
    trailer = read_trailer(args.model)  # None: not a bundle, and the GGUF reader will say so
    if trailer is not None:
        args.gguf_offset, args.gguf_size = trailer.gguf_offset, trailer.gguf_size
        return
    stub_format = bare_stub_format(args.model)
    if stub_format:  # else "not a GGUF file: magic is b'\\x7fELF'"
        raise ValueError(stub_without_model(args.model, stub_format))


def _check_template_file(args, template: str) -> None:
    """The user's --chat-template must render a first message, as `chatfile bundle` checks
    a baked one: else every message would fail, and the page would not say that the
    user's file is at fault. It renders as the model will (Model.chat_prompt), from the
    GGUF's header and vocabulary only; a GGUF that cannot be read is left to the model's
    load, which says what is wrong."""
    from runtime.chat_template import TemplateError
    from runtime.model import Model
    try:
        model = Model.load(args.model, offset=args.gguf_offset, size=args.gguf_size,
                           vocab_only=True, chat_template=template)
    except ValueError:
        return
    try:
        model.chat_prompt([{"role": "user", "content": "Hello"}])
    except TemplateError as e:
        raise TemplateError(f"chat template file {args.chat_template} does not work with "
                            f"{args.model} ({e}); fix the file, or leave --chat-template "
                            f"out to use the model's own") from None
    finally:
        model.gguf.close()


def _listen_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port at all, or None (a busy port is no
    problem: the server moves on to the next). Without this the server tries 21 ports,
    each with its own DNS lookup of a bad name, and ends with the OS's bare words."""
    import errno
    import socket

    from runtime.connections import PORT_TRIES, bind_error
    remedy = ("use --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every network "
              "interface)")
    e = bind_error(host, port)
    if isinstance(e, socket.gaierror):
        return f"cannot listen on {host}: no such address or host name; {remedy}"
    if e is not None and e.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: it is not an address of this machine; {remedy}"
    if e is not None and e.errno == errno.EACCES and port + PORT_TRIES < 1024:
        # (none of the ports the server would try is allowed)
        return (f"cannot listen on port {port}: ports below 1024 need administrator "
                f"rights; use a port of 1024 or above, such as --port 8080")
    return None


def tolerant_stdout() -> None:
    """Show '?' for what stdout's encoding cannot represent, instead of failing. Under a
    Latin-1 or ASCII locale (LANG=de_DE.ISO-8859-1, PYTHONIOENCODING=ascii) a model name,
    a title or a baked-in --system with an emoji raised UnicodeEncodeError: a traceback
    from --help and --info (a bundle's, and `chatfile info`), and the server reported
    that the model "failed to load".
    (stderr already replaces them: Python opens it with errors="backslashreplace".)"""
    out = sys.stdout
    if out is not None and getattr(out, "errors", None) == "strict" and hasattr(out, "reconfigure"):
        try:
            out.reconfigure(errors="replace")
        except (OSError, ValueError):  # a stream that cannot change: leave it be
            pass


def stdout_is_open(what: str) -> bool:
    """False, after saying so, when the process was started with stdout closed (`>&-`):
    `what` (a command, a bundle's --licenses) would show nothing. Also used by a bundle."""
    if sys.stdout is not None:
        return True
    print(f"chatfile: error: stdout is closed, so {what} could show nothing; run it in a "
          f"terminal or send its output to a file (> out.txt)", file=sys.stderr)
    return False


def piped_example(bundle: str | None) -> str:
    """How to pipe a question in, as the user started us: a bundle's user never typed
    `chatfile chat`, and has no model.gguf."""
    if bundle:
        return f"echo 'Hello' | {started_as(bundle)} --cli"
    return "echo 'Hello' | chatfile chat model.gguf"


def started_as(bundle: str) -> str:
    """The bundle's command as a shell here runs it: started by its path (`dir/my chat`,
    which works from here) or through PATH, as typed; else it is in the current
    directory, where a shell needs the `./`. A .pyz that is not executable (a download
    loses the bit) was started by Python, and only runs that way: `python3 my-chat.pyz`."""
    typed = sys.argv[0] if sys.argv and os.path.basename(sys.argv[0]) == bundle else bundle
    import shutil
    if (not getattr(sys, "frozen", False) and os.path.isfile(typed)
            and not os.access(typed, os.X_OK)):
        return f"{_python_command()} {shlex.quote(typed)}"
    if os.sep in typed or shutil.which(typed):
        return shlex.quote(typed)
    return "./" + shlex.quote(typed)


def _python_command() -> str:
    """This Python as a shell here finds it: `python3` when that is this one, else its
    path (a venv's, or a `python3.11` picked because python3 is another version)."""
    import shutil
    found = shutil.which("python3")
    try:
        if found and os.path.samefile(found, sys.executable):
            return "python3"
    except OSError:
        pass
    return shlex.quote(sys.executable or "python3")


def terminal_chat_command(args) -> str:
    """The command that chats with this model in the terminal instead of the page: a
    bundle's `--cli` (its user never typed `chatfile run`), else `chatfile chat MODEL`."""
    if args.bundle:
        return f"{started_as(args.bundle)} --cli"
    return f"chatfile chat {shlex.quote(args.model)}"


def _dispatch(args) -> int:
    if not os.path.isfile(args.model):
        # Fail before starting a server that could only report the same thing.
        what = ("it is a directory" if os.path.isdir(args.model) else
                "not a regular file" if os.path.exists(args.model) else
                "a symbolic link that leads nowhere" if os.path.islink(args.model) else
                "no such file")
        raise FileNotFoundError(f"cannot open {args.model}: {what}")
    if args.command != "run" and not stdout_is_open(args.command):
        return 2
    if args.gguf_offset == 0 and args.gguf_size is None:
        _use_embedded_model(args)
    if args.command == "info":
        from runtime.info import print_info
        return print_info(args.model, offset=args.gguf_offset, size=args.gguf_size, as_json=args.json,
                          template_text=args.chat_template_text)
    if args.command == "bench":
        from runtime.bench import run_bench
        return run_bench(args)
    template = getattr(args, "chat_template_text", None)
    if args.chat_template:  # given when the bundle is run: it wins over a baked one
        from runtime.chat_template import load_template_file
        template = load_template_file(args.chat_template)
        _check_template_file(args, template)
    if args.command == "run":
        from runtime.server import serve
        if args.host.startswith("[") and args.host.endswith("]"):
            args.host = args.host[1:-1]  # [::1] as in a URL: the address inside
        problem = (_listen_problem(args.host, args.port)
                   or slot_save_path_problem(args.slot_save_path))
        if problem:
            print(f"chatfile: error: {problem}", file=sys.stderr)
            return 1
        return serve(args.model, gguf_offset=args.gguf_offset, gguf_size=args.gguf_size,
              host=args.host, port=args.port, api_key=args.api_key, n_ctx=args.ctx,
              threads=args.threads, chat_template=template, system=args.system,
              title=args.title, cors=args.cors, allow_hosts=args.allow_host,
              open_browser=not args.no_browser,
              temperature=args.temp, mode=args.mode,
              template_kwargs=reasoning_kwargs(args), reasoning_budget=args.reasoning_budget,
              reasoning_budget_message=args.reasoning_budget_message,
              cache_ram_mib=args.cache_ram, terminal_chat=terminal_chat_command(args),
              slot_save_path=args.slot_save_path)
    if args.command == "chat":
        example = piped_example(args.bundle)
        if sys.stdin is None and args.prompt is None:  # started with stdin closed (`0<&-`): nothing to read from
            print(f"chatfile: error: stdin is closed; run it in a terminal or pipe a "
                  f"question in, for example: {example}", file=sys.stderr)
            return 2
        if args.prompt is not None and not args.prompt.strip():  # said before the load
            from runtime.terminal import PROMPT_EXAMPLE, empty_question
            sys.stderr.write(empty_question("--prompt", PROMPT_EXAMPLE))
            return 2
        from runtime import file_lease
        # A copy over the model file then stops the chat with a message.
        with file_lease.armed():
            return _terminal_chat(args, template, example)
    raise AssertionError(args.command)


def _terminal_chat(args, template, example: str) -> int:
    from runtime.model import Model
    from runtime.sampling import SamplingParams
    from runtime.terminal import chat, pastes_marked_while_loading
    watched = sys.stderr is not None and sys.stderr.isatty()  # piped runs keep stderr quiet
    if watched:  # the 2-4 s before the prompt
        print(f"chatfile: loading {os.path.basename(args.model)}...", file=sys.stderr,
              flush=True)
    with pastes_marked_while_loading():  # a paste meanwhile is one message, not one per line
        model = Model.load(args.model, offset=args.gguf_offset, size=args.gguf_size,
                           mode=args.mode, chat_template=template)
    if watched and not model.chat_template:  # its answers read like continued text: say why
        from runtime.info import BASE_MODEL_NOTE
        print(f"chatfile: {BASE_MODEL_NOTE}", file=sys.stderr, flush=True)
    # The server's defaults (SamplingParams'), so that a chat in the terminal and on
    # the page sound alike; --temp 0 for the same answer every time.
    params = SamplingParams(seed=args.seed) if args.temp is None else \
        SamplingParams(temperature=args.temp, seed=args.seed)
    return chat(model, n_ctx=args.ctx, system=args.system, params=params,
                max_tokens=args.max_tokens, piped_example=example, prompt=args.prompt,
                template_kwargs=reasoning_kwargs(args), reasoning_budget=args.reasoning_budget,
                reasoning_budget_message=args.reasoning_budget_message) or 0


if __name__ == "__main__":
    sys.exit(main())
