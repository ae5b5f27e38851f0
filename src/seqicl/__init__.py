"""seqicl: which sequence-model architecture can learn what in context.

Sub-packages: ``seqicl.tasks`` (synthetic in-context-learning tasks), ``seqicl.layers``
(sequence and state mixers), ``seqicl.models`` (backbones), ``seqicl.training`` (the Lightning
module and the run driver behind ``python -m train``).
"""

__version__ = "0.1.0"
