"""The training strategies of Ho & Gwak (2020), built from one Distiller.

* base training: labels only (``chestkd.training.experiment.train_classifier``);
* standard KD: a deeper teacher teaches a smaller student;
* reversed KD: the roles swap, the smaller model teaches the deeper one;
* defective KD: the teacher is trained for only a fraction of the schedule (50 of 200 epochs);
* self-training KD: a model, trained normally, teaches a fresh copy of itself (Eq. 8).

Every strategy is "obtain a teacher, then distil it into a student"; they differ only in which
teacher, how long it trained and which loss. Teachers that are not given as a checkpoint are
trained once and kept under ``teachers_dir`` keyed by everything that shapes them (dataset,
model, epochs, image size, optimiser, seed), so a table of experiments never trains the same
teacher twice.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from chestkd.data.dataset import Dataset
from chestkd.data.pipeline import make_dataset, steps_per_epoch
from chestkd.distill.distiller import Distiller
from chestkd.distill.losses import KDLoss
from chestkd.distill.teacher_cache import load_or_compute
from chestkd.errors import ConfigError
from chestkd.evaluation import evaluate_model, print_results
from chestkd.evaluation.metrics import predict_logits, sigmoid
from chestkd.training.config import dataset_options
from chestkd.training.experiment import (best_model, build_model, image_options, load_model,
                                         load_run_data,
                                         pipelines, set_precision, train_classifier)
from chestkd.training.run import save_config, seed_everything, start_run, write_json
from chestkd.training.trainer import distribution_strategy, fit, make_optimizer

# Keys that change what a trained teacher is; a kept teacher is reused only if all match.
_TEACHER_KEYS = ("dataset", "data_dir", "cache_dir", "image_size", "normalization",
                 "batch_size", "seed", "weights", "optimizer", "learning_rate", "momentum",
                 "weight_decay", "schedule", "mixed_precision")


def teacher_epochs(config: dict, strategy: str) -> int:
    """Epochs of the teacher: as configured, else a quarter for defective KD, else all."""
    if config.get("teacher_epochs"):
        return int(config["teacher_epochs"])
    if strategy == "defective_kd":
        return max(1, round(int(config["epochs"]) * float(config["defective_fraction"])))
    return int(config["epochs"])


def teacher_key(config: dict, model_name: str, epochs: int) -> str:
    shaping = {k: config.get(k) for k in _TEACHER_KEYS}
    shaping["dataset_options"] = dataset_options(config)
    digest = hashlib.sha1(json.dumps(shaping, sort_keys=True, default=str).encode())
    return f"{model_name}-e{epochs}-{digest.hexdigest()[:10]}"


def obtain_teacher(config: dict, data: Dataset, name: str, epochs: int):
    """A trained teacher: loaded from a ``.keras`` file, reused if kept, or trained and kept.

    Returns (model, teacher directory or checkpoint path).
    """
    if str(name).endswith(".keras"):
        return load_model(name), Path(name)
    root = Path(config.get("teachers_dir") or Path(config["out"]) / "teachers")
    folder = root / teacher_key(config, name, epochs)
    done = folder / "metrics.json"
    if done.exists():
        print(f"reusing the teacher trained in {folder}")
        return load_model(folder / "model.keras"), folder
    folder.mkdir(parents=True, exist_ok=True)  # an interrupted teacher resumes here
    teacher_config = {**config, "model": name, "epochs": epochs, "role": "teacher"}
    save_config(teacher_config, folder / "config.yaml")
    print(f"training the teacher {name} for {epochs} epoch(s) in {folder}")
    teacher = train_classifier(teacher_config, folder, data, name, epochs=epochs)
    # metrics.json marks the teacher done
    evaluate_model(teacher, data, teacher_config, folder, model_name=name)
    return teacher, folder


def distil(config: dict, run_dir, data: Dataset, teacher, student_name: str, *,
           formulation: str | None = None):
    """Train a fresh ``student_name`` from ``teacher`` (one model or a list); returns the
    best student by validation mean AUC."""
    run_dir = Path(run_dir)
    set_precision(config)
    loss = KDLoss(formulation or config["kd_loss"], float(config["temperature"]),
                  float(config["alpha"]))
    online = config["teacher_outputs"] == "online"
    if config["teacher_outputs"] not in ("online", "cached"):
        raise ConfigError(f"--teacher-outputs {config['teacher_outputs']!r}: choose online "
                          "or cached")
    tables = {"train": None, "val": None}
    if not online:
        for split in tables:
            tables[split] = load_or_compute(run_dir / f"teacher_logits_{split}.npy", teacher,
                                            data, split, **image_options(data, config))
    seed_everything(int(config["seed"]))  # the same initial student whatever ran before
    with distribution_strategy(config).scope():
        student = build_model(student_name, data, config)
        distiller = Distiller(student, teacher if online else None, loss=loss,
                              multi_label=data.multi_label, seed=int(config["seed"]))
        distiller.compile(optimizer=make_optimizer(
            config, steps_per_epoch(data, "train", int(config["batch_size"]))))
    train, val = pipelines(data, config, teacher_logits=tables["train"],
                           val_teacher_logits=tables["val"])
    fit(distiller, train, val, config, run_dir)
    return best_model(run_dir, student)


def agreement(student, teacher, data: Dataset, config: dict) -> float:
    """Mean |sigmoid(student) - sigmoid(teacher)| on the test split (lower: closer)."""
    test = make_dataset(data, "test", batch_size=int(config["batch_size"]),
                        **image_options(data, config))
    s, _ = predict_logits(student, test)
    t, _ = predict_logits(teacher, test)
    return float(np.mean(np.abs(sigmoid(s) - sigmoid(t))))


def record_teacher(run_dir, teacher_source) -> None:
    source = Path(teacher_source)
    info = {"teacher": str(source)}
    metrics = source / "metrics.json" if source.is_dir() else None
    if metrics is not None and metrics.exists():
        info["teacher_metrics"] = json.loads(metrics.read_text())
    write_json(info, Path(run_dir) / "teacher.json")


def kd_experiment(config: dict, strategy: str) -> dict:
    """Run one KD strategy end to end: teacher, distillation, test-split evaluation.

    ``config["teacher"]`` and ``config["student"]`` name the cell of the paper's Table 1; for
    ``reversed_kd`` the roles swap: the student model is trained first and teaches the
    teacher model, which is the model evaluated.
    """
    run_dir = start_run(config, strategy)
    print(f"run directory: {run_dir}")
    data = load_run_data(config, run_dir)
    teacher_name, student_name = config["teacher"], config["student"]
    if strategy == "reversed_kd":
        teacher_name, student_name = student_name, teacher_name
    teacher, source = obtain_teacher(config, data, teacher_name,
                                     teacher_epochs(config, strategy))
    record_teacher(run_dir, source)
    student = distil(config, run_dir, data, teacher, student_name)
    results = evaluate_model(student, data, config, run_dir, model_name=student_name)
    results.update(strategy=strategy, teacher=str(teacher_name),
                   teacher_agreement=agreement(student, teacher, data, config))
    write_json(results, Path(run_dir) / "metrics.json")
    print_results(results, title=f"{strategy}: student")
    return results
