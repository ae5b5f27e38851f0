"""The fla dispatch of the linear-attention layers.

On the CPU: ``impl`` validation, ``auto`` == ``torch`` where fla cannot run, the size and dtype
rules, the Hopper refusal, and the layouts and scales of ``fla_ops``: fla's kernels are replaced
by naive recurrences of fla's documented semantics in fla's layout ((B, T, H, d), query scale
1/sqrt(K) unless given, natural-log decays, fla's own normalisations), so a wrong transpose,
scale or normaliser changes the layer's output. With CUDA and fla (marked gpu): the fla path
against the float64 ``impl=torch`` reference, forward and backward, in fp32 and bf16.
"""

import sys
import types

import pytest
import torch

from seqicl import layers
from seqicl.errors import ConfigError
from seqicl.layers import fla_ops

FLA = fla_ops.LAYERS
TIGHT = {"rtol": 1e-9, "atol": 1e-11}
# chunk_retention computes its decays in float32: agreement to float32 rounding of log gamma only.
TOLERANCE = {"retnet": {"rtol": 1e-4, "atol": 1e-7}}
# Sizes at which every kernel takes the layer (head, key and feature sizes 16 or 32).
SIZES = {"gla": {"d_model": 128}, "retnet": {"d_model": 64}, "mamba2": {"d_model": 16, "d_state": 16, "head_dim": 16}}


# ---------------------------------------------------------------------------------------------
# fla's semantics, naively, in fla's layout


def _default_scale(x, scale):
    return x.shape[-1] ** -0.5 if scale is None else scale


def _gated_recurrence(q, k, v, log_decay, scale):
    """o_t = scale q_t S_t, S_t = exp(g_t) S_{t-1} + k_t^T v_t; (B, T, H, .) tensors, g broadcast to (B, T, H, K)."""
    B, T, H, K = q.shape
    assert k.shape == q.shape and v.shape[:3] == q.shape[:3] and log_decay.shape == q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    out = []
    for t in range(T):
        S = S * log_decay[:, t].exp()[..., None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append((q[:, t, :, :, None] * scale * S).sum(-2))
    return torch.stack(out, dim=1).to(q.dtype), S


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False):
    assert q.shape == k.shape == g.shape
    return _gated_recurrence(q, k, v, g, _default_scale(q, scale))


def chunk_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None, output_final_state=False):
    B, T, H, K = q.shape
    log_decay = q.new_zeros(B, T, H)
    if g is not None:
        assert g.shape == (B, T, H)
        log_decay = log_decay + g
    if g_gamma is not None:
        assert g_gamma.shape == (H,)
        log_decay = log_decay + g_gamma.to(q.dtype)
    return _gated_recurrence(q, k, v, log_decay[..., None].expand_as(q), _default_scale(k, scale))


def chunk_retention(q, k, v, scale=None, initial_state=None, output_final_state=False):
    g_gamma = (1 - 2.0 ** (-5.0 - torch.arange(q.shape[2], dtype=torch.float))).log()
    return chunk_simple_gla(q, k, v, g_gamma=g_gamma, scale=scale)


def chunk_linear_attn(q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=True):
    scale = _default_scale(k, scale)
    o, S = chunk_simple_gla(q, k, v, scale=scale)
    if normalize:
        o = o / ((q * scale * k.cumsum(1)).sum(-1, keepdim=True) + 1e-10)
    return o, S


def chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False,
                     use_qk_l2norm_in_kernel=False):
    B, T, H, K = q.shape
    assert q.dtype == k.dtype == v.dtype and beta.shape == (B, T, H)
    if use_qk_l2norm_in_kernel:
        q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    scale = _default_scale(k, scale)
    S = q.new_zeros(B, H, K, v.shape[-1])
    out = []
    for t in range(T):
        k_t, v_t = k[:, t], v[:, t]
        u = v_t - (k_t[..., None] * S).sum(-2)
        S = S + beta[:, t, :, None, None] * k_t[..., None] * u[..., None, :]
        out.append((q[:, t, :, :, None] * scale * S).sum(-2))
    return torch.stack(out, dim=1), S


def _quadratic_attention(q, k, v, scale, score):
    """(B, H, T, .) -> sum_s a_ts v_s and sum_s a_ts with a = score(scale q . k), causal."""
    s = score((q * scale) @ k.transpose(-1, -2))
    T = q.shape[-2]
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), 0.0)
    return (s @ v).to(q.dtype), s.sum(-1).to(q.dtype)


def triton_parallel_based(q, k, v, scale):
    """fla.ops.based.parallel's autograd function: (B, H, T, .) in and out, scores 1 + s + s^2/2."""
    return _quadratic_attention(q, k, v, scale, lambda s: 1 + s + s * s / 2)


