"""Triton kernels for the diagonal recurrences of lru, gilr, mamba and rwkv (their GPU fast paths).

- ``linear_scan`` / ``complex_linear_scan``: h_t = a_t * h_{t-1} + b_t, h_{-1} = 0, real or complex
  (as separate real and imaginary parts), over (batch, T, channels);
- ``selective_scan``: Mamba-1's selective SSM, y_t[d] = sum_n C_t[n] h_t[d, n] with
  h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] B_t[n] x_t[d], never materialising
  the (batch, T, d_inner, d_state) states;
- ``wkv``: RWKV-4's WKV operator (``rwkv.wkv``), with the running-max state (p, a, b).

Every kernel runs one program per (block of channels, batch element), walks the sequence in tiles
of BLOCK_T steps, solves each tile with a parallel (associative) scan and carries the state from
tile to tile; the backward kernels walk the tiles in reverse order. They accumulate in float32
(float64 for float64 inputs) whatever the input dtype, return the outputs in that accumulation
dtype and the gradients in the dtypes of the inputs. Only products of decays are formed, never
their inverses, so strong decays cannot overflow.

Layers call ``available(*tensors)`` at their dispatch point: the kernels run on CUDA tensors of a
floating dtype when triton imports; everything else takes the layer's reference path.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

# Without triton the kernels stay plain functions that nothing calls: ``available`` is False.
_jit = triton.jit if triton is not None else (lambda fn: fn)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Largest d_state the selective scan kernel keeps in registers; larger ones take the reference.
SELECTIVE_MAX_STATE = 128
_TILE = 32            # time steps per tile of the linear scan and WKV kernels
_SELECTIVE_TILE = 8   # time steps per tile of the selective scan


def available(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can take these tensors: triton imports, all are on CUDA, all floating."""
    return triton is not None and all(t.is_cuda and t.dtype in _DTYPES for t in tensors)


