"""Chunked forms against recurrences, and what is particular to each recurrent mixer."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from seqicl import layers
from seqicl.errors import ConfigError
from seqicl.layers.ops import CausalConv, chunked_delta_rule, chunked_linear_attention
from seqicl.models import TokenLM

D, B = 16, 2
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CHUNKED = ["linear_attention", "favor", "based", "rebased", "gla", "retnet", "deltanet", "mamba2"]


def build(name, max_len, **kw):
    torch.manual_seed(0)
    return layers.build(name, d_model=D, max_len=max_len, **kw).eval().double()


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run_steps(layer, x):
    state = layer.init_state(x.shape[0], device=x.device, dtype=x.dtype)
    outs = []
    for t in range(x.shape[1]):
        y, state = layer.step(x[:, t], state)
        outs.append(y)
    return torch.stack(outs, dim=1)


# Chunked forward == recurrent step, with chunks that do not divide the sequence length.

@pytest.mark.parametrize("name", CHUNKED)
@pytest.mark.parametrize("chunk_size", [1, 5, 8])
def test_chunked_forward_equals_recurrence(name, chunk_size):
    layer = build(name, 13, chunk_size=chunk_size)
    x = randn(B, 13, D)
    torch.testing.assert_close(layer(x), run_steps(layer, x), atol=1e-9, rtol=1e-7)


def test_gla_sub_chunks_equal_recurrence():
    layer = build("gla", 40, chunk_size=32)  # two chunks of two 16-step sub-chunks each
    x = randn(B, 40, D)
    torch.testing.assert_close(layer(x), run_steps(layer, x), atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("name, kw", [
    ("base_conv", {"kernel_size": 3}),
    ("deltanet", {"conv_size": 0}),
    ("linear_attention", {"feature_map": "identity", "normalize": False}),
    ("rela", {"gate": False, "n_kv_heads": 1}),
    ("retnet", {"positions": "none"}),
    ("sliding_window_attention", {"window_size": 1}),
    ("sliding_window_attention", {"window_size": 5, "n_kv_heads": 1, "impl": "torch"}),
])
def test_variants_step_equals_forward(name, kw):
    layer = build(name, 12, **kw)
    x = randn(B, 12, D)
    torch.testing.assert_close(layer(x), run_steps(layer, x), atol=1e-9, rtol=1e-7)


# The kernels against naive per-step recurrences.

def naive_decayed(q, k, v, log_decay):
    S = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
    outs = []
    for t in range(q.shape[2]):
        if log_decay is not None:
            a = log_decay[:, :, t].exp()
            S = S * (a[..., None, None] if a.dim() == 2 else a[..., None])
        S = S + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append((q[:, :, t, :, None] * S).sum(-2))
    return torch.stack(outs, dim=2), S


def naive_delta(q, k, v, beta):
    S = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
    outs = []
    for t in range(q.shape[2]):
        kt = k[:, :, t, :, None]
        S = S + beta[:, :, t, None, None] * kt * (v[:, :, t, None, :] - (kt * S).sum(-2, keepdim=True))
        outs.append((q[:, :, t, :, None] * S).sum(-2))
    return torch.stack(outs, dim=2), S


@pytest.mark.parametrize("decay", ["none", "scalar", "vector"])
@pytest.mark.parametrize("chunk_size", [4, 7, 32])
def test_chunked_linear_attention_equals_naive(decay, chunk_size):
    T = 37
    q, k, v = randn(B, 3, T, 4, seed=1), randn(B, 3, T, 4, seed=2), randn(B, 3, T, 5, seed=3)
    g = {"none": None, "scalar": -randn(B, 3, T, seed=4).abs(), "vector": -3 * randn(B, 3, T, 4, seed=4).abs()}[decay]
    ref, ref_state = naive_decayed(q, k, v, g)
    out, state = chunked_linear_attention(q, k, v, log_decay=g, chunk_size=chunk_size)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(state, ref_state, atol=1e-10, rtol=1e-8)
    first, mid = chunked_linear_attention(q[:, :, :20], k[:, :, :20], v[:, :, :20],
                                          log_decay=None if g is None else g[:, :, :20], chunk_size=chunk_size)
    rest, _ = chunked_linear_attention(q[:, :, 20:], k[:, :, 20:], v[:, :, 20:],
                                       log_decay=None if g is None else g[:, :, 20:], chunk_size=chunk_size,
                                       state=mid)
    torch.testing.assert_close(torch.cat([first, rest], dim=2), ref, atol=1e-10, rtol=1e-8)


def test_gated_chunks_are_stable_under_strong_decay():
    # Per-step decays down to exp(-30): a factorised exp(b_t) exp(-b_s) would overflow float32.
    T = 64
    q, k, v = randn(1, 2, T, 4, seed=1), randn(1, 2, T, 4, seed=2), randn(1, 2, T, 3, seed=3)
    g = -30 * torch.rand(1, 2, T, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref, _ = naive_decayed(q, k, v, g)
    out, _ = chunked_linear_attention(q.float(), k.float(), v.float(), log_decay=g.float(), chunk_size=64)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 32])
def test_chunked_delta_rule_equals_naive(chunk_size):
    T = 23
    q, v = randn(B, 2, T, 4, seed=1), randn(B, 2, T, 3, seed=3)
    k = F.normalize(randn(B, 2, T, 4, seed=2), dim=-1)
    beta = torch.rand(B, 2, T, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ref, ref_state = naive_delta(q, k, v, beta)
    out, state = chunked_delta_rule(q, k, v, beta, chunk_size=chunk_size)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(state, ref_state, atol=1e-10, rtol=1e-8)


def test_causal_conv_fft_equals_direct():
    torch.manual_seed(0)
    conv = CausalConv(3, 100).double()  # longer than FFT_MIN_KERNEL: applied by FFT
    u = randn(B, 120, 3)
    h = conv.weight
    direct = torch.stack([sum(h[:, j] * u[:, t - j] for j in range(min(t + 1, 100))) for t in range(120)], dim=1)
    torch.testing.assert_close(conv(u), direct + conv.bias, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(run_steps(conv, u), conv(u), atol=1e-10, rtol=1e-8)


# Layer-specific behaviour.

def test_feature_maps_give_their_kernels():
    based, rebased = build("based", 8), build("rebased", 8)
    q, k = randn(5, 16, seed=1), randn(5, 16, seed=2)
    s = (q * k).sum(-1) / 4
    kernel = (based.feature_map(q, True) * based.feature_map(k, False)).sum(-1)
    torch.testing.assert_close(kernel, 1 + s + s ** 2 / 2)
    kernel = (rebased.feature_map(q, True) * rebased.feature_map(k, False)).sum(-1)
    torch.testing.assert_close(kernel, (rebased.q_norm(q) * rebased.k_norm(k)).sum(-1) ** 2)


def test_favor_approximates_softmax_kernel():
    favor = build("favor", 8, n_heads=1, n_features=4096)
    q, k = 0.3 * randn(4, D, seed=1), 0.3 * randn(4, D, seed=2)
    fq, fk = favor.feature_map(q, False), favor.feature_map(k, False)
    estimate = (fq * fk).sum(-1)
    exact = torch.exp((q * k).sum(-1) / math.sqrt(D))
    torch.testing.assert_close(estimate, exact, rtol=0.1, atol=0.0)


def test_favor_redraws_only_in_training():
    favor = build("favor", 8, redraw_interval=2)
    x = randn(B, 8, D)
    before = favor.projection.clone()
    torch.testing.assert_close(favor(x), favor(x))
    assert torch.equal(favor.projection, before)
    favor.train()
    favor(x), favor(x)
    assert torch.equal(favor.projection, before)
    favor(x)
    assert not torch.equal(favor.projection, before)
    drawn = favor.projection.clone()
    favor.eval()
    y = favor(x)
    favor.redraw_features()
    assert not torch.equal(favor.projection, drawn)
    assert not torch.allclose(favor(x), y)


def test_favor_never_redraws_with_interval_zero():
    favor = build("favor", 8, redraw_interval=0).train()
    before = favor.projection.clone()
    for _ in range(3):
        favor(randn(B, 8, D))
    assert torch.equal(favor.projection, before)


def test_sliding_window_attention():
    with pytest.raises(ConfigError, match="window_size=13 is larger than max_len=12"):
        layers.build("sliding_window_attention", d_model=D, max_len=12, window_size=13)
    x = randn(B, 12, D)
    torch.manual_seed(0)
    fast = layers.build("sliding_window_attention", d_model=D, max_len=12, window_size=4).double()
    ref = layers.build("sliding_window_attention", d_model=D, max_len=12, window_size=4, impl="torch").double()
    ref.load_state_dict(fast.state_dict())
    torch.testing.assert_close(fast(x), ref(x))
    full = layers.build("attention", d_model=D, max_len=12).double()
    wide = layers.build("sliding_window_attention", d_model=D, max_len=12, window_size=12).double()
    wide.load_state_dict(full.state_dict())
    torch.testing.assert_close(wide(x), full(x))
    state = fast.init_state(B, dtype=x.dtype)
    for t in range(12):
        _, state = fast.step(x[:, t], state)
    assert state["k"].shape[2] == 4
    assert fast.state_size(12) == fast.state_size(4) == 2 * 4 * D


@pytest.mark.parametrize("name", CHUNKED)
def test_recurrent_state_does_not_grow(name):
    layer = build(name, 64)
    assert layer.state_size(1000) == layer.state_size(64) > 0


@pytest.mark.parametrize("name, kw, match", [
    ("sliding_window_attention", {"window_size": 0}, "window_size"),
    ("linear_attention", {"n_heads": 3}, "d_model=16 is not divisible by n_heads=3"),
    ("linear_attention", {"feature_map": "relu"}, "feature_map"),
    ("linear_attention", {"chunk_size": 0}, "chunk_size"),
    ("favor", {"n_features": 0}, "n_features"),
    ("favor", {"redraw_interval": -1}, "redraw_interval"),
    ("based", {"feature_dim": 0}, "feature_dim"),
    ("rebased", {"n_heads": 5}, "n_heads=5"),
    ("rela", {"n_heads": 3}, "n_heads=3"),
    ("gla", {"n_heads": 3}, "n_heads=3"),
    ("gla", {"expand_k": 0.3}, "expand_k"),
    ("gla", {"gate_temperature": 0.0}, "gate_temperature"),
    ("retnet", {"n_heads": 16}, "rotary positions need an even head dimension"),
    ("retnet", {"positions": "xpos"}, "positions"),
    ("deltanet", {"conv_size": -1}, "conv_size"),
    ("base_conv", {"kernel_size": 13}, "kernel_size=13 is larger than max_len=12"),
    ("mamba2", {"head_dim": 24}, "expand \\* d_model=32 is not divisible by head_dim=24"),
    ("mamba2", {"dt_min": 0.5, "dt_max": 0.1}, "dt_min"),
])
def test_invalid_hyper_parameters_raise(name, kw, match):
    with pytest.raises(ConfigError, match=f"{name}: .*{match}"):
        layers.build(name, d_model=D, max_len=12, **kw)


def test_based_hybrid_model_config_builds():
    cfg = yaml.safe_load((CONFIGS / "model" / "based.yaml").read_text())
    cfg = {k: v for k, v in cfg.items() if k not in ("name", "backbone", "init")}
    model = TokenLM(vocab_size=11, max_len=32, **{**cfg, "d_model": D})
    kinds = [type(block.mixer).layer_name for block in model.blocks]
    assert {"base_conv", "based", "sliding_window_attention"} <= set(kinds)
    logits = model(torch.randint(0, 11, (B, 32)))
    assert logits.shape == (B, 32, 11) and torch.isfinite(logits).all()
