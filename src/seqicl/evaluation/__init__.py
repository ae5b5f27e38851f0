"""Evaluation helpers: reference learners (baselines) and reports."""
