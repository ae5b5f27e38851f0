"""Layer-specific checks: fast forms against their definitions, routing, token-dependent heads."""

import itertools
import math

import pytest
import torch

from seqicl import layers
from seqicl.errors import ConfigError
from seqicl.layers import ops, triton_scan
from seqicl.layers.ngram import ngram_attention
from seqicl.layers.rwkv import wkv
from seqicl.models.lm import TokenLM, weight_decay_split

D, T, B = 16, 12, 2


def build(name, **kw):
    torch.manual_seed(0)
    return layers.build(name, d_model=D, max_len=T, **kw).double().eval()


def x64(seed=0):
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- convolutions -------------------------------------------------------------------------

@pytest.mark.parametrize("kernel_len", [1, 5, T])
def test_fft_causal_conv_equals_direct(kernel_len):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(B, 3, T, generator=g, dtype=torch.float64)
    k = torch.randn(3, kernel_len, generator=g, dtype=torch.float64)
    expected = torch.stack([sum(k[:, l] * u[..., t - l] for l in range(min(t + 1, kernel_len)))
                            for t in range(T)], dim=-1)
    torch.testing.assert_close(ops.direct_causal_conv(u, k), expected)
    torch.testing.assert_close(ops.fft_causal_conv(u, k), expected)


@pytest.mark.parametrize("name,kw", [("s4d", {}), ("h3", {}), ("h3", {"head_dim": 4}), ("h3", {"shift": "ssm"}),
                                     ("hyena", {}), ("hyena", {"order": 3})])
def test_conv_layers_fft_equals_direct_convolution(name, kw, monkeypatch):
    layer, x = build(name, **kw), x64()
    y_fft = layer(x)
    monkeypatch.setattr(ops, "fft_causal_conv", ops.direct_causal_conv)
    torch.testing.assert_close(layer(x), y_fft)


def test_causal_depthwise_conv_matches_conv1d_and_steps():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, 5, generator=g, dtype=torch.float64)
    w, b = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    conv = torch.nn.functional.conv1d(torch.nn.functional.pad(x.transpose(1, 2), (3, 0)), w[:, None], b, groups=5)
    y = ops.causal_depthwise_conv(x, w, b)
    torch.testing.assert_close(y, conv.transpose(1, 2))
    window = torch.zeros(B, 5, 3, dtype=torch.float64)
    for t in range(T):
        y_t, window = ops.depthwise_conv_step(x[:, t], window, w, b)
        torch.testing.assert_close(y_t, y[:, t])


def test_h3_shift_ssm_is_a_shift():
    layer = build("h3")
    with torch.no_grad():
        layer.shift_C.zero_()
        layer.shift_C[:, 1] = 1.0                      # C = e_2: the state's second slot, k_{t-1}
        layer.shift_D.zero_()
    k = x64()
    shifted = layer.shift_ssm(k)
    torch.testing.assert_close(shifted[:, 1:], k[:, :-1])
    torch.testing.assert_close(shifted[:, 0], torch.zeros_like(k[:, 0]))


