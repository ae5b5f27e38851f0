"""Examples per second of every task's generator, and of zoology's 100k-example MQAR set.

    PYTHONPATH=src python benchmarks/data_generation.py [--device cpu|cuda] [--tasks mqar dfa ...]
        [--n 10000] [--repeats 3] [--threads 2] [--no-headline] [--out FILE]

Each task is built from ``configs/task/<name>.yaml`` (``--tasks`` also takes presets such as
``mqar_zoology_256``) and timed on ``sample(n)``: the median of ``--repeats`` draws, each with
its own seed, after a small warm-up draw. With ``--device cuda`` every task is timed on the CPU
and on the GPU. The headline case is zoology's MQAR set (``mqar_zoology_256``: seq_len 256,
16 key-value pairs, vocabulary 8192): ``make_splits`` with 100k training, 1k validation and 1k
test examples, and one ``sample(100_000)``; the bar is 2 s on a 2-core CPU (``--threads 2``).

Prints a table (task, case, device, n, seconds, examples/s) and writes the rows as JSON with
the date, machine, torch version, thread count and load average.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

import seqicl.tasks as tasks
from common import ROOT, describe, machine, print_table, write_json

HEADLINE = "mqar_zoology_256"
HEADLINE_SPLITS = (100_000, 1_000, 1_000)
BAR_S = 2.0


def task_config(name: str) -> tuple[dict, str]:
    """The task's config file as a dict, and where it came from (a registered task without a
    file falls back to its constructor defaults)."""
    path = ROOT / "configs" / "task" / f"{name}.yaml"
    if path.exists():
        return yaml.safe_load(path.read_text()), str(path.relative_to(ROOT))
    return {"name": name, **tasks.parameters(name)}, "constructor defaults"


def timed(fn, repeats: int, device: str) -> list[float]:
    """Wall-clock seconds of ``fn(repeat)`` for each repeat (the GPU drained before and after)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for r in range(repeats):
        sync()
        start = time.perf_counter()
        fn(r)
        sync()
        times.append(time.perf_counter() - start)
    return times


def row(task: str, case: str, device: str, n: int, source: str, fn, repeats: int, warm_up=None) -> dict:
    """One timed case; an exception becomes the row's ``error`` and the benchmark goes on."""
    out = {"task": task, "case": case, "device": device, "n": n, "config": source}
    try:
        if warm_up is not None:
            warm_up()
        times = timed(fn, repeats, device)
    except Exception as e:  # noqa: BLE001 - report every task, then go on
        return {**out, "error": f"{type(e).__name__}: {e}".splitlines()[0]}
    seconds = statistics.median(times)
    return {**out, "seconds": seconds, "examples_per_s": n / seconds, "times_s": times}


def sample_rows(name: str, n: int, repeats: int, devices: list[str]) -> list[dict]:
    cfg, source = task_config(name)
    try:
        task = tasks.build(**cfg)
    except Exception as e:  # noqa: BLE001
        return [{"task": name, "case": "sample", "device": d, "n": n, "config": source,
                 "error": f"{type(e).__name__}: {e}".splitlines()[0]} for d in devices]
    return [row(name, "sample", device, n, source, lambda r, d=device: task.sample(n, seed=r, device=d), repeats,
                warm_up=lambda d=device: task.sample(min(n, 64), seed=repeats, device=d))
            for device in devices]


def headline_rows(repeats: int, devices: list[str]) -> list[dict]:
    """make_splits (on the CPU, where training data are drawn) and one sample(100k) per device."""
    cfg, source = task_config(HEADLINE)
    task = tasks.build(**cfg)
    train, val, test = HEADLINE_SPLITS
    rows = [row(HEADLINE, "make_splits(100k, 1k, 1k)", "cpu", train + val + test, source,
                lambda r: tasks.make_splits(task, train, val, test, seed=r), repeats,
                warm_up=lambda: task.sample(64, seed=repeats))]
    rows += [row(HEADLINE, "sample(100k)", device, train, source,
                 lambda r, d=device: task.sample(train, seed=r, device=d), repeats,
                 warm_up=lambda d=device: task.sample(64, seed=repeats, device=d))
             for device in devices]
    for r in rows:
        if "seconds" in r and r["device"] == "cpu":
            r["bar_s"] = BAR_S
            r["within_bar"] = r["seconds"] < BAR_S
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: time every task on the CPU and on the GPU")
    ap.add_argument("--tasks", nargs="+", default=None, help="task config names (default: every registered task)")
    ap.add_argument("--n", type=int, default=10_000, help="examples per draw of the per-task rows")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-headline", action="store_true", help="skip the 100k-example MQAR cases")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/data_generation.json"))
    args = ap.parse_args()
    names = args.tasks or tasks.available()
    known = set(tasks.available()) | {f.stem for f in (ROOT / "configs" / "task").glob("*.yaml")}
    unknown = [n for n in names if n not in known]
    if unknown:
        ap.error(f"unknown task {unknown[0]!r}; choose among {', '.join(sorted(known))}")
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "cuda" else ["cpu"]
    meta = machine(args.device)
    print(describe(meta), flush=True)

    rows = []
    for name in names:
        rows += sample_rows(name, args.n, args.repeats, devices)
        print(" ".join(f"{name} [{r['device']}] " + (f"{r['seconds']:.3f} s" if "seconds" in r else r["error"])
                       for r in rows[-len(devices):]), flush=True)
    if not args.no_headline:
        rows += headline_rows(args.repeats, devices)

    print()
    print_table(rows, [("task", "task", ""), ("case", "case", ""), ("device", "device", ""), ("n", "n", ","),
                       ("seconds", "seconds", ".4f"), ("examples/s", "examples_per_s", ",.0f"), ("error", "error", "")])
    for r in rows:
        if "within_bar" in r:
            verdict = "within" if r["within_bar"] else "OVER"
            caveat = "" if meta["threads"] == 2 else "; the bar is for 2"
            print(f"{r['case']} [{r['device']}]: {r['seconds']:.2f} s, {verdict} the {BAR_S:g} s bar "
                  f"({meta['threads']} threads{caveat})")
    settings = {"device": args.device, "n": args.n, "repeats": args.repeats, "headline_splits": HEADLINE_SPLITS}
    write_json(Path(args.out), meta, settings, rows)


if __name__ == "__main__":
    main()
