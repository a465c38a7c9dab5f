"""`chatfile bundle` and a bundle's start, as their users meet them (after
test_bundle_user_qa): bundles made before baked args were written in full, a deleted
current directory, a cache that cannot be written, abbreviations that named the hidden
options, and a bare stub given where a model was expected.

Fake stubs only (test_splice's shebang + zip .pyz, and PyInstaller-shaped bytes; the
runtime is this checkout's): nothing is built."""
import struct
import sys
import zipfile

import pytest

from bundler import cli, stub
from bundler.splice import PYI_COOKIE_FORMAT, PYI_COOKIE_MAGIC, splice
from runtime import __main__ as entry
from runtime import cli as runtime_cli
from runtime.embedded import read_trailer
from tests.bundler.test_bundle_user_qa import _bundle, keep_pytests_signals  # noqa: F401
from tests.bundler.test_ship_explore import MODEL
from tests.bundler.test_splice import fake_pyinstaller_package, pyz_stub  # noqa: F401

PORT = 19600  # this test file's own (never listened on: serve is replaced)


def _start(bundle, monkeypatch, *args) -> int:
    """A start of `bundle` in-process, as its user types `./bundle ARGS`: its code, also
    when argparse exits."""
    monkeypatch.setattr(sys, "argv", [str(bundle)])  # the bundle reads its own trailer
    try:
        return entry.main(list(args))
    except SystemExit as e:
        return e.code


def _old_bundle(tmp_path, pyz_stub, *baked):
    """A bundle as `chatfile bundle` made it before it wrote baked args in full: splice()
    takes them as given."""
    out = tmp_path / "old.pyz"
    splice(pyz_stub, MODEL, out, fmt="pyz", args=list(baked), fsync=False)
    return out


def test_an_old_bundles_abbreviated_args_still_start_its_terminal_chat(
        capsys, tmp_path, pyz_stub, monkeypatch):
    """Baked `--no-brow --po N` made every `--cli` start fail with "unrecognized arguments",
    and a baked `--gguf-o 0` broke every start (the GGUF read at the bundle's byte 0)."""
    out = _old_bundle(tmp_path, pyz_stub, "--no-brow", "--po", str(PORT), "--cor",
                      "--gguf-o", "0")
    code = _start(out, monkeypatch, "--cli", "-p", "Hello", "-n", "3", "--temp", "0")
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip() and "unrecognized" not in captured.err, captured
    assert ("chatfile: note: the args baked into this bundle (by an older chatfile) set "
            "--gguf-offset, which the bundle sets itself; ignored\n") in captured.err


def test_an_old_bundles_baked_hidden_option_is_ignored_by_the_server_start(
        capsys, tmp_path, pyz_stub, monkeypatch):
    out = _old_bundle(tmp_path, pyz_stub, "--no-brow", f"--po={PORT}", "--gguf-o", "0")
    served = {}

    def serve(model, **kw):
        served.update(kw)
        return 0
    from runtime import server
    monkeypatch.setattr(server, "serve", serve)
    assert _start(out, monkeypatch) == 0, capsys.readouterr().err
    assert served["gguf_offset"] == read_trailer(out).gguf_offset
    assert (served["port"], served["open_browser"]) == (PORT, False)


