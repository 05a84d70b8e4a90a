"""Fit a model (or a Distiller) with the callbacks every run needs.

``fit`` adds: the Keras progress bar (one line per epoch when the output is not a terminal),
the EXACT validation mean AUC as ``val_auc`` (:class:`ExactValidationAUC`; Keras'
200-threshold value is kept as ``val_auc_approx``), a CSV history with wall seconds per
epoch, TensorBoard logs, the best model by that exact AUC saved atomically to ``model.keras``
(the student, never a Distiller wrapper), optional snapshots at chosen epochs,
``BackupAndRestore`` so an interrupted run resumes where it stopped (``--resume RUN_DIR``),
after the first epoch its time and the expected time of the schedule and of the stages after
it (:class:`ScheduleEstimate`), and a stop at the first non-finite loss or validation logits
(:class:`TrainingDiverged`, exit status 2, ``diverged.json`` in the run folder).

``make_optimizer`` builds SGD/Adam with the papers' coupled (PyTorch-style) L2 weight decay
(:mod:`chestkd.training.optimizers`); ``resolve_jit_compile`` decides whether the training
step is XLA-compiled.
"""
from __future__ import annotations

import sys
from pathlib import Path

import keras
import pandas as pd
import tensorflow as tf

from chestkd.errors import ConfigError
from chestkd.training.callbacks import (EpochSnapshot, EpochTimer, ExactValidationAUC,
                                        ScheduleEstimate, StopOnDivergence, StudentCheckpoint,
                                        TrainingDiverged, WeightAveraging, student_of)
from chestkd.training.config import OPTIMIZERS, WEIGHT_DECAY_MODES
from chestkd.training.distribute import distribution_strategy, even_first_batches
from chestkd.training.optimizers import CoupledAdam, CoupledSGD
from chestkd.training.options import TrainingOptions, as_training, step_milestones
from chestkd.training.run import write_json

__all__ = ["MONITOR", "WEIGHT_DECAY_MODES", "EpochSnapshot", "EpochTimer", "ExactValidationAUC",
           "ScheduleEstimate", "StopOnDivergence", "StudentCheckpoint", "TrainingDiverged",
           "WeightAveraging", "distribution_strategy", "fit", "make_optimizer", "make_schedule",
           "resolve_jit_compile", "resolve_verbose", "weight_decay_mode", "xla_fallback_reason"]

MONITOR = "val_auc"


def make_schedule(training: TrainingOptions, steps_per_epoch: int):
    training = as_training(training)
    lr, epochs = float(training.learning_rate), training.epochs
    total = max(1, steps_per_epoch * epochs)
    schedule = training.schedule
    if schedule in ("constant", "plateau"):
        return lr
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(lr, total)
    if schedule == "step" and training.step_epochs:
        # x0.1 after each listed epoch (RoS-KD: after epochs 25 and 40 of 50)
        milestones = _step_epochs(training.step_epochs, epochs)
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            [steps_per_epoch * e - 1 for e in milestones],  # the last step of epoch e
            [lr * 0.1 ** i for i in range(len(milestones) + 1)])
    if schedule == "step":  # x0.1 at 50% and 75% of training (the CIFAR ResNet convention)
        # The rate changes once the step count passes a bound, and the optimizer reads it at
        # the count before its step: the bound is the last step at the old rate.
        bounds = sorted({max(0, int(total * 0.5) - 1), max(1, int(total * 0.75) - 1)})
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            bounds, [lr, lr * 0.1, lr * 0.01][:len(bounds) + 1])
    raise ConfigError(f"--schedule {schedule!r}: choose constant, step, cosine or plateau")


