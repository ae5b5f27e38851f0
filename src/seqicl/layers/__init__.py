"""Sequence and state mixers, each with a pure-PyTorch reference path.

    import seqicl.layers as layers
    layers.available()                              # sorted layer names
    mixer = layers.build("attention", d_model=64, max_len=128, n_heads=4)
    layers.kind("attention")                        # "sequence" or "state"
"""

import importlib
import pkgutil

from seqicl.layers.registry import available, build, defaults, kind, layer_class, register

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "registry":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["available", "build", "defaults", "kind", "layer_class", "register"]
