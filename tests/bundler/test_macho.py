"""Splicing into synthetic Mach-O (macOS) stubs: headers, signature removal, codesign, refusals.

No Mac here: the stubs are built by hand the way PyInstaller leaves them (archive at the end
of the string table, __LINKEDIT grown to the end of the file, then an ad hoc signature), and
`sign_like_codesign` appends a signature the way codesign does. That checks our arithmetic
against our reading of the format, not against macOS itself.
"""
import hashlib
import os
import struct
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bundler import cli, macho
from bundler import splice as splice_mod
from bundler.splice import PYI_COOKIE_BYTES, PYI_COOKIE_FORMAT, PYI_COOKIE_MAGIC, splice
from runtime import __main__ as bundle_main
from runtime.embedded import FOOTER_BYTES, MAGIC, BundleError, extract, read_trailer, verify
from test_splice import MODEL, fake_pyinstaller_package

ARM64, X86_64 = 0x0100000C, 0x01000007
TEXT_BYTES = 0x4000  # __TEXT: header, load commands, then "code"
VM_BASE = 0x1_0000_0000  # after __PAGEZERO, as in every 64-bit executable
SIG_PAGE_BYTES = 4096  # codesign hashes 4 KiB pages
SUPERBLOB_MAGIC, CODEDIRECTORY_MAGIC = 0xFADE0CC0, 0xFADE0C02


def segment(name, vmaddr, vmsize, fileoff, filesize):
    return struct.pack(macho.SEGMENT_FORMAT, macho.LC_SEGMENT_64, macho.SEGMENT_BYTES,
                       name.ljust(16, b"\0"), vmaddr, vmsize, fileoff, filesize, 7, 5, 0, 0)


def macho_stub(cputype=ARM64, signed=True, package=None) -> bytes:
    """A thin Mach-O 64 executable as PyInstaller 6 leaves it: [__TEXT][__LINKEDIT: symbols,
    strings + archive][signature], with LC_SYMTAB and __LINKEDIT covering the archive."""
    package = fake_pyinstaller_package() if package is None else package
    symbols = struct.pack("<IBBHQ", 1, 0x0F, 1, 0, VM_BASE) * 2  # two nlist_64 entries
    strings = b"\0__mh_execute_header\0_main\0".ljust(32, b"\0")
    linkedit = TEXT_BYTES
    stroff = linkedit + len(symbols)
    end = stroff + len(strings) + len(package)
    cmds = [segment(b"__PAGEZERO", 0, VM_BASE, 0, 0),
            segment(b"__TEXT", VM_BASE, TEXT_BYTES, 0, TEXT_BYTES),
            segment(b"__LINKEDIT", VM_BASE + TEXT_BYTES, align(end - linkedit, 0x4000),
                    linkedit, end - linkedit),
            struct.pack(macho.SYMTAB_FORMAT, macho.LC_SYMTAB, macho.SYMTAB_BYTES, linkedit, 2,
                        stroff, end - stroff)]
    head = struct.pack(macho.HEADER_FORMAT, 0xFEEDFACF, cputype, 0, macho.MH_EXECUTE,
                       len(cmds), sum(map(len, cmds)), 0x200085, 0) + b"".join(cmds)
    text = head + bytes(0x1000 - len(head)) + b"\xc0\x03\x5f\xd6" * ((TEXT_BYTES - 0x1000) // 4)
    data = text + symbols + strings + package
    return sign_like_codesign(data) if signed else data


def align(n, to):
    return (n + to - 1) // to * to


def load_commands(data):
    """{cmd: [(offset, raw command bytes)]} of a (well-formed) Mach-O 64."""
    ncmds, = struct.unpack_from("<I", data, 16)
    out, at = {}, macho.HEADER_BYTES
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, at)
        out.setdefault(cmd, []).append((at, bytes(data[at:at + size])))
        at += size
    return out


