"""The run driver behind ``python -m train``: data, model, trainer, fit, test once, results.json."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from torch import nn

from seqicl import tasks
from seqicl.errors import ConfigError
from seqicl.layers.contract import check_plugin_layers, check_token_model
from seqicl.models import build_model, count_parameters, state_size
from seqicl.plugins import import_modules
from seqicl.tasks.datamodule import TaskDataModule, check_world_size
from seqicl.training import distributed, placement
from seqicl.training.callbacks import AtomicCheckpointIO, StepRunProgressBar, StopAtAccuracy, Throughput
from seqicl.training.module import Diverged, SeqICLModule


def build_task(task_cfg: dict) -> tasks.Task:
    params = {k: v for k, v in task_cfg.items() if k != "name"}
    return tasks.build(task_cfg["name"], **params)


def describe_model(model_cfg: dict) -> str:
    if model_cfg.get("name"):
        return str(model_cfg["name"])
    return f"{model_cfg.get('n_layers')}x{_layer_name(model_cfg.get('mixer'))}"


def _layer_name(spec) -> str:
    if isinstance(spec, str) or spec is None:
        return str(spec)
    return str(spec.get("name") or str(spec.get("_target_", "?")).rpartition(".")[2])


def _loggers(cfg: dict, out: Path):
    name = cfg["name"]
    if name == "csv":
        return pl.loggers.CSVLogger(save_dir=str(out), name="", version="")
    if name == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("logger=tensorboard needs the tensorboard package: pip install tensorboard") from None
        return [pl.loggers.CSVLogger(save_dir=str(out), name="", version=""),
                pl.loggers.TensorBoardLogger(save_dir=str(out), name="", version="tensorboard")]
    if name == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("logger=wandb needs wandb: pip install -e '.[wandb]'") from None
        offline = cfg.get("offline")
        if offline is None:
            offline = not os.environ.get("WANDB_API_KEY")
        return [pl.loggers.CSVLogger(save_dir=str(out), name="", version=""),
                pl.loggers.WandbLogger(project=cfg.get("project") or "seqicl", entity=cfg.get("entity"),
                                       offline=offline, tags=cfg.get("tags"), save_dir=str(out))]
    raise ConfigError(f"logger.name must be csv, tensorboard or wandb, got {name!r}")


def _callbacks(cfg: dict, out: Path, task: tasks.Task) -> list:
    cbs = [Throughput()]
    if cfg.get("checkpoint", True):
        # Two callbacks: Lightning writes a monitored callback's last.ckpt only when the monitored
        # value improves, so a run on a plateau would resume from its last improvement. The
        # unmonitored one rewrites last.ckpt at every validation.
        cbs.append(ModelCheckpoint(dirpath=str(out / "checkpoints"), filename="best",
                                   monitor=f"val/{task.selection_metric}", mode=task.selection_mode,
                                   save_top_k=1, enable_version_counter=False, auto_insert_metric_name=False))
        cbs.append(ModelCheckpoint(dirpath=str(out / "checkpoints"), filename="last", save_top_k=1,
                                   enable_version_counter=False, auto_insert_metric_name=False))
    if cfg.get("lr_monitor", True):
        cbs.append(LearningRateMonitor(logging_interval="step"))
    bar = cfg.get("progress_bar", "rich")
    if bar == "rich":
        cbs.append(StepRunProgressBar(leave=True))
    elif bar == "tqdm":
        cbs.append(TQDMProgressBar())
    elif bar not in ("none", None):
        raise ConfigError(f"callbacks.progress_bar must be rich, tqdm or none, got {bar!r}")
    if cfg.get("stop_at_accuracy") is not None:
        cbs.append(StopAtAccuracy(float(cfg["stop_at_accuracy"])))
    return cbs


def git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def prepare_output_dir(path: Path) -> Path:
    """Create the run directory; refuse one that already holds another run's finished results."""
    if finished_results(path) is not None:
        raise ConfigError(f"{path} already holds a finished run (results.json); choose another output directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to output directory {path}: {e.strerror}") from None
    return path


