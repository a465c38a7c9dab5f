"""Real bundles: build an exe stub (PyInstaller) and a pyz stub (shiv) once per session,
splice the tiny fixture model in, and drive each bundle as a user would.

The greedy reply over HTTP must equal what the unbundled runtime (`python3 -m runtime.cli
run`) gives for the same request on the same GGUF: the bundle changes packaging, never
answers.
"""
import hashlib
import importlib.metadata
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import session_stub, stop_process

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "fixtures" / "models" / "tiny-llama-q8_0.gguf"
REQUEST = {"messages": [{"role": "user", "content": "Say hello."}], "temperature": 0,
           "max_tokens": 12, "seed": 1}
START_TIMEOUT_S = 120

pytestmark = pytest.mark.slow


def _need(module, why):
    try:
        __import__(module)
    except ImportError:
        pytest.skip(f"{module} is not installed: {why}")


def _need_runtime():
    for mod in ("runtime.cli", "runtime.server"):
        if not (ROOT / (mod.replace(".", "/") + ".py")).is_file():
            pytest.skip(f"{mod} does not exist yet: bundles cannot serve")


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    """{"exe": path, "pyz": path}, each built once for the session (skipped if impossible)."""
    out = {}
    for fmt, module in (("exe", "PyInstaller"), ("pyz", "shiv")):
        try:
            __import__(module)
        except ImportError:
            continue
        out[fmt] = session_stub(tmp_path_factory, fmt)
    return out


@pytest.fixture(scope="session")
def bundles(stubs, tmp_path_factory):
    from bundler.splice import splice
    d = tmp_path_factory.mktemp("bundles")
    out = {}
    for fmt, stub in stubs.items():
        path = d / f"tiny.{fmt}"
        splice(stub, MODEL, path, fmt=fmt, args=["--ctx", "256"], title="Tiny bundle")
        out[fmt] = path
    return out


def _bundle(bundles, fmt):
    if fmt not in bundles:
        pytest.skip(f"no {fmt} stub: {'PyInstaller' if fmt == 'exe' else 'shiv'} is not installed")
    return bundles[fmt]


def _cmd(path):
    return [str(path)] if str(path).endswith(".exe") or not str(path).endswith(".pyz") \
        else [sys.executable, str(path)]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path):
    # shiv extracts site-packages under SHIV_ROOT; keep it inside the test's directory.
    return dict(os.environ, SHIV_ROOT=str(tmp_path / "shiv"), PYTHONUNBUFFERED="1")