def test_h3_shift_ssm_with_learned_B_runs_its_state_space():
    # x_t = S x_{t-1} + B k_t (S shifts the state down one slot), y_t = C . x_t + D k_t, per channel.
    layer = build("h3", shift="ssm")
    torch.testing.assert_close(layer.shift_kernel(), layer.shift_C)            # B = e_1 at initialisation
    assert layer.shift_B._no_weight_decay and layer.shift_C.abs().max() <= 1 / math.sqrt(layer.d_state)
    with torch.no_grad():
        layer.shift_B.normal_()
    k = x64()
    x = torch.zeros(k.shape[0], D, layer.d_state, dtype=k.dtype)
    expected = []
    for t in range(k.shape[1]):
        x = torch.cat([x.new_zeros(k.shape[0], D, 1), x[..., :-1]], dim=-1) + layer.shift_B * k[:, t, :, None]
        expected.append((layer.shift_C * x).sum(-1) + layer.shift_D * k[:, t])
    torch.testing.assert_close(layer.shift_ssm(k), torch.stack(expected, dim=1))


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_s4d_kernel_is_its_discretized_state_space(discretization):
    # Each complex mode (A, B, C) with its conjugate is the real system x' = A x + B u on
    # x = (Re, Im), read out by 2 Re(C x); discretize it with matrices and run the recurrence.
    torch.manual_seed(0)
    kernel = layers.s4d.S4DKernel(2, 6, 0.01, 0.5, discretization).double()
    with torch.no_grad():
        kernel.B.normal_()
        kernel.log_A_real.normal_()
    A = torch.complex(-torch.exp(kernel.log_A_real), kernel.A_imag).detach()
    Bc, Cc = torch.view_as_complex(kernel.B).detach(), torch.view_as_complex(kernel.C).detach()
    expected = torch.zeros(2, T, dtype=torch.float64)
    for c, n in itertools.product(range(2), range(3)):
        a, b = A[c, n].real, A[c, n].imag
        Ar = torch.stack([torch.stack([a, -b]), torch.stack([b, a])])
        Br = torch.stack([Bc[c, n].real, Bc[c, n].imag])
        Cr = 2 * torch.stack([Cc[c, n].real, -Cc[c, n].imag])
        dt, eye = kernel.log_dt[c].exp().detach(), torch.eye(2, dtype=torch.float64)
        if discretization == "zoh":
            dA = torch.linalg.matrix_exp(dt * Ar)
            dB = torch.linalg.solve(Ar, (dA - eye) @ Br)
        else:
            dA = torch.linalg.solve(eye - dt / 2 * Ar, eye + dt / 2 * Ar)
            dB = torch.linalg.solve(eye - dt / 2 * Ar, dt * Br)
        x = dB                                             # the state after an impulse at l = 0
        for l in range(T):
            expected[c, l] += Cr @ x
            x = dA @ x
    torch.testing.assert_close(kernel(T).detach(), expected)


def test_s4d_discretizations_differ_and_agree_for_small_steps():
    torch.manual_seed(0)
    zoh = layers.s4d.S4DKernel(3, 8, 1e-4, 1e-3).double()
    bilinear = layers.s4d.S4DKernel(3, 8, 1e-4, 1e-3, "bilinear").double()
    bilinear.load_state_dict(zoh.state_dict())
    k_zoh, k_bil = zoh(T).detach(), bilinear(T).detach()
    assert not torch.equal(k_zoh, k_bil)
    torch.testing.assert_close(k_bil, k_zoh, rtol=1e-5, atol=1e-9)
    with torch.no_grad():
        zoh.log_dt.fill_(0.0)
        bilinear.log_dt.fill_(0.0)                       # dt = 1: the two rules part
    assert (zoh(T) - bilinear(T)).abs().max() > 1e-2


def test_hyena_filters_decay_and_state_grows():
    layer = build("hyena")
    h = layer.filter().view(layer.order, D, T)
    assert h.shape == (2, D, T) and torch.isfinite(h).all()
    assert (layer.filter.window[:, -1] < layer.filter.window[:, 0]).all()
    assert layer.state_size(2 * T) - layer.state_size(T) == layer.order * D * T


# --- scans ---------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk,with_h0,complex_", itertools.product([1, 5, 12, 64], [False, True], [False, True]))
def test_linear_scan_equals_loop(chunk, with_h0, complex_):
    g = torch.Generator().manual_seed(chunk)
    dtype = torch.complex128 if complex_ else torch.float64
    a = torch.rand(B, T, 3, generator=g, dtype=torch.float64).to(dtype)
    if complex_:
        a = a * torch.exp(1j * torch.rand(B, T, 3, generator=g, dtype=torch.float64))
    b = torch.randn(B, T, 3, generator=g, dtype=torch.float64).to(dtype)
    h0 = torch.randn(B, 3, generator=g, dtype=torch.float64).to(dtype) if with_h0 else None
    torch.testing.assert_close(ops.linear_scan(a, b, chunk, h0), ops.linear_scan_reference(a, b, h0))


