"""Transfer learning and KD for pediatric pneumonia: the four setups of the pneumonia paper.

    python -m chestkd.recipes.transfer_learning [--config recipes/transfer_learning.yaml]
        [--dataset folder --data-dir chest_xray --patient-regex ...] [--weights SOURCE]
        [--teacher-weights SOURCE] [--epochs N] [--finetune-epochs N] [key=value ...]

On the same data, split and augmentation (``light`` by default):

1. ``baseline_model`` (``baseline_cnn``: two conv + max-pool blocks, two dense layers with
   dropout) trained from scratch for ``baseline_epochs`` (default ``epochs +
   finetune_epochs``);
2. ``transfer_model`` (ResNet-18) as a fixed feature extractor: pretrained base frozen, a new
   head trained for ``epochs`` at ``head_lr_factor`` times the learning rate;
3. the same model fine-tuned in two stages: stage 1 is setup 2, then every layer is unfrozen
   and trained for ``finetune_epochs`` at ``finetune_lr_factor`` (0.1) times the learning
   rate. ``finetune_batchnorm: train`` (default) trains BatchNorm too, moving statistics
   included, as PyTorch's fine-tuning does (the paper's framework: "the entire ResNet-18
   network is fine-tuned"); ``frozen`` keeps it in inference mode, the Keras convention for
   ImageNet weights, which left a phantom-pretrained ResNet-18 near chance (RESULTS.md);
4. ``teacher_model`` (ResNet-50) fine-tuned the same way, distilled into a ``transfer_model``
   student that starts from the pretrained weights, with the paper's total loss
   (1 - alpha) KL(p_t^T || p_s^T) + alpha CE(y, p_s): the paper's ``alpha`` (``paper_alpha``)
   weighs the LABELS, the opposite of chestkd's ``alpha``; the recipe sets chestkd's alpha
   to 1 - paper_alpha. ``kd_loss: ho2020_eq8`` is that KL with no T^2 factor, as printed;
   ``hinton`` adds it. The student trains ``epochs + finetune_epochs`` epochs, as long as
   setup 3 in total, every layer at the full learning rate; the teacher's outputs are cached
   once per image and flip when the only augmentation is the flip, else it runs online. A
   teacher of the same model and weights as setup 3 IS setup 3's model (not trained twice).

Pretrained weights (``weights`` for ResNet-18, ``teacher_weights`` for ResNet-50):
``phantom`` (default) pretrains the model on the 14-finding phantom (through the model store,
``pretrain_epochs`` epochs, ``pretrain_images`` films at the run's image size) and transfers
it; ``imagenet`` uses Keras' ImageNet weights (ResNet-50 has them; ResNet-18 does not);
``RUN_DIR`` or ``FILE.keras`` is a chestkd model trained on another chest X-ray task; ``null``
is random. Transferred weights are copied by layer name, the head is re-initialised when the
classes differ, and ``transfer.json`` lists what was and was not copied.

Writes ``table4_1.md`` / ``.csv`` (the paper's Table 4.1 extended: accuracy, precision, recall
and F1 of the positive class at its threshold chosen on the validation split, the arg-max
accuracy, AUC with its 95 % interval, parameters, latency per image; below it, where the
pretrained weights came from and whether the table tells the paper's story),
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
from chestkd.scores import probabilities_from_logits
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
            "finetune_lr_factor": 0.1, "finetune_batchnorm": "train", "head_lr_factor": 1.0,
            "baseline_epochs": None, "kd_loss": "ho2020_eq8", "temperature": 4.0,
            "paper_alpha": 0.5, "threshold_rule": "youden", "positive_class": None}
# The no-data job, on top of the phantom profile (keys given anywhere win): 64 px, so the
# ResNet-50 teacher trains in minutes on a CPU. Measured on this phantom (RESULTS.md,
# "Transfer-learning demo"): baseline_cnn needs ~30 epochs (10 left it at the class prior;
# an epoch costs a small fraction of a ResNet-18 one); a new head on the frozen
# phantom-pretrained features moves faster at 10x the rate; the flip as the only
# augmentation lets the student read a cached teacher table instead of running the
# ResNet-50 at every step.
PHANTOM_RECIPE_PROFILE = {"image_size": 64, "phantom_size": 64, "phantom_images": 1000,
                          "epochs": 4, "finetune_epochs": 4, "baseline_epochs": 30,
                          "head_lr_factor": 10.0, "augment": "flip"}
FINETUNE_BATCHNORM = ("train", "frozen")
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
    if config["finetune_batchnorm"] not in FINETUNE_BATCHNORM:
        raise ConfigError(f"--finetune-batchnorm {config['finetune_batchnorm']!r}: choose "
                          f"{' or '.join(FINETUNE_BATCHNORM)}")
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


def unfrozen(model, batchnorm: str):
    """Every layer of ``model`` trainable for stage 2; BatchNormalization too with
    ``batchnorm: train`` (PyTorch's fine-tuning, the paper's framework: the moving statistics
    follow the new data), or frozen in inference mode with ``frozen`` (the Keras convention
    for ImageNet weights)."""
    if batchnorm == "frozen":
        return unfreeze_backbone(model)
    for layer in model.layers:
        layer.trainable = True
    return model


def baseline_epochs(config: dict) -> int:
    """Setup 1's epochs: ``baseline_epochs``, by default as many as setup 3 in total."""
    given = config.get("baseline_epochs")
    return int(given) if given is not None else (int(config["epochs"])
                                                 + int(config["finetune_epochs"]))


