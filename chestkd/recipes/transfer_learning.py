"""Transfer learning and KD for pediatric pneumonia: the four setups of the pneumonia paper.

    python -m chestkd.recipes.transfer_learning [--config recipes/transfer_learning.yaml]
        [--dataset folder --data-dir chest_xray --patient-regex ...] [--weights SOURCE]
        [--teacher-weights SOURCE] [--epochs N] [--finetune-epochs N] [key=value ...]

On the same data, split and augmentation (``light`` by default):

1. ``baseline_model`` (``baseline_cnn``: two conv + max-pool blocks, two dense layers with
   dropout) trained from scratch for ``epochs + finetune_epochs``;
2. ``transfer_model`` (ResNet-18) as a fixed feature extractor: pretrained base frozen, a new
   head trained for ``epochs``;
3. the same model fine-tuned in two stages, the Keras convention: stage 1 is setup 2, then
   every layer except BatchNorm (kept frozen, in inference mode) is unfrozen and trained for
   ``finetune_epochs`` at ``finetune_lr_factor`` (0.01: 100x lower) times the learning rate;
4. ``teacher_model`` (ResNet-50) fine-tuned the same way, distilled into a ``transfer_model``
   student that starts from the pretrained weights, with the paper's total loss
   (1 - alpha) KL(p_t^T || p_s^T) + alpha CE(y, p_s): the paper's ``alpha`` (``paper_alpha``)
   weighs the LABELS, the opposite of chestkd's ``alpha``; the recipe sets chestkd's alpha
   to 1 - paper_alpha. ``kd_loss: ho2020_eq8`` is that KL with no T^2 factor, as printed;
   ``hinton`` adds it. The student trains ``epochs + finetune_epochs`` epochs, as long as
   setup 3 in total; the teacher runs online (its cached table only covers flips). A
   teacher of the same model and weights as setup 3 IS setup 3's model (not trained twice).

Pretrained weights (``weights`` for ResNet-18, ``teacher_weights`` for ResNet-50):
``phantom`` (default) pretrains the model on the 14-finding phantom (through the model store,
``pretrain_epochs`` epochs, ``pretrain_images`` films at the run's image size) and transfers
it; ``imagenet`` uses Keras' ImageNet weights (ResNet-50 has them; ResNet-18 does not);
``RUN_DIR`` or ``FILE.keras`` is a chestkd model trained on another chest X-ray task; ``null``
is random. Transferred weights are copied by layer name, the head is re-initialised when the
classes differ, and ``transfer.json`` lists what was and was not copied.

Writes ``table4_1.md`` / ``.csv`` (the paper's Table 4.1 extended: accuracy, precision, recall
and F1 of the positive class, AUC with its 95 % interval, parameters, latency per image),
``confusion_<setup>.png`` per setup, and a full run folder per setup (``model.keras``,
metrics, ``model_card.md``, ``model_info.json``: ``python -m chestkd.predict RUN/<setup>``).
With no data given: the two-class pneumonia phantom (normal vs. pneumonia) at 64 px.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.cli import main_of
from chestkd.errors import ConfigError
from chestkd.evaluation import markdown_table
from chestkd.evaluation.classification import classification_report, confusion_matrix_figure
from chestkd.experiments.kd import distil, evaluate_once
from chestkd.experiments.stages import Stages
from chestkd.experiments.store import obtain_model
from chestkd.models.weights import source_model_file, transfer_weights
from chestkd.models.zoo import build, freeze_backbone, get_spec, unfreeze_backbone
from chestkd.training.config import (BASE_DEFAULTS, PHANTOM_DATASETS, load_yaml,
                                     resolve_config, save_config)
from chestkd.training.experiment import (best_model, compile_classifier, load_model,
                                         load_run_data, pipelines, set_precision)
from chestkd.training.run import seed_everything, start_run, write_json
from chestkd.training.trainer import fit

DEFAULTS = {**BASE_DEFAULTS, "dataset": "pneumonia_phantom", "classes": ["normal", "pneumonia"],
            "augment": "light", "baseline_model": "baseline_cnn", "transfer_model": "resnet18",
            "teacher_model": "resnet50", "weights": "phantom", "teacher_weights": "phantom",
            "pretrain_epochs": 5, "pretrain_images": 1000, "finetune_epochs": 5,
            "finetune_lr_factor": 0.01, "kd_loss": "ho2020_eq8", "temperature": 4.0,
            "paper_alpha": 0.5, "threshold_rule": "youden", "positive_class": None}
# The no-data job, on top of the phantom profile (keys given anywhere win): 64 px, so the
# ResNet-50 teacher trains in minutes on a CPU.
PHANTOM_RECIPE_PROFILE = {"image_size": 64, "phantom_size": 64, "phantom_images": 1000,
                          "epochs": 5}
SETUPS = (("baseline", "Baseline CNN"),
          ("feature_extractor", "Transfer learning (ResNet-18 fixed extractor)"),
          ("fine_tuned", "Transfer learning (ResNet-18 fine-tuned)"),
          ("teacher", "ResNet-50 teacher (fine-tuned)"),
          ("student", "Final student model (ResNet-50 -> ResNet-18 KD)"))


def resolve(argv) -> dict:
    config = resolve_config(argv, DEFAULTS, __doc__)
    given = set(config["_given"])
    if config.get("config_file"):
        given |= set(load_yaml(config["config_file"]))
    if config["dataset"] in PHANTOM_DATASETS:
        config.update({k: v for k, v in PHANTOM_RECIPE_PROFILE.items() if k not in given})
    config["model"] = config["transfer_model"]   # names the run folder
    check_weights(config)
    return config


def check_weights(config: dict) -> None:
    """Refuse weights that cannot work before anything trains."""
    for key, model_key in (("weights", "transfer_model"), ("teacher_weights", "teacher_model")):
        source, name = config.get(key), config[model_key]
        if source == "imagenet" and not get_spec(name).has_imagenet:
            raise ConfigError(f"--{key.replace('_', '-')} imagenet: Keras has no ImageNet "
                              f"weights for {name}; use phantom, a RUN_DIR / FILE.keras or null")
        if source not in (None, "imagenet", "phantom"):
            source_model_file(source)


def pretrained_source(config: dict, name: str, source, run_dir) -> Path | None:
    """The .keras file that initialises ``name`` (None for random or ImageNet weights)."""
    if source in (None, "imagenet"):
        return None
    if source != "phantom":
        return source_model_file(source)
    pre = {**config, "dataset": "phantom", "data_dir": None, "classes": None, "balance": None,
           "epochs": int(config["pretrain_epochs"]), "phantom_images":
           int(config["pretrain_images"]), "phantom_size": int(config["image_size"]),
           "label_noise": 0.1, "weights": None, "augment": "flip", "val_split": "auto"}
    pre = {k: v for k, v in pre.items() if k in BASE_DEFAULTS or k.startswith("_")}
    (Path(run_dir) / "pretraining").mkdir(exist_ok=True)
    data = load_run_data(pre, Path(run_dir) / "pretraining")
    _, folder = obtain_model(pre, data, name)
    return Path(folder) / "model.keras"


def initial_model(config: dict, data, name: str, source, run_dir):
    """(model, transfer report): ``name`` for ``data``'s classes, initialised from ``source``."""
    size = int(config["image_size"])
    path = pretrained_source(config, name, source, run_dir)
    seed_everything(int(config["seed"]))
    model = build(name, data.num_classes, (size, size, 3),
                  weights="imagenet" if source == "imagenet" else None)
    if path is None:
        return model, {"source": source or "random initialisation",
                       "not_copied": [{"layer": "logits", "reason": "new head"}]
                       if source == "imagenet" else []}
    return model, transfer_weights(load_model(path), model, source_label=str(path))


