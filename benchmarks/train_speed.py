"""Training speed of the seed-000 MQAR recipe through ``python -m train``.

    python benchmarks/train_speed.py [--trainer gpu] [--variants base device_data compile cuda_graphs ...]

For each variant: time to 98% validation accuracy (the recipe stops there), the test accuracy
of the best checkpoint, the whole command's wall time (start-up included), and throughput
(steps/s, tokens/s) over a fixed run of ``--steps`` steps with a single validation at the end:
averaged over the whole run (compilation included) and sustained after the first 50 steps
(``train_steps_per_s`` of results.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "base": [],
    "device_data": ["data.generate_on_device=true"],
    "compile": ["compile=true"],
    "cuda_graphs": ["compile=reduce-overhead"],
    "cuda_graphs_device_data": ["compile=reduce-overhead", "data.generate_on_device=true"],
}


def run(args: list[str]) -> tuple[dict, float]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        proc = subprocess.run([sys.executable, "-m", "train", "experiment=synthetics/mqar/seed000",
                               "callbacks.progress_bar=none", f"hydra.run.dir={tmp}/run", *args], cwd=ROOT,
                              capture_output=True, text=True)
        wall = time.time() - start
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        return json.loads((Path(tmp) / "run/results.json").read_text()), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trainer", default="gpu")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/train_speed.json"))
    args = ap.parse_args()
    rows = []
    for name in args.variants:
        extra = [f"trainer={args.trainer}", *VARIANTS[name]]
        r, wall = run(extra)
        t, _ = run([*extra, "callbacks.stop_at_accuracy=null", f"trainer.max_steps={args.steps}",
                    f"trainer.val_check_interval={args.steps}", "data.val_size=256", "data.test_size=256"])
        steps_s = t["steps"] / t["train_time_s"]
        steady = t["train_steps_per_s"]
        row = {"variant": name, "steps_to_98": r["steps"], "train_s_to_98": r["train_time_s"],
               "command_s": round(wall, 1), "val_accuracy": r["val"]["accuracy"],
               "test_accuracy": r["test"]["accuracy"], "steps": t["steps"], "steps_per_s": round(steps_s, 1),
               "steady_steps_per_s": steady, "steady_tokens_per_s": round(steady * 256 * 64)}
        rows.append(row)
        print(f"{name:12s} 98% at step {row['steps_to_98']:5d} in {row['train_s_to_98']:6.1f} s "
              f"(command {row['command_s']:6.1f} s), test {row['test_accuracy']:.4f}; "
              f"{row['steps_per_s']:7.1f} steps/s over {t['steps']} steps, {steady:7.1f} after step 50 "
              f"({row['steady_tokens_per_s']:,} tokens/s)", flush=True)
    try:
        import torch

        device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()
    except ImportError:
        device = platform.processor()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"date": date.today().isoformat(), "device": device,
                                          "trainer": args.trainer, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
