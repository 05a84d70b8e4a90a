"""Ensemble KD (EKD): the steps of :mod:`chestkd.recipes.ensemble_kd`.

One teacher teaches a student of parallel branches whose logits add up
(:func:`chestkd.models.ensemble_student`, ``combine`` = sum, as in the paper), with the one
Distiller: the KD loss on the summed logits plus, for every branch, ``feature_weight`` times
``feature_distance`` between that branch's feature vector (the layer its logits read:
``branch<i>_features_pool`` for pooled models, ``branch<i>_fc1_relu`` for ``baseline_cnn``)
through its own trainable projection (a Dense layer, not part of the saved student) and the
teacher's (``features_pool`` for a pooled teacher): the paper's "high-level features produced
by the DenseNet-121". Default: ``mse`` (the FitNets hint) with weight 1, divided by the mean
square of the teacher's feature values on training images (``feature_scale: teacher``;
``none`` keeps the raw hint). The paper gives neither the distance nor a weight or scale;
unscaled, a ResNet-32 teacher's pooled features (values ~10^2) made the hint ~10^4 times the
label loss and the ensemble stayed below its branches.

Beside the ensemble, each branch model is base-trained alone (model store) and/or distilled
alone from the teacher (``standalone``), for the paper's Table 1 layout (:func:`write_table1`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from chestkd.cli import config_number
from chestkd.data.pipeline import make_dataset
from chestkd.distill.feature_terms import FeatureTerm, FeatureTermSet
from chestkd.errors import ConfigError
from chestkd.evaluation import markdown_table
from chestkd.evaluation.metrics import count_params, latency_per_image
from chestkd.experiments.chain import stage_results
from chestkd.experiments.feature_kd import distil_features, mean_test_auc
from chestkd.experiments.kd import distil, evaluate_once
from chestkd.experiments.repeat import data_in_plan
from chestkd.experiments.store import obtain_model
from chestkd.models import build, get_spec
from chestkd.models.ensemble import (COMBINE, attach_branches, branch_feature_layers,
                                     branch_layer_name, ensemble_student, features_layer)
from chestkd.training.classifier import image_options
from chestkd.training.options import RunOptions, as_options
from chestkd.training.run import load_model, write_json

__all__ = ["PAPER_BRANCHES", "STANDALONE", "FEATURE_SCALES", "EnsembleOptions",
           "ensemble_options", "plan", "pooled_feature_terms", "check_layers",
           "teacher_feature_scale", "teacher_row", "standalone_row", "distil_ensemble",
           "write_table1"]

PAPER_BRANCHES = ["mobilenet_v1", "vgg19", "resnet32", "resnet50"]
# The paper's method names MobileNetV1, its Table 1 MobileNetV2 (with Ho & Gwak's MobileNet-v1
# numbers); the default follows the method text, and the table caption says so.
MOBILENET_NOTE = ("MobileNet: the ensemble paper's method names MobileNetV1, its Table 1 "
                  "MobileNetV2 (with Ho & Gwak's MobileNet-v1 AUCs); chestkd's paper default "
                  "is mobilenet_v1.")
STANDALONE = ("base", "kd")
FEATURE_SCALES = ("teacher", "none")
# Mean square of the teacher's feature values over at most this many training images.
FEATURE_SCALE_IMAGES = 256


@dataclass(frozen=True)
class EnsembleOptions:
    """What the ensemble recipe adds to a run's options (:func:`ensemble_options`)."""
    teacher: str
    branches: tuple
    combine: str
    feature_distance: str
    feature_weight: float
    feature_scale: str
    standalone: tuple


