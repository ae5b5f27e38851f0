"""GPU forms of the linear-attention family through flash-linear-attention's op functions.

flash-linear-attention (``fla``, 0.6) ships Triton kernels for causal linear attention and its
relatives. Only its op functions are used, on the tensors our layers compute with their own
parameters; each function here takes and returns our layout, (B, H, T, d), and computes exactly
the math of the layer's reference (``ops.chunked_linear_attention`` or ``ops.chunked_delta_rule``,
and the normalisation around it), up to rounding:

- ``gla``: o_t = q_t S_t, S_t = diag(exp g_t) S_{t-1} + k_t^T v_t, a log decay g per key channel
  (``fla.ops.gla.chunk_gla``);
- ``simple_gla``: the same with one log decay per head and step (``chunk_simple_gla``);
- ``retention``: the same with the fixed decay gamma_h = 1 - 2^(-5-h) of head h
  (``fla.ops.retention.chunk_retention``);
- ``linear_attention``: the same without decay (``fla.ops.linear_attn.chunk_linear_attn``);
- ``delta_rule``: S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1}), o_t = q_t S_t
  (``fla.ops.delta_rule.chunk_delta_rule``);
- ``based`` / ``rebased``: causal attention with scores 1 + s + s^2/2, s = q.k/sqrt(d), or
  (q.k)^2, normalised by their row sums (``fla.ops.based`` / ``fla.ops.rebased`` parallel kernels).

fla's ops take (B, T, H, d) (Based's kernel (B, H, T, d)), scale the queries by 1/sqrt(K) unless
told otherwise (every call here passes the scale, mostly 1: the layers scale their queries
themselves), keep decays as natural logs, and return their inputs' dtype. The kernels run in a
work dtype: autocast's where autocast is on (the projections around them produce it), else the
inputs' common dtype; decays go in at least float32.

``*_unsupported`` functions give the reason a kernel cannot take given sizes and dtype, or None.
Only sizes these kernels are used at in fla's own tests are accepted (head and feature sizes
powers of two from 16), and float32 only where the kernel multiplies in full precision or torch
is allowed TF32 matmuls; anything else goes to the reference. ``unavailable(x)`` says why fla
cannot run on ``x`` at all (not installed, not on CUDA). A layer picks its path with ``use_fla``,
which records it in the layer's ``last_path`` (``"fla"`` or ``"torch"``).

The kernels are looked up by ``_op`` (lazily: importing fla needs CUDA and Triton), so tests can
put pure-torch forms of fla's documented semantics in their place and check the layouts and
scales here on the CPU.
"""

from __future__ import annotations

import functools
import importlib

import torch

from seqicl.errors import ConfigError
from seqicl.layers.ops import require

IMPLS = ("auto", "torch", "fla")
# The layers with an fla path (all take ``impl``).
LAYERS = ("based", "deltanet", "gla", "linear_attention", "mamba2", "rebased", "retnet")
# The kernels: name -> (module, attribute).
KERNELS = {
    "chunk_gla": ("fla.ops.gla", "chunk_gla"),
    "chunk_simple_gla": ("fla.ops.simple_gla", "chunk_simple_gla"),
    "chunk_retention": ("fla.ops.retention", "chunk_retention"),
    "chunk_linear_attn": ("fla.ops.linear_attn", "chunk_linear_attn"),
    "chunk_delta_rule": ("fla.ops.delta_rule", "chunk_delta_rule"),
    # parallel_based divides by the score sum + 1e-6 and hides the sum; its autograd function
    # returns both, in (B, H, T, .), with a gradient for the sum.
    "parallel_based": ("fla.ops.based.parallel", "triton_parallel_based"),
    "parallel_rebased": ("fla.ops.rebased", "parallel_rebased"),
}
HALF = (torch.float16, torch.bfloat16)
# Layers whose fla path has not yet matched the float64 reference on a GPU
# (benchmarks/gpu_check.py): ``impl=auto`` keeps them on the reference; ``impl=fla`` opts in.
AUTO_UNCHECKED = {
    "mamba2": "chunk_simple_gla has not yet been checked against the reference on a GPU",
}


