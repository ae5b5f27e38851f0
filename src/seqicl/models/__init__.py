"""Backbones that turn a list of layers into a model."""

from seqicl.models.lm import Block, TokenLM, count_parameters

__all__ = ["Block", "TokenLM", "count_parameters"]
