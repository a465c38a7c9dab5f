"""The stub cache (bundler/stub.py): a new runtime version's stub is built once, and the
cache keeps only the few most recently used stubs of each format (each is 17-36 MB)."""
import os
from pathlib import Path

from bundler import stub
from runtime.embedded import BundleError


def test_a_new_stub_prunes_all_but_the_most_recently_used(tmp_path, monkeypatch):
    monkeypatch.setattr(stub, "cache_dir", lambda: tmp_path)
    tag = stub.platform_tag()
    old = []
    for i in range(5):  # older versions' stubs, oldest first
        for fmt, suffix in (("pyz", ".pyz"), ("exe", stub._stub_suffix("exe"))):
            p = tmp_path / f"chatfile-0.0.{i}-{tag}-{fmt}-{i:016x}{suffix}"
            p.write_bytes(b"stub")
            os.utime(p, (1_000_000 + i, 1_000_000 + i))
            if fmt == "pyz":
                old.append(p)
    other = tmp_path / "chatfile-0.0.0-other-platform-pyz-0000000000000000.pyz"
    other.write_bytes(b"stub")
    unrelated = tmp_path / "notes.txt"
    unrelated.write_text("mine")
    built = []
    monkeypatch.setattr(stub, "build_stub", lambda fmt, path, log=None: (built.append(fmt),
                                                                         path.write_bytes(b"new")))
    new = stub.get_stub("pyz")
    assert built == ["pyz"] and new.read_bytes() == b"new"
    pyz = sorted(p.name for p in tmp_path.glob(f"chatfile-*-{tag}-pyz-*"))
    # the new one and the two most recent others; older pyz stubs are gone
    assert pyz == sorted([new.name, old[4].name, old[3].name]), pyz
    assert len(list(tmp_path.glob(f"chatfile-*-{tag}-exe-*"))) == 5  # another format: kept
    assert other.exists() and unrelated.exists()
    # A cached stub is not rebuilt, and using it marks it as recently used.
    os.utime(new, (1, 1))
    assert stub.get_stub("pyz") == new and built == ["pyz"] and new.stat().st_mtime > 1


def _old_stubs(tmp_path, fmt, n):
    tag = stub.platform_tag()
    old = []
    for i in range(n):  # older versions' stubs, oldest first
        p = tmp_path / f"chatfile-0.0.{i}-{tag}-{fmt}-{i:016x}{stub._stub_suffix(fmt)}"
        p.write_bytes(b"stub")
        os.utime(p, (1_000_000 + i, 1_000_000 + i))
        old.append(p)
    return old


def test_the_stub_command_prunes_the_cache_as_bundle_does(tmp_path, monkeypatch, capsys):
    """`chatfile stub` builds into the same cache: it used to leave every older stub
    there (17-36 MB each). With -o elsewhere, nothing in that directory is touched."""
    from bundler import cli
    monkeypatch.setattr(cli, "interrupt_on_termination", lambda: None)  # pytest's signals
    monkeypatch.setattr(stub, "cache_dir", lambda: tmp_path / "cache")
    (tmp_path / "cache").mkdir()
    old = _old_stubs(tmp_path / "cache", "pyz", 5)

    def build(fmt, out, log=None):
        Path(out).write_bytes(b"new")
        return 0.0
    monkeypatch.setattr(stub, "build_stub", build)
    assert cli.main(["stub", "--format", "pyz"]) == 0
    new = stub.cached_stub_path("pyz")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == \
        sorted([new.name, old[4].name, old[3].name])
    (tmp_path / "mine").mkdir()
    elsewhere = _old_stubs(tmp_path / "mine", "pyz", 5)
    assert cli.main(["stub", "--format", "pyz", "-o", str(tmp_path / "mine" / "x.pyz")]) == 0
    assert all(p.exists() for p in elsewhere)


def test_the_stub_build_time_is_announced_honestly(tmp_path, monkeypatch, capsys):
    """The PyInstaller stub takes 35-45 s here (README), shiv's about 6 s: "a minute or
    two" overstated both."""
    from bundler import cli
    monkeypatch.setattr(cli, "interrupt_on_termination", lambda: None)  # pytest's signals
    monkeypatch.setattr(stub, "cache_dir", lambda: tmp_path)

    def build(fmt, log=None):
        raise BundleError("stopped by the test")
    monkeypatch.setattr(stub, "get_stub", build)
    model = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "tiny-llama-q8_0.gguf"
    for fmt, took in (("exe", "about a minute"), ("pyz", "a few seconds")):  # shiv: ~6 s
        assert cli.main(["bundle", str(model), "--format", fmt, "-o", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert f"this takes {took}..." in err and "stopped by the test" in err, err
    quickstart = (Path(__file__).resolve().parents[2] / "build" / "quickstart.sh").read_text()
    assert "about a minute" in quickstart and "1-2 min" not in quickstart


def test_the_documented_cache_setting_moves_models_and_stubs_together(tmp_path, monkeypatch):
    # README: stubs and fetched models are both under $CHATFILE_CACHE_DIR when set (the
    # models' directory once followed an undocumented CHATFILE_CACHE instead, so a user who
    # moved the cache off a small home disk still got 491 MB written there).
    from bundler import models
    monkeypatch.setenv("CHATFILE_CACHE_DIR", str(tmp_path))
    assert models.cache_dir() == tmp_path / "models"
    assert stub.cache_dir() == tmp_path / "stubs"
    monkeypatch.delenv("CHATFILE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if os.name == "posix" and os.uname().sysname == "Linux":
        assert models.cache_dir() == tmp_path / "xdg" / "chatfile" / "models"
        assert stub.cache_dir() == tmp_path / "xdg" / "chatfile" / "stubs"
