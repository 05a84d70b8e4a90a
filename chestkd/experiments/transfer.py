"""The pneumonia paper's four setups (Table 4.1), as library steps the recipe composes.

* :func:`pretrained_source` / :func:`initial_model`: a model initialised from ``phantom``
  pretraining (through the model store), ImageNet, another chestkd run, or at random;
* :func:`train_stage` / :func:`two_stage`: a frozen-base stage (new head only) and a
  fine-tuning stage (every layer), BatchNorm statistics re-estimated after fine-tuning;
* :func:`teacher_setup` / :func:`distil_student`: setup 4, a teacher fine-tuned like setups
  2-3 and distilled into a pretrained student with the paper's loss;
* :func:`table_row`, :func:`verdict`, :func:`table_text`, :func:`write_table`: the extended
  Table 4.1 and plain sentences on whether it tells the paper's story.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.cli import config_number
from chestkd.data.phantom.pneumonia import default_folder, write_pneumonia_phantom
from chestkd.errors import ConfigError
from chestkd.evaluation import markdown_table
from chestkd.evaluation.classification import (classification_report, confusion_matrix_figure,
                                               precision_recall_f1)
from chestkd.experiments.kd import distil, evaluate_once
from chestkd.experiments.store import obtain_model
from chestkd.models.weights import source_model_file, transfer_weights
from chestkd.models.zoo import build, freeze_backbone, get_spec, unfreeze_backbone
from chestkd.scores import probabilities_from_logits
from chestkd.training.callbacks import reestimate_batch_norm
from chestkd.training.config import BASE_DEFAULTS, PHANTOM_DATASETS, save_config
from chestkd.training.classifier import compile_classifier, pipelines, prepare_run_data
from chestkd.training.options import RunOptions, as_options
from chestkd.training.run import Stages, best_model, load_model, seed_everything
from chestkd.training.trainer import fit

FINETUNE_BATCHNORM = ("train", "frozen")
# phantom: the 14-finding phantom (multi-label; chestkd 0.1's source task) | pneumonia_phantom:
# normal / pneumonia / COVID-19-like films of the single-label phantom drawn with another
# seed (PRETRAIN_PHANTOM_SEED), so no target film, patient or lesion is among them.
PRETRAIN_DATASETS = ("phantom", "pneumonia_phantom")
PRETRAIN_PHANTOM_SEED = 1
SETUPS = (("baseline", "Baseline CNN"),
          ("feature_extractor", "Transfer learning (ResNet-18 fixed extractor)"),
          ("fine_tuned", "Transfer learning (ResNet-18 fine-tuned)"),
          ("teacher", "ResNet-50 teacher (fine-tuned)"),
          ("student", "Final student model (ResNet-50 -> ResNet-18 KD)"))
# Each setup's run folder inside the run (the teacher's: teacher_fine_tuned, or setup 3's).
SETUP_FOLDERS = {"baseline": "baseline", "student": "student", "feature_extractor": "frozen",
                 "fine_tuned": "fine_tuned"}


@dataclass(frozen=True)
class TransferOptions:
    """What the transfer-learning recipe adds to a run's options (:func:`transfer_options`);
    the transfer model's own weights are the run's ``weights`` (``options.training``)."""
    baseline_model: str
    transfer_model: str
    teacher_model: str
    teacher_weights: str | None
    pretrain_dataset: str
    pretrain_epochs: int
    pretrain_images: int
    finetune_epochs: int
    finetune_lr_factor: float
    finetune_batchnorm: str
    reestimate_batchnorm: bool
    head_lr_factor: float
    baseline_epochs: int | None
    paper_alpha: float
    positive_class: str | None


def transfer_options(config) -> TransferOptions:
    """The transfer options of a resolved configuration, after :func:`check_options`."""
    check_options(config)
    given = config.get("baseline_epochs")
    return TransferOptions(
        baseline_model=config["baseline_model"], transfer_model=config["transfer_model"],
        teacher_model=config["teacher_model"], teacher_weights=config["teacher_weights"],
        pretrain_dataset=config["pretrain_dataset"],
        pretrain_epochs=config_number(config, "pretrain_epochs", cast=int, low=0),
        pretrain_images=config_number(config, "pretrain_images", cast=int, low=1),
        finetune_epochs=config_number(config, "finetune_epochs", cast=int, low=0),
        finetune_lr_factor=float(config_number(config, "finetune_lr_factor", low=0.0)),
        finetune_batchnorm=config["finetune_batchnorm"],
        reestimate_batchnorm=bool(config["reestimate_batchnorm"]),
        head_lr_factor=float(config_number(config, "head_lr_factor", low=0.0)),
        baseline_epochs=None if given is None else config_number(config, "baseline_epochs",
                                                                 cast=int, low=1),
        paper_alpha=float(config_number(config, "paper_alpha", low=0.0, high=1.0)), positive_class=config.get("positive_class"))


def setup_titles(transfer: TransferOptions) -> dict:
    """The table's row titles, naming the models this run trains."""
    def pretty(name):
        return {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50",
                "baseline_cnn": "CNN"}.get(name, name)
    model, teacher = pretty(transfer.transfer_model), pretty(transfer.teacher_model)
    return {"baseline": "Baseline CNN" if transfer.baseline_model == "baseline_cnn"
            else f"Baseline ({pretty(transfer.baseline_model)})",
            "feature_extractor": f"Transfer learning ({model} fixed extractor)",
            "fine_tuned": f"Transfer learning ({model} fine-tuned)",
            "teacher": f"{teacher} teacher (fine-tuned)",
            "student": f"Final student model ({teacher} -> {model} KD)"}