def _accumulator(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


# ---------------------------------------------------------------------------------------------
# Combine functions of the associative scans


@_jit
def _affine(a1, b1, a2, b2):
    """The map h -> a2 (a1 h + b1) + b2: (a1, b1) followed by (a2, b2)."""
    return a1 * a2, a2 * b1 + b2


@_jit
def _complex_affine(ar1, ai1, br1, bi1, ar2, ai2, br2, bi2):
    """``_affine`` for complex a and b given as real and imaginary parts."""
    return (ar1 * ar2 - ai1 * ai2, ar1 * ai2 + ai1 * ar2,
            ar2 * br1 - ai2 * bi1 + br2, ar2 * bi1 + ai2 * br1 + bi2)


@_jit
def _log_sum(p1, a1, b1, p2, a2, b2):
    """e^p1 (a1, b1) + e^p2 (a2, b2) as e^p (a, b), p = max(p1, p2) (p = -inf: the empty sum)."""
    p = tl.maximum(p1, p2)
    m = tl.where(p == float("-inf"), 0.0, p)
    e1 = tl.exp(p1 - m)
    e2 = tl.exp(p2 - m)
    return p, e1 * a1 + e2 * a2, e1 * b1 + e2 * b2


@_jit
def _decayed_sum(d1, p1, a1, b1, d2, p2, a2, b2):
    """Segments (d, e^p (a, b)) of a sum decayed by e^d over the segment: the earlier segment's
    sum decays by e^d2 through the later one."""
    p, a, b = _log_sum(p1 + d2, a1, b1, p2, a2, b2)
    return d1 + d2, p, a, b


@_jit
def _row(x, selected):
    """The row of a (rows, ...) tile where ``selected`` (rows, 1, ...) is true, by a masked sum."""
    return tl.sum(tl.where(selected, x, 0.0), axis=0)


@_jit
def _row_max(x, selected):
    """``_row`` for a tile that may hold -inf."""
    return tl.max(tl.where(selected, x, float("-inf")), axis=0)


# ---------------------------------------------------------------------------------------------
# Diagonal linear recurrence, real or complex


@_jit
def _scan_fwd_kernel(A, AI, X, XI, H, HI, T, C, n_tiles, sa_b, sa_t, sa_c,
                     COMPLEX: tl.constexpr, ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """h_t = a_t h_{t-1} + x_t, tile by tile: h = (scan of the tile from zero) + (decay product) h_carry."""
    pid_c, pid_b = tl.program_id(0), tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = tl.arange(0, BLOCK_T)
    base = pid_b.to(tl.int64) * T * C
    a_base = pid_b.to(tl.int64) * sa_b
    h = tl.zeros([BLOCK_C], dtype=ACC)
    hi = tl.zeros([BLOCK_C], dtype=ACC)
    for k in range(n_tiles):
        t = k * BLOCK_T + rows
        mask = (t < T)[:, None] & (c < C)[None, :]
        off = base + t[:, None] * C + c[None, :]
        a_off = a_base + t[:, None] * sa_t + c[None, :] * sa_c
        a = tl.load(A + a_off, mask=mask, other=1.0).to(ACC)
        x = tl.load(X + off, mask=mask, other=0.0).to(ACC)
        if COMPLEX:
            ai = tl.load(AI + a_off, mask=mask, other=0.0).to(ACC)
            xi = tl.load(XI + off, mask=mask, other=0.0).to(ACC)
            pr, pi, lr, li = tl.associative_scan((a, ai, x, xi), 0, _complex_affine)
            hr_t = lr + pr * h[None, :] - pi * hi[None, :]
            hi_t = li + pr * hi[None, :] + pi * h[None, :]
            tl.store(H + off, hr_t, mask=mask)
            tl.store(HI + off, hi_t, mask=mask)
            h = _row(hr_t, rows[:, None] == BLOCK_T - 1)
            hi = _row(hi_t, rows[:, None] == BLOCK_T - 1)
        else:
            p, loc = tl.associative_scan((a, x), 0, _affine)
            h_t = loc + p * h[None, :]
            tl.store(H + off, h_t, mask=mask)
            h = _row(h_t, rows[:, None] == BLOCK_T - 1)


@_jit
def _scan_bwd_kernel(A, AI, H, HI, G, GI, DA, DAI, DX, DXI, T, C, n_tiles, sa_b, sa_t, sa_c,
                     COMPLEX: tl.constexpr, ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """dh_t = g_t + conj(a_{t+1}) dh_{t+1} (a reverse scan, tiles from the last), dx_t = dh_t,
    da_t = dh_t conj(h_{t-1})."""
    pid_c, pid_b = tl.program_id(0), tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = tl.arange(0, BLOCK_T)
    base = pid_b.to(tl.int64) * T * C
    a_base = pid_b.to(tl.int64) * sa_b
    dh = tl.zeros([BLOCK_C], dtype=ACC)
    dhi = tl.zeros([BLOCK_C], dtype=ACC)
    for j in range(n_tiles):
        t = (n_tiles - 1 - j) * BLOCK_T + rows
        cm = (c < C)[None, :]
        mask = (t < T)[:, None] & cm
        next_mask = (t + 1 < T)[:, None] & cm
        prev_mask = ((t >= 1) & (t < T))[:, None] & cm
        off = base + t[:, None] * C + c[None, :]
        next_off = a_base + (t + 1)[:, None] * sa_t + c[None, :] * sa_c
        g = tl.load(G + off, mask=mask, other=0.0).to(ACC)
        a_next = tl.load(A + next_off, mask=next_mask, other=0.0).to(ACC)
        h_prev = tl.load(H + off - C, mask=prev_mask, other=0.0).to(ACC)
        if COMPLEX:
            gi = tl.load(GI + off, mask=mask, other=0.0).to(ACC)
            ai_next = -tl.load(AI + next_off, mask=next_mask, other=0.0).to(ACC)
            hi_prev = tl.load(HI + off - C, mask=prev_mask, other=0.0).to(ACC)
            pr, pi, lr, li = tl.associative_scan((a_next, ai_next, g, gi), 0, _complex_affine, reverse=True)
            dr_t = lr + pr * dh[None, :] - pi * dhi[None, :]
            di_t = li + pr * dhi[None, :] + pi * dh[None, :]
            tl.store(DX + off, dr_t, mask=mask)
            tl.store(DXI + off, di_t, mask=mask)
            tl.store(DA + off, dr_t * h_prev + di_t * hi_prev, mask=mask)
            tl.store(DAI + off, di_t * h_prev - dr_t * hi_prev, mask=mask)
            dh = _row(dr_t, rows[:, None] == 0)
            dhi = _row(di_t, rows[:, None] == 0)
        else:
            p, loc = tl.associative_scan((a_next, g), 0, _affine, reverse=True)
            d_t = loc + p * dh[None, :]
            tl.store(DX + off, d_t, mask=mask)
            tl.store(DA + off, d_t * h_prev, mask=mask)
            dh = _row(d_t, rows[:, None] == 0)


def _scan_launch(b: torch.Tensor):
    B, T, C = b.shape
    block_c = min(32, triton.next_power_of_2(C))
    return (triton.cdiv(C, block_c), B), dict(T=T, C=C, n_tiles=triton.cdiv(T, _TILE), BLOCK_T=_TILE,
                                               BLOCK_C=block_c)


def _strides(a: torch.Tensor) -> dict:
    return dict(zip(("sa_b", "sa_t", "sa_c"), a.stride()))


class _LinearScan(torch.autograd.Function):
    """Inputs a_r, a_i, x_r, x_i of shape (B, T, C) (a possibly a broadcast view, x contiguous;
    the imaginary parts None for a real recurrence); outputs the states (real, or real and
    imaginary parts)."""

    @staticmethod
    def forward(ctx, ar, ai, xr, xi):
        complex_ = xi is not None
        acc = _accumulator(ar, xr)
        hr = torch.empty(xr.shape, dtype=acc, device=xr.device)
        hi = torch.empty_like(hr) if complex_ else hr
        grid, kw = _scan_launch(xr)
        _scan_fwd_kernel[grid](ar, ai if complex_ else ar, xr, xi if complex_ else xr, hr, hi, **_strides(ar),
                               COMPLEX=complex_, ACC=_tl_dtype(acc), **kw)
        ctx.save_for_backward(ar, ai if complex_ else ar, hr, hi)
        ctx.complex_, ctx.dtypes = complex_, (ar.dtype, xr.dtype)
        return (hr, hi) if complex_ else hr

    @staticmethod
    def backward(ctx, gr, gi=None):
        ar, ai, hr, hi = ctx.saved_tensors
        complex_ = ctx.complex_
        gr = torch.zeros_like(hr) if gr is None else gr.contiguous()
        gi = (torch.zeros_like(hi) if gi is None else gi.contiguous()) if complex_ else gr
        a_dtype, x_dtype = ctx.dtypes
        dar = torch.empty(hr.shape, dtype=a_dtype, device=hr.device)
        dxr = torch.empty(hr.shape, dtype=x_dtype, device=hr.device)
        dai, dxi = (torch.empty_like(dar), torch.empty_like(dxr)) if complex_ else (dar, dxr)
        grid, kw = _scan_launch(hr)
        _scan_bwd_kernel[grid](ar, ai, hr, hi, gr, gi, dar, dai, dxr, dxi, **_strides(ar),
                               COMPLEX=complex_, ACC=_tl_dtype(hr.dtype), **kw)
        return (dar, dai, dxr, dxi) if complex_ else (dar, None, dxr, None)


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Every state of h_t = a_t * h_{t-1} + b_t, h_{-1} = 0, for real b (batch, T, channels) and
    a broadcasting against it; the states come in the accumulation dtype."""
    return _LinearScan.apply(a.expand_as(b), None, b.contiguous(), None)


def complex_linear_scan(ar: torch.Tensor, ai: torch.Tensor, br: torch.Tensor,
                        bi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``linear_scan`` for complex a = ar + i ai and b = br + i bi; returns (Re h, Im h).

    The backward pass is that of the real recurrence on (Re h, Im h): dh_t = g_t + conj(a_{t+1})
    dh_{t+1}, db_t = dh_t and da_t = dh_t conj(h_{t-1}), with dh = dRe h + i dIm h.
    """
    ar, ai = ar.expand_as(br), ai.expand_as(br)
    if ar.stride() != ai.stride():  # the kernel indexes both parts with one set of strides
        ar, ai = ar.contiguous(), ai.contiguous()
    return _LinearScan.apply(ar, ai, br.contiguous(), bi.contiguous())


# ---------------------------------------------------------------------------------------------
# Mamba-1 selective scan


@_jit
def _selective_tile(X, DT, Bm, base_td, base_tn, t, d, n, T, D, N, A, ACC: tl.constexpr):
    """Loads of one tile and its recurrence: dt, x (tile, d), B (tile, n), the decays
    exp(dt A) and the inputs dt B x (tile, d, n)."""
    mask_td = (t < T)[:, None] & (d < D)[None, :]
    mask_tn = (t < T)[:, None] & (n < N)[None, :]
    dt = tl.load(DT + base_td + t[:, None] * D + d[None, :], mask=mask_td, other=0.0).to(ACC)
    x = tl.load(X + base_td + t[:, None] * D + d[None, :], mask=mask_td, other=0.0).to(ACC)
    b = tl.load(Bm + base_tn + t[:, None] * N + n[None, :], mask=mask_tn, other=0.0).to(ACC)
    decay = tl.exp(dt[:, :, None] * A[None, :, :])
    inp = (dt * x)[:, :, None] * b[:, None, :]
    return dt, x, b, decay, inp


@_jit
def _selective_fwd_kernel(X, DT, A, Bm, Cm, Y, HS, T, D, N, n_tiles,
                          ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """y_t = sum_n C_t[n] h_t[:, n] tile by tile; the state entering each tile is kept in HS
    (batch, n_tiles, D, N) for the backward pass."""
    pid_d, pid_b = tl.program_id(0), tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_T)
    mask_dn = (d < D)[:, None] & (n < N)[None, :]
    A_dn = tl.load(A + d[:, None] * N + n[None, :], mask=mask_dn, other=0.0).to(ACC)
    base_td = pid_b.to(tl.int64) * T * D
    base_tn = pid_b.to(tl.int64) * T * N
    hs_off = pid_b.to(tl.int64) * n_tiles * D * N + d[:, None] * N + n[None, :]
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=ACC)
    for k in range(n_tiles):
        tl.store(HS + hs_off + k * D * N, h, mask=mask_dn)
        t = k * BLOCK_T + rows
        dt, x, b, decay, inp = _selective_tile(X, DT, Bm, base_td, base_tn, t, d, n, T, D, N, A_dn, ACC)
        c = tl.load(Cm + base_tn + t[:, None] * N + n[None, :], mask=(t < T)[:, None] & (n < N)[None, :],
                    other=0.0).to(ACC)
        p, loc = tl.associative_scan((decay, inp), 0, _affine)
        h_t = loc + p * h[None, :, :]
        y = tl.sum(h_t * c[:, None, :], axis=2)
        tl.store(Y + base_td + t[:, None] * D + d[None, :], y, mask=(t < T)[:, None] & (d < D)[None, :])
        h = _row(h_t, rows[:, None, None] == BLOCK_T - 1)


@_jit
def _selective_bwd_kernel(X, DT, A, Bm, Cm, HS, DY, DX, DDT, DA, DB, DC, T, D, N, n_tiles, B,
                          ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Tiles from the last: the states h_t recomputed from the kept tile-entry state, the
    adjoint dh_t = C_t dy_t + exp(dt_{t+1} A) dh_{t+1} by a reverse scan, and with
    a_t h_{t-1} = h_t - dt_t B_t x_t (no division by the decay):
        dC_t = sum_d dy_t h_t,   dB_t = sum_d dh_t dt_t x_t,   dx_t = dt_t sum_n dh_t B_t,
        ddt_t = x_t sum_n dh_t B_t + sum_n dh_t a_t h_{t-1} A,   dA = sum_t dh_t a_t h_{t-1} dt_t.
    dB and dC are summed over this program's channels only (DB, DC: (D blocks, batch, T, N)),
    dA over its time steps only (DA: (batch, D, N)); the caller adds the blocks up."""
    pid_d, pid_b = tl.program_id(0), tl.program_id(1)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    rows = tl.arange(0, BLOCK_T)
    mask_dn = (d < D)[:, None] & (n < N)[None, :]
    A_dn = tl.load(A + d[:, None] * N + n[None, :], mask=mask_dn, other=0.0).to(ACC)
    base_td = pid_b.to(tl.int64) * T * D
    base_tn = pid_b.to(tl.int64) * T * N
    part_tn = (pid_d.to(tl.int64) * B + pid_b) * T * N
    hs_off = pid_b.to(tl.int64) * n_tiles * D * N + d[:, None] * N + n[None, :]
    dh = tl.zeros([BLOCK_D, BLOCK_N], dtype=ACC)
    dA = tl.zeros([BLOCK_D, BLOCK_N], dtype=ACC)
    for j in range(n_tiles):
        k = n_tiles - 1 - j
        t = k * BLOCK_T + rows
        mask_td = (t < T)[:, None] & (d < D)[None, :]
        mask_tn = (t < T)[:, None] & (n < N)[None, :]
        h0 = tl.load(HS + hs_off + k * D * N, mask=mask_dn, other=0.0)
        dt, x, b, decay, inp = _selective_tile(X, DT, Bm, base_td, base_tn, t, d, n, T, D, N, A_dn, ACC)
        c = tl.load(Cm + base_tn + t[:, None] * N + n[None, :], mask=mask_tn, other=0.0).to(ACC)
        dy = tl.load(DY + base_td + t[:, None] * D + d[None, :], mask=mask_td, other=0.0).to(ACC)
        dt_next = tl.load(DT + base_td + (t + 1)[:, None] * D + d[None, :],
                          mask=(t + 1 < T)[:, None] & (d < D)[None, :], other=0.0).to(ACC)
        p, loc = tl.associative_scan((decay, inp), 0, _affine)
        h_t = loc + p * h0[None, :, :]
        q, dloc = tl.associative_scan((tl.exp(dt_next[:, :, None] * A_dn[None, :, :]), dy[:, :, None] * c[:, None, :]),
                                      0, _affine, reverse=True)
        dh_t = dloc + q * dh[None, :, :]
        dh = _row(dh_t, rows[:, None, None] == 0)
        carried = dh_t * (h_t - inp)               # dh_t * a_t h_{t-1}
        dbx = tl.sum(dh_t * b[:, None, :], axis=2)
        tl.store(DX + base_td + t[:, None] * D + d[None, :], dt * dbx, mask=mask_td)
        tl.store(DDT + base_td + t[:, None] * D + d[None, :], x * dbx + tl.sum(carried * A_dn[None, :, :], axis=2),
                 mask=mask_td)
        dA += tl.sum(carried * dt[:, :, None], axis=0)
        tl.store(DB + part_tn + t[:, None] * N + n[None, :], tl.sum(dh_t * (dt * x)[:, :, None], axis=1), mask=mask_tn)
        tl.store(DC + part_tn + t[:, None] * N + n[None, :], tl.sum(h_t * dy[:, :, None], axis=1), mask=mask_tn)
    tl.store(DA + pid_b.to(tl.int64) * D * N + d[:, None] * N + n[None, :], dA, mask=mask_dn)


def _selective_launch(x: torch.Tensor, N: int, elements: int):
    """Grid and arguments for tiles of about ``elements`` states (_SELECTIVE_TILE, BLOCK_D, BLOCK_N)."""
    B, T, D = x.shape
    block_n = triton.next_power_of_2(N)
    block_d = max(1, min(triton.next_power_of_2(D), elements // (_SELECTIVE_TILE * block_n)))
    return (triton.cdiv(D, block_d), B), dict(T=T, D=D, N=N, n_tiles=triton.cdiv(T, _SELECTIVE_TILE),
                                               BLOCK_T=_SELECTIVE_TILE, BLOCK_D=block_d, BLOCK_N=block_n,
                                               num_warps=2)


class _SelectiveScan(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, dt, A, Bm, Cm):
        acc = _accumulator(x, dt, A, Bm, Cm)
        grid, kw = _selective_launch(x, A.shape[1], 512)
        y = torch.empty(x.shape, dtype=acc, device=x.device)
        hs = torch.empty(x.shape[0], kw["n_tiles"], *A.shape, dtype=acc, device=x.device)
        _selective_fwd_kernel[grid](x, dt, A, Bm, Cm, y, hs, ACC=_tl_dtype(acc), **kw)
        ctx.save_for_backward(x, dt, A, Bm, Cm, hs)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, dt, A, Bm, Cm, hs = ctx.saved_tensors
        grid, kw = _selective_launch(x, A.shape[1], 1024)
        B, T, N = Bm.shape
        dx, ddt = torch.empty_like(x), torch.empty_like(dt)
        dA = torch.empty(B, *A.shape, dtype=hs.dtype, device=x.device)
        dB = torch.empty(grid[0], B, T, N, dtype=hs.dtype, device=x.device)
        dC = torch.empty_like(dB)
        _selective_bwd_kernel[grid](x, dt, A, Bm, Cm, hs, dy.contiguous(), dx, ddt, dA, dB, dC, B=B,
                                    ACC=_tl_dtype(hs.dtype), **kw)
        return dx, ddt, dA.sum(0).to(A.dtype), dB.sum(0).to(Bm.dtype), dC.sum(0).to(Cm.dtype)


def selective_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor) -> torch.Tensor:
    """y_t[d] = sum_n C_t[n] h_t[d, n], h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] B_t[n] x_t[d].

    x, dt: (batch, T, D); A: (D, N), N <= SELECTIVE_MAX_STATE; B, C: (batch, T, N). The states
    live in registers; only the state entering each tile of 8 steps is stored (batch, T / 8,
    D, N) for the backward pass, which recomputes the states inside each tile from it.
    """
    return _SelectiveScan.apply(x.contiguous(), dt.contiguous(), A.contiguous(), B.contiguous(), C.contiguous())


# ---------------------------------------------------------------------------------------------
# RWKV-4 WKV


@_jit
def _wkv_past(K, V, base, t, rows, c, mask, w, p0, a0, b0, C, ACC: tl.constexpr):
    """The sums over the past of each position t of a tile, e^P (a, b) =
    sum_{i<t} e^{-(t-1-i) w + k_i} (v_i, 1), from the state e^p0 (a0, b0) entering the tile: a scan
    over the tile's positions shifted by one (row r holds position t - 1, row 0 none)."""
    prev = mask & (rows >= 1)
    k_prev = tl.load(K + base + (t - 1)[:, None] * C + c[None, :], mask=prev, other=float("-inf")).to(ACC)
    v_prev = tl.load(V + base + (t - 1)[:, None] * C + c[None, :], mask=prev, other=0.0).to(ACC)
    decay = tl.where(prev, -w[None, :], 0.0)
    dcum, p, a, b = tl.associative_scan((decay, k_prev, v_prev, prev.to(ACC)), 0, _decayed_sum)
    return _log_sum(p0[None, :] + dcum, a0[None, :], b0[None, :], p, a, b)


@_jit
def _wkv_fwd_kernel(W, U, K, V, Y, LD, S, T, C, n_tiles,
                    ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """wkv_t = (e^P a + e^{u+k_t} v_t) / (e^P b + e^{u+k_t}) and its log-denominator LD, tile by
    tile; the state (p, a, b) entering each tile is kept in S (batch, n_tiles, 3, C)."""
    pid_c, pid_b = tl.program_id(0), tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = tl.arange(0, BLOCK_T)
    w = tl.load(W + c, mask=c < C, other=0.0).to(ACC)
    u = tl.load(U + c, mask=c < C, other=0.0).to(ACC)
    base = pid_b.to(tl.int64) * T * C
    s_base = pid_b.to(tl.int64) * n_tiles * 3 * C + c
    p0 = tl.full([BLOCK_C], float("-inf"), ACC)
    a0 = tl.zeros([BLOCK_C], dtype=ACC)
    b0 = tl.zeros([BLOCK_C], dtype=ACC)
    for k in range(n_tiles):
        s_off = s_base + k * 3 * C
        tl.store(S + s_off, p0, mask=c < C)
        tl.store(S + s_off + C, a0, mask=c < C)
        tl.store(S + s_off + 2 * C, b0, mask=c < C)
        t = k * BLOCK_T + rows
        mask = (t < T)[:, None] & (c < C)[None, :]
        off = base + t[:, None] * C + c[None, :]
        p, a, b = _wkv_past(K, V, base, t, rows[:, None], c, mask, w, p0, a0, b0, C, ACC)
        kt = tl.load(K + off, mask=mask, other=0.0).to(ACC)
        vt = tl.load(V + off, mask=mask, other=0.0).to(ACC)
        m, num, den = _log_sum(p, a, b, u[None, :] + kt, vt, 1.0)
        tl.store(Y + off, num / den, mask=mask)
        tl.store(LD + off, m + tl.log(den), mask=mask)
        # The state entering the next tile: the last position's past, decayed one step, plus it.
        last = rows[:, None] == BLOCK_T - 1
        p0, a0, b0 = _log_sum(_row_max(p, last) - w, _row(a, last), _row(b, last),
                              _row(kt, last), _row(vt, last), 1.0)


@_jit
def _wkv_bwd_kernel(W, U, K, V, Y, LD, S, G, DK, DV, DW, DU, T, C, n_tiles,
                    ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """With y_t = N_t / D_t, the adjoint of the past sums at t is e^{-LD_t} g_t (1, -y_t); the
    sums R_t = e^s (r, q) = sum_{t'>t} e^{-(t'-1-t) w - LD_t'} g_t' (1, -y_t') come from a reverse
    scan over positions shifted by one, tiles from the last, and
        dv_t = e^{k_t} r_t + e^{u+k_t-LD_t} g_t,
        dk_t = e^{k_t} (v_t r_t + q_t) + e^{u+k_t-LD_t} g_t (v_t - y_t),
        du = sum_t e^{u+k_t-LD_t} g_t (v_t - y_t),
        dw = -e^{-w} sum_t (e^P (a, b))_t . R_t    (d/d(e^{-w}) of the recurrence of the past sums).
    Every exponent is <= 0. dw and du are summed over time only (DW, DU: (batch, C))."""
    pid_c, pid_b = tl.program_id(0), tl.program_id(1)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = tl.arange(0, BLOCK_T)
    w = tl.load(W + c, mask=c < C, other=0.0).to(ACC)
    u = tl.load(U + c, mask=c < C, other=0.0).to(ACC)
    base = pid_b.to(tl.int64) * T * C
    s_base = pid_b.to(tl.int64) * n_tiles * 3 * C + c
    rs = tl.full([BLOCK_C], float("-inf"), ACC)
    rr = tl.zeros([BLOCK_C], dtype=ACC)
    rq = tl.zeros([BLOCK_C], dtype=ACC)
    dw = tl.zeros([BLOCK_C], dtype=ACC)
    du = tl.zeros([BLOCK_C], dtype=ACC)
    for j in range(n_tiles):
        k = n_tiles - 1 - j
        t = k * BLOCK_T + rows
        mask = (t < T)[:, None] & (c < C)[None, :]
        off = base + t[:, None] * C + c[None, :]
        s_off = s_base + k * 3 * C
        p0 = tl.load(S + s_off, mask=c < C, other=float("-inf"))
        a0 = tl.load(S + s_off + C, mask=c < C, other=0.0)
        b0 = tl.load(S + s_off + 2 * C, mask=c < C, other=0.0)
        p, a, b = _wkv_past(K, V, base, t, rows[:, None], c, mask, w, p0, a0, b0, C, ACC)
        nxt = (t + 1 < T)[:, None] & (c < C)[None, :]
        ld_next = tl.load(LD + off + C, mask=nxt, other=0.0).to(ACC)
        g_next = tl.load(G + off + C, mask=nxt, other=0.0).to(ACC)
        y_next = tl.load(Y + off + C, mask=nxt, other=0.0).to(ACC)
        dcum, s, r, q = tl.associative_scan((tl.where(nxt, -w[None, :], 0.0), tl.where(nxt, -ld_next, float("-inf")),
                                             g_next, -g_next * y_next), 0, _decayed_sum, reverse=True)
        s, r, q = _log_sum(rs[None, :] + dcum, rr[None, :], rq[None, :], s, r, q)
        first = rows[:, None] == 0
        rs, rr, rq = _row_max(s, first), _row(r, first), _row(q, first)
        kt = tl.load(K + off, mask=mask, other=0.0).to(ACC)
        vt = tl.load(V + off, mask=mask, other=0.0).to(ACC)
        g = tl.load(G + off, mask=mask, other=0.0).to(ACC)
        yt = tl.load(Y + off, mask=mask, other=0.0).to(ACC)
        ld = tl.load(LD + off, mask=mask, other=0.0).to(ACC)
        bonus = tl.exp(u[None, :] + kt - ld) * g
        past = tl.exp(kt + s)
        tl.store(DV + off, past * r + bonus, mask=mask)
        tl.store(DK + off, past * (vt * r + q) + bonus * (vt - yt), mask=mask)
        du += tl.sum(tl.where(mask, bonus * (vt - yt), 0.0), axis=0)
        dw -= tl.sum(tl.where(mask, tl.exp(p + s - w[None, :]) * (a * r + b * q), 0.0), axis=0)
    tl.store(DW + pid_b.to(tl.int64) * C + c, dw, mask=c < C)
    tl.store(DU + pid_b.to(tl.int64) * C + c, du, mask=c < C)


def _wkv_launch(k: torch.Tensor):
    B, T, C = k.shape
    block_c = min(16, triton.next_power_of_2(C))
    return (triton.cdiv(C, block_c), B), dict(T=T, C=C, n_tiles=triton.cdiv(T, _TILE), BLOCK_T=_TILE,
                                               BLOCK_C=block_c)


class _WKV(torch.autograd.Function):

    @staticmethod
    def forward(ctx, w, u, k, v):
        acc = _accumulator(w, u, k, v)
        grid, kw = _wkv_launch(k)
        y = torch.empty(k.shape, dtype=acc, device=k.device)
        ld = torch.empty_like(y)
        state = torch.empty(k.shape[0], kw["n_tiles"], 3, k.shape[2], dtype=acc, device=k.device)
        _wkv_fwd_kernel[grid](w, u, k, v, y, ld, state, ACC=_tl_dtype(acc), **kw)
        ctx.save_for_backward(w, u, k, v, y, ld, state)
        return y

    @staticmethod
    def backward(ctx, g):
        w, u, k, v, y, ld, state = ctx.saved_tensors
        grid, kw = _wkv_launch(k)
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        dw = torch.empty(k.shape[0], k.shape[2], dtype=y.dtype, device=k.device)
        du = torch.empty_like(dw)
        _wkv_bwd_kernel[grid](w, u, k, v, y, ld, state, g.contiguous(), dk, dv, dw, du, ACC=_tl_dtype(y.dtype), **kw)
        return dw.sum(0).to(w.dtype), du.sum(0).to(u.dtype), dk, dv


def wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``rwkv.wkv`` (w > 0 the decay, u the bonus, both (channels,); k, v (batch, T, channels)),
    in the accumulation dtype."""
    return _WKV.apply(w.contiguous(), u.contiguous(), k.contiguous(), v.contiguous())
