"""`chatfile bundle` and a bundle's start, as their users meet them: abbreviated options
baked in, a title typed in a terminal of another encoding, a cache that cannot be
written, long file names and stubs of the wrong kind. Each gave a traceback, a bundle
broken at every start, or a message that named the wrong thing.

Fake stubs only (test_splice's shebang + zip .pyz; the runtime is this checkout's):
nothing is built."""
import errno
import os
import shutil
import sys

import pytest

from bundler import cli, stub
from bundler.splice import splice
from runtime.embedded import extract, read_trailer
from tests.bundler.test_ship_explore import MODEL
from tests.bundler.test_splice import pyz_stub  # noqa: F401 (a fixture)


@pytest.fixture(autouse=True)
def keep_pytests_signals(monkeypatch):
    monkeypatch.setattr(cli, "interrupt_on_termination", lambda: None)


def _bundle(capsys, *args) -> tuple[int, str]:
    code = cli.main(["bundle", str(MODEL), "--format", "pyz", *map(str, args)])
    return code, capsys.readouterr().err


def test_abbreviated_server_options_baked_in_leave_the_terminal_chat_working(
        capsys, tmp_path, pyz_stub, monkeypatch):
    """argparse takes `--no-brow` for --no-browser, so `chatfile bundle` accepted it; but a
    bundle's --cli drops the server's options by their full names, so every `--cli` start
    of that bundle failed: "unrecognized arguments: --no-brow --po 9000"."""
    out = tmp_path / "chat.pyz"
    code, err = _bundle(capsys, "--stub", pyz_stub, "-o", out,
                        "--args=--no-brow --po 9000 --cor --allow-h x.com '--sys=Be brief'")
    assert code == 0, err
    assert read_trailer(out).args == ("--no-browser", "--port", "9000", "--cors",
                                      "--allow-host", "x.com", "--system=Be brief")
    from runtime import __main__ as entry
    monkeypatch.setattr(sys, "argv", [str(out)])  # the bundle started: it reads its trailer
    code = entry.main(["--cli", "-p", "Hello", "-n", "3", "--temp", "0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "unrecognized" not in captured.err and captured.out.strip(), captured


def test_an_abbreviated_hidden_option_is_refused_at_bundle_time(capsys, tmp_path, pyz_stub):
    """`--args "--gguf-o 0"` was baked in, and pointed every start of the bundle at its
    executable instead of its GGUF ("is not a GGUF file: magic is b'#!/u'")."""
    out = tmp_path / "chat.pyz"
    code, err = _bundle(capsys, "--stub", pyz_stub, "-o", out, "--args=--gguf-o 0")
    assert code == 2 and "--gguf-offset is set by the bundle itself" in err, err
    assert not out.exists()


@pytest.mark.parametrize("flag, value", [("--title", "caf\udce9"),
                                         ("--args", "--system caf\udce9")])
def test_a_title_or_args_that_are_not_utf8_are_refused_without_a_traceback(
        capsys, tmp_path, pyz_stub, flag, value):
    """`--title $'caf\\xe9'` (Latin-1 bytes, which Python keeps as a lone surrogate) was a
    UnicodeEncodeError traceback from writing the trailer, which is UTF-8 JSON."""
    out = tmp_path / "chat.pyz"
    code, err = _bundle(capsys, "--stub", pyz_stub, "-o", out, flag, value)
    assert code == 2 and err.startswith(f"chatfile: error: {flag} ") and \
        "not UTF-8" in err, err
    assert not out.exists()


def test_a_cache_that_cannot_be_written_says_how_to_avoid_it(capsys, tmp_path, monkeypatch):
    """A HOME that cannot be written gave "chatfile: error: [Errno 30] Read-only file
    system: '/home/me/.cache'" and no way out."""
    (tmp_path / "file").write_bytes(b"")
    monkeypatch.setenv("CHATFILE_CACHE_DIR", str(tmp_path / "file" / "cache"))
    monkeypatch.setattr(stub, "build_stub", lambda *a, **k: pytest.fail("built a stub"))
    code, err = _bundle(capsys, "-o", tmp_path / "chat.pyz")
    assert code == 1, err
    assert "cannot keep the stub in chatfile's cache" in err and \
        "set CHATFILE_CACHE_DIR to a directory you can write, or give a stub with --stub" in err
    assert "[Errno" not in err, err


def test_the_stub_command_refuses_an_unwritable_place_before_building(capsys, tmp_path,
                                                                       monkeypatch):
    (tmp_path / "file").write_bytes(b"")
    out = tmp_path / "file" / "stub.pyz"
    monkeypatch.setattr(stub, "_build_pyz", lambda *a: pytest.fail("built a stub first"))
    code = cli.main(["stub", "--format", "pyz", "-o", str(out)])
    err = capsys.readouterr().err
    # bundle -o's words (bundler/splice.py's check_output_dir, which both use)
    assert code == 1 and err == (f"chatfile: error: cannot write {out}: {tmp_path / 'file'} "
                                 f"is a file, not a directory\n"), err


def test_a_full_disk_while_the_stub_is_stored_names_the_stub(capsys, tmp_path, monkeypatch):
    built = tmp_path / "built.pyz"
    built.write_bytes(b"stub")
    monkeypatch.setattr(stub, "_build_pyz", lambda work, log: built)

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
    monkeypatch.setattr(shutil, "copyfile", full)
    out = tmp_path / "out" / "stub.pyz"
    out.parent.mkdir()  # (a missing one is refused before the build, as bundle -o's is)
    code = cli.main(["stub", "--format", "pyz", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and f"cannot write the stub {out}: No space left on device" in err, err
    assert os.listdir(out.parent) == []  # neither the stub nor its temporary file


def test_a_long_but_legal_output_name_is_written(tmp_path, pyz_stub):
    """A name of 250 bytes was refused with "File name too long": the temporary file
    beside it (".NAME.xxxxxxxx.part") was the one too long. The same for --extract."""
    out = tmp_path / ("b" * 250)
    splice(pyz_stub, MODEL, out, fmt="pyz", fsync=False)
    trailer = read_trailer(out)
    assert trailer is not None
    gguf = tmp_path / ("é" * 127)  # 254 bytes in UTF-8
    extract(out, trailer, gguf)
    assert gguf.read_bytes() == MODEL.read_bytes()
    assert sorted(os.listdir(tmp_path)) == sorted([pyz_stub.name, out.name, gguf.name])


def test_a_stub_of_the_other_format_or_missing_is_named_as_the_stub(capsys, tmp_path,
                                                                    pyz_stub):
    out = tmp_path / "chat"
    code = cli.main(["bundle", str(MODEL), "--stub", str(pyz_stub), "-o", str(out)])
    err = capsys.readouterr().err
    # (it said the stub was no PyInstaller executable, and to build one)
    assert code == 1 and err == (f"chatfile: error: the stub {pyz_stub} is a .pyz stub; add "
                                 f"--format pyz to bundle into it\n"), err
    code, err = _bundle(capsys, "--stub", tmp_path / "nope", "-o", out)
    assert code == 1 and err == (f"chatfile: error: cannot read stub {tmp_path / 'nope'}: "
                                 f"No such file or directory\n"), err
    assert not out.exists()


def test_the_stub_command_never_replaces_a_gguf_model(capsys, tmp_path, monkeypatch):
    """`chatfile stub -o NAME` refreshes a stub without --force; `-o model.gguf` replaced
    the user's model with a stub after a minute of building."""
    model = tmp_path / "model.gguf"
    shutil.copyfile(MODEL, model)
    monkeypatch.setattr(stub, "build_stub", lambda *a, **k: pytest.fail("built a stub"))
    code = cli.main(["stub", "--format", "pyz", "-o", str(model)])
    err = capsys.readouterr().err
    assert code == 1 and err == (f"chatfile: error: {model} is a GGUF model; give the stub "
                                 f"another name with -o\n"), err
    assert model.read_bytes() == MODEL.read_bytes()