def sign_like_codesign(data: bytes) -> bytes:
    """Append an ad hoc-like signature as codesign does to an unsigned Mach-O: the SuperBlob
    starts on the next 16-byte boundary, holds a hash of every 4 KiB page before it, and
    LC_CODE_SIGNATURE (added after the last load command) and __LINKEDIT cover it."""
    data = bytearray(data)
    ncmds, sizeofcmds = struct.unpack_from("<II", data, 16)
    dataoff = align(len(data), 16)
    data += bytes(dataoff - len(data))
    hashes = b"".join(hashlib.sha256(data[i:i + SIG_PAGE_BYTES]).digest()
                      for i in range(0, dataoff, SIG_PAGE_BYTES))
    directory = struct.pack(">II", CODEDIRECTORY_MAGIC, 8 + len(hashes)) + hashes
    blob = struct.pack(">IIIII", SUPERBLOB_MAGIC, 20 + len(directory), 1, 0, 20) + directory
    blob += bytes(align(len(blob), 16) - len(blob))
    at = macho.HEADER_BYTES + sizeofcmds
    assert data[at:at + 16] == bytes(16), "no room for another load command"
    struct.pack_into(macho.LINKEDIT_DATA_FORMAT, data, at, macho.LC_CODE_SIGNATURE, 16,
                     dataoff, len(blob))
    struct.pack_into("<II", data, 16, ncmds + 1, sizeofcmds + 16)
    (seg_at, seg), = [(a, c) for a, c in load_commands(data)[macho.LC_SEGMENT_64]
                      if c[8:18] == b"__LINKEDIT"]
    fileoff, = struct.unpack_from("<Q", seg, 40)
    filesize = dataoff + len(blob) - fileoff
    struct.pack_into("<Q", data, seg_at + 32, align(filesize, 0x4000))
    struct.pack_into("<Q", data, seg_at + 48, filesize)
    return bytes(data + blob)


@pytest.fixture
def no_codesign(monkeypatch):
    """Bundling on Linux: there is no codesign (also where one happens to be installed)."""
    real_which = splice_mod.shutil.which

    def which(name, *a, **k):
        return None if name == "codesign" else real_which(name, *a, **k)

    monkeypatch.setattr(splice_mod.shutil, "which", which)


def check_linkedit_covers_all(data):
    """The Mach-O invariants PyInstaller established and the splice must keep."""
    cmds = load_commands(data)
    (_, symtab), = cmds[macho.LC_SYMTAB]
    _, _, _, _, stroff, strsize = struct.unpack(macho.SYMTAB_FORMAT, symtab)
    (_, seg), = [(a, c) for a, c in cmds[macho.LC_SEGMENT_64] if c[8:18] == b"__LINKEDIT"]
    _, _, _, _, vmsize, fileoff, filesize, *_ = struct.unpack(macho.SEGMENT_FORMAT, seg)
    sig = cmds.get(macho.LC_CODE_SIGNATURE)
    end = struct.unpack_from("<II", sig[0][1], 8)[0] if sig else len(data)
    assert stroff + strsize == end  # the string table runs to the signature (or the end)
    assert fileoff + filesize == len(data)  # __LINKEDIT covers everything, signature included
    assert vmsize % macho.PAGE_BYTES == 0 and vmsize >= filesize
    assert end % macho.SIGNATURE_ALIGN_BYTES == 0
    ncmds, sizeofcmds = struct.unpack_from("<II", data, 16)
    assert sizeofcmds == sum(len(c) for v in cmds.values() for _, c in v)
    return cmds


def archive_start(data):
    """Where the bootloader finds its archive: last cookie, minus the package length."""
    cookie = data.rfind(PYI_COOKIE_MAGIC)
    _, pkg_bytes, *_ = struct.unpack_from(PYI_COOKIE_FORMAT, data, cookie)
    return cookie + PYI_COOKIE_BYTES - pkg_bytes


@pytest.mark.parametrize("cputype", [ARM64, X86_64])
@pytest.mark.parametrize("signed", [True, False], ids=["signed-stub", "unsigned-stub"])
def test_headers_cover_the_model_and_signature_is_removed(tmp_path, no_codesign, cputype, signed):
    stub_bytes = macho_stub(cputype, signed=signed)
    stub = tmp_path / "stub"
    stub.write_bytes(stub_bytes)
    out = tmp_path / "bundle"
    r = splice(stub, MODEL, out, args=["--ctx", "256"], title="Tiny Mac")
    data, model, package = out.read_bytes(), MODEL.read_bytes(), fake_pyinstaller_package()
    assert len(data) == r.bundle_bytes and r.signed is False

    cmds = check_linkedit_covers_all(data)
    assert macho.LC_CODE_SIGNATURE not in cmds  # codesign is missing: the bundle is unsigned
    old_ncmds, old_sizeofcmds = struct.unpack_from("<II", stub_bytes, 16)
    ncmds, sizeofcmds = struct.unpack_from("<II", data, 16)
    assert (ncmds, sizeofcmds) == ((old_ncmds - 1, old_sizeofcmds - 16) if signed
                                   else (old_ncmds, old_sizeofcmds))
    # the old signature command is zeroed; the rest of __TEXT is untouched
    assert data[32 + sizeofcmds:0x1000] == bytes(0x1000 - 32 - sizeofcmds)
    assert data[0x1000:TEXT_BYTES + 64] == stub_bytes[0x1000:TEXT_BYTES + 64]

    t = read_trailer(out)
    assert (t.args, t.title, t.gguf_size) == (("--ctx", "256"), "Tiny Mac", len(model))
    assert data[t.gguf_offset:t.gguf_offset + t.gguf_size] == model
    # the bootloader's cookie arithmetic still lands on the archive, right after the model
    start = archive_start(data)
    assert start == t.gguf_offset + t.gguf_size
    assert data[start:start + len(package)] == package
    # the trailer ends the file, which is 16-byte aligned for the signature to come
    assert data[-8:] == MAGIC and len(data) % 16 == 0
    assert verify(out, t)
    x = tmp_path / "x.gguf"
    extract(out, t, x)
    assert x.read_bytes() == model


