"""Running the command-line entry points in a subprocess, as a user would; loading the scripts."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAST = ["trainer=debug", "callbacks.progress_bar=none", "data.val_size=64", "data.test_size=64",
        "data.batch_size=16", "model.d_model=32", "model.n_layers=1"]


def run_module(module: str, *args: str, timeout: int = 300, env: dict | None = None):
    """``python -m <module> args`` from the repository root; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def load_script(relative_path: str):
    """The module of a script outside the package (``scripts/...py``, ``benchmarks/...py``)."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
