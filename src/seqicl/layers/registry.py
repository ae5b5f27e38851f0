"""The layer registry: every layer maps (batch, seq, d_model) -> (batch, seq, d_model)."""

from __future__ import annotations

import inspect
from typing import Callable, Dict, Type

from torch import nn

from seqicl.errors import ConfigError

KINDS = ("sequence", "state")
_REGISTRY: Dict[str, Type[nn.Module]] = {}
_KIND: Dict[str, str] = {}


def register(name: str, kind: str = "sequence") -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator: register a layer class under ``name`` as a ``kind`` mixer.

    The class is constructed as ``cls(d_model, max_len, **kwargs)``. Sequence mixers must be
    causal. A class with ``needs_tokens = True`` is also given the token ids:
    ``forward(x, tokens=...)``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def deco(cls: Type[nn.Module]) -> Type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"layer name {name!r} is registered twice")
        _REGISTRY[name] = cls
        _KIND[name] = kind
        cls.layer_name = name
        cls.layer_kind = kind
        return cls

    return deco


def available() -> list[str]:
    """Sorted names of the registered layers."""
    return sorted(_REGISTRY)


def layer_class(name: str) -> Type[nn.Module]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown layer {name!r}; registered layers: {', '.join(available())}")
    return _REGISTRY[name]


def kind(name: str) -> str:
    """``"sequence"`` or ``"state"``."""
    layer_class(name)
    return _KIND[name]


def defaults(name: str) -> dict:
    """The layer's own hyper-parameters (beyond d_model and max_len) and their defaults."""
    sig = inspect.signature(layer_class(name).__init__)
    return {p.name: p.default for p in list(sig.parameters.values())[3:]
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def build(name: str, d_model: int, max_len: int, **overrides) -> nn.Module:
    """Build layer ``name``; unknown names or hyper-parameters raise ConfigError."""
    cls = layer_class(name)
    valid = defaults(name)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ConfigError(f"layer {name!r} has no hyper-parameter {unknown[0]!r}; "
                          f"its hyper-parameters: {', '.join(valid) or '(none)'}")
    if not isinstance(d_model, int) or d_model < 1:
        raise ConfigError(f"d_model must be a positive integer, got {d_model!r}")
    return cls(d_model, max_len, **overrides)
