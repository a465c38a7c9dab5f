"""The `chatfile` command's own mistakes, as someone shipping a model meets them (after
test_ship_explore and test_bundle_user_qa*):

- `chatfile bogus` (or `chatfile Run`) listed the commands to choose from as run, chat,
  info and bench: runtime.cli's parser answered, which does not know bundle and stub;
- `chatfile stub -o missing/` built for a minute and then wrote a file named `missing`
  (`bundle -o missing/` is refused as a directory's name); `-o some-dir` announced
  "building the stub" before it was refused.

Nothing is built: the stub builders are replaced by ones that fail the test."""
import pytest

from bundler import cli, stub


@pytest.fixture(autouse=True)
def keep_pytests_signals(monkeypatch):
    monkeypatch.setattr(cli, "interrupt_on_termination", lambda: None)


@pytest.fixture
def no_build(monkeypatch):
    for builder in ("_build_exe", "_build_pyz"):
        monkeypatch.setattr(stub, builder, lambda *a: pytest.fail("built a stub first"))


@pytest.mark.parametrize("typed", ["bogus", "Run", "bundel"])
def test_an_unknown_command_is_told_every_command(capsys, typed):
    with pytest.raises(SystemExit) as e:
        cli.main([typed, "model.gguf"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"chatfile: error: argument COMMAND: invalid choice: {typed!r} (choose from 'run', "
        f"'chat', 'info', 'bench', 'bundle', 'stub')"), err
    assert "Traceback" not in err


@pytest.mark.parametrize("fmt", ["exe", "pyz"])
def test_the_stub_command_refuses_a_directory_s_name_before_building(capsys, tmp_path,
                                                                     no_build, fmt):
    # A name that ends in "/" is a directory's, missing or not: never a file without it.
    missing = tmp_path / "missing"
    (tmp_path / "here").mkdir()
    for out in (f"{missing}/", f"{tmp_path / 'here'}", f"{tmp_path / 'here'}/"):
        code = cli.main(["stub", "--format", fmt, "-o", out])
        assert code == 1
        assert capsys.readouterr().err == (f"chatfile: error: {out} is a directory; give "
                                           f"the stub's file name with -o\n"), out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]
    assert list((tmp_path / "here").iterdir()) == []
