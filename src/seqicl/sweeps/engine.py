"""The sweep engine: expand a protocol's grid, run it as a Hydra multirun, collect the results.

A protocol (``configs/sweep/<name>.yaml``) names the overrides every run shares (``base``),
the grid (``grid``: an axis is a config key and its list of values; runs are the cartesian
product), how the best run of a group is chosen (``select``, on validation only) and what the
report shows (``report``). Each run's directory is named after its grid values, so a second
invocation finds finished runs and skips them.

An axis whose every value is a list of overrides (``key=value`` strings) changes several keys
together: ``settings: [[task.seq_len=256], [task.vocab_size=32, trainer.max_steps=500]]`` is an
axis of two values, each applying all of its overrides. Its name is only a label (the column of
``results.csv``, which holds the overrides joined by spaces). Hydra sweeps one key at a time, so
the grid is launched as one multirun per combination of such values.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from seqicl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
SWEEP_DIR = ROOT / "configs" / "sweep"
LAUNCHER_DIR = ROOT / "configs" / "launcher"
PROTOCOL_KEYS = {"name", "description", "dry_run", "out_dir", "base", "grid", "select", "report"}
SECTION_KEYS = {
    "select": {"over", "metric", "mode"},
    "report": {"metric", "metrics", "rows", "columns", "average_over", "facet", "random_guess", "plot", "curves"},
    "report.plot": {"x", "series", "facet", "kind", "logx", "reference"},
    "report.curves": {"metric", "reference", "facet", "series"},
}


@dataclass
class Protocol:
    name: str
    description: str
    base: list
    grid: dict
    select: dict
    report: dict
    out_dir: Path
    dry_run: bool = False


def available() -> list[str]:
    return sorted(p.stem for p in SWEEP_DIR.glob("*.yaml"))


def load_protocol(name: str, overrides: list[str] = ()) -> Protocol:
    """Load ``configs/sweep/<name>.yaml`` (or a protocol file at path ``name``) and apply
    ``sweep.<key>=value`` overrides (strictly)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else SWEEP_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown sweep {name!r}; available sweeps: {', '.join(available())}")
    cfg = OmegaConf.load(path)
    unknown = set(cfg) - PROTOCOL_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}; "
                          f"valid keys: {', '.join(sorted(PROTOCOL_KEYS))}")
    cfg.setdefault("dry_run", False)
    cfg.setdefault("out_dir", f"outputs/sweeps/{cfg.get('name', path.stem)}")
    cfg.setdefault("select", {})
    cfg.setdefault("report", {})
    overrides = _set_grid_axes(cfg, overrides)
    OmegaConf.set_struct(cfg, True)
    try:
        cfg.merge_with_dotlist(list(overrides))
    except Exception as e:  # omegaconf names the key
        raise ConfigError(f"sweep override: {str(e).splitlines()[0]}") from None
    c = OmegaConf.to_container(cfg, resolve=True)
    grid = c.get("grid") or {}
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep {name}: grid axis {axis!r} needs a non-empty list of values")
    _check_override_axes(name, grid)
    _check_sections(name, c)
    return Protocol(name=c.get("name", path.stem), description=c.get("description", ""), base=list(c.get("base") or []),
                    grid=grid, select=c["select"] or {}, report=c["report"] or {}, out_dir=Path(c["out_dir"]),
                    dry_run=bool(c["dry_run"]))


def _check_sections(name: str, c: dict) -> None:
    """The select and report sections are strict too: a misspelt key is an error."""
    report = c.get("report") or {}
    sections = {"select": c.get("select"), "report": report, "report.plot": report.get("plot"),
                "report.curves": report.get("curves")}
    for where, section in sections.items():
        for key in section or {}:
            if key not in SECTION_KEYS[where]:
                raise ConfigError(f"sweep {name}: unknown key {where}.{key}; "
                                  f"valid keys: {', '.join(sorted(SECTION_KEYS[where]))}")
    if "metric" in report and "metrics" in report:
        raise ConfigError(f"sweep {name}: give report.metric or report.metrics, not both")
    for where, required in (("report.plot", "x"), ("report.curves", "metric")):
        if sections[where] is not None and required not in sections[where]:
            raise ConfigError(f"sweep {name}: {where} needs {required!r}")


def _is_override_list(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and "=" in v for v in value)