def train_stage(model, data, config: dict, folder, *, epochs: int, lr_factor: float = 1.0):
    """Compile ``model`` as it is (frozen layers stay frozen) and train it into ``folder``."""
    stage = {**config, "epochs": int(epochs),
             "learning_rate": float(config["learning_rate"]) * lr_factor, "weights": None}
    Path(folder).mkdir(parents=True, exist_ok=True)
    save_config(stage, Path(folder) / "config.yaml")   # export/predict read it
    if Stages(folder).done("training"):
        return best_model(folder, model)
    compile_classifier(model, data, stage)
    train, val = pipelines(data, stage)
    fit(model, train, val, stage, folder, multi_label=data.multi_label)
    Stages(folder).mark("training", epochs=int(epochs))
    return best_model(folder, model)


def two_stage(config, data, name, source, run_dir, prefix: str):
    """Setups 2 and 3 for ``name``: (frozen-base model, fine-tuned model, transfer report)."""
    model, report = initial_model(config, data, name, source, run_dir)
    frozen = train_stage(freeze_backbone(model), data, config, run_dir / f"{prefix}frozen",
                         epochs=int(config["epochs"]))
    tuned = train_stage(unfreeze_backbone(load_model(run_dir / f"{prefix}frozen" /
                                                     "model.keras")),
                        data, config, run_dir / f"{prefix}fine_tuned",
                        epochs=int(config["finetune_epochs"]),
                        lr_factor=float(config["finetune_lr_factor"]))
    return frozen, tuned, report


