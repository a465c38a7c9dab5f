"""`chatfile info` and `chatfile bench` as a user runs them.

If these fail, a user asking what is in a model file, or how fast it runs, gets a
traceback or a wrong description. Timings are printed, never asserted.
"""
import argparse
import json
import os
import subprocess
import sys

import pytest

from runtime import gguf
from runtime.gguf import GGUFError
from tests.conftest import MODELS, ROOT, non_ascii_model


def chatfile(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "bundler.cli", *map(str, args)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)


def test_info_describes_the_model():
    path = MODELS / "tiny-gemma3-q4_k_m.gguf"
    r = chatfile("info", path)
    assert r.returncode == 0, r.stderr
    g = gguf.read(path)
    n_params = sum(t.n_elements for t in g.tensors.values())
    assert "architecture:   gemma3" in r.stdout
    assert f"{n_params:,}" in r.stdout
    assert "context length: 256" in r.stdout
    assert "chat template:  no" in r.stdout
    assert "note:           this model has no chat template, so it is probably a base model" in r.stdout
    for t in ("F32", "Q4_K", "Q6_K"):
        assert t in r.stdout


def test_info_json_counts_tensor_types():
    path = MODELS / "tiny-llama-q4_k_m.gguf"
    r = chatfile("info", path, "--json")
    d = json.loads(r.stdout)
    g = gguf.read(path)
    assert d["tensors"] == len(g.tensors)
    assert sum(v["tensors"] for v in d["tensor_types"].values()) == len(g.tensors)
    assert d["tensor_types"]["Q4_K"]["bytes"] == sum(t.n_bytes for t in g.tensors.values()
                                                    if t.type_name == "Q4_K")


def test_info_on_a_broken_file_is_a_clear_error(tmp_path):
    p = tmp_path / "broken.gguf"
    p.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16)
    r = chatfile("info", p)
    assert r.returncode == 1
    assert r.stderr.startswith("chatfile: error: ") and "Traceback" not in r.stderr


def test_run_on_a_missing_file_is_a_clear_error(tmp_path):
    r = chatfile("chat", tmp_path / "nope.gguf")
    assert r.returncode == 1 and "cannot open" in r.stderr and "Traceback" not in r.stderr


def test_bench_smoke_prints_the_table(tmp_path):
    """CI's smoke benchmark on a tiny model: the table and the JSON, no timing asserted."""
    out = tmp_path / "bench.json"
    r = chatfile("bench", MODELS / "tiny-qwen2-q8_0.gguf", "--prompt-tokens", "64",
                 "--gen-tokens", "16", "--threads", "2", "--json", out)
    print(r.stdout)
    assert r.returncode == 0, r.stderr
    for label in ("load (s)", "prefill (tok/s)", "decode (tok/s)", "time to first token",
                  "peak RSS (MB)", "decode weight reads (GB/s)"):
        assert label in r.stdout
    d = json.loads(out.read_text())
    assert d["threads"] == 2 and d["chatfile"]["n_gen"] == 16
    assert d["chatfile"]["prefill_tok_s"] > 0 and d["chatfile"]["decode_tok_s"] > 0
    assert "f32 weights)" in r.stdout and d["chatfile"]["mode"] == "f32"


def test_bench_in_int8_mode_says_so():
    r = chatfile("bench", MODELS / "tiny-qwen2-q8_0.gguf", "--prompt-tokens", "16",
                 "--gen-tokens", "4", "--threads", "2", "--mode", "int8")
    assert r.returncode == 0, r.stderr
    assert "int8 weights)" in r.stdout and "decode (tok/s)" in r.stdout


