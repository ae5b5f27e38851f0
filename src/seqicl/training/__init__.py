"""Training: the Lightning module, callbacks, config checks and the run driver."""

from seqicl.training.module import SeqICLModule
from seqicl.models import build_model
from seqicl.training.run import build_task, train

__all__ = ["SeqICLModule", "build_model", "build_task", "train"]
