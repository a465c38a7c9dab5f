"""The stub cache (bundler/stub.py): a new runtime version's stub is built once, and the
cache keeps only the few most recently used stubs of each format (each is 17-36 MB)."""
import os

from bundler import stub


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
