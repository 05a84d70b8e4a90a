"""Uncertainty and calibration of test-split results, in float64 NumPy / SciPy.

A test split of a few hundred images gives AUCs that move by 0.02-0.03 between seeds, so a
number without an interval says little. This module gives:

* :func:`~chestkd.scores.exact_auc` (defined in :mod:`chestkd.scores`, the one home of the
  exact AUC): the Mann-Whitney statistic, ties counted one half, equal to
  ``sklearn.metrics.roc_auc_score``, vectorised over classes and over many sets of per-image
  integer weights, so a bootstrap resample is scored from its counts without materialising it;
* :func:`bootstrap_auc`: percentile intervals of per-class and mean AUC from a cluster
  bootstrap over patients;
* :func:`paired_bootstrap`: the difference in mean AUC of two models scored on the same images,
  both models on the same patient resamples, with an interval and a two-sided p-value;
* :func:`delong_test`: DeLong's test of two correlated ROC AUCs (the fast algorithm of
  Sun & Xu 2014); it treats images as independent, so it is kept for reference only: the
  comparison table's per-class p is the paired patient bootstrap's;
* :func:`clustered_delong_test`: DeLong's test with the patient as the unit (Obuchowski
  1997), the analytic patient-aware per-class test, beside the bootstrap's;
* :func:`holm`: Holm's step-down adjustment of p-values across findings;
* :func:`expected_calibration_error`, :func:`brier_score`, :func:`reliability_curve`;
* :func:`compare_predictions`: all of the above for two finished runs' saved test predictions,
  and :func:`comparison_table` / :func:`comparison_markdown`, the one table of such a
  comparison (every recipe that prints one uses them).

Label conventions (as ``chestkd.data.pipeline``): labels are 1 (positive), 0 (negative) or -1
(unknown); an unknown label is left out of its class. A class with no positive or no negative
has no AUC: it is NaN and left out of the mean over classes (:func:`mean_over_classes`).

No TensorFlow here: ``keras.utils.Progbar`` is imported only when a progress bar is asked for.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from chestkd.errors import ConfigError, DataError
# The one home of the exact AUC and of logits -> probabilities; imported here for this
# module and for the callers that know them as chestkd.evaluation.statistics names.
from chestkd.scores import (checked_labels_and_scores, exact_auc, probabilities_from_logits,
                            ranking_scores)

# A bootstrap scores its resamples in chunks of about this many (resample, image) weights, so
# memory stays bounded for a test split of tens of thousands of images.
_CHUNK_ELEMENTS = 2_000_000
# evaluate_model shows a progress bar above this many (resample x class x image) operations.
PROGRESS_THRESHOLD = 50_000_000


# --------------------------------------------------------------------------- inputs


def _patient_index(groups, n: int) -> tuple[np.ndarray, int]:
    """Each image's patient as 0..P-1, numbered in order of first appearance."""
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise DataError(f"groups (patient per image) has shape {groups.shape}; expected ({n},)")
    _, first, inverse = np.unique(groups.astype(str), return_index=True, return_inverse=True)
    # np.unique numbers groups in sorted order; renumber by first appearance, so with one image
    # per patient, patient k is image k and the cluster bootstrap is the plain one exactly.
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse.reshape(-1)], len(first)


def min_resamples(confidence: float = 0.95) -> int:
    """Fewest finite resamples a percentile interval is given from: 2 / (1 - confidence), 40 at
    95 %, so each tail holds at least one resample (with fewer, an end is the smallest or
    largest resample itself, and one resample gives a zero-width interval)."""
    return int(np.ceil(2.0 / (1.0 - confidence) - 1e-9))


