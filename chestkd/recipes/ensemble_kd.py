"""Ensemble KD (EKD): one teacher teaches a student of parallel branches whose logits add up.

    python -m chestkd.recipes.ensemble_kd [--teacher NAME|FILE]
        [branches=[mobilenet_v1, vgg19, resnet32, resnet50]] [--combine sum|mean]
        [--feature-distance mse|wasserstein] [--feature-weight W] [--temperature T]
        [--alpha A] [base-training options] [key=value ...]

1. the teacher (DenseNet-121 by default) is base-trained once in the model store;
2. every branch model is base-trained alone (model store) and distilled alone from the
   teacher (standard KD), as ``standalone`` says;
3. the ensemble student (the branches on one input, ``combine`` = sum of their logits, as in
   the paper) is distilled from the teacher: the KD loss on the summed logits plus, per
   branch, ``feature_weight`` x ``feature_distance`` between its projected feature vector and
   the teacher's, divided by the teacher features' mean square (``feature_scale: teacher``;
   the paper gives no distance, weight or scale: :mod:`chestkd.experiments.ensemble`);
4. ``table1.md``: the paper's Table 1 layout, each branch model alone and in the ensemble,
   the teacher and the ensemble, with parameters and latency.

With no data given it runs on the phantom with :data:`PHANTOM_ENSEMBLE` laid over the phantom
profile (a ResNet-32 teacher and two small branches at 32 px: minutes on two CPU cores); the
paper's settings are ``--config recipes/ensemble_kd.yaml``. The run prints its plan first.
"""
from __future__ import annotations

from pathlib import Path

from chestkd.experiments.ensemble import (PAPER_BRANCHES, STANDALONE, check_layers,
                                          distil_ensemble, ensemble_options, plan,
                                          standalone_row, teacher_feature_scale, teacher_row,
                                          write_table1)
from chestkd.experiments.kd import record_teacher, resolve_kd_loss
from chestkd.experiments.repeat import recipe_entry
from chestkd.experiments.store import obtain_model
from chestkd.training.classifier import prepare_run_data
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS
from chestkd.training.options import run_options
from chestkd.training.run import open_run

DEFAULTS = {**BASE_DEFAULTS,
            **{k: KD_DEFAULTS[k] for k in ("kd_loss", "temperature", "alpha",
                                           "teacher_outputs")},
            "teacher": "densenet121",
            "branches": PAPER_BRANCHES,
            "combine": "sum",
            "feature_distance": "mse",
            "feature_weight": 1.0,
            # teacher: the feature term divided by the teacher features' mean square (a
            # relative error, the same at any feature scale) | none: the raw distance
            "feature_scale": "teacher",
            # what each branch model gets alone, beside the ensemble: base training (model
            # store) and/or standard KD from the teacher (Table 1's two columns)
            "standalone": list(STANDALONE)}
# The recipe's phantom profile (laid over chestkd.training.config.PHANTOM_PROFILE, keys you
# set win): a ResNet-32 teacher and two small branches of different families at 32 px (the
# CIFAR ResNet's own size), so the teacher, the 2 x 2 standalone trainings and the ensemble
# finish in minutes on two CPU cores (benchmarks/RESULTS.md, "Every recipe's no-data
# default": at 64 px and 2,000 films the same trainings took ~11 min and learnt less).
# 8 epochs, not the paper's 200 (nor this demo's earlier 10, over 8 minutes on 2 cores; at 6
# the ensemble fell below its best branch trained alone): each model learns less than it
# would with more epochs; the caption says these are not the paper's numbers.
PHANTOM_ENSEMBLE = {"teacher": "resnet32", "branches": ["conv3_student", "baseline_cnn"],
                    "image_size": 32, "phantom_size": 32, "phantom_images": 3000,
                    "epochs": 8, "standalone": ["base", "kd"]}
RECIPE_PROFILES = {"phantom": PHANTOM_ENSEMBLE}


def checked_plan(config: dict) -> str:
    # every option and model name, before any data
    return plan(config, list(ensemble_options(config).branches))


def run_once(config: dict) -> dict:
    settings = {"branches": list(ensemble_options(config).branches)}  # checked, as a list
    if not config.get("run_name") and not config.get("resume"):
        settings["run_name"] = f"ensemble_kd-{Path(str(config['teacher'])).stem}"
    run_dir, options = open_run(run_options({**config, **settings}), "ensemble_kd")
    print(f"run directory: {run_dir}")
    data, options = prepare_run_data(options, run_dir)
    # The run's own ensemble options (a resumed run's saved ones, the data's profile applied).
    ensemble = ensemble_options(options.config)
    kd_loss = resolve_kd_loss(options, data)  # the tables name it
    teacher_layer = check_layers(options, ensemble, data)

    # 1. The teacher, base-trained once in the model store (or loaded).
    teacher, source = obtain_model(options, data, ensemble.teacher)
    record_teacher(run_dir, source)
    table = [teacher_row(options, ensemble, data, run_dir, teacher, source)]
    # 2. Each branch model alone: base training and/or standard KD from the teacher.
    table += [standalone_row(options, ensemble, data, run_dir, teacher, name)
              for name in dict.fromkeys(ensemble.branches)]
    # 3. The ensemble student from the teacher: KD loss + one feature term per branch.
    scale = teacher_feature_scale(teacher, teacher_layer, data, options, ensemble)
    print(f"feature term: {ensemble.feature_distance} x {ensemble.feature_weight:g} / "
          f"{scale:.4g} (the teacher's {teacher_layer} mean square; feature_scale="
          f"{ensemble.feature_scale})", flush=True)
    ensemble_results, branch_rows = distil_ensemble(options, ensemble, run_dir, data, teacher,
                                                    teacher_layer, scale)
    # 4. Table 1: the teacher, each branch model alone and in the ensemble, the ensemble.
    return write_table1(options, ensemble, data, run_dir, table, ensemble_results,
                        branch_rows, teacher_source=source, teacher_layer=teacher_layer,
                        scale=scale, kd_loss=kd_loss)


run, main = recipe_entry(run_once, DEFAULTS, __doc__, plan=checked_plan,
                         recipe_profiles=RECIPE_PROFILES)

if __name__ == "__main__":
    raise SystemExit(main())
