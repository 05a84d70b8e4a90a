"""Evaluate a trained model on the test split and write the run's results.

Writes ``metrics.json`` (mean and per-class AUC with patient-bootstrap intervals, calibration,
single-label scores, parameters, latency, training time), ``per_class_auc.csv`` and ``.md``
(with ``ci_lo`` / ``ci_hi``), ``test_predictions.npz`` (so two finished runs can be compared
with ``statistics.compare_predictions`` without re-running models), and the plots (ROC curves,
reliability diagram, training curves, confusion matrix), and prints the table.

Decision thresholds: per class, chosen on the VALIDATION split (never the test split) by both
rules of :func:`chestkd.evaluation.classification.choose_thresholds` (Youden's J and F1);
``threshold_rule`` (default ``youden``) is the one the run's decisions use. They go
into ``metrics.json`` (``thresholds``) and ``model_info.json``, the file next to ``model.keras``
that ``python -m chestkd.predict`` and ``python -m chestkd.export`` read: the preprocessing
(image size, normalisation, mean/std), class names, label kind and thresholds of the model.
Every evaluation also writes ``model_card.md`` (:mod:`chestkd.evaluation.model_card`).

Labels: a dataset with ``clean_labels`` (the phantom with label noise) is scored against the
clean labels (``mean_auc``, ``per_class_auc``, ``calibration``, ...; ``"labels": "clean"``) and
also against the noisy labels training saw (the same keys prefixed ``noisy_``). Otherwise the
labels as given are used (``"labels": "as given"``).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.data.dataset import Dataset
from chestkd.data.pipeline import make_dataset
from chestkd.errors import DataError
from chestkd.evaluation import plots, statistics
from chestkd.evaluation.classification import (THRESHOLD_RULES, check_threshold_rule,
                                               choose_thresholds, classification_report,
                                               report_summary)
from chestkd.evaluation.model_card import write_model_card
from chestkd.evaluation.metrics import (count_params, latency_per_image, mean_auc, per_class_auc,
                                        predict_logits, single_label_metrics)
from chestkd.io import atomic_write_json
from chestkd.scores import probabilities_from_logits, ranking_scores

# Deprecated name of chestkd.scores.probabilities_from_logits, kept for
# chestkd.experiments.feature_kd until it imports that function.
probabilities_of = probabilities_from_logits


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency such as tabulate)."""
    def cell(value):
        if isinstance(value, (float, np.floating)):
            return "n/a" if np.isnan(value) else format(value, floatfmt)
        if isinstance(value, (list, tuple)) and value and all(
                isinstance(v, (float, np.floating)) for v in value):   # an interval
            return "[" + ", ".join(cell(v) for v in value) + "]"
        return str(value)
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([header, rule, *rows])


def _clean_test_labels(data: Dataset, test: Dataset, y: np.ndarray) -> np.ndarray | None:
    """The test split's clean labels (N, C), in the pipeline's (unshuffled) order, or None."""
    clean = getattr(test, "clean_labels", None)
    if clean is None and getattr(data, "clean_labels", None) is not None:
        clean = np.asarray(data.clean_labels)[data.split == "test"]  # not kept by subset
    if clean is None:
        return None
    clean = np.asarray(clean, np.float32)
    if clean.shape != y.shape:
        raise DataError(f"{data.name}: clean_labels of the test split have shape {clean.shape}; "
                        f"the test labels have shape {y.shape}")
    return clean


def _auc_entries(labels, scores, class_names, groups, n_boot, seed, verbose):
    """(table, results entries) of per-class and mean AUC, with intervals when n_boot > 0."""
    table = per_class_auc(labels, scores, class_names)
    entries = {"mean_auc": mean_auc(table),
               "per_class_auc": dict(zip(table["class"], table["auc"]))}
    table["ci_lo"] = table["ci_hi"] = np.nan
    if n_boot > 0:
        boot = statistics.bootstrap_auc(labels, scores, groups, n_boot=n_boot, seed=seed,
                                        verbose=verbose)
        table[["ci_lo", "ci_hi"]] = np.asarray(boot["per_class_ci"], np.float64)
        entries["mean_auc_ci"] = boot["mean_ci"]
        # Fewer than n_boot where a resample lost every positive of a finding (no mean there).
        entries["mean_auc_ci_resamples"] = boot["mean_valid_resamples"]
        entries["per_class_auc_ci"] = dict(zip(table["class"], boot["per_class_ci"]))
    return table, entries