def check_impl(layer: str, impl: str) -> None:
    """ConfigError unless ``impl`` is auto (fla where it can run, else the reference), torch (the
    reference) or fla (fla, or an error)."""
    require(impl in IMPLS, layer, f"impl must be auto, torch or fla, got {impl!r}")


@functools.cache
def _import_error() -> str | None:
    try:
        importlib.import_module("fla.ops")
    except Exception as e:  # noqa: BLE001 - any failure means fla cannot be used here
        return f"flash-linear-attention does not import ({type(e).__name__}: {e})".splitlines()[0]
    return None


def unavailable(x: torch.Tensor) -> str | None:
    """Why fla cannot run on ``x`` (not on CUDA, fla missing), or None."""
    if x.device.type != "cuda":
        return f"the input is on {x.device.type}, fla needs CUDA"
    return _import_error()


def available(x: torch.Tensor) -> bool:
    """Whether fla imports and ``x`` is on CUDA."""
    return unavailable(x) is None


def _op(name: str):
    module, attr = KERNELS[name]
    return getattr(importlib.import_module(module), attr)


@functools.cache
def scalar_gate_refused() -> str | None:
    """Why fla refuses a per-step scalar decay (``chunk_simple_gla`` with ``g``), or None.

    fla 0.6 raises in the backward pass (``chunk_bwd_dqkwg``) on Hopper GPUs with Triton >= 3.4.0
    and < 3.7.1, which miscompiles that kernel; the same test on fla's own flags here, once, so
    that the forward pass takes the reference instead. The fixed per-head decay of
    ``chunk_retention`` (``g_gamma``) does not go through that branch and is not refused by fla.
    """
    utils = importlib.import_module("fla.utils")
    hopper = getattr(utils, "IS_NVIDIA_HOPPER", False)
    if hopper and getattr(utils, "TRITON_ABOVE_3_4_0", True) and not getattr(utils, "TRITON_ABOVE_3_7_1", False):
        import triton

        return f"fla refuses scalar decays on Hopper GPUs with triton {triton.__version__} (>= 3.4.0, < 3.7.1)"
    return None


def use_fla(layer, x: torch.Tensor, unsupported) -> bool:
    """Whether ``layer``'s forward on ``x`` takes the fla path; records the path in ``layer.last_path``.

    ``unsupported``: a callable giving why the kernel cannot take this input's sizes and dtype
    (or None), called only where fla could run at all. ``impl="torch"`` always takes the
    reference; ``"auto"`` takes fla where it can; ``"fla"`` raises ConfigError where it cannot.
    """
    why = "impl=torch" if layer.impl == "torch" else unavailable(x) or unsupported()
    if not why and layer.impl == "auto":
        why = AUTO_UNCHECKED.get(layer.layer_name)
    if why and layer.impl == "fla":
        raise ConfigError(f"{layer.layer_name}: impl=fla, but {why}")
    layer.last_path = "torch" if why else "fla"
    return not why


def fast_path_name(layer) -> str | None:
    """The path (``"fla"`` or ``"torch"``) of ``layer``'s last forward, None for layers without one."""
    return getattr(layer, "last_path", None)


# ---------------------------------------------------------------------------------------------
# Dtypes and layouts


def work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype the kernels run in: autocast's where it is on, else the tensors' common dtype."""
    device = tensors[0].device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return functools.reduce(torch.promote_types, (t.dtype for t in tensors))


def _dtype_unsupported(dtype: torch.dtype, allowed=(torch.float32, *HALF), tf32: bool = True) -> str | None:
    """Why a kernel does not take ``dtype``. A kernel whose products use Triton's default precision
    (``tf32``) multiplies float32 in TF32; it takes float32 only where torch may do the same
    (``torch.backends.cuda.matmul.allow_tf32``, off by default)."""
    if dtype not in allowed:
        return f"fla's kernel does not take {str(dtype).replace('torch.', '')}"
    if tf32 and dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "fla's kernel multiplies float32 in TF32 and torch.backends.cuda.matmul.allow_tf32 is off"
    return None


def _size_unsupported(label: str, n: int, high: int, low: int = 16) -> str | None:
    if low <= n <= high and n & (n - 1) == 0:
        return None
    return f"{label}={n} is not a power of two in [{low}, {high}]"


def _first(*reasons: str | None) -> str | None:
    return next((r for r in reasons if r), None)


def to_fla(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, H, T, ...) -> fla's (B, T, H, ...) in ``dtype``."""
    return x.transpose(1, 2).to(dtype)


