"""Generated documentation matches the code and configs it describes."""

import difflib
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parameter_table_is_up_to_date():
    param_counts = load_script("param_counts")
    generated = param_counts.render()
    committed = param_counts.OUTPUT.read_text() if param_counts.OUTPUT.exists() else ""
    diff = "".join(difflib.unified_diff(committed.splitlines(True), generated.splitlines(True),
                                        "docs/parameters.md", "generated", n=1))
    assert committed == generated, f"docs/parameters.md is out of date; run {param_counts.COMMAND}\n{diff}"

