"""Evaluation: per-class AUC with intervals, calibration, single-label scores, decision
thresholds chosen on the validation split, parameters, latency, plots, tables and the model
card.

``evaluate_model``, ``markdown_table`` and ``print_results`` are imported on first use, so
``chestkd.evaluation.statistics`` (NumPy / SciPy only) can be used without TensorFlow.
"""
from __future__ import annotations

_FROM_EVALUATE = ("evaluate_model", "markdown_table", "print_results", "validation_thresholds",
                  "probabilities_of")
__all__ = [*_FROM_EVALUATE, "compare_predictions"]


def __getattr__(name):
    if name in _FROM_EVALUATE:
        from chestkd.evaluation import evaluate
        return getattr(evaluate, name)
    if name == "compare_predictions":
        from chestkd.evaluation.statistics import compare_predictions
        return compare_predictions
    raise AttributeError(f"module 'chestkd.evaluation' has no attribute {name!r}")
