"""Data-parallel runs: how many processes a trainer config asks for, and starting them.

A data-parallel run (``trainer.strategy: ddp`` with several devices) is one process per device,
every process running the whole of ``seqicl.training.run.train`` in lockstep: fit, validation
of the best checkpoint and test. The process that was asked for the run is rank 0; it starts
ranks 1..N-1 with ``multiprocessing``'s spawn start method, each handed the resolved config (a
plain dict) and the output directory, so they never go through Hydra again and never re-run
the command line. Lightning then finds ``LOCAL_RANK`` in each process's environment and joins
the processes into one group instead of launching any itself. A run started by ``torchrun``
(which sets ``LOCAL_RANK`` already) is used as it is.

Lightning's own ways are not used on purpose: its ``ddp`` re-runs ``sys.argv`` per rank (a
Hydra multirun would start the whole sweep again, and ``seqicl.train`` from a script or a test
re-runs that script), and ``ddp_spawn``/``ddp_fork`` start new processes for each of fit,
validate and test and return only the weights and logged scalars to the caller.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import socket
import sys
from contextlib import contextmanager
from typing import Callable

from seqicl.errors import ConfigError

# Strategies whose processes seqicl starts; any other strategy is left to Lightning.
LAUNCHED = ("ddp", "ddp_find_unused_parameters_true")
_GRACE_S = 10
_ENV = ("LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")


def world_size(trainer: dict) -> int:
    """The number of processes the trainer config asks for (1 unless its strategy is ``ddp``)."""
    if trainer.get("strategy") not in LAUNCHED:
        return 1
    if int(trainer.get("num_nodes") or 1) != 1:
        raise ConfigError("trainer.num_nodes > 1: start one process per device yourself (torchrun, srun); "
                          "seqicl starts the processes of a single machine only")
    accelerator, devices = trainer.get("accelerator", "auto"), trainer.get("devices", "auto")
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and CUDAAccelerator.is_available()):
        if not CUDAAccelerator.is_available():
            raise ConfigError("trainer=ddp needs CUDA GPUs and none is visible here; "
                              "trainer=ddp_cpu runs the same on CPU processes")
        try:
            return len(CUDAAccelerator.parse_devices(devices) or [])
        except Exception as e:  # noqa: BLE001 - Lightning's own message names the problem
            raise ConfigError(f"trainer.devices={devices!r}: {e}".splitlines()[0]) from None
    if accelerator != "cpu" and accelerator != "auto":
        raise ConfigError(f"trainer.strategy=ddp runs on accelerator cpu or gpu, got {accelerator!r}")
    try:
        return int(CPUAccelerator.parse_devices(devices))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"trainer.devices={devices!r}: {e}".splitlines()[0]) from None


def rank() -> int:
    """This process's global rank in a data-parallel run (0 outside of one)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))


def launched() -> bool:
    """Whether this process already belongs to a data-parallel run (started by seqicl or torchrun)."""
    return "LOCAL_RANK" in os.environ


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(env: dict, fn: Callable, args: tuple) -> None:
    """Entry point of ranks 1..N-1: the run's environment, then ``fn(*args)``."""
    from seqicl.training.module import Diverged

    os.environ.update(env)
    try:
        fn(*args)
    except (ConfigError, Diverged):
        sys.exit(1)  # rank 0 meets the same error and reports it
    except Exception as e:  # noqa: BLE001 - one line per failed rank; rank 0 names the rank
        print(f"rank {env['RANK']}: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        sys.exit(1)
    finally:
        # Leave the process group before the interpreter exits: torn down at exit instead, its
        # worker threads can still be running, and the process aborts (std::terminate).
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def processes(world: int, fn: Callable, args: tuple):
    """Make this process rank 0 of ``world`` and run ``fn(*args)`` in ranks 1..world-1 meanwhile.

    Nothing happens for ``world == 1`` or inside a run that is already launched. On leaving,
    this process waits for the other ranks (or stops them if it failed), leaves the process
    group, and gets its environment and thread count back, so that later runs in the same
    process start afresh. A rank that failed while rank 0 did not is an error naming it.
    """
    if world == 1 or launched():
        yield
        return
    try:
        pickle.dumps((fn, args))
    except Exception as e:  # noqa: BLE001 - any reason it cannot be sent
        raise ConfigError("a data-parallel run sends its model factory to the other processes, so it must be "
                          f"picklable (a module-level function or class): {e}".splitlines()[0]) from None
    import torch

    saved = {k: os.environ.get(k) for k in _ENV}
    threads = torch.get_num_threads()
    base = {"NODE_RANK": "0", "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_rank_main, args=({**base, "LOCAL_RANK": str(r), "RANK": str(r)}, fn, args))
             for r in range(1, world)]
    os.environ.update({**base, "LOCAL_RANK": "0", "RANK": "0"})
    ok = False
    try:
        for p in procs:
            p.start()
        yield
        ok = True
    finally:
        for p in procs:
            # After a failure here the other ranks usually fail the same way; one that does not
            # waits in a collective for ever. Lightning handles SIGTERM, so it gets SIGKILL.
            p.join(None if ok else _GRACE_S)
            if p.is_alive():
                p.kill()
                p.join()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        torch.set_num_threads(threads)
    failed = [r for r, p in enumerate(procs, start=1) if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"rank {failed[0]} of the data-parallel run exited with code {procs[failed[0] - 1].exitcode}")