def write_predictions(path, *, logits, labels, clean_labels, test: Dataset, class_names,
                      multi_label: bool, model_name=None, dataset=None) -> Path:
    """``test_predictions.npz``: logits, labels (-1 unknown), clean labels (if any), patients,
    paths and class names of the test split, written atomically (a reader never sees half a
    file: it is written under a temporary name and renamed)."""
    path = Path(path)
    arrays = {"logits": np.asarray(logits, np.float64), "labels": np.asarray(labels, np.float32),
              "patients": np.asarray(test.patients, str), "paths": np.asarray(test.paths, str),
              "class_names": np.asarray(list(class_names), str),
              "multi_label": np.asarray(bool(multi_label)),
              "model": np.asarray(str(model_name or "")), "dataset": np.asarray(str(dataset))}
    if clean_labels is not None:
        arrays["clean_labels"] = np.asarray(clean_labels, np.float32)
    tmp = path.with_name(path.stem + ".tmp.npz")  # ends in .npz, so numpy keeps the name
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path


def validation_thresholds(model, data: Dataset, options, *,
                          jit_compile: bool = False) -> dict:
    """Per-class thresholds of both rules on the validation split, and the rule in use
    (``options``: the run's :class:`~chestkd.training.options.RunOptions`).

    Without a validation split every class keeps 0.5 and ``split`` says so.
    """
    rule = check_threshold_rule(options.evaluation.threshold_rule)
    names = list(data.class_names)
    if not np.any(data.split == "val"):
        half = [0.5] * len(names)
        return {"rule": rule, "split": "none (no validation split): 0.5 for every class",
                "class_names": names, "values": half, **{r: half for r in THRESHOLD_RULES}}
    val = make_dataset(data, "val", batch_size=options.training.batch_size,
                       **options.image.pipeline())
    logits, y = predict_logits(model, val, jit_compile=jit_compile)
    p = probabilities_from_logits(logits, data.multi_label)
    chosen = {r: choose_thresholds(y, p, rule=r).tolist() for r in THRESHOLD_RULES}
    return {"rule": rule, "split": f"val ({len(y)} images)", "class_names": names,
            "values": chosen[rule], **chosen}


def model_info(data: Dataset, options, thresholds: dict, model_name=None) -> dict:
    """What a user of the saved model needs besides its weights (``model_info.json``)."""
    image = options.image.pipeline()
    return {"model": model_name or options.config.get("model"), "dataset": data.name,
            "class_names": list(data.class_names), "multi_label": bool(data.multi_label),
            "output": "logits", "probability": "sigmoid" if data.multi_label else "softmax",
            "image_size": image["image_size"],
            "normalization": image["normalization"], "mean_std": image["mean_std"],
            "thresholds": thresholds}


