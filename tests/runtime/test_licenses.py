"""`--licenses`: the notices that must travel with a bundle handed on to others.

The bundles themselves are checked in tests/e2e/test_bundle.py; here the source checkout.
"""
import importlib.metadata
import json
import subprocess
import sys

from runtime.licenses import CHATFILE_LICENSE
from tests.conftest import ROOT

SHIPPED = json.loads((ROOT / "build" / "shiv.json").read_text())["distributions"]


def test_the_repository_licence_is_the_one_printed():
    assert (ROOT / "LICENSE").read_text() == CHATFILE_LICENSE


def test_licenses_from_a_checkout_name_every_shipped_distribution_with_its_text():
    r = subprocess.run([sys.executable, "-m", "runtime", "--licenses"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr, r.stderr
    assert r.stdout.startswith("=" * 79 + "\nchatfile\n") and "MIT License" in r.stdout
    sections = r.stdout.split("=" * 79 + "\n")
    titles = [s.strip() for s in sections[1::2]]
    for name in SHIPPED:
        dist = importlib.metadata.distribution(name)
        title = f"{dist.metadata['Name']} {dist.version}"
        assert title in titles, (title, titles)
        body = sections[2 * titles.index(title) + 2]
        assert "(no licence file shipped" not in body and len(body) > 200, (title, body[:300])
    numpy_body = sections[2 + 2 * titles.index(
        f"numpy {importlib.metadata.version('numpy')}")]
    assert "OpenBLAS" in numpy_body  # the libraries NumPy's wheel bundles are covered
    assert any(t.startswith("Python 3.") for t in titles)


def test_licenses_piped_into_head_ends_quietly():
    r = subprocess.run(f"{sys.executable} -m runtime --licenses | head -3", shell=True,
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.count("\n") == 3 and not r.stderr, r.stderr
