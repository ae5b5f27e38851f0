"""S4D: the diagonal state space model of Gu, Gupta, Goel and Ré (2022), "On the
parameterization and initialization of diagonal state space models"."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seqicl.errors import ConfigError
from seqicl.layers import ops
from seqicl.layers.registry import register


class S4DKernel(nn.Module):
    """``channels`` independent diagonal SSMs x' = A x + B u, y = C x with N/2 complex modes each.

    S4D-Lin initialisation A_n = -1/2 + i pi n, B_n = 1, C_n ~ complex normal; dt = exp(log_dt)
    with log_dt uniform in [log dt_min, log dt_max]. ``discretization`` turns the continuous system
    into a recurrence x_l = dA x_l-1 + dB u_l:
      zoh (zero-order hold, S4D's default): dA = exp(dt A), dB = (exp(dt A) - 1) / A * B;
      bilinear (the trapezoid rule, safari's default): dA = (1 + dt A/2) / (1 - dt A/2),
        dB = dt / (1 - dt A/2) * B.
    Since the modes come in conjugate pairs the convolution kernel is
    K_l = 2 Re(sum_n C_n dB_n dA_n^l), a Vandermonde product.
    The real part of A is kept negative by storing log(-Re A).
    """

    def __init__(self, channels: int, d_state: int, dt_min: float, dt_max: float,
                 discretization: str = "zoh"):
        super().__init__()
        if discretization not in ("zoh", "bilinear"):
            raise ConfigError(f"S4D kernel: discretization must be zoh or bilinear, got {discretization!r}")
        self.discretization = discretization
        half = d_state // 2
        log_dt = torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.log_A_real = nn.Parameter(torch.full((channels, half), math.log(0.5)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(half, dtype=torch.float32).repeat(channels, 1))
        self.B = nn.Parameter(torch.stack([torch.ones(channels, half), torch.zeros(channels, half)], dim=-1))
        self.C = nn.Parameter(torch.randn(channels, half, 2) * math.sqrt(0.5))
        for p in (self.log_dt, self.log_A_real, self.A_imag, self.B):
            p._no_weight_decay = True                         # S4's recipe: no decay on A, B, dt

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log dA, dB and C (channels, N/2), complex."""
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        dt = torch.exp(self.log_dt)[:, None]
        dtA = dt * A
        B = torch.view_as_complex(self.B)
        if self.discretization == "zoh":
            return dtA, (torch.exp(dtA) - 1) / A * B, torch.view_as_complex(self.C)
        return torch.log((1 + dtA / 2) / (1 - dtA / 2)), dt / (1 - dtA / 2) * B, torch.view_as_complex(self.C)

    def forward(self, length: int) -> torch.Tensor:
        """The kernel K (channels, length)."""
        log_dA, dB, C = self.discrete()
        powers = torch.arange(length, device=log_dA.device, dtype=self.log_dt.dtype)
        vandermonde = torch.exp(log_dA[..., None] * powers)                 # dA_n^l
        return 2 * torch.einsum("cn,cnl->cl", C * dB, vandermonde).real

    def init_state(self, *batch_shape: int, device=None, dtype=None) -> torch.Tensor:
        """Zero states (*batch_shape, channels, N/2), complex."""
        dtype = (dtype or torch.get_default_dtype()).to_complex()
        return torch.zeros(*batch_shape, *self.log_A_real.shape, device=device, dtype=dtype)

    def step(self, u: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u (..., channels), state (..., channels, N/2) -> y = 2 Re(C x), next x = dA x + dB u."""
        log_dA, dB, C = self.discrete()
        state = torch.exp(log_dA) * state + dB * u[..., None]
        return 2 * (C * state).sum(-1).real, state


def check_ssm_args(layer: str, d_state: int, dt_min: float, dt_max: float) -> None:
    if d_state < 2 or d_state % 2:
        raise ConfigError(f"{layer}: d_state must be an even integer >= 2 (conjugate pairs), got {d_state}")
    if not 0 < dt_min <= dt_max:
        raise ConfigError(f"{layer}: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")


@register("s4d", kind="sequence")
class S4D(nn.Module):
    """An S4D layer as in the S4 block: y = W_out GELU(K * u + D u), one SSM per channel.

    The convolution K * u is computed by FFT (``ops.fft_causal_conv``); ``step`` runs the
    recurrence x_t = dA x_{t-1} + dB u_t, y_t = 2 Re(C x_t) + D u_t.
    """

    def __init__(self, d_model: int, max_len: int, d_state: int = 64, dt_min: float = 0.001,
                 dt_max: float = 0.1, dropout: float = 0.0, discretization: str = "zoh"):
        super().__init__()
        check_ssm_args("s4d", d_state, dt_min, dt_max)
        self.d_model, self.d_state = d_model, d_state
        self.kernel = S4DKernel(d_model, d_state, dt_min, dt_max, discretization)
        self.D = nn.Parameter(torch.randn(d_model))
        self.drop = nn.Dropout(dropout)
        self.out_proj = nn.Linear(d_model, d_model)

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.drop(F.gelu(y)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel(x.shape[1])
        y = ops.fft_causal_conv(x.transpose(1, 2), k).transpose(1, 2)
        return self._output(y + self.D * x)

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return self.kernel.init_state(batch_size, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor):
        y, state = self.kernel.step(x, state)
        return self._output(y + self.D * x), state

    def state_size(self, seq_len: int) -> int:
        """N/2 complex modes per channel: d_model * d_state real numbers, whatever seq_len."""
        return self.d_model * self.d_state
