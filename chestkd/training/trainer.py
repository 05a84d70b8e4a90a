"""Fit a model (or a Distiller) with the callbacks every run needs.

``fit`` adds: the Keras progress bar, a CSV history with wall seconds per epoch, TensorBoard
logs, the best model by validation mean AUC saved atomically to ``model.keras`` (the student,
never a Distiller wrapper), and ``BackupAndRestore`` so an interrupted run resumes where it
stopped (``--resume RUN_DIR``).
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from chestkd.errors import ConfigError
from chestkd.training.run import save_model_atomically, write_json

MONITOR = "val_auc"


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` (wall time of the epoch, validation included) to the logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


class StudentCheckpoint(keras.callbacks.Callback):
    """Save the student of a :class:`Distiller` (or a plain model) when ``monitor`` improves.

    Unlike ``keras.callbacks.ModelCheckpoint`` on the Distiller, it writes only the student,
    a plain ``keras.Model`` loadable with ``keras.models.load_model``, and writes it
    atomically. ``filepath`` may hold ``{epoch}`` and log keys, e.g. ``"s-{epoch:02d}.keras"``.

    Args:
        state_path: optional JSON file keeping the best value across a resume.
        monitor: log key to watch, e.g. ``"val_loss"`` or ``"val_auc"``.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for AUC/accuracy keys, else min).
        save_best_only: False saves every epoch.
    """

    def __init__(self, filepath, monitor="val_loss", mode="auto", save_best_only=True,
                 verbose=0, state_path=None):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ConfigError(f"StudentCheckpoint: unknown option 'mode'={mode!r}; choose "
                              f"'auto', 'min' or 'max'")
        if mode == "auto":
            mode = "max" if monitor.endswith(("auc", "accuracy", "acc")) else "min"
        self.filepath = str(filepath)
        self.monitor = monitor
        self.mode = mode
        self.save_best_only = save_best_only
        self.verbose = verbose
        self.best = -np.inf if mode == "max" else np.inf
        # The best value so far survives an interruption, so a resumed run never replaces a
        # better checkpoint with a worse one.
        self.state_path = None if state_path is None else Path(state_path)
        if self.state_path is not None and self.state_path.exists():
            self.best = json.loads(self.state_path.read_text())["value"]

    def _improved(self, value):
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            warnings.warn(f"StudentCheckpoint: {self.monitor!r} is not in the logs "
                          f"(have {sorted(logs)}); nothing saved at epoch {epoch + 1}",
                          stacklevel=2)
            return
        value = float(value)
        if self.save_best_only and not self._improved(value):
            return
        if self._improved(value):
            self.best = value
        path = self.filepath.format(epoch=epoch + 1, **logs)
        save_model_atomically(getattr(self.model, "student", self.model), path)
        if self.state_path is not None:
            write_json({"monitor": self.monitor, "value": value, "epoch": epoch + 1},
                       self.state_path)
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: {self.monitor}={value:.5f}, student saved to {path}")


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


def fit(model, train_ds, val_ds, config: dict, run_dir, *, epochs=None, verbose="auto",
        extra_callbacks=()):
    """Train ``model`` with the run's callbacks; returns the Keras History.

    ``model.keras`` receives ``model.student`` for a Distiller, else ``model`` itself.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    epochs = int(config["epochs"] if epochs is None else epochs)
    callbacks = [
        EpochTimer(),
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        StudentCheckpoint(run_dir / "model.keras", monitor=MONITOR, mode="max",
                          state_path=run_dir / "best.json"),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False),
        keras.callbacks.TerminateOnNaN(),
        *extra_callbacks,
    ]
    if config.get("schedule") == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(MONITOR, mode="max", factor=0.1,
                                                           patience=5))
    # shuffle=False: the tf.data pipeline already shuffles, seeded.
    return model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks,
                     verbose=verbose, shuffle=False)
