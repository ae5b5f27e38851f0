"""The layer contract, checked in a fraction of a second on tiny random inputs.

A layer (built-in or plug-in) must
- be constructed as ``cls(d_model, max_len, **hyper_parameters)`` (checked where layers are
  built: ``registry.construct``);
- map ``(batch, seq, d_model)`` to a tensor of the same shape (``forward(x)``, or
  ``forward(x, tokens=...)`` for a class with ``needs_tokens = True``);
- return finite values for finite inputs;
- be causal: its output at position t does not change when an input after t changes.

The run driver checks every plug-in layer of a model (and a whole user model: token ids ->
logits) before training; ``check`` and ``check_layer`` check any layer. A broken rule raises
``ContractError`` with one line that names the layer and the rule.
"""

from __future__ import annotations

import torch
from torch import nn

from seqicl.errors import ContractError
from seqicl.layers.registry import build_spec, is_builtin, spec_label

__all__ = ["ContractError", "check", "check_layer", "check_plugin_layers", "check_token_model", "describe"]


def describe(module: nn.Module) -> str:
    """A registered layer's name, otherwise the import path of the module's class."""
    cls = type(module)
    name = getattr(cls, "layer_name", None)
    return name if name is not None and is_builtin(cls) else f"{cls.__module__}.{cls.__qualname__}"


def _device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    device, dtype = torch.device("cpu"), torch.float32
    for p in module.parameters():
        device = p.device
        if p.is_floating_point():
            return device, p.dtype
    return device, dtype


def _first_change(y: torch.Tensor, y2: torch.Tensor, upto: int, atol: float) -> int | None:
    """The first position < ``upto`` where the two outputs differ by more than ``atol``."""
    diff = (y2[:, :upto] - y[:, :upto]).abs().flatten(2).amax(dim=(0, 2))
    bad = (diff > atol).nonzero()
    return int(bad[0]) if len(bad) else None


def _tolerance(y: torch.Tensor, atol: float) -> float:
    return atol * max(1.0, float(y.abs().max()))


def check_layer(layer: nn.Module, d_model: int, seq_len: int = 16, batch: int = 2, label: str | None = None,
                atol: float = 1e-4, seed: int = 0) -> None:
    """Check shape, finiteness and causality of ``layer`` on random ``(batch, seq_len, d_model)``
    inputs; raise ``ContractError`` naming the first broken rule.

    Runs in eval mode without gradients and leaves the global RNG and the layer's mode as they were.
    """
    label = label or describe(layer)
    device, dtype = _device_dtype(layer)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq_len, d_model, generator=g).to(device, dtype)
    tokens = torch.randint(0, 4, (batch, seq_len), generator=g).to(device)
    with_tokens = getattr(layer, "needs_tokens", False)

    def run(x, tokens):
        try:
            return layer(x, tokens=tokens) if with_tokens else layer(x)
        except Exception as e:  # noqa: BLE001 - any failure is reported as the broken contract
            raise ContractError(f"layer {label} fails on a random input of shape {tuple(x.shape)} "
                                f"(batch, seq, d_model): {type(e).__name__}: {e}".splitlines()[0]) from None

    training = layer.training
    layer.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            y = run(x, tokens)
            if not isinstance(y, torch.Tensor):
                raise ContractError(f"layer {label} returns {type(y).__name__}, not a tensor: forward must return "
                                    "one tensor of its input's shape (batch, seq, d_model)")
            if y.shape != x.shape:
                raise ContractError(f"layer {label} has the wrong output shape: {tuple(x.shape)} -> {tuple(y.shape)}; "
                                    "forward must map (batch, seq, d_model) to the same shape")
            if not torch.isfinite(y).all():
                raise ContractError(f"layer {label} returns non-finite values (nan or inf) on finite random inputs")
            tol = _tolerance(y, atol)
            for p in range(1, seq_len):
                x2, tokens2 = x.clone(), tokens.clone()
                x2[:, p] += 3 * torch.randn(batch, d_model, generator=g).to(device, dtype)
                tokens2[:, p] = (tokens2[:, p] + 1) % 4
                t = _first_change(y, run(x2, tokens2), p, tol)
                if t is not None:
                    raise ContractError(f"layer {label} is not causal: output at position {t} changes when "
                                        f"position {p} changes")
    finally:
        layer.train(training)


def check(spec, d_model: int = 32, max_len: int = 16, kind: str | None = None, seq_len: int | None = None) -> nn.Module:
    """Build the layer of ``spec`` (a name, or a mapping with ``name`` or ``_target_``) and check
    its contract; return the layer. ``kind`` is the slot it is meant for (sequence or state)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layer = build_spec(spec, d_model, max_len, kind)
    if layer is None:
        raise ContractError(f"layer spec {spec!r} builds no layer (identity)")
    check_layer(layer, d_model, seq_len=min(max_len, 16) if seq_len is None else seq_len, label=spec_label(spec))
    return layer


def check_plugin_layers(model: nn.Module, seq_len: int = 16) -> None:
    """Check every layer of a block model (``TokenLM``) that is not one of seqicl's own."""
    d_model, max_len = getattr(model, "d_model", None), getattr(model, "max_len", seq_len)
    for i, block in enumerate(getattr(model, "blocks", [])):
        for slot in ("mixer", "state_mixer"):
            layer = getattr(block, slot, None)
            if layer is not None and not is_builtin(type(layer)):
                check_layer(layer, d_model, seq_len=min(max_len, seq_len),
                            label=f"{describe(layer)} (block {i} {slot.replace('_', ' ')})")


def check_token_model(model: nn.Module, vocab_size: int, seq_len: int, batch: int = 2, label: str | None = None,
                      atol: float = 1e-4, seed: int = 0) -> None:
    """A whole token model: token ids (batch, seq) -> finite, causal logits (batch, seq, vocab_size)."""
    label = label or f"{type(model).__module__}.{type(model).__qualname__}"
    device, _ = _device_dtype(model)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (batch, seq_len), generator=g).to(device)

    def run(tokens):
        try:
            return model(tokens)
        except Exception as e:  # noqa: BLE001 - any failure is reported as the broken contract
            raise ContractError(f"model {label} fails on token ids of shape {tuple(tokens.shape)} (batch, seq): "
                                f"{type(e).__name__}: {e}".splitlines()[0]) from None

    training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            y = run(tokens)
            want = (batch, seq_len, vocab_size)
            if not isinstance(y, torch.Tensor) or tuple(y.shape) != want:
                got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise ContractError(f"model {label} has the wrong output: token ids {tuple(tokens.shape)} -> {got}; "
                                    f"it must return logits of shape (batch, seq, vocab_size) = {want}")
            if not torch.isfinite(y).all():
                raise ContractError(f"model {label} returns non-finite logits (nan or inf)")
            tol = _tolerance(y, atol)
            for p in range(1, seq_len):
                tokens2 = tokens.clone()
                tokens2[:, p] = (tokens2[:, p] + 1) % vocab_size
                t = _first_change(y, run(tokens2), p, tol)
                if t is not None:
                    raise ContractError(f"model {label} is not causal: logits at position {t} change when "
                                        f"the token at position {p} changes")
    finally:
        model.train(training)