def test_linear_scan_gradients_equal_loop():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(B, T, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(B, T, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(B, T, 3, generator=g, dtype=torch.float64)
    grads = [torch.autograd.grad((f() * w).sum(), (a, b))
             for f in (lambda: ops.linear_scan(a, b, 5), lambda: ops.linear_scan_reference(a, b))]
    for fast, ref in zip(*grads):
        torch.testing.assert_close(fast, ref)


def test_linear_scan_strong_decay_stays_finite_in_float32():
    # Cumulative log-decays reach -6400: a cumsum-of-logs form would overflow exp(-log a).
    a = torch.full((1, 64, 2), math.exp(-100.0))
    b = torch.randn(1, 64, 2, generator=torch.Generator().manual_seed(0))
    h = ops.linear_scan(a, b, chunk_size=32)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h, ops.linear_scan_reference(a, b))


@pytest.mark.parametrize("name,kw", [("lru", {}), ("gilr", {}), ("mamba", {}),
                                     ("lru", {"output_gate": True}), ("gilr", {"output_gate": True})])
def test_scan_layers_parallel_equals_loop(name, kw, monkeypatch):
    layer, x = build(name, chunk_size=5, **kw), x64()    # 5 does not divide T = 12
    y = layer(x)
    monkeypatch.setattr(ops, "linear_scan", lambda a, b, chunk_size, h0=None: ops.linear_scan_reference(a, b, h0))
    torch.testing.assert_close(layer(x), y)


def _loop(decay, inputs):
    """h_t = decay_t * h_t-1 + inputs_t over the time axis (1), from h_0 = 0."""
    h, out = torch.zeros_like(inputs[:, 0]), []
    for t in range(inputs.shape[1]):
        h = decay[:, t] * h + inputs[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def test_gated_gilr_follows_its_definition():
    layer, x = build("gilr", output_gate=True, activation="linear"), x64()
    W, c = layer.in_proj.weight, layer.in_proj.bias
    f, v, o = (x @ W[i * D:(i + 1) * D].T + c[i * D:(i + 1) * D] for i in range(3))
    f = torch.sigmoid(f)
    h = _loop(f, (1 - f) * v)
    gated = h * o * torch.sigmoid(o)
    normed = (gated - gated.mean(-1, keepdim=True)) / torch.sqrt(gated.var(-1, unbiased=False, keepdim=True) + 1e-5)
    expected = (normed * layer.norm.weight + layer.norm.bias) @ layer.out_proj.weight.T + layer.out_proj.bias
    torch.testing.assert_close(layer(x), expected)


def test_gated_lru_follows_its_definition():
    n = 6
    layer, x = build("lru", output_gate=True, d_state=n), x64()
    with torch.no_grad():
        layer.norm.weight.uniform_(0.5, 1.5)
        layer.norm.bias.normal_()
    proj = x @ layer.in_proj.weight.T + layer.in_proj.bias
    v_re, v_im, o = proj[..., :n], proj[..., n:2 * n], proj[..., 2 * n:]
    mod, phase = torch.exp(-torch.exp(layer.nu_log)), torch.exp(layer.theta_log)
    gamma = torch.sqrt(1 - mod ** 2)
    torch.testing.assert_close(torch.exp(layer.gamma_log), gamma)
    lam = torch.polar(mod, phase).expand(B, T, n)
    h = _loop(lam, gamma * torch.complex(v_re, v_im))
    gated = torch.cat([h.real, h.imag], dim=-1) * o * torch.sigmoid(o)
    normed = (gated - gated.mean(-1, keepdim=True)) / torch.sqrt(gated.var(-1, unbiased=False, keepdim=True) + 1e-5)
    expected = (normed * layer.norm.weight + layer.norm.bias) @ layer.out_proj.weight.T + layer.out_proj.bias
    torch.testing.assert_close(layer(x), expected)
    assert not hasattr(layer, "B") and not hasattr(layer, "D")


def test_lstm_xavier_orthogonal_initialisation():
    layer = layers.build("lstm", d_model=D, max_len=T, n_layers=2, init="xavier_orthogonal")
    for i in range(2):
        w_hh = getattr(layer.lstm, f"weight_hh_l{i}").detach()
        torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(D), atol=1e-5, rtol=0)
        w_ih = getattr(layer.lstm, f"weight_ih_l{i}").detach()
        assert w_ih.abs().max() <= math.sqrt(6 / (D + 4 * D)) and w_ih.std() > 0.5 * math.sqrt(2 / (5 * D))
        forget = torch.zeros(4 * D)
        forget[D:2 * D] = 1
        torch.testing.assert_close(getattr(layer.lstm, f"bias_ih_l{i}").detach(), forget)
        torch.testing.assert_close(getattr(layer.lstm, f"bias_hh_l{i}").detach(), torch.zeros(4 * D))


def test_rwkv_normal_initialisation_draws_its_time_parameters_from_a_standard_normal():
    torch.manual_seed(0)
    layer = layers.build("rwkv", d_model=4096, max_len=T, init="normal")
    for p in (layer.time_decay, layer.time_first, layer.mix_k, layer.mix_v, layer.mix_r):
        assert abs(p.mean().item()) < 0.05 and abs(p.std().item() - 1) < 0.05


def test_lru_ring_initialisation():
    layer = layers.build("lru", d_model=D, max_len=T, d_state=256, r_min=0.4, r_max=0.8, max_phase=1.0)
    lam = layer.lam().detach()
    assert lam.abs().min() >= 0.4 - 1e-6 and lam.abs().max() <= 0.8 + 1e-6
    assert lam.angle().min() >= 0 and lam.angle().max() <= 1.0 + 1e-6
    torch.testing.assert_close(torch.exp(layer.gamma_log).detach(), torch.sqrt(1 - lam.abs() ** 2))


def test_mamba_initialisation():
    layer = layers.build("mamba", d_model=D, max_len=T, dt_min=0.01, dt_max=0.05)
    A = -torch.exp(layer.A_log)
    torch.testing.assert_close(A, -torch.arange(1, 17.0).expand_as(A))
    dt = torch.nn.functional.softplus(layer.dt_proj.bias)
    assert dt.min() >= 0.01 - 1e-6 and dt.max() <= 0.05 + 1e-6
    assert layer.dt_rank == 1 and layer.state_size(T) == 2 * D * (3 + 16)


# --- rwkv ----------------------------------------------------------------------------------

def wkv_naive(w, u, k, v):
    out = torch.empty_like(k)
    for t in range(k.shape[1]):
        num, den = torch.exp(u + k[:, t]) * v[:, t], torch.exp(u + k[:, t])
        for i in range(t):
            e = torch.exp(-(t - 1 - i) * w + k[:, i])
            num, den = num + e * v[:, i], den + e
        out[:, t] = num / den
    return out


@pytest.mark.parametrize("chunk", [1, 5, 12, 32])
def test_rwkv_chunked_wkv_equals_naive_recurrence(chunk):
    g = torch.Generator().manual_seed(chunk)
    w = torch.rand(D, generator=g, dtype=torch.float64) * 3
    u = torch.randn(D, generator=g, dtype=torch.float64)
    k, v = torch.randn(2, B, T, D, generator=g, dtype=torch.float64)
    torch.testing.assert_close(wkv(w, u, k, v, chunk), wkv_naive(w, u, k, v))


def test_rwkv_wkv_is_stable_for_large_keys():
    g = torch.Generator().manual_seed(0)
    w, u = torch.rand(D, generator=g) * 3, torch.randn(D, generator=g)
    k, v = 60 * torch.randn(B, T, D, generator=g), torch.randn(B, T, D, generator=g)
    y = wkv(w, u, k, v, 5)                               # e^k alone would overflow float32
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), wkv_naive(w.double(), u.double(), k.double(), v.double()),
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("chunk", [1, 5, 32])
def test_rwkv_chunked_wkv_with_growing_weights_equals_naive_recurrence(chunk):
    # w < 0: a token's weight grows by e^|w| with every step back; over T positions the
    # exponents reach ~30, so this also checks the max-subtraction keeps it exact.
    g = torch.Generator().manual_seed(chunk)
    w = -torch.rand(D, generator=g, dtype=torch.float64) * 3
    u = torch.randn(D, generator=g, dtype=torch.float64)
    k, v = torch.randn(2, B, T, D, generator=g, dtype=torch.float64)
    torch.testing.assert_close(wkv(w, u, k, v, chunk), wkv_naive(w, u, k, v))


