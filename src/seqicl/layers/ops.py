"""Operations shared by the layers, each next to its reference form.

Linear-attention family:
- ``chunked_linear_attention``: causal linear attention with an optional scalar or per-channel
  decay, in the chunkwise parallel form (linear attention, FAVOR+, Based, ReBased, GLA, RetNet,
  Mamba-2's SSD);
- ``chunked_delta_rule``: the delta rule in the chunkwise WY form (DeltaNet);
- ``HeadNorm``: layer or RMS normalisation of each head's output.

Convolutions and scans:
- ``fft_causal_conv`` / ``direct_causal_conv``: y_t = sum_{l <= t} k_l u_{t-l} per channel;
- ``causal_depthwise_conv`` / ``depthwise_conv_step``: short causal convolutions;
- ``CausalConv``: a depthwise causal convolution module (FFT for long kernels, shifted products
  for short ones) with a cached-window step;
- ``linear_scan`` / ``linear_scan_reference``: h_t = a_t * h_{t-1} + b_t along the time axis.

Checks: ``require``, ``require_positive``, ``require_divisible`` raise ConfigError.

Layers call these through the module (``ops.linear_scan(...)``), so a test can swap the fast form
for the reference one.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from seqicl.errors import ConfigError


def full_precision(fn):
    """Run ``fn`` outside autocast, with half-precision tensor arguments promoted to float32.

    For recurrences and chunked scans whose accumulations lose too much in bf16 (the state of a
    linear attention sums over the whole sequence); the projections around them still run in
    the autocast dtype.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next((a.device.type for a in (*args, *kwargs.values()) if torch.is_tensor(a)), "cpu")
        up = lambda a: a.float() if torch.is_tensor(a) and a.dtype in (torch.float16, torch.bfloat16) else a  # noqa: E731
        with torch.autocast(device_type=device, enabled=False):
            return fn(*map(up, args), **{k: up(v) for k, v in kwargs.items()})

    return wrapper


# Kernels longer than this are applied by FFT; shorter ones by a direct convolution.
FFT_MIN_KERNEL = 64


def require(condition: bool, layer: str, message: str) -> None:
    """Raise ConfigError("<layer>: <message>") unless ``condition``."""
    if not condition:
        raise ConfigError(f"{layer}: {message}")


def require_positive(layer: str, **values) -> None:
    for name, value in values.items():
        require(isinstance(value, int) and value >= 1, layer, f"{name} must be a positive integer, got {value!r}")


def require_divisible(layer: str, numerator: tuple[str, int], denominator: tuple[str, int]) -> None:
    (n_name, n), (d_name, d) = numerator, denominator
    require(d >= 1 and n % d == 0, layer, f"{n_name}={n} is not divisible by {d_name}={d}")


