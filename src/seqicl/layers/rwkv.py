"""RWKV-4 time mixing of Peng et al. (2023), "RWKV: reinventing RNNs for the transformer era"."""

from __future__ import annotations

import math

import torch
from torch import nn

from seqicl.errors import ConfigError
from seqicl.layers import ops, triton_scan
from seqicl.layers.registry import register


def wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """The WKV operator (the paper's eq. 14), per channel, for k, v (batch, T, channels):

        wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
                / (sum_{i<t} e^{-(t-1-i) w + k_i} + e^{u + k_t}),

    w > 0 the decay (w < 0 makes the weights grow into the past) and u the bonus of the current
    token. Each chunk of ``chunk_size`` positions is computed at once from its matrix of
    exponents (chunk x chunk); the positions before the chunk enter through the recurrent state
    (a, b, p), with sum_{i<t0} e^{-(t0-1-i) w + k_i} (v_i, 1) = e^p (a, b). Every exponential is
    taken after subtracting the largest exponent it is summed with, so nothing overflows.
    """
    B, T, D = k.shape
    a = k.new_zeros(B, D)
    b = k.new_zeros(B, D)
    p = k.new_full((B, D), float("-inf"))
    out = []
    for start in range(0, T, chunk_size):
        kc, vc = k[:, start:start + chunk_size], v[:, start:start + chunk_size]
        L = kc.shape[1]
        pos = torch.arange(L, device=k.device)
        lag = (pos[:, None] - 1 - pos[None, :]).to(k.dtype)                          # t - 1 - i
        logits = kc[:, None] - lag[None, :, :, None] * w                                # (B, t, i, D)
        logits = torch.where(torch.eye(L, dtype=torch.bool, device=k.device)[None, :, :, None],
                             (u + kc)[:, None], logits)
        logits = logits.masked_fill((lag < -1)[None, :, :, None], float("-inf"))
        past = p[:, None] - pos[None, :, None].to(k.dtype) * w                          # (B, t, D)
        m = torch.maximum(logits.amax(dim=2), past)
        e = torch.exp(logits - m[:, :, None])
        e_past = torch.exp(past - m)
        num = torch.einsum("btid,bid->btd", e, vc) + e_past * a[:, None]
        den = e.sum(dim=2) + e_past * b[:, None]
        out.append(num / den)
        # State after the chunk: the chunk's own terms and the old state, decayed to its end.
        ends = kc - (L - 1 - pos)[None, :, None].to(k.dtype) * w                       # (B, i, D)
        old = p - L * w
        p_new = torch.maximum(ends.amax(dim=1), old)
        e_end = torch.exp(ends - p_new[:, None])
        e_old = torch.exp(old - p_new)
        a = (e_end * vc).sum(dim=1) + e_old * a
        b = e_end.sum(dim=1) + e_old * b
        p = p_new
    return torch.cat(out, dim=1)


def wkv_step(w, u, k, v, state):
    """One position of ``wkv`` with the state (a, b, p) of the positions before it."""
    a, b, p = state
    now = u + k
    m = torch.maximum(p, now)
    e_old, e_now = torch.exp(p - m), torch.exp(now - m)
    y = (e_old * a + e_now * v) / (e_old * b + e_now)
    old = p - w
    m = torch.maximum(old, k)
    e_old, e_new = torch.exp(old - m), torch.exp(k - m)
    return y, (e_old * a + e_new * v, e_old * b + e_new, m)


