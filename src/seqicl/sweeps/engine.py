"""The sweep engine: expand a protocol's grid, run it as a Hydra multirun, collect the results.

A protocol (``configs/sweep/<name>.yaml``) names the overrides every run shares (``base``),
the grid (``grid``: an axis is a config key and its list of values; runs are the cartesian
product), how the best run of a group is chosen (``select``, on validation only) and what the
report shows (``report``). Each run's directory is named after its grid values, so a second
invocation finds finished runs and skips them.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from seqicl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
SWEEP_DIR = ROOT / "configs" / "sweep"
LAUNCHER_DIR = ROOT / "configs" / "launcher"
PROTOCOL_KEYS = {"name", "description", "dry_run", "out_dir", "base", "grid", "select", "report"}


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
    return Protocol(name=c.get("name", path.stem), description=c.get("description", ""), base=list(c.get("base") or []),
                    grid=grid, select=c["select"] or {}, report=c["report"] or {}, out_dir=Path(c["out_dir"]),
                    dry_run=bool(c["dry_run"]))


def expand(protocol: Protocol) -> list[dict]:
    """Every run of the grid as ``{axis: value}``, in a fixed order."""
    axes = list(protocol.grid)
    return [dict(zip(axes, combo)) for combo in itertools.product(*(protocol.grid[a] for a in axes))]


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


def launcher_overrides(launcher: str, n_jobs: int | None = None) -> list[str]:
    """Hydra overrides selecting ``configs/launcher/<launcher>.yaml``."""
    path = LAUNCHER_DIR / f"{launcher}.yaml"
    if not path.exists():
        names = sorted(p.stem for p in LAUNCHER_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown launcher {launcher!r}; available launchers: {', '.join(names)}")
    spec = yaml.safe_load(path.read_text()) or {}
    out = list(spec.get("overrides") or [])
    if n_jobs is not None:
        if launcher != "joblib":
            raise ConfigError("sweep n_jobs applies to launcher=joblib only")
        out.append(f"hydra.launcher.n_jobs={n_jobs}")
    return out


def train_command(protocol: Protocol, runs: list[dict], forwarded: list[str], launcher: list[str]) -> list[str]:
    """The ``python -m train --multirun`` command line for the whole grid."""
    from seqicl.cli import select_layer_configs

    sweep_args = []
    for axis, values in protocol.grid.items():
        sweep_args.append(f"{axis}={','.join(_quote(format_value(v)) for v in values)}")
    # Layer configs selected by a _target_ (or plug-in name) in the base, the forwarded overrides
    # or a grid axis are shared by every run, so they do not appear in the run directories' names.
    n = len(protocol.base) + len(forwarded)
    everything = select_layer_configs([*protocol.base, *forwarded, *sweep_args])
    shared = everything[:n] + everything[n + len(sweep_args):]
    # Hydra matches a config-group override (layer@model.mixer=...) by its group alone (layer);
    # that excludes every override of the group, so only when no grid axis is one of them.
    grid_groups = {axis.split("@", 1)[0] for axis in protocol.grid if "@" in axis}
    keys = {o.split("=", 1)[0].lstrip("+~") for o in shared}
    exclude = sorted({k.split("@", 1)[0] if "@" in k and k.split("@", 1)[0] not in grid_groups else k for k in keys})
    return [sys.executable, "-m", "train", "--multirun", *shared, *launcher, *sweep_args,
            f"hydra.sweep.dir={protocol.out_dir / 'runs'}",
            "hydra.sweep.subdir=${hydra.job.override_dirname}",
            f"hydra.job.config.override_dirname.exclude_keys=[{','.join(exclude)}]"]


def _quote(text: str) -> str:
    return f"'{text}'" if any(ch in text for ch in ",[]{}") else text


def launch(protocol: Protocol, forwarded: list[str], launcher: list[str]) -> int:
    """Run the grid; finished runs are skipped by the runs themselves. Returns the exit code."""
    runs = expand(protocol)
    cmd = train_command(protocol, runs, forwarded, launcher)
    protocol.out_dir.mkdir(parents=True, exist_ok=True)
    (protocol.out_dir / "command.txt").write_text(" ".join(_shell(a) for a in cmd[1:]) + "\n")
    return subprocess.run(cmd, cwd=ROOT).returncode


def _shell(arg: str) -> str:
    return f"'{arg}'" if any(ch in arg for ch in " ,$[]{}'") else arg


def _run_dirs(protocol: Protocol) -> dict[str, Path]:
    """Run directories of the sweep, keyed by the run's normalised grid values."""
    found = {}
    for overrides_file in (protocol.out_dir / "runs").glob("**/.hydra/overrides.yaml"):
        values = {}
        for item in yaml.safe_load(overrides_file.read_text()) or []:
            key, _, value = item.partition("=")
            if key in protocol.grid:
                values[key] = yaml.safe_load(value)
        if set(values) == set(protocol.grid):
            found[run_name(values)] = overrides_file.parent.parent
    return found


def collect(protocol: Protocol) -> list[dict]:
    """One row per grid run: its grid values, status and results (``missing`` if it never ended)."""
    dirs = _run_dirs(protocol)
    rows = []
    for run in expand(protocol):
        directory = dirs.get(run_name(run))
        row = {**run, "run_dir": str(directory) if directory else None}
        results = directory / "results.json" if directory else None
        if results is not None and results.exists():
            r = json.loads(results.read_text())
            row["status"] = r.get("status", "unknown")
            row["error"] = r.get("error")
            for key in ("task", "model", "params", "state_size", "steps", "wall_time_s"):
                row[key] = r.get(key)
            for split in ("val", "test"):
                for metric, value in (r.get(split) or {}).items():
                    if not isinstance(value, list):
                        row[f"{split}.{metric}"] = value
        else:
            row["status"] = "missing"
        rows.append(row)
    return rows


def count_finished(protocol: Protocol) -> int:
    return sum(row["status"] == "completed" for row in collect(protocol))