def test_bad_numbers_are_refused_before_anything_loads():
    model = MODELS / "tiny-qwen2-q8_0.gguf"
    for args, why in ((["run", model, "--ctx", "-1"], "--ctx must be positive"),
                      (["run", model, "--threads", "0"], "--threads must be positive"),
                      (["run", model, "--port", "70000"], "--port must be between 0 and 65535"),
                      (["run", model, "--port", "-1"], "--port must be between 0 and 65535"),
                      (["chat", model, "--temp", "nan"], "--temp must be between 0 and 2"),
                      # The page sends the server's default with every message, and the API
                      # refuses more than 2: a server started with --temp 3 could not chat.
                      (["run", model, "--temp", "3"], "--temp must be between 0 and 2"),
                      (["chat", model, "--max-tokens", "-5"], "--max-tokens must be positive"),
                      (["chat", model, "--max-tokens", "0"], "--max-tokens must be positive"),
                      (["bench", model, "--gen-tokens", "0"], "--gen-tokens must be positive"),
                      (["bench", model, "--prompt-tokens", "-3"], "--prompt-tokens must be positive")):
        r = chatfile(*args, timeout=60)
        assert r.returncode == 2 and r.stderr.startswith(f"chatfile: error: {why}"), (args, r.stderr)
        assert r.stderr.count("\n") == 1  # one line, no traceback


def test_threads_also_bound_the_load_and_int8_threads():
    # --threads N reaches BLAS through the environment (cli.set_threads); our own thread
    # pools (dequantization at load, int8 decode) must follow it, not the core count.
    code = ("import sys; from runtime import cli; cli.set_threads(int(sys.argv[1]) or None); "
            "from runtime import weights; print(weights.LOAD_THREADS)")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    for asked, expected in ((1, 1), (3, 3), (0, len(os.sched_getaffinity(0)))):
        r = subprocess.run([sys.executable, "-c", code, str(asked)], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
        assert r.returncode == 0 and int(r.stdout) == expected, (asked, r.stdout, r.stderr)


def test_a_server_that_cannot_listen_exits_with_an_error_code():
    r = chatfile("run", MODELS / "tiny-qwen2-q8_0.gguf", "--no-browser",
                 "--host", "nosuchhost.invalid", "--port", "31555", timeout=60)
    assert r.returncode == 1 and "cannot listen on nosuchhost.invalid" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_context_zero_means_the_trained_context_and_more_is_capped():
    from runtime.model import Model
    m = Model.load(MODELS / "tiny-qwen2-q8_0.gguf", vocab_only=True)
    assert m.n_ctx_train > 0
    assert m.context_size(0) == m.n_ctx_train
    assert m.context_size(10 * m.n_ctx_train) == m.n_ctx_train
    assert m.context_size(m.n_ctx_train - 1) == m.n_ctx_train - 1
    m.n_ctx_train = 0  # a file that does not say
    assert m.context_size(0) == 4096 and m.context_size(100_000) == 100_000


def test_bench_checks_its_optional_parts_before_measuring(tmp_path, monkeypatch, capsys):
    """A missing llama-cpp-python or matplotlib, or a --json/--plot path that cannot be
    written, is reported at once instead of after the whole benchmark."""
    import importlib.util

    from runtime import bench
    from runtime.cli import build_parser
    model = MODELS / "tiny-qwen2-q8_0.gguf"
    measured = []
    monkeypatch.setattr(bench, "bench_chatfile", lambda *a, **k: measured.append(a))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("llama_cpp", "matplotlib")
                        else real_find_spec(name, *a))
    for extra, why in ((["--against-llama-cpp"], "--against-llama-cpp needs the Python package llama_cpp"),
                       (["--plot", tmp_path / "p.svg"], "--plot needs the Python package matplotlib"),
                       (["--json", tmp_path / "nodir" / "b.json"], "its directory does not exist")):
        args = build_parser().parse_args(["bench", str(model), *map(str, extra)])
        assert bench.run_bench(args) == 1
        assert why in capsys.readouterr().err
    assert measured == []


