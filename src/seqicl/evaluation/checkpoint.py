"""A trained model and its task, restored from a checkpoint file alone.

A checkpoint written by ``python -m train`` carries the resolved run config under
``seqicl_config``: the task and model configs rebuild the model, whose weights are the
checkpoint's ``state_dict`` (the Lightning module's ``model.`` entries).

The task may be changed (``task_overrides``) as long as the model can serve it: token ids within
its vocabulary, the same input width, and sequences no longer than it can read. A model without
learned positions reads longer sequences than it was trained on when none of its parameters and
fixed buffers depend on the training length (a hyena filter or a convolution as long as the
sequence do); it is then rebuilt for the longer length.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from seqicl import tasks
from seqicl.errors import ConfigError
from seqicl.models import build_model

CONFIG_KEY = "seqicl_config"


@dataclass
class Restored:
    model: nn.Module   # in eval mode, on the CPU
    task: tasks.Task   # the checkpoint's task with the overrides applied
    config: dict       # the run's resolved config
    step: int | None   # the training step the checkpoint was written at


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict; a missing, unreadable or foreign file is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(f"cannot read checkpoint {path}: it is not a torch file of tensors and plain "
                          "values (the checkpoints python -m train writes)") from None
    except Exception as e:  # noqa: BLE001 - every other way a file fails to load is a damaged file
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot read checkpoint {path}: truncated, or not a torch file ({line})") from None
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint:
        raise ConfigError(f"{path} is not a seqicl checkpoint: it has no {CONFIG_KEY!r} (the run config that "
                          "python -m train stores)")
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise ConfigError(f"{path} has no model weights (state_dict)")
    return checkpoint


def model_weights(checkpoint: dict) -> dict:
    """The model's own entries of the Lightning module's state dict (prefix ``model.`` removed)."""
    prefix = "model."
    return {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def override_task(task_cfg: dict, overrides: dict | None) -> tasks.Task:
    """The task of ``task_cfg`` with ``overrides`` merged over its parameters."""
    overrides = dict(overrides or {})
    name = overrides.pop("name", task_cfg["name"])
    if name != task_cfg["name"]:
        raise ConfigError(f"task.name={name} cannot be changed: the model was trained on {task_cfg['name']!r}")
    params = {k: v for k, v in task_cfg.items() if k != "name"}
    return tasks.build(name, **{**params, **overrides})


def restore(path: str | os.PathLike, task_overrides: dict | None = None) -> Restored:
    """The model and task of checkpoint ``path``, the task changed by ``task_overrides``."""
    checkpoint = load_checkpoint(path)
    config = checkpoint[CONFIG_KEY]
    missing = [key for key in ("task", "model", "data", "seed") if not isinstance(config, dict) or key not in config]
    if missing:
        raise ConfigError(f"{path}: its {CONFIG_KEY} has no {missing[0]!r}; was it written by python -m train?")
    model_cfg, task_cfg = config["model"], config["task"]
    trained = override_task(task_cfg, None)
    task = override_task(task_cfg, task_overrides)
    weights = model_weights(checkpoint)
    model = _load(build_model(model_cfg, trained), weights, path)
    _check_inputs(model, trained, task)
    if not hasattr(model, "max_len"):  # the auto-encoder: its decoder has one position per token
        if task.seq_len > model.seq_len:
            raise ConfigError(f"the task's sequences (seq_len={task.seq_len} with these parameters) are longer than "
                              f"the auto-encoder's (seq_len={model.seq_len}), which has one decoder position per token")
    elif task.seq_len > model.max_len:
        model = _load(_lengthened(model, model_cfg, trained, task.seq_len), weights, path)
    step = checkpoint.get("global_step")
    return Restored(model.eval(), task, config, None if step is None else int(step))


def _load(model: nn.Module, weights: dict, path) -> nn.Module:
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        detail = " ".join(ln.strip() for ln in str(e).splitlines()[1:2])
        raise ConfigError(f"the weights in {path} do not fit the model its config describes: {detail}") from None
    return model


def _check_inputs(model: nn.Module, trained: tasks.Task, task: tasks.Task) -> None:
    vocab = getattr(model, "vocab_size", None)
    if vocab is not None and task.vocab_size > vocab:
        raise ConfigError(f"the task's vocabulary (vocab_size={task.vocab_size} with these parameters) is larger "
                          f"than the model's embedding ({vocab} tokens)")
    if getattr(trained, "n_dims", None) != getattr(task, "n_dims", None):
        raise ConfigError(f"the model reads inputs of n_dims={trained.n_dims}; the task has n_dims={task.n_dims}")
    if task.seq_len > getattr(model, "max_len", task.seq_len) and getattr(model, "pos_embed", None) is not None:
        raise ConfigError(f"the task's sequences (seq_len={task.seq_len} with these parameters) are longer than "
                          f"the model's learned positions (max_len={model.max_len})")


class _Lengthened:
    """A task as a backbone sees it, with a longer ``seq_len``."""

    def __init__(self, task: tasks.Task, seq_len: int):
        self._task, self.seq_len = task, seq_len

    def __getattr__(self, name):
        return getattr(self._task, name)


def _lengthened(model: nn.Module, model_cfg: dict, trained: tasks.Task, seq_len: int) -> nn.Module:
    """The model rebuilt to read ``seq_len`` tokens, if nothing in it depends on the length.

    Both builds start from the same random state, so every parameter and buffer that does not
    depend on the length comes out identical in shape, and every fixed (non-saved) buffer in value.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        short = build_model(model_cfg, trained)
        torch.manual_seed(0)
        longer = build_model(model_cfg, _Lengthened(trained, seq_len))
    saved = short.state_dict()
    long_saved = longer.state_dict()
    fixed = {name: b for name, b in short.named_buffers() if name not in saved}
    long_fixed = dict(longer.named_buffers())
    for name, tensor in saved.items():
        if long_saved[name].shape != tensor.shape:
            raise _length_error(name, model.max_len, seq_len)
    for name, tensor in fixed.items():
        if long_fixed[name].shape != tensor.shape or not torch.equal(long_fixed[name], tensor):
            raise _length_error(name, model.max_len, seq_len)
    return longer


def _length_error(name: str, max_len: int, seq_len: int) -> ConfigError:
    return ConfigError(f"the model cannot read sequences of seq_len={seq_len}: its {name} depends on the "
                       f"training length (max_len={max_len})")
