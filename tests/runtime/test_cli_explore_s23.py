"""`chatfile bench --json FILE / --plot FILE` as someone measuring a model types them.

`--json model.gguf` (a slip of the shell's completion) wrote the results over the model
being measured, and over any other model or bundle named; a plot name matplotlib cannot
write (`--plot out.txt`) and a directory name that does not exist (`--json results/`)
were found out only after the measurements, minutes on a real model, and the second
then wrote a file named `results`; a full disk left an empty results file. Each is now
refused before measuring (the full disk: when the results are written), with one line,
and the files that were there are left as they were.

Everything runs `python -m bundler.cli` (the `chatfile` command) on a copy of the tiny
fixture model, with the shortest bench (8 prompt tokens, 4 new), so that a refusal that
does not come costs a second, not the model's bytes.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODELS, ROOT

SHORT = ("--prompt-tokens", "8", "--gen-tokens", "4")


def chatfile(*args, cwd=ROOT, timeout=120):
    return subprocess.run([sys.executable, "-m", "bundler.cli", *map(str, args)], cwd=cwd,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "model.gguf"
    shutil.copyfile(MODELS / "tiny-llama-q8_0.gguf", path)
    return path


def _fake_bundle(path: Path) -> None:
    """A file with a chatfile trailer (runtime/embedded.py's format), as
    tests/bundler/test_trailer.py makes them."""
    from tests.bundler.test_trailer import make_bundle
    make_bundle(path)


def test_the_results_never_replace_the_model_or_another_model(model, tmp_path):
    other = tmp_path / "other.gguf"
    shutil.copyfile(MODELS / "tiny-qwen2-q8_0.gguf", other)
    hard = tmp_path / "hard-link.gguf"
    os.link(model, hard)
    link = tmp_path / "link.gguf"
    link.symlink_to(model)
    bundle = tmp_path / "my-chat"
    _fake_bundle(bundle)
    before = {p: _sha256(p) for p in (model, other, bundle)}
    cases = ((model, model, "it is the model being measured"),
             (model, hard, "it is the model being measured"),
             (model, link, "it is the model being measured"),
             (model, other, "it is a GGUF model or a chatfile bundle"),
             (model, bundle, "it is a GGUF model or a chatfile bundle"))
    for measured, out, why in cases:
        r = chatfile("bench", measured, *SHORT, "--json", out)
        assert r.returncode == 1, (out, r.stdout, r.stderr)
        assert r.stderr == (f"chatfile: error: cannot write {out}: {why}; give the results "
                            f"another file name\n"), r.stderr
        assert r.stdout == ""  # refused before measuring
    assert {p: _sha256(p) for p in before} == before
    assert link.is_symlink()


def test_a_name_ending_in_a_slash_is_refused_not_written_without_it(model, tmp_path):
    for flag in ("--json", "--plot"):
        if flag == "--plot":
            pytest.importorskip("matplotlib", reason="--plot needs matplotlib")
        out = f"{tmp_path}/results/"
        r = chatfile("bench", model, *SHORT, flag, out)
        assert r.returncode == 1 and r.stdout == "", (flag, r.stdout, r.stderr)
        assert r.stderr == (f"chatfile: error: cannot write {out}: it names a directory, "
                            f"which does not exist; give a file name\n"), r.stderr
        assert not (tmp_path / "results").exists()


def test_a_plot_format_matplotlib_cannot_write_is_refused_before_measuring(model, tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib")
    from matplotlib.figure import Figure
    formats = Figure().canvas.get_supported_filetypes()
    assert "txt" not in formats and "png" in formats  # the premise
    out = tmp_path / "plot.txt"
    r = chatfile("bench", model, *SHORT, "--plot", out)
    assert r.returncode == 1 and r.stdout == "", (r.stdout, r.stderr)  # no table first
    assert r.stderr.startswith(f"chatfile: error: cannot write {out}: a plot cannot be "
                               f"written as .txt; give a name that ends in "), r.stderr
    assert ".png" in r.stderr and ".svg" in r.stderr and r.stderr.count("\n") == 1
    assert not out.exists()
    # A name without an extension is matplotlib's default format, as it writes it.
    r = chatfile("bench", model, *SHORT, "--plot", tmp_path / "curve", timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_full_disk_leaves_no_cut_off_results_file(model, tmp_path):
    from tests.e2e.conftest import Tmpfs
    with Tmpfs(tmp_path / "small", 64 * 1024) as small:
        results = small / "results.json"
        fd = os.open(small / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # all the room
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        r = chatfile("bench", model, *SHORT, "--json", results)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert r.stderr == f"chatfile: error: cannot write {results}: No space left on device\n"
        assert os.listdir(small) == ["filler"]  # neither an empty results.json nor a temporary file
        os.unlink(small / "filler")
        results.write_text('{"old": "results"}')
        r = chatfile("bench", model, *SHORT, "--json", results)
        assert r.returncode == 0, r.stderr
        assert json.loads(results.read_text())["chatfile"]["n_prompt"] == 8
        assert os.listdir(small) == ["results.json"]
    # What is no regular file is written as such, not replaced: the JSON on stdout.
    r = chatfile("bench", model, *SHORT, "--json", "/dev/stdout")
    assert r.returncode == 0, r.stderr
    start = r.stdout.index("{\n")  # (before or after the table, as the buffers go)
    assert json.JSONDecoder().raw_decode(r.stdout, start)[0]["chatfile"]["n_gen"] == 4
    assert os.path.islink("/dev/stdout") or not os.path.isfile("/dev/stdout")
