"""The callbacks of a run: wall time, the schedule's expected time, a stop at the first
non-finite loss or logits (:class:`StopOnDivergence`), the exact validation AUC, the
best-student checkpoint, epoch snapshots and RoS-KD's weight averaging
(:class:`WeightAveraging`).

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

from chestkd.errors import ChestKDError, ConfigError
from chestkd.io import atomic_write
from chestkd.models.weights import save_model_atomically
from chestkd.training.losses import exact_mean_auc
from chestkd.training.run import write_json


def student_of(model):
    """The model to save and evaluate: a Distiller's student, else the model itself."""
    return getattr(model, "student", model)


def current_learning_rate(model, *, initial: bool = False) -> float | None:
    """The learning rate of the optimizer's last step (a schedule evaluated at that step), or
    with ``initial`` the schedule's first one; None when there is no optimizer."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    # Mixed precision wraps it in a LossScaleOptimizer, whose own rate is a plain 0.0.
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    try:
        schedule = getattr(optimizer, "_learning_rate", None)
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            # optimizer.learning_rate is the NEXT step's rate: the iteration count has moved on
            step = 0 if initial else max(int(np.asarray(optimizer.iterations)) - 1, 0)
            return float(np.asarray(schedule(step)))
        return float(np.asarray(optimizer.learning_rate))
    except (TypeError, ValueError, AttributeError):
        return None


class TrainingDiverged(ChestKDError):
    """The training loss or the model's logits became NaN or infinite during a fit.

    A user-facing error (exit status 2): the remedy is a setting (the learning rate, the
    optimizer), not a bug. ``record`` holds epoch, step, learning rate and what went
    non-finite, for ``diverged.json``.
    """

    def __init__(self, *, what: str, epoch: int, epochs: int | None, step: int | None,
                 steps: int | None, learning_rate: float | None,
                 initial_learning_rate: float | None = None):
        self.record = {"what": what, "epoch": epoch, "epochs": epochs, "step": step,
                       "steps": steps, "learning_rate": learning_rate,
                       "initial_learning_rate": initial_learning_rate}
        where = f"epoch {epoch}" + (f" of {epochs}" if epochs else "")
        if step is not None:
            where += f", step {step}" + (f" of {steps}" if steps else "")
        else:
            where += ", validation pass"
        rate = "an unknown learning rate" if learning_rate is None \
            else f"learning rate {learning_rate:g}"
        start = initial_learning_rate if initial_learning_rate is not None else learning_rate
        if start is not None and learning_rate is not None and \
                not np.isclose(start, learning_rate):
            rate += f" at this step; the schedule starts at {start:g}"
        lower = "" if start is None else f" (e.g. --learning-rate {start / 10:g})"
        super().__init__(
            f"training diverged at {where} ({rate}): {what}. Lower the learning rate"
            f"{lower}, or use --optimizer adam --learning-rate 0.001; deep models at a small "
            f"image size or batch diverge more easily with SGD at the papers' 0.1")
        self.run_dir = None

    def __str__(self):
        text = super().__str__()
        if self.run_dir is not None:
            text += f". What the run wrote so far is kept in {self.run_dir}"
        return text


class StopOnDivergence(keras.callbacks.Callback):
    """Raise :class:`TrainingDiverged` at the first step whose training loss is NaN or
    infinite, naming the epoch, the step and the learning rate.

    Unlike ``keras.callbacks.TerminateOnNaN`` it stops at once: the epoch is not finished,
    so no callback evaluates, checkpoints or backs up the non-finite weights, and what the
    run wrote before (the best checkpoint, the history, the backup of the last whole epoch)
    stays as it was. Place it first: every callback after it sees finite logs only.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        value = (logs or {}).get("loss")
        if value is None:
            return
        value = float(np.asarray(value))
        if not np.isfinite(value):
            raise TrainingDiverged(
                what=f"the training loss is {value}", epoch=getattr(self, "_epoch", 0) + 1,
                epochs=self.params.get("epochs"), step=batch + 1,
                steps=self.params.get("steps"), learning_rate=current_learning_rate(self.model),
                initial_learning_rate=current_learning_rate(self.model, initial=True))


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` (wall time of the epoch, validation included) to the logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = time.perf_counter() - self._start


def format_duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s``, ``2 h 07 min``, ``3 d 04 h``: a wait a person can read."""
    seconds = max(float(seconds), 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


class ScheduleEstimate(keras.callbacks.Callback):
    """After the first epoch a fit runs, print its wall time and the expected time of the rest
    of the schedule and of each later stage the run knows of; after the second, the same from
    a steady epoch.

    Why: a schedule can take days (the papers' 200 DenseNet-121 epochs over 78,000 images),
    far longer than a Colab session; the person should know after one epoch, not find out.

    The first epoch pays one-off costs (tracing, XLA compilation, the input pipeline warming
    up), most of them in its first training step and its first validation batch: later
    epochs are estimated as the first one less (first step - a typical step) and (first
    validation batch - a typical one), the typical ones being the means of the others. What
    traces without batches (the exact validation AUC's first pass) stays in, so the first
    estimate errs long; the second epoch's line needs no such correction.

    Args:
        later_stages: ``{"name", "epochs", "cost"}`` mappings, in order: a later fit of
            ``epochs`` epochs, each costing ``cost`` (default 1) times this fit's epoch
            (self-training's distillation: the same model on the same data, so about 1).
        clock: the time source (seconds), for tests.
    """

    REPORTS = 2  # epochs after which a line is printed: the first, then a steady one

    def __init__(self, later_stages=(), clock=time.perf_counter):
        super().__init__()
        self.later_stages = [dict(stage) for stage in later_stages]
        self.clock = clock
        self.estimates = []  # what was printed, as numbers
        self.estimate = None  # the latest of them

    def _active(self):
        return len(self.estimates) < self.REPORTS

    def on_train_begin(self, logs=None):
        self._fit_start = self.clock()

    def on_epoch_begin(self, epoch, logs=None):
        if self._active():
            self._start = self.clock()
            self._steps = {"train": [], "test": []}  # clock at the end of each batch
            self._test_start = None

    def on_train_batch_end(self, batch, logs=None):
        if self._active():
            self._steps["train"].append(self.clock())

    def on_test_begin(self, logs=None):
        if self._active():
            self._test_start = self.clock()

    def on_test_batch_end(self, batch, logs=None):
        if self._active() and self._test_start is not None:
            self._steps["test"].append(self.clock())

    @staticmethod
    def _one_off(start, ends) -> float:
        """How much longer the first batch took than a typical later one (>= 0)."""
        if start is None or len(ends) < 2:
            return 0.0
        typical = (ends[-1] - ends[0]) / (len(ends) - 1)
        return max(ends[0] - start - typical, 0.0)

    def on_epoch_end(self, epoch, logs=None):
        if not self._active():
            return
        now = self.clock()
        seconds = now - self._start
        one_off = 0.0
        if not self.estimates:  # the first epoch this fit runs
            one_off = (self._one_off(self._start, self._steps["train"])
                       + self._one_off(self._test_start, self._steps["test"]))
        per_epoch = max(seconds - one_off, 0.0)
        epochs = int(self.params.get("epochs") or epoch + 1)
        remaining = epochs - (epoch + 1)
        if self.estimates and not remaining and not self.later_stages:
            self.estimates.append(None)  # nothing left to estimate
            return
        elapsed = now - self._fit_start
        schedule = elapsed + remaining * per_epoch
        estimate = {"epoch": epoch + 1, "epochs": epochs, "epoch_seconds": seconds,
                    "one_off_seconds": one_off, "later_epoch_seconds": per_epoch,
                    "remaining_seconds": remaining * per_epoch, "schedule_seconds": schedule,
                    "later_stages": []}
        took = f"epoch {epoch + 1} of {epochs} took {format_duration(seconds)}"
        if not self.estimates:
            took += f" (about {format_duration(one_off)} of it one-off tracing and warm-up)"
        line = (f"{took}; expected: {format_duration(per_epoch)} per later epoch, "
                f"{format_duration(remaining * per_epoch)} for the {remaining} left, "
                f"{format_duration(schedule)} for this {epochs}-epoch fit")
        total = schedule
        for stage in self.later_stages:
            stage_seconds = int(stage["epochs"]) * per_epoch * float(stage.get("cost", 1.0))
            total += stage_seconds
            estimate["later_stages"].append({**stage, "seconds": stage_seconds})
            line += (f"; then {stage['name']}: {int(stage['epochs'])} epoch(s), about "
                     f"{format_duration(stage_seconds)}")
        if self.later_stages:
            line += f"; in all about {format_duration(total)} from the start of this fit"
        estimate["total_seconds"] = total
        self.estimates.append(estimate)
        self.estimate = estimate
        print(line, flush=True)


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
        from_epoch: only epochs from this one (1-based) are candidates (with weight
            averaging: the averaged models, not the warm-up's raw ones).
    """

    def __init__(self, filepath, monitor="val_loss", mode="auto", save_best_only=True,
                 verbose=0, state_path=None, from_epoch=1):
        super().__init__()
        self.from_epoch = int(from_epoch)
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
        if epoch + 1 < self.from_epoch:
            return
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
        key: the log entry written (``"raw_val_auc"`` for the raw student beside an
            averaged one).
    """

    def __init__(self, val_dataset, multi_label=True, *, jit_compile=False, key="val_auc"):
        super().__init__()
        self.key = key
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
        if not np.isfinite(logits).all():
            bad = int(np.sum(~np.isfinite(logits).all(axis=-1)))
            raise TrainingDiverged(
                what=f"the model's validation logits are NaN or infinite for {bad} of "
                     f"{len(logits)} images", epoch=epoch + 1, epochs=self.params.get("epochs"),
                step=None, steps=self.params.get("steps"),
                learning_rate=current_learning_rate(self.model),
                initial_learning_rate=current_learning_rate(self.model, initial=True))
        if self.key == "val_auc" and "val_auc" in logs and "val_auc_approx" not in logs:
            logs["val_auc_approx"] = logs["val_auc"]
        logs[self.key] = exact_mean_auc(labels, logits, self.multi_label)


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


# ------------------------------------------------------------------ weight averaging
def batch_normalization_layers(model) -> list:
    """Every ``keras.layers.BatchNormalization`` inside ``model`` (nested models included)."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def reestimate_batch_norm(model, dataset, max_batches=None) -> int:
    """Set every BatchNorm layer's moving mean and variance of ``model`` to the EXACT mean and
    (biased) variance of its inputs over ``dataset``; returns the number of images used.

    Why: the moving statistics of an averaged model are not the statistics its averaged
    weights produce (each checkpoint's were collected under other weights), so SWA-style
    averaging must re-estimate them. How: each layer's momentum is set to 0 for one forward
    pass per batch in training mode, so after the pass its moving mean/variance ARE the
    batch's mean/variance (Keras: ``moving = moving * momentum + batch * (1 - momentum)``);
    those are read back and pooled over batches weighted by batch size,
    ``mean = sum n_b m_b / N``, ``var = sum n_b (v_b + m_b^2) / N - mean^2``: the statistics
    of all ``N`` images at once, not a momentum-weighted trail (in training mode every layer
    normalises with its batch's statistics, so the moving values never enter the pass).
    No trainable weight changes. Batches are ``(x, y[, w])`` with ``x`` the images or a dict
    with an ``"image"`` entry.
    """
    layers = batch_normalization_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    try:
        @tf.function(reduce_retracing=True)
        def batch_statistics(images):
            model(images, training=True)
            return ([tf.identity(layer.moving_mean) for layer in layers],
                    [tf.identity(layer.moving_variance) for layer in layers])

        count, sums, squares = 0, None, None
        for index, batch in enumerate(dataset):
            if max_batches is not None and index >= max_batches:
                break
            x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
            images = x["image"] if isinstance(x, dict) else x
            size = int(images.shape[0])
            means, variances = batch_statistics(images)
            means = [np.asarray(m, np.float64) for m in means]
            seconds = [np.asarray(v, np.float64) + m ** 2 for m, v in zip(means, variances)]
            if sums is None:
                sums = [size * m for m in means]
                squares = [size * s for s in seconds]
            else:
                sums = [a + size * m for a, m in zip(sums, means)]
                squares = [a + size * s for a, s in zip(squares, seconds)]
            count += size
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if count:
        for layer, total, total_sq in zip(layers, sums, squares):
            mean = total / count
            layer.moving_mean.assign(mean.astype(np.float32))
            layer.moving_variance.assign(np.maximum(total_sq / count - mean ** 2, 0.0)
                                         .astype(np.float32))
    return count


class WeightAveraging(keras.callbacks.Callback):
    """RoS-KD's smooth parameter averaging (Eq. 1), for any model or a Distiller's student.

    After every epoch ``e`` (1-based) with ``e > start_epoch`` (a warm-up of ``start_epoch``
    epochs) the running mean of the end-of-epoch weights is updated,
    ``W_smooth <- (n * W_smooth + W) / (n + 1)``, ``n`` the checkpoints averaged so far;
    all float weights are averaged (BatchNorm moving statistics too, then re-estimated). At
    the end of ``fit`` the average is written into the model (as Keras' optimizer EMA does)
    and, with ``bn_data``, its BatchNorm statistics are re-estimated on it
    (:func:`reestimate_batch_norm`); the raw weights can be kept in ``raw_path``.

    Used by :func:`chestkd.training.trainer.fit` (``weight_averaging=``), the averaged model is
    also the one evaluated each epoch: :meth:`swap_in` puts the average (BatchNorm
    re-estimated) into the model before the validation AUC and the checkpoint, and the
    callback of :meth:`restore_callback` puts the raw weights back before training goes on.

    Args:
        start_epoch: epochs of warm-up before the first averaged checkpoint (the paper: 10).
        bn_data: training batches for the BatchNorm re-estimation (None: not re-estimated).
        bn_batches: use at most this many batches of ``bn_data`` (None: all).
        state_path: ``.npz`` file keeping the running average across an interrupted run.
        raw_path: ``.keras`` file for the raw (unaveraged) final model.
    """

    def __init__(self, start_epoch=10, bn_data=None, bn_batches=None, state_path=None,
                 raw_path=None):
        super().__init__()
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, (int, np.integer)) \
                or start_epoch < 0:
            raise ConfigError(f"WeightAveraging: 'start_epoch'={start_epoch!r} must be a "
                              f"non-negative integer")
        self.start_epoch = int(start_epoch)
        self.bn_data, self.bn_batches = bn_data, bn_batches
        self.state_path = None if state_path is None else Path(state_path)
        self.raw_path = raw_path
        self.average, self.count, self.last_epoch = None, 0, 0
        self.evaluate_average = False  # set by fit: swap the average in at each epoch end
        self._raw, self._estimated = None, None

    def _weights(self):
        return [w for w in student_of(self.model).weights if w.dtype in ("float32", "float16",
                                                                         "float64", "bfloat16")]

    def on_train_begin(self, logs=None):
        if self.state_path is not None and self.state_path.exists():
            with np.load(self.state_path) as state:
                self.count, self.last_epoch = int(state["count"]), int(state["epoch"])
                self.average = [state[f"w{i}"] for i in range(len(state.files) - 2)]

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 > self.start_epoch and epoch + 1 > self.last_epoch:
            current = [np.asarray(w, np.float64) for w in self._weights()]
            if self.average is None:
                self.average = current
            else:  # Eq. 1 in float64: no drift over many epochs
                n = self.count
                self.average = [(n * a + w) / (n + 1) for a, w in zip(self.average, current)]
            self.count, self.last_epoch = self.count + 1, epoch + 1
            self._save_state()
        if logs is not None:
            logs["averaged_epochs"] = self.count
        if self.evaluate_average:
            self.swap_in()

    def _save_state(self):
        if self.state_path is None:
            return
        arrays = {f"w{i}": a for i, a in enumerate(self.average)}

        def write(tmp):
            with open(tmp, "wb") as handle:  # a handle: np.savez appends no second suffix
                np.savez(handle, count=self.count, epoch=self.last_epoch, **arrays)

        atomic_write(self.state_path, write)

    def _assign_average(self):
        if self._estimated is not None and self._estimated[0] == self.count:
            # The same average, BatchNorm already re-estimated at this epoch's swap_in.
            for variable, value in zip(self._weights(), self._estimated[1]):
                variable.assign(value)
            return
        for variable, value in zip(self._weights(), self.average):
            variable.assign(value.astype(variable.dtype))
        if self.bn_data is not None:
            reestimate_batch_norm(student_of(self.model), self.bn_data, self.bn_batches)
        self._estimated = (self.count, [np.asarray(w) for w in self._weights()])

    def swap_in(self):
        """Put the average (BatchNorm re-estimated) into the model, keeping the raw weights."""
        if self.average is None or self._raw is not None:
            return
        self._raw = [np.asarray(w) for w in self._weights()]
        self._assign_average()

    def swap_out(self):
        """Put back the raw weights :meth:`swap_in` kept."""
        if self._raw is None:
            return
        for variable, value in zip(self._weights(), self._raw):
            variable.assign(value)
        self._raw = None

    def restore_callback(self) -> keras.callbacks.Callback:
        """A callback that calls :meth:`swap_out` at each epoch end (place it after the
        callbacks that evaluate or save the averaged model, before ``BackupAndRestore``)."""
        owner = self

        class RestoreRawWeights(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                owner.swap_out()

        return RestoreRawWeights()

    def on_train_end(self, logs=None):
        self.swap_out()
        if self.average is None:
            warnings.warn(f"WeightAveraging: training ended before epoch "
                          f"{self.start_epoch + 1}; nothing was averaged, the model is the "
                          f"raw one", stacklevel=2)
            return
        if self.raw_path is not None:
            save_model_atomically(student_of(self.model), self.raw_path)
        self._assign_average()
