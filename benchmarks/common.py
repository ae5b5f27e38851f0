"""What the timing scripts share: the description of the machine, a text table, the JSON file."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict:
    """Date, machine, torch version and thread count, and the load average at the start.

    Timings taken while other jobs load the machine (a load average above the number of
    cores) are not comparable with those of a quiet machine.
    """
    meta = {"date": datetime.now().isoformat(timespec="seconds"), "machine": cpu_model(),
            "platform": platform.platform(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}
    if device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name(device)
        meta["cuda"] = torch.version.cuda
    return meta


def describe(meta: dict) -> str:
    gpu = f", {meta['gpu']}" if "gpu" in meta else ""
    load = " / ".join(f"{x:.1f}" for x in meta["load_average"])
    return (f"{meta['machine']}{gpu}; {meta['threads']} threads of {meta['cpus']} CPUs; torch {meta['torch']}; "
            f"load average {load}")


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Rows under headers; ``columns`` are (header, key, format spec). A missing value prints as '-',
    a column no row has is left out."""
    def cell(row, key, spec):
        value = row.get(key)
        return "-" if value is None else format(value, spec)

    columns = [c for c in columns if any(r.get(c[1]) is not None for r in rows)]
    cells = [[cell(r, key, spec) for _, key, spec in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (h, _, _) in enumerate(columns)]
    numeric = [spec != "" for _, _, spec in columns]
    just = lambda s, w, right: s.rjust(w) if right else s.ljust(w)  # noqa: E731
    print("  ".join(just(h, w, r) for (h, _, _), w, r in zip(columns, widths, numeric)).rstrip())
    for c in cells:
        print("  ".join(just(s, w, r) for s, w, r in zip(c, widths, numeric)).rstrip())


def write_json(path: str | Path, meta: dict, settings: dict, rows: list[dict], announce: bool = True) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "settings": settings, "rows": rows}, indent=2) + "\n")
    if announce:
        print(f"wrote {path}")