def ensemble_options(config) -> EnsembleOptions:
    """The ensemble's own options of a resolved configuration, after checking each of them
    and every model name (before any data: a typo is exit 2, not a teacher trained for
    nothing)."""
    branches = config.get("branches")
    if isinstance(branches, str) or not branches or not all(isinstance(b, str)
                                                            for b in branches):
        raise ConfigError(f"--branches {branches!r}: a list of model names, e.g. "
                          f"[mobilenet_v1, vgg19, resnet32, resnet50]")
    if config["combine"] not in COMBINE:
        raise ConfigError(f"--combine {config['combine']!r}: choose one of {', '.join(COMBINE)}")
    if config["feature_scale"] not in FEATURE_SCALES:
        raise ConfigError(f"--feature-scale {config['feature_scale']!r}: choose one of "
                          f"{', '.join(FEATURE_SCALES)}")
    standalone = config.get("standalone") or []
    if isinstance(standalone, str) or set(standalone) - set(STANDALONE):
        raise ConfigError(f"--standalone {standalone!r}: a list of {', '.join(STANDALONE)} "
                          f"(or [] for the ensemble alone)")
    for name in [*branches, *([] if str(config["teacher"]).endswith(".keras")
                              else [config["teacher"]])]:
        get_spec(name)
    return EnsembleOptions(
        teacher=str(config["teacher"]), branches=tuple(branches), combine=config["combine"],
        feature_distance=config["feature_distance"],
        feature_weight=float(config_number(config, "feature_weight", low=0.0)), feature_scale=config["feature_scale"],
        standalone=tuple(standalone))


def plan(config, branches) -> str:
    """What the run will train, printed before anything is read or trained."""
    images = data_in_plan(config)
    standalone = [s for s in STANDALONE if s in (config.get("standalone") or [])]
    alone = {"base": "base training", "kd": "standard KD from the teacher"}
    return "\n".join([
        f"ensemble_kd plan ({config.get('profile') or 'no'} profile): {images}; "
        f"{config['image_size']} px, {config['epochs']} epochs per training, batch "
        f"{config['batch_size']}, {config['optimizer']} lr {config['learning_rate']:g}",
        f"  1. teacher {config['teacher']}: "
        + ("loaded" if str(config["teacher"]).endswith(".keras") else
           "base training (model store)"),
        "  2. each branch model alone: "
        + (" and ".join(alone[s] for s in standalone) if standalone else "nothing (standalone=[])")
        + f" ({', '.join(dict.fromkeys(branches))})",
        f"  3. the ensemble student ({config['combine']} of {' + '.join(branches)}) distilled "
        f"from the teacher: KD loss + {config['feature_distance']} feature term x "
        f"{config['feature_weight']:g} per branch"
        + (" / the teacher features' mean square" if config["feature_scale"] == "teacher"
           else ""),
        "  the paper's settings: --config recipes/ensemble_kd.yaml"])


def pooled_feature_terms(model, teacher_layer: str, ensemble: EnsembleOptions,
                         scale: float = 1.0) -> list:
    """One FeatureTerm per branch: its feature vector -> projection -> the teacher's
    ``teacher_layer`` (metric ``feature_branch<i>_pool``), weight ``feature_weight / scale``."""
    return [FeatureTerm(layer, teacher_layer, ensemble.feature_distance,
                        weight=ensemble.feature_weight / float(scale), adapter="always",
                        name=f"feature_{branch_layer_name(index, 'pool')}")
            for index, layer in enumerate(branch_feature_layers(model))]


def teacher_architecture(options: RunOptions, ensemble: EnsembleOptions, data):
    """The teacher's architecture, untrained and without downloaded weights (a ``.keras``
    teacher is loaded as given)."""
    options = as_options(options)
    if ensemble.teacher.endswith(".keras"):
        return load_model(ensemble.teacher)
    size = options.image.image_size
    return build(ensemble.teacher, data.num_classes, (size, size, 3), weights=None)


def check_layers(options: RunOptions, ensemble: EnsembleOptions, data) -> str:
    """Before anything trains: build the ensemble and the teacher's architecture and resolve
    every layer the run reads (each branch's logits and feature vector, the teacher's feature
    vector, the projections between them). A missing one is a ConfigError naming the model
    and the layer. Returns the teacher's feature layer."""
    options = as_options(options)
    size = options.image.image_size
    student = ensemble_student(list(ensemble.branches), data.num_classes, (size, size, 3),
                               combine=ensemble.combine, weights=None)
    teacher = teacher_architecture(options, ensemble, data)
    teacher_layer = features_layer(teacher, model_label=f"teacher '{ensemble.teacher}'")
    terms = pooled_feature_terms(student, teacher_layer, ensemble)
    FeatureTermSet(terms, student, [teacher])  # layer names and shapes of every term
    return teacher_layer


