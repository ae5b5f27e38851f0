"""GPU placement of a sweep's concurrent runs: each run holds one (GPU, slot) for as long as it runs.

A sweep with ``launcher=joblib gpus=[0,1] runs_per_gpu=2`` has 4 slots, each a lock file in a
directory the sweep's runs share (``placement.lock_dir``). A run takes the first free slot,
filling the first slot of every GPU before any second one and, among free slots of one level,
the GPU that has been given the fewest runs so far (runs that follow one another still spread
over the GPUs), waits while none is free, and lets
it go when it ends, failed or not; a killed run's lock goes with its process (``flock`` locks
belong to the open file, which the kernel closes). The run then trains on that GPU alone
(``trainer.devices=[id]``: a joblib worker process runs one run after another, so the device is
chosen per run rather than with ``CUDA_VISIBLE_DEVICES``, which only counts before CUDA starts).
A CPU run holds a slot the same way and trains on the CPU (which is how the allocator is tested).
Every acquisition and release is appended to ``placement.log`` in the lock directory.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from seqicl.errors import ConfigError

LOG = "placement.log"


def check(placement: dict) -> list[int] | None:
    """The GPU ids of a run's ``placement`` config (None: not placed); misconfiguration is a ConfigError."""
    gpus = placement.get("gpus")
    if gpus is None:
        return None
    if not isinstance(gpus, list) or not gpus or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0
                                                         for g in gpus) or len(set(gpus)) != len(gpus):
        raise ConfigError(f"placement.gpus must be a list of distinct GPU ids (e.g. [0,1]), got {gpus!r}")
    n = placement.get("runs_per_gpu")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"placement.runs_per_gpu must be a positive integer, got {n!r}")
    if not placement.get("lock_dir"):
        raise ConfigError("placement.gpus needs placement.lock_dir, a directory every run of the sweep shares")
    return gpus


@contextmanager
def slot(gpus: list[int], runs_per_gpu: int, lock_dir: str | os.PathLike, poll_s: float = 0.2):
    """Hold a free ``(gpu, slot)`` of ``gpus`` x ``range(runs_per_gpu)`` for the duration."""
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        held = _try_any(gpus, runs_per_gpu, lock_dir)
        if held is not None:
            break
        time.sleep(poll_s)
    gpu, k, f = held
    try:
        _log(lock_dir, "acquire", gpu, k)
        yield gpu, k
    finally:
        _log(lock_dir, "release", gpu, k)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _acquisitions(lock_dir: Path) -> Counter:
    """How many runs each GPU has been given so far, from ``placement.log``."""
    log = lock_dir / LOG
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(int(ln.split()[2].removeprefix("gpu=")) for ln in lines if ln.split()[1:2] == ["acquire"])


def _try_any(gpus: list[int], runs_per_gpu: int, lock_dir: Path):
    given = _acquisitions(lock_dir)
    order = sorted(gpus, key=lambda gpu: given[gpu])  # stable: ties keep the listed order
    for k in range(runs_per_gpu):
        for gpu in order:
            f = open(lock_dir / f"gpu{gpu}-slot{k}.lock", "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            return gpu, k, f
    return None


def _log(lock_dir: Path, event: str, gpu: int, k: int) -> None:
    line = f"{time.time():.6f} {event} gpu={gpu} slot={k} pid={os.getpid()}\n"
    fd = os.open(lock_dir / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def placed_trainer(trainer: dict, gpu: int) -> dict:
    """The trainer config of a run placed on ``gpu``: that device alone (CPU runs stay on the CPU)."""
    if trainer.get("strategy") not in (None, "auto"):
        raise ConfigError(f"placement puts each run on one GPU; trainer.strategy={trainer['strategy']} "
                          "spreads a run over several (leave gpus= unset)")
    if trainer.get("accelerator") == "cpu":
        return trainer
    return {**trainer, "devices": [gpu]}
