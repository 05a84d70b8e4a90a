"""Evaluation: per-class AUC with intervals, calibration, single-label scores, decision
thresholds chosen on the validation split, parameters, latency, plots, tables and the model
card.

Every name in ``__all__`` is imported on first use, so ``chestkd.evaluation.statistics``
(NumPy / SciPy only) can be used without TensorFlow. Probabilities from logits and the exact
AUC are :mod:`chestkd.scores`' (their one home), offered here too.
"""
from __future__ import annotations

import importlib

# public name -> the module defining it (or, for the two from chestkd.scores, re-exporting
# it); imported on first use.
_PUBLIC = {
    "evaluate_model": "evaluate", "markdown_table": "evaluate", "print_results": "evaluate",
    "validation_thresholds": "evaluate",
    "per_class_auc": "metrics", "predict_logits": "metrics",
    "bootstrap_auc": "statistics", "paired_bootstrap": "statistics",
    "compare_predictions": "statistics", "comparison_table": "statistics",
    "write_comparison": "statistics",
    "expected_calibration_error": "statistics", "brier_score": "statistics",
    "exact_auc": "statistics", "probabilities_from_logits": "statistics",
}
# Kept for old callers; not part of the declared API.
_DEPRECATED = {"probabilities_of": "evaluate"}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    module = _PUBLIC.get(name) or _DEPRECATED.get(name)
    if module is None:
        raise AttributeError(f"module 'chestkd.evaluation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"chestkd.evaluation.{module}"), name)