def test_signed_bundle_still_reads(tmp_path, no_codesign, monkeypatch, capsys):
    """After `codesign -s -` the signature follows the trailer; the runtime reads past it."""
    stub = tmp_path / "stub"
    stub.write_bytes(macho_stub())
    out = tmp_path / "bundle"
    r = splice(stub, MODEL, out, title="Signed")
    unsigned = out.read_bytes()
    out.write_bytes(sign_like_codesign(unsigned))
    data = out.read_bytes()
    assert data[-8:] != MAGIC and data[len(unsigned) - 8:len(unsigned)] == MAGIC
    check_linkedit_covers_all(data)
    assert data[len(unsigned):len(unsigned) + 4] == struct.pack(">I", SUPERBLOB_MAGIC)
    assert archive_start(data) == r.gguf_offset + r.gguf_size  # scanned through the signature

    t = read_trailer(out)
    assert (t.gguf_offset, t.gguf_size, t.sha256, t.title) == \
        (r.gguf_offset, r.gguf_size, r.sha256, "Signed")
    assert verify(out, t)
    # the bundle's own --verify and --extract, as the frozen executable runs them
    monkeypatch.setattr(bundle_main, "bundle_path", lambda: str(out))
    assert bundle_main.main(["--verify"]) == 0
    x = tmp_path / "x.gguf"
    assert bundle_main.main(["--extract", str(x)]) == 0
    assert x.read_bytes() == MODEL.read_bytes()
    assert "OK: the embedded model matches" in capsys.readouterr().out
    # a signed bundle is not a bare stub
    with pytest.raises(BundleError, match="already carries a model"):
        splice(out, MODEL, tmp_path / "again")