def _tiny_pyz_bundle(tmp_path):
    """A .pyz bundle of the tiny model, spliced onto a stub that is just a zip."""
    import zipfile

    from bundler.splice import splice
    stub = tmp_path / "stub.pyz"
    with open(stub, "wb") as f:
        f.write(b"#!/usr/bin/env python3\n")
        with zipfile.ZipFile(f, "w") as z:
            z.writestr("__main__.py", "print('stub')\n")
    out = tmp_path / "tiny.pyz"
    splice(stub, MODELS / "tiny-qwen2-q8_0.gguf", out, fmt="pyz", fsync=False)
    return out


def test_bench_of_a_bundle_against_llama_cpp_is_refused_before_measuring(tmp_path, monkeypatch,
                                                                         capsys):
    """llama.cpp reads a GGUF from its start: on a bundle it failed, and the benchmark said
    "is the optional extra installed?" after loading and before its own note. Now it says
    at once what to do. --plot measured the bundle as if it were a GGUF at offset 0."""
    import importlib.util
    import types

    from runtime import bench
    from runtime.cli import main
    bundle = _tiny_pyz_bundle(tmp_path)
    measured = []
    monkeypatch.setattr(bench, "bench_chatfile",
                        lambda path, n, g, mode, offset=0, size=None, *a: measured.append(offset)
                        or {"prefill_tok_s": 1.0})
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name in ("llama_cpp", "matplotlib")
                        else real_find_spec(name, *a))
    assert main(["bench", str(bundle), "--against-llama-cpp"]) == 1
    err = capsys.readouterr().err
    assert "llama.cpp cannot read the one inside a bundle" in err and "--extract" in err, err
    assert "optional extra" not in err and measured == []

    pyplot = types.SimpleNamespace(**{f: lambda *a, **k: None for f in
                                      ("figure", "plot", "xlabel", "ylabel", "legend", "title", "savefig")})
    monkeypatch.setitem(sys.modules, "matplotlib", types.SimpleNamespace(use=lambda b: None, pyplot=pyplot))
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)
    monkeypatch.setattr(bench, "format_table", lambda *a: "")
    from runtime.embedded import read_trailer
    offset = read_trailer(str(bundle)).gguf_offset
    assert main(["bench", str(bundle), "--prompt-tokens", "16", "--gen-tokens", "4",
                 "--plot", str(tmp_path / "p.svg")]) == 0
    assert measured and set(measured) == {offset}, (measured, offset)  # the plot's runs too


