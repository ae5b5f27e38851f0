"""Forward + backward time and peak memory of every registered layer.

    PYTHONPATH=src python benchmarks/layers.py [--device cpu|cuda] [--batch 8] [--seq 256 1024]
        [--d-model 128] [--layers attention lru ...] [--repeats 5] [--threads N] [--out FILE]

Every layer (sequence and state mixers) is built with its default hyper-parameters for
``max_len = seq`` (a sliding window wider than the sequence is cut to it), in training mode,
and timed on one forward and backward pass of a (batch, seq, d_model) input: the median of
``--repeats`` passes after ``--warmup`` passes. A layer with an ``impl`` hyper-parameter is
timed twice: its default dispatch and ``impl=torch`` (the written-out reference); a layer that
records the path its forward took (``fla`` or ``torch``, the linear-attention family) has it in
its row.

- CPU: float32, wall-clock time. Each (layer, seq) runs in its own process; its peak memory is
  the rise of the process's resident set above what it holds once the layer and the inputs are
  built (after one pass at batch 1 and at most 64 positions has loaded the libraries' lazily
  initialised parts). The kernel's high-water mark (VmHWM) is reset to the current resident
  set before the first pass (``/proc/self/clear_refs``; later passes reuse memory the allocator
  kept) and read after the last, so neither the imports nor an earlier layer's peak can hide or
  inflate it. ``getrusage``'s ru_maxrss cannot be reset, so it is only the fallback where
  clear_refs is not available (the JSON names the method used).
- CUDA: bf16 autocast (float32 weights, as ``trainer=gpu`` trains), timed with CUDA events
  after the warm-up passes (kernels loaded and tuned); peak memory is
  ``torch.cuda.max_memory_allocated`` during the timed passes minus what was allocated before
  them (layer, inputs, no gradients).

Each row also gives the time relative to ``attention`` (default dispatch) at the same size, and
flags layers more than 20x slower. A layer that fails at a size gets the error in its row.
Prints a table and writes JSON with the date, machine, torch version and thread count.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import ROOT, describe, machine, print_table, write_json
from seqicl import layers
from seqicl.layers.fla_ops import AUTO_UNCHECKED, fast_path_name

REFERENCE = "attention"
FLAG_RATIO = 20.0
VOCAB = 64  # token ids for layers that read them (ngram)


def variants(name: str, device: str) -> list[dict]:
    """Overrides to time: the default dispatch, the reference where the layer has ``impl``, and
    on CUDA the opt-in fast paths (FlexAttention for sliding-window attention; the fla kernels
    that ``impl=auto`` does not take yet)."""
    impl = layers.defaults(name).get("impl")
    out = [{}] + ([{"impl": "torch"}] if impl is not None and impl != "torch" else [])
    if device == "cuda" and name == "sliding_window_attention":
        out.append({"impl": "flex"})
    if device == "cuda" and name in AUTO_UNCHECKED:
        out.append({"impl": "fla"})
    return out


def fit_to_length(name: str, seq: int) -> dict:
    """Hyper-parameters that must not exceed the sequence length, cut to it."""
    window = layers.defaults(name).get("window_size")
    return {"window_size": seq} if isinstance(window, int) and window > seq else {}


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]


def overrides(spec: dict) -> dict:
    return {**fit_to_length(spec["layer"], spec["seq"]), **spec["variant"]}


def build(spec: dict, device: str):
    torch.manual_seed(0)
    layer = layers.build(spec["layer"], d_model=spec["d_model"], max_len=spec["seq"], **overrides(spec))
    layer = layer.to(device).train()
    shape = (spec["batch"], spec["seq"], spec["d_model"])
    x = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape, device=device)
    tokens = torch.randint(0, VOCAB, shape[:2], device=device)
    return layer, x, grad, tokens


def make_step(layer, x, grad, tokens, device: str):
    """One forward and backward pass (gradients from the previous pass dropped first)."""
    needs_tokens = getattr(layer, "needs_tokens", False)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else contextlib.nullcontext()

    def step():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        with autocast:
            y = layer(x, tokens=tokens) if needs_tokens else layer(x)
        y.backward(grad.to(y.dtype))

    return step


# ---------------------------------------------------------------------------------------------
# CPU: one process per measurement


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_cpu_here(spec: dict) -> dict:
    """Time and peak memory of one (layer, seq) on the CPU, in this process."""
    torch.set_num_threads(spec["threads"])
    make_step(*build({**spec, "batch": 1, "seq": min(spec["seq"], 64)}, "cpu"), "cpu")()
    layer, x, grad, tokens = build(spec, "cpu")
    step = make_step(layer, x, grad, tokens, "cpu")
    gc.collect()
    if _reset_peak_rss():
        method, baseline = "VmHWM after clear_refs", _status_kib("VmRSS")
        peak = lambda: _status_kib("VmHWM")  # noqa: E731
    else:
        method = "ru_maxrss (not resettable: a lower bound)"
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # noqa: E731
    for _ in range(spec["warmup"]):
        step()
    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return {"times_ms": times, "peak_mib": (peak() - baseline) / 1024, "memory_method": method,
            "path": fast_path_name(layer)}


def measure_cpu(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    if proc.returncode:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        return {"error": f"worker failed ({proc.returncode}): {lines[-1]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker(spec_json: str) -> None:
    try:
        result = measure_cpu_here(json.loads(spec_json))
    except Exception as e:  # noqa: BLE001 - the parent records it in the row
        result = {"error": error_text(e)}
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# CUDA: in this process


def measure_cuda(spec: dict) -> dict:
    try:
        layer, x, grad, tokens = build(spec, "cuda")
        step = make_step(layer, x, grad, tokens, "cuda")
        for _ in range(spec["warmup"]):
            step()
        x.grad = None
        layer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(spec["repeats"])]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize()
        return {"times_ms": [s.elapsed_time(e) for s, e in events],
                "peak_mib": (torch.cuda.max_memory_allocated() - baseline) / 2**20,
                "memory_method": "torch.cuda.max_memory_allocated", "path": fast_path_name(layer)}
    except Exception as e:  # noqa: BLE001 - record it in the row and go on
        return {"error": error_text(e)}
    finally:
        layer = x = grad = tokens = step = None  # free this size's tensors before the next one is built
        gc.collect()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", nargs="+", default=None, help=f"default: every registered layer ({REFERENCE} is "
                                                              "always timed, as the reference)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3, help="untimed passes before the timed ones")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed to one CPU measurement")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/layers_<device>.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return
    names = args.layers or layers.available()
    unknown = [n for n in names if n not in layers.available()]
    if unknown:
        ap.error(f"unknown layer {unknown[0]!r}; choose among {', '.join(layers.available())}")
    names = [REFERENCE] + [n for n in names if n != REFERENCE]
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = machine(args.device)
    print(describe(meta), flush=True)

    settings = {"device": args.device, "dtype": "bf16 autocast" if args.device == "cuda" else "float32",
                "batch": args.batch, "seq": args.seq, "d_model": args.d_model, "repeats": args.repeats,
                "warmup": args.warmup, "pass": "forward + backward, training mode"}
    out = args.out or ROOT / f"benchmarks/results/layers_{args.device}.json"
    rows, reference_ms = [], {}
    for seq in args.seq:
        for name in names:
            for variant in variants(name, args.device):
                spec = {"layer": name, "variant": variant, "seq": seq, "batch": args.batch, "d_model": args.d_model,
                        "repeats": args.repeats, "warmup": args.warmup, "threads": torch.get_num_threads()}
                result = measure_cuda(spec) if args.device == "cuda" else measure_cpu(spec, args.timeout)
                row = {"layer": name, "variant": " ".join(f"{k}={v}" for k, v in variant.items()) or "default",
                       "kind": layers.kind(name), "batch": args.batch, "seq": seq, "d_model": args.d_model,
                       "overrides": overrides(spec), **result}
                if "times_ms" in result:
                    row["ms"] = statistics.median(result["times_ms"])
                    if name == REFERENCE and not variant:
                        reference_ms[seq] = row["ms"]
                    if seq in reference_ms:
                        row["vs_attention"] = row["ms"] / reference_ms[seq]
                        row["over_20x"] = row["vs_attention"] > FLAG_RATIO
                        if row["over_20x"]:
                            row["flag"] = f">{FLAG_RATIO:g}x"
                rows.append(row)
                print(f"{name:26s} {row['variant']:11s} seq {seq:5d}  "
                      + (f"{row['ms']:10.2f} ms  {row['peak_mib']:9.1f} MiB" if "ms" in row else row["error"]),
                      flush=True)
                write_json(out, meta, settings, rows, announce=False)  # a run cut short keeps what it measured

    print()
    print_table(rows, [("layer", "layer", ""), ("variant", "variant", ""), ("path", "path", ""), ("kind", "kind", ""),
                       ("seq", "seq", "d"), ("ms", "ms", ".2f"), ("peak MiB", "peak_mib", ".1f"),
                       (f"x {REFERENCE}", "vs_attention", ".2f"), ("flag", "flag", ""), ("error", "error", "")])
    flagged = sorted({f"{r['layer']} ({r['variant']})" for r in rows if r.get("over_20x")})
    if flagged:
        print(f"over {FLAG_RATIO:g}x {REFERENCE}: {', '.join(flagged)}")
    write_json(out, meta, settings, rows)


if __name__ == "__main__":
    main()
