"""The driver behind ``python -m generate``: restore a checkpoint, evaluate the model on a test
set, write ``generate.json`` and plots, and print a summary.

The examples are either a fresh test set (``split=fresh``: drawn from the task's test view,
for DFA tasks test languages only, with a seed of its own) or the run's own test set
(``split=run``: rebuilt from the run's config and seed, so the metrics are those of the run's
``results.json``). The task's evaluator (``seqicl.evaluation.base``) does the rest.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from seqicl.errors import ConfigError
from seqicl.evaluation import continuous, dfa, tokens  # noqa: F401 - they register their evaluators
from seqicl.evaluation.base import Settings, evaluator_for
from seqicl.evaluation.checkpoint import restore
from seqicl.models import count_parameters
from seqicl.seeding import derive_seed
from seqicl.tasks.base import check_choice, check_float, check_int
from seqicl.tasks.splits import batch_size_of, draw_unique, index_batch, rebuild_test_set
from seqicl.training.config import SECTIONS, check_keys
from seqicl.training.run import describe_model, write_results

KEYS = {"ckpt", "split", "n_examples", "batch_size", "seed", "device", "samples", "temperature", "task", "paths"}
RESULTS = "generate.json"


def validate(cfg: DictConfig) -> dict:
    """Check the keys and values of a composed generate config; return it as a plain dict."""
    try:
        c = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # interpolation errors name the key
        raise ConfigError(f"config does not resolve: {e}".splitlines()[0]) from None
    check_keys("", c, KEYS)
    check_keys("paths", c["paths"], SECTIONS["paths"])
    if not c["ckpt"]:
        raise ConfigError("name a checkpoint: python -m generate ckpt=<run>/checkpoints/best.ckpt")
    check_choice("split", c["split"], ("fresh", "run"))
    check_choice("device", c["device"], ("auto", "cpu", "cuda"))
    if c["n_examples"] is not None:
        check_int("n_examples", c["n_examples"], low=1)
    check_int("batch_size", c["batch_size"], low=1)
    check_int("seed", c["seed"], low=0)
    check_int("samples", c["samples"], low=0)
    check_float("temperature", c["temperature"], low=0.0, low_open=True)
    c["task"] = c["task"] or {}
    if not isinstance(c["task"], dict):
        raise ConfigError(f"task must be a mapping of task parameters (task.NAME=VALUE), got {c['task']!r}")
    return c


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda, but CUDA is not available here; use device=cpu or device=auto")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def evaluation_data(c: dict, task, run: dict) -> dict:
    """The examples to evaluate: a fresh test set, or the first ``n_examples`` of the run's own."""
    test_size = int(run["data"]["test_size"])
    n = c["n_examples"] or test_size
    if c["split"] == "fresh":
        view = task.split_view("test", c["seed"])
        return draw_unique(view, n, derive_seed(c["seed"], task.name, "fresh test set"))[0]
    if c["task"]:
        raise ConfigError("split=run rebuilds the run's own test set, which task overrides would change; "
                          "use split=fresh")
    if n > test_size:
        raise ConfigError(f"split=run: the run's test set has data.test_size={test_size} examples; "
                          f"n_examples={n} asks for more")
    return index_batch(rebuild_test_set(task, test_size, int(run["seed"])), slice(0, n))


def prepare_output_dir(path: Path) -> Path:
    """Create the output directory; refuse one that already holds a finished evaluation."""
    if (path / RESULTS).exists() and json.loads((path / RESULTS).read_text()).get("status") == "completed":
        raise ConfigError(f"{path} already holds a finished evaluation ({RESULTS}); choose another output directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write to output directory {path}: {e.strerror}") from None
    return path


def generate(c: dict, output_dir: str | os.PathLike) -> dict:
    """Evaluate checkpoint ``c["ckpt"]`` from a validated config; return what generate.json holds."""
    start = time.time()
    restored = restore(c["ckpt"], c["task"])
    task, run = restored.task, restored.config
    device = resolve_device(c["device"])
    data = evaluation_data(c, task, run)
    out = prepare_output_dir(Path(output_dir))
    model = restored.model.to(device)
    settings = Settings(out=out, device=device, batch_size=c["batch_size"], seed=c["seed"], samples=c["samples"],
                        temperature=c["temperature"])
    evaluation = evaluator_for(task)(model, task, data, settings)
    results = {
        "status": "completed",
        "checkpoint": str(Path(c["ckpt"]).resolve()),
        "step": restored.step,
        "task": task.name,
        "task_params": task.params(),
        "task_overrides": c["task"],
        "model": describe_model(run["model"]),
        "params": count_parameters(model),
        "run_seed": run.get("seed"),
        "split": c["split"],
        "seed": c["seed"],
        "n_examples": batch_size_of(data),
        "device": str(device),
        **evaluation,
        "wall_time_s": round(time.time() - start, 2),
    }
    write_results(out, results, RESULTS)
    return results


def print_report(results: dict, directory: str | os.PathLike) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"seqicl generate: {results['task']}, {results['model']}",
                  caption=f"step {results['step']}; {results['n_examples']} {results['split']} test examples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in results["metrics"].items():
        table.add_row(name, f"{value:,}" if isinstance(value, int) else f"{value:.4f}")
    console.print(table)
    if results.get("samples"):
        samples = Table(title="sample continuations")
        for column in results["samples"][0]:
            samples.add_column(column)
        for row in results["samples"]:
            samples.add_row(*row.values())
        console.print(samples)
    console.print(f"output directory: {directory}")


def run(cfg: DictConfig, output_dir: str | os.PathLike) -> dict:
    """Validate, evaluate, print: one ``python -m generate`` job."""
    results = generate(validate(cfg), output_dir)
    print_report(results, output_dir)
    return results