def parallel_rebased(q, k, v, eps=1e-5, use_scale=True, use_normalize=True, return_both=False):
    scale = q.shape[-1] ** -0.5 if use_scale else 1
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    o, z = _quadratic_attention(q, k, v, scale, lambda s: s * s)
    if return_both:
        return o, z
    if use_normalize:
        o = o / (z[..., None] + eps)
    return o.transpose(1, 2)


STAND_INS = {"chunk_gla": chunk_gla, "chunk_simple_gla": chunk_simple_gla, "chunk_retention": chunk_retention,
             "chunk_linear_attn": chunk_linear_attn, "chunk_delta_rule": chunk_delta_rule,
             "parallel_based": triton_parallel_based, "parallel_rebased": parallel_rebased}


@pytest.fixture
def stand_ins(monkeypatch):
    """fla "available" on the CPU with the naive kernels, every dtype let through."""
    monkeypatch.setattr(fla_ops, "_op", STAND_INS.__getitem__)
    monkeypatch.setattr(fla_ops, "unavailable", lambda x: None)
    monkeypatch.setattr(fla_ops, "_dtype_unsupported", lambda dtype, allowed=None, tf32=True: None)
    monkeypatch.setattr(fla_ops, "scalar_gate_refused", lambda: None)


# ---------------------------------------------------------------------------------------------


def _pair(name, T=12, B=2, seed=0, impl="auto", **overrides):
    """The layer with ``impl`` and with impl=torch, same weights, float64, and an input."""
    kw = {"d_model": 32, **SIZES.get(name, {}), **overrides}
    d_model = kw.pop("d_model")
    torch.manual_seed(seed)
    ref = layers.build(name, d_model=d_model, max_len=T, impl="torch", **kw).double()
    layer = layers.build(name, d_model=d_model, max_len=T, impl=impl, **kw).double()
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, d_model, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    return layer, ref, x


def _forward_backward(layer, x):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), x.grad, [p.grad for p in layer.parameters()]


@pytest.mark.parametrize("name", FLA)
def test_impl_is_validated(name):
    with pytest.raises(ConfigError, match=f"{name}: impl must be auto, torch or fla, got 'triton'"):
        layers.build(name, d_model=32, max_len=8, impl="triton")
    assert layers.defaults(name)["impl"] == "auto"


@pytest.mark.parametrize("name", FLA)
def test_impl_fla_fails_in_one_line_where_fla_cannot_run(name):
    layer = layers.build(name, d_model=32, max_len=8, impl="fla")
    with pytest.raises(ConfigError, match=f"^{name}: impl=fla, but the input is on cpu, fla needs CUDA$"):
        layer(torch.randn(1, 8, 32))


@pytest.mark.parametrize("name", FLA)
def test_auto_is_the_reference_on_cpu(name):
    layer, ref, x = _pair(name)
    y, dx, dp = _forward_backward(layer, x)
    y_ref, dx_ref, dp_ref = _forward_backward(ref, x)
    assert torch.equal(y, y_ref) and torch.equal(dx, dx_ref)
    assert all(torch.equal(a, b) for a, b in zip(dp, dp_ref))
    assert fla_ops.fast_path_name(layer) == fla_ops.fast_path_name(ref) == "torch"


@pytest.mark.parametrize("name", FLA)
def test_fla_mapping_matches_the_reference(name, stand_ins):
    """fla's semantics behind the layouts and scales of fla_ops give the reference's output and gradients."""
    layer, ref, x = _pair(name, T=12, B=2, impl="fla")
    y, dx, dp = _forward_backward(layer, x)
    assert fla_ops.fast_path_name(layer) == "fla"
    y_ref, dx_ref, dp_ref = _forward_backward(ref, x)
    assert fla_ops.fast_path_name(ref) == "torch"
    tol = TOLERANCE.get(name, TIGHT)
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(dx, dx_ref, **tol)
    for a, b in zip(dp, dp_ref):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("name, overrides", [("linear_attention", {"normalize": False, "feature_map": "identity"}),
                                             ("linear_attention", {"eps": 0.5}), ("based", {"eps": 0.5}),
                                             ("rebased", {"eps": 0.5}), ("retnet", {"positions": "none"})])
def test_fla_mapping_keeps_the_layer_options(name, overrides, stand_ins):
    layer, ref, x = _pair(name, impl="fla", **overrides)
    torch.testing.assert_close(layer(x), ref(x), **TOLERANCE.get(name, TIGHT))
    assert fla_ops.fast_path_name(layer) == "fla"


