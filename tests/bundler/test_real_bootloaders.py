"""Splicing into PyInstaller's real macOS and Windows bootloaders, without a Mac or Windows.

test_macho.py and test_splice.py build their stubs by hand. Here the stub's executable part
is PyInstaller's own bootloader, taken from the macOS and Windows wheels of the PyInstaller
version installed (fetched once with pip into ~/.cache/chatfile/pyinstaller-wheels). The
stub is then made as PyInstaller makes it on that platform, up to the step we cannot run:
- macOS: one slice of the universal `run` (PyInstaller thins it with lipo), its signature
  removed (PyInstaller runs `codesign --remove-signature`; we use bundler.macho's), a fake
  archive appended, and PyInstaller's own `fix_exe_for_code_signing` applied. `codesign`
  itself does not exist here;
- Windows: `run.exe` with a fake archive appended.
After the splice, LIEF (and macholib) parse the bundle as independent readers, and the
runtime must find, verify and extract the model.
"""
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bundler import macho
from bundler.splice import splice
from runtime.embedded import extract, read_trailer, verify

from test_splice import MODEL, fake_pyinstaller_package

PyInstaller = pytest.importorskip("PyInstaller", reason="PyInstaller is a test dependency")
lief = pytest.importorskip("lief", reason="LIEF (pip install lief) parses the bundles")
# LIEF's bindings report their objects as "leaked" at interpreter exit: noise in CI's log.
getattr(lief, "disable_leak_warning", lambda: None)()
pytest.importorskip("macholib", reason="macholib runs PyInstaller's own Mach-O fix")

WHEEL_PLATFORMS = {"macos": "macosx_10_13_universal2", "windows": "win_amd64"}
BOOTLOADERS = {"macos": "PyInstaller/bootloader/Darwin-64bit/run",
               "windows": "PyInstaller/bootloader/Windows-64bit-intel/run.exe"}
FAT_MAGIC = b"\xca\xfe\xba\xbe"  # big-endian header: nfat_arch, then (cpu, sub, off, size, align)


def bootloader(system: str) -> bytes:
    """PyInstaller's `run` bootloader for `system`, from that platform's wheel."""
    version = PyInstaller.__version__
    cache = Path.home() / ".cache" / "chatfile" / "pyinstaller-wheels" / version
    wheels = list(cache.glob(f"*{WHEEL_PLATFORMS[system]}.whl"))
    if not wheels:
        cache.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             "--disable-pip-version-check", "--platform", WHEEL_PLATFORMS[system],
             "-d", str(cache), f"pyinstaller=={version}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wheels = list(cache.glob(f"*{WHEEL_PLATFORMS[system]}.whl"))
        if r.returncode or not wheels:
            why = f"pip could not fetch PyInstaller {version}'s {system} wheel: {r.stdout[-500:]}"
            if os.environ.get("CI"):
                pytest.fail(why)
            pytest.skip(why)
    with zipfile.ZipFile(wheels[0]) as z:
        return z.read(BOOTLOADERS[system])


def thin(fat: bytes, cputype: int) -> bytes:
    """One architecture's slice of a universal Mach-O, as `lipo -thin` gives it."""
    assert fat[:4] == FAT_MAGIC
    (n_arch,) = struct.unpack_from(">I", fat, 4)
    for i in range(n_arch):
        cpu, _, offset, size, _ = struct.unpack_from(">IIIII", fat, 8 + 20 * i)
        if cpu == cputype:
            return fat[offset:offset + size]
    raise AssertionError(f"no slice for CPU type {cputype:#x}")


def check_bundle(out: Path, tmp_path: Path) -> None:
    t = read_trailer(out)
    assert t is not None and verify(out, t)
    extract(out, t, tmp_path / "model.gguf")
    assert (tmp_path / "model.gguf").read_bytes() == MODEL.read_bytes()


@pytest.mark.parametrize("arch", ["arm64", "x86_64"])
def test_macos_bootloader(tmp_path, arch):
    from macholib.MachO import MachO
    from PyInstaller.utils.osx import fix_exe_for_code_signing

    cputype = {v: k for k, v in macho.CPU_TYPES.items()}[arch]
    bare = macho.remove_signature(thin(bootloader("macos"), cputype))
    stub = tmp_path / "stub"
    stub.write_bytes(bare + fake_pyinstaller_package())
    fix_exe_for_code_signing(str(stub))  # PyInstaller's step before codesign

    out = tmp_path / "bundle"
    result = splice(stub, MODEL, out)
    assert result.signed is False and "NOT code-signed" in result.notes[0]  # no codesign here
    size = out.stat().st_size
    binary = lief.MachO.parse(str(out)).at(0)
    linkedit = binary.get_segment("__LINKEDIT")
    symtab = binary.symbol_command
    # LIEF reads what the kernel and dyld read: the data it accounts for ends at the file's end.
    assert linkedit.file_offset + linkedit.file_size == size
    assert symtab.strings_offset + symtab.strings_size == size
    assert linkedit.virtual_size % macho.PAGE_BYTES == 0 and linkedit.virtual_size >= linkedit.file_size
    assert not binary.has_code_signature
    # Only sizes in the load commands changed: the bootloader's code and data, everything
    # after the header and load commands up to the archive, are byte-identical.
    (sizeofcmds,) = struct.unpack_from("<I", bare, 20)
    data = out.read_bytes()
    assert data[macho.HEADER_BYTES + sizeofcmds:len(bare)] == bare[macho.HEADER_BYTES + sizeofcmds:]
    assert len(MachO(str(out)).headers) == 1
    check_bundle(out, tmp_path)


def test_windows_bootloader(tmp_path):
    exe = bootloader("windows")
    stub = tmp_path / "stub.exe"
    stub.write_bytes(exe + fake_pyinstaller_package())
    out = tmp_path / "bundle.exe"
    splice(stub, MODEL, out)
    pe = lief.PE.parse(str(out))
    sections_end = max(s.offset + s.size for s in pe.sections)
    assert sections_end == len(exe)  # the headers still describe exactly the bootloader
    assert pe.overlay_offset == len(exe)  # the model and archive are overlay data
    assert not pe.has_signatures
    assert out.read_bytes()[:len(exe)] == exe
    check_bundle(out, tmp_path)
