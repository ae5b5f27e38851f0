"""Check every layer's device path against its float64 CPU reference, forward and backward.

    python benchmarks/gpu_check.py [--device cuda] [--seq-len 256] [--d-model 64] [--fla-d-model 256]
        [--layers gla ...] [--out FILE]

Prints a table of relative errors (fp32 and bf16) and the path each forward took (fla or torch,
for the layers that record one) and writes JSON after every row (a run cut short keeps what it
measured); exits 1 if any exceeds its dtype's tolerance. Every layer runs at --d-model with its
default dispatch; the layers with fla kernels run again at --fla-d-model in bf16 with
``impl=fla``, where their default head sizes are ones the kernels take (at d_model 64 GLA's key
size is 8, which they do not) and including the kernels ``impl=auto`` does not take yet.
Sliding-window attention runs again with ``impl=flex`` (FlexAttention). A kernel that fla itself
refuses on this GPU is reported as refused, not as a failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import torch

from seqicl import layers
from seqicl.errors import ConfigError
from seqicl.layers import fla_ops
from seqicl.layers.fastpath_check import compare_to_reference


def overrides(name: str, seq_len: int) -> dict:
    return {"window_size": max(2, seq_len // 4)} if name == "sliding_window_attention" else {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--fla-d-model", type=int, default=256, help="d_model of the second run of the layers with "
                                                                 "fla kernels (0: none)")
    ap.add_argument("--layers", nargs="+", default=None, help="default: every registered layer")
    ap.add_argument("--out", default="benchmarks/results/gpu_check.json")
    args = ap.parse_args()
    rows = []
    names = args.layers or layers.available()
    cases = [(name, args.d_model, dtype, {}) for name in names for dtype in (torch.float32, torch.bfloat16)]
    if "sliding_window_attention" in names:
        cases += [("sliding_window_attention", args.d_model, dtype, {"impl": "flex"})
                  for dtype in (torch.float32, torch.bfloat16)]
    if args.fla_d_model:
        cases += [(name, args.fla_d_model, torch.bfloat16, {"impl": "fla"}) for name in names if name in fla_ops.LAYERS]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{'layer':26s} {'d':>4s} {'dtype':8s} {'path':5s} {'forward':>9s} {'grad x':>9s} {'grad θ':>9s}  ok")
    for name, d_model, dtype, extra in cases:
        kw = {**overrides(name, args.seq_len), **extra}
        try:
            r = compare_to_reference(name, args.device, dtype, seq_len=args.seq_len, d_model=d_model, **kw)
        except ConfigError as e:
            r = {"layer": name, "dtype": str(dtype).replace("torch.", ""), "d_model": d_model, "path": None,
                 "refused": str(e), "ok": True}
        except Exception as e:  # noqa: BLE001 - report every layer, then fail
            r = {"layer": name, "dtype": str(dtype).replace("torch.", ""), "d_model": d_model, "path": None,
                 "error": f"{type(e).__name__}: {e}".splitlines()[0], "ok": False}
        r["impl"] = extra.get("impl", "auto")
        rows.append(r)
        head = f"{name:26s} {d_model:4d} {r['dtype']:8s} {r['path'] or extra.get('impl', '-'):5s}"
        if "error" in r:
            print(f"{head} ERROR {r['error']}", flush=True)
        elif "refused" in r:
            print(f"{head} refused: {r['refused']}", flush=True)
        else:
            print(f"{head} {r['forward']:9.2e} {r['grad_input']:9.2e} "
                  f"{r['grad_params']:9.2e}  {'ok' if r['ok'] else 'FAIL'}", flush=True)
        out.write_text(json.dumps({"date": date.today().isoformat(), "device": device,
                                              "torch": torch.__version__, "rows": rows}, indent=2))
    failed = [f"{r['layer']}/{r['d_model']}/{r['dtype']}" for r in rows if not r["ok"]]
    print(f"{len(rows) - len(failed)}/{len(rows)} ok" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