def check_options(config: dict) -> None:
    """Refuse options and weights that cannot work before anything trains."""
    if config["finetune_batchnorm"] not in FINETUNE_BATCHNORM:
        raise ConfigError(f"--finetune-batchnorm {config['finetune_batchnorm']!r}: choose "
                          f"{' or '.join(FINETUNE_BATCHNORM)}")
    if config["pretrain_dataset"] not in PRETRAIN_DATASETS:
        raise ConfigError(f"--pretrain-dataset {config['pretrain_dataset']!r}: choose "
                          f"{' or '.join(PRETRAIN_DATASETS)}")
    for key, model_key in (("weights", "transfer_model"), ("teacher_weights", "teacher_model")):
        source, name = config.get(key), config[model_key]
        if source == "imagenet" and not get_spec(name).has_imagenet:
            raise ConfigError(f"--{key.replace('_', '-')} imagenet: Keras has no ImageNet "
                              f"weights for {name}; use phantom, a RUN_DIR / FILE.keras or null")
        if source not in (None, "imagenet", "phantom"):
            source_model_file(source)


def positive_index(transfer: TransferOptions, class_names) -> int:
    """The index of ``positive_class`` (by default the last class) among the data's classes."""
    names, positive = list(class_names), transfer.positive_class
    if positive and positive not in names:
        raise ConfigError(f"--positive-class {positive!r}: not one of the classes {names}")
    return names.index(positive or names[-1])


def teacher_is_setup_3(options: RunOptions, transfer: TransferOptions) -> bool:
    """Whether the teacher's two stages would repeat setups 2-3 exactly (same model, same
    weights): then setup 3's model is the teacher."""
    return (transfer.teacher_model, transfer.teacher_weights) == (
        transfer.transfer_model, as_options(options).training.weights)


def pretraining_config(config) -> dict:
    """The base-training configuration of ``weights: phantom`` (a model-store entry), from
    the run's resolved configuration ``config``."""
    size, images = int(config["image_size"]), int(config["pretrain_images"])
    pre = {**config, "dataset": "phantom", "data_dir": None, "classes": None, "balance": None,
           "epochs": int(config["pretrain_epochs"]), "phantom_images": images,
           "phantom_size": size, "label_noise": 0.1, "weights": None, "augment": "flip",
           "val_split": "auto"}
    if config["pretrain_dataset"] == "pneumonia_phantom":
        # films written at the target phantom's size (a lesion drawn at 64 px and read at
        # 32 px keeps a signal that one drawn at 32 px loses), else at the image size
        size = int(config["phantom_size"] if config["dataset"] in PHANTOM_DATASETS else size)
        folder = default_folder(images, size, PRETRAIN_PHANTOM_SEED, ["normal", "pneumonia",
                                                                      "covid19"])
        write_pneumonia_phantom(folder, images=images, size=size, seed=PRETRAIN_PHANTOM_SEED)
        pre.update(dataset="pneumonia_phantom", data_dir=str(folder), phantom_size=size,
                   label_noise=0.0, check_images=False)
    return {k: v for k, v in pre.items() if k in BASE_DEFAULTS or k.startswith("_")}