def _set_grid_axes(cfg, overrides) -> list[str]:
    """Apply the overrides of grid axes, by axis name: ``grid.AXIS=[...]`` replaces the values of an
    axis, ``+grid.AXIS=[...]`` adds an axis, ``~grid.AXIS`` removes one. An axis named with dots
    (``grid.model.d_model=[64]``) is one key, which a dotted path cannot reach. Return the other
    overrides; any other ``+`` or ``~`` override is an error."""
    if cfg.get("grid") is None:
        cfg.grid = {}
    rest = []
    for override in overrides:
        key, sep, value = override.partition("=")
        prefix, path = split_prefix(key)
        axis = path.removeprefix("grid.")
        if not path.startswith("grid."):
            if prefix:
                raise ConfigError(f"sweep override {override!r}: only grid axes can be added (+) or removed (~); "
                                  "set other protocol keys with sweep.KEY=VALUE")
            rest.append(override)
        elif prefix == "~":
            if axis not in cfg.grid:
                raise ConfigError(f"sweep override {override!r}: no grid axis {axis!r}; axes: {', '.join(cfg.grid)}")
            del cfg.grid[axis]
        elif prefix in ("", "+") and sep:
            if (axis in cfg.grid) != (prefix == ""):
                hint = "replace it with sweep.grid" if axis in cfg.grid else "add it with +sweep.grid"
                raise ConfigError(f"sweep override {override!r}: {hint}.{axis}=[...]; axes: {', '.join(cfg.grid)}")
            cfg.grid[axis] = OmegaConf.from_dotlist([f"value={value}"]).value
        else:
            raise ConfigError(f"sweep override {override!r}: write sweep.grid.AXIS=[...], +sweep.grid.AXIS=[...] "
                              "or ~sweep.grid.AXIS")
    return rest


def override_axes(grid: dict) -> list[str]:
    """The axes whose values are lists of overrides."""
    return [axis for axis, values in grid.items() if all(_is_override_list(v) for v in values)]


def split_prefix(override: str) -> tuple[str, str]:
    """An override's Hydra prefix (``+``, ``++``, ``~`` or none) and the rest."""
    rest = override.lstrip("+~")
    return override[:len(override) - len(rest)], rest


def _override_key(override: str) -> str:
    return split_prefix(override.split("=", 1)[0])[1]


def grid_keys(grid: dict) -> dict[str, str]:
    """The override keys that the grid sets, each with its axis: an axis is its own key; an axis
    of override lists sets the keys of its overrides."""
    bundled = override_axes(grid)
    keys = {axis: axis for axis in grid if axis not in bundled}
    keys.update({_override_key(o): axis for axis in bundled for values in grid[axis] for o in values})
    return keys


def check_forwarded(protocol: Protocol, forwarded: list[str]) -> None:
    """An override given on the command line for a key that the grid varies would be silently
    overridden by every run: an error, naming the way to narrow the axis instead."""
    keys = grid_keys(protocol.grid)
    for override in forwarded:
        axis = keys.get(_override_key(override))
        if axis is not None:
            raise ConfigError(f"{override!r}: sweep {protocol.name} varies {_override_key(override)} (grid axis "
                              f"{axis!r}); narrow the axis instead, e.g. sweep.grid.{axis}=[...]")


def _check_override_axes(name: str, grid: dict) -> None:
    bundled = override_axes(grid)
    for axis in bundled:
        sets = [frozenset(values) for values in grid[axis]]
        if len(set(sets)) != len(sets):
            raise ConfigError(f"sweep {name}: grid axis {axis!r} lists the same overrides twice")
        clash = {_override_key(o) for values in grid[axis] for o in values} & set(grid)
        if clash:
            raise ConfigError(f"sweep {name}: grid axis {axis!r} overrides {sorted(clash)[0]!r}, which is also an axis")
    for axis, values in grid.items():
        if axis not in bundled and any(_is_override_list(v) for v in values):
            raise ConfigError(f"sweep {name}: grid axis {axis!r} mixes lists of overrides with plain values")


def value_label(value):
    """A grid value as it appears in results.csv: a list of overrides becomes one string."""
    return " ".join(value) if _is_override_list(value) else value


def run_overrides(protocol: Protocol, run: dict) -> list[str]:
    """The Hydra overrides of one run of the grid."""
    bundled = set(override_axes(protocol.grid))
    out = []
    for axis, value in run.items():
        out.extend(value if axis in bundled else [f"{axis}={format_value(value)}"])
    return out


def expand(protocol: Protocol) -> list[dict]:
    """Every run of the grid as ``{axis: value}``, in a fixed order."""
    axes = list(protocol.grid)
    return [dict(zip(axes, combo)) for combo in itertools.product(*(protocol.grid[a] for a in axes))]


def first_run_per_command(protocol: Protocol) -> list[dict]:
    """One run of each multirun that ``launch`` starts (to check its overrides beforehand)."""
    bundled = override_axes(protocol.grid)
    seen, out = set(), []
    for run in expand(protocol):
        key = tuple(tuple(run[a]) for a in bundled)
        if key not in seen:
            seen.add(key)
            out.append(run)
    return out


