"""Splicing a tiny GGUF into fake stubs: layout, ELF patching, atomicity and refusals."""
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bundler import splice as splice_mod
from bundler.splice import PYI_COOKIE_FORMAT, PYI_COOKIE_MAGIC, splice
from runtime import gguf
from runtime.embedded import GGUF_ALIGN_BYTES, BundleError, extract, read_trailer, verify

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "models" / "tiny-llama-q8_0.gguf"


def fake_pyinstaller_package(body=b"fake PKG contents " * 50) -> bytes:
    """Bytes shaped like a PyInstaller CArchive: data, then the cookie with its total length."""
    total = len(body) + struct.calcsize(PYI_COOKIE_FORMAT)
    return body + struct.pack(PYI_COOKIE_FORMAT, PYI_COOKIE_MAGIC, total, 0, 0, 311,
                              b"libpython3.11.so")


@pytest.fixture
def elf_stub(tmp_path):
    """A copy of /bin/true with the fake package in a `pydata` section, as PyInstaller does."""
    true = shutil.which("true")
    objcopy = shutil.which("objcopy")
    if not sys.platform.startswith("linux") or not true or not objcopy:
        pytest.skip("needs Linux with /bin/true and objcopy (binutils) to make an ELF stub")
    pkg = tmp_path / "pkg"
    pkg.write_bytes(fake_pyinstaller_package())
    stub = tmp_path / "stub"
    shutil.copyfile(os.path.realpath(true), stub)
    subprocess.run([objcopy, "--add-section", f"pydata={pkg}", str(stub)], check=True)
    os.chmod(stub, 0o755)
    return stub


def elf64_sections(data: bytes):
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    secs = []
    for i in range(shnum):
        name, typ, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        secs.append((name, typ, off, size))
    strtab_off, strtab_size = secs[shstrndx][2], secs[shstrndx][3]
    strtab = data[strtab_off:strtab_off + strtab_size]
    return shoff, {strtab[n:strtab.index(b"\0", n)].decode(): (typ, off, size)
                   for n, typ, off, size in secs}


def test_elf_layout(elf_stub, tmp_path):
    out = tmp_path / "bundle"
    r = splice(elf_stub, MODEL, out, args=["--ctx", "256"], title="Tiny")
    data, stub = out.read_bytes(), elf_stub.read_bytes()
    model = MODEL.read_bytes()
    t = read_trailer(out)
    # the GGUF is page aligned, in place, and described by the trailer
    assert t.gguf_offset % GGUF_ALIGN_BYTES == 0 and t.gguf_offset == r.gguf_offset
    assert (t.gguf_size, t.args, t.title, t.format) == (len(model), ("--ctx", "256"), "Tiny", "exe")
    assert data[t.gguf_offset:t.gguf_offset + t.gguf_size] == model
    assert len(data) == r.bundle_bytes
    # e_shoff and every section offset after the cut moved by exactly the inserted block
    old_shoff, old = elf64_sections(stub)
    new_shoff, new = elf64_sections(data)
    inserted = new["pydata"][1] - old["pydata"][1]
    assert inserted == t.gguf_offset - old["pydata"][1] + t.gguf_size
    assert new_shoff == old_shoff + inserted
    for name, (typ, off, size) in old.items():
        moved = off + inserted if off >= old["pydata"][1] else off
        assert new[name] == (typ, moved, size), name
    pyd_off, pyd_size = new["pydata"][1], new["pydata"][2]
    assert data[pyd_off:pyd_off + pyd_size] == fake_pyinstaller_package()
    # the cookie is still near the end, so a backward scan finds it quickly
    assert len(data) - data.rfind(PYI_COOKIE_MAGIC) < 4096
    # the patched executable still runs (the kernel ignores what we inserted)
    assert subprocess.run([str(out)]).returncode == 0
    assert os.stat(out).st_mode & stat.S_IXUSR