def score(model, data, config, folder, label: str) -> dict:
    """The setup's evaluation (metrics, model card, model_info.json), once."""
    return evaluate_once(model, data, {**config, "weights": None}, folder, model_name=label)


def table_row(setup: str, title: str, folder: Path, results: dict, positive: int) -> dict:
    """One row of the table, from the setup's saved test predictions (clean labels when the
    data has them, as its metrics); writes the setup's confusion-matrix figure."""
    with np.load(folder / "test_predictions.npz", allow_pickle=False) as npz:
        logits = npz["logits"]
        truth = npz["clean_labels"] if "clean_labels" in npz.files else npz["labels"]
        names = [str(n) for n in npz["class_names"]]
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    probs = shifted / shifted.sum(1, keepdims=True)
    report = classification_report(truth, probs, names, multi_label=False).set_index("class")
    binary = len(names) == 2
    row = report.loc[names[positive]] if binary else report.loc["macro avg"]
    auc_key = names[positive] if binary else None
    auc = results["per_class_auc"][auc_key] if binary else results["mean_auc"]
    ci = ((results.get("per_class_auc_ci") or {}).get(auc_key) if binary
          else results.get("mean_auc_ci"))
    confusion_matrix_figure(truth, probs, names, folder.parent / f"confusion_{setup}.png",
                            title=f"{title} (test split)")
    return {"setup": title, "model": results["model"],
            "accuracy": float(report.loc["accuracy", "precision"]),
            "precision": float(row["precision"]), "recall": float(row["recall"]),
            "f1": float(row["f1"]), "auc": auc, "auc_ci": ci,
            "parameters": int(results["params"]["total"]),
            "latency_ms": float(results["latency"]["median_ms"])}