def test_signed_bundle_cut_short_is_truncated(tmp_path, no_codesign):
    stub = tmp_path / "stub"
    stub.write_bytes(macho_stub())
    out = tmp_path / "bundle"
    r = splice(stub, MODEL, out)
    unsigned_bytes = r.bundle_bytes
    signed = sign_like_codesign(out.read_bytes())
    # an interrupted download: the signature and half the trailer are gone
    out.write_bytes(signed[:unsigned_bytes - FOOTER_BYTES // 2])
    with pytest.raises(BundleError, match="truncated"):
        read_trailer(out)
    # cut inside the signature: the model and trailer are whole and still read
    out.write_bytes(signed[:unsigned_bytes + 100])
    assert read_trailer(out).sha256 == r.sha256


def fake_tool(tmp_path, name, body) -> Path:
    """An executable `name` in tmp_path/bin, a Python script running `body`."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    tool = bindir / name
    tool.write_text(f"#!{sys.executable}\nimport sys\n{body}")
    tool.chmod(0o755)
    return bindir


def test_codesign_on_path_signs_the_bundle(tmp_path, monkeypatch):
    log = tmp_path / "codesign.log"
    here = Path(__file__).resolve().parent
    bindir = fake_tool(tmp_path, "codesign", (
        f"sys.path[:0] = [{str(here)!r}, {str(here.parents[1])!r}]\n"
        "from test_macho import sign_like_codesign\n"
        f"open({str(log)!r}, 'w').write('\\n'.join(sys.argv[1:]))\n"
        "path = sys.argv[-1]\n"
        "data = open(path, 'rb').read()\n"
        "open(path, 'wb').write(sign_like_codesign(data))\n"))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    stub = tmp_path / "stub"
    stub.write_bytes(macho_stub())
    out = tmp_path / "out" / "bundle"
    out.parent.mkdir()
    r = splice(stub, MODEL, out)
    argv = log.read_text().split("\n")
    assert argv[:5] == ["-s", "-", "--force", "--identifier", "bundle"]
    # it signed the temporary file, before the rename
    assert Path(argv[5]).parent == out.parent and argv[5].endswith(".part")
    assert (r.signed, r.notes) == (True, ())
    data = out.read_bytes()
    assert r.bundle_bytes == len(data)
    assert macho.LC_CODE_SIGNATURE in check_linkedit_covers_all(data)
    t = read_trailer(out)
    assert t.sha256 == r.sha256 and verify(out, t)
    assert sorted(p.name for p in out.parent.iterdir()) == ["bundle"]
    assert os.access(out, os.X_OK)


# A codesign that fails, and one that succeeds but appends its signature somewhere other
# than right after the trailer (so the runtime would not find the model): both refused,
# and nothing is left under the target name.
BAD_CODESIGNS = {
    "fails": ("sys.stderr.write('bundle: code object is not signed at all\\n')\n"
              "sys.exit(1)\n", "codesign could not sign.*not signed at all"),
    "moves the trailer": ("open(sys.argv[-1], 'ab').write(b'unexpected bytes')\n",
                          "no longer where the runtime looks"),
}


@pytest.mark.parametrize("case", sorted(BAD_CODESIGNS))
def test_bad_codesign_leaves_nothing(tmp_path, monkeypatch, case):
    script, message = BAD_CODESIGNS[case]
    bindir = fake_tool(tmp_path, "codesign", script)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    stub = tmp_path / "stub"
    stub.write_bytes(macho_stub())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(BundleError, match=message):
        splice(stub, MODEL, out_dir / "bundle")
    assert list(out_dir.iterdir()) == []


def test_cli_says_the_bundle_is_unsigned(tmp_path, no_codesign, capsys):
    stub = tmp_path / "stub"
    stub.write_bytes(macho_stub())
    out = tmp_path / "My Model"
    assert cli.main(["bundle", str(MODEL), "--stub", str(stub), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "NOT code-signed" in err
    assert "codesign -s - 'My Model'" in err
    assert "xattr -d com.apple.quarantine 'My Model'" in err
    assert read_trailer(out) is not None


def test_no_notice_for_other_executables(tmp_path, no_codesign):
    from test_splice import fake_pe_stub
    stub = tmp_path / "stub.exe"
    fake_pe_stub(stub)
    r = splice(stub, MODEL, tmp_path / "b.exe")
    assert (r.signed, r.notes) == (None, ())


def _mutated(data, at, fmt, value):
    data = bytearray(data)
    struct.pack_into(fmt, data, at, value)
    return bytes(data)


def _cmd_at(data, cmd, nth=0):
    return load_commands(data)[cmd][nth][0]


def _refusals():
    signed, unsigned = macho_stub(), macho_stub(signed=False)
    sig = _cmd_at(signed, macho.LC_CODE_SIGNATURE)
    sym = _cmd_at(signed, macho.LC_SYMTAB)
    text = _cmd_at(signed, macho.LC_SEGMENT_64, 1)
    linkedit = _cmd_at(signed, macho.LC_SEGMENT_64, 2)
    package = fake_pyinstaller_package()
    # LC_CODE_SIGNATURE moved before LC_SYMTAB (both 16/24 bytes: swap the raw commands)
    cmds = load_commands(signed)
    swapped = bytearray(signed)
    sym_raw, sig_raw = cmds[macho.LC_SYMTAB][0][1], cmds[macho.LC_CODE_SIGNATURE][0][1]
    swapped[sym:sym + 40] = sig_raw + sym_raw
    return {
        "fat": (b"\xca\xfe\xba\xbe" + signed[4:], "universal.*lipo.*--format pyz"),
        "32-bit": (b"\xce\xfa\xed\xfe" + signed[4:], "32-bit.*lipo"),
        "big-endian": (b"\xfe\xed\xfa\xcf" + signed[4:], "big-endian"),
        "i386 cpu": (_mutated(signed, 4, "<I", 7), "CPU type 0x7"),
        "dylib": (_mutated(signed, 12, "<I", 6), "not an executable"),
        "truncated header": (signed[:20] + package, "malformed"),
        "truncated commands": (signed[:200] + package, "malformed"),
        "sizeofcmds past end": (_mutated(signed, 20, "<I", 10**9), "past the end"),
        "sizeofcmds too small": (_mutated(signed, 20, "<I", 72), "malformed"),
        "ncmds too many": (_mutated(signed, 16, "<I", 50), "past sizeofcmds"),
        "ncmds too few": (_mutated(signed, 16, "<I", 2), "sizeofcmds is"),
        "zero cmdsize": (_mutated(signed, text + 4, "<I", 0), "bad size 0"),
        "odd cmdsize": (_mutated(signed, text + 4, "<I", 73), "bad size 73"),
        "signature not last": (bytes(swapped), "not the last"),
        "signature past end": (_mutated(signed, sig + 12, "<I", 10**8), "outside the file"),
        "signature in header": (_mutated(signed, sig + 8, "<I", 40), "outside the file"),
        "signature before archive": (_mutated(signed, sig + 8, "<I", TEXT_BYTES + 64),
                                     "not a PyInstaller onefile"),
        "no __LINKEDIT": (_mutated(signed, linkedit + 8, "16s", b"__DATA"), "expected one"),
        "segment after __LINKEDIT": (_mutated(signed, text + 40, "<Q", TEXT_BYTES + 8),
                                     "__TEXT lies after __LINKEDIT"),
        "segment above __LINKEDIT in memory": (
            _mutated(signed, text + 32, "<Q", 2 * TEXT_BYTES), "lies after __LINKEDIT"),
        "too many sections": (_mutated(signed, text + 64, "<I", 5), "more sections"),
        "string table after archive": (_mutated(unsigned, sym + 16, "<I", len(unsigned) - 8),
                                       "not in the string table"),
        "symbols into archive": (_mutated(signed, sym + 12, "<I", 10**6),
                                 "symbol table runs into"),
        "no symbol table": (_mutated(signed, sym, "<I", 0x99), "expected one"),
    }


REFUSALS = _refusals()


@pytest.mark.parametrize("name", list(REFUSALS))
def test_malformed_or_unsupported_stub_is_refused(tmp_path, name):
    data, message = REFUSALS[name]
    stub = tmp_path / "stub"
    stub.write_bytes(data)
    with pytest.raises(BundleError, match=message):
        splice(stub, MODEL, tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stub"]


def test_over_4gib_is_refused(tmp_path, monkeypatch):
    stub = tmp_path / "stub"
    stub.write_bytes(macho_stub())
    monkeypatch.setattr(splice_mod, "_check_gguf", lambda p: 4 * 1024**3)  # a "4 GiB model"
    with pytest.raises(BundleError, match="cannot exceed 4 GiB.*-m model.gguf"):
        splice(stub, MODEL, tmp_path / "big")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stub"]


def _plan(data):
    return splice_mod.plan_exe(data, lambda cut: 5 * 65536, lambda cut: 300)


HEADER_WORDS = (macho.HEADER_BYTES + struct.unpack_from("<I", macho_stub(), 20)[0]) // 4


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(word=st.integers(0, HEADER_WORDS - 1),
       value=st.one_of(st.sampled_from([0, 1, 8, 15, 16, 0x7FFFFFFF, 0xFFFFFFFF, TEXT_BYTES]),
                       st.integers(0, 2**32 - 1)),
       signed=st.booleans())
def test_any_lying_header_word_is_an_error_or_consistent(word, value, signed):
    """Overwrite one 32-bit word of the header or load commands: the result is a BundleError
    or a plan whose headers still hold; never another exception."""
    data = _mutated(macho_stub(signed=signed), word * 4, "<I", value)
    try:
        layout = _plan(data)
    except BundleError:
        return
    if layout.kind != "macho":  # the magic itself was overwritten: not a Mach-O any more
        return
    patched = layout.head + bytes(5 * 65536) + layout.tail + bytes(300)
    assert macho.LC_CODE_SIGNATURE not in check_linkedit_covers_all(patched)
    assert archive_start(patched) == len(layout.head) + 5 * 65536


def test_runtime_reads_only_the_header(tmp_path):
    """The start-up check of a signed bundle costs a header read, not a file scan."""
    from runtime.embedded import data_end

    class Counting:
        def __init__(self, f):
            self.f, self.read_bytes = f, 0

        def seek(self, *a):
            return self.f.seek(*a)

        def read(self, n=-1):
            chunk = self.f.read(n)
            self.read_bytes += len(chunk)
            return chunk

    data = macho_stub()
    p = tmp_path / "stub"
    p.write_bytes(data)
    with open(p, "rb") as f:
        c = Counting(f)
        sig_at = struct.unpack_from("<I", load_commands(data)[macho.LC_CODE_SIGNATURE][0][1], 8)[0]
        assert data_end(c, len(data)) == sig_at
        assert c.read_bytes <= 32 + struct.unpack_from("<I", data, 20)[0]