def test_gguf_reads_in_place_and_extracts_identically(elf_stub, tmp_path):
    out = tmp_path / "bundle"
    splice(elf_stub, MODEL, out)
    t = read_trailer(out)
    inside = gguf.read(out, offset=t.gguf_offset, size=t.gguf_size)
    alone = gguf.read(MODEL)
    assert inside.metadata == alone.metadata
    assert inside.tensors.keys() == alone.tensors.keys()
    name = next(iter(alone.tensors))
    assert bytes(inside.raw(name)) == bytes(alone.raw(name))
    assert verify(out, t)
    x = tmp_path / "x.gguf"
    extract(out, t, x)
    assert x.read_bytes() == MODEL.read_bytes()


def test_extract_never_overwrites(elf_stub, tmp_path):
    """Not another file, and not the bundle itself (`./bundle --extract bundle`)."""
    out = tmp_path / "bundle"
    splice(elf_stub, MODEL, out)
    t = read_trailer(out)
    before = out.read_bytes()
    for target in (out, tmp_path / "precious.gguf"):
        if target != out:
            target.write_bytes(b"precious")
        kept = target.read_bytes()
        with pytest.raises(BundleError, match="already exists"):
            extract(out, t, target)
        assert target.read_bytes() == kept
    assert out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_bundle_command_refuses_bad_args_and_truncated_models_before_building(tmp_path):
    """What `chatfile bundle` would bake in is parsed as every start of the bundle will
    parse it; a truncated GGUF is refused. Nothing is written, and no stub is built (the
    stub option points at a file that does not exist, so reaching the build would fail
    differently)."""
    def bundle(*args):
        return subprocess.run([sys.executable, "-m", "bundler.cli", "bundle", *map(str, args),
                               "--stub", tmp_path / "no-stub", "-o", tmp_path / "out"],
                              cwd=Path(__file__).resolve().parents[2], capture_output=True,
                              text=True, timeout=120)
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% if messages %}never closed")
    for baked, why in (("--mode int9", "invalid choice: 'int9'"),
                       ("--frobnicate", "unrecognized arguments: --frobnicate"),
                       ("--ctx -5", "--ctx must be positive"),
                       ("--port 99999", "--port must be between 0 and 65535"),
                       ("--temp nan", "--temp must be between 0 and 2"),
                       # its page would send 3 with every message, which the API refuses
                       ("--temp 3", "--temp must be between 0 and 2"),
                       # where the bundle's model is: set by the bundle, never baked in
                       ("--gguf-offset 5", "--gguf-offset is set by the bundle itself"),
                       ("--ctx 64 --gguf-size=10", "--gguf-size is set by the bundle itself"),
                       ("--chat-template-text=x", "--chat-template-text is set by the bundle itself"),
                       ("--ctx 64 -h", "-h is not an option to bake in"),
                       ("--chat-template-tex=x", "--chat-template-text is set by the bundle itself"),
                       ("--chat-template a.jinja --chat-template=b.jinja", "give --chat-template once"),
                       # a template is read now, to be carried in the bundle
                       (f"--chat-template {tmp_path / 'none.jinja'}", "chat template file not found"),
                       (f"--chat-template={broken}", "syntax error")):
        r = bundle(MODEL, f"--args={baked}")
        assert r.returncode == 2 and why in r.stderr, (baked, r.stderr)
        assert "usage:" not in r.stderr and "Traceback" not in r.stderr
    # The trailer's size limit, checked before the stub build too.
    r = bundle(MODEL, "--title", "x" * 70000)
    assert r.returncode == 2 and "more than the 65535 allowed" in r.stderr, r.stderr
    half = tmp_path / "half.gguf"
    half.write_bytes(MODEL.read_bytes()[:MODEL.stat().st_size // 2])
    r = bundle(half)
    assert r.returncode == 1 and "is not a usable GGUF" in r.stderr, r.stderr
    assert "extends past the end" in r.stderr
    assert not (tmp_path / "out").exists()
    # -o naming the model itself: refused even with --force, which would destroy it.
    model = tmp_path / "model.gguf"
    model.write_bytes(MODEL.read_bytes())
    r = subprocess.run([sys.executable, "-m", "bundler.cli", "bundle", model, "-o", model,
                        "--force", "--stub", tmp_path / "no-stub"],
                       cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "is the input" in r.stderr, r.stderr
    assert model.read_bytes() == MODEL.read_bytes()
    # An output directory that does not exist, before the stub (which would take minutes).
    r = subprocess.run([sys.executable, "-m", "bundler.cli", "bundle", model, "-o",
                        tmp_path / "nodir" / "x", "--stub", tmp_path / "no-stub"],
                       cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1 and "nodir does not exist" in r.stderr and "no-stub" not in r.stderr


def test_bundle_command_refuses_models_the_runtime_cannot_run(tmp_path):
    """Each used to bundle, and every start of the bundle then failed (a server that
    answered 503 forever, or 400 to every chat). The GGUFs are the tiny fixture with one
    thing changed; nothing is built (the stub does not exist) and nothing is written."""
    from tests.runtime.test_fuzz_gguf import KV, STRING, layout, serialize
    lay = layout(MODEL)

    def variant(name, **changes):
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(serialize(lay, **changes))
        return path

    renamed = [KV(k.key.replace(b"llama.", b"mamba.", 1), k.vtype, k.value, k.etype)
               if k.key.startswith(b"llama.") else
               KV(k.key, k.vtype, b"mamba") if k.key == b"general.architecture" else k
               for k in lay.kvs]
    tq2 = [type(t)(t.name, t.ne, 35, t.offset) if t.name == b"output.weight" else t  # TQ2_0
           for t in lay.tinfos]
    half = lay.tinfos[:len(lay.tinfos) // 2]  # e.g. the first shard of a split model
    broken = lay.kvs + [KV(b"tokenizer.chat_template", STRING, b"{% if messages %}never")]
    template = Path(__file__).resolve().parents[1] / "fixtures" / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja"
    cases = ((variant("mamba", kvs=renamed), "unsupported architecture 'mamba'"),
             (variant("tq2", tinfos=tq2), "type TQ2_0, which chatfile cannot dequantize"),
             (variant("half", tinfos=half), "is missing"),
             (variant("template", kvs=broken), "the chat template of"))
    for model, why in cases:
        r = subprocess.run([sys.executable, "-m", "bundler.cli", "bundle", model, "--stub",
                            tmp_path / "no-stub", "-o", tmp_path / "out"],
                           cwd=Path(__file__).resolve().parents[2], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 1 and why in r.stderr and "Traceback" not in r.stderr, (why, r.stderr)
        assert r.stderr.startswith("chatfile: error:"), r.stderr
        assert not (tmp_path / "out").exists()
    # A template of the bundle's own stands in for the broken one: that check passes, and
    # the bundle command goes on to the (missing) stub.
    r = subprocess.run([sys.executable, "-m", "bundler.cli", "bundle", cases[-1][0], "--stub",
                        tmp_path / "no-stub", "-o", tmp_path / "out", "--args",
                        f"--chat-template {template}"],
                       cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                       timeout=120)
    assert "chat template" not in r.stderr and "no-stub" in r.stderr, r.stderr


def test_output_must_be_neither_an_input_nor_a_directory(elf_stub, tmp_path):
    model, stub = tmp_path / "model.gguf", tmp_path / "stub"
    model.write_bytes(MODEL.read_bytes())
    stub.write_bytes(Path(elf_stub).read_bytes())
    link = tmp_path / "link.gguf"
    link.symlink_to(model)
    (tmp_path / "dir").mkdir()
    for out, why in ((model, "is the input"), (link, "is the input"), (stub, "is the input"),
                     (tmp_path / "dir", "is a directory"),
                     (str(tmp_path / "new") + os.sep, "is a directory")):
        for force in (False, True):
            with pytest.raises(BundleError, match=why):
                splice(stub, model, out, force=force)
    assert model.read_bytes() == MODEL.read_bytes()
    assert stub.read_bytes() == Path(elf_stub).read_bytes()
    assert not os.path.lexists(tmp_path / "new") and not list((tmp_path / "dir").iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_existing_output_needs_force(elf_stub, tmp_path):
    out = tmp_path / "bundle"
    out.write_bytes(b"precious")
    with pytest.raises(BundleError, match="--force"):
        splice(elf_stub, MODEL, out)
    assert out.read_bytes() == b"precious"
    splice(elf_stub, MODEL, out, force=True)
    assert read_trailer(out) is not None


def test_failure_mid_copy_leaves_nothing(elf_stub, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    calls = []

    def boom(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressing Ctrl+C mid-copy

    with pytest.raises(KeyboardInterrupt):
        splice(elf_stub, MODEL, out_dir / "bundle", progress=boom, chunk_bytes=4096)
    assert calls and calls[-1] < MODEL.stat().st_size  # it really stopped mid-copy
    assert list(out_dir.iterdir()) == []


def test_disk_space_is_checked(elf_stub, tmp_path, monkeypatch):
    monkeypatch.setattr(splice_mod.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(BundleError, match="not enough free disk space"):
        splice(elf_stub, MODEL, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def fake_pe_stub(path):
    """A minimal PE header (no sections) followed by a fake PyInstaller package overlay."""
    hdr = bytearray(0x200)
    hdr[:2] = b"MZ"
    struct.pack_into("<I", hdr, 0x3C, 0x80)
    hdr[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<H", hdr, 0x80 + 24, 0x20B)  # PE32+ optional header, no certificate
    path.write_bytes(bytes(hdr) + fake_pyinstaller_package())


def test_windows_exe_over_4gib_is_refused(tmp_path, monkeypatch):
    stub = tmp_path / "stub.exe"
    fake_pe_stub(stub)
    monkeypatch.setattr(splice_mod, "_check_gguf", lambda p: 5 * 1024**3)  # a "5 GiB model"
    with pytest.raises(BundleError, match="4 GiB.*-m model.gguf"):
        splice(stub, MODEL, tmp_path / "big.exe")
    assert list(tmp_path.iterdir()) == [stub]


def test_small_pe_is_spliced_as_overlay(tmp_path):
    stub = tmp_path / "stub.exe"
    fake_pe_stub(stub)
    out = tmp_path / "b.exe"
    splice(stub, MODEL, out)
    data = out.read_bytes()
    assert data[:0x200] == stub.read_bytes()[:0x200]  # headers untouched
    t = read_trailer(out)
    assert data[t.gguf_offset:t.gguf_offset + 4] == b"GGUF"
    assert data[-len(fake_pyinstaller_package()) - t.trailer_bytes:-t.trailer_bytes] == \
        fake_pyinstaller_package()


def test_signed_pe_is_refused(tmp_path):
    stub = tmp_path / "stub.exe"
    fake_pe_stub(stub)
    data = bytearray(stub.read_bytes())
    struct.pack_into("<II", data, 0x80 + 24 + 112 + 32, 0x1000, 0x100)  # certificate table
    stub.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="signed"):
        splice(stub, MODEL, tmp_path / "b.exe")


def test_refusals(tmp_path, elf_stub):
    not_stub = tmp_path / "plain"
    shutil.copyfile(shutil.which("true") or sys.executable, not_stub)
    with pytest.raises(BundleError, match="not a PyInstaller"):
        splice(not_stub, MODEL, tmp_path / "o1")
    macho = tmp_path / "macho"
    macho.write_bytes(b"\xcf\xfa\xed\xfe" + fake_pyinstaller_package())
    with pytest.raises(BundleError, match="macOS"):
        splice(macho, MODEL, tmp_path / "o2")
    with pytest.raises(BundleError, match="not a GGUF"):
        splice(elf_stub, elf_stub, tmp_path / "o3")
    done = tmp_path / "done"
    splice(elf_stub, MODEL, done)
    with pytest.raises(BundleError, match="already carries a model"):
        splice(done, MODEL, tmp_path / "o4")
    # A bundle given as the model: how to get at its GGUF, not only "not a GGUF".
    with pytest.raises(BundleError, match=r"is a chatfile bundle, not a GGUF file; take its "
                                          r"model out with `.*done --extract model.gguf`"):
        splice(elf_stub, done, tmp_path / "o5")
    with pytest.raises(BundleError, match="directory"):
        splice(elf_stub, MODEL, tmp_path)
    assert not any((tmp_path / n).exists() for n in ("o1", "o2", "o3", "o4", "o5"))


@pytest.fixture
def pyz_stub(tmp_path):
    """A shebang + zip application, like shiv makes: its __main__ prints the trailer title."""
    stub = tmp_path / "stub.pyz"
    with open(stub, "wb") as f:
        f.write(b"#!/usr/bin/env python3\n")
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("__main__.py", "import sys, helper\n"
                       "from runtime.embedded import read_trailer\n"
                       "print(helper.VALUE, read_trailer(sys.argv[0]).title)\n")
            z.writestr("helper.py", "VALUE = 'zipimport-ok'\n")
    return stub


def test_pyz_layout_and_zip_still_valid(pyz_stub, tmp_path):
    out = tmp_path / "b.pyz"
    splice(pyz_stub, MODEL, out, fmt="pyz", title="Zippy")
    data = out.read_bytes()
    t = read_trailer(out)
    assert data.startswith(b"#!/usr/bin/env python3\n")
    assert t.gguf_offset % GGUF_ALIGN_BYTES == 0 and t.format == "pyz"
    assert data[t.gguf_offset:t.gguf_offset + t.gguf_size] == MODEL.read_bytes()
    with zipfile.ZipFile(out) as z:  # zipfile accounts for the prepended shebang + GGUF
        assert z.testzip() is None
        assert z.read("helper.py") == b"VALUE = 'zipimport-ok'\n"
        assert z.comment == data[-t.trailer_bytes:]  # the trailer IS the zip comment
    # zipimport finds the end record and the entries; the trailer reads back inside it
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([sys.executable, str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["zipimport-ok", "Zippy"]


def test_pyz_needs_a_zip_stub(tmp_path, elf_stub):
    with pytest.raises(BundleError, match="not a .pyz stub"):
        splice(elf_stub, MODEL, tmp_path / "o.pyz", fmt="pyz")
    fake = tmp_path / "fake.pyz"
    fake.write_bytes(b"#!/usr/bin/env python3\nprint('not a zip')\n")
    with pytest.raises(BundleError, match="not a zip application"):
        splice(fake, MODEL, tmp_path / "o.pyz", fmt="pyz")


def test_chatfile_info_and_chat_take_a_bundle_as_the_model(elf_stub, tmp_path):
    """`chatfile info my.chatfile` (or chat, run) uses the GGUF inside the bundle."""
    out = tmp_path / "bundle"
    splice(elf_stub, MODEL, out)
    root = Path(__file__).resolve().parents[2]

    def chatfile(*args, **kw):
        return subprocess.run([sys.executable, "-m", "bundler.cli", *map(str, args)], cwd=root,
                              capture_output=True, text=True, timeout=120, **kw)
    inside, alone = chatfile("info", out, "--json"), chatfile("info", MODEL, "--json")
    assert inside.returncode == 0 and alone.returncode == 0, inside.stderr
    assert json.loads(inside.stdout) == json.loads(alone.stdout)
    r = chatfile("chat", out, "--max-tokens", "4", "--temp", "0", input="Hi")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    r = chatfile("info", elf_stub)  # a stub carries no model: the GGUF reader says what it is
    assert r.returncode == 1 and "is not a GGUF file" in r.stderr, r.stderr


def test_a_directory_that_refuses_the_temp_file_is_named_as_the_users_path(elf_stub, tmp_path,
                                                                            monkeypatch):
    import tempfile
    model = tmp_path / "model.gguf"
    model.write_bytes(MODEL.read_bytes())

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(BundleError, match=r"cannot write .*out: Permission denied$"):
        splice(elf_stub, model, tmp_path / "out")


def test_a_baked_template_that_fails_or_is_empty_is_blamed_on_its_file(tmp_path, bad_template_files):
    """The user's own --chat-template in --args: an error names that file and does not
    tell them to pass the flag they passed; an empty (or blank) file is refused, not
    baked as "no template" (the bundle then used the model's and --info said "0
    characters"). Nothing is built or written."""
    refuses, empty, blank = (bad_template_files[k] for k in ("refuses", "empty", "blank"))
    for template, code, why in ((refuses, 1, f"chat template file {refuses} does not work with "
                                             f"{MODEL} (chat template error: no system)"),
                                (empty, 2, f"chat template file {empty} is empty"),
                                (blank, 2, f"chat template file {blank} is empty")):
        r = subprocess.run([sys.executable, "-m", "bundler.cli", "bundle", MODEL, "--format", "pyz",
                            "--stub", tmp_path / "no-stub", "-o", tmp_path / "out",
                            "--args", f"--chat-template {template}"],
                           cwd=Path(__file__).resolve().parents[2], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == code and why in r.stderr, (template, r.stderr)
        assert r.stderr.count("\n") == 1 and "give one that does" not in r.stderr, r.stderr
        assert "no-stub" not in r.stderr and not (tmp_path / "out").exists()


def test_a_single_flag_after_args_gets_told_to_use_equals(tmp_path):
    """`--args --cors` was argparse's "argument --args: expected one argument" under a
    usage block; it now says how to write it. A value with a space (`--args "--ctx 64"`)
    is no single flag and is taken as before; so is the `=` form."""
    def bundle(*args):
        return subprocess.run([sys.executable, "-m", "bundler.cli", "bundle", MODEL,
                               "--stub", tmp_path / "no-stub", "-o", tmp_path / "out",
                               *args], cwd=Path(__file__).resolve().parents[2],
                              capture_output=True, text=True, timeout=120)
    for args, flag in ((["--args", "--cors"], "--cors"), (["--args", "--ctx=64"], "--ctx=64"),
                       (["--arg", "--cors"], "--cors")):
        r = bundle(*args)
        assert r.returncode == 2 and r.stderr == (
            f'chatfile: error: --args {flag}: a value that starts with "-" needs "=": '
            f"write --args={flag}\n"), r.stderr
    r = bundle("--args")
    assert r.returncode == 2 and r.stderr.startswith("chatfile: error: --args needs a value"), r.stderr
    for args in (["--args=--cors"], ["--args", "--ctx 64 --cors"]):
        r = bundle(*args)  # past the args: on to the (missing) stub
        assert r.returncode == 1 and "no-stub" in r.stderr, (args, r.stderr)
    assert not (tmp_path / "out").exists()


def test_bundle_refuses_fifos_devices_and_an_empty_output_name(tmp_path):
    """A FIFO as the model, the stub or a baked --chat-template hung the bundle command
    (reading one waits for a writer); `-o FIFO --force` replaced it by a rename, as
    `-o /dev/null --force` run as root replaced the system's /dev/null; `-o ''` read as
    not given. Nothing is written and no stub is built."""
    fifo = tmp_path / "a.fifo"
    os.mkfifo(fifo)

    def bundle(*args):
        return subprocess.run([sys.executable, "-m", "bundler.cli", "bundle", *map(str, args)],
                              cwd=Path(__file__).resolve().parents[2], capture_output=True,
                              text=True, timeout=60)
    no_stub = tmp_path / "no-stub"
    for args, code, why in (
            ([fifo, "--stub", no_stub, "-o", tmp_path / "out"], 1,
             f"the model {fifo} is not a regular file (a pipe or a device); give the file itself"),
            ([MODEL, "--stub", fifo, "-o", tmp_path / "out"], 1,
             f"the stub {fifo} is not a regular file (a pipe or a device); give the file itself"),
            ([MODEL, "--stub", no_stub, "-o", tmp_path / "out", f"--args=--chat-template {fifo}"],
             2, f"--args: chat template file {fifo} is not a regular file (a pipe or a device); "
                f"give a file that holds the template"),
            ([MODEL, "--stub", no_stub, "-o", fifo, "--force"], 1,
             f"{fifo} is not a regular file (a device or a pipe); give the bundle's file name with -o"),
            ([MODEL, "--stub", no_stub, "-o", ""], 2, "-o needs a file name, not an empty one")):
        r = bundle(*args)
        assert r.returncode == code and r.stderr == f"chatfile: error: {why}\n", (args, r.stderr)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fifo"]


def test_stub_command_never_replaces_a_bundle_or_a_device(pyz_stub, tmp_path, monkeypatch, capsys):
    """`chatfile stub -o NAME` overwrites without --force (it refreshes a stub), but an
    existing bundle lost its model that way, a FIFO or device was replaced by the rename,
    and `-o ''` built into the default cache."""
    from bundler import cli, stub
    built = []
    monkeypatch.setattr(stub, "build_stub", lambda fmt, out, log=None: built.append(out) or 0.0)
    monkeypatch.setattr(stub, "prune_cache", lambda fmt, new: None)
    bundle = tmp_path / "chat.pyz"
    splice(pyz_stub, MODEL, bundle, fmt="pyz")
    fifo = tmp_path / "a.fifo"
    os.mkfifo(fifo)
    for out, code, why in (
            (bundle, 1, f"{bundle} is a bundle that carries a model; give the stub another name with -o"),
            (fifo, 1, f"{fifo} is not a regular file (a device or a pipe); give the stub's file name with -o"),
            ("", 2, "-o needs a file name, not an empty one")):
        assert cli.main(["stub", "--format", "pyz", "-o", str(out)]) == code
        assert capsys.readouterr().err == f"chatfile: error: {why}\n", out
    assert built == []
    assert read_trailer(bundle) is not None


def test_a_value_with_spaces_in_args_is_told_to_be_quoted(tmp_path):
    """`--args "--system=Be brief."` is split as a shell splits it: the error said only
    "unrecognized arguments: brief.", which does not tell the user what to do."""
    r = subprocess.run([sys.executable, "-m", "bundler.cli", "bundle", MODEL, "--format", "pyz",
                        "-o", tmp_path / "out.pyz", "--args", "--system=Be brief."],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
                       timeout=60)
    assert r.returncode == 2 and "unrecognized arguments: brief." in r.stderr, r.stderr
    assert "quote a value that has spaces: --args \"--system 'Be brief.'\"" in r.stderr
    assert not (tmp_path / "out.pyz").exists()


def test_a_title_with_control_characters_is_refused(tmp_path):
    """`--title $'My chat\\n'` or one with an escape sequence was baked in as it was, and
    printed raw by `--info` on every machine the bundle went to."""
    for title in ("My chat\n", "a\x1b[31mred", "tab\there"):
        r = subprocess.run([sys.executable, "-m", "bundler.cli", "bundle", MODEL, "--format", "pyz",
                            "-o", tmp_path / "out.pyz", "--title", title], capture_output=True,
                           text=True, cwd=Path(__file__).resolve().parents[2], timeout=60)
        assert r.returncode == 2 and "holds control characters" in r.stderr, (title, r.stderr)
        assert not (tmp_path / "out.pyz").exists()
