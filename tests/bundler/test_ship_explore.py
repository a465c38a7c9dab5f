"""`chatfile bundle` as someone shipping a model uses it: the messages for what cannot be
baked in and for broken model files say what is wrong and what to do. All refused before
a stub is needed (--stub names a file that does not exist), so nothing is built."""
import os
from pathlib import Path

import pytest

from bundler import cli

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "tiny-llama-q8_0.gguf"


def _bundle(capsys, tmp_path, model, *args) -> tuple[int, str]:
    code = cli.main(["bundle", str(model), "--format", "pyz", "--stub", str(tmp_path / "no-stub"),
                     "-o", str(tmp_path / "out.pyz"), *args])
    err = capsys.readouterr().err
    assert not (tmp_path / "out.pyz").exists()
    return code, err


@pytest.mark.parametrize("baked, why", [
    ("--cli", "--cli is one of the bundle's own options, given when it is started; "
              "it cannot be baked in"),
    ("-m other.gguf", "-m is one of the bundle's own options"),
    ("--ctx 64 --info", "--info is one of the bundle's own options"),
    ("--max-tokens 200", "--max-tokens is an option of the terminal chat alone, given when it "
                         "is started (--cli --max-tokens N); baked-in args are those of "
                         "`chatfile run`"),
    ("-n 200", "-n is an option of the terminal chat alone"),
    ("--seed=3", "--seed is an option of the terminal chat alone"),
    ("-p 'Hi there'", "-p is an option of the terminal chat alone, given when it is started "
                      "(--cli -p TEXT)"),
])
def test_args_a_bundle_takes_but_cannot_bake_in_say_why(capsys, tmp_path, baked, why):
    """They were "unrecognized arguments: --max-tokens 200; --args is split as a shell
    splits words, so quote a value that has spaces", which sent the user quoting."""
    code, err = _bundle(capsys, tmp_path, MODEL, f"--args={baked}")
    assert code == 2 and why in err, err
    assert "quote" not in err, err


def test_an_unknown_option_with_a_value_is_not_told_to_quote(capsys, tmp_path):
    code, err = _bundle(capsys, tmp_path, MODEL, "--args=--bogus 3")
    assert code == 2 and err == ("chatfile: error: --args '--bogus 3': unrecognized arguments: "
                                 "--bogus 3\n"), err


def test_broken_model_files_are_named_once_and_say_what_to_do(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    code, err = _bundle(capsys, tmp_path, "empty.gguf")
    assert code == 1 and err == "chatfile: error: empty.gguf is empty (0 bytes), not a GGUF file\n", err
    data = MODEL.read_bytes()
    (tmp_path / "tiny.gguf").write_bytes(data[:20])
    code, err = _bundle(capsys, tmp_path, "tiny.gguf")
    # (it said "tiny.gguf is not a usable GGUF: tiny.gguf is too small ...")
    assert code == 1 and err == ("chatfile: error: tiny.gguf is too small to be a GGUF file "
                                 "(20 bytes)\n"), err
    (tmp_path / "cut.gguf").write_bytes(data[:4096])  # cut inside the header's strings
    code, err = _bundle(capsys, tmp_path, "cut.gguf")
    assert code == 1 and err.startswith("chatfile: error: cut.gguf is not a usable GGUF: "
                                        "truncated file"), err
    assert err.endswith(": the file is incomplete; download or copy it again\n"), err


def test_a_bundle_given_as_the_model_is_told_how_to_run_it(capsys, tmp_path, monkeypatch):
    """The hint said `chat.pyz --extract model.gguf`, which a shell does not find in the
    current directory."""
    from bundler.splice import splice
    from runtime.embedded import read_trailer
    stub = tmp_path / "stub.pyz"
    stub.write_bytes(b"#!/usr/bin/env python3\n" + _empty_zip())
    splice(stub, MODEL, tmp_path / "chat.pyz", fmt="pyz", fsync=False)
    assert read_trailer(tmp_path / "chat.pyz") is not None
    monkeypatch.chdir(tmp_path)
    code = cli.main(["bundle", "chat.pyz", "--format", "pyz", "--stub", "stub.pyz", "-o", "x.pyz"])
    err = capsys.readouterr().err
    assert code == 1 and "take its model out with `./chat.pyz --extract model.gguf`" in err, err
    assert not os.path.exists("x.pyz")


def _empty_zip() -> bytes:
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("__main__.py", "")
    return buf.getvalue()


def test_an_output_that_cannot_be_written_is_refused_first(capsys, tmp_path, monkeypatch):
    """`-o -` wrote a file named "-" while the pipe meant for the bundle got the report;
    `-o model.gguf/x.pyz` said that the directory model.gguf "does not exist"."""
    monkeypatch.chdir(tmp_path)
    code, err = _bundle_to(capsys, tmp_path, "-")
    assert code == 2 and err == ('chatfile: error: -o -: the output cannot go to stdout; give '
                                 'a file name (-o ./- for a file named "-")\n'), err
    assert cli.main(["stub", "--format", "pyz", "-o", "-"]) == 2
    assert "cannot go to stdout" in capsys.readouterr().err
    assert not os.path.exists("-")
    (tmp_path / "model.gguf").write_bytes(MODEL.read_bytes())
    code, err = _bundle_to(capsys, tmp_path, "model.gguf/x.pyz")
    assert code == 1 and err == (f"chatfile: error: cannot write model.gguf/x.pyz: "
                                 f"{tmp_path / 'model.gguf'} is a file, not a directory\n"), err


def _bundle_to(capsys, tmp_path, out) -> tuple[int, str]:
    code = cli.main(["bundle", str(MODEL), "--format", "pyz", "--stub", str(tmp_path / "no-stub"),
                     "-o", out])
    return code, capsys.readouterr().err
