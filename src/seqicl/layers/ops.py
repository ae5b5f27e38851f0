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
