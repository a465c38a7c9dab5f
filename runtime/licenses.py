"""`--licenses`: the licences of chatfile and of everything a bundle carries.

A bundle is handed on to others, and the MIT, BSD, PSF and Apache licences of its parts
ask that their notices go along with it. What a bundle carries, and where the texts are:
- chatfile itself: CHATFILE_LICENSE below (the repository's LICENSE file is the same text);
- the Python packages it imports (NumPy, Bottle, Jinja2, ...): their dist-info licence
  files, shipped next to them. NumPy's also covers the OpenBLAS and GCC runtime
  libraries its wheel bundles;
- the executable only: the Python interpreter's licence and, for each system library
  PyInstaller copied from the build machine, that machine's copyright file for it
  (Debian's /usr/share/doc/PACKAGE/copyright), under licenses/ in the unpacked bundle;
- the .pyz only: shiv's bootstrap (BSD-2-Clause), as shiv's dist-info.
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
import sysconfig
from pathlib import Path

CHATFILE_LICENSE = """MIT License

Copyright (c) 2026 the chatfile authors

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

# Inside the unpacked executable (build/chatfile.spec puts them there).
FROZEN_DIR = "licenses"
PYTHON_LICENSE = "LICENSE.txt"  # the interpreter's, from its stdlib directory
SYSTEM_DIR = "system"  # <library file name>.copyright, or .missing when none was found
# Outside a bundle (a source checkout), the distributions a bundle would carry.
DISTRIBUTIONS = ("numpy", "gguf", "PyYAML", "bottle", "Jinja2", "MarkupSafe", "regex")


def _section(title: str, text: str) -> str:
    rule = "=" * 79
    return f"{rule}\n{title}\n{rule}\n\n{text.strip()}\n"


def _licence_files(dist) -> list:
    """A distribution's licence files: those under dist-info/licenses/ (metadata 2.4),
    or LICENSE/COPYING/NOTICE files at the dist-info's top (older wheels)."""
    out = []
    for f in dist.files or ():
        parts = f.parts
        if not parts or not parts[0].endswith(".dist-info"):
            continue
        top = len(parts) == 2 and parts[1].upper().startswith(("LICEN", "COPYING", "NOTICE"))
        if top or (len(parts) > 2 and parts[1] == "licenses"):
            out.append(f)
    return out


def _distribution_section(dist) -> str:
    name, version = dist.metadata["Name"], dist.version
    texts = []
    for f in _licence_files(dist):
        try:
            text = Path(f.locate()).read_bytes().decode("utf-8", "replace")
        except OSError:
            continue
        texts.append(f"--- {'/'.join(f.parts[1:])} ---\n{text}")
    if not texts:  # say what the metadata says rather than nothing
        texts = [f"(no licence file shipped; its metadata says: "
                 f"{dist.metadata.get('License-Expression') or dist.metadata.get('License') or 'nothing'})"]
    return _section(f"{name} {version}", "\n".join(texts))


def _bundled_distributions() -> list:
    """The distributions next to the runtime package (a bundle's own site), or, in a
    source checkout, the installed ones a bundle would carry."""
    site = Path(__file__).resolve().parent.parent
    found = {d.metadata["Name"].lower(): d for d in importlib.metadata.distributions(path=[str(site)])
             if d.metadata["Name"] and d.metadata["Name"].lower() != "chatfile"}
    if not found:
        for name in DISTRIBUTIONS:
            try:
                found[name.lower()] = importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                continue
    return [found[k] for k in sorted(found)]


def notices() -> str:
    parts = [_section("chatfile", CHATFILE_LICENSE)]
    parts += [_distribution_section(d) for d in _bundled_distributions()]
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        base = Path(frozen) / FROZEN_DIR
        python = base / PYTHON_LICENSE
        if python.is_file():
            parts.append(_section(f"Python {sys.version.split()[0]}", python.read_text(errors="replace")))
        system = base / SYSTEM_DIR
        for f in sorted(system.iterdir()) if system.is_dir() else ():
            lib = f.name.rsplit(".", 1)[0]
            if f.suffix == ".missing":
                text = f"(the build machine had no copyright file for it: {f.read_text().strip()})"
            else:
                text = f.read_text(errors="replace")
            parts.append(_section(f"{lib} (a system library from the build machine)", text))
        parts.append(_section("PyInstaller bootloader",
                              "The launcher at the start of this file is PyInstaller's "
                              "bootloader: GPL-2.0 with an exception that allows it to be "
                              "distributed with programs under any licence."))
    else:
        stdlib_licence = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
        note = (f"This runs on the Python interpreter at {sys.executable}, which is not part "
                f"of chatfile; its licence is in {stdlib_licence}"
                if stdlib_licence.is_file() else
                f"This runs on the Python interpreter at {sys.executable}, which is not part "
                "of chatfile.")
        parts.append(_section(f"Python {sys.version.split()[0]}", note))
    return "\n".join(parts)


def print_notices() -> int:
    try:
        sys.stdout.write(notices())
        sys.stdout.flush()
    except BrokenPipeError:  # `--licenses | head`
        os._exit(0)
    return 0