def teacher_outputs(config: dict) -> str:
    """``cached`` (the teacher runs once per training image and flip) when the only
    augmentation is the flip, else ``online`` (a cached table cannot follow an affine map)."""
    return "cached" if config.get("augment") in (None, "flip") else "online"


def two_stage(config, data, name, source, run_dir, prefix: str):
    """Setups 2 and 3 for ``name``: (frozen-base model, fine-tuned model, transfer report)."""
    model, report = initial_model(config, data, name, source, run_dir)
    frozen = train_stage(freeze_backbone(model), data, config, run_dir / f"{prefix}frozen",
                         epochs=int(config["epochs"]),
                         lr_factor=float(config["head_lr_factor"]))
    tuned = train_stage(unfrozen(load_model(run_dir / f"{prefix}frozen" / "model.keras"),
                                 config["finetune_batchnorm"]),
                        data, config, run_dir / f"{prefix}fine_tuned",
                        epochs=int(config["finetune_epochs"]),
                        lr_factor=float(config["finetune_lr_factor"]))
    return frozen, tuned, report


def score(model, data, config, folder, label: str) -> dict:
    """The setup's evaluation (metrics, model card, model_info.json), once."""
    return evaluate_once(model, data, {**config, "weights": None}, folder, model_name=label)


def table_row(setup: str, title: str, folder: Path, results: dict, positive: int) -> dict:
    """One row of the table, from the setup's saved test predictions (clean labels when the
    data has them, as its metrics); writes the setup's confusion-matrix figure.

    Two classes: accuracy, precision, recall and F1 are those of the decision
    ``p(positive) >= t``, ``t`` the positive class's threshold chosen on the VALIDATION split
    (``threshold_rule``); the arg-max accuracy is kept beside it. A model whose logits are
    shifted (a KD student pulled towards a teacher's soft outputs, a head that learnt only
    the class prior) can rank well and still put every film in one class at 0.5. More
    classes: the arg-max, macro-averaged."""
    with np.load(folder / "test_predictions.npz", allow_pickle=False) as npz:
        logits = npz["logits"]
        truth = npz["clean_labels"] if "clean_labels" in npz.files else npz["labels"]
        names = [str(n) for n in npz["class_names"]]
    probs = probabilities_from_logits(logits, multi_label=False)
    binary = len(names) == 2
    argmax_accuracy = float((truth.argmax(1) == probs.argmax(1)).mean())
    if binary:
        threshold = float(results["thresholds"]["values"][positive])
        is_positive = truth.argmax(1) == positive
        said_positive = probs[:, positive] >= threshold
        tp = int((is_positive & said_positive).sum())
        fp = int((~is_positive & said_positive).sum())
        fn = int((is_positive & ~said_positive).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        accuracy = float((is_positive == said_positive).mean())
        auc_key = names[positive]
        auc = results["per_class_auc"][auc_key]
        ci = (results.get("per_class_auc_ci") or {}).get(auc_key)
    else:
        threshold = None
        report = classification_report(truth, probs, names, multi_label=False).set_index("class")
        row = report.loc["macro avg"]
        precision, recall, f1 = (float(row[k]) for k in ("precision", "recall", "f1"))
        accuracy = argmax_accuracy
        auc, ci = results["mean_auc"], results.get("mean_auc_ci")
    confusion_matrix_figure(truth, probs, names, folder.parent / f"confusion_{setup}.png",
                            title=f"{title} (test split)")
    return {"setup": title, "model": results["model"], "accuracy": accuracy,
            "precision": float(precision), "recall": float(recall), "f1": float(f1),
            "threshold": threshold, "accuracy_argmax": argmax_accuracy,
            "auc": auc, "auc_ci": ci,
            "parameters": int(results["params"]["total"]),
            "latency_ms": float(results["latency"]["median_ms"])}


def verdict(rows: list[dict]) -> str:
    """Plain sentences on whether the table tells the paper's story: every setup learnt (its
    AUC interval above 0.5), transfer beat the baseline, the student came near its teacher."""
    by_setup = dict(zip((s for s, _ in SETUPS), rows))
    failed = [r["setup"] for r in rows
              if (r["auc_ci"][0] <= 0.5 if r["auc_ci"] else r["auc"] <= 0.5)]
    lines = []
    if failed:
        lines.append("NOT the paper's story: these setups did not learn (AUC interval reaches "
                     "0.5, or AUC <= 0.5 without one): " + "; ".join(failed) + ".")
    else:
        lines.append("Every setup learnt: each AUC interval lies above 0.5.")
    base = by_setup["baseline"]["auc"]
    best_transfer = max(by_setup["feature_extractor"]["auc"], by_setup["fine_tuned"]["auc"])
    lines.append(f"Transfer vs. baseline: best ResNet-18 transfer setup AUC {best_transfer:.3f} "
                 f"vs. baseline CNN {base:.3f} ("
                 + ("transfer ahead, as in the paper" if best_transfer > base
                    else "NOT ahead, unlike the paper") + ").")
    teacher, student = by_setup["teacher"]["auc"], by_setup["student"]["auc"]
    failed_aucs = {r["auc"] for r in rows if r["setup"] in failed}
    lines.append(f"Student vs. teacher: AUC {student:.3f} vs. {teacher:.3f} with "
                 f"{by_setup['student']['parameters'] / by_setup['teacher']['parameters']:.0%} "
                 "of its parameters ("
                 + ("far above a teacher that did not learn: the student's AUC comes from "
                    "its labels and its own end-to-end training, not from distillation"
                    if teacher in failed_aucs and student > teacher + 0.02
                    else "within 0.02 of the teacher or above it, as in the paper"
                    if student >= teacher - 0.02 else "more than 0.02 below the teacher")
                 + "). Differences between rows smaller than their intervals are not "
                 "evidence either way.")
    return " ".join(lines)


def weights_sentence(config: dict) -> str:
    """Where the pretrained weights came from, in one sentence per model (the paper's are
    ImageNet's)."""
    def one(model, source):
        if source == "phantom":
            return (f"{model} is phantom-pretrained offline (not ImageNet, the paper's): "
                    f"{config['pretrain_epochs']} epochs on {config['pretrain_images']} films "
                    f"of the 14-finding phantom at {config['image_size']} px")
        if source == "imagenet":
            return f"{model} starts from Keras' ImageNet weights"
        if source is None:
            return f"{model} starts from random weights"
        return f"{model} starts from the chestkd model {source}"
    return ("Pretrained weights: " + one(config["transfer_model"], config["weights"]) + "; "
            + one(config["teacher_model"], config["teacher_weights"]) + ".")


def plan(config: dict) -> str:
    """What the run will train, in order (printed before anything starts)."""
    lr, factor = float(config["learning_rate"]), float(config["finetune_lr_factor"])
    head = int(config["epochs"])
    tune, total = int(config["finetune_epochs"]), head + int(config["finetune_epochs"])
    data = (f"{config['dataset']} ({config['phantom_images']} films written at "
            f"{config['phantom_size']} px)" if config["dataset"] in PHANTOM_DATASETS
            else f"{config['dataset']} {config.get('data_dir') or ''}".rstrip())
    lines = [f"transfer_learning: {data}, images at {config['image_size']} px, batch "
             f"{config['batch_size']}, {config['optimizer']} lr {lr:g} ({config['schedule']}), "
             f"augment {config['augment']}; it trains, in order:"]
    pretrained = sorted({config[m] for m, w in (("transfer_model", "weights"),
                                                ("teacher_model", "teacher_weights"))
                         if config[w] == "phantom"})
    if pretrained:
        lines.append(f"  0. pretraining of {' and '.join(pretrained)} on the 14-finding phantom "
                     f"({config['pretrain_images']} films, {config['pretrain_epochs']} epochs; "
                     "reused from the model store when it holds them)")
    bn = ("BatchNorm trained too" if config["finetune_batchnorm"] == "train"
          else "BatchNorm frozen")
    head_lr = lr * float(config["head_lr_factor"])
    lines += [f"  1. {config['baseline_model']} from scratch: {baseline_epochs(config)} epochs",
              f"  2. {config['transfer_model']} fixed extractor ({config['weights']} weights): "
              f"new head only, {head} epochs at lr {head_lr:g}",
              f"  3. {config['transfer_model']} fine-tuned: setup 2, then every layer ({bn}) "
              f"{tune} epochs at lr {lr * factor:g}",
              f"  4. {config['teacher_model']} teacher ({config['teacher_weights']} weights), "
              f"stages 2 and 3 ({head} + {tune} epochs), then a {config['transfer_model']} "
              f"student distilled from it for {total} epochs (teacher "
              f"{teacher_outputs(config)})",
              f"then it scores the five on the test split (bootstrap {config['bootstrap']}). "
              + ("This is the no-data demo; the paper's settings (224 px, ImageNet teacher): "
                 "--config recipes/transfer_learning.yaml --data-dir chest_xray"
                 if config["dataset"] in PHANTOM_DATASETS else "")]
    return "\n".join(lines)


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
    positive = (names.index(config["positive_class"]) if config.get("positive_class")
                else len(names) - 1)
    folders, results, transfers = {}, {}, {}

    baseline, _ = initial_model(config, data, config["baseline_model"], None, run_dir)
    folders["baseline"] = run_dir / "baseline"
    baseline = train_stage(baseline, data, config, folders["baseline"],
                           epochs=baseline_epochs(config))

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
                 "teacher_outputs": teacher_outputs(config), "kd_loss_used": config["kd_loss"],
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
    if len(names) == 2:
        decision = (f"Accuracy, precision, recall and F1 of class {names[positive]!r} at the "
                    f"decision p({names[positive]}) >= the threshold chosen on the validation "
                    f"split ({config.get('threshold_rule') or 'youden'}; column threshold); "
                    "accuracy_argmax: at the arg-max (p >= 0.5)")
    else:
        decision = "Accuracy, precision, recall and F1 (macro average) at the arg-max decision"
    text = (f"# Table 4.1 extended: {data.name} ({', '.join(names)}), "
            f"{results['baseline']['test_images']} test images\n\n"
            + markdown_table(shown) + f"\n\n{decision}; AUC with its 95 % patient-bootstrap "
            "interval; latency: median of batch-1 calls after warm-up on this machine. "
            + weights_sentence(config) + "\n\n" + verdict(rows) + "\n")
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
