"""Evaluation: per-class AUC with intervals, calibration, single-label scores, parameters,
latency, plots and tables.

``evaluate_model``, ``markdown_table`` and ``print_results`` are imported on first use, so
``chestkd.evaluation.statistics`` (NumPy / SciPy only) can be used without TensorFlow.
"""
from __future__ import annotations

__all__ = ["evaluate_model", "markdown_table", "print_results", "compare_predictions"]


def __getattr__(name):
    if name in ("evaluate_model", "markdown_table", "print_results"):
        from chestkd.evaluation import evaluate
        return getattr(evaluate, name)
    if name == "compare_predictions":
        from chestkd.evaluation.statistics import compare_predictions
        return compare_predictions
    raise AttributeError(f"module 'chestkd.evaluation' has no attribute {name!r}")
