"""The callbacks of a run: wall time, the exact validation AUC, the best-student checkpoint
and epoch snapshots.

Order matters: callbacks share one ``logs`` dict per epoch and run in list order, so
:class:`ExactValidationAUC` must come before every callback that reads ``val_auc``
(:class:`StudentCheckpoint`, ``CSVLogger``, ``ReduceLROnPlateau``, ``EarlyStopping``);
:func:`chestkd.training.trainer.fit` puts it first.
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
from chestkd.training.losses import exact_mean_auc
from chestkd.training.run import save_model_atomically, write_json


def student_of(model):
    """The model to save and evaluate: a Distiller's student, else the model itself."""
    return getattr(model, "student", model)


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
        save_model_atomically(student_of(self.model), path)
        if self.state_path is not None:
            write_json({"monitor": self.monitor, "value": value, "epoch": epoch + 1},
                       self.state_path)
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: {self.monitor}={value:.5f}, student saved to {path}")


class ExactValidationAUC(keras.callbacks.Callback):
    """Replace Keras' approximate ``val_auc`` with the exact validation mean AUC.

    At each epoch end it predicts ``val_dataset`` with the student (of a Distiller, else the
    model), computes :func:`chestkd.training.losses.exact_mean_auc` (per-class
    scikit-learn ROC AUC, unknown (-1) labels left out, undefined classes left out of the
    mean; sigmoid scores for multi-label, softmax for single-label) and writes it to
    ``logs["val_auc"]``, keeping Keras' 200-threshold value as ``logs["val_auc_approx"]``.
    Sample weights of the validation set are ignored (the AUC is a ranking statistic).

    Why: :class:`~chestkd.training.losses.MaskedAUC` ties every score inside one of its 200
    buckets, so on a rare finding it can rank two checkpoints the wrong way round; the best
    checkpoint must be chosen on the exact value.

    Args:
        val_dataset: iterable of ``(x, y)`` or ``(x, y, w)`` batches, ``x`` the images or a
            dict with an ``"image"`` entry.
        multi_label: True for independent findings, False for exclusive classes.
        jit_compile: compile the prediction with XLA (use the run's resolved value).
    """

    def __init__(self, val_dataset, multi_label=True, *, jit_compile=False):
        super().__init__()
        self.val_dataset = val_dataset
        self.multi_label = bool(multi_label)
        self.jit_compile = bool(jit_compile)
        self._predict, self._predict_for = None, None

    def _prediction_function(self, student):
        # One tf.function per student, traced once per batch shape: a validation pass then
        # costs about what Keras' own does, not an eager forward pass per batch.
        if self._predict_for is not student:
            @tf.function(jit_compile=self.jit_compile, reduce_retracing=True)
            def predict(images):
                return tf.cast(student(images, training=False), tf.float32)

            self._predict, self._predict_for = predict, student
        return self._predict

    def predict(self):
        """(labels (N, C), student logits (N, C)) over the validation set."""
        predict = self._prediction_function(student_of(self.model))
        labels, logits = [], []
        for batch in self.val_dataset:
            x, y, _ = keras.utils.unpack_x_y_sample_weight(batch)
            images = x["image"] if isinstance(x, dict) else x
            logits.append(np.asarray(predict(images)))
            labels.append(np.asarray(y))
        return np.concatenate(labels), np.concatenate(logits)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        labels, logits = self.predict()
        if "val_auc" in logs:
            logs["val_auc_approx"] = logs["val_auc"]
        logs["val_auc"] = exact_mean_auc(labels, logits, self.multi_label)


class EpochSnapshot(keras.callbacks.Callback):
    """Save the student as ``folder/epoch-{epoch:04d}.keras`` at the end of each listed epoch.

    ``epochs`` are 1-based (``epochs=[50]`` keeps the model after its 50th epoch, e.g. the
    defective teacher of a 200-epoch schedule). Written atomically, like the checkpoint.
    """

    def __init__(self, folder, epochs):
        super().__init__()
        epochs = list(epochs)
        if not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) and e >= 1
                   for e in epochs):
            raise ConfigError(f"snapshot_epochs {epochs!r}: must be positive (1-based) "
                              f"integers")
        self.folder = Path(folder)
        self.epochs = frozenset(int(e) for e in epochs)

    def path(self, epoch: int) -> Path:
        """Where the snapshot after (1-based) ``epoch`` goes."""
        return self.folder / f"epoch-{epoch:04d}.keras"

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 in self.epochs:
            save_model_atomically(student_of(self.model), self.path(epoch + 1))
