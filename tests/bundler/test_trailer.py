"""The trailer format (runtime/embedded.py): round trips, and damage gives BundleError."""
import hashlib
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from runtime.embedded import (FOOTER_BYTES, GGUF_ALIGN_BYTES, MAGIC, MAX_TRAILER_BYTES,
                              BundleError, Trailer, decode_trailer, encode_head,
                              encode_trailer, extract, read_trailer, verify)

FIXTURE_GGUF = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "tiny-llama-q8_0.gguf"
GGUF_BYTES = b"GGUF" + bytes(range(256)) * 8


def make_bundle(path, trailer_kw=None, head=b"\x7fELF-fake-stub", tail=b"fake-archive"):
    """head | pad with HEAD record | GGUF at 64 KiB | tail | trailer; returns the Trailer."""
    off = GGUF_ALIGN_BYTES
    kw = dict(gguf_offset=off, gguf_size=len(GGUF_BYTES),
              sha256=hashlib.sha256(GGUF_BYTES).hexdigest(), args=("--ctx", "256"),
              title="Tiny ✓")
    kw.update(trailer_kw or {})
    t = Trailer(**kw)
    enc = encode_trailer(t)
    total = off + len(GGUF_BYTES) + len(tail) + len(enc)
    pad = off - len(head) - 32
    data = head + b"\0" * pad + encode_head(off, len(GGUF_BYTES), total) + GGUF_BYTES + tail + enc
    path.write_bytes(data)
    return t


def test_round_trip(tmp_path):
    p = tmp_path / "b"
    t = make_bundle(p)
    got = read_trailer(p)
    assert (got.gguf_offset, got.gguf_size, got.sha256, got.args, got.title, got.format) == \
        (t.gguf_offset, t.gguf_size, t.sha256, t.args, t.title, t.format)
    assert p.read_bytes()[-8:] == MAGIC
    assert verify(p, got)


@settings(max_examples=40, deadline=None)
@given(args=st.lists(st.text(max_size=20), max_size=6), title=st.text(max_size=40),
       off_blocks=st.integers(0, 1000), size=st.integers(0, 2**40))
def test_encode_decode_property(args, title, off_blocks, size):
    t = Trailer(gguf_offset=off_blocks * GGUF_ALIGN_BYTES, gguf_size=size, sha256="ab" * 32,
                args=tuple(args), title=title, format="pyz")
    enc = encode_trailer(t)
    file_bytes = t.gguf_offset + size + len(enc)
    got = decode_trailer(enc, file_bytes)
    assert got.payload() == t.payload()
    assert got.trailer_bytes == len(enc)


def test_unknown_keys_survive(tmp_path):
    t = Trailer(gguf_offset=0, gguf_size=0, sha256="0" * 64, extra={"future": [1, 2]})
    enc = encode_trailer(t)
    assert decode_trailer(enc, len(enc)).extra == {"future": [1, 2]}


def test_no_trailer_is_none(tmp_path):
    assert read_trailer(FIXTURE_GGUF) is None
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert read_trailer(empty) is None
    short = tmp_path / "short"
    short.write_bytes(b"CHATFILE")  # the magic alone, without a footer: not a bundle
    assert read_trailer(short) is None


def _corrupt(path, at, value=None):
    data = bytearray(path.read_bytes())
    data[at] = (data[at] ^ 0xFF) if value is None else value
    path.write_bytes(bytes(data))


def test_flipped_payload_byte_is_corrupt(tmp_path):
    p = tmp_path / "b"
    make_bundle(p)
    _corrupt(p, -FOOTER_BYTES - 5)
    with pytest.raises(BundleError, match="corrupt"):
        read_trailer(p)


def test_payload_length_past_start_is_corrupt(tmp_path):
    p = tmp_path / "b"
    make_bundle(p)
    data = bytearray(p.read_bytes())
    struct.pack_into("<I", data, len(data) - FOOTER_BYTES, len(data) + 10)
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupt or truncated"):
        read_trailer(p)


def test_newer_version_is_refused(tmp_path):
    p = tmp_path / "b"
    make_bundle(p)
    data = bytearray(p.read_bytes())
    struct.pack_into("<I", data, len(data) - FOOTER_BYTES + 8, 99)
    p.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="version 99"):
        read_trailer(p)


def test_gguf_extent_past_end_is_truncated(tmp_path):
    p = tmp_path / "b"
    make_bundle(p, {"gguf_size": 10**9})
    with pytest.raises(BundleError, match="truncated"):
        read_trailer(p)


def test_unaligned_offset_is_corrupt(tmp_path):
    p = tmp_path / "b"
    make_bundle(p, {"gguf_offset": 4096})
    with pytest.raises(BundleError, match="aligned"):
        read_trailer(p)


def test_missing_gguf_magic_is_corrupt(tmp_path):
    p = tmp_path / "b"
    t = make_bundle(p)
    _corrupt(p, t.gguf_offset)
    with pytest.raises(BundleError, match="no GGUF magic"):
        read_trailer(p)


def test_cut_off_end_is_truncated(tmp_path):
    # An interrupted copy loses the trailer; the HEAD record near the start still says
    # "this was a bundle", so the error says truncated instead of "no model".
    p = tmp_path / "b"
    make_bundle(p)
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    with pytest.raises(BundleError, match="truncated"):
        read_trailer(p)


