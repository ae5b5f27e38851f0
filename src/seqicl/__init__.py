"""seqicl: which sequence-model architecture can learn what in context.

Sub-packages: ``seqicl.tasks`` (synthetic in-context-learning tasks), ``seqicl.layers``
(sequence and state mixers), ``seqicl.models`` (backbones), ``seqicl.training`` (the Lightning
module and the run driver behind ``python -m train``).

``seqicl.train(...)`` runs one experiment and ``seqicl.benchmark(make_model_fn, protocol=...)``
a sweep protocol from Python (``seqicl.api``); they are imported on first use, so that
``import seqicl`` stays cheap.
"""

__version__ = "0.1.0"
_API = ("train", "benchmark")


def __getattr__(name: str):
    if name in _API:
        from seqicl import api

        return getattr(api, name)
    raise AttributeError(f"module 'seqicl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