def test_abbreviations_never_name_the_hidden_options(capsys, tmp_path, pyz_stub, monkeypatch):
    """`./bundle --gguf` was told "ambiguous option: --gguf could match --gguf-offset,
    --gguf-size", and `./bundle --cli --gguf-o 0` was taken as --gguf-offset 0 (the
    bundle's first byte read as the GGUF)."""
    out = _old_bundle(tmp_path, pyz_stub)
    hidden = ("--gguf-offset", "--gguf-size", runtime_cli.TEMPLATE_TEXT_FLAG)
    for args, said in [
            (["--gguf"], "unrecognized arguments: --gguf"),
            (["--c", "1"], "ambiguous option: --c could match --ctx, --chat-template, --cors"),
            (["--cli", "--gguf-o", "0", "-p", "Hi"], "--gguf-o is not an option")]:
        code = _start(out, monkeypatch, *args)
        err = capsys.readouterr().err
        assert code == 2 and said in err, (args, err)
        assert not any(flag in err for flag in hidden), (args, err)
    with pytest.raises(SystemExit):  # `chatfile run` alike
        runtime_cli.main(["run", str(MODEL), "--gguf"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --gguf" in err and "--gguf-size" not in err, err
    code, err = _bundle(capsys, "--stub", pyz_stub, "-o", tmp_path / "new.pyz", "--args=--c 1")
    # every `run` option that --c starts, in the parser's order, and none of the hidden
    run_options = [o for a in runtime_cli.build_parser().commands["run"]._actions
                   for o in a.option_strings if o.startswith("--c") and o not in hidden]
    assert run_options[:3] == ["--ctx", "--chat-template", "--cors"], run_options
    assert code == 2 and err == ("chatfile: error: --args '--c 1': ambiguous option: --c "
                                 f"could match {', '.join(run_options)}\n"), err


def test_a_deleted_current_directory_is_named(capsys, tmp_path, pyz_stub, monkeypatch):
    """It said only "[Errno 2] No such file or directory"."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    monkeypatch.setenv("PWD", str(gone))  # as the shell that was in it keeps it
    code, err = _bundle(capsys, "--stub", pyz_stub)  # into ./tiny-llama-q8_0.pyz
    assert code == 1 and err == (f"chatfile: error: the current directory {gone} no longer "
                                 f"exists (deleted or moved away?), so tiny-llama-q8_0.pyz "
                                 f"cannot be found or written there; cd to a directory that "
                                 f"exists, or give absolute paths\n"), err
    code = cli.main(["stub", "--format", "pyz", "-o", "stub.pyz"])
    assert code == 1 and "the current directory" in capsys.readouterr().err
    # Absolute paths alone need no current directory.
    code, err = _bundle(capsys, "--stub", pyz_stub, "-o", tmp_path / "chat.pyz")
    assert code == 0, err


def test_an_unwritable_cache_is_refused_before_a_build_is_announced(capsys, tmp_path,
                                                                     monkeypatch):
    """"building the exe runtime stub once ...; this takes about a minute..." came just
    before the refusal."""
    (tmp_path / "file").write_bytes(b"")
    monkeypatch.setenv("CHATFILE_CACHE_DIR", str(tmp_path / "file" / "cache"))
    monkeypatch.setattr(stub, "build_stub", lambda *a, **k: pytest.fail("built a stub"))
    code, err = _bundle(capsys, "-o", tmp_path / "chat.pyz")
    assert code == 1 and err.startswith("chatfile: error: cannot keep the stub in "
                                        "chatfile's cache"), err
    assert "building" not in err, err


def _fake_exe_stub(path, toc=b"runtime/web/index.html"):
    """PyInstaller-shaped bytes: an archive whose table of contents names `toc`, then its
    cookie, at the end of an "ELF" file."""
    body = b"fake PKG contents " * 50 + toc
    cookie = struct.pack(PYI_COOKIE_FORMAT, PYI_COOKIE_MAGIC,
                         len(body) + struct.calcsize(PYI_COOKIE_FORMAT), len(body) - len(toc),
                         len(toc), 311, b"libpython3.11.so")
    path.write_bytes(b"\x7fELF" + b"\0" * 60 + body + cookie)
    return path


def _fake_pyz_stub(path):
    """shiv's layout: the runtime under site-packages/."""
    with open(path, "wb") as f:
        f.write(b"#!/usr/bin/env python3\n")
        with zipfile.ZipFile(f, "w") as z:
            z.writestr("__main__.py", "")
            z.writestr("site-packages/runtime/__main__.py", "")
    return path


@pytest.mark.parametrize("fmt, make", [("exe", _fake_exe_stub), ("pyz", _fake_pyz_stub)])
def test_a_bare_stub_given_as_the_model_is_named_as_a_stub(capsys, tmp_path, fmt, make):
    """`chatfile info stub` said "not a GGUF file: magic is b'\\x7fELF'"."""
    bare = make(tmp_path / f"stub-{fmt}")
    how = f"chatfile bundle MODEL --stub {bare}" + (" --format pyz" if fmt == "pyz" else "")
    said = (f"{bare} is not a GGUF file: it is a chatfile runtime stub ({fmt}) without a "
            f"model; bundle a GGUF into it with `{how}`\n")
    assert cli.main(["info", str(bare)]) == 1
    assert capsys.readouterr().err == f"chatfile: error: {said}"
    code = cli.main(["bundle", str(bare), "--stub", str(tmp_path / "no-stub"), "-o",
                     str(tmp_path / "chat")])
    err = capsys.readouterr().err
    assert code == 1 and err == f"chatfile: error: {said}", err


def test_another_pyinstaller_program_is_no_chatfile_stub(capsys, tmp_path):
    other = tmp_path / "other"
    other.write_bytes(b"\x7fELF" + b"\0" * 60 + fake_pyinstaller_package())
    assert cli.main(["info", str(other)]) == 1
    err = capsys.readouterr().err
    assert "is not a GGUF file: magic is" in err and "stub" not in err, err
