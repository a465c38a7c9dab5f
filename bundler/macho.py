"""Mach-O (macOS) stubs: drop the code signature, then grow __LINKEDIT over the model.

PyInstaller on macOS (PyInstaller/utils/osx.py, fix_exe_for_code_signing) appends its
archive to the bootloader, makes it part of the LC_SYMTAB string table and grows the
__LINKEDIT segment to the end of the file (codesign's strict validation refuses bytes that
no load command accounts for), then signs ad hoc: codesign appends a code signature (a
SuperBlob named by LC_CODE_SIGNATURE) at the end of __LINKEDIT. A stub is therefore

    [header + load commands][__TEXT, __DATA ...][__LINKEDIT: ..., strings + archive][signature]

To put a model in at the archive start we do what PyInstaller did, once more: remove the
signature (what `codesign --remove-signature` does), then grow the string table and
__LINKEDIT over everything up to the end of the finished bundle. Only the sizes change: the
string table starts before the archive, so no offset moves. The bundle must be signed again
afterwards (bundler/splice.py runs `codesign -s -` when it exists).

Accepted: a thin, 64-bit, little-endian executable for x86_64 or arm64, which is what
PyInstaller builds for its default target arch. Everything else is a BundleError.
"""
from __future__ import annotations

import struct

from runtime.embedded import BundleError

MH_MAGIC_64 = b"\xcf\xfa\xed\xfe"  # 0xfeedfacf, little-endian
MH_EXECUTE = 2
CPU_TYPES = {0x01000007: "x86_64", 0x0100000C: "arm64"}
# magic, cputype, cpusubtype, filetype, ncmds, sizeofcmds, flags, reserved
HEADER_FORMAT = "<IIIIIIII"
HEADER_BYTES = struct.calcsize(HEADER_FORMAT)  # 32

LC_SYMTAB = 0x2
LC_SEGMENT_64 = 0x19
LC_CODE_SIGNATURE = 0x1D
SEGMENT_FORMAT = "<II16sQQQQiiII"  # cmd, cmdsize, segname, vmaddr, vmsize, fileoff, filesize, ...
SEGMENT_BYTES = struct.calcsize(SEGMENT_FORMAT)  # 72
SECTION_64_BYTES = 80
SYMTAB_FORMAT = "<IIIIII"  # cmd, cmdsize, symoff, nsyms, stroff, strsize
SYMTAB_BYTES = struct.calcsize(SYMTAB_FORMAT)  # 24
NLIST_64_BYTES = 16
LINKEDIT_DATA_FORMAT = "<IIII"  # cmd, cmdsize, dataoff, datasize
LINKEDIT_DATA_BYTES = struct.calcsize(LINKEDIT_DATA_FORMAT)  # 16
# Other load commands that hold one (dataoff, datasize) pair inside __LINKEDIT: split info,
# function starts, data in code, dylib code-sign DRs, linker hints, exports trie, chained
# fixups. Their data must lie before the archive: inserting at the cut would move it.
LINKEDIT_DATA_CMDS = {0x1E, 0x26, 0x29, 0x2B, 0x2E, 0x80000033, 0x80000034}
LC_DYLD_INFO_CMDS = {0x22, 0x80000022}  # five (offset, size) pairs after cmd, cmdsize

# codesign places the signature on a 16-byte boundary after __LINKEDIT's data. The bundle is
# padded to that boundary so the signature starts right after the trailer, which is where the
# runtime looks for it (runtime/embedded.py reads the trailer just before LC_CODE_SIGNATURE).
SIGNATURE_ALIGN_BYTES = 16
# vmsize is rounded up to whole pages: 16 KiB on arm64, a multiple of x86_64's 4 KiB.
PAGE_BYTES = 16 * 1024
# stroff/strsize (LC_SYMTAB) and dataoff (LC_CODE_SIGNATURE) are 32-bit file offsets.
MACHO_MAX_BYTES = 2**32 - 1

_ADVICE = ("build a single-architecture stub (PyInstaller's default), thin this one with "
           "`lipo STUB -thin arm64 -output STUB.thin` (or x86_64), or use --format pyz")


