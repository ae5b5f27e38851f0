"""A model factory for data-parallel tests that records, per rank, the training examples the
model reads and the files a rank other than 0 opens for writing (with an audit hook).

It is sent to the other ranks by pickling, so it lives in an importable module.
"""

import os
import sys
import threading
from pathlib import Path

import torch

from seqicl.models import TokenLM

_record_dir: Path | None = None
_busy = threading.local()
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _rank() -> str:
    return os.environ.get("RANK", "0")


def _note(line: str) -> None:
    with open(_record_dir / f"writes-rank{_rank()}.txt", "a") as f:
        f.write(line + "\n")


def _audit(event: str, args) -> None:
    if _record_dir is None or _rank() == "0" or getattr(_busy, "on", False):
        return
    path = None
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = args[1], args[2] or 0
        if (isinstance(mode, str) and any(m in mode for m in "wax+")) or flags & _WRITE:
            path = args[0]
    elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir"):
        path = args[0]
    if path is None:
        return
    _busy.on = True
    try:
        _note(f"{event} {os.fsdecode(path)}")
    finally:
        _busy.on = False


class RecordingLM(TokenLM):
    """TokenLM writing one line per training example it reads, after the process group is up."""

    record_dir: str = ""

    def hidden(self, inputs):
        if self.training and torch.distributed.is_initialized():
            _busy.on = True
            try:
                with open(Path(self.record_dir) / f"examples-rank{_rank()}.txt", "a") as f:
                    f.writelines(" ".join(map(str, row)) + "\n" for row in inputs.tolist())
            finally:
                _busy.on = False
        return super().hidden(inputs)


class Recorder:
    """``make_model_fn``: a small RecordingLM that records into ``record_dir``."""

    def __init__(self, record_dir):
        self.record_dir = str(record_dir)

    def __call__(self, task, vocab_size, max_length):
        global _record_dir
        if _record_dir is None and _rank() != "0":
            sys.addaudithook(_audit)
        _record_dir = Path(self.record_dir)
        (_record_dir / f"built-rank{_rank()}").write_text("")  # rank 1 records this write: its hook is live
        model = RecordingLM(vocab_size, max_length, d_model=32, n_layers=1)
        model.record_dir = self.record_dir
        return model
