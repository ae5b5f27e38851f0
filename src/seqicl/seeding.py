"""Deterministic seeds that do not depend on Python's hash randomisation or global RNGs."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (ints, strings ...) through SHA-256.

    The same parts give the same seed on every machine and in every process.
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh torch generator on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g
