"""Gradient norms at initialisation of Garg et al.'s regression transformer, one mixer per row.

    python scripts/init_gradients.py [--mixers attention rela rela:norm_eps=1e-2 ...] [--layers 12]

Builds the model of ``experiment=regression/transformer`` (width 256, 8 heads, learned absolute
positions, no positions inside the mixer) with each mixer, draws one batch of the curriculum's
first stage (5 of 20 dimensions, 11 points), and prints the gradient norm of the squared error with
respect to the read-in, the first and the last block's mixer (all its parameters), and the
read-out.
A mixer is ``name`` or ``name:key=value,key=value`` (extra hyper-parameters). Gradients far larger
in the first blocks than in the last point at a layer that amplifies small signals (e.g. a norm
dividing by near-zero outputs).
"""

from __future__ import annotations

import argparse

import torch
import yaml

from seqicl.models.continuous import ContinuousModel


def parse_value(text: str):
    """A hyper-parameter's value: a number where it reads as one (``1e-2`` too), else YAML."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return yaml.safe_load(text)


def parse_mixer(spec: str) -> tuple[str, dict]:
    name, _, extra = spec.partition(":")
    kw = {}
    for item in filter(None, extra.split(",")):
        key, _, value = item.partition("=")
        kw[key] = parse_value(value)
    return name, kw


def gradient_norms(mixer: dict, n_layers: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = ContinuousModel(20, 82, d_model=256, n_layers=n_layers, mixer=mixer, positions="learned")
    gen = torch.Generator().manual_seed(seed + 1)
    xs = torch.randn(64, 11, 20, generator=gen)
    xs[..., 5:] = 0
    w = torch.randn(64, 20, 1, generator=gen)
    w[:, 5:] = 0
    ys = (xs @ w)[..., 0]
    loss = ((model(xs, ys) - ys) ** 2).mean()
    loss.backward()

    def norm(module):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()

    return {"loss": loss.item(), "read_in": norm(model.read_in), "first_mixer": norm(model.blocks[0].mixer),
            "last_mixer": norm(model.blocks[-1].mixer), "read_out": norm(model.read_out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mixers", nargs="+", default=["attention", "favor", "rela", "rela:norm_eps=1e-2",
                                                    "rela:norm_eps=1.0"])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"{'mixer':40s} {'loss':>7s} {'read-in':>9s} {'mixer 1':>9s} {'mixer L':>9s} {'read-out':>9s}")
    for spec in args.mixers:
        name, extra = parse_mixer(spec)
        mixer = {"name": name, "n_heads": 8, **({} if name in ("favor", "rebased") else {"positions": "none"}),
                 **extra}
        g = gradient_norms(mixer, args.layers, args.seed)
        print(f"{spec:40s} {g['loss']:7.3f} {g['read_in']:9.2e} {g['first_mixer']:9.2e} "
              f"{g['last_mixer']:9.2e} {g['read_out']:9.2e}")


if __name__ == "__main__":
    main()
