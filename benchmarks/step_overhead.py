"""Where a training step's time goes: the seed-000 MQAR recipe in plain PyTorch loops.

    python benchmarks/step_overhead.py [--steps 300] [--device cuda]

Times the same model, objective and optimiser as ``python -m train`` in loops that add one
piece at a time (data made on the device; data from the CPU stream; gradient clipping; the
divergence watch), so the difference to the Lightning loop (``benchmarks/train_speed.py``) is
visible. Prints steps/s per variant and writes JSON.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from datetime import date
from pathlib import Path

import torch

import seqicl.tasks as tasks
from seqicl.models import TokenLM
from seqicl.tasks.datamodule import TrainBatches
from seqicl.tasks.splits import batch_to
from seqicl.training.objectives import cross_entropy


def loop(steps: int, device: str, data: str, clip: bool, compiled: bool) -> float:
    torch.manual_seed(0)
    task = tasks.build("mqar", vocab_size=8192, seq_len=64, num_kv_pairs=8)
    model = TokenLM(8192, 64, d_model=128, n_layers=2, mixer={"name": "attention", "n_heads": 2},
                    state_mixer="mlp").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=not clip and device == "cuda")
    stream = TrainBatches(task, 256, seed=0, steps_per_epoch=10**9, device=device if data == "device" else "cpu")
    fixed = batch_to(task.sample(256, seed=1), device) if data == "fixed" else None
    it = iter(stream)
    loss_fn = functools.partial(cross_entropy, model, task=task, train=True)
    if compiled:
        loss_fn = torch.compile(loss_fn)

    def step():
        batch = fixed if fixed is not None else batch_to(next(it), device)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss, _ = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(20):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.time()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps / (time.time() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile variants")
    ap.add_argument("--out", default="benchmarks/results/step_overhead.json")
    args = ap.parse_args()
    variants = [("one fixed batch, fused AdamW", "fixed", False, False),
                ("fresh data made on the device", "device", False, False),
                ("fresh data from the CPU stream", "cpu", False, False),
                ("CPU stream + gradient clipping", "cpu", True, False)]
    if args.compile:
        variants += [("compiled, one fixed batch", "fixed", False, True),
                     ("compiled, CPU stream + clipping", "cpu", True, True)]
    rows = []
    for name, data, clip, compiled in variants:
        rate = loop(args.steps, args.device, data, clip, compiled)
        rows.append({"variant": name, "steps_per_s": round(rate, 1)})
        print(f"{name:34s} {rate:8.1f} steps/s", flush=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": date.today().isoformat(), "device": device, "rows": rows},
                                         indent=2))


if __name__ == "__main__":
    main()