def test_bad_json_and_types_are_corrupt():
    import zlib
    for payload in (b"{not json", b"[1,2]", b'{"gguf_offset":"x","gguf_size":1,"sha256":"0"}'):
        enc = payload + struct.pack("<IIII8s", len(payload), zlib.crc32(payload), 1, 0, MAGIC)
        with pytest.raises(BundleError, match="corrupt"):
            decode_trailer(enc, len(enc))


def test_oversized_trailer_is_refused():
    t = Trailer(gguf_offset=0, gguf_size=0, sha256="0" * 64, title="x" * MAX_TRAILER_BYTES)
    with pytest.raises(BundleError, match="shorten"):
        encode_trailer(t)


def test_verify_and_extract_detect_flipped_model_byte(tmp_path):
    p = tmp_path / "b"
    t = make_bundle(p)
    out = tmp_path / "x.gguf"
    extract(p, read_trailer(p), out)
    assert out.read_bytes() == GGUF_BYTES
    _corrupt(p, t.gguf_offset + 100)
    t2 = read_trailer(p)
    assert not verify(p, t2)
    out2 = tmp_path / "y.gguf"
    with pytest.raises(BundleError, match="sha256"):
        extract(p, t2, out2)
    assert not out2.exists()
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".part")] == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="flock is POSIX's")
def test_a_bundler_leaves_an_extraction_in_progress_alone(tmp_path):
    """`chatfile bundle -o q` removes the stale `.q.*.part` files of killed runs; an
    `--extract q` running at that moment must keep its own (it holds the same lock)."""
    from bundler.splice import _remove_stale_parts
    p = tmp_path / "b"
    make_bundle(p)
    out = tmp_path / "q"
    seen = []

    def midway(done, total):
        parts = [f for f in tmp_path.iterdir() if f.name.endswith(".part")]
        _remove_stale_parts(str(tmp_path), ".q.")
        seen.append([f.exists() for f in parts])
    extract(p, read_trailer(p), out, midway)
    assert seen and all(seen) and all(all(s) for s in seen), seen
    assert out.read_bytes() == GGUF_BYTES


def test_extract_names_the_users_path_when_the_disk_is_full(tmp_path, monkeypatch):
    import builtins
    import errno
    p = tmp_path / "b"
    make_bundle(p)
    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

    monkeypatch.setattr(builtins, "open", lambda f, mode="r", *a, **k:
                        Full(real_open(f, mode, *a, **k)) if mode == "wb" else real_open(f, mode, *a, **k))
    out = tmp_path / "x.gguf"
    with pytest.raises(BundleError, match=r"cannot write .*x\.gguf: No space left on device "
                                          r"\(the disk is full\); nothing was extracted"):
        extract(p, read_trailer(p), out)
    assert not out.exists() and not [f for f in tmp_path.iterdir() if f.name.endswith(".part")]


def test_every_damaged_bundle_says_to_get_it_again(tmp_path):
    """A corrupt or truncated bundle can only be replaced: each of these messages says
    so, as the truncated one always did (a flipped checksum used to say only "corrupt")."""
    def damaged(name, edit, check=read_trailer):
        p = tmp_path / name
        t = make_bundle(p, edit if isinstance(edit, dict) else None)
        if callable(edit):
            edit(p, t)
        with pytest.raises(BundleError) as e:
            check(p)
        return str(e.value)

    def set_length(p, t):
        data = bytearray(p.read_bytes())
        struct.pack_into("<I", data, len(data) - FOOTER_BYTES, len(data) + 10)
        p.write_bytes(bytes(data))

    messages = [
        damaged("checksum", lambda p, t: _corrupt(p, -FOOTER_BYTES - 5)),
        damaged("length", set_length),
        damaged("extent", {"gguf_size": 10**9}),
        damaged("aligned", {"gguf_offset": 4096}),
        damaged("magic", lambda p, t: _corrupt(p, t.gguf_offset)),
        damaged("cut", lambda p, t: p.write_bytes(p.read_bytes()[:-100])),
        damaged("model", lambda p, t: _corrupt(p, t.gguf_offset + 100),
                lambda p: extract(p, read_trailer(p), tmp_path / "out.gguf")),
    ]
    # Cut after its trailer was read (the file shrank under a running --verify/--extract).
    later = tmp_path / "cut-later"
    make_bundle(later)
    t = read_trailer(later)
    later.write_bytes(later.read_bytes()[:t.gguf_offset + 10])
    for check in (lambda: verify(later, t), lambda: extract(later, t, tmp_path / "cut.gguf")):
        with pytest.raises(BundleError) as e:
            check()
        messages.append(str(e.value))
    import zlib
    for payload in (b"{not json", b"[1,2]", b'{"gguf_offset":"x","gguf_size":1,"sha256":"0"}',
                    b'{"gguf_size":1}'):
        enc = payload + struct.pack("<IIII8s", len(payload), zlib.crc32(payload), 1, 0, MAGIC)
        with pytest.raises(BundleError) as e:
            decode_trailer(enc, len(enc))
        messages.append(str(e.value))
    for m in messages:
        assert ("corrupt" in m or "truncated" in m) and m.endswith(". Copy or download it again."), m
        assert m.count("again") == 1 and "\n" not in m, m