def _step_epochs(value, epochs: int) -> list[int]:
    """``step_epochs`` as increasing 1-based epochs within the schedule, else ConfigError.

    Milestones at or after the last epoch never fire; when none is left (RoS-KD's [25, 40] in
    a 6-epoch phantom run) the rate drops after half the epochs, and a line says so."""
    milestones = step_milestones(value)
    kept = [e for e in milestones if e < epochs]
    if kept != milestones:
        dropped = ", ".join(str(e) for e in milestones if e >= epochs)
        instead = "" if kept else f"; x0.1 after epoch {max(1, epochs // 2)} (half) instead"
        print(f"step_epochs: epoch(s) {dropped} not before the end of the {epochs}-epoch "
              f"schedule{instead}")
    return kept or [max(1, epochs // 2)]


def weight_decay_mode(training: TrainingOptions) -> str:
    """``weight_decay_mode`` of a run (default ``coupled``), checked against the optimizer."""
    training = as_training(training)
    mode = training.weight_decay_mode
    if mode not in WEIGHT_DECAY_MODES:
        raise ConfigError(f"--weight-decay-mode {mode!r}: choose coupled or decoupled")
    if mode == "coupled" and training.optimizer == "adamw":
        raise ConfigError("--optimizer adamw is decoupled weight decay by definition, so it "
                          "cannot have --weight-decay-mode coupled: use --optimizer adam for "
                          "coupled L2, or --weight-decay-mode decoupled with adamw")
    return mode


def make_optimizer(training: TrainingOptions, steps_per_epoch: int):
    """SGD with momentum and weight decay by default (the papers' setting).

    ``weight_decay_mode: coupled`` (default) is PyTorch's L2 in the gradient, which is what
    the papers' 5e-4 means (:class:`~chestkd.training.optimizers.CoupledSGD`,
    :class:`~chestkd.training.optimizers.CoupledAdam`)::

        g <- g + wd * w;   buf <- momentum * buf + g;   w <- w - lr * buf

    ``decoupled`` is Keras' ``weight_decay``, applied outside the gradient and scaled by the
    learning rate, ``w <- w - lr * wd * w`` each step: about 10x weaker at momentum 0.9.
    ``adamw`` is always decoupled (that is what AdamW means).
    """
    training = as_training(training)
    lr = make_schedule(training, steps_per_epoch)
    name, wd = training.optimizer, float(training.weight_decay or 0.0)
    if name not in OPTIMIZERS:
        raise ConfigError(f"--optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    coupled = weight_decay_mode(training) == "coupled"
    if name == "sgd":
        momentum = float(training.momentum)
        if coupled:
            return CoupledSGD(lr, momentum=momentum, l2=wd)
        return keras.optimizers.SGD(lr, momentum=momentum, weight_decay=wd or None)
    if name == "adam":
        return CoupledAdam(lr, l2=wd) if coupled else keras.optimizers.Adam(
            lr, weight_decay=wd or None)
    return keras.optimizers.AdamW(lr, weight_decay=wd or 0.004)


# ------------------------------------------------------------------------------ XLA
def _jit_option(given):
    """``jit_compile`` of a run: ``"auto"``, True or False (YAML booleans or strings)."""
    value = given
    if isinstance(value, str):
        value = {"auto": "auto", "true": True, "false": False}.get(value.lower(), value)
    if value == "auto" or isinstance(value, bool):
        return value
    raise ConfigError(f"--jit-compile {given!r}: choose auto, true or false")


def _probe_batch(model):
    """A random batch of 2 inputs of ``model``'s (static) input shape."""
    spec = model.inputs[0] if getattr(model, "inputs", None) else None
    if spec is None or any(d is None for d in spec.shape[1:]):
        raise ValueError("the model has no fixed input shape to probe")
    return tf.random.stateless_uniform((2, *spec.shape[1:]), seed=(0, 0), minval=-1.0,
                                       maxval=1.0, dtype=spec.dtype)


def xla_probe(model) -> None:
    """Lower to XLA (HLO) what a training step runs: the teachers' forward pass (of a
    Distiller) and the student's forward and backward pass, on a batch of 2.

    Raises what XLA raises for an op it cannot compile (e.g. ``PyFunc``: "Detected unsupported
    operations"). It stops at the TF-to-HLO lowering, where such failures happen, without
    XLA's backend compile: 4 s instead of 25 s for ResNet-32 at 128 px on 2 CPU cores.
    Nothing runs, so no BatchNorm statistic or dropout seed of the model moves.
    """
    student = student_of(model)
    teachers = list(getattr(model, "teachers", None) or [])
    images = _probe_batch(student)

    @tf.function(jit_compile=True)
    def step(images):
        for teacher in teachers:
            teacher(images, training=False)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.cast(student(images, training=True), tf.float32))
        return tape.gradient(loss, student.trainable_variables)

    step.experimental_get_compiler_ir(images)(stage="hlo")


def xla_fallback_reason(model) -> str | None:
    """None when ``model`` trains under XLA here, else why not (one line)."""
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        # As Keras' own "auto": XLA is off under a multi-replica tf.distribute strategy.
        return "several tf.distribute replicas"
    try:
        xla_probe(model)
    except Exception as error:  # noqa: BLE001 - whatever fails, the run goes on without XLA
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        return f"{type(error).__name__}: {first_line}"
    return None


def accelerator_present() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


def resolve_jit_compile(training: TrainingOptions, model, *, quiet: bool = False) -> bool:
    """Whether to XLA-compile ``model``'s training step, from ``training.jit_compile``.

    ``true`` / ``false`` are taken as given. ``auto`` (default), with a GPU: True when the
    model (a Distiller: its student and teachers) lowers to XLA, else False with one printed
    line saying why. On a CPU-only machine ``auto`` is False (one line says so): measured on
    an idle 2-core CPU with oneDNN, XLA made a ResNet-32 128-px phantom epoch slower (12.0 ->
    15.3 s, and 20 s more compiling; ``benchmarks/xla_cpu.py``, RESULTS.md), so it is opt-in
    there (``jit_compile=true``).

    ``quiet``: no line when XLA stays off (evaluation asks again for its own passes).
    """
    option = _jit_option(as_training(training).jit_compile)
    if option == "auto":
        if not accelerator_present():
            reason = "CPU only: XLA measured slower here; jit_compile=true to force it"
        else:
            reason = xla_fallback_reason(model)
        resolved = reason is None
        if not resolved and not quiet:
            print(f"jit_compile auto: XLA off for {model.name} ({reason})")
    else:
        resolved = option
    return resolved


def resolve_verbose(verbose):
    """Keras ``verbose`` for ``fit``: ``"auto"`` is 1 (progress bar) on a terminal and 2 (one
    line per epoch) otherwise, so a log file gets no progress-bar redraws."""
    if verbose != "auto":
        return verbose
    isatty = getattr(sys.stdout, "isatty", None)
    return 1 if isatty is not None and isatty() else 2


# ------------------------------------------------------------------------------ fit
def trained_before(run_dir, epochs: int) -> bool:
    """Whether a fit of ``epochs`` epochs ran to its end in ``run_dir``: its history reaches
    the last epoch, its model is saved, and Keras removed its backup (it does so only when
    training ends). A run stopped after that, before its caller marked the stage, would
    otherwise train again from epoch 1 and log every epoch twice."""
    run_dir = Path(run_dir)
    history = run_dir / "history.csv"
    if ((run_dir / "backup").exists() or not (run_dir / "model.keras").exists()
            or not history.exists()):
        return False
    done = pd.read_csv(history)["epoch"] if history.stat().st_size else []
    return len(done) > 0 and int(max(done)) >= int(epochs) - 1


def fit(model, train_ds, val_ds, training: TrainingOptions, run_dir, *, epochs=None,
        verbose="auto", extra_callbacks=(), multi_label: bool = True, keep_backup: bool = False,
        snapshot_epochs=(), weight_averaging=None, later_stages=()):
    """Train ``model`` with the run's callbacks; returns the Keras History (None when the fit
    had already run to its last epoch in ``run_dir``: :func:`trained_before`).

    ``model.keras`` receives ``model.student`` for a Distiller, else ``model`` itself, at the
    epoch of the best EXACT validation mean AUC.

    Args:
        multi_label: how the exact AUC ranks: sigmoid per finding (True) or softmax over
            exclusive classes (False); pass the dataset's ``multi_label``.
        verbose: Keras' verbosity; ``"auto"``: see :func:`resolve_verbose`.
        extra_callbacks: run after the run's own (they see the exact ``val_auc``).
        keep_backup: keep the ``BackupAndRestore`` state when training ends, so that a run
            stopped on purpose (a teacher kept at epoch 50 of a 200-epoch schedule) can be
            continued later by calling ``fit`` again with more epochs.
        snapshot_epochs: 1-based epochs after which the student is also saved as
            ``run_dir/snapshots/epoch-NNNN.keras``.
        training: the run's :class:`~chestkd.training.options.TrainingOptions` (``epochs``,
            ``checkpoint``, ``schedule``).
        later_stages: a list of ``{"name", "epochs", "cost"}`` naming the fits that follow
            this one, whose expected time :class:`~chestkd.training.callbacks.ScheduleEstimate`
            prints after the first epoch beside this schedule's.
        weight_averaging: a :class:`~chestkd.training.callbacks.WeightAveraging`: from its
            first averaged epoch on, ``val_auc`` (and so ``model.keras``, the selection and
            ``ReduceLROnPlateau``) is the averaged model's, BatchNorm re-estimated, and
            ``raw_val_auc`` the raw student's; Keras' own ``val_loss`` stays the raw
            student's. At the end of training the model holds the average.
    """
    training = as_training(training)
    # Before anything is written: with several replicas Keras cannot start on a first batch
    # that does not split evenly (a ConfigError, or the small validation split re-batched).
    train_ds, val_ds = even_first_batches(train_ds, val_ds, training.batch_size,
                                          model.distribute_strategy, training.distribute)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    epochs = int(training.epochs if epochs is None else epochs)
    if trained_before(run_dir, epochs):
        print(f"{run_dir}: training had finished (history.csv reaches epoch {epochs}); not "
              "trained again", flush=True)
        return None
    averaging = weight_averaging
    # training.checkpoint: best_val keeps the epoch of the best exact validation AUC; last and
    # average keep the final epoch's model (a fixed schedule; average: SWA over the last third
    # of the epochs), since a validation split of a few dozen images picks epochs on noise.
    selection = training.checkpoint
    # The average's window is the schedule's (training.epochs), also when this fit stops
    # before its end: a defective teacher's copy stopped at epoch 6 of 24 must see the data,
    # epoch by epoch, that the full schedule sees (the BatchNorm re-estimation reads it too).
    schedule = training.epochs
    if selection == "average" and averaging is None and schedule > 1:
        averaging = WeightAveraging(schedule - max(1, schedule // 3), bn_data=train_ds,
                                    state_path=run_dir / "weight_average.npz")
    # First, so that no callback after it sees (or saves) a non-finite step.
    callbacks = [StopOnDivergence()]
    jit = bool(getattr(model, "jit_compile", False))  # as compiled (Keras may turn XLA off)
    if averaging is not None:
        # The raw student's AUC first, then the average goes in for the exact val_auc and the
        # checkpoint, and the raw weights come back before the backup and the next epoch.
        if val_ds is not None:
            callbacks.append(ExactValidationAUC(val_ds, multi_label, jit_compile=jit,
                                                key="raw_val_auc"))
        averaging.evaluate_average = True
        callbacks.append(averaging)
    if val_ds is not None:
        # Before the checkpoint, the CSV log and the History: they read its val_auc.
        callbacks.append(ExactValidationAUC(val_ds, multi_label, jit_compile=jit))
    averaged = averaging is not None and epochs > averaging.start_epoch
    # last and average save the final epoch's model whatever its AUC: a fit continued with
    # more epochs (keep_backup) replaces the one it stopped at.
    callbacks.append(StudentCheckpoint(
        run_dir / "model.keras", monitor=MONITOR, mode="max", state_path=run_dir / "best.json",
        save_best_only=selection == "best_val",
        from_epoch=(epochs if selection != "best_val"
                    else averaging.start_epoch + 1 if averaged else 1)))
    if averaging is not None:
        callbacks.append(averaging.restore_callback())
    callbacks += [
        EpochTimer(),
        # After the exact validation AUC and the checkpoint: their time is part of an epoch.
        ScheduleEstimate(later_stages or ()),
        # double_checkpoint: a run killed while the backup is written resumes from the
        # epoch before (Keras falls back to the previous copy) instead of failing to read it.
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), double_checkpoint=True,
                                         delete_checkpoint=not keep_backup),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False),
    ]
    if snapshot_epochs:
        callbacks.append(EpochSnapshot(run_dir / "snapshots", snapshot_epochs))
    callbacks += list(extra_callbacks)
    if training.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(MONITOR, mode="max", factor=0.1,
                                                           patience=5))
    diverged = run_dir / "diverged.json"
    try:
        # shuffle=False: the tf.data pipeline already shuffles, seeded.
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs,
                            callbacks=callbacks, verbose=resolve_verbose(verbose),
                            shuffle=False)
    except TrainingDiverged as error:
        # The run folder keeps its checkpoint, history and backup; diverged.json says why it
        # stopped, for a person or a table runner reading the folder later.
        error.run_dir = run_dir
        write_json({**error.record, "message": str(error)}, diverged)
        raise
    diverged.unlink(missing_ok=True)  # a resumed run that got through
    return history