def test_fla_mapping_under_autocast_runs_the_kernel_in_the_autocast_dtype(stand_ins, monkeypatch):
    seen = []

    def spy(*args, **kwargs):
        seen.append({a.dtype for a in args[:3]})
        return chunk_gla(*args, **kwargs)

    monkeypatch.setattr(fla_ops, "_op", {**STAND_INS, "chunk_gla": spy}.__getitem__)
    layer, ref, x = _pair("gla", impl="fla")
    layer.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.float())
    assert seen == [{torch.bfloat16}] and torch.isfinite(y).all()


@pytest.mark.parametrize("unsupported, args, reason", [
    (fla_ops.gla_unsupported, (8, 16, torch.bfloat16), "key dim=8 is not a power of two in [16, 256]"),
    (fla_ops.gla_unsupported, (16, 48, torch.bfloat16), "value dim=48 is not a power of two in [16, 256]"),
    (fla_ops.gla_unsupported, (16, 32, torch.float64), "fla's kernel does not take float64"),
    (fla_ops.delta_rule_unsupported, (32, 32, torch.float32), "fla's kernel does not take float32"),
    (fla_ops.delta_rule_unsupported, (512, 32, torch.bfloat16), "key dim=512 is not a power of two in [16, 256]"),
    (fla_ops.based_unsupported, (256, 64, torch.bfloat16), "feature dim=256 is not a power of two in [16, 128]"),
    (fla_ops.based_unsupported, (16, 256, torch.bfloat16), "value dim=256 is not a power of two in [16, 128]"),
    (fla_ops.linear_attention_unsupported, (33, 32, torch.bfloat16), "feature dim=33 is not a power of two"),
    (fla_ops.retention_unsupported, (16, 32, torch.float32), "multiplies float32 in TF32"),
])
def test_sizes_and_dtypes_outside_the_kernels_are_refused(unsupported, args, reason):
    assert reason in unsupported(*args)


@pytest.mark.parametrize("unsupported, args", [
    (fla_ops.gla_unsupported, (16, 32, torch.float16)),
    (fla_ops.gla_unsupported, (256, 256, torch.bfloat16)),
    (fla_ops.delta_rule_unsupported, (32, 32, torch.bfloat16)),
    (fla_ops.delta_rule_unsupported, (128, 64, torch.float16)),
    (fla_ops.based_unsupported, (16, 64, torch.float32)),  # full-precision kernel: float32 without TF32
    (fla_ops.based_unsupported, (128, 128, torch.bfloat16)),
    (fla_ops.retention_unsupported, (16, 32, torch.bfloat16)),
    (fla_ops.linear_attention_unsupported, (32, 32, torch.bfloat16)),
])
def test_sizes_and_dtypes_of_the_kernels_are_taken(unsupported, args):
    assert unsupported(*args) is None


def test_float32_goes_to_tf32_kernels_only_where_torch_allows_tf32(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    assert "TF32" in fla_ops.gla_unsupported(16, 32, torch.float32)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    assert fla_ops.gla_unsupported(16, 32, torch.float32) is None
    assert "does not take float32" in fla_ops.delta_rule_unsupported(16, 32, torch.float32)


def test_unsupported_sizes_take_the_reference_or_fail_with_impl_fla(stand_ins):
    layer, ref, x = _pair("gla", d_model=64)  # key dim 64 * 0.5 / 4 heads = 8
    torch.testing.assert_close(layer(x), ref(x), rtol=0, atol=0)
    assert fla_ops.fast_path_name(layer) == "torch"
    strict = layers.build("gla", d_model=64, max_len=12, impl="fla").double()
    with pytest.raises(ConfigError, match="^gla: impl=fla, but key dim=8 is not a power of two in \\[16, 256\\]$"):
        strict(x)


def test_work_dtype():
    a, b = torch.zeros(1, dtype=torch.bfloat16), torch.zeros(1)
    assert fla_ops.work_dtype(a, b) == torch.float32
    assert fla_ops.work_dtype(a, a) == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fla_ops.work_dtype(b, b) == torch.bfloat16


def test_layouts():
    x = torch.arange(2 * 3 * 5 * 4.).view(2, 3, 5, 4)
    assert fla_ops.to_fla(x, torch.float64).shape == (2, 5, 3, 4)
    assert torch.equal(fla_ops.to_fla(x, x.dtype)[1, 4, 2], x[1, 2, 4])
    assert torch.equal(fla_ops.from_fla(fla_ops.to_fla(x, x.dtype)), x)


@pytest.fixture
def fake_fla(monkeypatch):
    """Stand-in ``fla.utils`` and ``triton`` modules whose flags a test sets."""
    def install(hopper, above_3_4_0, above_3_7_1, version="3.6.0"):
        utils = types.SimpleNamespace(IS_NVIDIA_HOPPER=hopper, TRITON_ABOVE_3_4_0=above_3_4_0,
                                      TRITON_ABOVE_3_7_1=above_3_7_1)
        monkeypatch.setitem(sys.modules, "fla", types.ModuleType("fla"))
        monkeypatch.setitem(sys.modules, "fla.utils", utils)
        monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__=version))
        fla_ops.scalar_gate_refused.cache_clear()

    yield install
    fla_ops.scalar_gate_refused.cache_clear()