def format_value(value) -> str:
    """A grid value as a Hydra override value."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value).replace(" ", "")
    return str(value)


def run_name(run: dict) -> str:
    """A directory name from a run's grid values (Hydra's override_dirname format)."""
    return ",".join(f"{k}={format_value(v)}" for k, v in sorted(run.items()))


def launcher_overrides(launcher: str, n_jobs: int | None = None, settings: dict | None = None,
                       out_dir: Path | None = None) -> list[str]:
    """Overrides selecting ``configs/launcher/<launcher>.yaml``, with its settings (``gpus``,
    ``runs_per_gpu``) changed by ``settings``.

    GPU placement (``gpus``, joblib only) gives every run ``placement.*`` overrides: the ids, the
    runs per GPU and a lock directory in the sweep's ``out_dir``; ``n_jobs`` defaults to the
    number of slots, as more concurrent runs would only wait for a slot.
    """
    path = LAUNCHER_DIR / f"{launcher}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in LAUNCHER_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown launcher {launcher!r}; available launchers: {', '.join(names)}")
    spec = yaml.safe_load(path.read_text()) or {}
    for key in settings or {}:
        if key not in spec or key == "overrides":
            valid = sorted(set(spec) - {"overrides"})
            raise ConfigError(f"launcher {launcher} has no setting {key!r}"
                              + (f"; its settings: {', '.join(valid)}" if valid else ""))
    spec.update(settings or {})
    out = list(spec.get("overrides") or [])
    gpus = spec.get("gpus")
    if gpus is not None:
        gpus = _gpu_ids(gpus)
        runs_per_gpu = spec.get("runs_per_gpu", 1)
        if isinstance(runs_per_gpu, bool) or not isinstance(runs_per_gpu, int) or runs_per_gpu < 1:
            raise ConfigError(f"runs_per_gpu must be a positive integer, got {runs_per_gpu!r}")
        n_jobs = len(gpus) * runs_per_gpu if n_jobs is None else n_jobs
        out += [f"placement.gpus=[{','.join(map(str, gpus))}]", f"placement.runs_per_gpu={runs_per_gpu}",
                f"placement.lock_dir={Path(out_dir or '.').absolute() / 'locks'}"]
    if n_jobs is not None:
        if launcher != "joblib":
            raise ConfigError("sweep n_jobs applies to launcher=joblib only")
        out.append(f"hydra.launcher.n_jobs={n_jobs}")
    return out


def _gpu_ids(gpus) -> list[int]:
    """``gpus``: a list of ids, or ``all`` (every visible GPU)."""
    if gpus == "all":
        import torch

        gpus = list(range(torch.cuda.device_count()))
        if not gpus:
            raise ConfigError("gpus=all, but no GPU is visible here")
    if not isinstance(gpus, list) or not gpus or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0
                                                         for g in gpus) or len(set(gpus)) != len(gpus):
        raise ConfigError(f"gpus must be a list of distinct GPU ids (e.g. gpus=[0,1]) or all, got {gpus!r}")
    return gpus


def train_commands(protocol: Protocol, forwarded: list[str], launcher: list[str]) -> list[list[str]]:
    """The ``python -m train --multirun`` command lines for the whole grid: one, or one per
    combination of the values of the axes that are lists of overrides."""
    from seqicl.cli import select_layer_configs

    bundled = override_axes(protocol.grid)
    sweep_args = [f"{axis}={','.join(_quote(format_value(v)) for v in values)}"
                  for axis, values in protocol.grid.items() if axis not in bundled]
    # Hydra matches a config-group override (layer@model.mixer=...) by its group alone (layer);
    # that excludes every override of the group, so only when no grid axis is one of them.
    grid_groups = {axis.split("@", 1)[0] for axis in protocol.grid if "@" in axis}
    commands = []
    for combo in itertools.product(*(protocol.grid[a] for a in bundled)):
        varying = [*(o for overrides in combo for o in overrides), *sweep_args]
        # Layer configs selected by a _target_ (or plug-in name) in the base or the forwarded
        # overrides are shared by every run, so they do not appear in the run directories' names.
        # A base override of a key that the grid varies would be overridden by every run anyway;
        # left in, it would also be left out of the run directories' names with the shared ones.
        varied = grid_keys(protocol.grid)
        base = [o for o in protocol.base if _override_key(o) not in varied]
        n = len(base) + len(forwarded)
        everything = select_layer_configs([*base, *forwarded, *varying])
        shared = everything[:n] + everything[n + len(varying):]
        # The launcher's run settings (placement.*) are not part of the names either.
        keys = {_override_key(o) for o in [*shared, *launcher] if not o.startswith("hydra")}
        exclude = sorted({k.split("@", 1)[0] if "@" in k and k.split("@", 1)[0] not in grid_groups else k
                          for k in keys})
        commands.append([sys.executable, "-m", "train", "--multirun", *shared, *launcher,
                         *everything[n:n + len(varying)], f"hydra.sweep.dir={protocol.out_dir / 'runs'}",
                         "hydra.sweep.subdir=${hydra.job.override_dirname}",
                         f"hydra.job.config.override_dirname.exclude_keys=[{','.join(exclude)}]"])
    return commands


def _quote(text: str) -> str:
    return f"'{text}'" if any(ch in text for ch in ",[]{}") else text


def launch(protocol: Protocol, forwarded: list[str], launcher: list[str]) -> int:
    """Run the grid; finished runs are skipped by the runs themselves. Returns the exit code
    (the first non-zero one of the multiruns).

    A grid with override-list axes is one multirun per combination of their values; with
    ``launcher=joblib`` several of those run at once, as many as keep the runs in flight
    within ``n_jobs``."""
    commands = train_commands(protocol, forwarded, launcher)
    protocol.out_dir.mkdir(parents=True, exist_ok=True)
    (protocol.out_dir / "command.txt").write_text("".join(" ".join(_shell(a) for a in cmd[1:]) + "\n"
                                                          for cmd in commands))
    with ThreadPoolExecutor(multiruns_at_once(protocol, launcher, len(commands))) as pool:
        codes = list(pool.map(lambda cmd: subprocess.run(cmd, cwd=ROOT).returncode, commands))
    return next((c for c in codes if c), 0)


def multiruns_at_once(protocol: Protocol, launcher: list[str], n_commands: int) -> int:
    """How many of the grid's multiruns run at the same time: ``n_jobs`` (the launcher's
    ``hydra.launcher.n_jobs``; 1 without it) divided by the runs each multirun holds."""
    n_jobs = next((int(o.split("=", 1)[1]) for o in reversed(launcher) if o.startswith("hydra.launcher.n_jobs=")), 1)
    bundled = override_axes(protocol.grid)
    per_multirun = math.prod(len(v) for axis, v in protocol.grid.items() if axis not in bundled)
    return max(1, min(n_commands, n_jobs // per_multirun))


def _shell(arg: str) -> str:
    return f"'{arg}'" if any(ch in arg for ch in " ,$[]{}'") else arg


def _parse_overrides(items) -> dict:
    """``key=value`` overrides as ``{key: value}``; a later override of a key wins, as in Hydra."""
    parsed = {}
    for item in items:
        key, _, value = item.partition("=")
        parsed[key.lstrip("+~")] = yaml.safe_load(value)
    return parsed


def _matching_overrides(choices: list[list[str]], given: dict):
    """The most specific of ``choices`` (lists of overrides) that ``given`` applies entirely."""
    matches = [c for c in choices if all(k in given and given[k] == v for k, v in _parse_overrides(c).items())]
    return max(matches, key=len) if matches else None


def _run_dirs(protocol: Protocol) -> dict[str, Path]:
    """Run directories of the sweep, keyed by the run's normalised grid values."""
    bundled = override_axes(protocol.grid)
    found = {}
    for overrides_file in (protocol.out_dir / "runs").glob("**/.hydra/overrides.yaml"):
        given = _parse_overrides(yaml.safe_load(overrides_file.read_text()) or [])
        values = {key: given[key] for key in protocol.grid if key not in bundled and key in given}
        for axis in bundled:
            match = _matching_overrides(protocol.grid[axis], given)
            if match is not None:
                values[axis] = match
        if set(values) == set(protocol.grid):
            found[run_name(values)] = overrides_file.parent.parent
    return found


