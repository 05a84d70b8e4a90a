"""The steps every recipe shares: load the run's data, build, compile and train a classifier.

Recipes compose these; each step is a plain function so a notebook can call them one by one.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import keras
import pandas as pd

from chestkd import models
from chestkd.data import load_dataset
from chestkd.data.dataset import Dataset
from chestkd.data.pipeline import estimate_mean_std, make_dataset, steps_per_epoch
from chestkd.errors import ChestKDError
from chestkd.training.config import dataset_options
from chestkd.training.losses import MaskedAUC, hard_loss_for
from chestkd.training.run import seed_everything
from chestkd.training.trainer import distribution_strategy, fit, make_optimizer


@contextlib.contextmanager
def cli_errors():
    """Turn a user mistake (ChestKDError) into one line on stderr and exit status 2."""
    try:
        yield
    except ChestKDError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def load_run_data(config: dict, run_dir) -> Dataset:
    """Load the configured dataset; report skipped images into the run directory."""
    options = dataset_options(config)
    if config["dataset"] != "phantom" or config.get("data_dir"):
        options["check_images"] = bool(config.get("check_images", True))
    data = load_dataset(config["dataset"], config.get("data_dir"), **options)
    for split in ("train", "val", "test"):
        data.subset(split)  # an empty split is an error naming it, before any training
    data.check_patient_leakage()
    if len(data.skipped):
        data.skipped.to_csv(Path(run_dir) / "skipped.csv", index=False)
        print(f"skipped {len(data.skipped)} unreadable image(s); listed in "
              f"{Path(run_dir) / 'skipped.csv'}")
    return data


def image_options(data: Dataset, config: dict) -> dict:
    """The pipeline's image options of a run; a ``mean_std`` normalisation is estimated on
    the training split once and recorded in the configuration."""
    if config["normalization"] == "mean_std" and not config.get("mean_std"):
        config["mean_std"] = list(estimate_mean_std(data, image_size=int(config["image_size"]),
                                                    seed=int(config["seed"])))
    return dict(image_size=int(config["image_size"]), normalization=config["normalization"],
                mean_std=config.get("mean_std"), cache_dir=config.get("cache_dir"))


def pipelines(data: Dataset, config: dict, teacher_logits=None, val_teacher_logits=None):
    """Training (shuffled, flipped) and validation datasets for a run (with cached teacher
    tables for distillation)."""
    common = dict(batch_size=int(config["batch_size"]), **image_options(data, config))
    train = make_dataset(data, "train", training=True, seed=int(config["seed"]),
                         teacher_logits=teacher_logits, **common)
    val = make_dataset(data, "val", training=False, teacher_logits=val_teacher_logits, **common)
    return train, val


def set_precision(config: dict) -> None:
    keras.mixed_precision.set_global_policy(
        "mixed_float16" if config.get("mixed_precision") else "float32")


def build_model(name: str, data: Dataset, config: dict, weights=None):
    """A chestkd model, or a saved ``.keras`` model when ``name`` is a file."""
    if str(name).endswith(".keras"):
        return load_model(name)
    size = int(config["image_size"])
    return models.build(name, data.num_classes, (size, size, 3),
                        weights=config.get("weights") if weights is None else weights)


def load_model(path):
    if not Path(path).exists():
        raise ChestKDError(f"{path}: model file not found")
    return keras.models.load_model(path, compile=False)


def compile_classifier(model, data: Dataset, config: dict):
    steps = steps_per_epoch(data, "train", int(config["batch_size"]))
    model.compile(optimizer=make_optimizer(config, steps), loss=hard_loss_for(data.multi_label),
                  metrics=[MaskedAUC(num_labels=data.num_classes,
                                              softmax=not data.multi_label, name="auc")])
    return model


def train_classifier(config: dict, run_dir, data: Dataset, model_name: str, *, epochs=None):
    """Base training of ``model_name``; returns the best model (by validation mean AUC)."""
    set_precision(config)
    seed_everything(int(config["seed"]))  # the same initial weights whatever ran before
    with distribution_strategy(config).scope():
        model = compile_classifier(build_model(model_name, data, config), data, config)
    train, val = pipelines(data, config)
    fit(model, train, val, config, run_dir, epochs=epochs)
    return best_model(run_dir, model)


def best_model(run_dir, fallback):
    path = Path(run_dir) / "model.keras"
    return load_model(path) if path.exists() else fallback


def history(run_dir) -> pd.DataFrame | None:
    path = Path(run_dir) / "history.csv"
    return pd.read_csv(path) if path.exists() else None