def quiet_lightning_console() -> None:
    """Lightning's INFO messages go to the run's log file, not the console (the summary says it all)."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                log.removeHandler(handler)


def build_checked_model(c: dict, task, make_model: Callable[[tasks.Task], nn.Module] | None = None) -> nn.Module:
    """The run's model, after the contract check of whatever is not seqicl's own.

    ``make_model(task)`` supplies a user's model (token ids -> logits, checked whole);
    otherwise the model config is built and its plug-in layers are checked one by one.
    """
    if make_model is None:
        model = build_model(c["model"], task)
        check_plugin_layers(model)
        return model
    model = make_model(task)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"the model must be a torch.nn.Module, got {type(model).__name__}")
    if task.kind == "token":
        check_token_model(model, task.vocab_size, min(task.seq_len, 16))
    return model


def train(c: dict, output_dir: str | os.PathLike,
          make_model: Callable[[tasks.Task], nn.Module] | None = None) -> dict:
    """Run one experiment from a validated, resolved config; return what results.json holds.

    ``make_model(task)``, when given, builds the model instead of the config's ``model``
    section (``seqicl.train(model=...)``, ``seqicl.benchmark``). A data-parallel trainer
    (``trainer=ddp``, ``trainer=ddp_cpu``) runs the whole of it in one process per device, this
    one being rank 0; only rank 0 writes to the run directory. A run of a sweep with GPU
    placement (``placement.gpus``) first waits for a free GPU slot and holds it while it runs.
    """
    gpus = placement.check(c.get("placement") or {})
    if gpus is None:
        return _launch(c, output_dir, make_model)
    with placement.slot(gpus, c["placement"]["runs_per_gpu"], c["placement"]["lock_dir"]) as (gpu, k):
        c = {**c, "trainer": placement.placed_trainer(c["trainer"], gpu),
             "placement": {**c["placement"], "gpu": gpu, "slot": k}}
        return _launch(c, output_dir, make_model)


def _launch(c: dict, output_dir: str | os.PathLike, make_model: Callable[[tasks.Task], nn.Module] | None) -> dict:
    """``_train`` in this process, and in one more per device of a data-parallel trainer."""
    world = distributed.world_size(c["trainer"])
    if world > 1:
        data = c["data"]
        check_world_size(data["batch_size"], data["val_size"], data["test_size"], world)
    out = Path(output_dir)
    if distributed.rank() == 0:
        prepare_output_dir(out)
    with distributed.processes(world, _train, (c, out, make_model)):
        return _train(c, out, make_model)


def _train(c: dict, out: Path, make_model: Callable[[tasks.Task], nn.Module] | None) -> dict:
    """One process's part of ``train``: all of it, outside of a data-parallel run."""
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    # The run directory always holds Hydra's files (.hydra/, the log) before the CSV logger starts.
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")
    # Evaluation metrics are summed over the ranks before they are logged (SeqICLModule._eval_end).
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*when logging on epoch level in distributed")
    quiet_lightning_console()
    import_modules(c.get("imports"))
    pl.seed_everything(int(c["seed"]), workers=True, verbose=False)
    task = build_task(c["task"])
    ckpt_path = c.get("ckpt_path")
    resume_step = read_checkpoint_step(ckpt_path) if ckpt_path is not None else None
    earlier_metrics = _earlier_metrics(out / "metrics.csv", resume_step)
    data = TaskDataModule(task, seed=int(c["seed"]), **c["data"])
    model = build_checked_model(c, task, make_model)
    max_steps = int(c["trainer"]["max_steps"])
    module = SeqICLModule(model, task, c["optim"], c["scheduler"], max_steps, run_config=c)
    trainer_cfg = dict(c["trainer"])
    trainer_cfg.setdefault("enable_progress_bar", c["callbacks"].get("progress_bar", "rich") not in ("none", None))
    trainer = pl.Trainer(**trainer_cfg, callbacks=_callbacks(c["callbacks"], out, task),
                         logger=_loggers(c["logger"], out), default_root_dir=str(out),
                         plugins=[AtomicCheckpointIO()])
    module.divergence_check_every = max(1, int(trainer_cfg.get("log_every_n_steps") or 50))
    if c.get("compile") and trainer_cfg.get("accelerator") in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        module.compile_training(mode=None if c["compile"] is True else c["compile"])
    start = time.time()
    base = {"task": task.name, "task_params": task.params(), "model": describe_model(c["model"]),
            "params": count_parameters(model), "state_size": state_size(model, getattr(task, "seq_len", 0)),
            "seed": int(c["seed"]), "git_sha": git_sha()}
    if "gpu" in (c.get("placement") or {}):
        base["placement"] = {"gpu": c["placement"]["gpu"], "slot": c["placement"]["slot"]}
    try:
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    except Diverged as e:
        results = {"status": "diverged", **base, "steps": e.step, "error": str(e),
                   "wall_time_s": round(time.time() - start, 2), "val": {}, "test": {}}
        if trainer.is_global_zero:
            write_results(out, results)
        raise
    fit_time = time.time() - start
    ckpt_cb = trainer.checkpoint_callback
    best = ckpt_cb.best_model_path if ckpt_cb is not None and ckpt_cb.best_model_path else None
    if earlier_metrics and trainer.is_global_zero:
        _prepend_metrics(out / "metrics.csv", earlier_metrics)
    trainer.validate(module, datamodule=data, ckpt_path=best, verbose=False)
    trainer.test(module, datamodule=data, ckpt_path=best, verbose=False)
    results = {
        "status": "completed",
        **base,
        "steps": int(trainer.global_step),
        "wall_time_s": round(time.time() - start, 2),
        "train_time_s": round(fit_time, 2),
        "train_steps_per_s": _steady_rate(trainer),
        "best_checkpoint": best,
        "val": module.final_metrics.get("val", {}),
        "test": module.final_metrics.get("test", {}),
        "selection_metric": task.selection_metric,
        "accuracy_averaging": "micro (correct / scored positions)",
    }
    if trainer.is_global_zero:
        write_results(out, results)
    return results


