"""The Hyena operator of Poli et al. (2023), "Hyena hierarchy: towards larger convolutional
language models"."""

from __future__ import annotations

import math

import torch
from torch import nn

from seqicl.errors import ConfigError
from seqicl.layers import ops
from seqicl.layers.registry import register


class Sin(nn.Module):
    """sin(w * x) with a learned frequency per feature."""

    def __init__(self, dim: int, freq: float):
        super().__init__()
        self.freq = nn.Parameter(torch.full((dim,), float(freq)))

    def forward(self, x):
        return torch.sin(self.freq * x)


class ImplicitFilter(nn.Module):
    """Long filters h_c(t) = Window_c(t) * FFN(PE(t))_c for t = 0, ..., max_len - 1 (Sec. 3.3).

    PE(t) = (t/L, cos(2 pi k t/L), sin(2 pi k t/L) for k = 1..K), emb_dim = 2K + 1; the FFN has
    sine activations; Window_c(t) = exp(-alpha_c t/L) with alpha_c spread over channels so that
    the filters fall to ``decay_target`` between ``fast_decay_pct`` and ``slow_decay_pct`` of L.
    """

    def __init__(self, channels: int, max_len: int, emb_dim: int, filter_order: int, num_inner_mlps: int,
                 sine_freq: float, modulate: bool, fast_decay_pct: float, slow_decay_pct: float,
                 decay_target: float):
        super().__init__()
        t = torch.arange(max_len, dtype=torch.float32)
        angles = 2 * math.pi * t[:, None] * torch.arange(1, (emb_dim - 1) // 2 + 1) / max_len
        self.register_buffer("pe", torch.cat([t[:, None] / max_len, angles.cos(), angles.sin()], dim=-1),
                             persistent=False)
        layers = [nn.Linear(emb_dim, filter_order), Sin(filter_order, sine_freq)]
        for _ in range(num_inner_mlps):
            layers += [nn.Linear(filter_order, filter_order), Sin(filter_order, sine_freq)]
        layers.append(nn.Linear(filter_order, channels, bias=False))
        self.ffn = nn.Sequential(*layers)
        for layer in self.ffn:
            layer.keep_init = True                            # the filters' frequencies at initialisation
        alpha = torch.linspace(-math.log(decay_target) / slow_decay_pct, -math.log(decay_target) / fast_decay_pct,
                               channels)
        window = torch.exp(-alpha[:, None] * t / max_len) if modulate else torch.ones(channels, max_len)
        self.register_buffer("window", window, persistent=False)

    def forward(self) -> torch.Tensor:
        """All filters, (channels, max_len)."""
        return self.ffn(self.pe).T * self.window


@register("hyena", kind="sequence")
class Hyena(nn.Module):
    """The order-N Hyena operator (the paper's Def. 3.1 and Algorithm 3):

        x^1, ..., x^N, v = split(short causal depthwise conv(W_in u))
        z^1 = v,   z^{n+1} = x^n * (h^n * z^n + D^n z^n),   y = W_out z^{N+1}

    with N = ``order`` implicit long filters h^n (``ImplicitFilter``) applied by FFT
    convolution, each with a per-channel skip D^n. The filters are generated for ``max_len``
    positions: longer inputs are an error.
    """

    def __init__(self, d_model: int, max_len: int, order: int = 2, filter_order: int = 64, emb_dim: int = 5,
                 short_filter_order: int = 3, num_inner_mlps: int = 2, sine_freq: float = 1.0,
                 modulate: bool = True, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5,
                 decay_target: float = 0.01, bias: bool = True):
        super().__init__()
        for pname, value in (("order", order), ("filter_order", filter_order),
                             ("short_filter_order", short_filter_order)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"hyena: {pname} must be a positive integer, got {value!r}")
        if emb_dim < 3 or emb_dim % 2 == 0:
            raise ConfigError(f"hyena: emb_dim must be odd and >= 3 (t and sine/cosine pairs), got {emb_dim}")
        if num_inner_mlps < 0:
            raise ConfigError(f"hyena: num_inner_mlps must be >= 0, got {num_inner_mlps}")
        if not 0 < fast_decay_pct <= slow_decay_pct:
            raise ConfigError(f"hyena: need 0 < fast_decay_pct <= slow_decay_pct, "
                              f"got {fast_decay_pct} and {slow_decay_pct}")
        if not 0 < decay_target < 1:
            raise ConfigError(f"hyena: decay_target must be in (0, 1), got {decay_target}")
        self.d_model, self.max_len, self.order = d_model, max_len, order
        self.in_proj = nn.Linear(d_model, (order + 1) * d_model, bias=bias)
        bound = short_filter_order ** -0.5                    # torch.nn.Conv1d's initialisation
        self.short_weight = nn.Parameter(torch.empty((order + 1) * d_model, short_filter_order).uniform_(-bound, bound))
        self.short_bias = nn.Parameter(torch.empty((order + 1) * d_model).uniform_(-bound, bound))
        self.filter = ImplicitFilter(order * d_model, max_len, emb_dim, filter_order, num_inner_mlps, sine_freq,
                                     modulate, fast_decay_pct, slow_decay_pct, decay_target)
        self.D = nn.Parameter(torch.randn(order, d_model))
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def _projections(self, p: torch.Tensor):
        """Gates x^1..x^N and the value v from the short-convolved projections."""
        *gates, v = p.split(self.d_model, dim=-1)
        return gates, v

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        T = u.shape[1]
        if T > self.max_len:
            raise ValueError(f"hyena: sequence of length {T} is longer than max_len={self.max_len}")
        p = ops.causal_depthwise_conv(self.in_proj(u), self.short_weight, self.short_bias)
        gates, z = self._projections(p)
        gates, z = [x.transpose(1, 2) for x in gates], z.transpose(1, 2)      # (batch, d_model, T)
        h = self.filter().view(self.order, self.d_model, -1)[..., :T]
        for n, x in enumerate(gates):
            z = x * (ops.fft_causal_conv(z, h[n]) + self.D[n][:, None] * z)
        return self.out_proj(z.transpose(1, 2))

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """The short convolution's last inputs and the inputs z^1..z^N of every long convolution so far."""
        width = self.short_weight.shape[-1]
        return {"conv": torch.zeros(batch_size, (self.order + 1) * self.d_model, width - 1, device=device, dtype=dtype),
                "z": torch.zeros(batch_size, self.order, self.d_model, 0, device=device, dtype=dtype)}

    def step(self, u: torch.Tensor, state: dict):
        t = state["z"].shape[-1]
        if t >= self.max_len:
            raise ValueError(f"hyena: cannot step past max_len={self.max_len}")
        p, conv = ops.depthwise_conv_step(self.in_proj(u), state["conv"], self.short_weight, self.short_bias)
        gates, z = self._projections(p)
        h = self.filter().view(self.order, self.d_model, -1)[..., :t + 1].flip(-1)   # lag t - s at s
        history = []
        for n, x in enumerate(gates):
            zs = torch.cat([state["z"][:, n], z[..., None]], dim=-1)                 # z^n_0..z^n_t
            history.append(zs)
            z = x * ((zs * h[n]).sum(-1) + self.D[n] * z)
        return self.out_proj(z), {"conv": conv, "z": torch.stack(history, dim=1)}

    def state_size(self, seq_len: int) -> int:
        """The long convolutions need their whole input history: order * d_model per position."""
        width = self.short_weight.shape[-1]
        return self.order * self.d_model * seq_len + (self.order + 1) * self.d_model * (width - 1)
