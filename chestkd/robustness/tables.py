"""Scores of a model before and after adversarial attacks (RoS-KD's Table II).

For each attack the table holds macro precision, recall and F1
(:func:`chestkd.evaluation.classification.classification_report`: arg-max for exclusive
classes, probability >= 0.5 per finding for multi-label data) and the exact mean AUC, on the
clean inputs and on the adversarial ones, with the drop between them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from chestkd.data.dataset import Dataset
from chestkd.data.pipeline import make_dataset
from chestkd.errors import ConfigError
from chestkd.evaluation.classification import classification_report, report_summary
from chestkd.evaluation.statistics import probabilities_from_logits
from chestkd.robustness.attacks import fgsm, pgd
from chestkd.training.losses import exact_mean_auc

ATTACKS = ("fgsm", "pgd")
SCORES = ("precision", "recall", "f1", "mean_auc")
PAPER_EPSILON = 1.28 / 255   # RoS-KD Table II: L2 radius 1.28/255


def scores(model, images, labels, class_names, *, multi_label: bool, thresholds=None,
           batch_size: int = 64) -> dict:
    """Macro precision, recall, F1 and the exact mean AUC of ``model`` on ``images``."""
    logits = np.asarray(model.predict(np.asarray(images, np.float32), batch_size=batch_size,
                                      verbose=0), np.float64)
    probabilities = probabilities_from_logits(logits, multi_label)
    report = classification_report(labels, probabilities, class_names,
                                   multi_label=multi_label, thresholds=thresholds)
    summary = report_summary(report, multi_label=multi_label)
    return {"precision": summary["precision"], "recall": summary["recall"],
            "f1": summary["f1"], "mean_auc": exact_mean_auc(labels, logits, multi_label)}


def adversarial_images(model, images, labels, attack: str, *, epsilon: float, norm: str,
                       steps: int = 10, multi_label: bool = True, seed: int = 0):
    if attack == "fgsm":
        return fgsm(model, images, labels, epsilon, multi_label=multi_label, norm=norm)
    if attack == "pgd":
        return pgd(model, images, labels, epsilon, steps=steps, norm=norm, seed=seed,
                   multi_label=multi_label)
    raise ConfigError(f"--attacks {attack!r}: choose from {list(ATTACKS)}")


def robustness_table(model, images, labels, class_names, *, multi_label: bool,
                     epsilon: float = PAPER_EPSILON, norm: str = "l2", steps: int = 10,
                     attacks=ATTACKS, thresholds=None, seed: int = 0) -> pd.DataFrame:
    """One row per attack: ``before_*`` and ``after_*`` scores (:data:`SCORES`) and the drop
    ``*_drop = before - after``, with the attack's settings."""
    before = scores(model, images, labels, class_names, multi_label=multi_label,
                    thresholds=thresholds)
    rows = []
    for attack in attacks:
        attacked = adversarial_images(model, images, labels, attack, epsilon=epsilon,
                                      norm=norm, steps=steps, multi_label=multi_label,
                                      seed=seed)
        after = scores(model, attacked, labels, class_names, multi_label=multi_label,
                       thresholds=thresholds)
        row = {"attack": attack, "norm": norm, "epsilon": float(epsilon),
               "steps": int(steps) if attack == "pgd" else 1, "images": len(images)}
        for key in SCORES:
            row[f"before_{key}"] = before[key]
            row[f"after_{key}"] = after[key]
            row[f"{key}_drop"] = before[key] - after[key]
        rows.append(row)
    return pd.DataFrame(rows)


def split_arrays(data: Dataset, *, image_size: int, normalization: str = "minus_one_one",
                mean_std=None, cache_dir=None, max_images=None, batch_size: int = 64):
    """(images, labels) of the test split as arrays, scored on the clean labels when the data
    has them (the phantom with label noise), else its labels; the first ``max_images``."""
    test = make_dataset(data, "test", image_size=image_size, batch_size=batch_size,
                        training=False, normalization=normalization, mean_std=mean_std,
                        cache_dir=cache_dir)
    images, labels = [], []
    for x, y in test:
        images.append(x.numpy())
        labels.append(y.numpy())
        if max_images is not None and sum(map(len, images)) >= max_images:
            break
    images, labels = np.concatenate(images), np.concatenate(labels)
    if data.clean_labels is not None:
        labels = np.asarray(data.clean_labels, np.float32)[data.split == "test"][:len(images)]
    limit = len(images) if max_images is None else int(max_images)
    return images[:limit], labels[:limit]
