"""Ensemble KD (EKD): one teacher teaches a student of parallel branches whose logits add up.

    python -m chestkd.recipes.ensemble_kd [--teacher NAME|FILE]
        [branches=[mobilenet_v1, vgg19, resnet32, resnet50]] [--combine sum|mean]
        [--feature-distance mse|wasserstein] [--feature-weight W] [--temperature T]
        [--alpha A] [base-training options] [key=value ...]

1. the teacher (DenseNet-121 by default) is base-trained once in the model store;
2. every branch model is base-trained alone (model store) and distilled alone from the
   teacher (standard KD, the run's ``kd_loss``, cached or online teacher outputs);
3. the ensemble student (:func:`chestkd.models.ensemble_student`: the branches on one input,
   ``combine`` = sum of their logits, as in the paper) is distilled from the teacher with the
   one Distiller: the KD loss on the summed logits plus, for every branch, ``feature_weight``
   times ``feature_distance`` between that branch's feature vector (the layer its logits read:
   ``branch<i>_features_pool`` for pooled models, ``branch<i>_fc1_relu`` for ``baseline_cnn``)
   through its own trainable projection (a Dense layer, not part of the saved student) and the
   teacher's (``features_pool`` for a pooled teacher): the paper's "high-level features
   produced by the DenseNet-121". Default: ``mse`` (the FitNets hint) with weight 1, FitNets'
   own weight. Every layer a run needs is checked before anything trains;
4. ``table1.md``: the paper's Table 1 layout, base training and standard KD per branch model
   (and the teacher's base AUC), plus the ensemble and each of its branches, with parameters
   and latency.

With no data given it runs on the phantom; the profile's teacher is ``resnet32`` and the
branches ``PHANTOM_BRANCHES`` (small models).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from chestkd.cli import main_of
from chestkd.distill.feature_terms import FeatureTerm, FeatureTermSet
from chestkd.errors import ConfigError
from chestkd.evaluation import markdown_table
from chestkd.evaluation.metrics import count_params, latency_per_image
from chestkd.experiments.chain import copy_stage_results
from chestkd.experiments.feature_kd import distil_features, mean_test_auc
from chestkd.experiments.kd import distil, evaluate_once, record_teacher, resolve_kd_loss
from chestkd.experiments.store import obtain_model
from chestkd.models import build, get_spec
from chestkd.models.ensemble import (COMBINE, attach_branches, branch_feature_layers,
                                     branch_layer_name, ensemble_student, features_layer)
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS, PHANTOM_DATASETS, resolve_config
from chestkd.training.experiment import load_model, load_run_data
from chestkd.training.run import start_run, write_json

PAPER_BRANCHES = ["mobilenet_v1", "vgg19", "resnet32", "resnet50"]
# The paper's method names MobileNetV1, its Table 1 MobileNetV2 (with Ho & Gwak's MobileNet-v1
# numbers); the default follows the method text, and the table caption says so.
MOBILENET_NOTE = ("MobileNet: the ensemble paper's method names MobileNetV1, its Table 1 "
                  "MobileNetV2 (with Ho & Gwak's MobileNet-v1 AUCs); chestkd's paper default "
                  "is mobilenet_v1.")
PHANTOM_BRANCHES = ["conv3_student", "resnet18", "resnet32"]
DEFAULTS = {**BASE_DEFAULTS,
            **{k: KD_DEFAULTS[k] for k in ("kd_loss", "temperature", "alpha",
                                           "teacher_outputs")},
            "teacher": "densenet121",
            "branches": None,           # None: PAPER_BRANCHES, or PHANTOM_BRANCHES on a phantom
            "combine": "sum",
            "feature_distance": "mse",
            "feature_weight": 1.0}


def pooled_feature_terms(model, teacher_layer: str, config) -> list:
    """One FeatureTerm per branch: its feature vector -> projection -> the teacher's
    ``teacher_layer`` (metric ``feature_branch<i>_pool``)."""
    return [FeatureTerm(layer, teacher_layer, config["feature_distance"],
                        weight=float(config["feature_weight"]), adapter="always",
                        name=f"feature_{branch_layer_name(index, 'pool')}")
            for index, layer in enumerate(branch_feature_layers(model))]


def teacher_architecture(config, data):
    """The teacher's architecture, untrained and without downloaded weights (a ``.keras``
    teacher is loaded as given)."""
    teacher = str(config["teacher"])
    if teacher.endswith(".keras"):
        return load_model(teacher)
    size = int(config["image_size"])
    return build(teacher, data.num_classes, (size, size, 3), weights=None)


def check_layers(config, data, branches) -> str:
    """Before anything trains: build the ensemble and the teacher's architecture and resolve
    every layer the run reads (each branch's logits and feature vector, the teacher's feature
    vector, the projections between them). A missing one is a ConfigError naming the model
    and the layer. Returns the teacher's feature layer."""
    size = int(config["image_size"])
    ensemble = ensemble_student(branches, data.num_classes, (size, size, 3),
                                combine=config["combine"], weights=None)
    teacher = teacher_architecture(config, data)
    teacher_layer = features_layer(teacher, model_label=f"teacher '{config['teacher']}'")
    terms = pooled_feature_terms(ensemble, teacher_layer, config)
    FeatureTermSet(terms, ensemble, [teacher])  # layer names and shapes of every term
    return teacher_layer


def model_row(label, auc, model, config, role) -> dict:
    return {"model": label, "role": role, "auc": float(auc),
            "params": int(count_params(model)["total"]),
            "latency_ms": float(latency_per_image(
                model, model.input_shape[1:],
                repeats=int(config.get("latency_images", 32)))["median_ms"])}