def _wait_healthy(port: int) -> None:
    """Until the server on port answers /health with 200 (or START_TIMEOUT_S passed)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            time.sleep(0.05)


def _serve_and_ask(cmd, tmp_path, cwd=None):
    """Start a server process, wait for /health 200, POST REQUEST; return (reply, startup_s)."""
    port = _free_port()
    log = open(tmp_path / f"server-{port}.log", "w+")
    t0 = time.perf_counter()
    proc = subprocess.Popen([*cmd, "--no-browser", "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env=_env(tmp_path), cwd=cwd or ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"server exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.perf_counter() - t0 > START_TIMEOUT_S:
                pytest.fail(f"no /health 200 within {START_TIMEOUT_S} s")
            time.sleep(0.1)
        startup_s = time.perf_counter() - t0
        req = urllib.request.Request(base + "/v1/chat/completions", json.dumps(REQUEST).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            reply = json.load(r)["choices"][0]["message"]["content"]
        return reply, startup_s
    finally:
        stop_process(proc, 10)
        log.close()


@pytest.fixture(scope="session")
def reference_reply(tmp_path_factory):
    _need_runtime()
    reply, _ = _serve_and_ask([sys.executable, "-m", "runtime.cli", "run", str(MODEL),
                               "--ctx", "256"], tmp_path_factory.mktemp("ref"))
    return reply


@pytest.mark.parametrize("fmt", ["exe", "pyz"])
def test_bundle_answers_like_the_runtime(bundles, fmt, reference_reply, tmp_path):
    reply, startup_s = _serve_and_ask(_cmd(_bundle(bundles, fmt)), tmp_path, cwd=tmp_path)
    print(f"\n{fmt}: exec -> /health 200 in {startup_s:.2f} s")
    assert reply == reference_reply


@pytest.mark.parametrize("fmt", ["exe", "pyz"])
def test_verify_extract_and_damage(bundles, fmt, tmp_path):
    path = _bundle(bundles, fmt)
    run = lambda p, *a: subprocess.run([*_cmd(p), *a], capture_output=True, text=True,  # noqa: E731
                                       env=_env(tmp_path), cwd=tmp_path, timeout=120)
    r = run(path, "--verify")
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    r = run(path, "--info", "--json")
    ref = subprocess.run([sys.executable, "-m", "bundler.cli", "info", str(MODEL), "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    bundle = info.pop("bundle")  # the summary is the model's, plus what the bundle adds
    assert info == json.loads(ref.stdout)
    from runtime.embedded import read_trailer
    t = read_trailer(path)
    assert bundle == {"sha256": hashlib.sha256(MODEL.read_bytes()).hexdigest(),
                      "gguf_offset": t.gguf_offset, "gguf_size": MODEL.stat().st_size,
                      "format": fmt, "title": "Tiny bundle", "args": ["--ctx", "256"]}
    for args, why in ((["--info", "--frobnicate"], "unexpected arguments"),
                      (["--verify", "-m", str(MODEL)], "leave out -m")):
        r = run(path, *args)
        assert r.returncode == 2 and why in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    out = tmp_path / "x.gguf"
    r = run(path, "--extract", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == MODEL.read_bytes()

    flipped = tmp_path / ("flipped" + path.suffix)
    data = bytearray(path.read_bytes())
    data[t.gguf_offset + t.gguf_size // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    os.chmod(flipped, 0o755)
    r = run(flipped, "--verify")
    assert r.returncode == 1
    assert "does not match" in r.stderr and "corrupt" in r.stderr

    # An interrupted copy: the end (the trailer) is gone. The bundle must refuse to start.
    cut = tmp_path / ("cut" + path.suffix)
    cut.write_bytes(path.read_bytes()[:-t.trailer_bytes // 2])
    os.chmod(cut, 0o755)
    r = run(cut, "--no-browser", "--port", str(_free_port()))
    assert r.returncode != 0
    assert "truncated" in r.stderr or "corrupt" in r.stderr, r.stderr


@pytest.mark.parametrize("fmt", ["exe", "pyz"])
def test_cli_with_piped_stdin(bundles, fmt, tmp_path):
    _need_runtime()
    path = _bundle(bundles, fmt)
    # The server's own flags (as a bundle may have baked in) are dropped; --ctx stays.
    r = subprocess.run([*_cmd(path), "--cli", "--cors", "--ctx", "128", "--port", "9",
                        "--no-browser", "--temp", "0"], input="Say hello.\n", capture_output=True,
                       text=True, env=_env(tmp_path), cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip(), "no answer printed"
    # -p passes through to the chat as llamafile's `--cli -p` does: the same answer.
    p = subprocess.run([*_cmd(path), "--cli", "--ctx", "128", "--temp", "0", "-p", "Say hello."],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       env=_env(tmp_path), cwd=tmp_path, timeout=300)
    assert p.returncode == 0 and p.stdout == r.stdout, (p.stdout, p.stderr)


def _other_python() -> str | None:
    """A python3.X of another version than this one: on PATH, or installed by pyenv."""
    pyenv = Path(os.environ.get("PYENV_ROOT", "~/.pyenv")).expanduser() / "versions"
    for minor in range(8, 15):
        if minor == sys.version_info[1]:
            continue
        candidates = [shutil.which(f"python3.{minor}"), *sorted(pyenv.glob(f"3.{minor}.*/bin/python3"))]
        for exe in filter(None, candidates):
            r = subprocess.run([str(exe), "-c", "import sys; print(sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=60)
            if r.returncode == 0 and r.stdout.strip() == f"(3, {minor})":
                return str(exe)
    return None


def test_a_pyz_started_by_another_python_says_which_one_it_needs(bundles, tmp_path):
    path = _bundle(bundles, "pyz")
    other = _other_python()
    if other is None:
        pytest.skip("no python3.X of another version (on PATH or in pyenv)")
    r = subprocess.run([other, str(path), "--no-browser", "--port", str(_free_port())],
                       capture_output=True, text=True, env=_env(tmp_path), timeout=120)
    need = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("chatfile: error: this bundle's NumPy is compiled for Python")
    assert f"run it with {need}" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    # What needs no NumPy still works.
    r = subprocess.run([other, str(path), "--verify"], capture_output=True, text=True,
                       env=_env(tmp_path), timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def _read_until(fd, done, timeout_s):
    buf, end = b"", time.monotonic() + timeout_s
    while time.monotonic() < end and not done(buf):
        if select.select([fd], [], [], 0.05)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            buf += chunk
    return buf


def _without_paste_marks(out: bytes) -> bytes:
    return re.sub(rb"\x1b\[\?2004[hl]", b"", out)


def test_ctrl_c_in_the_executable_stops_the_answer_not_the_chat(bundles, tmp_path):
    """A one-file executable is two processes (PyInstaller's launcher and Python) in the
    terminal's process group: Ctrl+C signals both, and the launcher forwards its copy. The
    chat must take that as one Ctrl+C. Signalled as a terminal does, three times: the
    double interrupt lost the chat in 2 of 3 tries before the fix."""
    path = _bundle(bundles, "exe")
    prompt = lambda b: b.rstrip().endswith(b">")  # noqa: E731
    for _ in range(3):
        master, slave = pty.openpty()  # stdin a terminal: the interactive chat
        proc = subprocess.Popen([str(path), "--cli", "--temp", "0"], stdin=slave, stdout=slave,
                                stderr=slave, env=_env(tmp_path), start_new_session=True)
        os.close(slave)
        try:
            assert prompt(_read_until(master, prompt, 120))
            # Greedy, the tiny model's answer to this runs on to the end of its context
            # (hundreds of tokens): the signal lands mid-answer, once its first words show
            # (not the line editor's bracketed-paste switch, written as the line ends).
            os.write(master, b"Hello there\n")
            answer = lambda b: _without_paste_marks(b.split(b"there", 1)[1]).strip()  # noqa: E731
            _read_until(master, lambda b: b"there" in b and len(answer(b)) > 3, 60)
            os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl+C
            out = _read_until(master, prompt, 60)
            assert b"[stopped]" in out and prompt(out), out
            os.write(master, b"/help\n")
            out = _read_until(master, lambda b: b"/exit" in b and prompt(b), 60)
            assert b"/exit" in out, out  # still chatting
            # The executable has no GNU readline; its own line editor reads a line longer
            # than the terminal's canonical mode holds (4095), with a Backspace in it.
            long = b"/" + b"x" * 5000 + b"ENDX\x7f"
            for i in range(0, len(long), 512):
                os.write(master, long[i:i + 512])
                _read_until(master, lambda b: False, 0.05)  # drain the echo
            os.write(master, b"\n")
            # The unknown command's line comes back at the prompt, "//" in front.
            out = _read_until(master, lambda b: b"unknown command" in b
                              and b.rstrip().endswith(b"END"), 60)
            assert b"x" * 100 + b"END (type /help" in out, out[-300:]
            os.write(master, b"\x15\x04")  # Ctrl+U clears it, Ctrl+D: leave
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)


def test_ctrl_c_stops_the_executable_s_server_cleanly(bundles, tmp_path):
    path = _bundle(bundles, "exe")
    for _ in range(3):  # the double interrupt broke the shutdown about half the time
        port = _free_port()
        proc = subprocess.Popen([str(path), "--no-browser", "--port", str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=_env(tmp_path), start_new_session=True)
        _wait_healthy(port)
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out.rstrip().endswith("chatfile: stopped."), out
        assert "Traceback" not in out and "Exception ignored" not in out, out


def test_a_pyz_ignores_pythonpath(bundles, tmp_path, reference_reply):
    """A NumPy (or a `runtime`) on PYTHONPATH used to be imported instead of the bundle's."""
    path = _bundle(bundles, "pyz")
    fake = tmp_path / "site"
    for pkg in ("numpy", "runtime"):
        (fake / pkg).mkdir(parents=True)
        (fake / pkg / "__init__.py").write_text(f"raise ImportError('the fake {pkg}')\n")
    env = {**_env(tmp_path), "PYTHONPATH": str(fake)}
    r = subprocess.run(_cmd(path) + ["--cli", "--temp", "0", "--max-tokens", "4"], input="Hi\n",
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "fake" not in r.stderr and r.stdout.strip(), r.stderr


def test_info_names_the_bundles_title(bundles, tmp_path):
    """The title given with `chatfile bundle --title` was in `--info --json` only."""
    r = subprocess.run(_cmd(_bundle(bundles, "pyz")) + ["--info"], capture_output=True,
                       text=True, env=_env(tmp_path), timeout=120)
    assert r.returncode == 0 and "\ntitle: Tiny bundle\n" in r.stdout, r.stdout + r.stderr


def test_a_chat_template_given_in_args_is_carried_in_the_bundle(stubs, tmp_path):
    """`--args "--chat-template FILE"` used to bake in the path: the bundle failed to
    start wherever that file was not (every other machine)."""
    if "pyz" not in stubs:
        pytest.skip("no pyz stub: shiv is not installed")
    template = tmp_path / "mine.jinja"
    text = ("{% for m in messages %}<<{{ m.role }}: {{ m.content }}>>{% endfor %}"
            "{% if add_generation_prompt %}<<assistant:{% endif %}")
    template.write_text(text)
    out = tmp_path / "tpl.pyz"
    r = subprocess.run([sys.executable, "-m", "bundler.cli", "bundle", str(MODEL), "-o", str(out),
                        "--format", "pyz", "--stub", str(stubs["pyz"]),
                        "--args", f"--chat-template {template} --ctx 256"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    template.unlink()  # as on another machine
    info = subprocess.run(_cmd(out) + ["--info"], capture_output=True, text=True,
                          env=_env(tmp_path), timeout=120)
    assert f"baked-in args: --chat-template (embedded, {len(text)} characters) --ctx 256" \
        in info.stdout, info.stdout
    # The model's GGUF has no template, but the bundle has one: not a "base model".
    assert f"chat template:  yes (the bundle's own, {len(text)} characters)" in info.stdout
    assert "base model" not in info.stdout
    info = subprocess.run(_cmd(out) + ["--info", "--json"], capture_output=True, text=True,
                          env=_env(tmp_path), timeout=120)
    d = json.loads(info.stdout)  # the template's text is counted, not repeated, in the JSON
    assert d["chat_template_from_bundle"] == len(text)
    assert d["bundle"]["args"] == ["--ctx", "256"] and d["bundle"]["format"] == "pyz"
    # It is the embedded model's template: another model given with -m does not get it.
    info = subprocess.run(_cmd(out) + ["--info", "-m", str(MODEL)], capture_output=True,
                          text=True, env=_env(tmp_path), timeout=120)
    assert "chat template:  no (a built-in one will be used)" in info.stdout, info.stdout
    port = _free_port()
    proc = subprocess.Popen(_cmd(out) + ["--no-browser", "--port", str(port)], cwd="/",
                            env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/apply-template",
                    json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(),
                    {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as resp:
                    prompt = json.load(resp)["prompt"]
                break
            except (OSError, urllib.error.URLError):
                assert time.monotonic() < deadline, "the bundle did not start"
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert prompt == "<<user: hi>><<assistant:"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_LIBRARY_PATH is Linux's")
def test_the_executable_starts_the_browser_with_the_users_library_path(bundles, tmp_path):
    """PyInstaller's bootloader puts the bundle's libraries first on LD_LIBRARY_PATH; the
    browser must get the user's own value (a newer browser can fail with ours)."""
    path = _bundle(bundles, "exe")
    seen = tmp_path / "browser-env"
    browser = tmp_path / "fake-browser"
    browser.write_text(f'#!/bin/sh\necho "LD_LIBRARY_PATH=${{LD_LIBRARY_PATH-unset}}" > {seen}.tmp\n'
                       f'env | grep -c "^LD_.*_MEI" >> {seen}.tmp\nmv {seen}.tmp {seen}\n')
    browser.chmod(0o755)
    for user_value in (None, "/opt/mine"):
        seen.unlink(missing_ok=True)
        env = {**_env(tmp_path), "BROWSER": str(browser), "DISPLAY": ":0"}
        env.pop("LD_LIBRARY_PATH", None)
        if user_value:
            env["LD_LIBRARY_PATH"] = user_value
        proc = subprocess.Popen([str(path), "--port", str(_free_port())], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not seen.exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
            lines = seen.read_text().split()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        assert lines == [f"LD_LIBRARY_PATH={user_value or 'unset'}", "0"], lines


def test_bare_stub_explains_itself(stubs, tmp_path):
    for fmt, stub in stubs.items():
        cmd = [str(stub)] if fmt == "exe" else [sys.executable, str(stub)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), timeout=120)
        assert r.returncode == 2
        assert "without a model" in r.stderr and "-m model.gguf" in r.stderr


def test_the_executable_carries_no_gpl_library(stubs):
    """GNU readline (GPL-3) came along with Python's readline module, inside an executable
    that people hand on under chatfile's MIT licence. The terminal chat no longer needs it
    (runtime/line_input.py; tests/e2e/test_terminal_pty.py runs the chat without it)."""
    if "exe" not in stubs:
        pytest.skip("no exe stub: PyInstaller is not installed")
    from PyInstaller.archive.readers import CArchiveReader
    names = list(CArchiveReader(str(stubs["exe"])).toc)
    assert any(n.startswith("libpython") for n in names), names  # the listing is real
    assert not [n for n in names if "readline" in n], names


@pytest.mark.parametrize("fmt", ["exe", "pyz"])
def test_a_bundle_prints_the_licences_of_what_it_carries(bundles, fmt, tmp_path):
    """A bundle is handed on to others: the MIT/BSD/PSF/Apache notices of its parts have
    to go with it. Before --licenses, the executable carried one of them (MarkupSafe's)."""
    path = _bundle(bundles, fmt)
    r = subprocess.run([*_cmd(path), "--licenses"], capture_output=True, text=True,
                       env=_env(tmp_path), cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and not r.stderr, r.stderr
    rule = "=" * 79 + "\n"
    sections = r.stdout.split(rule)
    titles = [t.strip() for t in sections[1::2]]
    body = dict(zip(titles, sections[2::2]))
    assert "MIT License" in body["chatfile"]
    for name in json.loads((ROOT / "build" / "shiv.json").read_text())["distributions"]:
        dist = importlib.metadata.distribution(name)
        text = body.get(f"{dist.metadata['Name']} {dist.version}", "")
        assert len(text) > 200 and "(no licence file shipped" not in text, (name, titles)
    if fmt == "exe":
        from PyInstaller.archive.readers import CArchiveReader
        python = next(t for t in titles if t.startswith("Python 3."))
        assert "PYTHON SOFTWARE FOUNDATION LICENSE" in body[python]
        # Every library PyInstaller took from the system has its section.
        libs = [n for n, entry in CArchiveReader(str(path)).toc.items()  # 'b': a binary,
                if entry[4] == "b" and ".so" in n and "/" not in n  # not a symlink to one
                and not n.startswith("libpython")]
        assert libs, "the listing is real"
        for lib in libs:
            assert f"{lib} (a system library from the build machine)" in titles, (lib, titles)
        assert "PyInstaller bootloader" in titles
    else:
        assert any(t.startswith("shiv ") for t in titles), titles  # its bootstrap is inside


def test_bundle_command_caches_the_stub(stubs, tmp_path, monkeypatch):
    """`chatfile bundle` reuses a cached stub: the second bundle is a splice, not a build."""
    if "pyz" not in stubs:
        pytest.skip("shiv is not installed")
    from bundler import cli, stub as stub_mod
    monkeypatch.setenv("CHATFILE_CACHE_DIR", str(tmp_path / "cache"))
    cached = stub_mod.cached_stub_path("pyz")
    cached.parent.mkdir(parents=True)
    shutil.copyfile(stubs["pyz"], cached)
    monkeypatch.setattr(stub_mod, "build_stub", lambda *a, **k: pytest.fail("rebuilt the stub"))
    out = tmp_path / "b.pyz"
    assert cli.main(["bundle", str(MODEL), "-o", str(out), "--format", "pyz"]) == 0
    assert cli.main(["bundle", str(MODEL), "-o", str(out), "--format", "pyz"]) == 1  # no --force
    assert cli.main(["bundle", str(MODEL), "-o", str(out), "--format", "pyz", "--force"]) == 0


def _unpacked(root: Path) -> list:
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def test_copies_of_a_pyz_share_one_unpacked_runtime(bundles, tmp_path):
    """shiv names its unpacked directory after the file: every renamed or copied bundle
    used to unpack another ~56 MB. build/pyz_main.py names it after the build only."""
    path = _bundle(bundles, "pyz")
    copy = tmp_path / "my chat (copy).pyz"
    shutil.copyfile(path, copy)
    for p in (path, copy):
        r = subprocess.run([sys.executable, str(p), "--info"], capture_output=True, text=True,
                           env=_env(tmp_path), timeout=120)
        assert r.returncode == 0, r.stderr
    unpacked = _unpacked(tmp_path / "shiv")
    assert len(unpacked) == 1 and unpacked[0].startswith("chatfile_"), unpacked


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="old runtimes are only removed where /proc shows which are in use")
def test_a_pyz_removes_the_runtimes_of_builds_unused_for_a_month(bundles, tmp_path):
    """Every chatfile upgrade is a new build that unpacks ~56 MB beside the old ones, which
    used to stay forever. A start now removes other builds' runtimes that no bundle has
    started for a month, unless a running process still maps a file of theirs."""
    path = _bundle(bundles, "pyz")
    # Reached through a symlink (a symlinked /home): /proc names mapped files by their
    # real paths, which must still match.
    (tmp_path / "real-shiv").mkdir()
    root = tmp_path / "shiv"
    root.symlink_to(tmp_path / "real-shiv")
    month_ago_s = time.time() - 31 * 86400

    def runtime(name, last_used_s=None):
        lib = root / name / "site-packages" / "lib.so"
        lib.parent.mkdir(parents=True)
        lib.write_bytes(bytes(4096))
        (root / f".{name}_lock").write_bytes(b"")
        if last_used_s:
            os.utime(root / name, (last_used_s, last_used_s))
        return root / name

    unused = runtime("chatfile_" + "a" * 64, month_ago_s)
    busy = runtime("chatfile_" + "b" * 64, month_ago_s)
    recent = runtime("chatfile_" + "c" * 64)
    not_ours = runtime("my_tool.pyz_" + "d" * 64, month_ago_s)
    # A running chatfile of the `busy` build maps NumPy's libraries out of its runtime.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import mmap, sys; f = open(sys.argv[1], 'rb'); "
         "m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ); print('mapped', flush=True); "
         "sys.stdin.read()", str(busy / "site-packages" / "lib.so")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "mapped\n"
        r = subprocess.run([sys.executable, str(path), "--info"], capture_output=True, text=True,
                           env=_env(tmp_path), timeout=120)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert r.returncode == 0, r.stderr
    assert not unused.exists() and not (root / f".{unused.name}_lock").exists()
    assert busy.exists() and recent.exists() and not_ours.exists()
    (ours,) = set(_unpacked(root)) - {busy.name, recent.name, not_ours.name}
    # A start marks its own runtime as used, so that the next upgrade keeps it a month.
    os.utime(root / ours, (month_ago_s, month_ago_s))
    r = subprocess.run([sys.executable, str(path), "--info"], capture_output=True, text=True,
                       env=_env(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr
    assert time.time() - (root / ours).stat().st_mtime < 3600


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="HOME and TMPDIR are POSIX's")
def test_a_pyz_runs_when_home_cannot_be_written(bundles, tmp_path):
    """A service account or kiosk whose HOME cannot be written: shiv's ~/.shiv failed with a
    traceback before chatfile's code ran. The runtime now unpacks into a private directory
    in the temp dir; when that is taken too, the user gets one line saying what to do."""
    path = _bundle(bundles, "pyz")
    env = {k: v for k, v in _env(tmp_path).items() if k != "SHIV_ROOT"}
    env["HOME"] = "/dev/null"  # not a directory: unwritable even for root
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    r = subprocess.run([sys.executable, str(path), "--info"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    private = tmp_path / "tmp" / f"chatfile-shiv-{os.getuid()}"
    assert private.stat().st_mode & 0o777 == 0o700
    assert len(_unpacked(private)) == 1
    # Someone else's file in our place in the temp dir: refused, in one line.
    env["TMPDIR"] = str(tmp_path / "taken")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / f"chatfile-shiv-{os.getuid()}").write_text("not a directory")
    r = subprocess.run([sys.executable, str(path), "--info"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("chatfile: error: cannot unpack the runtime") and "SHIV_ROOT" in r.stderr


def test_an_unknown_option_of_a_bundle_names_the_bundle(bundles, tmp_path):
    """Someone running `tiny.pyz --bogus` never typed `chatfile run MODEL`: the error must
    not show that usage line. It names the bundle as started, by its path here (a command
    that runs; tests/e2e/test_edges_s24.py has the other ways of starting it)."""
    path = _bundle(bundles, "pyz")
    r = subprocess.run([*_cmd(path), "--no-browser", "--bogus"], capture_output=True,
                       text=True, env=_env(tmp_path), timeout=120)
    assert r.returncode == 2
    assert r.stderr == ("chatfile: error: unrecognized arguments: --bogus "
                        f"(`{path} --help` lists the options)\n"), r.stderr
    # A bad value of a known option too, and --extract's mistakes.
    r = subprocess.run([*_cmd(path), "--port", "abc"], capture_output=True, text=True,
                       env=_env(tmp_path), timeout=120)
    assert r.returncode == 2 and "usage:" not in r.stderr and r.stderr == (
        "chatfile: error: argument --port: invalid int value: 'abc' "
        f"(`{path} --help` lists the options)\n"), r.stderr
    r = subprocess.run([*_cmd(path), "--version"], capture_output=True, text=True,
                       env=_env(tmp_path), timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("chatfile "), r.stderr
    for out, why in (("-", "standard output ('-') is not supported"),
                     (str(tmp_path), "is a directory; give the GGUF's file name")):
        r = subprocess.run([*_cmd(path), "--extract", out], capture_output=True, text=True,
                           env=_env(tmp_path), cwd=tmp_path, timeout=120)
        assert r.returncode == 1 and why in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "-").exists()
    # An empty value used to read as no value: the server started instead.
    for args, why in ((["--extract", ""], "--extract needs a value, not an empty one"),
                      (["--extract="], "--extract needs a value, not an empty one"),
                      (["-m", ""], "-m needs a value, not an empty one"),
                      (["--info", "--verify"], "--info and --verify cannot be combined"),
                      (["--extract", "x.gguf", "--info"], "--info and --extract cannot be combined")):
        r = subprocess.run([*_cmd(path), *args], capture_output=True, text=True,
                           env=_env(tmp_path), cwd=tmp_path, timeout=120)
        assert r.returncode == 2 and why in r.stderr and "listening" not in r.stdout, (args, r)
    assert not (tmp_path / "x.gguf").exists()


def _mei_dirs(temp_dir: Path) -> list[Path]:
    return sorted(p for p in temp_dir.iterdir() if p.name.startswith("_MEI"))


def test_the_executable_clears_the_runtimes_killed_executables_left(bundles, tmp_path):
    """`kill -9` of an executable left its unpacked runtime (~88 MB) in the temp dir, one
    more at every kill. The next start removes the ones no running chatfile uses."""
    path = _bundle(bundles, "exe")
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    env = dict(_env(tmp_path), TMPDIR=str(temp_dir))
    foreign = temp_dir / "_MEIother"  # another program's unpacking: no marker of ours
    (foreign / "lib").mkdir(parents=True)
    port = _free_port()
    proc = subprocess.Popen([str(path), "--no-browser", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    try:
        _wait_healthy(port)
        running = [p for p in _mei_dirs(temp_dir) if p != foreign]
        assert len(running) == 1 and (running[0] / ".chatfile-running").is_file(), running
        # Another start while this one runs leaves its runtime alone.
        assert subprocess.run([str(path), "--version"], env=env, capture_output=True,
                              timeout=120).returncode == 0
        assert running[0].is_dir()
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).close()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and Python, as `kill -9` does
        proc.wait()
    time.sleep(0.5)  # the kernel drops the dead process's lock
    assert running[0].is_dir()  # what the kill left
    out = subprocess.run([str(path), "--version"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert _mei_dirs(temp_dir) == [foreign], _mei_dirs(temp_dir)
