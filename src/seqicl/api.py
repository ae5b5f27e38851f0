"""The Python API: ``seqicl.train`` (one run, as ``python -m train``) and ``seqicl.benchmark``
(a sweep protocol on a user's model factory).

Both compose ``configs/train.yaml`` with Hydra's compose API and the same overrides as the
command line, so a run has the same defaults, the same checks and the same outputs
(``results.json``, ``metrics.csv``, checkpoints, ``.hydra/config.yaml``).
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Sequence

from seqicl.errors import ConfigError

_PLAIN = re.compile(r"^[A-Za-z_/][\w./@-]*$")
_RESERVED = {"true", "false", "null", "nan", "inf", "-inf", "+inf"}


def train(task: str | Mapping | None = None, layers: Sequence | None = None, model=None,
          make_model_fn: Callable | None = None, output_dir: str | Path | None = None, **overrides) -> dict:
    """Train one model on one task, exactly as ``python -m train`` does; return ``results.json``'s dict.

    - ``task``: a task config (``"mqar"``, ``"associative_recall"`` ...) or a mapping of task
      settings (``{"num_kv_pairs": 8}``); None keeps the default (``mqar``).
    - the model, one of:
      ``layers=["attention", "swiglu", "attention", "swiglu"]`` (a sequence mixer and the state
      mixer after it form a block; an entry is a registered name, a spec mapping with ``name`` or
      ``_target_`` and hyper-parameters, or a layer class defined at module level);
      ``model=`` an ``nn.Module`` mapping token ids (batch, seq) to logits (batch, seq, vocab),
      trained in place; ``make_model_fn(task=..., vocab_size=..., max_length=...)`` returning one;
      ``model=`` a model config name (``"based"``) or a mapping of model settings;
      none of these: the default transformer.
    - ``output_dir``: the run directory (default: ``outputs/<date>/<time>``, as the command line).
    - ``overrides``: any config value, dotted (``**{"trainer.max_steps": 100}``) or nested
      (``trainer={"max_steps": 100}``); a config group by name (``trainer="debug"``,
      ``experiment="synthetics/associative_recall/transformer"``); ``imports=["mypkg.layers"]``.

    Errors in the configuration raise ``ConfigError`` before training starts.
    """
    user_model = model if _is_module(model) else None
    if sum(x is not None for x in (layers, user_model, make_model_fn)) > 1:
        raise ConfigError("give one of layers=, model= (an nn.Module) and make_model_fn=")
    groups = {} if task is None else {"task": task}
    if model is not None and user_model is None:
        groups["model"] = model
    args = to_overrides({**groups, **overrides})
    return _run(args, output_dir, layers=layers, module=user_model, factory=make_model_fn)


def benchmark(make_model_fn: Callable, protocol: str = "mad", out_dir: str | Path | None = None,
              model_id: str | None = None, **overrides):
    """Run a sweep protocol (``configs/sweep/<protocol>.yaml``, or a protocol file) on a model factory.

    ``make_model_fn(task: str, vocab_size: int, max_length: int) -> nn.Module`` (token ids ->
    logits) is called for every run; it may also take keyword arguments named after model
    settings the protocol varies (``d_model`` ...), which it then receives (a grid axis it does
    not take is warned about: its runs repeat each other; the protocol's fixed model settings
    configure seqicl's own model and are ignored).

    The runs happen in this process, one after another, in ``out_dir`` (default
    ``outputs/benchmarks/<protocol>/<model_id>``), named as ``python -m sweep`` names them: a
    second call skips finished runs, so a benchmark resumes where it stopped; a failing run is
    recorded and the others go on. ``overrides`` apply to every run, as in ``train``.

    Returns the protocol's report table as a pandas DataFrame (the best run over the ``select``
    axes, chosen on validation, and its test metric per setting; averaged over the report's
    ``average_over`` axes where it has them) and writes ``results.csv`` and ``report.md``.
    """
    import pandas as pd

    from seqicl.sweeps import engine
    from seqicl.sweeps.report import select_best, write_report
    from seqicl.training.run import finished_results, record_failure

    model_id = model_id or getattr(make_model_fn, "__name__", "model")
    name = Path(protocol).stem if str(protocol).endswith((".yaml", ".yml")) else str(protocol)
    out_dir = Path(out_dir) if out_dir is not None else Path("outputs") / "benchmarks" / name / model_id
    spec = engine.load_protocol(str(protocol), [f"out_dir={out_dir}"])
    forwarded = to_overrides(overrides)
    engine.check_forwarded(spec, forwarded)
    runs = engine.expand(spec)
    _check_model_settings(make_model_fn, forwarded, list(spec.grid))
    skipped = 0
    for run in runs:
        out = spec.out_dir / "runs" / engine.run_name(run)
        if finished_results(out) is not None:
            skipped += 1
            continue
        args = [*spec.base, *forwarded, *(f"{k}={engine.format_value(v)}" for k, v in run.items())]
        try:
            _run(args, out, factory=make_model_fn, model_id=model_id, strict=False)
        except Exception as e:  # noqa: BLE001 - a benchmark records every failure and goes on
            _write_overrides(out, args)
            status = record_failure(out, e)
            warnings.warn(f"{status}: {out}: {type(e).__name__}: {e}".splitlines()[0], stacklevel=2)
    rows = engine.collect(spec)
    report = write_report(rows, spec, skipped=skipped)
    tables = next(iter(report["tables"].values()), [])  # the protocol's first reported metric
    if len(tables) == 1:
        return tables[0][1]
    if tables:  # one table per facet value: stacked, the facet as the outer index level
        return pd.concat({title: table for title, table in tables})
    return select_best(pd.DataFrame(rows), spec)


def to_overrides(values: Mapping) -> list[str]:
    """Hydra override strings from keyword arguments: dotted keys, nested mappings, group names.

    A string for a config group (``trainer="debug"``) selects that config; a mapping is
    flattened into dotted keys. Keys inside a layer slot (``model.mixer.*``,
    ``model.state_mixer.*``) are added if the slot's config lacks them (``++``), as a layer's
    hyper-parameters are checked by the layer itself.
    """
    from seqicl.cli import CONFIG_DIR, LAYER_SLOTS

    groups = {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}
    out = []

    def add(key: str, value) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                add(f"{key}.{k}", v)
            return
        if isinstance(value, str) and (key in groups or "@" in key):
            out.append(f"{key}={value}")
            return
        prefix = "++" if any(key.startswith(f"{slot}.") for slot in LAYER_SLOTS) else ""
        out.append(f"{prefix}{key}={format_value(value)}")

    for key, value in values.items():
        add(str(key), value)
    return out


def format_value(value) -> str:
    """A Python value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.match(value) and value.lower() not in _RESERVED:
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, Path):
        return format_value(str(value))
    raise ConfigError(f"cannot pass a {type(value).__name__} as a config value: {value!r}")


