"""H3 of Fu, Dao et al. (2023), "Hungry hungry hippos: towards language modeling with state space
models"."""

from __future__ import annotations

import math

import torch
from torch import nn

from seqicl.errors import ConfigError
from seqicl.layers import ops
from seqicl.layers.registry import register
from seqicl.layers.s4d import S4DKernel, check_ssm_args


@register("h3", kind="sequence")
class H3(nn.Module):
    """The H3 layer (the paper's Algorithm 1):

        Q, K, V = u W_Q, u W_K, u W_V
        K' = SSM_shift(K)                                   (per channel)
        per head h (head_dim d_h):  KV_t = K'_t V_t^T       (d_h x d_h per position)
                                    O_t = Q_t^T SSM_diag(KV)_t
        y = concat_h(O) W_O

    SSM_shift has A = the shift matrix, so its state holds the last d_state inputs and it is a
    causal convolution with a length-d_state kernel, plus a skip D. ``shift`` chooses how that
    kernel is learned:
      "conv": B = e_1 is fixed and the kernel is C, drawn from N(0, 1/d_state).
      "ssm":  B and C are both learned, k_l = sum_j B_j C_{j+l}; B starts at e_1 (so k = C at
              initialisation) and takes no weight decay, and C is drawn like torch's Conv1d
              weights, U(-1/sqrt(d_state), 1/sqrt(d_state)) (safari's SSKernelShift).
    SSM_diag is an S4D-Lin diagonal SSM (``S4DKernel``), one per head, shared by the
    d_h x d_h entries of that head, plus a skip D; ``discretization`` is zoh or bilinear
    (``S4DKernel``). Both SSMs are applied by FFT convolution.
    """

    def __init__(self, d_model: int, max_len: int, d_state: int = 64, head_dim: int = 1,
                 dt_min: float = 0.001, dt_max: float = 0.1, bias: bool = True, discretization: str = "zoh",
                 shift: str = "conv"):
        super().__init__()
        check_ssm_args("h3", d_state, dt_min, dt_max)
        if head_dim < 1 or d_model % head_dim:
            raise ConfigError(f"h3: d_model={d_model} is not divisible by head_dim={head_dim}")
        if shift not in ("conv", "ssm"):
            raise ConfigError(f"h3: shift={shift!r}; use conv or ssm")
        self.d_model, self.d_state, self.head_dim = d_model, d_state, head_dim
        self.n_heads = d_model // head_dim
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        if shift == "conv":
            self.shift_C = nn.Parameter(torch.randn(d_model, d_state) / math.sqrt(d_state))
            self.shift_B = None
        else:
            bound = 1 / math.sqrt(d_state)
            self.shift_C = nn.Parameter(torch.empty(d_model, d_state).uniform_(-bound, bound))
            self.shift_B = nn.Parameter(torch.eye(1, d_state).repeat(d_model, 1))   # e_1 per channel
            self.shift_B._no_weight_decay = True
        self.shift_D = nn.Parameter(torch.randn(d_model))
        self.diag = S4DKernel(self.n_heads, d_state, dt_min, dt_max, discretization)
        self.diag_D = nn.Parameter(torch.randn(self.n_heads))
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def _qkv(self, x: torch.Tensor):
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def _outer(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """K'_t V_t^T per head: (..., d_model) x 2 -> (..., d_h, d_h, n_heads)."""
        shape = k.shape[:-1] + (self.n_heads, self.head_dim)
        kv = k.reshape(shape)[..., :, None] * v.reshape(shape)[..., None, :]
        return kv.movedim(-3, -1)

    def _read(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """Q_t^T KV_t per head: (..., d_model), (..., d_h, d_h, n_heads) -> (..., d_model)."""
        q = q.reshape(q.shape[:-1] + (self.n_heads, self.head_dim))
        return torch.einsum("...hi,...ijh->...hj", q, kv).flatten(-2)

    def shift_kernel(self) -> torch.Tensor:
        """The shift SSM's convolution kernel (d_model, d_state): C, or with learned B the correlation
        k_l = sum_j B_j C_{j+l}, which is the causal convolution of the reversed C with B, reversed."""
        if self.shift_B is None:
            return self.shift_C
        return ops.fft_causal_conv(self.shift_C.flip(-1), self.shift_B).flip(-1)

    def shift_ssm(self, k: torch.Tensor) -> torch.Tensor:
        """SSM_shift(K) for K (batch, T, d_model): sum_{l < d_state} k_l K_{t-l} + D K_t."""
        k = k.transpose(1, 2)
        kernel = self.shift_kernel()[:, :k.shape[-1]]
        return (ops.fft_causal_conv(k, kernel) + self.shift_D[:, None] * k).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        q, k, v = self._qkv(x)
        kv = self._outer(self.shift_ssm(k), v).movedim(1, -1)            # (batch, d_h, d_h, heads, T)
        kv = ops.fft_causal_conv(kv, self.diag(T)) + self.diag_D[:, None] * kv
        return self.out_proj(self._read(q, kv.movedim(-1, 1)))

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """The last d_state - 1 keys (shift SSM) and the diagonal SSM's state for every KV entry."""
        return {"shift": torch.zeros(batch_size, self.d_model, self.d_state - 1, device=device, dtype=dtype),
                "diag": self.diag.init_state(batch_size, self.head_dim, self.head_dim, device=device, dtype=dtype)}

    def step(self, x: torch.Tensor, state: dict):
        q, k, v = self._qkv(x)
        shifted, window = ops.depthwise_conv_step(k, state["shift"], self.shift_kernel().flip(-1), None)
        kv = self._outer(shifted + self.shift_D * k, v)
        y, diag = self.diag.step(kv, state["diag"])
        return self.out_proj(self._read(q, y + self.diag_D * kv)), {"shift": window, "diag": diag}

    def state_size(self, seq_len: int) -> int:
        return self.d_model * (self.d_state - 1) + self.n_heads * self.head_dim ** 2 * self.d_state
