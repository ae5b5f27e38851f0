"""The LightningModule: loss on scored positions, micro-averaged accuracy, AdamW + schedule."""

from __future__ import annotations

import functools
import math

import lightning.pytorch as pl
import torch
from torch import nn

from seqicl.errors import ConfigError
from seqicl.models.lm import weight_decay_split
from seqicl.training.objectives import objective_fn

SCHEDULES = ("cosine", "linear", "constant")


def lr_lambda(name: str, warmup_steps: int, total_steps: int, min_lr_ratio: float):
    """Multiplier of the peak learning rate at each step: linear warm-up, then the schedule."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if name == "cosine" else 1 - progress
        return min_lr_ratio + (1 - min_lr_ratio) * shape

    return f


class Diverged(RuntimeError):
    """The training loss became non-finite."""

    def __init__(self, step: int):
        super().__init__(f"training diverged: the loss became non-finite at step {step}")
        self.step = step


class SeqICLModule(pl.LightningModule):
    """Trains ``model`` on ``task`` with the task's objective; evaluates with micro-averaged metrics.

    Evaluation statistics are (sum, count) pairs accumulated over the whole split, reduced
    across processes, and divided once at the end of the split.
    """

    def __init__(self, model: nn.Module, task, optim: dict, scheduler: dict, max_steps: int,
                 run_config: dict | None = None):
        super().__init__()
        self.model, self.task = model, task
        self.run_config = run_config
        # Layers that expose an auxiliary loss after forward (e.g. moe_mlp's load balancing).
        self._aux_modules = [m for m in model.modules() if hasattr(m, "aux_loss")]
        self.objective = objective_fn(task.objective)
        self.optim_cfg, self.sched_cfg, self.max_steps = dict(optim), dict(scheduler), max_steps
        self._sums: dict[str, dict] = {}
        self.final_metrics: dict[str, dict] = {}
        self.divergence_check_every = 50
        self._first_bad_step: torch.Tensor | None = None
        self._train_loss = functools.partial(self.objective, self.model, task=task, train=True)
        self._cudagraphs = False

    def compile_training(self, mode: str | None = None, **kwargs) -> None:
        """Compile the training loss, the model's forward through the objective (scored positions,
        loss, statistics), with ``torch.compile(mode=mode, **kwargs)``; its backward follows.

        The objective reaches the model through its own methods (``hidden``, ``head``), so
        compiling the model's ``forward`` alone would leave the training step uncompiled.
        ``mode="reduce-overhead"`` records CUDA graphs: each step is then marked as a new one, so
        the graphs may reuse their output buffers. The model itself stays unwrapped (checkpoints
        keep their parameter names); evaluation runs uncompiled.
        """
        self._train_loss = torch.compile(self._train_loss, mode=mode, **kwargs)
        self._cudagraphs = mode == "reduce-overhead"

    def forward(self, *args):
        return self.model(*args)

    def training_step(self, batch, batch_idx):
        if self._cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss, stats = self._train_loss(batch)
        aux = [m.aux_loss for m in self._aux_modules if getattr(m, "aux_loss", None) is not None]
        if aux:
            loss = loss + sum(aux)
        self._watch_divergence(loss)
        # Lightning writes step metrics every log_every_n_steps steps only (when (step + 1) is a
        # multiple of it); logging on the other steps would cost host time for values never written.
        if (self.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0:
            # In a data-parallel run, rank 0's share of the batch (syncing every step would cost a barrier).
            self.log("train/loss", loss, prog_bar=True)
            if "loss_targets" not in batch and "accuracy" in stats:
                s, c = stats["accuracy"]
                self.log("train/accuracy", s / c.clamp(min=1))
        return loss

    def _watch_divergence(self, loss: torch.Tensor) -> None:
        """Record the first step with a non-finite loss; raise ``Diverged`` at the next check.

        The flag stays on the device, so only every ``divergence_check_every`` steps does the
        host wait for it.
        """
        bad = ~torch.isfinite(loss.detach())
        if self._first_bad_step is None:
            self._first_bad_step = torch.full((), -1, device=loss.device, dtype=torch.long)
        # A fill, not a host-to-device copy of the step number: the copy would wait for the GPU.
        step = torch.full_like(self._first_bad_step, self.global_step)
        self._first_bad_step = torch.where(bad & (self._first_bad_step < 0), step, self._first_bad_step)
        if loss.device.type == "cpu" or self.global_step % self.divergence_check_every == 0:
            self.check_divergence()

    def check_divergence(self) -> None:
        """Raise ``Diverged`` at the first non-finite loss; in a data-parallel run, on every rank at
        the same check (the earliest bad step of any rank), so no rank is left waiting for the others."""
        first = self._first_bad_step
        if first is None:
            return
        if self._trainer is not None and self.trainer.world_size > 1:
            never = torch.iinfo(torch.long).max
            first = self.trainer.strategy.reduce(torch.where(first < 0, never, first), reduce_op="min")
            first = torch.where(first == never, -1, first)
        if int(first) >= 0:
            raise Diverged(int(first))

    def on_validation_start(self):
        self.check_divergence()

    def on_train_end(self):
        self.check_divergence()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_config is not None:
            checkpoint["seqicl_config"] = self.run_config
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(),
                                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("rng_states")
        if states is not None:
            torch.set_rng_state(states["torch"])
            if states["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])

    def _eval_step(self, batch, prefix: str):
        _, stats = self.objective(self.model, batch, self.task, train=False)
        acc = self._sums.setdefault(prefix, {})
        for name, (s, c) in stats.items():
            s, c = s.detach().double(), torch.as_tensor(c, device=s.device).double()
            if name in acc:
                acc[name][0].add_(s)
                acc[name][1].add_(c)
            else:
                acc[name] = [s.clone(), c.clone()]

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def _eval_end(self, prefix: str) -> None:
        acc = self._sums.pop(prefix, None)
        if not acc:
            return
        metrics, counts = {}, {}
        for name, (s, c) in acc.items():
            s = self.trainer.strategy.reduce(s, reduce_op="sum")
            c = counts[name] = self.trainer.strategy.reduce(c, reduce_op="sum")
            value = s / c.clamp(min=1)
            if value.dim() == 0:
                metrics[name] = float(value)
                self.log(f"{prefix}/{name}", metrics[name], prog_bar=name == self.task.selection_metric)
            else:
                metrics[name] = [float(v) if n > 0 else None for v, n in zip(value.tolist(), c.tolist())]
        if "accuracy" in counts:
            metrics["scored"] = int(counts["accuracy"].sum())
        self.final_metrics[prefix] = metrics
    def on_validation_epoch_end(self):
        self._eval_end("val")

    def on_test_epoch_end(self):
        self._eval_end("test")

    def _grad_scaler(self):
        if self._trainer is None:
            return None
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip by the global norm with the foreach kernels, without a host sync.

        Lightning's own path refuses fused optimizers even when no gradient scaler is involved;
        with a scaler (fp16) its path, which unscales first, is used.
        """
        if not gradient_clip_val or self._grad_scaler() is not None or gradient_clip_algorithm not in (None, "norm"):
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def configure_optimizers(self):
        cfg = self.optim_cfg
        if cfg.get("name", "adamw") != "adamw":
            raise ConfigError(f"optim.name must be adamw, got {cfg.get('name')!r}")
        decay, no_decay = weight_decay_split(self.model, bool(cfg.get("decay_vectors", False)))
        groups = [{"params": decay, "weight_decay": cfg["weight_decay"]},
                  {"params": no_decay, "weight_decay": 0.0}]
        # Under a gradient scaler (fp16) a fused optimizer unscales inside its step, after clipping
        # would have seen scaled gradients; without one (bf16, fp32) clipping is done here, see
        # configure_gradient_clipping.
        fused = bool(cfg.get("fused")) and self.device.type == "cuda" and not self._grad_scaler()
        opt = torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"],
                                fused=fused or None)
        sc = self.sched_cfg
        if sc["name"] not in SCHEDULES:
            raise ConfigError(f"scheduler.name must be one of {', '.join(SCHEDULES)}, got {sc['name']!r}")
        warmup = sc.get("warmup_steps")
        if warmup is None:
            warmup = int(sc.get("warmup_fraction", 0.0) * self.max_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(sc["name"], max(1, int(warmup)), self.max_steps, sc["min_lr_ratio"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