def remove_signature(stub: bytes) -> bytes:
    """The stub as `codesign --remove-signature` leaves it: LC_CODE_SIGNATURE (which must be
    the last load command) zeroed and uncounted, the signature data cut off the end. Also
    checks that the stub is a Mach-O we can handle."""
    data = bytearray(stub)
    cmds = _load_commands(data)
    sigs = [c for c in cmds if c[1] == LC_CODE_SIGNATURE]
    if not sigs:
        return stub
    at, _, size = sigs[0]
    if len(sigs) > 1 or sigs[0] != cmds[-1]:
        raise _malformed("the code signature's load command is not the last and only one")
    if size < LINKEDIT_DATA_BYTES:
        raise _malformed(f"LC_CODE_SIGNATURE has a bad size {size}")
    _, _, dataoff, datasize = struct.unpack_from(LINKEDIT_DATA_FORMAT, data, at)
    if dataoff + datasize > len(data) or dataoff < at + size:  # past the end, or in the header
        raise _malformed(f"the code signature ({datasize} bytes at {dataoff}) lies outside "
                         "the file")
    ncmds, sizeofcmds = struct.unpack_from("<II", data, 16)
    struct.pack_into("<II", data, 16, ncmds - 1, sizeofcmds - size)
    data[at:at + size] = bytes(size)
    del data[dataoff:]
    return bytes(data)


def grow_linkedit(stub: bytes, cut: int, inserted: int, appended: int) -> bytes:
    """The unsigned stub, padded, with its string table and __LINKEDIT grown to the end of
    the finished bundle.

    `cut` is where the PyInstaller archive starts (the model goes there), `inserted` how many
    bytes go in at the cut (pad + HEAD + GGUF), `appended` how many follow the returned stub
    (the trailer). The returned stub ends with 0-15 zero bytes so that the bundle's length is
    a multiple of SIGNATURE_ALIGN_BYTES.
    """
    data = bytearray(stub)
    cmds = _load_commands(data)
    if any(cmd == LC_CODE_SIGNATURE for _, cmd, _ in cmds):
        raise BundleError("internal error: remove the stub's code signature first")
    linkedit, symtab = _check_layout(data, cmds, cut)
    unpadded = len(data) + inserted + appended
    end = unpadded + (-unpadded % SIGNATURE_ALIGN_BYTES)
    if end > MACHO_MAX_BYTES:
        raise BundleError(
            f"a macOS executable cannot exceed 4 GiB (its string table and code signature "
            f"offsets are 32-bit), and this bundle would be {end / 1024**3:.2f} GiB. Ship the "
            "model beside a bare stub and start it with `-m model.gguf`, or use --format pyz.")
    data += bytes(end - unpadded)
    # The string table (which already holds the archive) and __LINKEDIT now run to the end.
    (stroff,) = struct.unpack_from("<I", data, symtab + 16)
    struct.pack_into("<I", data, symtab + 20, end - stroff)
    (fileoff,) = struct.unpack_from("<Q", data, linkedit + 40)
    filesize = end - fileoff
    vmsize = (filesize + PAGE_BYTES - 1) // PAGE_BYTES * PAGE_BYTES
    struct.pack_into("<Q", data, linkedit + 32, vmsize)
    struct.pack_into("<Q", data, linkedit + 48, filesize)
    return bytes(data)


def _malformed(what: str) -> BundleError:
    return BundleError(f"the stub is a malformed macOS (Mach-O) executable ({what})")


