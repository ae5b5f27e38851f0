"""The Triton kernels of ``triton_scan`` against their references, forward and backward.

Run by tests/test_triton_scan.py in a pytest subprocess with TRITON_INTERPRET=1, which makes the
kernels run on CPU tensors; not collected on its own (triton reads the variable when the kernels
are defined, so it must be set before seqicl is imported).
"""

import math
import os

import pytest
import torch

from seqicl import layers
from seqicl.layers import ops, triton_scan
from seqicl.layers.rwkv import wkv

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")

B, T = 2, 37  # T is not a multiple of any tile


def rand(*shape, seed, dtype=torch.float64, low=None, high=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=torch.float64) if low is not None else \
        torch.randn(*shape, generator=g, dtype=torch.float64)
    if low is not None:
        x = low + (high - low) * x
    return x.to(dtype).requires_grad_(True)


def outputs_and_grads(fn, inputs, seed=99):
    """fn(*inputs) as a tuple, and the gradients of a random projection of it."""
    out = fn(*inputs)
    out = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)).sum() for o in out)
    return out, torch.autograd.grad(loss, inputs)


def assert_same(fast, ref, rtol, atol):
    (y, dy), (y_ref, dy_ref) = fast, ref
    for a, b in zip(y + dy, y_ref + dy_ref):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 8 steps: more tile boundaries in T = 37, and a faster interpreter."""
    monkeypatch.setattr(triton_scan, "_TILE", 8)
    monkeypatch.setattr(triton_scan, "_SELECTIVE_TILE", 8)


# --- linear scan ---------------------------------------------------------------------------

@pytest.mark.parametrize("decay_shape", [(B, T, 5), (5,)], ids=["per_step", "constant"])
def test_linear_scan_matches_loop(decay_shape):
    a, b = rand(*decay_shape, seed=0, low=0.0, high=1.0), rand(B, T, 5, seed=1)
    fast = outputs_and_grads(triton_scan.linear_scan, (a, b))
    ref = outputs_and_grads(ops.linear_scan_reference, (a, b))
    assert_same(fast, ref, 1e-10, 1e-12)


def test_linear_scan_float32_accumulates_in_float32_and_keeps_input_dtypes():
    a32, b32 = rand(B, T, 40, seed=2, low=0.5, high=1.0, dtype=torch.float32), rand(B, T, 40, seed=3, dtype=torch.float32)
    (h,), (da, db) = outputs_and_grads(triton_scan.linear_scan, (a32, b32))
    assert h.dtype == da.dtype == db.dtype == torch.float32
    a, b = a32.detach().double().requires_grad_(True), b32.detach().double().requires_grad_(True)
    (h_ref,), (da_ref, db_ref) = outputs_and_grads(ops.linear_scan_reference, (a, b))
    for x, ref in ((h, h_ref), (da, da_ref), (db, db_ref)):
        torch.testing.assert_close(x.double(), ref, rtol=1e-5, atol=1e-5)


def test_linear_scan_strong_decay_stays_finite():
    a = torch.full((1, T, 3), math.exp(-100.0), requires_grad=True)
    b = rand(1, T, 3, seed=4, dtype=torch.float32)
    (h,), grads = outputs_and_grads(triton_scan.linear_scan, (a, b))
    assert all(torch.isfinite(x).all() for x in (h, *grads))
    torch.testing.assert_close(h, ops.linear_scan_reference(a, b))


def test_complex_linear_scan_matches_loop(small_tiles):
    radius, phase = rand(5, seed=5, low=0.5, high=1.0), rand(5, seed=6, low=0.0, high=6.0)
    br, bi = rand(B, T, 5, seed=7), rand(B, T, 5, seed=8)

    def reference(radius, phase, br, bi):
        h = ops.linear_scan_reference(torch.polar(radius, phase), torch.complex(br, bi))
        return h.real, h.imag

    def fast(radius, phase, br, bi):
        return triton_scan.complex_linear_scan(radius * torch.cos(phase), radius * torch.sin(phase), br, bi)

    inputs = (radius, phase, br, bi)
    assert_same(outputs_and_grads(fast, inputs), outputs_and_grads(reference, inputs), 1e-10, 1e-12)


# --- selective scan ------------------------------------------------------------------------

def selective_reference(x, dt, A, Bm, Cm):
    h = ops.linear_scan_reference(torch.exp(dt[..., None] * A), (dt * x)[..., None] * Bm[..., None, :])
    return torch.einsum("btdn,btn->btd", h, Cm)


@pytest.mark.parametrize("D,N", [(6, 3), (5, 33)])  # (5, 33): three channel blocks, the last one partial
def test_selective_scan_matches_loop(D, N, small_tiles):
    inputs = (rand(B, T, D, seed=10), rand(B, T, D, seed=11, low=0.01, high=0.5),
              rand(D, N, seed=12, low=-4.0, high=-0.1), rand(B, T, N, seed=13), rand(B, T, N, seed=14))
    fast = outputs_and_grads(triton_scan.selective_scan, inputs)
    ref = outputs_and_grads(selective_reference, inputs)
    assert_same(fast, ref, 1e-10, 1e-12)


def test_selective_scan_strong_decay_stays_finite(small_tiles):
    inputs = (rand(1, T, 4, seed=15, dtype=torch.float32), rand(1, T, 4, seed=16, low=5.0, high=20.0, dtype=torch.float32),
              rand(4, 2, seed=17, low=-20.0, high=-5.0, dtype=torch.float32), rand(1, T, 2, seed=18, dtype=torch.float32),
              rand(1, T, 2, seed=19, dtype=torch.float32))
    (y,), grads = outputs_and_grads(triton_scan.selective_scan, inputs)
    assert all(torch.isfinite(x).all() for x in (y, *grads))
    ref = outputs_and_grads(selective_reference, tuple(x.detach().double().requires_grad_(True) for x in inputs))
    for x, r in zip((y, *grads), ref[0] + ref[1]):
        torch.testing.assert_close(x.double(), r, rtol=1e-4, atol=1e-4)


# --- WKV -----------------------------------------------------------------------------------

@pytest.mark.parametrize("C", [5, 20])  # 20: two channel blocks, the last one partial
def test_wkv_matches_chunked_reference(C, small_tiles):
    inputs = (rand(C, seed=20, low=0.05, high=3.0), rand(C, seed=21), rand(B, T, C, seed=22), rand(B, T, C, seed=23))
    fast = outputs_and_grads(triton_scan.wkv, inputs)
    ref = outputs_and_grads(lambda w, u, k, v: wkv(w, u, k, v, chunk_size=8), inputs)
    assert_same(fast, ref, 1e-10, 1e-12)


def test_wkv_large_keys_stay_finite(small_tiles):
    """Keys of +-80 overflow e^k in float32; the running-max state keeps every exponent <= 0."""
    C = 4
    inputs = (rand(C, seed=24, low=0.01, high=20.0, dtype=torch.float32), rand(C, seed=25, dtype=torch.float32),
              rand(1, T, C, seed=26, low=-80.0, high=80.0, dtype=torch.float32), rand(1, T, C, seed=27, dtype=torch.float32))
    (y,), grads = outputs_and_grads(triton_scan.wkv, inputs)
    assert all(torch.isfinite(x).all() for x in (y, *grads))
    ref = outputs_and_grads(lambda w, u, k, v: wkv(w, u, k, v, chunk_size=8),
                            tuple(x.detach().double().requires_grad_(True) for x in inputs))
    for x, r in zip((y, *grads), ref[0] + ref[1]):
        torch.testing.assert_close(x.double(), r, rtol=1e-4, atol=1e-4)


# --- layers --------------------------------------------------------------------------------

KERNEL = {"lru": "complex_linear_scan", "gilr": "linear_scan", "mamba": "selective_scan", "rwkv": "wkv"}
SMALL = {"lru": {"d_state": 6}, "mamba": {"d_state": 4}}


@pytest.mark.parametrize("name", sorted(KERNEL))
def test_layer_kernel_path_matches_reference(name, monkeypatch):
    """impl=auto forced onto the kernels (CPU tensors under the interpreter) against impl=torch."""
    calls = []
    kernel = getattr(triton_scan, KERNEL[name])
    monkeypatch.setattr(triton_scan, "available", lambda *tensors: True)
    monkeypatch.setattr(triton_scan, KERNEL[name], lambda *a: calls.append(1) or kernel(*a))
    d_model = 6
    torch.manual_seed(0)
    ref = layers.build(name, d_model=d_model, max_len=T, impl="torch", **SMALL.get(name, {})).double()
    fast = layers.build(name, d_model=d_model, max_len=T, **SMALL.get(name, {})).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(B, T, d_model, generator=torch.Generator().manual_seed(30), dtype=torch.float64)
    upstream = torch.randn(B, T, d_model, generator=torch.Generator().manual_seed(31), dtype=torch.float64)
    results = []
    for layer in (fast, ref):
        x_in = x.clone().requires_grad_(True)
        y = layer(x_in)
        (y * upstream).sum().backward()
        results.append((y.detach(), x_in.grad, {k: p.grad for k, p in layer.named_parameters()}))
    assert calls, "the kernel path was not taken"
    (y, dx, dp), (y_ref, dx_ref, dp_ref) = results
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-9, atol=1e-11)
    assert dp.keys() == dp_ref.keys()
    for key in dp:
        torch.testing.assert_close(dp[key], dp_ref[key], rtol=1e-9, atol=1e-11, msg=lambda m: f"{name}.{key}: {m}")
