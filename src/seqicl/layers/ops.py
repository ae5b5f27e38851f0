"""Operations shared by the convolutional and recurrent layers, each with its reference form.

- ``fft_causal_conv`` / ``direct_causal_conv``: y_t = sum_{l <= t} k_l u_{t-l} per channel.
- ``linear_scan`` / ``linear_scan_reference``: h_t = a_t * h_{t-1} + b_t along the time axis.
- ``causal_depthwise_conv`` / ``depthwise_conv_step``: short causal convolutions (Mamba, Hyena).

Layers call these through the module (``ops.linear_scan(...)``), so a test can swap the fast form
for the reference one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fft_causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal convolution of u (..., channels, T) with kernels k (channels, L), L <= T, by FFT.

    Zero-padding to 2T turns the FFT's circular convolution into a linear one, so no output
    position sees a later input.
    """
    T = u.shape[-1]
    n = 2 * T
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y[..., :T]


def direct_causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The definition of ``fft_causal_conv``: a lower-triangular Toeplitz matrix product."""
    T = u.shape[-1]
    k = F.pad(k, (0, T - k.shape[-1]))
    lag = torch.arange(T, device=u.device)[:, None] - torch.arange(T, device=u.device)[None, :]
    toeplitz = k[:, lag.clamp(min=0)] * (lag >= 0)           # (channels, t, s) = k[t - s]
    return torch.einsum("cts,...cs->...ct", toeplitz, u)


def linear_scan(a: torch.Tensor, b: torch.Tensor, chunk_size: int = 64,
                h0: torch.Tensor | None = None) -> torch.Tensor:
    """Every state of the diagonal recurrence h_t = a_t * h_{t-1} + b_t, time on dim 1.

    ``a`` broadcasts against ``b`` (batch, T, ...), real or complex; ``h0`` (batch, ...) is the
    state before the first step (zero if None). The sequence is cut into chunks of
    ``chunk_size``. Inside every chunk, all chunks at once, an inclusive scan by recursive
    doubling leaves b[t] = the state at t started from zero at the chunk start and a[t] = the
    product of the decays since then. The states carried across chunk boundaries are the same
    recurrence over the chunk ends, solved by calling this function on them. Only products of
    decays are formed, never their inverses, so nothing overflows however strong the decay.
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
    a = a.reshape((B, n_chunks, L) + rest)
    b = b.reshape((B, n_chunks, L) + rest)
    step = 1
    while step < L:
        # Combine each position with the partial result `step` positions earlier.
        b = torch.cat([b[:, :, :step], b[:, :, step:] + a[:, :, step:] * b[:, :, :-step]], dim=2)
        a = torch.cat([a[:, :, :step], a[:, :, step:] * a[:, :, :-step]], dim=2)
        step *= 2
    if n_chunks > 1 or h0 is not None:
        starts = torch.zeros_like(b[:, :1, 0]) if h0 is None else h0[:, None].to(b.dtype)
        if n_chunks > 1:
            # The states at the ends of all chunks but the last start the chunks after them.
            ends = linear_scan(a[:, :-1, -1], b[:, :-1, -1], chunk_size, h0)
            starts = torch.cat([starts, ends], dim=1)
        b = b + a * starts[:, :, None]
    return b.reshape((B, n_chunks * L) + rest)[:, :T]


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

    y_t = bias + sum_{j < width} weight[:, width - 1 - j] * x_{t-j}: the last tap is the current
    position, as in ``torch.nn.Conv1d`` with ``width - 1`` zeros of left padding.
    """
    width = weight.shape[-1]
    y = F.conv1d(F.pad(x.transpose(1, 2), (width - 1, 0)), weight[:, None], bias, groups=weight.shape[0])
    return y.transpose(1, 2)


def depthwise_conv_step(x: torch.Tensor, window: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One position of ``causal_depthwise_conv``: x (batch, channels) and the previous
    ``width - 1`` inputs ``window`` (batch, channels, width - 1) -> (y, next window)."""
    full = torch.cat([window, x[..., None]], dim=-1)
    y = (full * weight).sum(-1)
    if bias is not None:
        y = y + bias
    return y, full[..., 1:]
