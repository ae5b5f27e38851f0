"""Run a named protocol: ``python -m sweep sweep=NAME [launcher=joblib] [--dry-run] [overrides]``.

``sweep=NAME`` picks ``configs/sweep/NAME.yaml`` (or ``sweep=path/to/protocol.yaml``); ``launcher=basic|joblib|submitit`` picks
``configs/launcher/``, whose settings follow (``n_jobs=8``; joblib's ``gpus=[0,1] runs_per_gpu=2``); ``sweep.KEY=VALUE`` changes the protocol (e.g. ``sweep.out_dir=...``,
``sweep.dry_run=true``; ``+sweep.grid.AXIS=[...]`` adds a grid axis, ``~sweep.grid.AXIS`` removes one); every other ``key=value`` is passed to each training run.
"""

from __future__ import annotations

import sys

from seqicl.cli import check_overrides, fail, select_layer_configs


def main(argv: list[str]) -> int:
    import yaml
    from rich.console import Console

    from seqicl.errors import ConfigError
    from seqicl.sweeps import engine
    from seqicl.sweeps.report import markdown_table, write_report

    name, launcher, n_jobs, dry = None, "basic", None, False
    sweep_overrides, forwarded, launcher_settings = [], [], {}
    for arg in argv:
        prefix, path = engine.split_prefix(arg)
        if arg in ("--dry-run", "-n"):
            dry = True
        elif arg.startswith("sweep="):
            name = arg.split("=", 1)[1]
        elif arg.startswith("launcher="):
            launcher = arg.split("=", 1)[1]
        elif arg.startswith("n_jobs="):
            n_jobs = int(arg.split("=", 1)[1])
        elif arg.split("=", 1)[0] in ("gpus", "runs_per_gpu"):
            key, _, value = arg.partition("=")
            launcher_settings[key] = yaml.safe_load(value)
        elif path.startswith("sweep."):
            sweep_overrides.append(prefix + path.removeprefix("sweep."))
        else:
            forwarded.append(arg)
    console = Console()
    try:
        if name is None:
            raise ConfigError(f"name a protocol with sweep=NAME; available: {', '.join(engine.available())}")
        protocol = engine.load_protocol(name, sweep_overrides)
        engine.check_forwarded(protocol, forwarded)
        launch_args = engine.launcher_overrides(launcher, n_jobs, launcher_settings, protocol.out_dir)
    except ConfigError as e:
        fail(e)
    runs = engine.expand(protocol)
    for run in engine.first_run_per_command(protocol):
        overrides = [*protocol.base, *forwarded, *engine.run_overrides(protocol, run)]
        check_overrides("train", select_layer_configs([*overrides, f"hydra.run.dir={protocol.out_dir}"]))
    if dry or protocol.dry_run:
        console.print("every run: " + " ".join([*protocol.base, *forwarded]), soft_wrap=True, markup=False,
                      highlight=False)
        for run in runs:
            console.print(" ".join(engine.run_overrides(protocol, run)), soft_wrap=True, markup=False,
                          highlight=False)
        console.print(f"{len(runs)} runs in sweep {protocol.name} (into {protocol.out_dir})")
        return 0
    skipped = engine.count_finished(protocol)
    console.print(f"sweep {protocol.name}: {len(runs)} runs, {skipped} already finished, launcher {launcher}")
    code = engine.launch(protocol, forwarded, launch_args)
    report = write_report(engine.collect(protocol), protocol, skipped=skipped)
    c = report["counts"]
    for metric, tables in report["tables"].items():
        for title, table in tables:
            console.print(f"{metric}, {title}:" if title else f"{metric}:", markup=False, highlight=False)
            console.print(markdown_table(table), markup=False, highlight=False)
    console.print(f"{c['completed']}/{c['total']} completed, {c['failed']} failed, {c['diverged']} diverged, "
                  f"{c['missing']} missing, {skipped} skipped; report: {protocol.out_dir / 'report.md'}",
                  soft_wrap=True)
    return 0 if code == 0 and c["missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
