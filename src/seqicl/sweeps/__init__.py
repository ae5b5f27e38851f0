"""Named protocols as Hydra multiruns over ``python -m train``, with resumable runs and reports."""

from seqicl.sweeps.engine import Protocol, collect, expand, launch, load_protocol

__all__ = ["Protocol", "collect", "expand", "launch", "load_protocol"]