def run(argv=None) -> dict:
    config = resolve_config(argv, DEFAULTS, __doc__)
    phantom = config["dataset"] in PHANTOM_DATASETS and not config.get("data_dir")
    branches = config.get("branches") or (PHANTOM_BRANCHES if phantom else PAPER_BRANCHES)
    if isinstance(branches, str) or not all(isinstance(b, str) for b in branches):
        raise ConfigError(f"--branches {branches!r}: a list of model names, e.g. "
                          f"[mobilenet_v1, vgg19, resnet32, resnet50]")
    if config["combine"] not in COMBINE:
        raise ConfigError(f"--combine {config['combine']!r}: choose one of {', '.join(COMBINE)}")
    # Every model name is checked before anything trains (a typo is exit 2, not a teacher
    # trained for nothing).
    for name in [*branches, *([] if str(config["teacher"]).endswith(".keras")
                              else [config["teacher"]])]:
        get_spec(name)
    config["branches"] = list(branches)
    if not config.get("run_name") and not config.get("resume"):
        config["run_name"] = f"ensemble_kd-{Path(str(config['teacher'])).stem}"
    run_dir = start_run(config, "ensemble_kd")
    print(f"run directory: {run_dir}")
    data = load_run_data(config, run_dir)
    resolve_kd_loss(config, data)
    teacher_layer = check_layers(config, data, branches)
    teacher, source = obtain_model(config, data, config["teacher"])
    record_teacher(run_dir, source)
    teacher_results = copy_stage_results(source, run_dir / "teacher") if Path(source).is_dir() \
        else evaluate_once(teacher, data, config, run_dir / "teacher")
    table = [{"model": str(config["teacher"]), "role": "teacher",
              "base training": teacher_results["mean_auc"], "standard KD": None,
              "EKD branch": None, "EKD": None,
              "params": teacher_results["params"]["total"]}]
    for name in dict.fromkeys(branches):
        _, base_source = obtain_model(config, data, name)
        base = json.loads((Path(base_source) / "metrics.json").read_text()) \
            if Path(base_source).is_dir() else {"mean_auc": float("nan")}
        kd_dir = run_dir / f"standard_kd_{name}"
        student = distil(config, kd_dir, data, teacher, name)
        kd_results = evaluate_once(student, data, config, kd_dir, model_name=name)
        table.append({"model": name, "role": "branch model", "base training": base["mean_auc"],
                      "standard KD": kd_results["mean_auc"], "EKD branch": None, "EKD": None,
                      "params": kd_results["params"]["total"]})
    size = int(config["image_size"])
    ensemble = distil_features(
        config, run_dir / "ensemble", data, [teacher],
        lambda: ensemble_student(branches, data.num_classes, (size, size, 3),
                                 combine=config["combine"], weights=config.get("weights")),
        terms_for=lambda model: pooled_feature_terms(model, teacher_layer, config))
    attach_branches(ensemble, branches)
    ensemble_results = evaluate_once(ensemble, data, config, run_dir / "ensemble",
                                     model_name=f"ensemble({', '.join(branches)})")
    branch_rows = [model_row(f"branch {i}: {name}", mean_test_auc(branch, data, config), branch,
                             config, "ensemble branch")
                   for i, (name, branch) in enumerate(zip(branches, ensemble.branches))]
    for row, name in zip(branch_rows, branches):  # the first branch of each model name
        entry = next(r for r in table if r["model"] == name and r["role"] == "branch model")
        if entry["EKD branch"] is None:
            entry["EKD branch"] = row["auc"]
    table.append({"model": f"ensemble ({config['combine']} of {len(branches)})",
                  "role": "student", "base training": None, "standard KD": None,
                  "EKD branch": None, "EKD": ensemble_results["mean_auc"],
                  "params": ensemble_results["params"]["total"]})
    frame = pd.DataFrame(table)
    branch_frame = pd.DataFrame(branch_rows + [{
        "model": "ensemble", "role": "student", "auc": ensemble_results["mean_auc"],
        "params": ensemble_results["params"]["total"],
        "latency_ms": ensemble_results["latency"]["median_ms"]}])
    frame.to_csv(run_dir / "table1.csv", index=False)
    branch_frame.to_csv(run_dir / "branches.csv", index=False)
    text = "\n".join([
        f"# Ensemble KD on {data.name}: {config['teacher']} -> {' + '.join(branches)}", "",
        f"Mean test AUC. KD loss {config['kd_loss_used']}, T = {config['temperature']:g}, "
        f"alpha = {config['alpha']:g}; feature term {config['feature_distance']} x "
        f"{config['feature_weight']:g} per branch (its feature vector, the layer its logits "
        f"read, projected onto the teacher's {teacher_layer})."
        + (f" {MOBILENET_NOTE}" if {"mobilenet_v1", "mobilenet_v2"} & set(branches) else ""),
        "",
        markdown_table(frame.astype(object).where(frame.notna(), "--"), ".4f"), "",
        "## The ensemble and its branches", "", markdown_table(branch_frame, ".4f"), ""])
    (run_dir / "table1.md").write_text(text)
    print("\n" + text)
    results = {"recipe": "ensemble_kd", "teacher": str(config["teacher"]),
               "teacher_source": str(source), "branches": branches,
               "table1": json.loads(frame.to_json(orient="records")),
               "branch_table": branch_rows, "ensemble": {
                   k: ensemble_results[k] for k in ("mean_auc", "params", "latency")},
               "run_dir": str(run_dir)}
    write_json(results, run_dir / "metrics.json")
    return results


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
