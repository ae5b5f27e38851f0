"""The Linear Recurrent Unit of Orvieto et al. (2023), "Resurrecting recurrent neural networks
for long sequences"."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from seqicl.errors import ConfigError
from seqicl.layers import ops, triton_scan
from seqicl.layers.registry import register


@register("lru", kind="sequence")
class LRU(nn.Module):
    """h_t = lambda * h_t-1 + gamma * (B x_t),  y_t = Re(C h_t) + D * x_t  (complex, diagonal).

    Exponential parameterisation lambda_n = exp(-exp(nu_log_n) + i exp(theta_log_n)); the ring
    initialisation draws |lambda| uniformly (in area) from the ring r_min <= |lambda| <= r_max and
    its phase uniformly in [0, max_phase]. gamma_n = sqrt(1 - |lambda_n|^2) (learned as
    gamma_log) normalises the state's scale. B (d_state x d_model) and C (d_model x d_state)
    are complex Gaussian with variances 1/(2 d_model) and 1/d_state per part.
    The forward pass solves the recurrence with ``ops.linear_scan`` (chunks of ``chunk_size``), or
    with ``impl="auto"`` on CUDA, when triton imports, with the Triton kernel
    ``triton_scan.complex_linear_scan`` on the real and imaginary parts.

    ``output_gate=True`` builds the gated block seq_icl's experiments call LRU (there with
    ``d_state = d_model`` and ``dropout=0.2``): a linear map with bias gives the complex input
    (v_re + i v_im) and a gate u, h_t = lambda * h_t-1 + gamma * v_t, and
    y_t = W_o LayerNorm(dropout([Re h_t, Im h_t] * silu(u_t))), with no B, C or D.
    ``dropout`` applies to that output only.
    """

    def __init__(self, d_model: int, max_len: int, d_state: int = 64, r_min: float = 0.9,
                 r_max: float = 0.999, max_phase: float = 2 * math.pi, chunk_size: int = 64,
                 output_gate: bool = False, dropout: float = 0.0, impl: str = "auto"):
        super().__init__()
        if d_state < 1:
            raise ConfigError(f"lru: d_state must be a positive integer, got {d_state}")
        if not 0 <= r_min < r_max <= 1:
            raise ConfigError(f"lru: need 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
        if max_phase <= 0:
            raise ConfigError(f"lru: max_phase must be positive, got {max_phase}")
        if chunk_size < 1:
            raise ConfigError(f"lru: chunk_size must be a positive integer, got {chunk_size}")
        if not 0 <= dropout < 1:
            raise ConfigError(f"lru: dropout must be in [0, 1), got {dropout}")
        if dropout and not output_gate:
            raise ConfigError("lru: dropout applies to the gated output only; set output_gate=true or dropout=0")
        ops.require(impl in ("auto", "torch"), "lru", f"impl must be auto or torch, got {impl!r}")
        self.d_model, self.d_state, self.chunk_size, self.impl = d_model, d_state, chunk_size, impl
        u1, u2 = torch.rand(d_state), torch.rand(d_state)
        nu = -0.5 * torch.log(u1 * (r_max ** 2 - r_min ** 2) + r_min ** 2)
        self.nu_log = nn.Parameter(torch.log(nu))
        self.theta_log = nn.Parameter(torch.log(max_phase * u2))
        self.gamma_log = nn.Parameter(0.5 * torch.log(1 - torch.exp(-2 * nu)))
        self.output_gate = output_gate
        if output_gate:
            self.in_proj = nn.Linear(d_model, 4 * d_state)
            self.dropout = nn.Dropout(dropout)
            self.norm = nn.LayerNorm(2 * d_state)
            self.out_proj = nn.Linear(2 * d_state, d_model)
        else:
            self.B = nn.Parameter(torch.randn(d_state, d_model, 2) / math.sqrt(2 * d_model))
            self.C = nn.Parameter(torch.randn(d_model, d_state, 2) / math.sqrt(d_state))
            self.D = nn.Parameter(torch.randn(d_model))

    def lam(self) -> torch.Tensor:
        return torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))

    def _input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """gamma * (B x), complex (..., d_state), and the output gate's input (``output_gate`` only)."""
        if self.output_gate:
            v, u = self.in_proj(x).chunk(2, dim=-1)
            bx = torch.complex(*v.chunk(2, dim=-1))
        else:
            bx, u = torch.complex(x @ self.B[..., 0].T, x @ self.B[..., 1].T), None
        return torch.exp(self.gamma_log) * bx, u

    def _output(self, h: torch.Tensor, x: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """Re(C h) + D x, or the gated read-out."""
        if self.output_gate:
            return self.out_proj(self.norm(self.dropout(torch.cat([h.real, h.imag], dim=-1) * F.silu(u))))
        return h.real @ self.C[..., 0].T - h.imag @ self.C[..., 1].T + self.D * x

    @ops.full_precision
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Complex arithmetic has no bf16 kernels: the layer runs in float32 under autocast."""
        lam, (b, u) = self.lam(), self._input(x)
        if self.impl == "auto" and triton_scan.available(b.real):
            h = torch.complex(*triton_scan.complex_linear_scan(lam.real, lam.imag, b.real, b.imag))
        else:
            h = ops.linear_scan(lam, b, self.chunk_size)
        return self._output(h, x, u)

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        dtype = (dtype or torch.get_default_dtype()).to_complex()
        return torch.zeros(batch_size, self.d_state, device=device, dtype=dtype)

    def step(self, x: torch.Tensor, state: torch.Tensor):
        b, u = self._input(x)
        state = self.lam() * state + b
        return self._output(state, x, u), state

    def state_size(self, seq_len: int) -> int:
        """d_state complex numbers: 2 * d_state reals, whatever seq_len."""
        return 2 * self.d_state