def teacher_feature_scale(teacher, layer: str, data, options: RunOptions,
                          ensemble: EnsembleOptions) -> float:
    """Mean square of the teacher's ``layer`` values over the first
    :data:`FEATURE_SCALE_IMAGES` training images (no augmentation); 1 with ``feature_scale:
    none``. Dividing the feature term by it makes the term a relative error."""
    options = as_options(options)
    if ensemble.feature_scale == "none":
        return 1.0
    features = keras.Model(teacher.inputs, teacher.get_layer(layer).output)
    images = make_dataset(data, "train", batch_size=options.training.batch_size,
                          shuffle=False, **image_options(data, options))
    total, count = 0.0, 0
    for batch in images:
        values = np.asarray(features(batch[0], training=False), np.float64)
        total, count = total + float(np.sum(values ** 2)), count + values.size
        if count >= FEATURE_SCALE_IMAGES * values[0].size:
            break
    scale = total / max(count, 1)
    if not np.isfinite(scale) or scale <= 0:
        raise ConfigError(f"feature_scale teacher: the teacher's {layer} values are all zero "
                          f"(or not finite) on the training images; use feature_scale=none")
    return scale


def _table1_row(model: str, role: str, params, **aucs) -> dict:
    row = {"model": model, "role": role, "base training": None, "standard KD": None,
           "EKD branch": None, "EKD": None, "params": params}
    return {**row, **aucs}


def teacher_row(options: RunOptions, ensemble: EnsembleOptions, data, run_dir, teacher,
                source) -> dict:
    """Table 1's teacher row: its results copied from the model store (or evaluated)."""
    results = stage_results(options, data, teacher, source, run_dir / "teacher") \
        if Path(source).is_dir() else evaluate_once(teacher, data, options, run_dir / "teacher")
    return _table1_row(ensemble.teacher, "teacher", results["params"]["total"],
                       **{"base training": results["mean_auc"]})


def standalone_row(options: RunOptions, ensemble: EnsembleOptions, data, run_dir, teacher,
                   name: str) -> dict:
    """Table 1's row of one branch model trained alone: base training (model store) and/or
    standard KD from ``teacher`` (``standalone``), each in its own folder."""
    options = as_options(options)
    standalone = ensemble.standalone
    size = options.image.image_size
    row = _table1_row(name, "branch model", int(count_params(
        build(name, data.num_classes, (size, size, 3), weights=None))["total"]))
    if "base" in standalone:
        _, base_source = obtain_model(options, data, name)
        row["base training"] = json.loads(
            (Path(base_source) / "metrics.json").read_text())["mean_auc"] \
            if Path(base_source).is_dir() else float("nan")
    if "kd" in standalone:
        kd_dir = run_dir / f"standard_kd_{name}"
        student = distil(options, kd_dir, data, teacher, name)
        row["standard KD"] = evaluate_once(student, data, options, kd_dir,
                                           model_name=name)["mean_auc"]
    return row


def _model_row(label, auc, model, latency_images: int, role) -> dict:
    return {"model": label, "role": role, "auc": float(auc),
            "params": int(count_params(model)["total"]),
            "latency_ms": float(latency_per_image(
                model, model.input_shape[1:], repeats=latency_images)["median_ms"])}