def _steady_rate(trainer: pl.Trainer) -> float | None:
    """Training steps per second after the first steps, validation excluded (``Throughput``)."""
    rate = next((cb.steps_per_s for cb in trainer.callbacks if isinstance(cb, Throughput)), None)
    return None if rate is None else round(rate, 2)


def read_checkpoint_step(path) -> int:
    """The global step of a checkpoint; a missing, truncated or foreign file is a ConfigError."""
    if not Path(path).is_file():
        raise ConfigError(f"ckpt_path={path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise ConfigError(f"ckpt_path={path} is not a readable checkpoint ({type(e).__name__}); "
                          "it may be truncated or corrupt") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise ConfigError(f"ckpt_path={path} is not a Lightning checkpoint of a seqicl run")
    return int(ckpt["global_step"])


def _earlier_metrics(path: Path, resume_step: int | None) -> list[dict]:
    """Rows of a killed run's metrics.csv up to the step it resumes from (the logger restarts the file)."""
    if resume_step is None or not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("step") and int(float(row["step"])) < resume_step]


def _prepend_metrics(path: Path, earlier: list[dict]) -> None:
    rows = []
    if path.is_file():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    keys = sorted(set().union(*earlier, *rows))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(earlier + rows)


def finished_results(out: Path, name: str = "results.json") -> dict | None:
    """The results (``out/name``) of a completed run or evaluation, or None."""
    path = out / name
    if path.exists():
        previous = json.loads(path.read_text())
        if previous.get("status") == "completed":
            return previous
    return None


def record_failure(out: Path, error: Exception, name: str = "results.json") -> str:
    """Record why a sweep's job did not complete (``out/name`` status, error.log); return the status.

    A diverged run has already written its results.json; only a failure is recorded here.
    """
    status = "diverged" if isinstance(error, Diverged) else "failed"
    line = f"{type(error).__name__}: {error}".splitlines()[0]
    if status == "failed" or not (out / name).exists():
        out.mkdir(parents=True, exist_ok=True)
        write_results(out, {"status": status, "error": line}, name)
        (out / "error.log").write_text("".join(traceback.format_exception(error)))
    return status


def write_results(out: Path, results: dict, name: str = "results.json") -> None:
    """Write ``out/name`` (results.json) atomically (a reader never sees half a file)."""
    tmp = out / f".{name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, out / name)
