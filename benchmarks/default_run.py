"""Time the embedded default run (``python -m train``) over a few seeds.

    python benchmarks/default_run.py --seeds 0 1 2 --out benchmarks/results/default_run.json

Prints a table (seed, steps, wall time, val/test accuracy) and writes the rows as JSON.
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

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/default_run.json"))
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.time()
            proc = subprocess.run([sys.executable, "-m", "train", f"seed={seed}", "callbacks.progress_bar=none",
                                   f"hydra.run.dir={tmp}/run", *args.overrides], cwd=ROOT, capture_output=True,
                                  text=True)
            command_s = time.time() - start
            if proc.returncode:
                sys.exit(proc.stderr)
            r = json.loads((Path(tmp) / "run/results.json").read_text())
        rows.append({"seed": seed, "steps": r["steps"], "command_s": round(command_s, 1),
                     "train_s": r["train_time_s"], "val_accuracy": r["val"]["accuracy"],
                     "test_accuracy": r["test"]["accuracy"]})
        print(f"seed {seed}: {r['steps']:5d} steps  {command_s:6.1f} s  val {r['val']['accuracy']:.4f}  "
              f"test {r['test']['accuracy']:.4f}", flush=True)
    meta = {"date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
            "cpus": torch.get_num_threads(), "torch": torch.__version__, "overrides": args.overrides}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "runs": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
