"""Transfer learning and KD for pediatric pneumonia: the four setups of the pneumonia paper.

    python -m chestkd.recipes.transfer_learning [--config recipes/transfer_learning.yaml]
        [--dataset folder --data-dir chest_xray --patient-regex ...] [--weights SOURCE]
        [--teacher-weights SOURCE] [--epochs N] [--finetune-epochs N] [key=value ...]

On the same data, split and augmentation: 1. ``baseline_model`` from scratch for
``baseline_epochs`` (default ``epochs + finetune_epochs``); 2. ``transfer_model`` (ResNet-18)
as a fixed feature extractor: pretrained base frozen, a new head trained for ``epochs`` at
``head_lr_factor`` x the learning rate; 3. the same model fine-tuned: setup 2, then every
layer for ``finetune_epochs`` at ``finetune_lr_factor`` x the rate (``finetune_batchnorm:
train``: BatchNorm too, as PyTorch fine-tunes, its statistics re-estimated on the training
split afterwards with ``reestimate_batchnorm``; ``frozen``: the Keras convention); 4.
``teacher_model`` fine-tuned the same way and distilled into a ``transfer_model`` student
(pretrained start, ``epochs + finetune_epochs`` epochs) with the paper's loss (1 - alpha)
KL(p_t^T || p_s^T) + alpha CE(y, p_s): the paper's alpha (``paper_alpha``) weighs the LABELS,
so chestkd's alpha is 1 - paper_alpha; ``kd_loss: ho2020_eq8`` has no T^2 factor.

Pretrained weights (``weights``, ``teacher_weights``): ``phantom`` pretrains on
``pretrain_dataset`` (``phantom``: the 14-finding phantom; ``pneumonia_phantom``: the
normal / pneumonia / COVID-19-like phantom on films of another seed) through the model store;
``imagenet``: Keras' weights; ``RUN_DIR`` or ``FILE.keras``: another chestkd model; ``null``:
random. ``transfer.json`` lists the layers copied by name (the head is new).

Writes ``table4_1.md`` / ``.csv`` (accuracy, precision, recall, F1 at the positive class's
validation threshold, arg-max accuracy, AUC with its 95 % interval, parameters, latency; the
weights' origin and a verdict on the paper's story), ``confusion_<setup>.png`` and a run
folder per setup (``python -m chestkd.predict RUN/<setup>``). With no data: the two-class
pneumonia phantom (normal vs. pneumonia) at 64 px, a smaller teacher (see RECIPE_PROFILES).
"""
from __future__ import annotations

import json

import pandas as pd

from chestkd.cli import main_of
from chestkd.errors import ConfigError
from chestkd.experiments.kd import distil
from chestkd.experiments.transfer import (SETUPS, baseline_epochs, check_options,
                                          initial_model, plan, score, setup_titles, table_row,
                                          table_text, teacher_outputs, train_stage, two_stage)
from chestkd.training.config import BASE_DEFAULTS, resolve_config, save_config
from chestkd.training.experiment import load_run_data, set_precision
from chestkd.training.run import start_run, write_json

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


def resolve(argv) -> dict:
    config = resolve_config(argv, DEFAULTS, __doc__, recipe_profiles=RECIPE_PROFILES)
    config["model"] = config["transfer_model"]   # names the run folder
    check_options(config)
    return config


def run(argv=None) -> dict:
    config = resolve(argv)
    print(plan(config), flush=True)
    run_dir = start_run(config, "transfer_learning")
    print(f"run directory: {run_dir}")
    set_precision(config)
    data = load_run_data(config, run_dir)
    names = list(data.class_names)
    if config.get("positive_class") and config["positive_class"] not in names:
        raise ConfigError(f"--positive-class {config['positive_class']!r}: not one of the "
                          f"classes {names}")
    positive = names.index(config.get("positive_class") or names[-1])
    setup_dirs = {s: run_dir / d for s, d in (("baseline", "baseline"), ("student", "student"),
                  ("feature_extractor", "frozen"), ("fine_tuned", "fine_tuned"))}
    models, transfers = {}, {}

    baseline, _ = initial_model(config, data, config["baseline_model"], None, run_dir)
    models["baseline"] = train_stage(baseline, data, config, setup_dirs["baseline"],
                                     epochs=baseline_epochs(config))
    models["feature_extractor"], models["fine_tuned"], transfers["transfer_model"] = two_stage(
        config, data, config["transfer_model"], config["weights"], run_dir, "")
    if (config["teacher_model"], config["teacher_weights"]) == (config["transfer_model"],
                                                                config["weights"]):
        # the teacher's two stages would repeat setups 2-3 exactly: use setup 3's model
        models["teacher"], setup_dirs["teacher"] = models["fine_tuned"], setup_dirs["fine_tuned"]
        transfers["teacher_model"] = transfers["transfer_model"]
    else:
        _, models["teacher"], transfers["teacher_model"] = two_stage(
            config, data, config["teacher_model"], config["teacher_weights"], run_dir,
            "teacher_")
        setup_dirs["teacher"] = run_dir / "teacher_fine_tuned"

    student_init, transfers["student"] = initial_model(config, data, config["transfer_model"],
                                                       config["weights"], run_dir)
    kd_config = {**config, "weights": None, "alpha": 1.0 - float(config["paper_alpha"]),
                 "teacher_outputs": teacher_outputs(config), "kd_loss_used": config["kd_loss"],
                 "epochs": int(config["epochs"]) + int(config["finetune_epochs"])}
    setup_dirs["student"].mkdir(exist_ok=True)
    save_config(kd_config, setup_dirs["student"] / "config.yaml")
    models["student"] = distil(kd_config, setup_dirs["student"], data, models["teacher"],
                               config["transfer_model"], init_from=student_init)
    write_json(transfers, run_dir / "transfer.json")

    architectures = {"baseline": config["baseline_model"], "teacher": config["teacher_model"]}
    titles, results, rows = setup_titles(config), {}, []
    for setup, _ in SETUPS:
        results[setup] = score(models[setup], data, config, setup_dirs[setup],
                               architectures.get(setup, config["transfer_model"]))
        rows.append(table_row(setup, titles[setup], setup_dirs[setup], results[setup],
                              positive))
    pd.DataFrame(rows).to_csv(run_dir / "table4_1.csv", index=False)
    text = table_text(rows, config, data, positive, results["baseline"]["test_images"])
    (run_dir / "table4_1.md").write_text(text)
    print("\n" + text)
    summary = {"recipe": "transfer_learning", "table": rows, "transfer": transfers,
               "setups": {s: str(f) for s, f in setup_dirs.items()},
               "paper_alpha": config["paper_alpha"], "kd_alpha": kd_config["alpha"]}
    write_json(summary, run_dir / "metrics.json")
    print(json.dumps({"transfer": {k: {"copied": len(v.get("copied", [])),
                                       "not_copied": v.get("not_copied")}
                                   for k, v in transfers.items()}}, indent=1))
    return summary


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