def _interval(samples: np.ndarray, confidence: float) -> list[float]:
    """Percentile interval [q(a/2), q(1 - a/2)], a = 1 - confidence, over finite samples;
    NaN from fewer than :func:`min_resamples`."""
    samples = np.asarray(samples, np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size < min_resamples(confidence):
        return [float("nan"), float("nan")]
    alpha = 1.0 - confidence
    lo, hi = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def _check_confidence(confidence: float, n_boot: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must lie in (0, 1); got {confidence}")
    if int(n_boot) < 1:
        raise ConfigError(f"n_boot must be a positive number of resamples; got {n_boot}")


# --------------------------------------------------------------------------- mean AUC


def mean_over_classes(aucs: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Mean AUC over classes (last axis), NaN classes left out; ``valid`` restricts the classes
    (those defined on the full test split) so a resample's mean averages the same findings."""
    aucs = np.asarray(aucs, np.float64)
    if valid is not None:
        aucs = aucs[..., np.asarray(valid, bool)]
    finite = np.isfinite(aucs)
    count = finite.sum(axis=-1)
    total = np.where(finite, aucs, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _resample_means(boot: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(B,) mean AUC of each resample over the classes defined on the full split; NaN for a
    resample that lost one of them (all its positives or negatives): its mean would average
    other findings, so an interval mixing such means would not be one of the split's mean."""
    valid = np.asarray(valid, bool)
    complete = np.isfinite(boot[:, valid]).all(axis=1)
    return np.where(complete, mean_over_classes(boot, valid), np.nan)


# --------------------------------------------------------------------------- bootstrap


def _resample_weights(patient: np.ndarray, n_patients: int, n_boot: int, seed: int):
    """Yield (b, n) image weights, chunk by chunk, for ``n_boot`` patient resamples.

    Resample b draws n_patients patients uniformly with replacement (``rng.integers``, one call
    per resample so the stream does not depend on the chunk size); an image's weight is how
    often its patient was drawn (a cluster bootstrap: a patient's images stay together).
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(len(patient), n_patients, 1))
    done = 0
    while done < n_boot:
        size = min(chunk, n_boot - done)
        draws = np.stack([rng.integers(0, n_patients, n_patients) for _ in range(size)])
        offsets = draws + n_patients * np.arange(size)[:, None]
        counts = np.bincount(offsets.ravel(), minlength=size * n_patients)
        yield counts.reshape(size, n_patients)[:, patient].astype(np.float64)
        done += size


def _bootstrap_samples(y, score_sets, groups, n_boot: int, seed: int, verbose: bool = False):
    """(B, C) AUCs of every resample, one array per score set, all on the same resamples.

    With one patient every resample is the split itself, which shows no spread: the AUCs are
    NaN, so intervals and p-values are NaN, not a zero-width interval and p = 2 / (B + 1).
    """
    patient, n_patients = _patient_index(groups, len(y))
    if n_patients < 2:
        return [np.full((n_boot, y.shape[1]), np.nan) for _ in score_sets], n_patients
    samples = [[] for _ in score_sets]
    progress = None
    if verbose:
        from keras.utils import Progbar  # imported only here: it brings TensorFlow in
        progress = Progbar(n_boot, unit_name="resample")
    done = 0
    for weights in _resample_weights(patient, n_patients, n_boot, seed):
        for out, s in zip(samples, score_sets):
            out.append(exact_auc(y, s, weights))
        done += len(weights)
        if progress is not None:
            progress.update(done)
    return [np.concatenate(out, axis=0) for out in samples], n_patients


def bootstrap_auc(y_true, scores, groups, *, n_boot: int = 1000, confidence: float = 0.95,
                  seed: int = 0, verbose: bool = False) -> dict:
    """Per-class and mean AUC with percentile intervals from a patient (cluster) bootstrap.

    Each of ``n_boot`` resamples draws as many patients as the test split has, with
    replacement, and takes all images of each drawn patient (images of one patient are
    correlated, so resampling images would understate the spread). The interval is the
    percentile interval [q(a/2), q(1-a/2)], a = 1 - confidence, of the resampled AUCs.

    NaN safety: a class without a positive or a negative on the full split has a NaN AUC and a
    [NaN, NaN] interval and is left out of every mean. A resample in which a class loses all its
    positives (or negatives) gives that class no value (its interval uses the others) and gives
    no mean (the mean's interval uses the resamples in which every class is defined:
    ``mean_valid_resamples``), so every resampled mean averages the same findings.

    Args:
        y_true: (N, C) or (N,) labels 1 / 0 / -1 (unknown).
        scores: the same shape.
        groups: (N,) patient id of each image.
        verbose: show a ``keras.utils.Progbar``.

    Returns:
        dict with ``per_class_auc`` (C floats), ``mean_auc``, ``per_class_ci`` ([lo, hi] per
        class), ``mean_ci`` [lo, hi], ``per_class_valid_resamples``,
        ``mean_valid_resamples``, ``n_boot``, ``confidence``, ``seed``, ``patients`` and
        ``images``.
    """
    _check_confidence(confidence, n_boot)
    y, s, _ = checked_labels_and_scores(y_true, scores)
    point = exact_auc(y, s)
    valid = np.isfinite(point)
    (boot,), n_patients = _bootstrap_samples(y, [s], groups, int(n_boot), seed, verbose)
    boot[:, ~valid] = np.nan
    means = _resample_means(boot, valid)
    return {
        "per_class_auc": [float(v) for v in point],
        "mean_auc": float(mean_over_classes(point)),
        "per_class_ci": [_interval(boot[:, c], confidence) for c in range(y.shape[1])],
        "mean_ci": _interval(means, confidence),
        "per_class_valid_resamples": [int(v) for v in np.isfinite(boot).sum(0)],
        "mean_valid_resamples": int(np.isfinite(means).sum()),
        "n_boot": int(n_boot), "confidence": float(confidence), "seed": int(seed),
        "patients": int(n_patients), "images": int(len(y)),
    }


def bootstrap_p_value(differences) -> float:
    """Two-sided percentile-bootstrap p-value of H0: difference = 0.

    With B finite resampled differences d*::

        p = min(1, 2 * min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (B + 1))

    i.e. twice the smaller tail at 0, with the +1 correction (the observed sample counts as one
    of the resamples, so p is never 0). It inverts the percentile interval: 0 lies outside the
    (1 - alpha) percentile interval of d* roughly when p < alpha. Identical models (every
    d* = 0) give p = 1.
    """
    d = np.asarray(differences, np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    tail = min(1 + int((d <= 0).sum()), 1 + int((d >= 0).sum()))
    return float(min(1.0, 2.0 * tail / (d.size + 1)))


def _p_value(differences, confidence: float) -> float:
    """:func:`bootstrap_p_value`, NaN from as few resamples as give no interval
    (:func:`min_resamples`): a p and its interval are read together."""
    finite = np.isfinite(np.asarray(differences, np.float64)).sum()
    if finite < min_resamples(confidence):
        return float("nan")
    return bootstrap_p_value(differences)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of m p-values (family-wise error across m findings).

    With the m finite p-values sorted, p_(1) <= ... <= p_(m), the adjusted values are::

        p~_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))

    returned in the input order. NaN entries (a class with no test) are not counted in m and
    stay NaN. Rejecting where p~ < alpha controls the family-wise error rate at alpha under any
    dependence between the findings' tests (Holm 1979).
    """
    p = np.asarray(p_values, np.float64).reshape(-1)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return out
    order = finite[np.argsort(p[finite], kind="mergesort")]
    m = order.size
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(1.0, stepped)
    return out


def paired_bootstrap(y_true, scores_a, scores_b, groups, *, n_boot: int = 1000,
                     confidence: float = 0.95, seed: int = 0, verbose: bool = False) -> dict:
    """Paired patient bootstrap of the difference in mean AUC, model B minus model A.

    Both models are scored on the same patient resamples (see :func:`bootstrap_auc`), so the
    spread is that of the difference, not of two independent AUCs. The mean on each resample
    averages the classes defined on the full split; a resample that loses one of them gives no
    mean (``mean_valid_resamples`` counts the others). ``p_value`` is
    :func:`bootstrap_p_value` of the resampled differences (two-sided, +1 corrected).

    Returns:
        dict with ``mean_auc_a``, ``mean_auc_b``, ``mean_ci_a``, ``mean_ci_b`` (each model's
        interval on the same resamples), ``difference`` (b - a), ``difference_ci``,
        ``difference_sd`` (bootstrap standard deviation), ``p_value``, per class
        ``per_class_auc_a``, ``per_class_auc_b``, ``per_class_ci_a``, ``per_class_ci_b``,
        ``per_class_difference``, ``per_class_difference_ci``, ``per_class_p_value`` (the
        same two-sided bootstrap p per class: patient-aware, and consistent with the per-class
        interval), and ``n_boot``, ``confidence``, ``seed``, ``patients``, ``images``.
    """
    _check_confidence(confidence, n_boot)
    y, a, _ = checked_labels_and_scores(y_true, scores_a, "scores_a")
    _, b, _ = checked_labels_and_scores(y_true, scores_b, "scores_b")
    point_a, point_b = exact_auc(y, a), exact_auc(y, b)
    valid = np.isfinite(point_a) & np.isfinite(point_b)
    (boot_a, boot_b), n_patients = _bootstrap_samples(y, [a, b], groups, int(n_boot), seed,
                                                      verbose)
    d_class = boot_b - boot_a
    d_class[:, ~valid] = np.nan
    resampled_a, resampled_b = _resample_means(boot_a, valid), _resample_means(boot_b, valid)
    d_mean = resampled_b - resampled_a
    mean_a = float(mean_over_classes(point_a, valid))
    mean_b = float(mean_over_classes(point_b, valid))
    finite = d_mean[np.isfinite(d_mean)]
    nan = float("nan")
    return {
        "mean_auc_a": mean_a, "mean_auc_b": mean_b,
        "mean_ci_a": _interval(resampled_a, confidence),
        "mean_ci_b": _interval(resampled_b, confidence),
        "difference": mean_b - mean_a,
        "difference_ci": _interval(d_mean, confidence),
        "difference_sd": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
        "p_value": _p_value(d_mean, confidence),
        "per_class_auc_a": [float(v) for v in point_a],
        "per_class_auc_b": [float(v) for v in point_b],
        "per_class_ci_a": [_interval(boot_a[:, c], confidence) if valid[c] else [nan, nan]
                           for c in range(y.shape[1])],
        "per_class_ci_b": [_interval(boot_b[:, c], confidence) if valid[c] else [nan, nan]
                           for c in range(y.shape[1])],
        "per_class_difference": [float(v) for v in point_b - point_a],
        "per_class_difference_ci": [_interval(d_class[:, c], confidence)
                                    for c in range(y.shape[1])],
        "per_class_p_value": [_p_value(d_class[:, c], confidence) if valid[c] else float("nan")
                              for c in range(y.shape[1])],
        "mean_valid_resamples": int(finite.size),
        "n_boot": int(n_boot), "confidence": float(confidence), "seed": int(seed),
        "patients": int(n_patients), "images": int(len(y)),
    }


# --------------------------------------------------------------------------- DeLong


def _delong_inputs(y, scores, name: str):
    """Labels (N,) and scores (k, N) as float64, checked as everywhere else."""
    y = np.asarray(y, np.float64)
    scores = np.atleast_2d(np.asarray(scores, np.float64))
    if y.ndim != 1 or scores.shape[1] != len(y):
        raise DataError(f"{name}: labels have shape {y.shape} and scores {scores.shape}; "
                        "expected (N,) and (N,) or (k, N)")
    checked_labels_and_scores(y, scores[0])  # the label and finiteness checks of everywhere
    if not np.isfinite(scores).all():
        raise DataError(f"{name}: scores contain non-finite values")
    return y, scores


def _structural_components(positives, negatives):
    """DeLong's placement values of (k, m) positive and (k, n) negative scores: V10 (k, m),
    V01 (k, n) and the AUCs (k,), ties counted one half (mid-ranks)."""
    m, n = positives.shape[1], negatives.shape[1]
    tx = stats.rankdata(positives, axis=1)
    ty = stats.rankdata(negatives, axis=1)
    tz = stats.rankdata(np.concatenate([positives, negatives], axis=1), axis=1)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return v10, v01, v10.mean(axis=1)


def delong_covariance(y, scores) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of k models on one class and DeLong's (k, k) covariance of them (Sun & Xu 2014).

    With m positives X and n negatives Y, psi(x, y) = [x > y] + 1/2 [x = y], DeLong's structural
    components of model r are V10_i = (1/n) sum_j psi(X_i, Y_j) and V01_j = (1/m) sum_i psi(X_i,
    Y_j); AUC_r = mean_i V10_i, and

        Cov = S10 / m + S01 / n,

    S10, S01 the sample covariances (ddof 1) of the V10 and V01 across models. Sun & Xu get the
    components from midranks in O((m + n) log(m + n)): with T_Z the midrank of a score among all
    m + n, T_X among the positives and T_Y among the negatives,
    V10_i = (T_Z(X_i) - T_X(X_i)) / n and V01_j = 1 - (T_Z(Y_j) - T_Y(Y_j)) / m.

    Args:
        y: (N,) labels 1 / 0 / -1 (unknown, left out).
        scores: (N,) or (k, N).

    Returns:
        (aucs (k,), covariance (k, k)); NaN where the class lacks a positive or a negative, and
        NaN covariance with fewer than two of either.
    """
    y, scores = _delong_inputs(y, scores, "delong")
    positives, negatives = scores[:, y == 1], scores[:, y == 0]
    m, n, k = positives.shape[1], negatives.shape[1], len(scores)
    if m == 0 or n == 0:
        return np.full(k, np.nan), np.full((k, k), np.nan)
    v10, v01, aucs = _structural_components(positives, negatives)
    if m < 2 or n < 2:
        return aucs, np.full((k, k), np.nan)
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def delong_test(y, scores_a, scores_b) -> tuple[float, float, float, float]:
    """DeLong's test of two correlated ROC AUCs on the same images (one class).

    z = (AUC_b - AUC_a) / sqrt(Var_a + Var_b - 2 Cov_ab) from :func:`delong_covariance`, and the
    two-sided p = 2 (1 - Phi(|z|)). Two models with identical AUCs and zero variance of the
    difference (e.g. the same scores) give z = 0, p = 1.

    Returns:
        (auc_a, auc_b, z, p_value); all NaN where the class has no positive or no negative.
    """
    aucs, cov = delong_covariance(y, np.stack([np.asarray(scores_a, np.float64),
                                               np.asarray(scores_b, np.float64)]))
    return _z_test(aucs, cov)


def clustered_delong_covariance(y, scores, groups) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of k models on one class and their (k, k) covariance for clustered data: several
    images per patient (Obuchowski 1997, "Nonparametric analysis of clustered ROC curve data").

    The structural components are :func:`delong_covariance`'s, V10(X) = (1/N) sum of psi(X, Y)
    over the N negative images and V01(Y) = (1/M) sum of psi(X, Y) over the M positive ones,
    summed per patient i (V10_i, V01_i); patient i has m_i positive and n_i negative images;
    I patients, I10 of them with a positive image and I01 with a negative one::

        S10 = I10 / ((I10 - 1) M) sum_i (V10_i - m_i AUC)(V10_i - m_i AUC)'
        S01 = I01 / ((I01 - 1) N) sum_i (V01_i - n_i AUC)(V01_i - n_i AUC)'
        S11 = I / (I - 1)        sum_i (V10_i - m_i AUC)(V01_i - n_i AUC)'
        Cov = S10 / M + S01 / N + (S11 + S11') / (M N)

    With one image per patient S11 = 0 and S10, S01 are DeLong's: the result equals
    :func:`delong_covariance` exactly. Repeating every patient's images k times changes
    nothing (a patient counts once), where image-level DeLong's variance shrinks k-fold.

    Returns:
        (aucs (k,), covariance (k, k)); NaN covariance with fewer than two patients with a
        positive or with a negative (NaN AUCs without a positive or a negative).
    """
    y, scores = _delong_inputs(y, scores, "clustered delong")
    patient, n_patients = _patient_index(groups, len(y))
    known = y >= 0
    y, scores, patient = y[known], scores[:, known], patient[known]
    pos, neg = y == 1, y == 0
    m, n, k = int(pos.sum()), int(neg.sum()), len(scores)
    if m == 0 or n == 0:
        return np.full(k, np.nan), np.full((k, k), np.nan)
    v10, v01, aucs = _structural_components(scores[:, pos], scores[:, neg])
    per_patient = lambda values, where: np.stack(  # noqa: E731  (k, I) sums per patient
        [np.bincount(patient[where], weights=row, minlength=n_patients) for row in values])
    m_i = np.bincount(patient[pos], minlength=n_patients).astype(np.float64)
    n_i = np.bincount(patient[neg], minlength=n_patients).astype(np.float64)
    d10 = per_patient(v10, pos) - m_i * aucs[:, None]
    d01 = per_patient(v01, neg) - n_i * aucs[:, None]
    i_all = int(((m_i + n_i) > 0).sum())
    i10, i01 = int((m_i > 0).sum()), int((n_i > 0).sum())
    if i10 < 2 or i01 < 2:
        return aucs, np.full((k, k), np.nan)
    s10 = i10 / ((i10 - 1) * m) * (d10 @ d10.T)
    s01 = i01 / ((i01 - 1) * n) * (d01 @ d01.T)
    s11 = i_all / (i_all - 1) * (d10 @ d01.T)
    return aucs, s10 / m + s01 / n + (s11 + s11.T) / (m * n)


def clustered_delong_test(y, scores_a, scores_b, groups) -> tuple[float, float, float, float]:
    """:func:`delong_test` with :func:`clustered_delong_covariance`: the two-sided test of two
    correlated AUCs that counts a patient, not an image, as the unit of evidence.

    Returns:
        (auc_a, auc_b, z, p_value).
    """
    aucs, cov = clustered_delong_covariance(
        y, np.stack([np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)]),
        groups)
    return _z_test(aucs, cov)


def _z_test(aucs, cov) -> tuple[float, float, float, float]:
    auc_a, auc_b = float(aucs[0]), float(aucs[1])
    variance = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    difference = auc_b - auc_a
    if not np.isfinite(variance) or not np.isfinite(difference):
        return auc_a, auc_b, float("nan"), float("nan")
    if variance <= 1e-300:  # no spread: equal AUCs are no evidence; different ones are
        z = 0.0 if abs(difference) < 1e-12 else float(np.copysign(np.inf, difference))
    else:
        z = difference / np.sqrt(variance)
    return auc_a, auc_b, float(z), float(2.0 * stats.norm.sf(abs(z)))


# --------------------------------------------------------------------------- calibration


def _bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bins on [0, 1]: [0, 1/bins), [1/bins, 2/bins), ..., [1 - 1/bins, 1]."""
    if int(bins) < 1:
        raise ConfigError(f"bins must be a positive integer; got {bins}")
    return np.minimum((np.clip(p, 0.0, 1.0) * bins).astype(np.int64), bins - 1)


def _binary_ece(outcome: np.ndarray, confidence: np.ndarray, bins: int) -> float:
    """sum over bins b of (n_b / n) |mean outcome in b - mean confidence in b|."""
    if outcome.size == 0:
        return float("nan")
    index = _bin_index(confidence, bins)
    observed = np.bincount(index, weights=outcome, minlength=bins)
    predicted = np.bincount(index, weights=confidence, minlength=bins)
    # |sum outcome - sum confidence| / n per bin == (n_b / n) |mean outcome - mean confidence|
    return float(np.abs(observed - predicted).sum() / outcome.size)


def _check_probabilities(y_true, probabilities):
    y, p, one = checked_labels_and_scores(y_true, probabilities, "probabilities")
    if (p < 0).any() or (p > 1).any():
        raise DataError("probabilities must lie in [0, 1] (apply sigmoid or softmax first)")
    return y, p, one


def _top_label(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Single-label: (1 if the arg-max class is the true class else 0, the max probability)."""
    return (p.argmax(1) == y.argmax(1)).astype(np.float64), p.max(1)


def expected_calibration_error(y_true, probabilities, bins: int = 15, *,
                               multi_label: bool = True) -> dict:
    """Expected calibration error with ``bins`` equal-width bins on [0, 1].

    ECE = sum_b (n_b / n) |acc_b - conf_b| over the bins b (bin b = [b/bins, (b+1)/bins), the
    last one closed).

    * multi-label (independent sigmoids): per class, the binary problem of that class: conf is
      the predicted probability of a positive and acc the fraction of positives in the bin,
      over the images whose label is known. ``ece`` pools every known (image, class) pair into
      one binary problem.
    * single-label (softmax; ``multi_label=False``): ``ece`` is the usual top-label ECE (conf =
      the largest probability, acc = whether that class is the true one); ``per_class`` is the
      one-vs-rest binary ECE of each class's probability column.

    Returns:
        {"ece": float, "per_class": (C,) array, "bins": bins}; NaN for a class with no known
        label.
    """
    y, p, _ = _check_probabilities(y_true, probabilities)
    per_class = np.array([_binary_ece(y[y[:, c] >= 0, c], p[y[:, c] >= 0, c], bins)
                          for c in range(y.shape[1])])
    if multi_label:
        known = y >= 0
        overall = _binary_ece(y[known], p[known], bins)
    else:
        overall = _binary_ece(*_top_label(y, p), bins)
    return {"ece": overall, "per_class": per_class, "bins": int(bins)}


def brier_score(y_true, probabilities, *, multi_label: bool = True) -> dict:
    """Brier score: mean squared error of the predicted probabilities.

    * multi-label: per class, mean over known images of (p_ic - y_ic)^2; ``brier`` is the mean
      over all known (image, class) pairs pooled.
    * single-label (``multi_label=False``): ``brier`` is the multi-class Brier score,
      mean over images of sum_k (p_ik - y_ik)^2 (0 perfect, 2 worst); ``per_class`` is the mean
      over images of (p_ik - y_ik)^2, so the per-class values sum to ``brier``.

    Returns:
        {"brier": float, "per_class": (C,) array}.
    """
    y, p, _ = _check_probabilities(y_true, probabilities)
    known = y >= 0
    squared = np.where(known, (p - y) ** 2, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = squared.sum(0) / known.sum(0)
    if multi_label:
        overall = float(squared.sum() / known.sum()) if known.any() else float("nan")
    else:
        overall = float(squared.sum(1).mean())
    return {"brier": overall, "per_class": per_class}


def reliability_curve(y_true, probabilities, bins: int = 15, *, multi_label: bool = True) -> dict:
    """Per-bin mean predicted probability, observed frequency and count (the reliability
    diagram), with the same bins and the same pooling as :func:`expected_calibration_error`:
    multi-label pools every known (image, class) pair; single-label uses the top label.

    Returns:
        {"edges": (bins + 1,), "mean_predicted": (bins,), "observed": (bins,), "count":
        (bins,)}; empty bins are NaN (count 0).
    """
    y, p, _ = _check_probabilities(y_true, probabilities)
    if multi_label:
        known = y >= 0
        outcome, confidence = y[known], p[known]
    else:
        outcome, confidence = _top_label(y, p)
    index = _bin_index(confidence, bins)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(index, weights=confidence, minlength=bins) / count
        observed = np.bincount(index, weights=outcome, minlength=bins) / count
    return {"edges": np.linspace(0.0, 1.0, bins + 1), "mean_predicted": mean_predicted,
            "observed": observed, "count": count.astype(np.int64)}


def calibration_summary(y_true, probabilities, class_names, *, multi_label: bool = True,
                        bins: int = 15) -> dict:
    """The JSON-ready calibration entry of a run: overall and per-class ECE and Brier."""
    ece = expected_calibration_error(y_true, probabilities, bins, multi_label=multi_label)
    brier = brier_score(y_true, probabilities, multi_label=multi_label)
    return {"ece": ece["ece"], "brier": brier["brier"], "bins": int(bins),
            "per_class": {str(name): {"ece": float(ece["per_class"][c]),
                                      "brier": float(brier["per_class"][c])}
                          for c, name in enumerate(class_names)}}


# --------------------------------------------------------------------------- two runs

PREDICTION_KEYS = ("logits", "labels", "patients", "paths", "class_names")


def load_predictions(source) -> dict:
    """A run's ``test_predictions.npz`` (a path, an open ``np.load`` result or a dict) as a dict
    of arrays; missing keys are a DataError naming the file."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise DataError(f"{path}: no such test predictions file")
        with np.load(path, allow_pickle=False) as npz:
            pred = {key: npz[key] for key in npz.files}
        where = str(path)
    else:
        pred = {key: source[key] for key in (source.files if hasattr(source, "files")
                                             else source)}
        where = "test predictions"
    missing = [key for key in PREDICTION_KEYS if key not in pred]
    if missing:
        raise DataError(f"{where}: missing {missing}; expected the keys {list(PREDICTION_KEYS)}")
    return pred


def _is_multi_label(pred: dict) -> bool:
    if "multi_label" in pred:
        return bool(np.asarray(pred["multi_label"]))
    # Older files: single-label data has exactly one positive per image and no unknown labels.
    labels = np.asarray(pred["labels"])
    return not ((labels >= 0).all() and (labels.sum(1) == 1).all())


def _same_test_images(pred_a: dict, pred_b: dict) -> None:
    paths_a, paths_b = (np.asarray(p["paths"]).astype(str) for p in (pred_a, pred_b))
    if paths_a.shape != paths_b.shape or (paths_a != paths_b).any():
        differ = (len(paths_a) if paths_a.shape != paths_b.shape
                  else int((paths_a != paths_b).sum()))
        raise ConfigError(
            f"the two runs' test predictions are not on the same images in the same order "
            f"({len(paths_a)} vs {len(paths_b)} images, {differ} differ); compare runs of the "
            "same dataset, split and seed")
    names_a, names_b = (list(np.asarray(p["class_names"]).astype(str)) for p in (pred_a, pred_b))
    if names_a != names_b:
        raise ConfigError(f"the two runs have different classes: {names_a} vs {names_b}")
    for key in ("labels", "clean_labels"):
        if (key in pred_a) != (key in pred_b) or (
                key in pred_a and not np.array_equal(pred_a[key], pred_b[key])):
            raise ConfigError(f"the two runs' test {key.replace('_', ' ')} differ; compare runs "
                              "of the same data")


PER_CLASS_TEST = "paired patient bootstrap"


def _compare_on(labels, logits_a, logits_b, groups, class_names, multi_label, n_boot, seed,
                bins) -> dict:
    """Paired patient bootstrap per class and of the mean, Holm across the classes, clustered
    DeLong per class, image-level DeLong (for reference), all ranking
    :func:`~chestkd.scores.ranking_scores`, and both calibrations on one label set."""
    labels = np.asarray(labels, np.float64)
    score_a, score_b = (ranking_scores(z, multi_label) for z in (logits_a, logits_b))
    prob_a, prob_b = (probabilities_from_logits(z, multi_label) for z in (logits_a, logits_b))
    nan2 = [float("nan")] * 2
    per_class = {}
    for c, name in enumerate(class_names):
        # Single-label data: each class one-vs-rest (its probability column against the rest).
        auc_a, auc_b, z, p = delong_test(labels[:, c], score_a[:, c], score_b[:, c])
        *_, cz, cp = clustered_delong_test(labels[:, c], score_a[:, c], score_b[:, c], groups)
        per_class[str(name)] = {"auc_a": auc_a, "auc_b": auc_b, "ci_a": nan2, "ci_b": nan2,
                                "difference": auc_b - auc_a, "difference_ci": nan2,
                                "p_value": float("nan"), "p_holm": float("nan"),
                                "clustered_delong_z": cz, "clustered_delong_p": cp,
                                "delong_z": z, "delong_p": p,
                                "patients_with": {
                                    kind: int(len(np.unique(groups[labels[:, c] == value])))
                                    for kind, value in (("positive", 1), ("negative", 0))}}
    if n_boot > 0:
        paired = paired_bootstrap(labels, score_a, score_b, groups, n_boot=n_boot, seed=seed)
        mean = {k: paired[k] for k in ("mean_auc_a", "mean_auc_b", "mean_ci_a", "mean_ci_b",
                                       "difference", "difference_ci", "difference_sd",
                                       "p_value", "mean_valid_resamples")}
        # A class seen in one patient (or missing in all but one) has no patient-level
        # evidence: resampling that patient in or out only gives one answer, so no p-value.
        p_values = [p if min(per_class[str(name)]["patients_with"].values()) >= 2
                    else float("nan")
                    for p, name in zip(paired["per_class_p_value"], class_names)]
        adjusted = holm(p_values)
        for c, name in enumerate(class_names):
            per_class[str(name)].update(
                ci_a=paired["per_class_ci_a"][c], ci_b=paired["per_class_ci_b"][c],
                difference_ci=paired["per_class_difference_ci"][c],
                p_value=p_values[c], p_holm=float(adjusted[c]))
        test = PER_CLASS_TEST
    else:
        point_a, point_b = exact_auc(labels, score_a), exact_auc(labels, score_b)
        valid = np.isfinite(point_a) & np.isfinite(point_b)
        a, b = (float(mean_over_classes(v, valid)) for v in (point_a, point_b))
        mean = {"mean_auc_a": a, "mean_auc_b": b, "mean_ci_a": nan2, "mean_ci_b": nan2,
                "difference": b - a, "difference_ci": nan2, "difference_sd": float("nan"),
                "p_value": float("nan")}
        test = "none (bootstrap=0)"
    tested = sum(np.isfinite(v["p_value"]) for v in per_class.values())
    return {**mean, "per_class": per_class, "per_class_test": test,
            "multiplicity": f"Holm over {tested} findings", "n_boot": int(n_boot),
            "calibration_a": calibration_summary(labels, prob_a, class_names,
                                                 multi_label=multi_label, bins=bins),
            "calibration_b": calibration_summary(labels, prob_b, class_names,
                                                 multi_label=multi_label, bins=bins)}


def _distinct_names(name_a: str, name_b: str) -> tuple[str, str]:
    """Column names of the two models; equal names (two seeds of one model) would make one
    column of both, so they become ``A: name`` and ``B: name``."""
    return (f"A: {name_a}", f"B: {name_b}") if name_a == name_b else (name_a, name_b)


def comparison_table(comparison: dict, name_a: str = "A", name_b: str = "B") -> pd.DataFrame:
    """The table of one comparison (:func:`compare_predictions`'s ``comparison``): a row per
    finding, then ``**mean**`` (the mean AUC over the findings).

    Columns: ``finding``; ``{name_a}``, ``{name_a}_ci``, ``{name_b}``, ``{name_b}_ci`` (AUC and
    95 % patient-bootstrap interval); ``change`` (b - a) and ``change_ci`` (paired interval);
    ``p`` (two-sided paired patient-bootstrap p, from the same resamples as the intervals, so a
    row cannot say "interval includes 0" and "p < 0.05" beyond the resampling's granularity);
    ``p_holm`` (Holm-adjusted across the findings; none for the mean, a single test); and
    ``test`` naming the test behind ``p``; ``p_clustered_delong``, the analytic
    patient-aware test (:func:`clustered_delong_test`, also there when the bootstrap is off).
    Image-level DeLong p-values (which count a patient's images as independent) stay in the
    comparison's JSON (``delong_p``), not in this table.
    """
    name_a, name_b = _distinct_names(name_a, name_b)
    rows = [{"finding": name, name_a: v["auc_a"], f"{name_a}_ci": v.get("ci_a"),
             name_b: v["auc_b"], f"{name_b}_ci": v.get("ci_b"), "change": v["difference"],
             "change_ci": v["difference_ci"], "p": v["p_value"], "p_holm": v["p_holm"],
             "test": comparison["per_class_test"],
             "p_clustered_delong": v.get("clustered_delong_p", float("nan"))}
            for name, v in comparison["per_class"].items()]
    rows.append({"finding": "**mean**", name_a: comparison["mean_auc_a"],
                 f"{name_a}_ci": comparison.get("mean_ci_a"), name_b: comparison["mean_auc_b"],
                 f"{name_b}_ci": comparison.get("mean_ci_b"), "change": comparison["difference"],
                 "change_ci": comparison["difference_ci"], "p": comparison["p_value"],
                 "p_holm": float("nan"),
                 "test": PER_CLASS_TEST if comparison["n_boot"] > 0 else "none (bootstrap=0)",
                 "p_clustered_delong": float("nan")})
    return pd.DataFrame(rows)


def _with_interval(value, ci) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if ci is None or not np.all(np.isfinite(np.asarray(ci, np.float64))):
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _p_text(p) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def comparison_markdown(comparison: dict, name_a: str = "A", name_b: str = "B") -> str:
    """:func:`comparison_table` as Markdown, the column headers naming the tests, then the
    calibration of both models and a sentence on the mean AUC change."""
    name_a, name_b = _distinct_names(name_a, name_b)
    frame = comparison_table(comparison, name_a, name_b)
    n_boot = int(comparison["n_boot"])
    tested = comparison["multiplicity"].split(" over ")[-1]
    headers = ["finding", f"{name_a} AUC [95% CI]", f"{name_b} AUC [95% CI]",
               f"{name_b} - {name_a} [95% CI]",
               f"p ({comparison['per_class_test']})", f"p Holm-adjusted ({tested})",
               "p (clustered DeLong)"]
    cells = [[str(r["finding"]), _with_interval(r[name_a], r[f"{name_a}_ci"]),
              _with_interval(r[name_b], r[f"{name_b}_ci"]),
              _with_interval(r["change"], r["change_ci"]), _p_text(r["p"]),
              _p_text(r["p_holm"]) if r["finding"] != "**mean**" else "(single test)",
              _p_text(r["p_clustered_delong"]) if r["finding"] != "**mean**" else "--"]
             for _, r in frame.iterrows()]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|",
             *("| " + " | ".join(row) + " |" for row in cells)]
    if n_boot > 0:
        note = (f"Intervals and p from {n_boot} patient resamples (a patient's images stay "
                "together), both models on the same resamples; p is two-sided, "
                "+1-corrected; none for a finding with fewer than two patients with a "
                "positive or with a negative. Holm controls the family-wise error across the "
                "findings. "
                "Clustered DeLong (Obuchowski 1997): the analytic test with the patient as "
                "the unit.")
        kept = comparison.get("mean_valid_resamples", n_boot)
        if kept < n_boot:
            note += (f" The mean's intervals and p use the {kept} resamples in which every "
                     "finding kept a positive and a negative"
                     + (f" (fewer than {min_resamples()}: no interval)."
                        if kept < min_resamples() else "."))
    else:
        note = ("No intervals and no bootstrap p-values: the bootstrap was off (bootstrap=0); "
                "the clustered DeLong p (Obuchowski 1997) counts each patient once.")
    cal_a, cal_b = comparison["calibration_a"], comparison["calibration_b"]
    calibration = (f"Calibration ({cal_a['bins']} bins; lower is better): ECE {name_a} "
                   f"{cal_a['ece']:.4f}, {name_b} {cal_b['ece']:.4f}; Brier {name_a} "
                   f"{cal_a['brier']:.4f}, {name_b} {cal_b['brier']:.4f}.")
    lo, hi = comparison["difference_ci"]
    if not np.all(np.isfinite(np.asarray([lo, hi], np.float64))):
        verdict = ("no interval (bootstrap=0)" if n_boot == 0 else
                   f"no interval (fewer than {min_resamples()} resamples kept every finding)")
    elif lo <= 0 <= hi:
        verdict = "its 95 % interval includes zero: no difference shown either way"
    else:
        verdict = "its 95 % interval excludes zero"
    return "\n".join(lines) + "\n\n" + "\n".join([
        note, calibration,
        f"Mean AUC change {comparison['difference']:+.4f}, paired-bootstrap p = "
        f"{_p_text(comparison['p_value'])}: {verdict}."])


def compare_predictions(pred_a, pred_b, *, n_boot: int = 1000, seed: int = 0,
                        bins: int = 15) -> tuple[dict, pd.DataFrame]:
    """Paired comparison of two finished runs from their saved test predictions.

    Args:
        pred_a, pred_b: ``{prefix}test_predictions.npz`` of two runs (paths, ``np.load``
            results or dicts) on the same test images in the same order; otherwise a
            ConfigError says so.
        n_boot: patient resamples of the paired bootstrap (0: no interval and no p of the
            mean).

    Returns:
        (summary, table). ``summary`` is JSON-ready: ``model_a``, ``model_b``, ``labels``
        ("clean" or "as given"), ``test_images``, ``patients``, ``n_boot``, ``seed``, and
        ``comparison`` on the clean labels when the runs have them (else the labels as given):
        ``mean_auc_a``, ``mean_auc_b``, ``difference`` (b - a), ``difference_ci``,
        ``mean_ci_a``, ``mean_ci_b``, ``difference_sd``, ``p_value`` (paired bootstrap),
        ``per_class`` {class: ``auc_a``, ``auc_b``, ``ci_a``, ``ci_b``, ``difference``,
        ``difference_ci``, ``p_value`` (paired patient bootstrap; NaN with fewer than two
        patients with a positive or with a negative), ``p_holm`` (Holm across the
        classes), ``clustered_delong_z``, ``clustered_delong_p`` (Obuchowski 1997), ``delong_z``,
        ``delong_p`` (image-level DeLong: it ignores patients, kept for reference only)},
        ``per_class_test``, ``multiplicity``, ``n_boot``, ``calibration_a`` and
        ``calibration_b``; with clean labels also ``noisy_comparison``,
        the same against the noisy labels. ``table`` is :func:`comparison_table` of
        ``comparison``.
    """
    pred_a, pred_b = load_predictions(pred_a), load_predictions(pred_b)
    _same_test_images(pred_a, pred_b)
    class_names = [str(c) for c in np.asarray(pred_a["class_names"])]
    multi_label = _is_multi_label(pred_a)
    logits_a, logits_b = pred_a["logits"], pred_b["logits"]
    groups = np.asarray(pred_a["patients"]).astype(str)
    name_a = str(pred_a.get("model", "")) or "A"
    name_a, name_b = _distinct_names(name_a, str(pred_b.get("model", "")) or "B")
    clean = pred_a.get("clean_labels")
    common = dict(groups=groups, class_names=class_names, multi_label=multi_label,
                  n_boot=int(n_boot), seed=int(seed), bins=int(bins))
    summary = {"model_a": name_a, "model_b": name_b,
               "labels": "clean" if clean is not None else "as given",
               "test_images": int(len(groups)), "patients": int(len(np.unique(groups))),
               "n_boot": int(n_boot), "seed": int(seed), "multi_label": multi_label}
    summary["comparison"] = _compare_on(clean if clean is not None else pred_a["labels"],
                                        logits_a, logits_b, **common)
    if clean is not None:
        summary["noisy_comparison"] = _compare_on(pred_a["labels"], logits_a, logits_b,
                                                  **common)
    return summary, comparison_table(summary["comparison"], name_a, name_b)


def write_comparison(pred_a, pred_b, out, *, names=("A", "B"), title: str = "",
                     n_boot: int = 1000, seed: int = 0) -> dict:
    """Compare two runs on the same test images (:func:`compare_predictions`) and write the
    result into the folder ``out``: ``comparison.csv`` (:func:`comparison_table` against the
    clean labels, or the labels as given), ``comparison.md`` (``# title``, then one
    :func:`comparison_markdown` section per label set) and ``comparison.json`` (the summary).
    Prints the Markdown; returns the summary."""
    from chestkd.io import atomic_write_json, atomic_write_text

    out = Path(out)
    name_a, name_b = names
    summary, _ = compare_predictions(pred_a, pred_b, n_boot=n_boot, seed=seed)
    lines = [f"# {title}", ""]
    parts = [(summary["comparison"], summary["labels"])]
    if "noisy_comparison" in summary:
        parts.append((summary["noisy_comparison"], "noisy"))
    comparison_table(summary["comparison"], name_a, name_b).to_csv(out / "comparison.csv",
                                                                   index=False)
    for comparison, labels in parts:
        lines += [f"## Test AUC against {labels} labels", "",
                  comparison_markdown(comparison, name_a, name_b), ""]
    text = "\n".join(lines)
    atomic_write_text(out / "comparison.md", text + "\n")
    atomic_write_json(out / "comparison.json", summary)
    print("\n" + text)
    return summary
