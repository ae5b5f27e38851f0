"""Generated documentation matches the code and configs it describes."""

import difflib

from helpers import load_script


def test_parameter_table_is_up_to_date():
    param_counts = load_script("benchmarks/param_counts.py")
    generated = param_counts.render()
    committed = param_counts.OUTPUT.read_text() if param_counts.OUTPUT.exists() else ""
    diff = "".join(difflib.unified_diff(committed.splitlines(True), generated.splitlines(True),
                                        "docs/parameters.md", "generated", n=1))
    assert committed == generated, f"docs/parameters.md is out of date; run {param_counts.COMMAND}\n{diff}"