def pretrained_source(options: RunOptions, name: str, source, run_dir) -> Path | None:
    """The .keras file that initialises ``name`` (None for random or ImageNet weights)."""
    if source in (None, "imagenet"):
        return None
    if source != "phantom":
        return source_model_file(source)
    (Path(run_dir) / "pretraining").mkdir(exist_ok=True)
    data, pre = prepare_run_data(pretraining_config(as_options(options).config),
                                 Path(run_dir) / "pretraining")
    _, folder = obtain_model(pre, data, name)
    return Path(folder) / "model.keras"


def initial_model(options: RunOptions, data, name: str, source, run_dir):
    """(model, transfer report): ``name`` for ``data``'s classes, initialised from ``source``."""
    options = as_options(options)
    size = options.image.image_size
    path = pretrained_source(options, name, source, run_dir)
    seed_everything(options.seed)
    model = build(name, data.num_classes, (size, size, 3),
                  weights="imagenet" if source == "imagenet" else None)
    if path is None:
        return model, {"source": source or "random initialisation",
                       "not_copied": [{"layer": "logits", "reason": "new head"}]
                       if source == "imagenet" else []}
    return model, transfer_weights(load_model(path), model, source_label=str(path))


def reestimate_statistics(model, data, options: RunOptions, folder) -> int:
    """Re-estimate ``model``'s BatchNorm moving statistics on the training split (its exact
    mean and variance under the final weights) and save it as ``folder``'s model.keras.

    Why: fine-tuning for a few hundred steps at momentum 0.99 leaves a large share of the
    moving statistics from the source task (0.99^88 = 41 %), which shifts inference-mode
    logits away from those the weights were trained with."""
    options = as_options(options)
    train, _ = pipelines(data, options)
    batches = math.ceil(int((data.split == "train").sum()) / options.training.batch_size)
    used = reestimate_batch_norm(model, train, max_batches=batches)
    if used:
        model.save(Path(folder) / "model.keras")
    return used


def train_stage(model, data, options: RunOptions, folder, *, epochs: int,
                lr_factor: float = 1.0, reestimate: bool = False):
    """Compile ``model`` as it is (frozen layers stay frozen) and train it into ``folder``;
    ``reestimate``: its BatchNorm statistics re-estimated afterwards."""
    options = as_options(options)
    stage = options.replace(epochs=int(epochs), weights=None, learning_rate=float(
        options.training.learning_rate) * lr_factor)
    Path(folder).mkdir(parents=True, exist_ok=True)
    save_config(stage.config, Path(folder) / "config.yaml")   # export/predict read it
    if Stages(folder).done("training"):
        return best_model(folder, model)
    compile_classifier(model, data, stage)
    train, val = pipelines(data, stage)
    fit(model, train, val, stage, folder, multi_label=data.multi_label)
    model = best_model(folder, model)
    images = reestimate_statistics(model, data, stage, folder) if reestimate else 0
    Stages(folder).mark("training", epochs=int(epochs), batchnorm_reestimated_on=images)
    return model


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


def baseline_epochs(options: RunOptions, transfer: TransferOptions) -> int:
    """Setup 1's epochs: ``baseline_epochs``, by default as many as setup 3 in total."""
    if transfer.baseline_epochs is not None:
        return transfer.baseline_epochs
    return as_options(options).training.epochs + transfer.finetune_epochs


def teacher_outputs(options: RunOptions) -> str:
    """``cached`` (the teacher runs once per training image and flip) when the only
    augmentation is the flip, else ``online`` (a cached table cannot follow an affine map)."""
    return "cached" if as_options(options).training.augment in (None, "flip") else "online"


def reestimates(options: RunOptions, transfer: TransferOptions) -> bool:
    """Whether fine-tuned models get their BatchNorm statistics re-estimated here (``checkpoint:
    average`` re-estimates them itself, for every stage and the pretraining)."""
    return (transfer.reestimate_batchnorm and transfer.finetune_batchnorm == "train"
            and as_options(options).training.checkpoint != "average")


