"""The layer registry: every layer maps (batch, seq, d_model) -> (batch, seq, d_model).

A layer is named in configs by a spec: a registered ``name`` (``{"name": "attention",
"n_heads": 4}``) or the import path of any layer class (``{"_target_": "mypkg.mixers.MyMixer",
"my_kwarg": 3}``); the other keys are its hyper-parameters. Either way the class is built as
``cls(d_model, max_len, **hyper_parameters)``.
"""

from __future__ import annotations

import inspect
from typing import Callable, Dict, Type

from torch import nn

from seqicl.errors import ConfigError, ContractError
from seqicl.plugins import import_object

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
        raise ConfigError(f"unknown layer {name!r}; registered layers: {', '.join(available())} (a layer of your own: "
                          "list its module in imports=[...], or give its class path as _target_)")
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
    return construct(cls, d_model, max_len, overrides, label=name)


def is_builtin(cls: type) -> bool:
    """Whether ``cls`` is one of seqicl's own layers (tested by the suite), not a plug-in."""
    return cls.__module__.startswith(__name__.rpartition(".")[0] + ".")


def construct(cls: type, d_model: int, max_len: int, hyper_parameters: dict, label: str) -> nn.Module:
    """``cls(d_model, max_len, **hyper_parameters)``; a constructor that does not take this
    call (a TypeError) breaks the layer contract and is reported in one line."""
    if not isinstance(d_model, int) or d_model < 1:
        raise ConfigError(f"d_model must be a positive integer, got {d_model!r}")
    try:
        return cls(d_model, max_len, **hyper_parameters)
    except ConfigError:
        raise
    except TypeError as e:
        raise ContractError(f"layer {label} breaks the constructor contract cls(d_model, max_len, "
                            f"**hyper_parameters) with hyper-parameters {hyper_parameters}: {e}") from None
    except Exception as e:
        if is_builtin(cls):
            raise
        raise ConfigError(f"layer {label} failed to construct: {type(e).__name__}: {e}".splitlines()[0]) from None


def spec_kind(spec) -> str | None:
    """The kind a spec's class declares (``@register(..., kind=...)``); None if it declares none."""
    spec = _normalise(spec)
    if spec is None:
        return None
    if spec.get("_target_") is not None:
        return getattr(_target_class(spec["_target_"]), "layer_kind", None)
    return None if spec["name"] == "identity" else kind(spec["name"])


def spec_label(spec) -> str:
    """How messages name the layer of a spec: its registered name or its class path."""
    spec = _normalise(spec)
    return "identity" if spec is None else str(spec.get("_target_") or spec["name"])


def _normalise(spec) -> dict | None:
    if spec is None:
        return None
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name, target = spec.get("name"), spec.get("_target_")
    if name is not None and target is not None:
        raise ConfigError(f"layer spec {spec} has both name {name!r} and _target_ {target!r}: keep one "
                          "(layer@model.mixer=custom selects a layer config without a name)")
    if name is None and target is None:
        raise ConfigError(f"a layer spec needs a registered name (one of {', '.join(available())}) "
                          f"or a _target_ class path; got {spec}")
    spec.pop("name" if name is None else "_target_", None)
    return spec


def _target_class(target: str) -> Type[nn.Module]:
    cls = import_object(target)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"_target_ {target!r} is not an nn.Module class")
    return cls


def build_spec(spec, d_model: int, max_len: int, expected_kind: str | None = None) -> nn.Module | None:
    """The layer of a spec (a name, or a mapping with ``name`` or ``_target_`` and the
    hyper-parameters); ``None``/``identity`` -> no layer.

    ``expected_kind`` is the slot the layer fills; a class that declares another kind is refused.
    """
    spec = _normalise(spec)
    if spec is None or spec.get("name") == "identity":
        return None
    declared = spec_kind(spec)
    if expected_kind is not None and declared is not None and declared != expected_kind:
        raise ConfigError(f"layer {spec_label(spec)!r} is a {declared} mixer, but it is used as the "
                          f"{expected_kind} mixer of a block")
    if "name" in spec:
        name = spec.pop("name")
        return build(name, d_model=d_model, max_len=max_len, **spec)
    target = spec.pop("_target_")
    return construct(_target_class(target), d_model, max_len, spec, label=target)
