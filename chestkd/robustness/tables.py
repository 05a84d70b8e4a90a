"""Scores of a model before and after adversarial attacks (RoS-KD's Table II).

For each attack the table holds macro precision, recall and F1
(:func:`chestkd.evaluation.classification.classification_report`: arg-max for exclusive
classes; for multi-label data each finding at the run's own decision threshold, chosen on its
validation split and recorded in ``model_info.json`` — :func:`run_thresholds`) and the exact
mean AUC, on the clean inputs and on the adversarial ones, with the drop between them. The
attacks work in intensity units whatever the run's input normalisation
(:mod:`chestkd.robustness.attacks`).
"""
from __future__ import annotations

import json
from pathlib import Path

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
            "f1": summary["f1"],
            "mean_auc": exact_mean_auc(labels, logits, multi_label, undefined=np.nan)}


def run_thresholds(run_dir, class_names, *, multi_label: bool):
    """The decision thresholds a run chose on its validation split (``model_info.json``,
    else ``metrics.json``), one per class of ``class_names``; None for exclusive classes
    (the decision is the arg-max). A ConfigError names the file when they are missing."""
    if not multi_label:
        return None
    run_dir = Path(run_dir)
    for name in ("model_info.json", "metrics.json"):
        path = run_dir / name
        if not path.is_file():
            continue
        thresholds = json.loads(path.read_text()).get("thresholds") or {}
        values = thresholds.get("values")
        if values is None:
            continue
        names = thresholds.get("class_names", list(class_names))
        if list(names) != list(class_names) or len(values) != len(class_names):
            raise ConfigError(f"{path}: thresholds for classes {list(names)}, the data has "
                              f"{list(class_names)}")
        return [float(v) for v in values]
    raise ConfigError(f"{run_dir}: no decision thresholds (model_info.json or metrics.json "
                      f"'thresholds'); evaluate the run first so they are chosen on its "
                      f"validation split")


def adversarial_images(model, images, labels, attack: str, *, epsilon: float, norm: str,
                       normalization: str, mean_std=None, steps: int = 10,
                       multi_label: bool = True, seed: int = 0):
    """``attack`` (fgsm | pgd) on ``images`` normalised by ``normalization``."""
    common = dict(multi_label=multi_label, norm=norm, normalization=normalization,
                  mean_std=mean_std)
    if attack == "fgsm":
        return fgsm(model, images, labels, epsilon, **common)
    if attack == "pgd":
        return pgd(model, images, labels, epsilon, steps=steps, seed=seed, **common)
    raise ConfigError(f"--attacks {attack!r}: choose from {list(ATTACKS)}")


def robustness_table(model, images, labels, class_names, *, multi_label: bool,
                     normalization: str, mean_std=None, epsilon: float = PAPER_EPSILON,
                     norm: str = "l2", steps: int = 10, attacks=ATTACKS, thresholds=None,
                     seed: int = 0) -> pd.DataFrame:
    """One row per attack: ``before_*`` and ``after_*`` scores (:data:`SCORES`) and the drop
    ``*_drop = before - after``, with the attack's settings.

    ``normalization`` (and ``mean_std``) must be the images' own (the run's image options): it
    sets the size of ``epsilon`` in model inputs and the valid range. ``thresholds``: the
    per-class decision thresholds of multi-label data (None: 0.5)."""
    before = scores(model, images, labels, class_names, multi_label=multi_label,
                    thresholds=thresholds)
    rows = []
    for attack in attacks:
        attacked = adversarial_images(model, images, labels, attack, epsilon=epsilon,
                                      norm=norm, normalization=normalization,
                                      mean_std=mean_std, steps=steps,
                                      multi_label=multi_label, seed=seed)
        after = scores(model, attacked, labels, class_names, multi_label=multi_label,
                       thresholds=thresholds)
        row = {"attack": attack, "norm": norm, "epsilon": float(epsilon),
               "steps": int(steps) if attack == "pgd" else 1, "images": len(images),
               "normalization": normalization}
        for key in SCORES:
            row[f"before_{key}"] = before[key]
            row[f"after_{key}"] = after[key]
            row[f"{key}_drop"] = before[key] - after[key]
        rows.append(row)
    return pd.DataFrame(rows)


def split_arrays(data: Dataset, *, image_size: int, normalization: str = "minus_one_one",
                mean_std=None, cache_dir=None, max_images=None, batch_size: int = 64):
    """(images, labels) of the test split as arrays, scored on the clean labels when the data
    has them (the phantom with label noise), else its labels. With ``max_images``: a seeded
    random subset of that many, in the split's order (the first ones of a folder dataset
    are all of one class, which made every AUC undefined)."""
    test = data.subset("test")
    if max_images is not None and len(test) > int(max_images):
        test = test.select(np.sort(np.random.default_rng(0).permutation(len(test))
                                   [:int(max_images)]))
    pipeline = make_dataset(test, image_size=image_size, batch_size=batch_size,
                            training=False, normalization=normalization, mean_std=mean_std,
                            cache_dir=cache_dir)
    images, labels = [], []
    for x, y in pipeline:
        images.append(x.numpy())
        labels.append(y.numpy())
    images, labels = np.concatenate(images), np.concatenate(labels)
    if test.clean_labels is not None:
        labels = np.asarray(test.clean_labels, np.float32)
    return images, labels