def test_rwkv_growing_past_weights_layer_re_derived():
    # seq_icl's RWKV: the same maps, with WKV weights e^{+(t-1-i) exp(time_decay) + k_i}.
    layer = build("rwkv", init="normal", past_weights="grow")
    x = x64()
    prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
    r = layer.receptance(x * layer.mix_r + prev * (1 - layer.mix_r))
    k = layer.key(x * layer.mix_k + prev * (1 - layer.mix_k))
    v = layer.value(x * layer.mix_v + prev * (1 - layer.mix_v))
    out = torch.empty_like(k)
    for t in range(T):
        weights = [torch.exp((t - 1 - i) * torch.exp(layer.time_decay) + k[:, i]) for i in range(t)]
        now = torch.exp(layer.time_first + k[:, t])
        out[:, t] = (sum(e * v[:, i] for i, e in enumerate(weights)) + now * v[:, t]) / (sum(weights) + now)
    expected = layer.output(torch.sigmoid(r) * out)
    torch.testing.assert_close(layer(x), expected)
    decaying = build("rwkv", init="normal")
    assert not torch.allclose(decaying(x), expected, atol=1e-3)


def test_rwkv_growing_past_weights_never_take_the_triton_kernel(monkeypatch):
    def refuse(*args):
        raise AssertionError("the Triton WKV kernel assumes decaying weights")
    monkeypatch.setattr(triton_scan, "available", lambda *tensors: True)
    monkeypatch.setattr(triton_scan, "wkv", refuse)
    layer = build("rwkv", past_weights="grow")
    assert torch.isfinite(layer(x64())).all()
    with pytest.raises(AssertionError, match="decaying"):
        build("rwkv")(x64())