def from_fla(x: torch.Tensor) -> torch.Tensor:
    """fla's (B, T, H, ...) -> (B, H, T, ...)."""
    return x.transpose(1, 2)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in at least float32."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _kernel_call(x: torch.Tensor):
    """Autocast off around a kernel: its inputs are already in the work dtype."""
    return torch.autocast(device_type=x.device.type, enabled=False)


# ---------------------------------------------------------------------------------------------
# Linear attention with a decay per key channel, per head, or none


def gla_unsupported(key_dim: int, value_dim: int, dtype: torch.dtype) -> str | None:
    return _first(_dtype_unsupported(dtype), _size_unsupported("key dim", key_dim, 256),
                  _size_unsupported("value dim", value_dim, 256))


def gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor) -> torch.Tensor:
    """o_t = q_t S_t, S_t = diag(exp g_t) S_{t-1} + k_t^T v_t, S_0 = 0, by ``chunk_gla``.

    q, k, g (B, H, T, K), g <= 0; v (B, H, T, V) -> o (B, H, T, V). q is taken as already scaled
    (scale=1; fla's default would multiply by 1/sqrt(K) once more).
    """
    dtype = work_dtype(q, k, v)
    with _kernel_call(q):
        o, _ = _op("chunk_gla")(to_fla(q, dtype), to_fla(k, dtype), to_fla(v, dtype),
                                from_fla(_wide(log_decay)), scale=1.0)
    return from_fla(o)


def simple_gla_unsupported(key_dim: int, value_dim: int, dtype: torch.dtype) -> str | None:
    return _first(_dtype_unsupported(dtype), _size_unsupported("key dim", key_dim, 256),
                  _size_unsupported("value dim", value_dim, 256), scalar_gate_refused())


def simple_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor) -> torch.Tensor:
    """o_t = q_t S_t, S_t = exp(g_t) S_{t-1} + k_t^T v_t, S_0 = 0, by ``chunk_simple_gla``.

    q, k (B, H, T, K); v (B, H, T, V); g (B, H, T) <= 0, one log decay per head and step
    -> o (B, H, T, V). No query scale (scale=1).
    """
    dtype = work_dtype(q, k, v)
    with _kernel_call(q):
        o, _ = _op("chunk_simple_gla")(to_fla(q, dtype), to_fla(k, dtype), to_fla(v, dtype),
                                       g=from_fla(_wide(log_decay)), scale=1.0)
    return from_fla(o)


def retention_unsupported(key_dim: int, value_dim: int, dtype: torch.dtype) -> str | None:
    return _first(_dtype_unsupported(dtype), _size_unsupported("key dim", key_dim, 256),
                  _size_unsupported("value dim", value_dim, 256))


def retention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """o_t = q_t S_t, S_t = gamma_h S_{t-1} + k_t^T v_t with gamma_h = 1 - 2^(-5-h) for head h,
    by ``chunk_retention`` (which fixes these decays itself).

    q, k (B, H, T, K); v (B, H, T, V) -> o (B, H, T, V). No query scale (scale=1).
    """
    dtype = work_dtype(q, k, v)
    with _kernel_call(q):
        o, _ = _op("chunk_retention")(to_fla(q, dtype), to_fla(k, dtype), to_fla(v, dtype), scale=1.0)
    return from_fla(o)


def linear_attention_unsupported(key_dim: int, value_dim: int, dtype: torch.dtype) -> str | None:
    return _first(_dtype_unsupported(dtype), _size_unsupported("feature dim", key_dim, 256),
                  _size_unsupported("value dim", value_dim, 256))


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float | None) -> torch.Tensor:
    """o_t = q_t S_t with S_t = sum_{s<=t} k_s^T v_s, divided by q_t . sum_{s<=t} k_s + eps unless
    ``eps`` is None; by ``chunk_linear_attn`` (no decay, scale=1, fla's normalisation off).

    q, k (B, H, T, F) are the feature maps; v (B, H, T, V) -> o (B, H, T, V). The normaliser is
    a cumulative sum over time, in float32 (fla's own adds 1e-10, not eps, and scales q).
    """
    dtype = work_dtype(q, k, v)
    with _kernel_call(q):
        o, _ = _op("chunk_linear_attn")(to_fla(q, dtype), to_fla(k, dtype), to_fla(v, dtype), scale=1.0,
                                        normalize=False)
        o = from_fla(o)
        if eps is None:
            return o
        z = (_wide(q) * _wide(k).cumsum(dim=2)).sum(-1, keepdim=True)
        return (_wide(o) / (z + eps)).to(o.dtype)


