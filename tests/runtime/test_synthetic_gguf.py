"""build/make_random_gguf.py: its tiny random-weight GGUF loads and runs in both memory modes.

The 8B-shaped file (~4.9 GB) is made only by build/bench_8b.py, never in the test suite.
"""
import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime import gguf, quants
from runtime.model import Model
from tests.conftest import ROOT, smaps_mappings


def _generator():
    spec = importlib.util.spec_from_file_location("make_random_gguf", ROOT / "build" / "make_random_gguf.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


gen = _generator()


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return gen.synthetic_model("tiny", tmp_path_factory.mktemp("synthetic"))


def test_file_has_the_planned_tensors_and_metadata(tiny_path):
    g = gguf.read(tiny_path)
    s = gen.SHAPES["tiny"]
    plan = gen.tensor_plan(s)
    assert [(n, t.shape, t.ggml_type) for n, t in g.tensors.items()] == plan
    assert g.metadata["llama.block_count"] == s.n_layer
    assert g.metadata["llama.attention.head_count_kv"] == s.n_head_kv
    assert len(g.metadata["tokenizer.ggml.tokens"]) == s.n_vocab


def test_dequantized_weights_are_finite_and_small(tiny_path):
    g = gguf.read(tiny_path)
    for name in ("token_embd.weight", "blk.0.attn_v.weight", "output.weight"):
        t = g.tensors[name]
        w = quants.dequantize(g.raw(name), t.ggml_type, t.shape)
        assert np.isfinite(w).all(), name
        assert 0.005 < float(w.std()) < 0.1, f"{name}: std {w.std()}"
        assert abs(float(w.mean())) < 0.2 * float(w.std()), f"{name}: mean {w.mean()}"


def test_llama3_8b_plan_has_the_q4_k_m_size():
    """Llama-3-8B Q4_K_M files as llama.cpp makes them are about 4.9 GB."""
    plan = gen.tensor_plan(gen.SHAPES["llama3-8b"])
    n_bytes = sum(gen.tensor_bytes(shape, t) for _, shape, t in plan)
    assert len(plan) == 2 + 9 * 32 + 1
    # llama.cpp's Q4_K_M gives attn_v and ffn_down Q6_K in layers 0-3, 28-31 and every
    # third layer from 6 to 27: 16 of 32
    types = {n: t for n, _, t in plan}
    q6 = [i for i in range(32) if types[f"blk.{i}.attn_v.weight"] == gen.Q6_K]
    assert q6 == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert all(types[f"blk.{i}.ffn_down.weight"] == types[f"blk.{i}.attn_v.weight"] for i in range(32))
    assert types["output.weight"] == gen.Q6_K and types["blk.5.attn_q.weight"] == gen.Q4_K
    assert 4.85e9 < n_bytes < 4.95e9


def test_auto_mode_picks_float32_when_it_fits_else_the_exact_quantized_mode(tiny_path):
    """int8 is approximate, so auto never picks it (TOLERANCES.md: opt-in)."""
    n_params = sum(t.n_elements for t in gguf.read(tiny_path).tensors.values())
    for budget, want in ((4 * n_params, "f32"), (4 * n_params - 1, "quant"),
                         (n_params, "quant"), (0, "quant")):
        assert Model.load(tiny_path, ram_budget_bytes=budget).mode == want, budget
    assert Model.load(tiny_path, mode="int8", ram_budget_bytes=0).mode == "int8"


def test_an_unknown_mode_is_refused(tiny_path):
    with pytest.raises(ValueError, match="mode must be one of auto, f32, int8, quant"):
        Model.load(tiny_path, mode="f16")


def test_the_server_says_why_auto_chose_the_slow_mode(tiny_path, monkeypatch):
    """...and names --mode int8 only when int8 would fit."""
    from runtime import model as model_mod, server
    n_params = sum(t.n_elements for t in gguf.read(tiny_path).tensors.values())
    for ram, hint in ((2 * n_params / 0.6, True), (0, False)):
        monkeypatch.setattr(model_mod, "ram_available_bytes", lambda: ram)
        st, lines = server.State(model_path=str(tiny_path), n_ctx=64), []
        server._load(st, tiny_path, 0, None, None, 64, "auto", lines.append)
        assert st.model.mode == "quant" and st.engine is not None
        assert "quant weights: float32 would not fit in RAM, so it is slow" in lines[-1]
        assert ("--mode int8 would fit" in lines[-1]) == hint, lines[-1]
    st, lines = server.State(model_path=str(tiny_path), n_ctx=64), []
    server._load(st, tiny_path, 0, None, None, 64, "quant", lines.append)
    assert lines[-1].endswith("quant weights)")  # asked for: nothing to explain


def test_int8_mode_runs_every_batch_path(tiny_path, monkeypatch):
    """One token splits its rows over two threads (or runs in one on a single core);
    batches run in wide chunks: all give the same numbers."""
    from runtime import weights
    m = Model.load(tiny_path, mode="int8")
    ids = m.tokenize("def add(a, b):\n    return a + b\n")
    whole = m.logits(ids)  # one batch
    s = m.session(len(ids))
    s.eval(ids[:-2])
    # chunks of 3 rows, so that even the tiny model's matrices split
    monkeypatch.setattr(weights, "INT8_CHUNK_WEIGHTS", 3 * gen.SHAPES["tiny"].n_embd)
    monkeypatch.setattr(weights, "LOAD_THREADS", 2)  # split even on a one-core machine
    pool, submitted = quants.thread_pool(2), []
    monkeypatch.setattr(quants, "thread_pool",
                        lambda n: submitted.append(n) or pool)
    steps = [s.eval([ids[-2]]), s.eval([ids[-1]])]  # single tokens, split
    assert len(submitted) >= 2 * len(m.layers)
    monkeypatch.setattr(weights, "LOAD_THREADS", 1)
    s.rewind(len(ids) - 2)
    one_thread = [s.eval([ids[-2]]), s.eval([ids[-1]])]
    tol = 1e-4 * float(whole.std())
    assert np.abs(np.array(steps) - whole[-2:]).max() <= tol
    assert np.array_equal(np.array(steps), np.array(one_thread))
    f32 = Model.load(tiny_path, mode="f32").logits(ids)
    assert (f32.argmax(-1) == whole.argmax(-1)).mean() > 0.9
    assert 0 < np.abs(f32 - whole).max() <= 0.25 * float(f32.std())


def test_both_memory_modes_load_and_agree(tiny_path):
    f32 = Model.load(tiny_path, mode="f32")
    quant = Model.load(tiny_path, mode="quant")
    assert (f32.mode, quant.mode) == ("f32", "quant")
    ids = f32.tokenize("def add(a, b):\n    return a + b\n")
    assert f32.detokenize(ids) == "def add(a, b):\n    return a + b\n"
    a, b = f32.logits(ids), quant.logits(ids)
    assert a.shape == (len(ids), gen.SHAPES["tiny"].n_vocab) and np.isfinite(a).all()
    # Same weights, same arithmetic: only BLAS's summation order may differ between one
    # fused matmul (f32) and row chunks (quant), which is float32 rounding, ~1e-6·std.
    assert np.abs(a - b).max() <= 1e-4 * float(a.std())
    assert (a.argmax(-1) == b.argmax(-1)).all()


def _vm_flags(addr: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds address `addr`. (NumPy
    madvises from the first page boundary inside an array, so ask about its middle.)"""
    for header, fields in smaps_mappings():
        lo, hi = (int(x, 16) for x in header.split()[0].split("-"))
        if lo <= addr < hi:
            return fields["VmFlags"]
    raise AssertionError(f"no mapping holds {addr:#x}")


@pytest.mark.parametrize("mode", ["f32", "int8"])
def test_resident_weights_do_not_ask_for_huge_pages(tmp_path, mode):
    # In a VM whose host backs memory lazily, fresh huge pages made Qwen's load about
    # twice as slow (runtime/weights.py: resident_array). "hg" is MADV_HUGEPAGE's flag.
    if not Path("/proc/self/smaps").exists():
        pytest.skip("no /proc/self/smaps on this system to read mapping flags from")
    control = np.empty(8 << 20, dtype=np.uint8)
    if "hg" not in _vm_flags(control.ctypes.data + control.nbytes // 2):
        pytest.skip("NumPy does not ask this kernel for huge pages, so there is nothing to avoid")
    # An FFN wide enough that each matrix passes NumPy's 4 MiB threshold, even as int8.
    shape = dataclasses.replace(gen.SHAPES["tiny"], n_layer=1, n_ff=8192)
    path = tmp_path / "wide.gguf"
    gen.write_random_gguf(path, shape)
    m = Model.load(path, mode=mode)
    for w in (m.layers[0].w_gate_up, m.layers[0].w_down):
        data = w if mode == "f32" else w.codes
        assert "hg" not in _vm_flags(data.ctypes.data + data.nbytes // 2)
