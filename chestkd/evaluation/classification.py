"""Thresholded scores: precision, recall, F1 and accuracy per class, and decision thresholds.

AUC ranks; a user of a classifier also needs its decisions. Three papers report them (the
teacher-assistant COVID-19 study, Table 2; transfer learning for pediatric pneumonia, Table 4.1;
RoS-KD, Table I), so they live here once:

* single-label data (exclusive classes): the decision is the arg-max class, and the report is
  scikit-learn's ``classification_report`` layout — a row per class, then ``accuracy``,
  ``macro avg`` and ``weighted avg`` (weighted by support);
* multi-label data (independent findings): class ``c`` is predicted when its probability is at
  least ``thresholds[c]`` (0.5 unless chosen on the validation split with
  :func:`choose_thresholds`); the summary rows are ``micro avg`` (pooled over all
  image-finding pairs), ``macro avg`` and ``weighted avg``, and ``accuracy`` is the subset
  accuracy (every finding of an image right). Unknown labels (-1) are left out per class.

A class with no positives in the data (support 0) has no recall, so its precision, recall and F1
are NaN and it is left out of the macro average, as its AUC is (NaN, left out of the mean AUC);
:func:`report_summary` names such classes. Counting them as 0, scikit-learn's
``zero_division=0``, pulls a perfect classifier's macro F1 below 1 whenever a rare class is
absent from a small test split. A class with positives but no positive decision has precision 0.

Probabilities, not logits, go in: sigmoid outputs for multi-label, softmax for single-label.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from chestkd.errors import ConfigError

THRESHOLD_RULES = ("youden", "f1")
SUMMARY_ROWS = ("accuracy", "micro avg", "macro avg", "weighted avg")


def check_threshold_rule(rule) -> str:
    """``rule`` if it is one of :data:`THRESHOLD_RULES`, else a ConfigError naming them."""
    if rule not in THRESHOLD_RULES:
        raise ConfigError(f"--threshold-rule {rule!r}: choose one of {', '.join(THRESHOLD_RULES)}")
    return rule


def _check(y_true, probabilities, class_names):
    y_true = np.asarray(y_true, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if y_true.shape != probabilities.shape or y_true.ndim != 2:
        raise ConfigError(f"labels {y_true.shape} and probabilities {probabilities.shape} must "
                          f"both be (images, classes)")
    if class_names is not None and len(class_names) != y_true.shape[1]:
        raise ConfigError(f"{len(class_names)} class names for {y_true.shape[1]} label columns")
    return y_true, probabilities


def _row(name, precision, recall, f1, support):
    return {"class": name, "precision": float(precision), "recall": float(recall),
            "f1": float(f1), "support": int(support)}


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """One class's precision, recall and F1 from its counts; NaN for a class without
    positives (module docstring)."""
    if tp + fn == 0:
        return np.nan, np.nan, np.nan
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def predicted_labels(probabilities, *, multi_label: bool, thresholds=None) -> np.ndarray:
    """(N, C) 0/1 decisions: arg-max one-hot for single-label, ``p >= threshold`` otherwise."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if not multi_label:
        decisions = np.zeros_like(probabilities)
        decisions[np.arange(len(probabilities)), probabilities.argmax(1)] = 1.0
        return decisions
    thresholds = np.full(probabilities.shape[1], 0.5) if thresholds is None else \
        np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if len(thresholds) != probabilities.shape[1]:
        raise ConfigError(f"{len(thresholds)} thresholds for {probabilities.shape[1]} classes")
    return (probabilities >= thresholds[None, :]).astype(np.float64)