def blocks_from_layers(specs: Sequence) -> list[dict]:
    """MAD-style layer lists as blocks: a sequence mixer and the state mixer that follows it
    share a block; a sequence mixer not followed by a state mixer, or a state mixer not
    preceded by a sequence mixer, has a block of its own. A class that declares no kind
    (``@register``) counts as a sequence mixer: in a block every layer is a pre-norm residual
    branch, so the grouping changes the bookkeeping, not the computation."""
    from seqicl.layers.registry import spec_kind

    if isinstance(specs, (str, Mapping)) or not specs:
        raise ConfigError(f"layers must be a non-empty list of layer specs, got {specs!r}")
    blocks, open_block = [], None
    for spec in specs:
        spec = layer_spec(spec)
        if (spec_kind(spec) or "sequence") == "sequence":
            open_block = {"mixer": spec, "state_mixer": None}
            blocks.append(open_block)
        elif open_block is not None:
            open_block["state_mixer"], open_block = spec, None
        else:
            blocks.append({"mixer": None, "state_mixer": spec})
    return blocks


def layer_spec(spec):
    """A layer given in Python as a config spec: a class becomes its ``_target_`` path."""
    from seqicl.plugins import dotted_path

    if isinstance(spec, type):
        return {"_target_": dotted_path(spec)}
    if isinstance(spec, Mapping):
        spec = dict(spec)
        if isinstance(spec.get("_target_"), type):
            spec["_target_"] = dotted_path(spec["_target_"])
        return spec
    if isinstance(spec, str):
        return spec
    raise ConfigError(f"a layer is a registered name, a spec mapping or a layer class; got {spec!r}")


def _is_module(obj) -> bool:
    if obj is None or isinstance(obj, (str, Mapping)):
        return False
    from torch import nn

    return isinstance(obj, nn.Module)


def _model_keys(args: list[str]) -> list[str]:
    """The model settings (``model.X``, ``layer@model.X``, ``model=...``) a list of overrides touches."""
    keys = []
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("~+")
        if key == "model":
            keys.append("model")
        elif key.startswith(("model.", "layer@model.")):
            keys.append(key.split("model.", 1)[1].split(".", 1)[0])
    return list(dict.fromkeys(keys))