def test_rwkv_layer_chunk_size_does_not_change_output():
    x = x64()
    torch.testing.assert_close(build("rwkv", chunk_size=5)(x), build("rwkv", chunk_size=64)(x))


# --- ngram ---------------------------------------------------------------------------------

def ngram_attention_brute_force(tokens, n):
    Bn, Tn = tokens.shape
    A = torch.zeros(Bn, Tn, Tn, dtype=torch.float64)
    for b, t in itertools.product(range(Bn), range(Tn)):
        if t < n - 1:
            continue
        here = tokens[b, t - n + 1:t + 1].tolist()
        follows = [i + 1 for i in range(n - 1, t) if tokens[b, i - n + 1:i + 1].tolist() == here]
        for j in follows:
            A[b, t, j] = 1 / len(follows)
    return A


@pytest.mark.parametrize("n", [1, 2, 3])
def test_ngram_attention_equals_brute_force(n):
    tokens = torch.randint(0, 3, (4, 16), generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(ngram_attention(tokens, n, torch.float64), ngram_attention_brute_force(tokens, n))


def test_ngram_attention_example():
    #          0  1  2  3  4  5
    tokens = torch.tensor([[7, 8, 7, 9, 7, 8]])
    A = ngram_attention(tokens, 1, torch.float64)[0]
    assert A[2].tolist() == [0, 1, 0, 0, 0, 0]                   # 7 seen at 0, followed by 1
    assert A[4].tolist() == [0, 0.5, 0, 0.5, 0, 0]               # 7 seen at 0 and 2
    assert A[5].tolist() == [0, 0, 1, 0, 0, 0]                   # 8 seen at 1, followed by 2
    assert A[:2].abs().sum() == 0 and A[3].abs().sum() == 0      # new tokens: no match
    A2 = ngram_attention(tokens, 2, torch.float64)[0]
    assert A2[5].tolist() == [0, 0, 1, 0, 0, 0]                  # "7 8" seen at 0..1
    assert A2[4].abs().sum() == 0                                # "9 7" is new


def test_ngram_layer_reads_the_values_after_matches():
    layer = build("ngram", skip=False)
    x = x64()
    tokens = torch.randint(0, 3, (B, T), generator=torch.Generator().manual_seed(0))
    expected = layer.out_proj(ngram_attention(tokens, 1, torch.float64) @ layer.v_proj(x))
    torch.testing.assert_close(layer(x, tokens=tokens), expected)
    with pytest.raises(ValueError, match="token ids"):
        layer(x)


def test_token_lm_passes_tokens_to_ngram():
    model = TokenLM(vocab_size=5, max_len=T, d_model=D, n_layers=2, mixer={"name": "ngram", "n": 2})
    tokens = torch.randint(0, 5, (B, T))
    assert model(tokens).shape == (B, T, 5)


# --- state mixers --------------------------------------------------------------------------

def test_moe_routes_every_token_to_exactly_top_k_experts():
    torch.manual_seed(0)
    layer = layers.build("moe_mlp", d_model=D, max_len=T, n_experts=4, top_k=2)
    x = torch.randn(B, T, D)
    rows = []
    hooks = [e.register_forward_hook(lambda m, inp, out: rows.append(inp[0].shape[0])) for e in layer.experts]
    y = layer(x)
    for h in hooks:
        h.remove()
    assert sum(rows) == B * T * 2
    flat = x.reshape(-1, D)
    logits = layer.router(flat)
    top, chosen = logits.topk(2, dim=-1)
    dense = torch.stack([e(flat) for e in layer.experts], dim=1)              # (tokens, experts, D)
    expected = (top.softmax(-1)[..., None] * dense.gather(1, chosen[..., None].expand(-1, -1, D))).sum(1)
    torch.testing.assert_close(y.reshape(-1, D), expected, atol=1e-6, rtol=1e-5)


def test_moe_load_balancing_loss():
    layer = layers.build("moe_mlp", d_model=D, max_len=T, n_experts=4, top_k=1, aux_loss_weight=0.5)
    with torch.no_grad():
        layer.router.weight.zero_()                  # uniform router probabilities: loss 1
    layer(torch.randn(B, T, D))
    torch.testing.assert_close(layer.aux_loss, torch.tensor(0.5))


def test_identity_state_mixer_is_no_layer():
    layer = layers.build("identity", d_model=D, max_len=T)
    x = torch.randn(B, T, D)
    assert torch.equal(x + layer(x), x) and not list(layer.parameters())
    model = TokenLM(vocab_size=5, max_len=T, d_model=D, n_layers=1, mixer="lstm", state_mixer="identity")
    assert model.blocks[0].state_mixer is None and model.blocks[0].norm2 is None
    assert model(torch.randint(0, 5, (B, T))).shape == (B, T, 5)


# --- optimisation -------------------------------------------------------------------------

def test_ssm_dynamics_are_not_weight_decayed():
    model = TokenLM(vocab_size=5, max_len=T, d_model=D, blocks=[{"mixer": "s4d"}, {"mixer": "mamba"},
                                                                {"mixer": "h3"}]).double()
    decay, no_decay = weight_decay_split(model)
    decay, no_decay = {id(p) for p in decay}, {id(p) for p in no_decay}
    s4d, mamba, h3 = (b.mixer for b in model.blocks)
    for p in (s4d.kernel.log_A_real, s4d.kernel.A_imag, s4d.kernel.B, mamba.A_log, h3.diag.log_A_real):
        assert id(p) in no_decay
    for p in (s4d.kernel.C, mamba.in_proj.weight, h3.shift_C, model.embed.weight):
        assert id(p) in decay
    for p in (s4d.D, h3.q_proj.bias, model.norm.weight):
        assert id(p) in no_decay


def test_decay_vectors_decays_vectors_but_not_ssm_dynamics():
    model = TokenLM(vocab_size=5, max_len=T, d_model=D, blocks=[{"mixer": "s4d"}, {"mixer": "h3"}])
    decay, no_decay = weight_decay_split(model, decay_vectors=True)
    decay, no_decay = {id(p) for p in decay}, {id(p) for p in no_decay}
    s4d, h3 = (b.mixer for b in model.blocks)
    for p in (s4d.D, h3.q_proj.bias, h3.diag_D, model.norm.weight, model.embed.weight, h3.shift_C):
        assert id(p) in decay
    for p in (s4d.kernel.log_A_real, s4d.kernel.log_dt, s4d.kernel.B, h3.diag.A_imag):
        assert id(p) in no_decay
    assert len(decay) + len(no_decay) == len({id(p) for p in model.parameters()})


# --- configuration errors ------------------------------------------------------------------

@pytest.mark.parametrize("name,kw,match", [
    ("s4d", {"d_state": 7}, "d_state"),
    ("s4d", {"dt_min": 0.2}, "dt_min"),
    ("h3", {"head_dim": 3}, "head_dim"),
    ("h3", {"discretization": "euler"}, "zoh or bilinear"),
    ("h3", {"shift": "fixed"}, "conv or ssm"),
    ("hyena", {"emb_dim": 4}, "emb_dim"),
    ("hyena", {"order": 0}, "order"),
    ("lru", {"r_min": 0.99, "r_max": 0.9}, "r_min"),
    ("lru", {"chunk_size": 0}, "chunk_size"),
    ("gilr", {"activation": "relu"}, "activation"),
    ("gilr", {"dropout": 0.1}, "gated output only"),
    ("lru", {"dropout": 0.1}, "gated output only"),
    ("lru", {"output_gate": True, "dropout": 1.0}, "dropout"),
    ("lstm", {"init": "keras"}, "xavier_orthogonal"),
    ("lstm", {"n_layers": 0}, "n_layers"),
    ("rwkv", {"chunk_size": 0}, "chunk_size"),
    ("rwkv", {"init": "randn"}, "rwkv4 or normal"),
    ("rwkv", {"past_weights": "rise"}, "decay or grow"),
    ("mamba", {"dt_rank": "big"}, "dt_rank"),
    ("mamba", {"d_conv": 0}, "d_conv"),
    ("ngram", {"n": 0}, "n must"),
    ("moe_mlp", {"top_k": 5}, "top_k"),
    ("moe_mlp", {"activation": "tanh"}, "activation"),
])
def test_invalid_hyper_parameters_raise_config_error(name, kw, match):
    with pytest.raises(ConfigError, match=match):
        layers.build(name, d_model=D, max_len=T, **kw)