def evaluate_model(model, data: Dataset, options, run_dir, *, prefix: str = "",
                   title: str | None = None, model_name: str | None = None,
                   jit_compile: bool = False) -> dict:
    """Score ``model`` on ``data``'s test split; results go to ``run_dir`` (names ``prefix``-ed).

    ``options`` is the run's :class:`~chestkd.training.options.RunOptions`:
    ``evaluation.bootstrap`` (default 1000; 0 disables) patient resamples give the 95%
    percentile intervals ``mean_auc_ci`` and ``per_class_auc_ci``, seeded by the run's seed.
    ``jit_compile``: the predictions under XLA.
    """
    run_dir = Path(run_dir)
    test_data = data.subset("test")
    test = make_dataset(data, "test", batch_size=options.training.batch_size,
                        **options.image.pipeline())
    logits, y = predict_logits(model, test, jit_compile=jit_compile)
    # AUCs rank the logits' order (no ties where the probabilities saturate); calibration
    # reads the probabilities.
    ranks = ranking_scores(logits, data.multi_label)
    scores = probabilities_from_logits(logits, data.multi_label)
    groups = test_data.patients
    if len(groups) != len(y):
        raise DataError(f"{data.name}: the test pipeline gave {len(y)} images, the test split "
                        f"has {len(groups)}")
    clean = _clean_test_labels(data, test_data, y)
    truth = y if clean is None else clean  # what the headline numbers are scored against
    n_boot, seed = options.evaluation.bootstrap, options.seed
    verbose = n_boot * data.num_classes * len(y) > statistics.PROGRESS_THRESHOLD
    table, auc = _auc_entries(truth, ranks, data.class_names, groups, n_boot, seed, verbose)
    results = {
        "dataset": data.name, "model": model_name or options.config.get("model"),
        "test_images": int(len(y)), "test_patients": int(len(np.unique(groups))),
        "labels": "as given" if clean is None else "clean", **auc,
    }
    if n_boot > 0:
        results["bootstrap"] = {"resamples": n_boot, "seed": seed, "confidence": 0.95,
                                "unit": "patient", "interval": "percentile"}
    bins = 15
    results["calibration"] = statistics.calibration_summary(
        truth, scores, data.class_names, multi_label=data.multi_label, bins=bins)
    curves = {("clean labels" if clean is not None else ""): {
        **statistics.reliability_curve(truth, scores, bins, multi_label=data.multi_label),
        "ece": results["calibration"]["ece"]}}
    if clean is not None:
        noisy_table, noisy = _auc_entries(y, ranks, data.class_names, groups, n_boot, seed,
                                          verbose)
        results.update({f"noisy_{key}": value for key, value in noisy.items()})
        results["noisy_calibration"] = statistics.calibration_summary(
            y, scores, data.class_names, multi_label=data.multi_label, bins=bins)
        curves["noisy labels"] = {
            **statistics.reliability_curve(y, scores, bins, multi_label=data.multi_label),
            "ece": results["noisy_calibration"]["ece"]}
        for column in ("auc", "ci_lo", "ci_hi"):
            table[f"noisy_{column}"] = noisy_table[column].to_numpy()
    results.update({
        "params": count_params(model),
        "latency": latency_per_image(model, model.input_shape[1:],
                                     repeats=options.evaluation.latency_images),
    })
    write_predictions(run_dir / f"{prefix}test_predictions.npz", logits=logits, labels=y,
                      clean_labels=clean, test=test_data, class_names=data.class_names,
                      multi_label=data.multi_label, model_name=results["model"],
                      dataset=data.name)
    table.to_csv(run_dir / f"{prefix}per_class_auc.csv", index=False)
    (run_dir / f"{prefix}per_class_auc.md").write_text(markdown_table(table) + "\n")
    plots.plot_roc_curves(truth, ranks, data.class_names, run_dir / f"{prefix}roc_curves.png",
                          title=title or "ROC curves (test split)")
    plots.plot_reliability(curves, run_dir / f"{prefix}reliability.png",
                           title="Reliability diagram (test split, "
                                 + ("all findings pooled)" if data.multi_label
                                    else "top label)"))
    if not data.multi_label:
        single = single_label_metrics(truth, scores, data.class_names)
        results.update({k: single[k] for k in ("accuracy", "precision", "recall", "f1")})
        if single["classes_without_positives"]:  # left out of the macro scores, named
            results["classes_without_positives"] = single["classes_without_positives"]
        results["confusion_matrix"] = single["confusion_matrix"]
        single["per_class"].to_csv(run_dir / f"{prefix}per_class_scores.csv", index=False)
        plots.plot_confusion_matrix(single["confusion_matrix"], data.class_names,
                                    run_dir / f"{prefix}confusion_matrix.png")
    thresholds = validation_thresholds(model, data, options, jit_compile=jit_compile)
    results["thresholds"] = thresholds
    report = classification_report(truth, scores, data.class_names, multi_label=data.multi_label,
                                   thresholds=thresholds["values"])
    report.to_csv(run_dir / f"{prefix}classification_report.csv", index=False)
    if data.multi_label:  # single-label decisions are the arg-max, scored above
        results["thresholded"] = report_summary(report, multi_label=True)
    if len(data.skipped):  # --skip-bad-images: the report says what was left out, and why
        results["skipped_images"] = data.skipped.to_dict("records")
    history_path = run_dir / "history.csv"
    if history_path.exists():
        history = pd.read_csv(history_path)
        if "epoch_seconds" in history:
            results["train_seconds"] = float(history["epoch_seconds"].sum())
            results["epoch_seconds_mean"] = float(history["epoch_seconds"].mean())
        results["epochs_trained"] = int(len(history))
        plots.plot_training_curves(history, run_dir / f"{prefix}training_curves.png")
    info = model_info(data, options, thresholds, results["model"])
    atomic_write_json(run_dir / f"{prefix}model_info.json", info)
    atomic_write_json(run_dir / f"{prefix}metrics.json", results)
    # The card states the preprocessing of model_info.json and the seed the run used: a
    # notebook's partial configuration (as_options) holds neither.
    write_model_card(run_dir / f"{prefix}model_card.md", results, data,
                     {**options.config, "seed": options.seed,
                      **{key: info[key] for key in ("image_size", "normalization", "mean_std")}})
    return results


