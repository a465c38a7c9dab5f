"""attention() scores a long micro-batch in blocks of queries (model.SCORES_BLOCK_BYTES).

The blocks must give what one softmax over every allowed key gives: the causal cut, the
sliding window, softcaps and grouped heads, at every block boundary. The tiny fixtures'
contexts are far too short to reach the real block size, so the tests shrink it.
"""
import numpy as np
import pytest

from runtime import model as M
from tests.conftest import MODELS


class Cfg:
    def __init__(self, attn_scale, softcap_attn=0.0):
        self.attn_scale, self.softcap_attn = attn_scale, softcap_attn


def reference(q, kT, v, pos0, k0, cfg, window):
    """Softmax over the allowed keys, one query head at a time: [T, n_head·hd_v]."""
    T, n_head, _ = q.shape
    n_head_kv, S_att, hd_v = v.shape
    out = np.zeros((T, n_head, hd_v))
    for h in range(n_head):
        kv = h // (n_head // n_head_kv)
        for t in range(T):
            qpos, kpos = pos0 + t, k0 + np.arange(S_att)
            ok = (kpos <= qpos) & ((qpos - kpos < window) if window else True)
            s = (q[t, h].astype(np.float64) @ kT[kv][:, ok]) * cfg.attn_scale
            if cfg.softcap_attn:
                s = np.tanh(s / cfg.softcap_attn) * cfg.softcap_attn
            p = np.exp(s - s.max())
            out[t, h] = p @ v[kv][ok] / p.sum()
    return out.reshape(T, n_head * hd_v)


@pytest.mark.parametrize("n_head, n_head_kv, hd, window, softcap, scale", [
    (4, 2, 8, 0, 0.0, 1 / 8),        # grouped heads, a power-of-two scale (on q)
    (3, 3, 16, 0, 0.0, 0.3),         # one kv head each, a scale on the scores
    (4, 1, 8, 40, 50.0, 1 / 4),      # a sliding window and a softcap (Gemma 2)
])
@pytest.mark.parametrize("T, pos0", [(50, 30), (37, 0), (16, 100)])
def test_blocks_of_queries_give_one_softmax_s_output(monkeypatch, n_head, n_head_kv, hd,
                                                     window, softcap, scale, T, pos0):
    rng = np.random.default_rng(T + pos0)
    k0 = M.first_attended(pos0, window)
    S_att = pos0 + T - k0
    q = rng.standard_normal((T, n_head, hd), dtype=np.float32)
    kT = rng.standard_normal((n_head_kv, hd, S_att), dtype=np.float32)
    v = rng.standard_normal((n_head_kv, S_att, hd), dtype=np.float32)
    cfg = Cfg(scale, softcap)
    whole = M.attention(q, kT, v, pos0, k0, cfg, window)
    # blocks of 16 queries: the smallest block attention() makes
    monkeypatch.setattr(M, "SCORES_BLOCK_BYTES", 1)
    calls = []
    real = M.attention
    monkeypatch.setattr(M, "attention", lambda *a: calls.append(a[0].shape[0]) or real(*a))
    blocked = real(q, kT, v, pos0, k0, cfg, window)
    # in blocks when there are more than 16 queries, else whole
    assert calls == ([min(16, T - t0) for t0 in range(0, T, 16)] if T > 16 else [])
    want = reference(q, kT, v, pos0, k0, cfg, window)
    np.testing.assert_allclose(blocked, want, rtol=0, atol=2e-5)
    np.testing.assert_allclose(whole, want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("name", ["tiny-qwen2-q8_0.gguf", "tiny-gemma3-q8_0.gguf"])
def test_a_model_s_logits_do_not_depend_on_the_block_size(monkeypatch, name):
    m = M.Model.load(MODELS / name)
    ids = np.random.default_rng(1).integers(0, m.n_vocab, 300).tolist()
    whole = m.session(320).eval(ids, all_logits=True)
    monkeypatch.setattr(M, "SCORES_BLOCK_BYTES", 1)
    blocked = m.session(320).eval(ids, all_logits=True)
    assert not np.array_equal(blocked, whole)  # the blocks did run: rounding moved
    np.testing.assert_allclose(blocked, whole, rtol=0, atol=1e-4 * whole.std())
    assert (blocked.argmax(-1) == whole.argmax(-1)).mean() > 0.99