def two_stage(options: RunOptions, transfer: TransferOptions, data, name, source, run_dir,
              prefix: str):
    """Setups 2 and 3 for ``name``: (frozen-base model, fine-tuned model, transfer report)."""
    options = as_options(options)
    model, report = initial_model(options, data, name, source, run_dir)
    frozen = train_stage(freeze_backbone(model), data, options, run_dir / f"{prefix}frozen",
                         epochs=options.training.epochs, lr_factor=transfer.head_lr_factor)
    tuned = train_stage(unfrozen(load_model(run_dir / f"{prefix}frozen" / "model.keras"),
                                 transfer.finetune_batchnorm),
                        data, options, run_dir / f"{prefix}fine_tuned",
                        epochs=transfer.finetune_epochs, lr_factor=transfer.finetune_lr_factor,
                        reestimate=reestimates(options, transfer))
    return frozen, tuned, report


def teacher_setup(options: RunOptions, transfer: TransferOptions, data, run_dir, fine_tuned,
                  fine_tuned_report):
    """Setup 4's teacher: (model, run folder, transfer report); setup 3's own when
    :func:`teacher_is_setup_3`, else ``teacher_model`` through :func:`two_stage`."""
    if teacher_is_setup_3(options, transfer):
        return fine_tuned, run_dir / SETUP_FOLDERS["fine_tuned"], fine_tuned_report
    _, teacher, report = two_stage(options, transfer, data, transfer.teacher_model,
                                   transfer.teacher_weights, run_dir, "teacher_")
    return teacher, run_dir / "teacher_fine_tuned", report


def kd_alpha(transfer: TransferOptions) -> float:
    """chestkd's alpha (the soft term's weight): the paper's alpha weighs the LABELS."""
    return 1.0 - transfer.paper_alpha


def kd_options(options: RunOptions, transfer: TransferOptions) -> RunOptions:
    """The student's options: :func:`kd_alpha`, the teacher's outputs cached or online,
    ``epochs + finetune_epochs`` epochs from its pretrained start (``kd_loss_used`` names the
    formulation in its ``config.yaml``)."""
    options = as_options(options)
    return options.replace(weights=None, alpha=kd_alpha(transfer),
                           teacher_outputs=teacher_outputs(options),
                           kd_loss_used=options.kd.kd_loss,
                           epochs=options.training.epochs + transfer.finetune_epochs)


def distil_student(options: RunOptions, transfer: TransferOptions, data, teacher, folder,
                   run_dir):
    """Setup 4's student: a pretrained ``transfer_model`` distilled from ``teacher`` into
    ``folder``; returns (model, transfer report)."""
    options = as_options(options)
    start, report = initial_model(options, data, transfer.transfer_model,
                                  options.training.weights, run_dir)
    student = kd_options(options, transfer)
    folder.mkdir(exist_ok=True)
    save_config(student.config, folder / "config.yaml")
    # The Distiller freezes its teacher, which is often setup 3's own model, scored after
    # this: each layer gets its flag back (a frozen BatchNorm stays frozen), or the table
    # and model card counted 0 trainable parameters for the fine-tuned model.
    trainable = [(layer, layer.trainable) for layer in teacher._flatten_layers()]
    try:
        return distil(student, folder, data, teacher, transfer.transfer_model,
                      init_from=start), report
    finally:
        for layer, flag in trainable:   # outermost first: a model's flag sets its layers'
            layer.trainable = flag


def score(model, data, options: RunOptions, folder, label: str) -> dict:
    """The setup's evaluation (metrics, model card, model_info.json), once."""
    return evaluate_once(model, data, as_options(options).replace(weights=None), folder,
                         model_name=label)


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
    argmax_accuracy = float((truth.argmax(1) == probs.argmax(1)).mean())
    if len(names) == 2:
        threshold = float(results["thresholds"]["values"][positive])
        is_positive = truth.argmax(1) == positive
        said_positive = probs[:, positive] >= threshold
        tp = int((is_positive & said_positive).sum())
        fp = int((~is_positive & said_positive).sum())
        fn = int((is_positive & ~said_positive).sum())
        precision, recall, f1 = precision_recall_f1(tp, fp, fn)
        accuracy = float((is_positive == said_positive).mean())
        auc = results["per_class_auc"][names[positive]]
        ci = (results.get("per_class_auc_ci") or {}).get(names[positive])
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


