"""Weight initialisation schemes for a whole model (``model.init``).

``default``: each layer keeps the initialisation it builds with (PyTorch's for linear maps, the
layer's own for the rest) and embeddings are drawn from N(0, 0.02).

``gpt2``: the scheme of GPT-2 (Radford et al. 2019), which the safari/seq_icl and zoology code
bases apply to every model they train: every linear map's weight from N(0, 0.02) and its bias
zero, every embedding from N(0, 0.02), and the projection through which each residual branch
writes back to the stream drawn with its standard deviation divided by sqrt(number of residual
branches), so that the stream's variance at initialisation does not grow with depth.

Linear maps whose initialisation is part of a layer's definition (Mamba's step-size projection,
Hyena's implicit filter network) carry ``keep_init = True`` and are left as built.
"""

from __future__ import annotations

import math

from torch import nn

from seqicl.errors import ConfigError

INIT_SCHEMES = ("default", "gpt2")
STD = 0.02
# Names of the linear map through which a sequence or state mixer writes its output.
RESIDUAL_OUTPUTS = ("out_proj", "fc2", "down", "output")


def residual_outputs(model: nn.Module) -> list[nn.Linear]:
    """The output projection of every residual branch (sequence and state mixers) of ``model``'s blocks."""
    found = []
    for block in getattr(model, "blocks", ()):
        for layer in (block.mixer, block.state_mixer):
            if layer is None:
                continue
            for name in RESIDUAL_OUTPUTS:
                proj = getattr(layer, name, None)
                if isinstance(proj, nn.Linear):
                    found.append(proj)
                    break
    return found


def apply_init(model: nn.Module, scheme: str) -> None:
    """Re-draw ``model``'s weights by ``scheme`` (one of ``INIT_SCHEMES``); ``default`` changes nothing."""
    if scheme not in INIT_SCHEMES:
        raise ConfigError(f"model.init must be one of {', '.join(INIT_SCHEMES)}, got {scheme!r}")
    if scheme == "default":
        return
    for module in model.modules():
        if getattr(module, "keep_init", False):
            continue
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=STD)
    n_branches = sum((b.mixer is not None) + (b.state_mixer is not None) for b in getattr(model, "blocks", ()))
    for proj in residual_outputs(model):
        if not getattr(proj, "keep_init", False):
            nn.init.normal_(proj.weight, std=STD / math.sqrt(n_branches))
