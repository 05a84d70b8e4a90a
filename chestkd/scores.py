"""Probabilities from logits and the exact ROC AUC, in float64 NumPy (no TensorFlow).

The one home of both. It sits at the bottom of the layers (beside ``errors`` and ``io``)
because the lowest layer that needs it is ``training`` (the exact validation AUC that chooses
the best checkpoint), and ``evaluation``, ``saliency``, ``robustness``, ``predict`` and
``export`` need the same numbers without importing training.

* :func:`probabilities_from_logits`: the sigmoid of each logit (independent findings) or the
  softmax across classes (mutually exclusive classes);
* :func:`ranking_scores`: what every AUC ranks: the same order as the probabilities, without
  their float64 saturation (a sigmoid is exactly 1.0 above a logit of about 37, which would tie
  every such film);
* :func:`exact_auc`: the exact one-vs-rest ROC AUC per class (the Mann-Whitney statistic, ties
  counted one half, equal to ``sklearn.metrics.roc_auc_score``), vectorised over classes and
  over many sets of per-image integer weights (a bootstrap resample scored from its counts).

Label convention (as ``chestkd.data.pipeline``): 1 positive, 0 negative, -1 unknown; an unknown
label is left out of its class. A class with no known positive or no known negative has no AUC:
NaN.
"""
from __future__ import annotations

import numpy as np

from chestkd.errors import DataError

__all__ = ["probabilities_from_logits", "ranking_scores", "exact_auc",
           "checked_labels_and_scores"]


def probabilities_from_logits(logits, multi_label: bool) -> np.ndarray:
    """float64 class probabilities of (..., C) logits.

    ``multi_label=True``: ``1 / (1 + exp(-z))`` per logit. ``exp(-z)`` overflows to inf for
    z < -709 and the quotient is then 0 (the true value is below 1e-308), so the overflow is
    silenced, not clipped: a clip would tie every logit beyond it and change the AUC's ranking.
    ``multi_label=False``: the softmax along the last axis, shifted by the largest logit so
    no exponential overflows.
    """
    z = np.asarray(logits, np.float64)
    if multi_label:
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-z))
    exponentials = np.exp(z - z.max(axis=-1, keepdims=True))
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def ranking_scores(logits, multi_label: bool) -> np.ndarray:
    """float64 (..., C) scores in the order of :func:`probabilities_from_logits`, never tied
    where the logits differ: what an AUC (exact, bootstrap, DeLong) ranks.

    ``multi_label=True``: the logits themselves (the sigmoid is increasing; in float64 it is
    exactly 1.0 for every logit above about 37, and ties those films).
    ``multi_label=False``: the log of the softmax probability, ``(z_c - m) - log1p(R)`` with
    ``m`` the largest logit and ``R`` the sum of ``exp(z_k - m)`` over the other classes, so
    the top class keeps ``-log1p(R)`` (about ``-R``) where its probability rounds to 1.0.
    """
    z = np.asarray(logits, np.float64)
    if multi_label:
        return z.copy()
    top = z.argmax(axis=-1)[..., None]
    shifted = z - np.take_along_axis(z, top, axis=-1)
    others = np.exp(shifted)
    np.put_along_axis(others, top, 0.0, axis=-1)
    return shifted - np.log1p(others.sum(axis=-1, keepdims=True))


def checked_labels_and_scores(y_true, scores, what: str = "scores"
                              ) -> tuple[np.ndarray, np.ndarray, bool]:
    """float64 (N, C) labels and scores, and ``True`` when the input was one class (1-D).

    A DataError when the shapes differ, a label is not 1, 0 or -1, or a score is not finite.
    """
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    one = y.ndim == 1
    if one:
        y, s = y[:, None], (s[:, None] if s.ndim == 1 else s)
    if y.ndim != 2 or s.shape != y.shape:
        raise DataError(f"labels have shape {np.shape(y_true)} but {what} have shape "
                        f"{np.shape(scores)}; expected the same (N,) or (N, C)")
    bad = ~np.isin(y, (-1.0, 0.0, 1.0))
    if bad.any():
        raise DataError(f"labels must be 1, 0 or -1 (unknown); found {np.unique(y[bad])[:5]}")
    if not np.isfinite(s).all():
        raise DataError(f"{what} contain {int((~np.isfinite(s)).sum())} non-finite value(s)")
    return y, s, one


def _class_auc(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUC of one class for each row of ``weights`` (B, n).

    With w_i the weight (count) of image i, P and N the positive and negative images::

        AUC = sum_{i in P, j in N} w_i w_j ([s_i > s_j] + 1/2 [s_i = s_j]) / (W_P W_N)

    Computed in O(B n) after one sort: scores are grouped into runs of equal value; for each
    run g, the positive weight times (the negative weight of all lower runs + half the negative
    weight of run g) is summed. With integer weights numerator and denominator are exact in
    float64, so the AUC is their correctly rounded ratio.
    """
    known = y >= 0
    y, s, weights = y[known], s[known], weights[:, known]
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    positive = (y[order] == 1).astype(np.float64)
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    w = weights[:, order]
    if w.shape[1] == 0:
        return np.full(len(weights), np.nan)
    pos = np.add.reduceat(w * positive, starts, axis=1)
    neg = np.add.reduceat(w * (1.0 - positive), starts, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negative weight strictly below each run
    numerator = (pos * (below + 0.5 * neg)).sum(axis=1)
    denominator = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1),
                        np.nan)


def exact_auc(y_true, scores, weights=None) -> np.ndarray | float:
    """Exact ROC AUC per class, optionally with integer per-image weights.

    Args:
        y_true: (N,) or (N, C) labels 1 / 0 / -1 (unknown, left out of that class).
        scores: the same shape; any real numbers (logits or probabilities).
        weights: None, (N,) or (B, N) non-negative weights. A weight k counts an image k times,
            so a bootstrap resample's AUC comes from its counts (equal to scoring the repeated
            rows with ``roc_auc_score``).

    Returns:
        (C,) or, for (B, N) weights, (B, C); a 1-D ``y_true`` drops the class axis (a float for
        no weights). NaN where a class has no positive or no negative (of positive weight).
    """
    y, s, one = checked_labels_and_scores(y_true, scores)
    n = len(y)
    batched = weights is not None and np.ndim(weights) == 2
    w = np.atleast_2d(np.ones(n) if weights is None else np.asarray(weights, np.float64))
    if w.shape[1] != n or (w < 0).any():
        raise DataError(f"weights have shape {np.shape(weights)}; expected non-negative "
                        f"({n},) or (B, {n})")
    out = np.stack([_class_auc(y[:, c], s[:, c], w) for c in range(y.shape[1])], axis=1)
    if not batched:
        out = out[0]
    if one:
        out = out[..., 0]
        return float(out) if out.ndim == 0 else out
    return out
