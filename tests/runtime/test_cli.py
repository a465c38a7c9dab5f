"""`chatfile info` and `chatfile bench` as a user runs them.

If these fail, a user asking what is in a model file, or how fast it runs, gets a
traceback or a wrong description. Timings are printed, never asserted.
"""
import json
import subprocess
import sys

from runtime import gguf
from tests.conftest import MODELS, ROOT


def chatfile(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "bundler.cli", *map(str, args)], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)


def test_info_describes_the_model():
    path = MODELS / "tiny-gemma3-q4_k_m.gguf"
    r = chatfile("info", path)
    assert r.returncode == 0, r.stderr
    g = gguf.read(path)
    n_params = sum(t.n_elements for t in g.tensors.values())
    assert "architecture:   gemma3" in r.stdout
    assert f"{n_params:,}" in r.stdout
    assert "context length: 256" in r.stdout
    assert "chat template:  no" in r.stdout
    for t in ("F32", "Q4_K", "Q6_K"):
        assert t in r.stdout


def test_info_json_counts_tensor_types():
    path = MODELS / "tiny-llama-q4_k_m.gguf"
    r = chatfile("info", path, "--json")
    d = json.loads(r.stdout)
    g = gguf.read(path)
    assert d["tensors"] == len(g.tensors)
    assert sum(v["tensors"] for v in d["tensor_types"].values()) == len(g.tensors)
    assert d["tensor_types"]["Q4_K"]["bytes"] == sum(t.n_bytes for t in g.tensors.values()
                                                    if t.type_name == "Q4_K")


def test_info_on_a_broken_file_is_a_clear_error(tmp_path):
    p = tmp_path / "broken.gguf"
    p.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16)
    r = chatfile("info", p)
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def test_run_on_a_missing_file_is_a_clear_error(tmp_path):
    r = chatfile("chat", tmp_path / "nope.gguf")
    assert r.returncode == 1 and "cannot open" in r.stderr and "Traceback" not in r.stderr


def test_bench_smoke_prints_the_table(tmp_path):
    """CI's smoke benchmark on a tiny model: the table and the JSON, no timing asserted."""
    out = tmp_path / "bench.json"
    r = chatfile("bench", MODELS / "tiny-qwen2-q8_0.gguf", "--prompt-tokens", "64",
                 "--gen-tokens", "16", "--threads", "2", "--json", out)
    print(r.stdout)
    assert r.returncode == 0, r.stderr
    for label in ("load (s)", "prefill (tok/s)", "decode (tok/s)", "time to first token",
                  "peak RSS (MB)", "decode weight reads (GB/s)"):
        assert label in r.stdout
    d = json.loads(out.read_text())
    assert d["threads"] == 2 and d["chatfile"]["n_gen"] == 16
    assert d["chatfile"]["prefill_tok_s"] > 0 and d["chatfile"]["decode_tok_s"] > 0
    assert "f32 weights)" in r.stdout and d["chatfile"]["mode"] == "f32"


def test_bench_in_int8_mode_says_so():
    r = chatfile("bench", MODELS / "tiny-qwen2-q8_0.gguf", "--prompt-tokens", "16",
                 "--gen-tokens", "4", "--threads", "2", "--mode", "int8")
    assert r.returncode == 0, r.stderr
    assert "int8 weights)" in r.stdout and "decode (tok/s)" in r.stdout
