"""chatfile installed as a package (a wheel, as `pip install chatfile-*.whl` or `pipx
install .` make it), not as an editable checkout: `chatfile bundle` builds its stubs too.

Its wheel once carried neither build/chatfile.spec nor build/shiv.json nor the rest of
build/, so an installed chatfile stopped with "...build/shiv.json: No such file" (pyz) or
"...chatfile.spec is missing: building stubs needs a source checkout" (exe).

The wheel is built offline from this checkout (--no-build-isolation: hatchling is in the
test extra) and installed into a fresh venv that sees this Python's dependencies (NumPy,
shiv, PyInstaller...) through a .pth file, but not the checkout: a .pth in a directory
named by another .pth is never read, so the editable install's path to the checkout stays
out. Everything is run from a directory outside the checkout, without PYTHONPATH.
"""
import json
import os
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from bundler import stub
from tests.e2e.test_bundle import MODEL, _serve_and_ask

ROOT = Path(__file__).resolve().parents[2]
BUILD_FILES = ("chatfile.spec", "entry.py", "shiv.json", "pyz_main.py")
PIP_TIMEOUT_S = 300


def _run(cmd, cwd, env=None, timeout=PIP_TIMEOUT_S) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _wheel_from(source: Path, out: Path) -> Path:
    """chatfile's wheel built from `source` (a checkout or an unpacked sdist), offline."""
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", out, source], cwd=out.parent)
    (wheel,) = out.glob("chatfile-*.whl")
    return wheel


def _outside_env(tmp: Path) -> dict:
    """The environment of a user's shell: no PYTHONPATH to the checkout, and a cache of
    this test's own (the installed chatfile builds its stubs afresh there)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(CHATFILE_CACHE_DIR=str(tmp / "cache"), SHIV_ROOT=str(tmp / "shiv"),
               PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """{"venv", "bin", "python", "home", "env"}: chatfile's wheel installed into a fresh venv
    (not editable), and a working directory outside the checkout to run it from."""
    tmp = tmp_path_factory.mktemp("wheel-install")
    (tmp / "dist").mkdir()
    wheel = _wheel_from(ROOT, tmp / "dist")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    python = venv / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=tmp).strip()
    # This Python's site-packages, for the dependencies (and pip) only.
    (Path(purelib) / "zz_chatfile_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    home = tmp / "home"
    home.mkdir()
    env = _outside_env(home)
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], cwd=home, env=env)
    out = {"venv": venv, "bin": venv / "bin", "python": python, "home": home, "env": env}
    # What the tests below run is the installed copy, not this checkout.
    files = _in_installed(out, "import bundler, runtime, json; "
                               "print(json.dumps([bundler.__file__, runtime.__file__]))")
    for f in files:
        assert Path(f).resolve().is_relative_to(venv.resolve()), files
        assert not Path(f).resolve().is_relative_to(ROOT), files
    return out


def _in_installed(installed, code: str):
    """What `code` prints (JSON) when run by the installed chatfile's Python."""
    return json.loads(_run([installed["python"], "-c", code], cwd=installed["home"],
                           env=installed["env"]))


def test_the_installed_stub_key_is_the_checkouts_for_the_same_sources(installed):
    """The cache key names files as in a checkout wherever they lie: the installed copy of
    these very sources (build settings included) gets this checkout's key."""
    key = _in_installed(installed, "import json; from bundler import stub; "
                                   "print(json.dumps(stub.sources_hash()))")
    assert key == stub.sources_hash()


def _chatfile(installed, *args, timeout=PIP_TIMEOUT_S) -> str:
    return _run([installed["bin"] / "chatfile", *args], cwd=installed["home"],
                env=installed["env"], timeout=timeout)


@pytest.fixture(scope="module")
def installed_reply(installed, tmp_path_factory):
    """The installed `chatfile run`'s greedy reply: what its bundles must answer."""
    reply, _ = _serve_and_ask([installed["bin"] / "chatfile", "run", MODEL, "--ctx", "256"],
                              tmp_path_factory.mktemp("run"), cwd=installed["home"])
    return reply


@pytest.fixture(autouse=True, scope="module")
def _no_pythonpath():
    """_serve_and_ask hands its servers this process's environment: without PYTHONPATH,
    the installed chatfile cannot import the checkout's runtime instead of its own."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("PYTHONPATH", raising=False)
        yield


def test_an_installed_chatfile_bundles_a_pyz_that_answers(installed, installed_reply, tmp_path):
    out = installed["home"] / "tiny.pyz"
    _chatfile(installed, "bundle", MODEL, "--format", "pyz", "-o", out, "--args", "--ctx 256")
    reply, _ = _serve_and_ask([sys.executable, out], tmp_path, cwd=installed["home"])
    assert reply and reply == installed_reply


@pytest.mark.slow  # PyInstaller: 40-100 s
def test_an_installed_chatfile_bundles_an_executable_with_its_page(installed, installed_reply,
                                                                 tmp_path):
    from PyInstaller.archive.readers import CArchiveReader
    out = installed["home"] / "tiny-exe"
    _chatfile(installed, "bundle", MODEL, "--format", "exe", "-o", out, "--args", "--ctx 256",
              timeout=900)
    (exe_stub,) = (installed["home"] / "cache" / "stubs").glob("chatfile-*-exe-*")
    names = set(CArchiveReader(str(exe_stub)).toc)
    # The spec found runtime/ beside itself in a checkout only: the page was left out.
    assert {"runtime/web/index.html", "runtime/web/app.js"} <= names
    reply, _ = _serve_and_ask([out], tmp_path, cwd=installed["home"])
    assert reply and reply == installed_reply


def test_a_wheel_built_from_the_sdist_carries_the_build_settings(tmp_path):
    """pip builds a wheel from the sdist when no wheel fits: that wheel needs build/ too."""
    _run([sys.executable, "-c", "import sys, hatchling.build as b; b.build_sdist(sys.argv[1])",
          tmp_path], cwd=ROOT)
    (sdist,) = tmp_path.glob("chatfile-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "src", filter="data")
    (source,) = (tmp_path / "src").iterdir()
    (tmp_path / "dist").mkdir()
    with zipfile.ZipFile(_wheel_from(source, tmp_path / "dist")) as whl:
        for name in BUILD_FILES:
            assert whl.read(f"bundler/_build/{name}") == (ROOT / "build" / name).read_bytes(), name


@pytest.mark.parametrize("fmt, setting", [("pyz", "SHIV_SETTINGS"), ("pyz", "PYZ_MAIN"),
                                          ("exe", "SPEC"), ("exe", "ENTRY")])
def test_a_missing_build_setting_is_named_before_the_build(fmt, setting, tmp_path, monkeypatch):
    """An installed chatfile from a wheel without its build settings: the .pyz's build
    stopped with a bare "[Errno 2] No such file or directory", halfway through."""
    from runtime.embedded import BundleError
    missing = tmp_path / "gone" / "file"
    monkeypatch.setattr(stub, setting, missing)
    monkeypatch.setattr(stub, "_build_exe" if fmt == "exe" else "_build_pyz",
                        lambda work, log: pytest.fail("the build started"))
    with pytest.raises(BundleError, match=f"{missing} is missing from this checkout: "
                                          f"building a {fmt} stub needs chatfile's build settings"):
        stub.build_stub(fmt, tmp_path / "stub")