# ---------------------------------------------------------------------------------------------
# The delta rule


def delta_rule_unsupported(key_dim: int, value_dim: int, dtype: torch.dtype) -> str | None:
    """chunk_delta_rule refuses float32 (it asserts bf16 or fp16) and keys over 256 channels."""
    return _first(_dtype_unsupported(dtype, HALF), _size_unsupported("key dim", key_dim, 256),
                  _size_unsupported("value dim", value_dim, 256))


def delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """o_t = q_t S_t, S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1}), S_0 = 0, by ``chunk_delta_rule``.

    q, k (B, H, T, K), normalised by the caller (fla's in-kernel L2 norm off); v (B, H, T, V);
    beta (B, H, T) -> o (B, H, T, V). No query scale (scale=1).
    """
    dtype = work_dtype(q, k, v)
    with _kernel_call(q):
        o, _ = _op("chunk_delta_rule")(to_fla(q, dtype), to_fla(k, dtype), to_fla(v, dtype),
                                       beta.transpose(1, 2).to(dtype), scale=1.0, use_qk_l2norm_in_kernel=False)
    return from_fla(o)


# ---------------------------------------------------------------------------------------------
# Based and ReBased: quadratic-kernel attention, normalised


def based_unsupported(feature_dim: int, value_dim: int, dtype: torch.dtype) -> str | None:
    """The parallel kernels take q/k widths up to 128 in one block (NK == 1) and multiply in full
    float32 precision (allow_tf32=False). Values wider than 128 split into several blocks: on an
    H100, Based and ReBased models of width 256 (one head) failed to learn MQAR through that
    path while width 64 learned, so wider values take the reference."""
    return _first(_dtype_unsupported(dtype, tf32=False), _size_unsupported("feature dim", feature_dim, 128),
                  _size_unsupported("value dim", value_dim, 128))


def _normalise(o: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    return (_wide(o) / (_wide(z)[..., None] + eps)).to(o.dtype)


def based(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """o_t = sum_{s<=t} a_ts v_s / (sum_{s<=t} a_ts + eps) with a_ts = 1 + s_ts + s_ts^2 / 2,
    s_ts = q_t . k_s / sqrt(d), d = q's width: Based's Taylor feature map phi with
    phi(q) . phi(k) = a, by fla's parallel Based kernel (scores and their row sums z).

    q, k (B, H, T, d) before the feature map; v (B, H, T, V) -> o (B, H, T, V). The kernel takes
    our layout; eps is ours (fla's ``parallel_based`` would add 1e-6).
    """
    dtype = work_dtype(q, k, v)
    with _kernel_call(q):
        o, z = _op("parallel_based")(q.to(dtype), k.to(dtype), v.to(dtype), q.shape[-1] ** -0.5)
        return _normalise(o, z, eps)


def rebased(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
    """o_t = sum_{s<=t} (q_t . k_s)^2 v_s / (sum_{s<=t} (q_t . k_s)^2 + eps), by fla's parallel
    ReBased kernel: phi(x) = x outer x, so phi(q) . phi(k) = (q . k)^2.

    q, k (B, H, T, d) (normalised by the caller); v (B, H, T, V) -> o (B, H, T, V). No scale
    (use_scale=False; fla's default scales q by 1/sqrt(d) before squaring); the kernel's
    unnormalised output and row sums come back in (B, H, T, .) and eps is ours.
    """
    dtype = work_dtype(q, k, v)
    with _kernel_call(q):
        o, z = _op("parallel_rebased")(to_fla(q, dtype), to_fla(k, dtype), to_fla(v, dtype), use_scale=False,
                                       use_normalize=False, return_both=True)
        return _normalise(o, z, eps)