@pytest.mark.parametrize("hopper, above_3_4_0, above_3_7_1, refused", [
    (True, True, False, True), (True, True, True, False), (True, False, False, False), (False, True, False, False)])
def test_scalar_gates_are_refused_where_fla_refuses_them(fake_fla, hopper, above_3_4_0, above_3_7_1, refused):
    fake_fla(hopper, above_3_4_0, above_3_7_1)
    reason = fla_ops.scalar_gate_refused()
    assert (reason is not None) == refused
    if refused:
        assert reason == "fla refuses scalar decays on Hopper GPUs with triton 3.6.0 (>= 3.4.0, < 3.7.1)"
        assert fla_ops.simple_gla_unsupported(16, 16, torch.bfloat16) == reason
        assert fla_ops.retention_unsupported(16, 32, torch.bfloat16) is None


def test_refused_scalar_gates_take_the_reference(fake_fla, monkeypatch):
    fake_fla(True, True, False)
    monkeypatch.setattr(fla_ops, "_op", STAND_INS.__getitem__)
    monkeypatch.setattr(fla_ops, "unavailable", lambda x: None)
    monkeypatch.setattr(fla_ops, "_dtype_unsupported", lambda dtype, allowed=None, tf32=True: None)
    layer, ref, x = _pair("mamba2")
    torch.testing.assert_close(layer(x), ref(x), rtol=0, atol=0)
    assert fla_ops.fast_path_name(layer) == "torch"
    layer.impl = "fla"
    with pytest.raises(ConfigError, match="^mamba2: impl=fla, but fla refuses scalar decays on Hopper"):
        layer(x)


# ---------------------------------------------------------------------------------------------
# On the device


def expected_path(name: str, dtype: torch.dtype) -> str:
    """The path the default dispatch must take at ``GPU_D_MODEL``: fla, except where fla refuses or
    the kernel would multiply float32 in TF32 while torch is not allowed to."""
    if dtype == torch.float32 and name == "deltanet":
        return "torch"  # chunk_delta_rule takes bf16 and fp16 only
    if dtype == torch.float32 and name not in ("based", "rebased") and not torch.backends.cuda.matmul.allow_tf32:
        return "torch"
    if name == "mamba2" and fla_ops.scalar_gate_refused():
        return "torch"
    return "fla"


GPU_D_MODEL = 256
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _on_device(name, dtype):
    from seqicl.layers.fastpath_check import compare_to_reference

    probe = torch.zeros(1, device="cuda")
    assert fla_ops.available(probe), fla_ops.unavailable(probe)
    return compare_to_reference(name, "cuda", dtype, seq_len=128, d_model=GPU_D_MODEL)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", FLA)
def test_fla_path_matches_the_reference_on_the_device(name, dtype):
    """Default dispatch (fla where it applies) against the float64 impl=torch reference, forward and backward."""
    r = _on_device(name, dtype)
    assert r["path"] == expected_path(name, dtype), r
    assert r["ok"], r


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("name", FLA)
def test_fla_path_in_float32_with_tf32_on_the_device(name, monkeypatch):
    """With TF32 allowed, float32 takes the TF32 kernels too; TF32 rounding (2^-11) bounds the error."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    r = _on_device(name, torch.float32)
    assert r["path"] == expected_path(name, torch.float32), r
    assert max(r["forward"], r["grad_input"], r["grad_params"]) <= 2e-2, r


@pytest.mark.parametrize("name", sorted(fla_ops.AUTO_UNCHECKED))
def test_auto_keeps_layers_unchecked_on_a_gpu_on_the_reference(name, stand_ins):
    layer, ref, x = _pair(name)
    torch.testing.assert_close(layer(x), ref(x), **TIGHT)
    assert fla_ops.fast_path_name(layer) == "torch"
    opted_in, _, _ = _pair(name, impl="fla")
    opted_in(x)
    assert fla_ops.fast_path_name(opted_in) == "fla"