def run(argv=None) -> dict:
    config = resolve(argv)
    run_dir = start_run(config, "transfer_learning")
    print(f"run directory: {run_dir}")
    set_precision(config)
    data = load_run_data(config, run_dir)
    names = list(data.class_names)
    if config.get("positive_class") and config["positive_class"] not in names:
        raise ConfigError(f"--positive-class {config['positive_class']!r}: not one of the "
                          f"classes {names}")
    positive = (names.index(config["positive_class"]) if config.get("positive_class")
                else len(names) - 1)
    folders, results, transfers = {}, {}, {}

    baseline, _ = initial_model(config, data, config["baseline_model"], None, run_dir)
    folders["baseline"] = run_dir / "baseline"
    baseline = train_stage(baseline, data, config, folders["baseline"],
                           epochs=int(config["epochs"]) + int(config["finetune_epochs"]))

    frozen, tuned, transfers["transfer_model"] = two_stage(
        config, data, config["transfer_model"], config["weights"], run_dir, "")
    folders["feature_extractor"], folders["fine_tuned"] = run_dir / "frozen", \
        run_dir / "fine_tuned"
    if (config["teacher_model"], config["teacher_weights"]) == (config["transfer_model"],
                                                                config["weights"]):
        # the teacher's two stages would repeat setups 2-3 exactly: use setup 3's model
        teacher, folders["teacher"] = tuned, folders["fine_tuned"]
        transfers["teacher_model"] = transfers["transfer_model"]
    else:
        _, teacher, transfers["teacher_model"] = two_stage(
            config, data, config["teacher_model"], config["teacher_weights"], run_dir,
            "teacher_")
        folders["teacher"] = run_dir / "teacher_fine_tuned"

    student_init, transfers["student"] = initial_model(config, data, config["transfer_model"],
                                                       config["weights"], run_dir)
    kd_config = {**config, "weights": None, "alpha": 1.0 - float(config["paper_alpha"]),
                 "teacher_outputs": "online", "kd_loss_used": config["kd_loss"],
                 "epochs": int(config["epochs"]) + int(config["finetune_epochs"])}
    folders["student"] = run_dir / "student"
    folders["student"].mkdir(exist_ok=True)
    save_config(kd_config, folders["student"] / "config.yaml")
    student = distil(kd_config, folders["student"], data, teacher, config["transfer_model"],
                     init_from=student_init)
    write_json(transfers, run_dir / "transfer.json")

    models = {"baseline": baseline, "feature_extractor": frozen, "fine_tuned": tuned,
              "teacher": teacher, "student": student}
    architectures = {"baseline": config["baseline_model"], "teacher": config["teacher_model"],
                     "feature_extractor": config["transfer_model"],
                     "fine_tuned": config["transfer_model"], "student": config["transfer_model"]}
    rows = []
    for setup, title in SETUPS:
        results[setup] = score(models[setup], data, config, folders[setup],
                               architectures[setup])
        rows.append(table_row(setup, title, folders[setup], results[setup], positive))
    table = pd.DataFrame(rows)
    table.to_csv(run_dir / "table4_1.csv", index=False)
    shown = table.drop(columns=["auc_ci"]).assign(auc=[
        f"{a:.4f}" + (f" [{c[0]:.3f}, {c[1]:.3f}]" if c else "")
        for a, c in zip(table["auc"], table["auc_ci"])])
    scores_of = (f"class {names[positive]!r}" if len(names) == 2 else "macro average")
    text = (f"# Table 4.1 extended: {data.name} ({', '.join(names)}), "
            f"{results['baseline']['test_images']} test images\n\n"
            + markdown_table(shown) + f"\n\nPrecision, recall and F1 of {scores_of} at the "
            "arg-max decision; AUC with its 95 % patient-bootstrap interval; latency: median "
            "of batch-1 calls after warm-up on this machine.\n")
    (run_dir / "table4_1.md").write_text(text)
    print("\n" + text)
    summary = {"recipe": "transfer_learning", "table": rows, "transfer": transfers,
               "setups": {s: str(f) for s, f in folders.items()},
               "paper_alpha": config["paper_alpha"], "kd_alpha": kd_config["alpha"]}
    write_json(summary, run_dir / "metrics.json")
    print(json.dumps({"transfer": {k: {"copied": len(v.get("copied", [])),
                                       "not_copied": v.get("not_copied")}
                                   for k, v in transfers.items()}}, indent=1))
    return summary


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
