"""Transfer learning and KD for pediatric pneumonia: the four setups of the pneumonia paper.

    python -m chestkd.recipes.transfer_learning [--config recipes/transfer_learning.yaml]
        [--dataset folder --data-dir chest_xray --patient-regex ...] [--weights SOURCE]
        [--teacher-weights SOURCE] [--epochs N] [--finetune-epochs N] [key=value ...]

On the same data, split and augmentation it trains 1. a baseline CNN from scratch; 2. a
pretrained ResNet-18 as a fixed feature extractor (new head only); 3. the same model
fine-tuned; 4. a fine-tuned teacher distilled into a pretrained ResNet-18 with the paper's
loss (its alpha weighs the labels: chestkd's alpha is 1 - ``paper_alpha``). It reports
``table4_1.md`` / ``.csv`` with a verdict on the paper's story, ``confusion_<setup>.png`` and a
run folder per setup. Weights (``phantom``, ``imagenet``, ``RUN_DIR``, ``FILE.keras``,
``null``), options and the no-data demo: docs/transfer_learning.md.
"""
from __future__ import annotations

import json

from chestkd.errors import ConfigError
from chestkd.experiments.transfer import (SETUP_FOLDERS, baseline_epochs, check_options,
                                          copied_layers, distil_student, initial_model,
                                          kd_alpha, plan, positive_index, teacher_setup,
                                          train_stage, transfer_options, two_stage,
                                          write_table)
from chestkd.experiments.repeat import recipe_entry
from chestkd.training.config import BASE_DEFAULTS, resolve_config
from chestkd.training.classifier import prepare_run_data, set_precision
from chestkd.training.options import run_options
from chestkd.training.run import open_run, write_json

DEFAULTS = {**BASE_DEFAULTS, "dataset": "pneumonia_phantom", "classes": ["normal", "pneumonia"],
            "augment": "light", "baseline_model": "baseline_cnn", "transfer_model": "resnet18",
            "teacher_model": "resnet50", "weights": "phantom", "teacher_weights": "phantom",
            "pretrain_dataset": "phantom", "pretrain_epochs": 5, "pretrain_images": 1000,
            "finetune_epochs": 5, "finetune_lr_factor": 0.1, "finetune_batchnorm": "train",
            "reestimate_batchnorm": True, "head_lr_factor": 1.0, "baseline_epochs": None,
            "kd_loss": "ho2020_eq8", "temperature": 4.0, "paper_alpha": 0.5,
            "threshold_rule": "youden", "positive_class": None}
# The no-data demo (laid over the phantom profile; keys set anywhere win), measured in
# RESULTS.md "Transfer-learning demo": 64 px; the source task is the pneumonia phantom's
# 3-class task on other films (the 14-finding phantom at 5 epochs gave features at chance);
# every stage keeps its weights averaged over the last third of its epochs with BatchNorm
# statistics re-estimated (a few hundred steps at momentum 0.99 leave the moving statistics
# near their start, which broke inference-mode models); the teacher is setup 3's ResNet-18,
# not the paper's ResNet-50 (a second pretrained network doubles the demo's time); the
# baseline needs ~30 epochs; the new head moves faster at 10x the rate; with the flip as
# the only augmentation the student reads a cached teacher table.
PHANTOM_TRANSFER = {"image_size": 64, "phantom_size": 64, "phantom_images": 1000,
                    "pretrain_dataset": "pneumonia_phantom", "pretrain_images": 1000,
                    "pretrain_epochs": 6, "teacher_model": "resnet18", "epochs": 4,
                    "finetune_epochs": 4, "baseline_epochs": 30, "head_lr_factor": 10.0,
                    "augment": "flip", "checkpoint": "average"}
RECIPE_PROFILES = {"phantom": PHANTOM_TRANSFER}


def checked(config) -> dict:
    """The configuration with ``model`` = ``transfer_model`` (it names the run folder), after
    checking every option, before anything is read or trained."""
    check_options(config)
    if "model" in config.get("_explicit", ()) and config["model"] != config["transfer_model"]:
        # It named the run folder only, and was silently replaced by transfer_model.
        raise ConfigError(f"--model {config['model']}: transfer_learning trains several models; "
                          "name them with transfer_model=, teacher_model= and baseline_model=")
    return {**config, "model": config["transfer_model"]}


def resolve(argv) -> dict:
    return checked(resolve_config(argv, DEFAULTS, __doc__, recipe_profiles=RECIPE_PROFILES))


def run_once(config: dict) -> dict:
    run_dir, options = open_run(run_options(checked(config)), "transfer_learning")
    print(f"run directory: {run_dir}")
    set_precision(options)
    data, options = prepare_run_data(options, run_dir)
    transfer = transfer_options(options.config)   # the run's own (a resumed run's saved ones)
    positive = positive_index(transfer, data.class_names)
    folders = {setup: run_dir / name for setup, name in SETUP_FOLDERS.items()}
    models, transfers = {}, {}
    # 1. the baseline from scratch
    baseline, _ = initial_model(options, data, transfer.baseline_model, None, run_dir)
    models["baseline"] = train_stage(baseline, data, options, folders["baseline"],
                                     epochs=baseline_epochs(options, transfer))
    # 2-3. the pretrained transfer model: its new head on the frozen base, then every layer
    models["feature_extractor"], models["fine_tuned"], transfers["transfer_model"] = two_stage(
        options, transfer, data, transfer.transfer_model, options.training.weights, run_dir,
        "")
    # 4. a teacher fine-tuned the same way, distilled into a pretrained student
    models["teacher"], folders["teacher"], transfers["teacher_model"] = teacher_setup(
        options, transfer, data, run_dir, models["fine_tuned"], transfers["transfer_model"])
    models["student"], transfers["student"] = distil_student(
        options, transfer, data, models["teacher"], folders["student"], run_dir)
    write_json(transfers, run_dir / "transfer.json")
    # What it reports: the five setups scored on the test split, as Table 4.1 extended.
    rows = write_table(options, transfer, data, models, folders, positive, run_dir)
    summary = {"recipe": "transfer_learning", "table": rows, "transfer": transfers,
               "setups": {s: str(f) for s, f in folders.items()},
               "paper_alpha": options.config["paper_alpha"], "kd_alpha": kd_alpha(transfer)}
    write_json(summary, run_dir / "metrics.json")
    print(json.dumps({"transfer": copied_layers(transfers)}, indent=1))
    return {**summary, "run_dir": str(run_dir)}


run, main = recipe_entry(run_once, DEFAULTS, __doc__, plan=lambda config: plan(checked(config)),
                         recipe_profiles=RECIPE_PROFILES)

if __name__ == "__main__":
    raise SystemExit(main())