def learnt(row: dict) -> bool:
    """A setup learnt when its AUC interval lies above 0.5 (its AUC, without an interval)."""
    return row["auc_ci"][0] > 0.5 if row["auc_ci"] else row["auc"] > 0.5


def verdict(rows: list[dict]) -> str:
    """Plain sentences on whether the table tells the paper's story: every setup learnt (its
    AUC interval above 0.5), transfer beat the baseline, the student came near its teacher.
    ``rows`` are in the order of :data:`SETUPS`."""
    by_setup = dict(zip((s for s, _ in SETUPS), rows))
    failed = [r["setup"] for r in rows if not learnt(r)]
    lines = []
    if failed:
        lines.append("NOT the paper's story: these setups did not learn (AUC interval reaches "
                     "0.5, or AUC <= 0.5 without one): " + "; ".join(failed) + ".")
    else:
        lines.append("Every setup learnt: each AUC interval lies above 0.5.")
    base = by_setup["baseline"]["auc"]
    best_transfer = max(by_setup["feature_extractor"]["auc"], by_setup["fine_tuned"]["auc"])
    lines.append(f"Transfer vs. baseline: best transfer setup AUC {best_transfer:.3f} "
                 f"vs. baseline {base:.3f} ("
                 + ("transfer ahead, as in the paper" if best_transfer > base
                    else "NOT ahead, unlike the paper") + ").")
    teacher, student = by_setup["teacher"], by_setup["student"]
    lines.append(f"Student vs. teacher: AUC {student['auc']:.3f} vs. {teacher['auc']:.3f} with "
                 f"{student['parameters'] / teacher['parameters']:.0%} of its parameters ("
                 + ("far above a teacher that did not learn: the student's AUC comes from "
                    "its labels and its own end-to-end training, not from distillation"
                    if not learnt(teacher) and student["auc"] > teacher["auc"] + 0.02
                    else "within 0.02 of the teacher or above it, as in the paper"
                    if student["auc"] >= teacher["auc"] - 0.02
                    else "more than 0.02 below the teacher")
                 + "). Differences between rows smaller than their intervals are not "
                 "evidence either way.")
    return " ".join(lines)


def weights_sentence(options: RunOptions, transfer: TransferOptions) -> str:
    """Where the pretrained weights came from, one sentence per model (the paper's are
    ImageNet's)."""
    options = as_options(options)
    source_task = ("the single-label phantom's normal / pneumonia / COVID-19-like task on "
                   f"films drawn with another seed ({PRETRAIN_PHANTOM_SEED}), none of the "
                   "target's" if transfer.pretrain_dataset == "pneumonia_phantom"
                   else "the 14-finding phantom")

    def one(model, source):
        if source == "phantom":
            return (f"{model} is phantom-pretrained offline (not ImageNet, the paper's): "
                    f"{transfer.pretrain_epochs} epochs on {transfer.pretrain_images} films "
                    f"of {source_task}, at {options.image.image_size} px")
        if source == "imagenet":
            return f"{model} starts from Keras' ImageNet weights"
        if source is None:
            return f"{model} starts from random weights"
        return f"{model} starts from the chestkd model {source}"
    first = one(transfer.transfer_model, options.training.weights)
    if teacher_is_setup_3(options, transfer):
        return f"Pretrained weights: {first} (the teacher too)."
    return (f"Pretrained weights: {first}; "
            + one(transfer.teacher_model, transfer.teacher_weights) + ".")


