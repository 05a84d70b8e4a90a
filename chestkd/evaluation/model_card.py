"""``model_card.md``: what a finished run's model is, what it was trained and tested on, how
well it did (with intervals), its decision thresholds, and what it must not be used for.

Written by :func:`chestkd.evaluation.evaluate.evaluate_model` for every evaluated model, from
the run's results, its dataset and its configuration only (no model is run here). The card
follows the headings of Mitchell et al. (2019), "Model Cards for Model Reporting", shortened to
what a research run can state truthfully.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from chestkd.data.dataset import SPLITS, Dataset
from chestkd.data.describe import images_used
from chestkd.data.images import describe_upsampling
from chestkd.io import atomic_write_text

NOT_CLINICAL = ("**Research model, not for clinical use.** It has not been validated "
                "prospectively, on other hospitals' images or by radiologists, and no "
                "regulator has reviewed it. Do not use it to diagnose or treat anyone.")

# Where each dataset's labels come from, and how wrong they are known to be.
LABEL_SOURCES = {
    "chestxray14": "mined from the radiology reports by natural-language processing "
                   "(Wang et al. 2017), not read from the images; the authors estimate them "
                   "above 90 % accurate, and later re-reading found more errors for some "
                   "findings (e.g. pneumonia, infiltration).",
    "chexpert": "extracted from the reports by the CheXpert labeller (Irvin et al. 2019), with "
                "uncertain mentions mapped by the run's `uncertainty` policy; report-derived, "
                "so noisy in the same way.",
    "folder": "the names of the class folders, as arranged by whoever built the folders; "
              "chestkd cannot check them.",
    "phantom": "synthetic: the generator knows every image's true findings. With "
               "`label_noise` > 0 that fraction of labels was flipped for training, and the "
               "headline scores are against the true (clean) labels.",
    "pneumonia_phantom": "synthetic single-label phantom (normal / pneumonia / COVID-19-like "
                         "films): the generator knows every film's true class and the labels "
                         "are exactly that, so real label noise is not represented.",
    "csv": "a column of the user's table (e.g. the COVID-19 image data collection's "
           "`finding`), as curated by its authors; chestkd cannot check them.",
}


def _left_out(names) -> str:
    return ("  (the macro averages leave out the classes without test positives: "
            + ", ".join(names) + ")")


def _interval(value, ci=None) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if ci is None or ci[0] is None or not np.all(np.isfinite(np.asarray(ci, float))):
        return f"{value:.4f}"
    return f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def _split_table(data: Dataset) -> list[str]:
    lines = ["| split | images | patients | " + " | ".join(data.class_names) + " |",
             "|" + "---|" * (3 + data.num_classes)]
    for split in SPLITS:
        rows = data.split == split
        if not rows.any():
            continue
        positives = (data.labels[rows] * data.mask[rows]).sum(0).astype(int)
        lines.append(f"| {split} | {int(rows.sum())} | {len(np.unique(data.patients[rows]))} | "
                     + " | ".join(str(v) for v in positives) + " |")
    return lines


def _label_source(data: Dataset, config: dict) -> str:
    source = LABEL_SOURCES.get(data.name, "as supplied with the dataset; their accuracy is "
                                          "not known to chestkd.")
    noise = float(config.get("label_noise") or 0.0)
    if noise:
        source += f" This run: label_noise = {noise:g}."
    return source


def _metrics_lines(results: dict) -> list[str]:
    labels = " (against the clean labels)" if results.get("labels") == "clean" else ""
    ci_note = ("95 % patient-bootstrap percentile intervals, "
               f"{results['bootstrap']['resamples']} resamples"
               if "bootstrap" in results else "no intervals (bootstrap = 0)")
    lines = [f"Test split, {results['test_images']} images of {results['test_patients']} "
             f"patients{labels}; {ci_note}.", "",
             f"* mean AUC: {_interval(results['mean_auc'], results.get('mean_auc_ci'))}"]
    if "noisy_mean_auc" in results:
        lines.append(f"* mean AUC against the noisy labels: "
                     f"{_interval(results['noisy_mean_auc'], results.get('noisy_mean_auc_ci'))}")
    for key in ("accuracy", "precision", "recall", "f1"):
        if key in results:
            how = "arg-max decision" + ("" if key == "accuracy" else ", macro average")
            lines.append(f"* {key} ({how}): {results[key]:.4f}")
    if results.get("classes_without_positives"):
        lines.append(_left_out(results["classes_without_positives"]))
    if "thresholded" in results:
        summary = results["thresholded"]
        lines.append(f"* at the thresholds below: subset accuracy {summary['accuracy']:.4f}, "
                     f"macro precision {summary['precision']:.4f}, recall "
                     f"{summary['recall']:.4f}, F1 {summary['f1']:.4f}")
        if summary.get("classes_without_positives"):
            lines.append(_left_out(summary["classes_without_positives"]))
    if "calibration" in results:
        lines.append(f"* calibration: ECE {results['calibration']['ece']:.4f}, Brier "
                     f"{results['calibration']['brier']:.4f}")
    intervals = results.get("per_class_auc_ci") or {}
    lines += ["", "| class | test AUC [95% CI] |", "|---|---|"]
    lines += [f"| {name} | {_interval(value, intervals.get(name))} |"
              for name, value in results["per_class_auc"].items()]
    return lines


def _threshold_lines(thresholds: dict, multi_label: bool) -> list[str]:
    rule = thresholds["rule"]
    rules = "(Youden: max sensitivity + specificity - 1; F1: max F1)"
    use = (f"This run decides with the `{rule}` rule {rules}. "
           "`python -m chestkd.predict --threshold youden|f1` picks either."
           if multi_label else
           "The classes are exclusive, so the decision is the arg-max, not a threshold; "
           f"these give `python -m chestkd.predict`'s `per_class_flags` beside it, by the "
           f"`{rule}` rule unless `--threshold youden|f1` says otherwise {rules}.")
    lines = [f"Chosen per class on: {thresholds['split']} (a class with a single label value "
             f"there keeps 0.5). {use}", "",
             "| class | youden | f1 |", "|---|---|---|"]
    for c, name in enumerate(thresholds["class_names"]):
        lines.append(f"| {name} | {thresholds['youden'][c]:.4f} | {thresholds['f1'][c]:.4f} |")
    return lines


def model_card(results: dict, data: Dataset, config: dict) -> str:
    """The Markdown text of the card."""
    params = results.get("params", {})
    size = int(config["image_size"])
    kind = ("independent findings (sigmoid per class)" if data.multi_label
            else "mutually exclusive classes (softmax)")
    lines = [f"# Model card: {results.get('model')} on {data.name}", "", NOT_CLINICAL, "",
             "## Model", "",
             f"* architecture: {results.get('model')}, {params.get('total', 0):,} parameters "
             f"({params.get('trainable', 0):,} trainable)",
             f"* input: {size}x{size} RGB (grey repeated), normalisation "
             f"`{config['normalization']}`" + (f" with mean/std {config['mean_std']}"
                                               if config.get("mean_std") else ""),
             f"* output: logits of {data.num_classes} {kind}: {', '.join(data.class_names)}",
             f"* run: recipe `{config.get('recipe')}`, seed {config.get('seed')}, config id "
             f"`{config.get('config_id', 'n/a')}`; full configuration in `config.yaml`", "",
             "## Data and split", "",
             f"Dataset `{data.name}`" + (f" from `{config['data_dir']}`"
                                         if config.get("data_dir") else "")
             + ("; splits are patient-wise (no patient in two splits)." if data.patient_ids
                else "; no patient ids were given, so each image counted as a patient of its "
                     "own: images of one patient may be in different splits (give "
                     "`patient_regex` for a folder, `patient_column` for a CSV)."), "",
             f"Images: {images_used(data)}."
             + (f" {describe_upsampling(data.upsampling)}." if data.upsampling else "")
             + " Positive labels per class:", "",
             *_split_table(data), "",
             "## Labels", "", f"Label source: {_label_source(data, config)}", "",
             "## Metrics", "", *_metrics_lines(results), "",
             "## Decision thresholds", "", *_threshold_lines(results["thresholds"], data.multi_label), "",
             "## Intended use", "",
             "Research on knowledge distillation and model compression for chest radiograph "
             "classification: comparing methods, reproducing papers, teaching. Inputs should "
             "resemble the training images (same kind of view, patient population and "
             "scanner); predictions are probabilities for the classes above, nothing else.", "",
             "## Limitations", "",
             "* scores are from one test split of one dataset; other hospitals, scanners, "
             "patient ages and views will differ, usually for the worse;",
             "* report-mined or folder labels are noisy, so the scores measure agreement with "
             "those labels, not with the truth;",
             "* thresholds chosen on a small validation split are themselves uncertain;",
             "* saliency maps show what the model used, not where disease is;",
             "* the model never says \"I don't know\": images that are not chest radiographs "
             "still get confident probabilities.", "", NOT_CLINICAL, ""]
    return "\n".join(lines)


def write_model_card(path, results: dict, data: Dataset, config: dict) -> Path:
    """Write :func:`model_card` to ``path`` atomically."""
    return atomic_write_text(path, model_card(results, data, config))
