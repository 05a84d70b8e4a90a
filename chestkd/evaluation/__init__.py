"""Evaluation: per-class AUC, single-label scores, parameters, latency, plots and tables."""
from chestkd.evaluation.evaluate import evaluate_model, markdown_table, print_results

__all__ = ["evaluate_model", "markdown_table", "print_results"]