def _accepted(fn: Callable, keys: list[str]) -> tuple[list[str], list[str]]:
    """The keys among ``keys`` that ``fn`` takes as keyword arguments, and the others."""
    params = inspect.signature(fn).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    ok = [k for k in keys if k != "model" and (takes_all or k in params)]
    return ok, [k for k in keys if k not in ok]


def _settings(keys: list[str]) -> str:
    return ", ".join("model" if k == "model" else f"model.{k}" for k in keys)


def _check_model_settings(fn: Callable, forwarded: list[str], axes: list[str]) -> None:
    """Model settings given by the caller must reach the factory; grid axes that do not are
    worth a warning (their runs repeat each other). The protocol's base model settings configure
    seqicl's own model and are ignored."""
    name = getattr(fn, "__name__", "make_model_fn")
    _, unused = _accepted(fn, _model_keys(forwarded))
    if unused:
        raise ConfigError(f"model settings {_settings(unused)} do not apply to {name} (it takes no such argument)")
    _, unused = _accepted(fn, _model_keys([f"{axis}=" for axis in axes]))
    if unused:
        warnings.warn(f"grid axes {_settings(unused)} of the protocol do not reach {name} "
                      "(it takes no such argument): runs that differ only in them train the same model", stacklevel=3)


def _write_overrides(out: Path, args: list[str]) -> None:
    import yaml

    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    (out / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(args)))


def _run(args: list[str], output_dir, layers: Sequence | None = None, module=None, factory: Callable | None = None,
         model_id: str | None = None, strict: bool = True) -> dict:
    """Compose the config from ``args``, build the model as asked (``layers``, a ``module``, a
    ``factory`` or the config), write the run's config, train.

    ``strict``: model settings in ``args`` that the user's model cannot take are an error
    (otherwise they are left out: a protocol's settings of seqicl's own model)."""
    from omegaconf import OmegaConf, open_dict

    from seqicl.cli import compose_config, open_mapping, select_layer_configs
    from seqicl.plugins import import_modules
    from seqicl.training.config import validate
    from seqicl.training.run import prepare_output_dir
    from seqicl.training.run import train as run_training

    args = open_mapping("trainer", select_layer_configs(list(args)))
    cfg = compose_config("train", args)
    out = Path(output_dir if output_dir is not None else str(cfg.hydra.run.dir)).absolute()
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(out)
    make_model = None
    if layers is not None:
        imports = cfg.get("imports")
        import_modules(OmegaConf.to_container(imports) if OmegaConf.is_config(imports) else imports)
        blocks = blocks_from_layers(layers)
        with open_dict(cfg):
            cfg.model.blocks = blocks
            cfg.model.n_layers = cfg.model.mixer = cfg.model.state_mixer = None
            if "name" not in _model_keys(args):
                cfg.model.name = "-".join(_short(b[s]) for b in blocks for s in ("mixer", "state_mixer")
                                          if b[s] is not None)
    elif module is not None or factory is not None:
        make_model, cfg = _user_model(cfg, args, module, factory, model_id, strict)
    prepare_output_dir(out)
    _write_overrides(out, args)
    (out / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return run_training(validate(cfg), out, make_model=make_model)


def _short(spec) -> str:
    from seqicl.layers.registry import spec_label

    return spec_label(spec).rpartition(".")[2]


def _user_model(cfg, args: list[str], module, factory: Callable | None, model_id: str | None, strict: bool):
    """The ``make_model(task)`` of a user's module or factory, and the config with a ``model``
    section that records it (its name, ``backbone: user`` and the settings it receives)."""
    from omegaconf import OmegaConf, open_dict

    keys = _model_keys(args)
    passed, unused = ([], keys) if module is not None else _accepted(factory, keys)
    if unused and strict:
        what = "model=<nn.Module>" if module is not None else getattr(factory, "__name__", "make_model_fn")
        raise ConfigError(f"model settings {_settings(unused)} do not apply to {what} (it takes no such argument)")
    settings = {k: OmegaConf.to_container(cfg.model, resolve=True)[k] for k in passed}
    if model_id is None:
        model_id = type(module).__name__ if module is not None else getattr(factory, "__name__", "model")
    with open_dict(cfg):
        cfg.model = {"name": model_id, "backbone": "user", **settings}
    return _UserModel(module, factory, settings), cfg


class _UserModel:
    """``make_model(task)`` for a user's module or factory; picklable whenever they are, so that a
    data-parallel run can send it to its other processes."""

    def __init__(self, module, factory: Callable | None, settings: dict):
        self.module, self.factory, self.settings = module, factory, settings

    def __call__(self, task):
        if self.module is not None:
            return self.module
        return self.factory(task=task.name, vocab_size=getattr(task, "vocab_size", None),
                            max_length=getattr(task, "seq_len", None), **self.settings)