def test_weights_that_do_not_fit_in_memory_are_a_clear_error(monkeypatch, capsys):
    import errno
    import mmap

    from runtime import weights
    from runtime.cli import main

    real_mmap = mmap.mmap

    def no_anonymous_memory(fileno, *a, **k):  # the GGUF file itself still maps
        if fileno == -1:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        return real_mmap(fileno, *a, **k)
    monkeypatch.setattr(weights.mmap, "mmap", no_anonymous_memory)
    assert main(["chat", str(MODELS / "tiny-llama-q8_0.gguf"), "--mode", "f32"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("chatfile: error: cannot allocate") and "--mode quant" in err, err


def test_a_numpy_built_for_another_python_is_named(tmp_path, monkeypatch, capsys):
    # A .pyz carries NumPy's compiled core for one Python; a bundle started by another
    # must say which one it needs before NumPy's import fails with a traceback.
    import importlib.machinery
    import importlib.util
    from runtime import __main__ as entry
    core = tmp_path / "numpy" / "_core"
    core.mkdir(parents=True)
    fake = core / "_multiarray_umath.cpython-399-x86_64-linux-gnu.so"
    fake.write_bytes(b"")
    spec = importlib.machinery.ModuleSpec("numpy", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path / "numpy")]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    problem = entry.numpy_mismatch()
    assert problem and "compiled for Python 3.99 on x86_64-linux-gnu" in problem
    assert "run it with python3.99" in problem
    assert entry._runtime_cli(["info", "x.gguf"]) == 2  # before anything imports NumPy
    assert capsys.readouterr().err == f"chatfile: error: {problem}\n"
    fake.rename(core / ("_multiarray_umath" + importlib.machinery.EXTENSION_SUFFIXES[0]))
    assert entry.numpy_mismatch() is None  # this Python's own suffix: it loads


def test_small_command_line_mistakes_get_a_clear_line_early(tmp_path):
    model = MODELS / "tiny-qwen2-q8_0.gguf"
    # The benchmark checks what it cannot do before minutes of measuring.
    r = chatfile("bench", model, "--json", tmp_path, timeout=60)
    assert r.returncode == 1 and r.stderr == f"chatfile: error: cannot write {tmp_path}: it is a directory\n"
    r = chatfile("bench", model, "--prompt-tokens", "100000", timeout=60)
    assert r.returncode == 1 and "need a context of 100128 tokens; this model's is" in r.stderr
    assert r.stderr.count("\n") == 1
    # Something that exists but is no file is not "no such file".
    r = chatfile("info", "/dev/null", timeout=60)
    assert r.returncode == 1 and r.stderr == "chatfile: error: cannot open /dev/null: not a regular file\n"


def test_info_into_a_pipe_closed_early_is_not_an_error():
    """`chatfile info m.gguf | head -1`: the reader leaving is normal, not 'Broken pipe'."""
    code = ("import sys; from runtime import cli; sys.argv[0] = 'chatfile'; "
            "sys.exit(cli.main(sys.argv[1:]))")
    p = subprocess.Popen([sys.executable, "-c", code, "info", str(MODELS / "tiny-qwen2-q8_0.gguf")],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the first line: every write fails
    err = p.stderr.read().decode()
    assert p.wait(60) == 0 and err == "", err


def test_an_unknown_option_is_blamed_on_its_command():
    r = chatfile("info", MODELS / "tiny-qwen2-q8_0.gguf", "--port", "1", timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("usage: chatfile info ")
    assert r.stderr.endswith("chatfile info: error: unrecognized arguments: --port 1\n")


def test_version_and_options_that_do_nothing():
    from runtime import __version__
    for cmd in (["-m", "bundler.cli", "--version"], ["-m", "runtime.cli", "--version"]):
        r = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0 and r.stdout == f"chatfile {__version__}\n", (cmd, r.stderr)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'path = "runtime/__init__.py"' in pyproject
    # `info` reads the header only: a --threads there would pretend to do something.
    r = chatfile("info", MODELS / "tiny-qwen2-q8_0.gguf", "--threads", "2", timeout=60)
    assert r.returncode == 2 and "unrecognized arguments: --threads 2" in r.stderr


def test_terminal_chat_samples_as_the_server_does_unless_told(monkeypatch):
    """`chatfile chat` used to answer greedily while the server and page sample at 0.8:
    a small model then gave the same (often looping) answer to every run."""
    import runtime.model
    import runtime.terminal
    from runtime.cli import main
    from runtime.sampling import SamplingParams
    seen = {}
    monkeypatch.setattr(runtime.model.Model, "load", classmethod(lambda cls, *a, **k: object()))
    monkeypatch.setattr(runtime.terminal, "chat", lambda model, **kw: seen.update(kw) or 0)
    model = str(MODELS / "tiny-qwen2-q8_0.gguf")
    assert main(["chat", model]) == 0
    assert seen["params"] == SamplingParams() and seen["params"].temperature > 0
    assert main(["chat", model, "--temp", "0"]) == 0
    assert seen["params"].temperature == 0


def test_the_browser_is_opened_only_where_there_is_a_display(monkeypatch, capsys):
    """Over SSH Python's webbrowser would start a text browser (w3m, lynx) in the terminal
    the server runs in, and take its keyboard. Where no browser opens (no display, or
    none installed), the user is told to open the address: "listening on" alone left a
    double-clicked bundle without a page and without a word on where it was."""
    import webbrowser

    from runtime import server
    opened = []
    found = True  # what webbrowser.open says: False when it found no browser

    def fake_open(url):
        opened.append(url)
        return found
    monkeypatch.setattr(webbrowser, "open", fake_open)
    monkeypatch.setattr(server.sys, "platform", "linux")
    url = "http://127.0.0.1:1/"
    cases = (({}, True, [], True), ({"DISPLAY": ":0"}, True, [url], False),
             ({"WAYLAND_DISPLAY": "w"}, True, [url], False), ({"DISPLAY": ":0"}, False, [url], True))
    for env, found, expected, told in cases:
        for k in ("DISPLAY", "WAYLAND_DISPLAY"):
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        opened.clear()
        server._open_browser(url)
        assert opened == expected, env
        said = capsys.readouterr().out
        assert (f"open {url} in one" in said) == told, (env, found, said)


def test_without_a_browser_the_terminal_chat_is_named_as_the_user_would_type_it(
        monkeypatch, capsys, tmp_path):
    """Over SSH a double-clicked bundle's user was told to open a URL in a browser they
    do not have, and never that the same file chats in the terminal with --cli."""
    from runtime import server
    from runtime.cli import build_parser, terminal_chat_command
    for k in ("DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(server.sys, "platform", "linux")
    bundle = tmp_path / "my chat"
    monkeypatch.setattr(sys, "argv", [str(bundle)])
    args = build_parser().parse_args(["run", str(bundle)])
    args.bundle = "my chat"
    command = terminal_chat_command(args)
    assert command == f"'{bundle}' --cli"
    server._open_browser("http://127.0.0.1:1/", command)
    said = capsys.readouterr().out
    assert "open http://127.0.0.1:1/ in one" in said and f"run `{command}`" in said
    args.bundle = None
    assert terminal_chat_command(args) == f"chatfile chat '{bundle}'"
    server._open_browser("http://127.0.0.1:1/")
    assert "--cli" not in capsys.readouterr().out


def test_a_template_file_that_fails_or_is_empty_is_named(tmp_path, bad_template_files):
    """`run`/`chat --chat-template FILE`: a template that cannot render a first message
    is refused at the start, naming the file (the server used to start, and every message
    failed without saying whose template); an empty or blank file is refused instead of
    quietly leaving the model's template in use."""
    model = MODELS / "tiny-llama-q8_0.gguf"
    refuses, empty, blank = (bad_template_files[k] for k in ("refuses", "empty", "blank"))
    for command in ("run", "chat"):
        for template, why in ((refuses, f"chat template file {refuses} does not work with "
                                        f"{model} (chat template error: no system); fix the file"),
                              (empty, f"chat template file {empty} is empty"),
                              (blank, f"chat template file {blank} is empty")):
            r = subprocess.run([sys.executable, "-m", "runtime.cli", command, model,
                                "--chat-template", template, "--no-browser", "--port", "0"][
                                   :None if command == "run" else -3],
                               cwd=ROOT, input="hi\n", capture_output=True, text=True, timeout=60)
            assert r.returncode == 1 and r.stderr.startswith(f"chatfile: error: {why}"), \
                (command, template, r.stderr)
            assert r.stderr.count("\n") == 1 and r.stdout == "", r.stderr


def test_a_bundle_help_lists_every_run_option_it_passes_on():
    """A bundle's --help named the `chatfile run` options it passes through by hand, and
    missed --mode, which the README recommends (--mode int8). Every option that
    `chatfile run --help` shows is in a bundle's help (its own or passed through)."""
    from runtime.cli import build_parser
    r = subprocess.run([sys.executable, "-m", "runtime", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    shown = set(r.stdout.replace(",", " ").replace("(", " ").replace(")", " ").split())
    run = build_parser().commands["run"]
    for action in run._actions:
        if action.option_strings and action.help != argparse.SUPPRESS:
            assert action.option_strings[-1] in shown, (action.option_strings, r.stdout)
    assert "--mode" in shown and "--gguf-offset" not in r.stdout and "--title" not in shown


def test_a_model_that_fails_to_load_is_named_once(tmp_path):
    """A truncated GGUF said "tensor 'output.weight' ... extends past the end of the file"
    without saying which file; load errors now name it, once."""
    model = MODELS / "tiny-llama-q8_0.gguf"
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(model.read_bytes()[:300_000])
    for command in ("chat", "info"):
        r = subprocess.run([sys.executable, "-m", "runtime.cli", command, cut], cwd=ROOT,
                           input="hi\n", capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and r.stderr.startswith(f"chatfile: error: {cut}: tensor "), r.stderr
        assert "extends past the end of the file" in r.stderr and "download or copy it again" in r.stderr
        assert r.stderr.count(str(cut)) == 1 and r.stderr.count("\n") == 1, r.stderr
    tiny = tmp_path / "tiny.gguf"  # a message that names the file already is left alone
    tiny.write_bytes(b"GGUF")
    r = subprocess.run([sys.executable, "-m", "runtime.cli", "info", tiny], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.stderr == f"chatfile: error: {tiny} is too small to be a GGUF file (4 bytes)\n"
    # A check of the model itself (a tensor missing), past the GGUF reader.
    from runtime.model import Model
    from tests.runtime.test_fuzz_gguf import layout, serialize
    lay = layout(model)
    half = tmp_path / "half.gguf"
    half.write_bytes(serialize(lay, tinfos=lay.tinfos[:len(lay.tinfos) // 2]))
    with pytest.raises(GGUFError) as e:
        Model.load(half, mode="quant")
    assert str(e.value).startswith(f"{half}: tensor ") and "is missing" in str(e.value), e.value


def test_empty_values_are_refused_not_read_as_not_given():
    """An empty value reads as "not given": `--api-key ''` started a server open to every
    request, `--chat-template ''` used the model's template, `bench --json ''` wrote
    nothing, all without a word. `--allow-host` takes a name alone: '' matched an
    `Origin: null`, and a URL or a name with a port never matched anything."""
    from runtime.cli import build_parser, check_args
    model = MODELS / "tiny-qwen2-q8_0.gguf"
    for args, why in ((["run", model, "--api-key", ""], "--api-key needs a value, not an empty one"),
                      (["chat", model, "--chat-template", ""], "--chat-template needs a value"),
                      (["bench", model, "--json", ""], "--json needs a value"),
                      (["bench", model, "--plot", ""], "--plot needs a value"),
                      (["info", ""], "the model's path is empty; give the path of a .gguf file")):
        r = chatfile(*args, timeout=60)
        assert r.returncode == 2 and r.stderr.startswith(f"chatfile: error: {why}"), (args, r.stderr)
        assert r.stderr.count("\n") == 1, r.stderr
    parser = build_parser()
    for name in ("", ".", "http://chat.example.com/", "chat.example.com:443", "x.com/chat",
                 "a b", "user@x.com"):
        problem = check_args(parser.parse_args(["run", "m.gguf", "--allow-host", name]))
        assert problem == f"--allow-host {name!r}: give a host name alone, such as " \
                          "chat.example.com (no http://, port or path)", name
    for name in ("chat.example.com", "Chat.Example.com.", "my-box", "192.168.1.5", "fe80::1"):
        assert check_args(parser.parse_args(["run", "m.gguf", "--allow-host", name])) is None


def test_a_fifo_or_a_device_as_template_is_refused_not_waited_on(tmp_path):
    """Reading a FIFO blocks until something writes to it: `--chat-template FIFO` hung."""
    fifo = tmp_path / "template.fifo"
    os.mkfifo(fifo)
    for template in (fifo, "/dev/null"):
        r = subprocess.run([sys.executable, "-m", "runtime.cli", "chat",
                            MODELS / "tiny-llama-q8_0.gguf", "--chat-template", template],
                           cwd=ROOT, input="hi\n", capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and r.stderr == (
            f"chatfile: error: chat template file {template} is not a regular file (a pipe "
            f"or a device); give a file that holds the template\n"), r.stderr


def test_a_host_that_is_not_here_is_named_with_what_to_use(monkeypatch, capsys):
    """The server tried 21 ports (each with a DNS lookup of a bad name) and ended with
    the OS's bare words ("Cannot assign requested address")."""
    import errno
    import socket

    from runtime import cli, server
    model = MODELS / "tiny-qwen2-q8_0.gguf"
    remedy = "use --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every network interface)"
    for host, why in (("192.0.2.1", "it is not an address of this machine"),  # TEST-NET-1
                      ("nosuchhost.invalid", "no such address or host name")):
        r = chatfile("run", model, "--no-browser", "--host", host, "--port", "31555", timeout=60)
        assert r.returncode == 1 and r.stderr == (
            f"chatfile: error: cannot listen on {host}: {why}; {remedy}\n"), r.stderr
    # A port below 1024 without the right to it: said once the server could try no other.
    def refuse(self, address):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(socket.socket, "bind", refuse)
    assert cli._listen_problem("127.0.0.1", 80) == (
        "cannot listen on port 80: ports below 1024 need administrator rights; use a port "
        "of 1024 or above, such as --port 8080")
    assert cli._listen_problem("127.0.0.1", 1010) is None  # the server goes on to 1024
    # [::1] as a URL writes it: the address inside.
    seen = {}
    monkeypatch.setattr(cli, "_listen_problem", lambda host, port: None)
    monkeypatch.setattr(server, "serve", lambda model, **kw: seen.update(kw) or 0)
    assert cli.main(["run", str(model), "--host", "[::1]", "--no-browser"]) == 0
    assert seen["host"] == "::1"


def test_output_commands_with_stdout_closed_say_so(monkeypatch, capsys):
    """Started with stdout closed (`>&-`), `chat` died with a traceback in its first
    write, `info` printed nothing and exited 0, a bundle's --licenses died too."""
    from runtime.cli import main
    monkeypatch.setattr(sys, "stdout", None)
    assert main(["info", str(MODELS / "tiny-qwen2-q8_0.gguf")]) == 2
    assert capsys.readouterr().err == (
        "chatfile: error: stdout is closed, so info could show nothing; run it in a terminal "
        "or send its output to a file (> out.txt)\n")
    r = subprocess.run([sys.executable, "-m", "runtime", "--licenses"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60,
                       preexec_fn=lambda: os.close(1))
    assert r.returncode == 2 and r.stderr == (
        "chatfile: error: stdout is closed, so --licenses could show nothing; run it in a "
        "terminal or send its output to a file (> out.txt)\n"), r.stderr


def test_a_bundle_output_that_cannot_be_written_is_one_line():
    """`./bundle --help > /dev/full` (a full disk) ended in a traceback."""
    for flag in ("--help", "--version", "--licenses"):
        with open("/dev/full", "w") as full:
            r = subprocess.run([sys.executable, "-m", "runtime", flag], cwd=ROOT, stdout=full,
                               stderr=subprocess.PIPE, text=True, timeout=60)
        assert r.returncode == 1 and r.stderr == (
            "chatfile: error: cannot write the output: No space left on device\n"), (flag, r.stderr)


def test_a_symlink_that_leads_nowhere_is_not_called_missing(tmp_path):
    loop = tmp_path / "loop.gguf"
    loop.symlink_to(loop)
    r = chatfile("info", loop, timeout=60)
    assert r.returncode == 1 and r.stderr == (
        f"chatfile: error: cannot open {loop}: a symbolic link that leads nowhere\n"), r.stderr


def test_info_on_a_latin1_terminal_shows_question_marks_not_a_traceback(tmp_path):
    """`chatfile info` on a model whose name has an emoji, under a Latin-1 locale
    (PYTHONIOENCODING gives Python the same stdout), ended in a UnicodeEncodeError
    traceback."""
    model = non_ascii_model(tmp_path)
    r = subprocess.run([sys.executable, "-m", "bundler.cli", "info", str(model)], cwd=ROOT,
                       capture_output=True, env={**os.environ, "PYTHONIOENCODING": "latin-1",
                                                 "PYTHONPATH": str(ROOT)}, timeout=60)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    assert "tïny-?".encode("latin-1") in r.stdout, r.stdout


@pytest.mark.parametrize("stdin", ["", None], ids=["empty", "closed"])
def test_a_bundles_piped_chat_example_names_the_bundle(monkeypatch, capsys, stdin):
    """A bundle's `--cli` with nothing on stdin told its user to run `chatfile chat
    model.gguf`, a command and a file they do not have."""
    import io

    from runtime.cli import main
    monkeypatch.setattr(sys, "stdin", None if stdin is None else io.StringIO(stdin))
    model = str(MODELS / "tiny-llama-q8_0.gguf")
    assert main(["chat", model], bundle="my chat") == 2
    err = capsys.readouterr().err
    assert "for example: echo 'Hello' | ./'my chat' --cli" in err, err
    assert main(["chat", model]) == 2
    assert "echo 'Hello' | chatfile chat model.gguf" in capsys.readouterr().err


def test_a_bundle_run_with_a_chat_option_says_to_add_cli(capsys):
    """`./my-chat -p Hi` (llamafile's one-shot question, without --cli) was "unrecognized
    arguments: -p Hi"; -p belongs to the terminal chat, which --cli starts."""
    from runtime.cli import main
    with pytest.raises(SystemExit) as e:
        main(["run", str(MODELS / "tiny-llama-q8_0.gguf"), "-p", "Hi there"], bundle="my chat")
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "-p is an option of the terminal chat: start it as `./'my chat' --cli -p TEXT`" in err


def test_a_bundles_piped_chat_example_is_the_path_it_was_started_by(monkeypatch, tmp_path):
    """Started as `"with space/ünï 模型.pyz" --cli`, the example said `./'ünï 模型.pyz'`,
    which is not there from the current directory."""
    from runtime.cli import piped_example
    monkeypatch.setattr(sys, "argv", ["with space/ünï 模型.pyz", "--cli"])
    assert piped_example("ünï 模型.pyz") == "echo 'Hello' | 'with space/ünï 模型.pyz' --cli"
    on_path = tmp_path / "my-chat"
    on_path.write_bytes(b"")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["my-chat"])  # found on PATH: as typed, no ./
    assert piped_example("my-chat") == "echo 'Hello' | my-chat --cli"


def test_chat_takes_llama_cli_short_options_and_a_seed(monkeypatch, capsys):
    """`-c`, `-t`, `-n` as llama-cli spells them were "unrecognized arguments", and a
    sampled answer could not be had again: --seed gives the same answer for the same
    seed and temperature."""
    import io

    from runtime.cli import build_parser, check_args, main
    a = build_parser().parse_args(["chat", "m.gguf", "-c", "256", "-t", "1", "-n", "8", "--seed", "7"])
    assert (a.ctx, a.threads, a.max_tokens, a.seed) == (256, 1, 8, 7)
    assert "--seed must be 0 or more" in check_args(build_parser().parse_args(["chat", "m", "--seed", "-1"]))
    model = str(MODELS / "tiny-llama-q8_0.gguf")
    answers = []
    for _ in range(2):
        monkeypatch.setattr(sys, "stdin", io.StringIO("Tell me a story."))
        assert main(["chat", model, "--temp", "1.5", "--seed", "7", "-n", "24"]) == 0
        answers.append(capsys.readouterr().out)
    assert answers[0].strip() and answers[0] == answers[1], answers


def test_a_bundle_sets_the_thread_count_before_numpy_loads():
    """A bundle's `--threads N` sets OPENBLAS_NUM_THREADS, which OpenBLAS reads when NumPy
    is first imported: the bundle's entry must leave that import to the command."""
    code = ("import sys; import runtime.__main__ as m, runtime.cli as cli\n"
            "cli.main = lambda argv, bundle=None: print('numpy' in sys.modules) or 0\n"
            "m._runtime_cli(['run', 'x.gguf', '--threads', '1'])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "False", (r.stdout, r.stderr)
