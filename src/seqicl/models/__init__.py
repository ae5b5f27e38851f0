"""Backbones that turn a list of layers into a model, and the registry that picks one per task.

A backbone builder takes the task and the model config (without ``name``/``backbone``) and
returns an ``nn.Module``. ``model.backbone: auto`` uses the task's own ``backbone``.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Dict

from torch import nn

from seqicl.errors import ConfigError
from seqicl.models.init_schemes import apply_init
from seqicl.models.lm import TokenLM, count_parameters
from seqicl.models.stack import Block, BlockStack

BACKBONES: Dict[str, Callable] = {}


def register_backbone(name: str):
    def deco(fn: Callable) -> Callable:
        BACKBONES[name] = fn
        return fn

    return deco


@register_backbone("token_lm")
def _token_lm(task, **cfg) -> nn.Module:
    if task.kind != "token":
        raise ConfigError(f"task {task.name!r} is not a token task; model.backbone=token_lm cannot serve it")
    return TokenLM(vocab_size=task.vocab_size, max_len=task.seq_len, **cfg)


def build_model(model_cfg: dict, task) -> nn.Module:
    """The model for ``task`` from a model config (``backbone``, ``d_model``, blocks ...), its
    weights drawn by the config's ``init`` scheme (``seqicl.models.init_schemes``)."""
    cfg = {k: v for k, v in model_cfg.items() if k not in ("name", "backbone", "init")}
    backbone = model_cfg.get("backbone", "auto")
    if backbone == "auto":
        backbone = task.backbone
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown model.backbone {backbone!r}; choose auto or one of {', '.join(sorted(BACKBONES))}")
    model = BACKBONES[backbone](task, **cfg)
    apply_init(model, model_cfg.get("init", "default"))
    return model


def state_size(model: nn.Module, seq_len: int) -> int | None:
    """Recurrent state (elements per sequence) carried at inference after ``seq_len`` tokens.

    None when some sequence mixer does not report it, or the model is not made of blocks.
    """
    if not hasattr(model, "blocks"):
        return None
    total = 0
    for block in model.blocks:
        mixer = getattr(block, "mixer", None)
        if mixer is None:
            continue
        if not hasattr(mixer, "state_size"):
            return None
        total += int(mixer.state_size(seq_len))
    return total


for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("lm", "stack", "init_schemes"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["BACKBONES", "Block", "BlockStack", "TokenLM", "build_model", "count_parameters", "register_backbone",
           "state_size"]
