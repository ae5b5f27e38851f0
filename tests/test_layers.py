"""Every registered layer: shapes, causality, finite gradients, step == forward, config defaults."""

from pathlib import Path

import pytest
import torch
import yaml

from seqicl import layers
from seqicl.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "layer"
D, T, B = 16, 12, 2
# Hyper-parameters that keep the test shapes tiny for layers whose defaults are large.
SMALL: dict[str, dict] = {
    "sliding_window_attention": {"window_size": 4},  # the default 64 exceeds max_len = T
}
# Layers that must offer incremental decoding (init_state/step/state_size).
RECURRENT = {"attention", "sliding_window_attention", "linear_attention", "favor", "rela", "based",
             "rebased", "gla", "retnet", "deltanet", "s4d", "lru", "gilr", "rwkv", "mamba", "mamba2",
             "lstm", "h3", "hyena", "base_conv", "ngram"}


# Options that change a layer's structure, checked like layers of their own: "layer+option".
VARIANTS: dict[str, tuple[str, dict]] = {
    "gilr+output_gate": ("gilr", {"output_gate": True, "activation": "linear", "dropout": 0.2}),
    "lru+output_gate": ("lru", {"output_gate": True, "d_state": 8, "dropout": 0.2}),
    "lstm+xavier_orthogonal": ("lstm", {"init": "xavier_orthogonal"}),
    "rwkv+normal": ("rwkv", {"init": "normal"}),
    "rwkv+grow": ("rwkv", {"init": "normal", "past_weights": "grow"}),
    "s4d+bilinear": ("s4d", {"discretization": "bilinear"}),
    "h3+bilinear": ("h3", {"discretization": "bilinear", "head_dim": 2}),
    "h3+shift_ssm": ("h3", {"shift": "ssm"}),
}


def make(name, **kw):
    name, options = VARIANTS.get(name, (name, {}))
    torch.manual_seed(0)
    layer = layers.build(name, d_model=D, max_len=T, **{**SMALL.get(name, {}), **options, **kw})
    return layer.eval()


def call(layer, x, tokens):
    return layer(x, tokens=tokens) if getattr(layer, "needs_tokens", False) else layer(x)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, D, generator=g), torch.randint(0, 5, (B, T), generator=g)


ALL = layers.available()
SEQUENCE = [n for n in ALL if layers.kind(n) == "sequence"]
WITH_VARIANTS = ALL + list(VARIANTS)
RECURRENT |= {v for v, (name, _) in VARIANTS.items() if name in RECURRENT}


@pytest.mark.parametrize("name", WITH_VARIANTS)
def test_shape_and_finite_gradients(name):
    layer = make(name).train()
    x, tok = inputs()
    x.requires_grad_(True)
    y = call(layer, x, tok)
    assert y.shape == x.shape
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for pname, p in layer.named_parameters():
        assert p.grad is not None, f"{name}.{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"


@pytest.mark.parametrize("name", SEQUENCE + list(VARIANTS))
def test_causal(name):
    layer = make(name)
    x, tok = inputs()
    y = call(layer, x, tok)
    for t in (0, T // 2, T - 2):
        x2, tok2 = x.clone(), tok.clone()
        x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:]) * 3
        tok2[:, t + 1:] = (tok2[:, t + 1:] + 1) % 5
        y2 = call(layer, x2, tok2)
        torch.testing.assert_close(y2[:, :t + 1], y[:, :t + 1], atol=1e-5, rtol=1e-5,
                                   msg=f"{name}: output before {t + 1} depends on later inputs")
    # And the test itself can fail: the change does reach later outputs.
    assert not torch.allclose(y2[:, -1], y[:, -1])


@pytest.mark.parametrize("name", sorted(RECURRENT & set(WITH_VARIANTS)))
def test_step_equals_forward(name):
    layer = make(name).double()
    x, tok = inputs(1)
    x = x.double()
    y = call(layer, x, tok)
    state = layer.init_state(B, device=x.device, dtype=x.dtype)
    outs = []
    for t in range(T):
        if getattr(layer, "needs_tokens", False):
            out, state = layer.step(x[:, t], state, token=tok[:, t])
        else:
            out, state = layer.step(x[:, t], state)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, dim=1), y, atol=1e-8, rtol=1e-6)
    assert isinstance(layer.state_size(T), int) and layer.state_size(T) > 0


def test_recurrent_layers_offer_steps():
    missing = [n for n in sorted(RECURRENT & set(ALL)) if not hasattr(layers.layer_class(n), "step")]
    assert not missing, f"layers without incremental decoding: {missing}"


@pytest.mark.parametrize("name", ALL)
def test_config_file_matches_constructor(name):
    path = CONFIGS / f"{name}.yaml"
    assert path.exists(), f"configs/layer/{name}.yaml is missing"
    cfg = yaml.safe_load(path.read_text())
    assert cfg.pop("name") == name
    defaults = layers.defaults(name)
    assert set(cfg) == set(defaults), f"{name}: config keys {sorted(cfg)} != constructor {sorted(defaults)}"
    for k, v in cfg.items():
        assert v == pytest.approx(defaults[k]) if isinstance(v, float) else v == defaults[k], (name, k)


def test_unknown_layer_and_parameter_errors():
    with pytest.raises(ConfigError, match="registered layers: .*attention"):
        layers.build("atention", d_model=16, max_len=8)
    with pytest.raises(ConfigError, match="no hyper-parameter 'nheads'.*n_heads"):
        layers.build("attention", d_model=16, max_len=8, nheads=2)
    with pytest.raises(ConfigError, match="not divisible"):
        layers.build("attention", d_model=10, max_len=8, n_heads=4)


@pytest.mark.parametrize("name,extra", [("attention", {}), ("sliding_window_attention", {"window_size": 3})])
def test_attention_reference_matches_sdpa_and_gqa(name, extra):
    """SDPA shares the key/value heads of grouped-query attention inside the kernel (enable_gqa);
    the reference repeats them."""
    for kv in (4, 2, 1):
        x, _ = inputs()
        x.requires_grad_(True)
        torch.manual_seed(0)
        fast = layers.build(name, d_model=D, max_len=T, n_heads=4, n_kv_heads=kv, **extra)
        ref = layers.build(name, d_model=D, max_len=T, n_heads=4, n_kv_heads=kv, impl="torch", **extra)
        ref.load_state_dict(fast.state_dict())
        y_fast, y_ref = fast(x), ref(x)
        torch.testing.assert_close(y_fast, y_ref, atol=1e-5, rtol=1e-5)
        g_fast, = torch.autograd.grad(y_fast.square().sum(), x)
        g_ref, = torch.autograd.grad(y_ref.square().sum(), x)
        torch.testing.assert_close(g_fast, g_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_flex_sliding_window_matches_the_reference():
    """impl=flex with GQA, compiled through Inductor's CPU backend here: the forward only, as
    FlexAttention has no backward on CPU (benchmarks/gpu_check.py checks both on a GPU)."""
    x, _ = inputs()
    torch.manual_seed(0)
    kw = {"d_model": D, "max_len": T, "n_heads": 4, "n_kv_heads": 2, "window_size": 3}
    flex = layers.build("sliding_window_attention", impl="flex", **kw)
    ref = layers.build("sliding_window_attention", impl="torch", **kw)
    ref.load_state_dict(flex.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(flex(x), ref(x), atol=1e-5, rtol=1e-5)


def test_flex_has_no_attention_dropout():
    with pytest.raises(ConfigError, match="impl=flex has no attention dropout"):
        layers.build("sliding_window_attention", d_model=D, max_len=T, window_size=3, impl="flex", dropout=0.1)
