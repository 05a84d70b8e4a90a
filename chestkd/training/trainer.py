"""Fit a model (or a Distiller) with the callbacks every run needs.

``fit`` adds: the Keras progress bar, a CSV history with wall seconds per epoch, TensorBoard
logs, the best model by validation mean AUC saved atomically to ``model.keras`` (the student,
never a Distiller wrapper), and ``BackupAndRestore`` so an interrupted run resumes where it
stopped (``--resume RUN_DIR``).
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import keras
import tensorflow as tf

from chestkd.errors import ConfigError
from chestkd.training.run import save_model_atomic

MONITOR = "val_auc"


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` (wall time of the epoch, validation included) to the logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves ``model_to_save`` to ``path`` whenever ``monitor`` improves (higher is better).

    Unlike ``keras.callbacks.ModelCheckpoint`` it saves a given model (the student inside a
    Distiller) and keeps the best value in ``path``'s sibling ``best.json`` so that a resumed
    run does not overwrite a better checkpoint with a worse one.
    """

    def __init__(self, model_to_save, path, monitor=MONITOR):
        super().__init__()
        self.model_to_save, self.path, self.monitor = model_to_save, Path(path), monitor
        self.state_path = self.path.with_name("best.json")
        self.best = -math.inf
        if self.state_path.exists():
            self.best = json.loads(self.state_path.read_text())["value"]

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or math.isnan(value):
            return
        if value > self.best:
            self.best = float(value)
            save_model_atomic(self.model_to_save, self.path)
            tmp = self.state_path.with_name("best.json.tmp")
            tmp.write_text(json.dumps({"monitor": self.monitor, "value": self.best,
                                       "epoch": epoch + 1}))
            os.replace(tmp, self.state_path)


def make_schedule(config: dict, steps_per_epoch: int):
    lr, epochs = float(config["learning_rate"]), int(config["epochs"])
    total = max(1, steps_per_epoch * epochs)
    schedule = config["schedule"]
    if schedule in ("constant", "plateau"):
        return lr
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, total)
    if schedule == "step":  # x0.1 at 50% and 75% of training (the CIFAR ResNet convention)
        bounds = sorted({max(1, int(total * 0.5)), max(2, int(total * 0.75))})
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            bounds, [lr, lr * 0.1, lr * 0.01][:len(bounds) + 1])
    raise ConfigError(f"--schedule {schedule!r}: choose constant, step, cosine or plateau")


def make_optimizer(config: dict, steps_per_epoch: int):
    """SGD with momentum and weight decay by default (the papers' setting).

    Keras applies ``weight_decay`` decoupled from the gradient and multiplied by the learning
    rate (w -= lr * wd * w each step), which equals PyTorch's coupled L2 decay without momentum.
    """
    lr = make_schedule(config, steps_per_epoch)
    name, wd = config["optimizer"], config["weight_decay"] or None
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=float(config["momentum"]), weight_decay=wd)
    if name == "adam":
        return keras.optimizers.Adam(lr, weight_decay=wd)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=wd or 0.004)
    raise ConfigError(f"--optimizer {name!r}: choose sgd, adam or adamw")


def distribution_strategy(config: dict):
    """MirroredStrategy over all GPUs when there are several (``distribute: auto``)."""
    mode = config.get("distribute", "auto")
    gpus = tf.config.list_logical_devices("GPU")
    if mode == "mirrored" or (mode == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if mode not in ("auto", "none", "mirrored"):
        raise ConfigError(f"--distribute {mode!r}: choose auto, none or mirrored")
    return tf.distribute.get_strategy()


def fit(model, train_ds, val_ds, config: dict, run_dir, *, student=None, epochs=None,
        verbose="auto"):
    """Train ``model`` with the run's callbacks; returns the Keras History.

    ``student`` is the model checkpointed as ``model.keras`` (default: ``model`` itself).
    """
    run_dir = Path(run_dir)
    epochs = int(config["epochs"] if epochs is None else epochs)
    callbacks = [
        EpochTimer(),
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        BestModelCheckpoint(student or model, run_dir / "model.keras"),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False),
        keras.callbacks.TerminateOnNaN(),
    ]
    if config.get("schedule") == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(MONITOR, mode="max", factor=0.1,
                                                           patience=5))
    return model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks,
                     verbose=verbose)