def _with_ci(value, ci=None, digits: int = 3) -> str:
    """``0.8123 [0.781, 0.843]``; ``n/a`` for a missing value; no bracket without an interval."""
    if value is None or not np.isfinite(value):
        return "n/a"
    if ci is None or not np.all(np.isfinite(np.asarray(ci, np.float64))):  # JSON: None
        return f"{value:.4f}"
    return f"{value:.4f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def print_results(results: dict, title: str = "Test split") -> None:
    """The per-class table (AUC with its 95% interval) and the headline numbers of a run."""
    intervals = results.get("per_class_auc_ci", {})
    table = pd.DataFrame({"class": list(results["per_class_auc"]),
                          "auc [95% CI]": [_with_ci(v, intervals.get(k)) for k, v in
                                           results["per_class_auc"].items()]})
    if "noisy_per_class_auc" in results:
        noisy_ci = results.get("noisy_per_class_auc_ci", {})
        table["noisy-label auc [95% CI]"] = [
            _with_ci(results["noisy_per_class_auc"].get(k), noisy_ci.get(k))
            for k in results["per_class_auc"]]
    labels = " (clean labels)" if results.get("labels") == "clean" else ""
    print(f"\n{title}: {results['model']} on {results['dataset']} "
          f"({results['test_images']} images{labels})")
    print(markdown_table(table))
    print(f"mean AUC {_with_ci(results['mean_auc'], results.get('mean_auc_ci'))} | "
          f"parameters {results['params']['total']:,} | "
          f"latency {results['latency']['median_ms']:.2f} ms/image")
    kept = results.get("mean_auc_ci_resamples")
    n_boot = results.get("bootstrap", {}).get("resamples")
    if kept is not None and n_boot and kept < n_boot:
        print(f"the mean AUC's interval is from {kept} of {n_boot} patient resamples: the "
              "others lost every positive (or negative) of a finding"
              + (f" (fewer than {statistics.min_resamples()}: no interval)"
                 if kept < statistics.min_resamples() else ""))
    if "noisy_mean_auc" in results:
        print(f"mean AUC on the noisy labels "
              f"{_with_ci(results['noisy_mean_auc'], results.get('noisy_mean_auc_ci'))}")
    if "calibration" in results:
        calibration = results["calibration"]
        print(f"calibration: ECE {calibration['ece']:.4f} ({calibration['bins']} bins), "
              f"Brier {calibration['brier']:.4f}")
    for key in ("accuracy", "precision", "recall", "f1"):
        if key in results:
            print(f"{key} {results[key]:.4f}")
