"""Parameter counts of the default configs, so that iso-parameter comparisons are visible.

    PYTHONPATH=src python benchmarks/param_counts.py            # rewrites docs/parameters.md
    PYTHONPATH=src python benchmarks/param_counts.py --check    # exit 1 if it is out of date

Two tables: every registered layer alone with its default hyper-parameters at d_model 64, 128
and 256; and every experiment under ``configs/experiment/`` (composed with Hydra, its task and
model built as a run builds them) with its parameters and recurrent state size. The output
depends on the code and the configs only, and ``tests/test_docs.py`` checks that the committed
file is what this script writes.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import textwrap
from itertools import groupby
from pathlib import Path

from hydra import compose, initialize_config_dir

from seqicl import layers
from seqicl.models import build_model, count_parameters, state_size
from seqicl.training import build_task
from seqicl.training.config import validate

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
OUTPUT = ROOT / "docs" / "parameters.md"
WIDTHS = (64, 128, 256)
LAYER_LEN = 256  # max_len of the layers alone: the length of long-convolution filters
STATE_WIDTH = 128
COMMAND = "PYTHONPATH=src python benchmarks/param_counts.py"


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0]


def number(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    align = ["---:" if i in right else "---" for i in range(len(header))]
    return ["| " + " | ".join(r) + " |" for r in (header, align, *rows)]


# ---------------------------------------------------------------------------------------------
# layers


def layer_rows() -> tuple[list[list[str]], list[str], list[str]]:
    """Table rows, notes on builds that failed, and the layers whose count depends on max_len."""
    rows, failures, length_dependent = [], [], []
    for name in layers.available():
        counts = []
        for d in WIDTHS:
            try:
                counts.append(count_parameters(layers.build(name, d_model=d, max_len=LAYER_LEN)))
            except Exception as e:  # noqa: BLE001 - a layer that cannot take this width gets a note
                counts.append(None)
                failures.append(f"`{name}` at d_model {d}: {error_text(e)}")
        state = None
        try:
            layer = layers.build(name, d_model=STATE_WIDTH, max_len=LAYER_LEN)
            if layers.kind(name) == "state":
                state = 0
            elif hasattr(layer, "state_size"):
                state = int(layer.state_size(LAYER_LEN))
            longer = layers.build(name, d_model=STATE_WIDTH, max_len=2 * LAYER_LEN)
            if count_parameters(longer) != count_parameters(layer):
                length_dependent.append(name)
        except Exception:  # noqa: BLE001 - already noted above
            pass
        rows.append([f"`{name}`", layers.kind(name), *map(number, counts), number(state)])
    return rows, failures, length_dependent


# ---------------------------------------------------------------------------------------------
# experiments


def experiment_names() -> list[str]:
    """Experiment config names (``synthetics/mqar/transformer``); files and folders whose name
    starts with ``_`` are shared bases that the experiments include, not experiments."""
    root = CONFIGS / "experiment"
    names = []
    for path in root.rglob("*.yaml"):
        rel = path.relative_to(root).with_suffix("")
        if not any(part.startswith("_") for part in rel.parts):
            names.append(rel.as_posix())
    return sorted(names)


def describe_blocks(model) -> str:
    """The blocks' (mixer / state mixer) layers, runs of equal blocks written once with a count."""
    def name(module) -> str:
        return "—" if module is None else module.layer_name

    blocks = [f"{name(b.mixer)} / {name(b.state_mixer)}" for b in model.blocks]
    return ", ".join(k if n == 1 else f"{n} × {k}" for k, n in ((k, len(list(g))) for k, g in groupby(blocks)))


def experiment_row(name: str) -> tuple[list[str], str | None]:
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            c = validate(compose("train", overrides=[f"experiment={name}", "paths.output_dir=unused"]))
        task = build_task(c["task"])
        model = build_model(c["model"], task)
    except Exception as e:  # noqa: BLE001 - the table says which experiment does not build
        return [f"`{name}`", *["—"] * 6], f"`{name}`: {error_text(e)}"
    return [f"`{name}`", f"`{task.name}`", str(task.seq_len), str(c["model"]["d_model"]), describe_blocks(model),
            number(count_parameters(model)), number(state_size(model, task.seq_len))], None


# ---------------------------------------------------------------------------------------------


def paragraph(text: str) -> list[str]:
    return [*textwrap.wrap(text, 100, break_on_hyphens=False, break_long_words=False), ""]


def render() -> str:
    lines = ["# Parameter counts", ""]
    lines += paragraph(f"Generated by `{COMMAND}` from the code and configs of this tree; `tests/test_docs.py` "
                       "fails when this file is out of date. Do not edit it by hand: change the code or a config "
                       "and run the command again.")

    rows, failures, length_dependent = layer_rows()
    lines += ["## Layers", ""]
    lines += paragraph(f"Each registered layer alone (`layers.build(name, d_model, max_len={LAYER_LEN})`) with its "
                       "default hyper-parameters, those of `configs/layer/<name>.yaml`. *State* is the recurrent "
                       f"state a sequence mixer carries per sequence at inference after {LAYER_LEN} tokens at "
                       f"d_model {STATE_WIDTH} (`state_size({LAYER_LEN})`; attention's is its key-value cache, "
                       "which grows with the length); state mixers act on each position alone and carry none.")
    lines += table(["layer", "kind", *(f"d_model {d}" for d in WIDTHS), f"state (d_model {STATE_WIDTH})"], rows,
                   right={2, 3, 4, 5})
    lines.append("")
    if length_dependent:
        lines += paragraph(f"Counts that depend on `max_len` (here {LAYER_LEN}): "
                           + ", ".join(f"`{n}`" for n in length_dependent) + ".")
    if failures:
        lines += ["Not built:", "", *(f"- {f}" for f in failures), ""]

    exp_rows, exp_failures = [], []
    for name in experiment_names():
        row, failure = experiment_row(name)
        exp_rows.append(row)
        if failure:
            exp_failures.append(failure)
    lines += ["## Experiments", ""]
    lines += paragraph("Every experiment under `configs/experiment/` (names starting with `_` are shared bases, "
                       "not experiments), composed as `python -m train experiment=<name>` composes it, its task "
                       "and model built by `seqicl.training.build_task` and `seqicl.models.build_model`. *seq_len* "
                       "is the backbone's sequence length (x and y interleaved for regression and Boolean "
                       "prompts); *blocks* lists each block's sequence mixer / state mixer; *params* counts the "
                       "whole model, embeddings and read-out included; *state* is "
                       "`seqicl.models.state_size(model, seq_len)`, the recurrent state per sequence after "
                       "seq_len tokens (— where a mixer does not report it).")
    lines += table(["experiment", "task", "seq_len", "d_model", "blocks", "params", "state"], exp_rows,
                   right={2, 3, 5, 6})
    lines.append("")
    if exp_failures:
        lines += ["Not built:", "", *(f"- {f}" for f in exp_failures), ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUTPUT)
    ap.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = ap.parse_args()
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current == text:
            print(f"{args.out} is up to date")
            return 0
        sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                                   str(args.out), "generated"))
        print(f"{args.out} is out of date: run {COMMAND}")
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