def distil_ensemble(options: RunOptions, ensemble: EnsembleOptions, run_dir, data, teacher,
                    teacher_layer: str, scale: float):
    """Distil the ensemble student from ``teacher`` (folder ``ensemble``) and evaluate it and
    each branch. Returns (the ensemble's results, one row per branch)."""
    options = as_options(options)
    size, branches = options.image.image_size, list(ensemble.branches)
    student = distil_features(
        options, run_dir / "ensemble", data, [teacher],
        lambda: ensemble_student(branches, data.num_classes, (size, size, 3),
                                 combine=ensemble.combine, weights=options.training.weights),
        terms_for=lambda model: pooled_feature_terms(model, teacher_layer, ensemble, scale))
    attach_branches(student, branches)
    results = evaluate_once(student, data, options, run_dir / "ensemble",
                            model_name=f"ensemble({', '.join(branches)})")
    branch_rows = [_model_row(f"branch {i}: {name}", mean_test_auc(branch, data, options),
                              branch, options.evaluation.latency_images, "ensemble branch")
                   for i, (name, branch) in enumerate(zip(branches, student.branches))]
    return results, branch_rows


def write_table1(options: RunOptions, ensemble: EnsembleOptions, data, run_dir, table,
                 ensemble_results, branch_rows, *, teacher_source, teacher_layer: str,
                 scale: float, kd_loss: str) -> dict:
    """``table1.csv``/``.md`` (Table 1's layout: the rows of ``table``, the ensemble's
    branches and the ensemble), ``branches.csv`` and ``metrics.json``; returns the results."""
    options = as_options(options)
    branches = list(ensemble.branches)
    for row, name in zip(branch_rows, branches):  # the first branch of each model name
        entry = next(r for r in table if r["model"] == name and r["role"] == "branch model")
        if entry["EKD branch"] is None:
            entry["EKD branch"] = row["auc"]
    table = [*table, _table1_row(f"ensemble ({ensemble.combine} of {len(branches)})",
                                 "student", ensemble_results["params"]["total"],
                                 EKD=ensemble_results["mean_auc"])]
    frame = pd.DataFrame(table)
    branch_frame = pd.DataFrame(branch_rows + [{
        "model": "ensemble", "role": "student", "auc": ensemble_results["mean_auc"],
        "params": ensemble_results["params"]["total"],
        "latency_ms": ensemble_results["latency"]["median_ms"]}])
    frame.to_csv(run_dir / "table1.csv", index=False)
    branch_frame.to_csv(run_dir / "branches.csv", index=False)
    text = "\n".join([
        f"# Ensemble KD on {data.name}: {ensemble.teacher} -> {' + '.join(branches)}", "",
        f"Mean test AUC. KD loss {kd_loss}, T = {options.kd.temperature:g}, "
        f"alpha = {options.kd.alpha:g}; feature term {ensemble.feature_distance} x "
        f"{ensemble.feature_weight:g} / {scale:.4g} per branch (its feature vector, the layer "
        f"its logits read, projected onto the teacher's {teacher_layer}; the divisor is the "
        f"teacher features' mean square, feature_scale={ensemble.feature_scale}: the paper "
        f"gives no weight or scale)."
        + (f" {MOBILENET_NOTE}" if {"mobilenet_v1", "mobilenet_v2"} & set(branches) else "")
        + (f" A demo on the phantom profile ({options.config['phantom_images']} films at "
           f"{options.image.image_size} px, {options.training.epochs} epochs, small models): "
           f"it shows the recipe run, NOT the paper's numbers (--config "
           f"recipes/ensemble_kd.yaml)." if options.config.get("profile") == "phantom" else ""),
        "",
        markdown_table(frame.astype(object).where(frame.notna(), "--"), ".4f"), "",
        "## The ensemble and its branches", "", markdown_table(branch_frame, ".4f"), ""])
    (run_dir / "table1.md").write_text(text)
    print("\n" + text)
    results = {"recipe": "ensemble_kd", "teacher": ensemble.teacher,
               "teacher_source": str(teacher_source), "branches": branches,
               "feature_scale": {"mode": ensemble.feature_scale, "value": scale},
               "table1": json.loads(frame.to_json(orient="records")),
               "branch_table": branch_rows, "ensemble": {
                   k: ensemble_results[k] for k in ("mean_auc", "params", "latency")},
               "run_dir": str(run_dir)}
    write_json(results, run_dir / "metrics.json")
    return results