def _load_commands(data: bytearray) -> list[tuple[int, int, int]]:
    """(file offset, cmd, cmdsize) of every load command, each bounds-checked."""
    magic = bytes(data[:4])
    if magic in (b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf"):
        raise BundleError(f"the stub is a universal (fat) macOS executable; {_ADVICE}")
    if magic in (b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xce"):
        raise BundleError(f"the stub is a 32-bit macOS executable; {_ADVICE}")
    if magic == b"\xfe\xed\xfa\xcf":
        raise BundleError(f"the stub is a big-endian macOS executable; {_ADVICE}")
    if magic != MH_MAGIC_64:
        raise _malformed("no Mach-O magic")
    if len(data) < HEADER_BYTES:
        raise _malformed("header cut short")
    _, cputype, _, filetype, ncmds, sizeofcmds, _, _ = struct.unpack_from(HEADER_FORMAT, data)
    if cputype not in CPU_TYPES:
        raise BundleError(f"the stub is a macOS executable for CPU type {cputype:#x}; only "
                          f"{' and '.join(CPU_TYPES.values())} are supported")
    if filetype != MH_EXECUTE:
        raise _malformed(f"file type {filetype}, not an executable")
    end = HEADER_BYTES + sizeofcmds
    if end > len(data):
        raise _malformed(f"load commands ({sizeofcmds} bytes) run past the end of the file")
    cmds, at = [], HEADER_BYTES
    for i in range(ncmds):
        if at + 8 > end:
            raise _malformed(f"load command {i} of {ncmds} lies past sizeofcmds")
        cmd, size = struct.unpack_from("<II", data, at)
        if size < 8 or size % 8 or at + size > end:
            raise _malformed(f"load command {i} has a bad size {size}")
        cmds.append((at, cmd, size))
        at += size
    if at != end:
        raise _malformed(f"sizeofcmds is {sizeofcmds} but the load commands take "
                         f"{at - HEADER_BYTES}")
    return cmds


def _check_layout(data: bytearray, cmds: list, cut: int) -> tuple[int, int]:
    """Offsets of the __LINKEDIT and LC_SYMTAB commands, once the cut is known to be safe:
    __LINKEDIT is the last segment (in the file and in memory) and nothing but the string
    table reaches past the cut."""
    segments, symtabs = [], []
    for at, cmd, size in cmds:
        if cmd == LC_SEGMENT_64:
            if size < SEGMENT_BYTES:
                raise _malformed(f"LC_SEGMENT_64 has a bad size {size}")
            _, _, name, vmaddr, vmsize, fileoff, filesize, _, _, nsects, _ = \
                struct.unpack_from(SEGMENT_FORMAT, data, at)
            name = name.rstrip(b"\0")
            if SEGMENT_BYTES + nsects * SECTION_64_BYTES > size:
                raise _malformed(f"segment {name!r} lists more sections than fit")
            segments.append((at, name, vmaddr, vmsize, fileoff, filesize))
        elif cmd == LC_SYMTAB:
            if size < SYMTAB_BYTES:
                raise _malformed(f"LC_SYMTAB has a bad size {size}")
            symtabs.append(at)
        elif cmd in LINKEDIT_DATA_CMDS or cmd in LC_DYLD_INFO_CMDS:
            pairs = 1 if cmd in LINKEDIT_DATA_CMDS else 5
            if size < 8 + 8 * pairs:
                raise _malformed(f"load command {cmd:#x} has a bad size {size}")
            fields = struct.unpack_from(f"<{2 * pairs}I", data, at + 8)
            for off, n in zip(fields[::2], fields[1::2]):
                if n and off + n > cut:
                    raise BundleError(f"the stub's load command {cmd:#x} points at data after "
                                      "the PyInstaller archive start; cannot insert a model there")
    linkedits = [s for s in segments if s[1] == b"__LINKEDIT"]
    if len(linkedits) != 1 or len(symtabs) != 1:
        raise _malformed(f"{len(linkedits)} __LINKEDIT segments and {len(symtabs)} symbol "
                         "tables, expected one of each")
    linkedit, _, le_vmaddr, _, le_fileoff, _ = linkedits[0]
    for _, name, vmaddr, vmsize, fileoff, filesize in segments:
        if name == b"__LINKEDIT":
            continue
        if (filesize and fileoff + filesize > le_fileoff) or vmaddr + vmsize > le_vmaddr:
            raise BundleError(f"the stub's segment {name.decode(errors='replace')} lies after "
                              "__LINKEDIT; cannot grow __LINKEDIT over the model")
    _, _, symoff, nsyms, stroff, _ = struct.unpack_from(SYMTAB_FORMAT, data, symtabs[0])
    if not le_fileoff <= stroff <= cut:
        raise BundleError("the stub's PyInstaller archive is not in the string table at the end "
                          "of __LINKEDIT, where PyInstaller puts it; cannot grow __LINKEDIT over "
                          "the model")
    if nsyms and symoff + nsyms * NLIST_64_BYTES > cut:
        raise _malformed("the symbol table runs into the PyInstaller archive")
    return linkedit, symtabs[0]