def collect(protocol: Protocol) -> list[dict]:
    """One row per grid run: its grid values, status and results (``missing`` if it never ended).

    Metrics are ``val.<name>`` and ``test.<name>``; list-valued ones (per-position curves such as
    ``test.mse_by_k``) are kept as lists.
    """
    dirs = _run_dirs(protocol)
    rows = []
    for run in expand(protocol):
        directory = dirs.get(run_name(run))
        row = {**{k: value_label(v) for k, v in run.items()}, "run_dir": str(directory) if directory else None}
        results = directory / "results.json" if directory else None
        if results is not None and results.exists():
            r = json.loads(results.read_text())
            row["status"] = r.get("status", "unknown")
            row["error"] = r.get("error")
            for key in ("task", "model", "params", "state_size", "steps", "wall_time_s"):
                # A grid axis of that name (task=mqar_zoology_64) keeps its value: the run's task
                # name (mqar) would merge the runs of different settings.
                row.setdefault(key, r.get(key))
            for split in ("val", "test"):
                for metric, value in (r.get(split) or {}).items():
                    row[f"{split}.{metric}"] = value
        else:
            row["status"] = "missing"
        rows.append(row)
    return rows


def count_finished(protocol: Protocol) -> int:
    return sum(row["status"] == "completed" for row in collect(protocol))