def plan(config: dict) -> str:
    """What the run will train, in order (printed before anything starts)."""
    options, transfer = as_options(config), transfer_options(config)
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
        task = ("the 3-class pneumonia phantom, other films" if config["pretrain_dataset"]
                == "pneumonia_phantom" else "the 14-finding phantom")
        lines.append(f"  0. pretraining of {' and '.join(pretrained)} on {task} "
                     f"({config['pretrain_images']} films, {config['pretrain_epochs']} epochs; "
                     "reused from the model store when it holds them)")
    bn = ("BatchNorm trained too" if config["finetune_batchnorm"] == "train"
          else "BatchNorm frozen") + (", its statistics re-estimated after"
                                      if reestimates(options, transfer) else "")
    if config.get("checkpoint") == "average":
        lines.append("  every stage keeps the average of its last third of epochs' weights, "
                     "BatchNorm statistics re-estimated on its training split (checkpoint: "
                     "average)")
    head_lr = lr * float(config["head_lr_factor"])
    lines += [f"  1. {config['baseline_model']} from scratch: {baseline_epochs(options, transfer)} epochs",
              f"  2. {config['transfer_model']} fixed extractor ({config['weights']} weights): "
              f"new head only, {head} epochs at lr {head_lr:g}",
              f"  3. {config['transfer_model']} fine-tuned: setup 2, then every layer ({bn}) "
              f"{tune} epochs at lr {lr * factor:g}",
              f"  4. {config['teacher_model']} teacher ({config['teacher_weights']} weights), "
              f"stages 2 and 3 ({head} + {tune} epochs), then a {config['transfer_model']} "
              f"student distilled from it for {total} epochs (teacher "
              f"{teacher_outputs(options)})",
              f"then it scores the five on the test split (bootstrap {config['bootstrap']}). "
              + ("This is the no-data demo; the paper's settings (224 px, ResNet-50 teacher "
                 "from ImageNet): --config recipes/transfer_learning.yaml --data-dir chest_xray"
                 if config["dataset"] in PHANTOM_DATASETS else "")]
    return "\n".join(lines)


def table_text(rows: list[dict], options: RunOptions, transfer: TransferOptions, data,
               positive: int, test_images: int) -> str:
    """The markdown of the extended Table 4.1 with its caption and verdict."""
    options = as_options(options)
    note = ("" if transfer.teacher_model == "resnet50" else
            f" The teacher is {transfer.teacher_model}, not the paper's ResNet-50"
            + (": setup 3's model itself, so the student distils a network of its own size "
               "(no compression shown)." if teacher_is_setup_3(options, transfer) else "."))
    names = list(data.class_names)
    table = pd.DataFrame(rows)
    shown = table.drop(columns=["auc_ci"]).assign(auc=[
        f"{a:.4f}" + (f" [{c[0]:.3f}, {c[1]:.3f}]" if c else "")
        for a, c in zip(table["auc"], table["auc_ci"])])
    if len(names) == 2:
        decision = (f"Accuracy, precision, recall and F1 of class {names[positive]!r} at the "
                    f"decision p({names[positive]}) >= the threshold chosen on the validation "
                    f"split ({options.evaluation.threshold_rule}; column threshold); "
                    "accuracy_argmax: at the arg-max (p >= 0.5)")
    else:
        decision = "Accuracy, precision, recall and F1 (macro average) at the arg-max decision"
    return (f"# Table 4.1 extended: {data.name} ({', '.join(names)}), {test_images} test "
            "images\n\n" + markdown_table(shown) + f"\n\n{decision}; AUC with its 95 % "
            "patient-bootstrap interval; latency: median of batch-1 calls after warm-up on this "
            "machine. " + weights_sentence(options, transfer) + note + "\n\n"
            + verdict(rows) + "\n")


def write_table(options: RunOptions, transfer: TransferOptions, data, models: dict,
                folders: dict, positive: int, run_dir) -> list[dict]:
    """Score every setup (:func:`score`) and write ``table4_1.csv`` and ``table4_1.md`` (also
    printed); returns the table's rows in the order of :data:`SETUPS`."""
    architectures = {"baseline": transfer.baseline_model, "teacher": transfer.teacher_model}
    titles, results, rows = setup_titles(transfer), {}, []
    for setup, _ in SETUPS:
        results[setup] = score(models[setup], data, options, folders[setup],
                               architectures.get(setup, transfer.transfer_model))
        rows.append(table_row(setup, titles[setup], folders[setup], results[setup], positive))
    pd.DataFrame(rows).to_csv(run_dir / "table4_1.csv", index=False)
    text = table_text(rows, options, transfer, data, positive,
                      results["baseline"]["test_images"])
    (run_dir / "table4_1.md").write_text(text)
    print("\n" + text)
    return rows


def copied_layers(transfers: dict) -> dict:
    """Per model, how many layers its weights' source gave it and which it did not."""
    return {k: {"copied": len(v.get("copied", [])), "not_copied": v.get("not_copied")}
            for k, v in transfers.items()}
