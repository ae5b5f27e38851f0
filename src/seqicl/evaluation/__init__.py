"""Evaluation: reference learners (baselines), restoring checkpoints, per-task-family evaluators,
generation and plots.

``python -m generate`` (``seqicl.evaluation.generate``) drives it; ``evaluator_for(task)`` picks
the evaluation of a task family (``seqicl.evaluation.base``).
"""