def classification_report(y_true, probabilities, class_names, *, multi_label: bool,
                          thresholds=None) -> pd.DataFrame:
    """Precision, recall, F1 and support per class plus the summary rows (module docstring).

    Returns a DataFrame with columns ``class, precision, recall, f1, support``; the summary
    rows carry their name in ``class`` (``accuracy`` holds the accuracy in every score column,
    as scikit-learn prints it).
    """
    y_true, probabilities = _check(y_true, probabilities, class_names)
    class_names = list(class_names)
    decisions = predicted_labels(probabilities, multi_label=multi_label, thresholds=thresholds)
    if not multi_label:
        true, pred = y_true.argmax(1), probabilities.argmax(1)
        labels = list(range(len(class_names)))
        p, r, f, s = skm.precision_recall_fscore_support(true, pred, labels=labels,
                                                         zero_division=0)
        p, r, f = (np.where(s > 0, values, np.nan) for values in (p, r, f))
        rows = [_row(n, *values) for n, *values in zip(class_names, p, r, f, s)]
        accuracy = float(skm.accuracy_score(true, pred))
        rows.append(_row("accuracy", accuracy, accuracy, accuracy, len(true)))
    else:
        rows, counts = [], []
        for c, name in enumerate(class_names):
            known = y_true[:, c] >= 0
            y, d = y_true[known, c] == 1, decisions[known, c] == 1
            tp, fp, fn = int((y & d).sum()), int((~y & d).sum()), int((y & ~d).sum())
            counts.append((tp, fp, fn))
            rows.append(_row(name, *precision_recall_f1(tp, fp, fn), int(y.sum())))
        known = y_true >= 0
        exact = np.all((decisions == y_true) | ~known, axis=1)
        accuracy = float(exact.mean()) if len(exact) else 0.0
        rows.append(_row("accuracy", accuracy, accuracy, accuracy, len(y_true)))
        tp, fp, fn = (sum(values) for values in zip(*counts))
        rows.append(_row("micro avg", *precision_recall_f1(tp, fp, fn),
                         sum(r["support"] for r in rows[:-1])))
    per_class = pd.DataFrame(rows[:len(class_names)])
    support = per_class["support"].to_numpy(dtype=np.float64)
    scored = support > 0                         # classes without positives: NaN, left out
    scores = per_class[["precision", "recall", "f1"]].to_numpy()[scored]
    macro = scores.mean(0) if scored.any() else np.full(3, np.nan)
    rows.append(_row("macro avg", *macro, support.sum()))
    weighted = (scores * support[scored, None]).sum(0) / support.sum() if scored.any() else \
        np.full(3, np.nan)
    rows.append(_row("weighted avg", *weighted, support.sum()))
    return pd.DataFrame(rows)


def report_summary(report: pd.DataFrame, *, multi_label: bool) -> dict:
    """The headline numbers of a report: accuracy and macro precision / recall / F1, and the
    classes that the macro average leaves out (no positives in the data)."""
    rows = report.set_index("class")
    macro = rows.loc["macro avg"]
    accuracy = float(rows.loc["accuracy", "precision"])
    per_class = rows.drop(index=[name for name in SUMMARY_ROWS if name in rows.index])
    return {"accuracy": accuracy, "precision": float(macro["precision"]),
            "recall": float(macro["recall"]), "f1": float(macro["f1"]),
            "decision": "threshold" if multi_label else "argmax",
            "classes_without_positives": [str(name) for name, support
                                          in per_class["support"].items() if support == 0]}


def choose_thresholds(y_true, probabilities, rule: str = "youden") -> np.ndarray:
    """(C,) per-class thresholds chosen on held-out (validation) data.

    ``youden`` maximises sensitivity + specificity - 1 over the ROC curve's thresholds;
    ``f1`` maximises F1 over the precision-recall curve's thresholds. A class whose labels are
    all one value (or unknown) keeps 0.5. Use the validation split, never the test split,
    or the test scores are optimistic.
    """
    check_threshold_rule(rule)
    y_true, probabilities = _check(y_true, probabilities, None)
    thresholds = np.full(y_true.shape[1], 0.5)
    for c in range(y_true.shape[1]):
        known = y_true[:, c] >= 0
        y, p = y_true[known, c], probabilities[known, c]
        if len(np.unique(y)) < 2:
            continue
        if rule == "youden":
            fpr, tpr, cuts = skm.roc_curve(y, p)
            best = int(np.argmax(tpr - fpr))
            thresholds[c] = float(min(cuts[best], 1.0))
        else:
            precision, recall, cuts = skm.precision_recall_curve(y, p)
            f1 = np.where(precision + recall > 0,
                          2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
            # The curve's last point (recall 0) has no threshold.
            thresholds[c] = float(cuts[int(np.argmax(f1[:-1]))])
    return thresholds


def confusion_matrix_figure(y_true, probabilities, class_names, path,
                            title: str = "Confusion matrix (test split)"):
    """The single-label confusion matrix (rows true, columns predicted) as a PNG."""
    from chestkd.evaluation.plots import plot_confusion_matrix

    y_true, probabilities = _check(y_true, probabilities, class_names)
    labels = list(range(len(class_names)))
    matrix = skm.confusion_matrix(y_true.argmax(1), probabilities.argmax(1), labels=labels)
    return plot_confusion_matrix(matrix, list(class_names), path, title=title)