def _chunks(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, T, ...) -> (B, H, N, size, ...), zero-padding T up to N * size."""
    pad = (-x.shape[2]) % size
    if pad:
        x = torch.cat([x, x.new_zeros(*x.shape[:2], pad, *x.shape[3:])], dim=2)
    return x.view(*x.shape[:2], x.shape[2] // size, size, *x.shape[3:])


def _gated_chunk_scores(q: torch.Tensor, k: torch.Tensor, b: torch.Tensor, sub_chunk: int) -> torch.Tensor:
    """A[t, s] = sum_d q[t, d] k[s, d] exp(b[t, d] - b[s, d]) for s <= t (else 0) over one chunk.

    q, k, b: (..., C, K), b the in-chunk cumulative log decay (non-increasing in t). GLA's
    secondary-level chunking (Yang et al. 2024): pairs inside a sub-chunk of ``sub_chunk``
    steps are computed elementwise in log space; a pair with s in an earlier sub-chunk than t goes
    through the log decay r at the last step before t's sub-chunk, as
    (q_t exp(b_t - r)) . (k_s exp(r - b_s)), a matrix product whose two exponents are both <= 0.
    """
    C, K = q.shape[-2:]
    c = sub_chunk if C % sub_chunk == 0 else C
    n, lead = C // c, q.shape[:-2]
    qs, ks, bs = (x.reshape(*lead, n, c, K) for x in (q, k, b))
    inf = float("-inf")
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()[..., None]
    rel = (bs[..., :, None, :] - bs[..., None, :, :]).masked_fill(~causal, inf)
    within = (qs[..., :, None, :] * ks[..., None, :, :] * rel.exp()).sum(-1)            # (..., n, c, c)
    ref = torch.cat([torch.zeros_like(bs[..., :1, 0, :]), bs[..., :-1, -1, :]], dim=-2)  # (..., n, K)
    steps = torch.arange(C, device=q.device)
    earlier = (steps < steps[::c, None])[..., None]                                   # (n, C, 1)
    k_ref = k[..., None, :, :] * (ref[..., None, :] - b[..., None, :, :]).masked_fill(~earlier, inf).exp()
    across = (qs * (bs - ref[..., None, :]).exp()) @ k_ref.transpose(-1, -2)        # (..., n, c, C)
    eye = torch.eye(n, dtype=q.dtype, device=q.device)[:, None, :, None]
    return across.reshape(*lead, C, C) + (within[..., :, :, None, :] * eye).reshape(*lead, C, C)


@full_precision
def chunked_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             log_decay: torch.Tensor | None = None, chunk_size: int = 64,
                             state: torch.Tensor | None = None, sub_chunk: int = 16):
    """Causal linear attention o_t = q_t S_t with S_t = diag(exp g_t) S_{t-1} + k_t^T v_t.

    q, k: (B, H, T, K); v: (B, H, T, V); ``log_decay`` g <= 0 is None (no decay), (B, H, T) (one
    decay per head and step: RetNet, Mamba-2) or (B, H, T, K) (one per key channel: GLA);
    ``state``: S_0 (B, H, K, V), zeros if None. Returns o (B, H, T, V) and S_T.

    Chunkwise parallel form (Yang et al. 2024, "Gated linear attention transformers"): inside a chunk
    of C steps, o = (Q K^T * decay mask) V; across chunks through the states at chunk boundaries.
    With b the in-chunk cumulative log decay, decays only enter as exp(b_t - b_s), t >= s, so
    every exponent is <= 0 and nothing overflows however strong the decay.
    """
    B, H, T, K = q.shape
    C = chunk_size
    q, k, v = _chunks(q, C), _chunks(k, C), _chunks(v, C)
    n_chunks = q.shape[2]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    if log_decay is None:
        scores = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0)
        q_in, k_out, decay = q, k, None
    elif log_decay.dim() == 3:
        b = _chunks(log_decay, C).cumsum(dim=-1)                                         # (B, H, N, C)
        rel = (b[..., :, None] - b[..., None, :]).masked_fill(~causal, float("-inf"))
        scores = (q @ k.transpose(-1, -2)) * rel.exp()
        b_end = b[..., -1:]
        q_in, k_out = q * b.exp()[..., None], k * (b_end - b).exp()[..., None]
        decay = b_end.exp()[..., None]                                                   # (B, H, N, 1, 1)
    else:
        b = _chunks(log_decay, C).cumsum(dim=-2)                                         # (B, H, N, C, K)
        scores = _gated_chunk_scores(q, k, b, sub_chunk)
        b_end = b[..., -1:, :]
        q_in, k_out = q * b.exp(), k * (b_end - b).exp()
        decay = b_end.transpose(-1, -2).exp()                                            # (B, H, N, K, 1)
    out = scores @ v
    increments = k_out.transpose(-1, -2) @ v                                             # (B, H, N, K, V)
    S = q.new_zeros(B, H, K, v.shape[-1]) if state is None else state
    starts = []
    for n in range(n_chunks):
        starts.append(S)
        S = (S if decay is None else S * decay[:, :, n]) + increments[:, :, n]
    out = out + q_in @ torch.stack(starts, dim=2)
    return out.reshape(B, H, n_chunks * C, -1)[:, :, :T], S


@full_precision
def chunked_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                       chunk_size: int = 64, state: torch.Tensor | None = None):
    """The delta rule o_t = q_t S_t, S_t = S_{t-1} + beta_t k_t^T (v_t - k_t S_{t-1}), chunkwise.

    q, k: (B, H, T, K); v: (B, H, T, V); beta: (B, H, T); state: S_0 (B, H, K, V) or None.
    Returns o (B, H, T, V) and S_T. Inside a chunk the product of the rank-one updates has the
    WY form (Yang et al. 2024, "Parallelizing linear transformers with the delta rule"):
    S_t = S_0 + sum_{i<=t} k_i^T (u_i - w_i S_0) with W = A^{-1} diag(beta) K, U = A^{-1} diag(beta) V
    and A = I + tril(diag(beta) K K^T, -1), so o = Q S_0 + tril(Q K^T) (U - W S_0).
    """
    B, H, T, K = q.shape
    C = chunk_size
    q, k, v, beta = _chunks(q, C), _chunks(k, C), _chunks(v, C), _chunks(beta, C)
    n_chunks = q.shape[2]
    ones = torch.ones(C, C, dtype=torch.bool, device=q.device)
    kk = k @ k.transpose(-1, -2)
    A = (beta[..., None] * kk).masked_fill(~ones.tril(-1), 0.0) + torch.eye(C, dtype=q.dtype, device=q.device)
    # The triangular solve has no half-precision kernels; it runs in at least float32.
    work = torch.promote_types(q.dtype, torch.float32)
    rhs = beta[..., None] * torch.cat([k, v], dim=-1)
    wu = torch.linalg.solve_triangular(A.to(work), rhs.to(work), upper=False, unitriangular=True).to(q.dtype)
    w, u = wu[..., :K], wu[..., K:]
    scores = (q @ k.transpose(-1, -2)).masked_fill(~ones.tril(), 0.0)
    S = q.new_zeros(B, H, K, v.shape[-1]) if state is None else state
    outs = []
    for n in range(n_chunks):
        u_n = u[:, :, n] - w[:, :, n] @ S
        outs.append(q[:, :, n] @ S + scores[:, :, n] @ u_n)
        S = S + k[:, :, n].transpose(-1, -2) @ u_n
    return torch.stack(outs, dim=2).reshape(B, H, n_chunks * C, -1)[:, :, :T], S


class CausalConv(nn.Module):
    """Depthwise causal convolution y_t = b + sum_{j<K} h_j * u_{t-j} of each channel.

    ``weight`` is h (channels, K), h[:, j] the tap at lag j. Forward takes (batch, seq, channels):
    kernels longer than FFT_MIN_KERNEL go by FFT, shorter ones by shifted products. ``step`` carries the
    last min(t, K - 1) inputs.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True):
        super().__init__()
        self.kernel_size = kernel_size
        bound = 1 / math.sqrt(kernel_size)
        self.weight = nn.Parameter(torch.empty(channels, kernel_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        T = u.shape[1]
        h = self.weight[:, :T]
        if h.shape[1] > FFT_MIN_KERNEL:
            y = fft_causal_conv(u.transpose(1, 2), h).transpose(1, 2)
        else:
            y = causal_depthwise_conv(u, h.flip(-1), None)
        return y if self.bias is None else y + self.bias

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.weight.shape[0], 0, device=device, dtype=dtype)

    def step(self, u: torch.Tensor, cache: torch.Tensor):
        """u: (batch, channels) -> (y, new cache); cache: (batch, channels, min(t, K - 1))."""
        window = torch.cat([cache, u[..., None]], dim=-1)
        y = (window * self.weight[:, :window.shape[-1]].flip(-1)).sum(-1)
        if self.bias is not None:
            y = y + self.bias
        return y, window[..., 1:] if window.shape[-1] == self.kernel_size else window

    def state_size(self, seq_len: int) -> int:
        return self.weight.shape[0] * min(seq_len, self.kernel_size - 1)


class HeadNorm(nn.Module):
    """Normalise each head of (..., n_heads, head_dim) over head_dim, with a gain per channel.

    ``rms=False``: layer normalisation with a bias (the GroupNorm of RetNet and GLA, one group per
    head); ``rms=True``: RMSNorm (Zhang & Sennrich 2019).
    """

    def __init__(self, n_heads: int, head_dim: int, eps: float = 1e-5, rms: bool = False):
        super().__init__()
        self.eps, self.rms = eps, rms
        self.weight = nn.Parameter(torch.ones(n_heads, head_dim))
        self.bias = None if rms else nn.Parameter(torch.zeros(n_heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rms:
            return F.rms_norm(x, x.shape[-1:], eps=self.eps) * self.weight
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight + self.bias

def fft_causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal convolution of u (..., channels, T) with kernels k (channels, L), L <= T, by FFT.

    Zero-padding to 2T turns the FFT's circular convolution into a linear one, so no output
    position sees a later input.
    """
    T = u.shape[-1]
    n = 2 * T
    work = torch.promote_types(u.dtype, torch.float32)  # no half-precision FFT kernels
    y = torch.fft.irfft(torch.fft.rfft(u.to(work), n=n) * torch.fft.rfft(k.to(work), n=n), n=n)
    return y[..., :T].to(u.dtype)


def direct_causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The definition of ``fft_causal_conv``: a lower-triangular Toeplitz matrix product."""
    T = u.shape[-1]
    k = F.pad(k, (0, T - k.shape[-1]))
    lag = torch.arange(T, device=u.device)[:, None] - torch.arange(T, device=u.device)[None, :]
    toeplitz = k[:, lag.clamp(min=0)] * (lag >= 0)           # (channels, t, s) = k[t - s]
    return torch.einsum("cts,...cs->...ct", toeplitz, u)


def linear_scan(a: torch.Tensor, b: torch.Tensor, chunk_size: int = 32,
                h0: torch.Tensor | None = None) -> torch.Tensor:
    """Every state of the diagonal recurrence h_t = a_t * h_{t-1} + b_t, time on dim 1.

    ``a`` broadcasts against ``b`` (batch, T, ...), real or complex; ``h0`` (batch, ...) is the
    state before the first step (zero if None). A two-level blocked scan: the sequence is cut
    into chunks of ``chunk_size``; all chunks are scanned at once, from a zero state, one
    position of the chunk at a time (``chunk_size`` steps, each over every chunk), which also
    gives each position's decay product since its chunk start; the states entering the chunks
    are the same recurrence over the chunk ends, solved by calling this function on them, and
    are then added in with those decay products. O(T) work in about chunk_size + T / chunk_size
    sequential steps. Only products of decays are formed, never their inverses (as a
    cumulative-sum-of-logs form would), so nothing overflows however strong the decay.
    """
    a = a.expand_as(b)
    B, T = b.shape[:2]
    rest = b.shape[2:]
    L = min(chunk_size, T)
    n_chunks = -(-T // L)
    pad = n_chunks * L - T
    if pad:
        a = torch.cat([a, a.new_ones((B, pad) + rest)], dim=1)
        b = torch.cat([b, b.new_zeros((B, pad) + rest)], dim=1)
    a = a.reshape((B, n_chunks, L) + rest).unbind(2)
    b = b.reshape((B, n_chunks, L) + rest).unbind(2)
    carried = n_chunks > 1 or h0 is not None
    states, decays = [b[0]], [a[0]]
    for a_t, b_t in zip(a[1:], b[1:]):
        states.append(a_t * states[-1] + b_t)
        if carried:
            decays.append(a_t * decays[-1])
    h = torch.stack(states, dim=2)
    if carried:
        starts = torch.zeros_like(b[0][:, :1]) if h0 is None else h0[:, None].to(h.dtype)
        if n_chunks > 1:
            # The states at the ends of all chunks but the last start the chunks after them.
            ends = linear_scan(decays[-1][:, :-1], states[-1][:, :-1], chunk_size, h0)
            starts = torch.cat([starts, ends], dim=1)
        h = h + torch.stack(decays, dim=2) * starts[:, :, None]
    h = h.reshape((B, n_chunks * L) + rest)
    return h[:, :T] if pad else h


def linear_scan_reference(a: torch.Tensor, b: torch.Tensor,
                          h0: torch.Tensor | None = None) -> torch.Tensor:
    """The definition of ``linear_scan``: a loop over time."""
    a = a.expand_as(b)
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0.to(b.dtype)
    out = []
    for t in range(b.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Per-channel causal convolution of x (batch, T, channels) with weight (channels, width).

    y_t = bias + sum_j weight[:, j] * x_{t - (width - 1 - j)}: the last tap is the current
    position, as in ``torch.nn.Conv1d`` with ``width - 1`` zeros of left padding. Written as
    ``width`` shifted products: for the short filters used here that is much faster on CPU
    than a grouped ``conv1d``, whose backward pass is slow there.
    """
    T, width = x.shape[1], weight.shape[-1]
    padded = F.pad(x, (0, 0, width - 1, 0))
    y = sum(padded[:, j:j + T] * weight[:, j] for j in range(width))
    return y if bias is None else y + bias


def depthwise_conv_step(x: torch.Tensor, window: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One position of ``causal_depthwise_conv``: x (batch, channels) and the previous
    ``width - 1`` inputs ``window`` (batch, channels, width - 1) -> (y, next window)."""
    full = torch.cat([window, x[..., None]], dim=-1)
    y = (full * weight).sum(-1)
    if bias is not None:
        y = y + bias
    return y, full[..., 1:]