@register("rwkv", kind="sequence")
class RWKV(nn.Module):
    """RWKV-4 time mixing: token shift, receptance/key/value, WKV, output.

        x'_t = mu * x_t + (1 - mu) * x_t-1      (learned mu_r, mu_k, mu_v per channel)
        r_t = W_r x'_t,  k_t = W_k x'_t,  v_t = W_v x'_t,
        o_t = W_o (sigmoid(r_t) * wkv_t),  w = exp(time_decay) > 0,  u = time_first.

    ``past_weights="grow"`` passes -w to WKV instead: each earlier token's weight is multiplied by
    e^w per position instead of e^-w, so the oldest tokens weigh most. This is the layer seq_icl
    trains (its RWKV hands exp(time_decay) to a log-space WKV kernel whose source negates it
    first); the Triton kernel assumes decaying weights, so this form always runs ``wkv``.

    The mixes, decays and bonuses start as in the RWKV-4 initialisation for a layer half-way up
    the stack (the layer index is not known here): decays spread over channels from
    e^-5 to e^3, bonus log(0.3) with a zigzag, mixes rising with the channel index
    (``init="rwkv4"``). ``init="normal"`` draws all five from N(0, 1) instead, as seq_icl's RWKV does.
    ``impl``: ``"auto"`` computes WKV with the Triton kernel ``triton_scan.wkv`` on CUDA when
    triton imports, ``"torch"`` always with ``wkv`` (chunks of ``chunk_size``).
    """

    def __init__(self, d_model: int, max_len: int, chunk_size: int = 32, init: str = "rwkv4",
                 past_weights: str = "decay", impl: str = "auto"):
        super().__init__()
        if chunk_size < 1:
            raise ConfigError(f"rwkv: chunk_size must be a positive integer, got {chunk_size}")
        if init not in ("rwkv4", "normal"):
            raise ConfigError(f"rwkv: init must be rwkv4 or normal, got {init!r}")
        if past_weights not in ("decay", "grow"):
            raise ConfigError(f"rwkv: past_weights must be decay or grow, got {past_weights!r}")
        ops.require(impl in ("auto", "torch"), "rwkv", f"impl must be auto or torch, got {impl!r}")
        self.d_model, self.chunk_size, self.impl = d_model, chunk_size, impl
        self.grow = past_weights == "grow"
        depth = 0.5             # RWKV-4's layer_id / n_layers; its ratio_1_to_almost0 is 1 - depth
        h = torch.arange(d_model, dtype=torch.float32)
        self.time_decay = nn.Parameter(-5 + 8 * (h / max(d_model - 1, 1)) ** (0.7 + 1.3 * depth))
        zigzag = ((h + 1) % 3 - 1) * 0.5
        self.time_first = nn.Parameter(torch.full((d_model,), math.log(0.3)) + zigzag)
        frac = h / d_model
        self.mix_k = nn.Parameter(frac ** (1 - depth))
        self.mix_v = nn.Parameter(frac ** (1 - depth) + 0.3 * depth)
        self.mix_r = nn.Parameter(frac ** (0.5 * (1 - depth)))
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model, bias=False)
        self.receptance = nn.Linear(d_model, d_model, bias=False)
        self.output = nn.Linear(d_model, d_model, bias=False)
        if init == "normal":
            for p in (self.time_decay, self.time_first, self.mix_k, self.mix_v, self.mix_r):
                nn.init.normal_(p)

    def _rkv(self, x: torch.Tensor, prev: torch.Tensor):
        def mix(mu):
            return x * mu + prev * (1 - mu)
        return self.receptance(mix(self.mix_r)), self.key(mix(self.mix_k)), self.value(mix(self.mix_v))

    def _w(self) -> torch.Tensor:
        """The w handed to WKV: each step back multiplies a token's weight by e^-w."""
        w = torch.exp(self.time_decay)
        return -w if self.grow else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        r, k, v = self._rkv(x, prev)
        if self.impl == "auto" and not self.grow and triton_scan.available(k, v):
            y = triton_scan.wkv(self._w(), self.time_first, k, v)
        else:
            y = wkv(self._w(), self.time_first, k, v, self.chunk_size)
        return self.output(torch.sigmoid(r) * y)

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        """The previous input (token shift) and the WKV state (a, b, p)."""
        zeros = torch.zeros(batch_size, self.d_model, device=device, dtype=dtype)
        return {"x": zeros, "a": zeros.clone(), "b": zeros.clone(), "p": torch.full_like(zeros, float("-inf"))}

    def step(self, x: torch.Tensor, state: dict):
        r, k, v = self._rkv(x, state["x"])
        y, (a, b, p) = wkv_step(self._w(), self.time_first, k, v,
                                (state["a"], state["b"], state["p"]))
        return self.output(torch.sigmoid(r) * y), {"x": x, "a": a, "b": b, "p": p}

    def state_size(self, seq_len: int) -> int:
        return 4 * self.d_model
