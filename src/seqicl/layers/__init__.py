"""Sequence and state mixers, each with a pure-PyTorch reference path.

    import seqicl.layers as layers
    layers.available()                              # sorted layer names
    mixer = layers.build("attention", d_model=64, max_len=128, n_heads=4)
    layers.kind("attention")                        # "sequence" or "state"
    layers.check("attention", d_model=64, max_len=128)   # the layer contract on tiny random inputs
"""

import importlib
import pkgutil

from seqicl.layers.contract import ContractError, check, check_layer, check_plugin_layers, check_token_model
from seqicl.layers.registry import available, build, build_spec, defaults, kind, layer_class, register

for _m in pkgutil.iter_modules(__path__):
    if _m.name not in ("registry", "contract"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["ContractError", "available", "build", "build_spec", "check", "check_layer", "check_plugin_layers",
           "check_token_model", "defaults", "kind", "layer_class", "register"]
