"""Strict checks of a composed run configuration: a misspelt key is an error, never ignored.

Hydra already refuses command-line overrides of keys that do not exist; these checks also
catch misspellings inside config files (experiments, presets), before any training starts.
"""

from __future__ import annotations

import inspect

from omegaconf import DictConfig, OmegaConf

from seqicl.errors import ConfigError
from seqicl.plugins import check_module_names

# ``compile``: off, torch.compile's default mode (true), or one of its named modes.
COMPILE_MODES = (False, None, True, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
TOP_LEVEL = {"name", "seed", "ckpt_path", "compile", "imports", "task", "model", "data", "optim", "scheduler",
             "trainer", "callbacks", "logger", "paths", "placement"}
SECTIONS = {
    "data": {"batch_size", "train_size", "val_size", "test_size", "eval_batch_size", "steps_per_epoch",
             "on_device", "generate_on_device"},
    "optim": {"name", "lr", "weight_decay", "decay_vectors", "betas", "eps", "fused"},
    "scheduler": {"name", "warmup_steps", "warmup_fraction", "min_lr_ratio"},
    "callbacks": {"checkpoint", "stop_at_accuracy", "lr_monitor", "progress_bar"},
    "logger": {"name", "project", "entity", "offline", "tags"},
    "paths": {"root_dir", "log_dir", "output_dir"},
    "placement": {"gpus", "runs_per_gpu", "lock_dir"},
}
MODEL_KEYS = {"name", "backbone", "d_model", "n_layers", "mixer", "state_mixer", "blocks", "positions",
              "tie_embeddings", "embed_dropout", "norm_eps", "init"}


def _closest(key: str, valid) -> str:
    import difflib

    match = difflib.get_close_matches(key, list(valid), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_keys(where: str, keys, valid) -> None:
    for key in keys:
        if key not in valid:
            raise ConfigError(f"unknown config key {where + '.' if where else ''}{key}{_closest(key, valid)}; "
                              f"valid keys: {', '.join(sorted(valid))}")


def trainer_keys() -> set:
    from lightning.pytorch import Trainer

    return set(inspect.signature(Trainer.__init__).parameters) - {"self", "callbacks", "logger", "plugins"}


def validate(cfg: DictConfig) -> dict:
    """Check every section's keys; return the resolved config as a plain dict."""
    try:
        c = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # interpolation errors name the key
        raise ConfigError(f"config does not resolve: {e}".splitlines()[0]) from None
    check_keys("", c, TOP_LEVEL)
    for section, valid in SECTIONS.items():
        if not isinstance(c.get(section), dict):
            raise ConfigError(f"config section {section!r} is missing or not a mapping")
        check_keys(section, c[section], valid)
    check_keys("model", c["model"], MODEL_KEYS)
    check_keys("trainer", c["trainer"], trainer_keys())
    c["imports"] = check_module_names(c.get("imports"))
    if c.get("compile") not in COMPILE_MODES:
        raise ConfigError(f"compile must be one of {', '.join(map(str, COMPILE_MODES))}, got {c.get('compile')!r}")
    if "name" not in c["task"]:
        raise ConfigError("config key task.name is missing")
    if not isinstance(c["trainer"].get("max_steps"), int) or c["trainer"]["max_steps"] < 1:
        raise ConfigError(f"trainer.max_steps must be a positive integer, got {c['trainer'].get('max_steps')!r}")
    return c
