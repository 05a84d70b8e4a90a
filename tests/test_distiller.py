"""The Distiller: frozen teachers, cached vs online targets, callbacks, mixed precision,
MirroredStrategy, and that distillation actually transfers the teacher's function."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from chestkd.distill import Distiller, KDLoss
from chestkd.models.weights import save_model_atomically
from chestkd.training.trainer import StudentCheckpoint
from two_cpus import PREAMBLE  # noqa: E402
from chestkd.errors import ConfigError  # noqa: E402
from chestkd.training.losses import MaskedAUC  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIZE, C, N = 16, 3, 16


def tiny_model(name, seed, filters=4, batchnorm=True, logit_scale=1.0):
    """Conv -> (BN) -> ReLU -> GAP "features_pool" -> Dense "logits" (float32), like
    chestkd.models' pooled backbones, small enough for CPU tests."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(filters, 3, padding="same")(inputs)
    if batchnorm:
        h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D(name="features_pool")(h)
    outputs = keras.layers.Dense(C, name="logits", dtype="float32")(h)
    if logit_scale != 1.0:
        outputs = keras.layers.Rescaling(logit_scale, dtype="float32")(outputs)
    return keras.Model(inputs, outputs, name=name)


def randomise_batchnorm_statistics(model, seed):
    """Give BN non-trivial moving statistics: a teacher run in training mode would move them."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=layer.moving_variance.shape))


def data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)
    y = (rng.random((n, C)) < 0.4).astype(np.float32)
    return x, y


def weights_of(model):
    return [np.array(v.numpy()) for v in model.weights]


def same_weights(a, b):
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


# ------------------------------------------------------------------ frozen teachers
def test_teachers_are_bitwise_unchanged_and_only_the_student_trains():
    teacher = tiny_model("teacher", seed=1, filters=6)
    randomise_batchnorm_statistics(teacher, seed=1)
    student = tiny_model("student", seed=2)
    teacher_before, student_before = weights_of(teacher), weights_of(student)
    distiller = Distiller(student, teacher, loss=KDLoss("sigmoid", 2.0, 0.5))
    assert not teacher.trainable
    assert {id(v) for v in distiller.trainable_weights} == {id(v) for v in
                                                            student.trainable_weights}
    distiller.compile(keras.optimizers.SGD(0.5))
    x, y = data()
    history = distiller.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert same_weights(weights_of(teacher), teacher_before)  # BN moving stats included
    student_after = weights_of(student)
    changed = [not np.array_equal(a, b) for a, b in zip(student_after, student_before)]
    assert all(changed)  # kernels, biases, BN gamma/beta AND the student's moving statistics
    assert set(history.history) == {"loss", "hard_loss", "soft_loss", "auc"}
    assert np.all(np.isfinite(history.history["loss"]))


def test_gradients_flow_to_the_student_only():
    teacher, student = tiny_model("teacher", seed=3), tiny_model("student", seed=4)
    distiller = Distiller(student, teacher, loss=KDLoss("hinton", 2.0, 0.7))
    x, y = data(seed=1, n=4)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([v.value for v in teacher.weights])
        images, teacher_logits = distiller.teacher_targets(x)
        student_logits = student(images, training=True)
        loss = distiller.compute_kd_losses(y, student_logits, teacher_logits)["loss"]
    teacher_gradients = tape.gradient(loss, [v.value for v in teacher.weights])
    student_gradients = tape.gradient(loss, student.trainable_weights)
    assert all(g is None for g in teacher_gradients)
    assert all(g is not None for g in student_gradients)
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in student_gradients)


def test_reported_loss_includes_the_students_regularisation():
    keras.utils.set_random_seed(12)
    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name="features_pool")(inputs)
    dense = keras.layers.Dense(C, name="logits", kernel_regularizer=keras.regularizers.L2(0.1))
    student = keras.Model(inputs, dense(pooled), name="student")
    distiller = Distiller(student, tiny_model("teacher", seed=13), loss=KDLoss("sigmoid", 2.0))
    x, y = data(seed=9, n=4)
    images, teacher_logits = distiller.teacher_targets(x)
    student_logits = student(images)
    losses = distiller.compute_kd_losses(y, student_logits, teacher_logits)
    kd_only = float(KDLoss("sigmoid", 2.0)(y, student_logits, teacher_logits))
    penalty = 0.1 * float(np.sum(dense.kernel.numpy().astype(np.float64) ** 2))
    np.testing.assert_allclose(float(losses["loss"]), kd_only + penalty, rtol=1e-5)


# ------------------------------------------------------- distillation transfers knowledge
def test_alpha_one_student_agrees_with_teacher_more_than_label_trained_student():
    teacher = tiny_model("teacher", seed=5, filters=8, logit_scale=4.0)
    randomise_batchnorm_statistics(teacher, seed=5)
    x, y = data(seed=2, n=32)  # labels unrelated to the teacher
    teacher_probabilities = 1 / (1 + np.exp(-teacher.predict(x, verbose=0)))

    def disagreement(alpha):
        student = tiny_model("student", seed=6, batchnorm=False)
        distiller = Distiller(student, teacher, loss=KDLoss("sigmoid", 1.0, alpha))
        distiller.compile(keras.optimizers.Adam(0.03))
        distiller.fit(x, y, batch_size=16, epochs=10, verbose=0, shuffle=False)
        probabilities = 1 / (1 + np.exp(-student.predict(x, verbose=0)))
        return np.abs(probabilities - teacher_probabilities).mean()

    initial = np.abs(1 / (1 + np.exp(-tiny_model("s", seed=6, batchnorm=False).predict(
        x, verbose=0))) - teacher_probabilities).mean()
    distilled, label_only = disagreement(1.0), disagreement(0.0)
    assert distilled < 0.5 * initial
    assert distilled < 0.5 * label_only


# ------------------------------------------------------------- cached vs online teachers
def test_cached_and_online_teachers_give_identical_trajectories_and_exact_losses():
    teachers = [tiny_model("teacher_a", seed=7), tiny_model("teacher_b", seed=8, filters=6)]
    for index, teacher in enumerate(teachers):
        randomise_batchnorm_statistics(teacher, seed=10 + index)
    x, y = data(seed=3)
    y[:3, 0] = -1.0  # unknown labels travel through the Distiller's losses and AUC
    weights = [0.25, 0.75]
    cached = np.stack([t.predict(x, verbose=0) for t in teachers], axis=1)  # (N, K, C)
    loss = KDLoss("hinton", 3.0, 0.4)

    def run(online):
        student = tiny_model("student", seed=9)
        distiller = Distiller(student, teachers if online else None, loss=loss,
                              teacher_weights=weights)
        distiller.compile(keras.optimizers.SGD(0.3))
        inputs = x if online else {"image": x, "teacher_logits": cached}
        history = distiller.fit(inputs, y, batch_size=8, epochs=3, verbose=0, shuffle=False)
        return history.history, weights_of(student), distiller, inputs

    online_history, online_weights, distiller, _ = run(online=True)
    cached_history, cached_weights, cached_distiller, cached_inputs = run(online=False)
    for key in ("loss", "hard_loss", "soft_loss", "auc"):
        np.testing.assert_allclose(online_history[key], cached_history[key], rtol=1e-6)
    for a, b in zip(online_weights, cached_weights):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    # evaluate() reports exactly KDLoss on the weighted teacher mixture, sample weights applied.
    combined = 0.25 * cached[:, 0] + 0.75 * cached[:, 1]
    student_logits = distiller.predict(x, verbose=0)
    np.testing.assert_allclose(student_logits, distiller.student.predict(x, verbose=0))
    hard, soft, total = (np.asarray(v) for v in loss.per_sample(y, student_logits, combined))
    sample_weight = np.linspace(0, 2, N).astype(np.float32)
    for model, inputs in ((distiller, x), (cached_distiller, cached_inputs)):
        result = model.evaluate(inputs, y, sample_weight=sample_weight, batch_size=8,
                                verbose=0, return_dict=True)
        np.testing.assert_allclose(result["loss"], (sample_weight * total).mean(), rtol=1e-5)
        np.testing.assert_allclose(result["hard_loss"], (sample_weight * hard).mean(), rtol=1e-5)
        np.testing.assert_allclose(result["soft_loss"], (sample_weight * soft).mean(), rtol=1e-5)
    auc = MaskedAUC(num_labels=C)
    auc.update_state(y, student_logits)
    unweighted = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    np.testing.assert_allclose(unweighted["auc"], float(auc.result()), rtol=1e-6)
    np.testing.assert_allclose(unweighted["loss"], total.mean(), rtol=1e-5)


def test_random_teacher_sampling_draws_reproducible_dirichlet_weights():
    teachers = [tiny_model(f"t{k}", seed=20 + k) for k in range(3)]
    distiller = Distiller(tiny_model("student", seed=23), teachers, loss=KDLoss("sigmoid", 2.0),
                          teacher_sampling="random", seed=7)
    distiller.compile(keras.optimizers.SGD(0.1))
    draws = []
    for step in range(600):
        distiller.optimizer.iterations.assign(step)
        draws.append(np.asarray(distiller.teacher_mixing_weights(3, training=True)))
    draws = np.array(draws)
    assert np.all(draws >= 0)
    np.testing.assert_allclose(draws.sum(1), 1.0, rtol=1e-6)
    assert np.unique(draws.round(6), axis=0).shape[0] == 600  # new weights every step
    # Dirichlet(1, 1, 1): mean 1/3 and variance 1/18 per component (5 standard errors).
    np.testing.assert_allclose(draws.mean(0), 1 / 3, atol=0.05)
    np.testing.assert_allclose(draws.var(0), 1 / 18, rtol=0.2)
    distiller.optimizer.iterations.assign(5)
    np.testing.assert_allclose(distiller.teacher_mixing_weights(3, training=True), draws[5])
    np.testing.assert_allclose(distiller.teacher_mixing_weights(3, training=False), [1 / 3] * 3)
    distiller.optimizer.iterations.assign(0)
    x, y = data(seed=4, n=8)
    history = distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def numpy_dirichlet_rows(seed, step, shape):
    """float64 reference of the per-example draw: the same stateless uniforms, -log, normalise."""
    uniform = tf.random.stateless_uniform(shape, seed=tf.constant([seed, step], tf.int64),
                                          minval=1e-12, maxval=1.0).numpy().astype(np.float64)
    exponential = -np.log(uniform)
    return exponential / exponential.sum(axis=1, keepdims=True)


def numpy_confidence_weights(stacked, multi_label, temperature):
    z = stacked.astype(np.float64)
    if multi_label:
        confidence = np.abs(2.0 / (1.0 + np.exp(-z)) - 1.0).mean(-1)
    else:
        p = np.exp(z - z.max(-1, keepdims=True))
        confidence = (p / p.sum(-1, keepdims=True)).max(-1)
    scores = np.exp((confidence - confidence.max(1, keepdims=True)) / temperature)
    return scores / scores.sum(1, keepdims=True)


def test_random_per_example_sampling_draws_one_dirichlet_row_per_example():
    teachers = [tiny_model(f"t{k}", seed=24 + k) for k in range(3)]
    distiller = Distiller(tiny_model("student", seed=27), teachers, loss=KDLoss("sigmoid", 2.0),
                          teacher_sampling="random_per_example", seed=11)
    distiller.compile(keras.optimizers.SGD(0.1))
    stacked = np.random.default_rng(0).normal(size=(400, 3, C)).astype(np.float32)
    distiller.optimizer.iterations.assign(4)
    weights = np.asarray(distiller.example_teacher_weights(stacked, training=True))
    assert weights.shape == (400, 3) and np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(weights, numpy_dirichlet_rows(11, 4, (400, 3)), rtol=1e-5)
    assert np.unique(weights.round(6), axis=0).shape[0] == 400  # every example its own draw
    np.testing.assert_allclose(weights.mean(0), 1 / 3, atol=0.04)  # Dirichlet(1,1,1) moments
    np.testing.assert_allclose(weights.var(0), 1 / 18, rtol=0.25)
    distiller.optimizer.iterations.assign(5)
    assert not np.allclose(distiller.example_teacher_weights(stacked, training=True), weights)
    np.testing.assert_allclose(distiller.example_teacher_weights(stacked, training=False),
                               np.full((400, 3), 1 / 3), rtol=1e-6)
    # Cached (B, K, C) logits and live teachers give the same per-example mixture.
    x, _ = data(seed=12, n=8)
    live = np.stack([t.predict(x, verbose=0) for t in teachers], axis=1)
    distiller.optimizer.iterations.assign(4)
    expected = (numpy_dirichlet_rows(11, 4, (8, 3))[:, :, None] * live).sum(1)
    for inputs in (x, {"image": x, "teacher_logits": live}):
        _, combined = distiller.teacher_targets(inputs, training=True)
        np.testing.assert_allclose(combined, expected, rtol=1e-5, atol=1e-6)
        _, evaluation = distiller.teacher_targets(inputs, training=False)
        np.testing.assert_allclose(evaluation, live.mean(1), rtol=1e-5, atol=1e-6)
    distiller.optimizer.iterations.assign(0)
    history = distiller.fit({"image": x, "teacher_logits": live}, data(seed=12, n=8)[1],
                            batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("multi_label", [True, False])
def test_confidence_sampling_weighs_teachers_by_the_documented_formula(multi_label):
    teachers = [tiny_model(f"t{k}", seed=30 + k, logit_scale=2.0 + k) for k in range(3)]
    distiller = Distiller(tiny_model("student", seed=33), teachers,
                          loss=KDLoss("sigmoid" if multi_label else "hinton", 2.0),
                          multi_label=multi_label, teacher_sampling="confidence",
                          confidence_temperature=0.05)
    stacked = np.random.default_rng(1).normal(scale=3.0, size=(64, 3, C)).astype(np.float32)
    weights = np.asarray(distiller.example_teacher_weights(stacked, training=True))
    np.testing.assert_allclose(weights, numpy_confidence_weights(stacked, multi_label, 0.05),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)
    assert np.unique(weights.round(6), axis=0).shape[0] == 64
    # The most confident teacher of each example gets the largest weight.
    z = stacked.astype(np.float64)
    sure = (np.abs(np.tanh(z / 2)).mean(-1) if multi_label
            else (np.exp(z) / np.exp(z).sum(-1, keepdims=True)).max(-1))
    np.testing.assert_array_equal(weights.argmax(1), sure.argmax(1))
    # A far larger temperature tends to the uniform mean; evaluation IS the uniform mean.
    flat = Distiller(tiny_model("s", seed=33), teachers, loss=KDLoss(), multi_label=multi_label,
                     teacher_sampling="confidence", confidence_temperature=1e4)
    np.testing.assert_allclose(flat.example_teacher_weights(stacked, training=True), 1 / 3,
                               atol=1e-4)
    x, y = data(seed=13, n=8)
    live = np.stack([t.predict(x, verbose=0) for t in teachers], axis=1)
    expected = (numpy_confidence_weights(live, multi_label, 0.05)[:, :, None] * live).sum(1)
    for inputs in (x, {"image": x, "teacher_logits": live}):
        _, combined = distiller.teacher_targets(inputs, training=True)
        np.testing.assert_allclose(combined, expected, rtol=1e-5, atol=1e-6)
        _, evaluation = distiller.teacher_targets(inputs, training=False)
        np.testing.assert_allclose(evaluation, live.mean(1), rtol=1e-5, atol=1e-6)
    if not multi_label:
        y = np.eye(C, dtype=np.float32)[np.arange(8) % C]
    distiller.compile(keras.optimizers.SGD(0.1))
    history = distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    with pytest.raises(ConfigError, match="confidence_temperature"):
        Distiller(tiny_model("s", seed=33), teachers, loss=KDLoss(),
                  teacher_sampling="confidence", confidence_temperature=0)
    with pytest.raises(ConfigError, match="example_teacher_weights"):
        distiller.teacher_mixing_weights(3, training=True)


# ------------------------------------------------------------------------- callbacks
class StopAfter(keras.callbacks.Callback):
    """Simulates a crash at the end of an epoch."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("simulated interruption")


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs, self.student_weights, self.logs, self.start_weights = [], [], [], None

    def on_train_begin(self, logs=None):
        self.start_weights = weights_of(self.model.student)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)
        self.logs.append(dict(logs))
        self.student_weights.append(weights_of(self.model.student))


def test_keras_callbacks_backup_restore_checkpoint_early_stopping_csv(tmp_path):
    teacher = tiny_model("teacher", seed=30)
    x, y = data(seed=5)
    backup = tmp_path / "backup"

    def new_distiller():
        distiller = Distiller(tiny_model("student", seed=31), teacher,
                              loss=KDLoss("sigmoid", 2.0, 0.5))
        distiller.compile(keras.optimizers.SGD(0.2))
        return distiller

    first, first_record = new_distiller(), Recorder()
    with pytest.raises(RuntimeError, match="simulated"):
        first.fit(x, y, batch_size=8, epochs=10, verbose=0, validation_data=(x, y),
                  callbacks=[keras.callbacks.BackupAndRestore(str(backup)), first_record,
                             StopAfter(epoch=1)])
    assert first_record.epochs == [0, 1]

    second, record = new_distiller(), Recorder()
    best_path = tmp_path / "best" / "student.keras"
    csv_path = tmp_path / "log.csv"
    history = second.fit(
        x, y, batch_size=8, epochs=10, verbose=0, validation_data=(x, y),
        callbacks=[keras.callbacks.BackupAndRestore(str(backup)), record,
                   StudentCheckpoint(best_path, monitor="val_loss"),
                   keras.callbacks.EarlyStopping(monitor="val_loss", patience=0, min_delta=10.0),
                   keras.callbacks.CSVLogger(str(csv_path))])
    # Resumed from the backup: epoch 2 onwards, from the weights the crash left behind.
    assert same_weights(record.start_weights, first_record.student_weights[-1])
    # EarlyStopping: the second resumed epoch cannot improve by 10, training stops.
    assert record.epochs == [2, 3]
    assert len(history.history["loss"]) == 2

    csv_lines = csv_path.read_text().strip().splitlines()
    header = csv_lines[0].split(",")
    assert {"loss", "hard_loss", "soft_loss", "auc", "val_loss", "val_auc"} <= set(header)
    rows = [dict(zip(header, line.split(","))) for line in csv_lines[1:]]
    assert [int(r["epoch"]) for r in rows] == [2, 3]
    np.testing.assert_allclose([float(r["val_loss"]) for r in rows],
                               [log["val_loss"] for log in record.logs], rtol=1e-6)

    # The checkpoint is the student alone, at its best val_loss epoch.
    best = int(np.argmin([log["val_loss"] for log in record.logs]))
    loaded = keras.models.load_model(best_path)
    assert loaded.name == "student" and not isinstance(loaded, Distiller)
    assert "teacher" not in [layer.name for layer in loaded.layers]
    assert same_weights(weights_of(loaded), record.student_weights[best])
    assert sorted(p.name for p in best_path.parent.iterdir()) == ["student.keras"]


# ------------------------------------------------------------------------ saving
def test_save_student_is_atomic_and_saves_the_student_only(tmp_path):
    student = tiny_model("student", seed=40)
    distiller = Distiller(student, tiny_model("teacher", seed=41), loss=KDLoss())
    path = tmp_path / "run" / "model.keras"
    distiller.save_student(path)
    x, _ = data(seed=6, n=4)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), student.predict(x, verbose=0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.keras"]
    good = path.read_bytes()

    class CrashingModel:
        def save(self, filename, overwrite=True):
            Path(filename).write_bytes(b"half a model")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model_atomically(CrashingModel(), path)
    assert path.read_bytes() == good  # the previous model survives a crash mid-save
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.keras"]
    with pytest.raises(ConfigError, match="model.h5"):
        distiller.save_student(tmp_path / "model.h5")


# -------------------------------------------------------------- mixed precision
def test_mixed_precision_trains_without_nan():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        teacher = tiny_model("teacher", seed=50)
        student = tiny_model("student", seed=51)
        distiller = Distiller(student, teacher, loss=KDLoss("sigmoid", 2.0, 0.5))
        distiller.compile(keras.optimizers.SGD(0.5))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert student.layers[1].compute_dtype == "float16"
    assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
    x, y = data(seed=7)
    before = weights_of(student)
    history = distiller.fit(x, y, batch_size=8, epochs=3, verbose=0)
    for key in ("loss", "hard_loss", "soft_loss"):
        assert np.all(np.isfinite(history.history[key]))
    after = weights_of(student)
    assert all(np.all(np.isfinite(w)) for w in after)
    assert not same_weights(after, before)
    assert history.history["loss"][-1] < history.history["loss"][0]


# ---------------------------------------------------------------------------- XLA
class NotXLACompilable(Distiller):
    """A Distiller whose step holds a Python callback, an op XLA has no kernel for."""

    def compute_kd_losses(self, *args, **kwargs):
        losses = super().compute_kd_losses(*args, **kwargs)
        reported = tf.numpy_function(lambda v: v, [losses["hard_loss"]], tf.float32)
        reported.set_shape(())
        return {**losses, "hard_loss": reported}  # a report, off the gradient's path


def test_jit_compile_true_xla_compiles_the_train_step_with_the_same_losses():
    from chestkd.training.trainer import resolve_jit_compile, xla_fallback_reason
    x, y = data(seed=9)
    results = {}
    for jit in (False, True):
        distiller = Distiller(tiny_model("student", seed=70), tiny_model("teacher", seed=71),
                              loss=KDLoss("sigmoid", 2.0, 0.5))
        distiller.compile(keras.optimizers.SGD(0.3), jit_compile=jit)
        assert distiller.jit_compile is jit
        history = distiller.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False,
                                validation_data=(x, y))
        results[jit] = history.history, weights_of(distiller.student)
    for key, values in results[False][0].items():
        np.testing.assert_allclose(results[True][0][key], values, rtol=1e-4, err_msg=key)
    for a, b in zip(results[True][1], results[False][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    config = {"jit_compile": True}
    assert resolve_jit_compile(config, distiller) is True
    assert xla_fallback_reason(distiller) is None  # the student and the teacher lower to XLA
    # The step really goes through XLA: one op without an XLA kernel makes it fail there.
    failing = NotXLACompilable(tiny_model("student", seed=70), tiny_model("teacher", seed=71),
                               loss=KDLoss("sigmoid", 2.0, 0.5))
    failing.compile(keras.optimizers.SGD(0.3), jit_compile=False)
    failing.fit(x, y, batch_size=8, epochs=1, verbose=0)
    failing.compile(keras.optimizers.SGD(0.3), jit_compile=True)
    with pytest.raises(Exception, match="PyFunc"):
        failing.fit(x, y, batch_size=8, epochs=1, verbose=0)


def test_mixed_precision_trains_under_xla():
    from chestkd.training.trainer import resolve_jit_compile, xla_fallback_reason
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        distiller = Distiller(tiny_model("student", seed=72), tiny_model("teacher", seed=73),
                              loss=KDLoss("sigmoid", 2.0, 0.5))
        assert xla_fallback_reason(distiller) is None
        jit = resolve_jit_compile({"jit_compile": True}, distiller)
        distiller.compile(keras.optimizers.SGD(0.5), jit_compile=jit)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert jit is True and isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
    x, y = data(seed=10)
    history = distiller.fit(x, y, batch_size=8, epochs=3, verbose=0)
    for key in ("loss", "hard_loss", "soft_loss"):
        assert np.all(np.isfinite(history.history[key]))
    assert history.history["loss"][-1] < history.history["loss"][0]


# ------------------------------------------------------------- MirroredStrategy
MIRRORED_SCRIPT = PREAMBLE + textwrap.dedent("""
    from chestkd.distill import Distiller, KDLoss

    def model(name, seed, batchnorm):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((8, 8, 3))
        h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
        if batchnorm:  # teachers run in inference mode: BN is per-replica safe
            h = keras.layers.BatchNormalization()(h)
        h = keras.layers.GlobalAveragePooling2D(name="features_pool")(keras.layers.ReLU()(h))
        return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h), name=name)

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (32, 8, 8, 3)).astype("float32")
    y = (rng.random((32, 3)) < 0.4).astype("float32")
    y[:4, 1] = -1.0
    results = {}
    for devices in (["/cpu:0"], ["/cpu:0", "/cpu:1"]):
        strategy = tf.distribute.MirroredStrategy(devices)
        with strategy.scope():
            distiller = Distiller(model("student", 1, False), model("teacher", 2, True),
                                  loss=KDLoss("sigmoid", 2.0, 0.5))
            distiller.compile(keras.optimizers.SGD(0.5))
        history = distiller.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
                                validation_data=(x, y))
        results[strategy.num_replicas_in_sync] = history.history
    print("RESULT" + json.dumps(results))
""")


def test_mirrored_strategy_two_replicas_report_the_same_loss_as_one():
    completed = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(REPO)],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(l for l in completed.stdout.splitlines() if l.startswith("RESULT"))
    results = json.loads(line[len("RESULT"):])
    one, two = results["1"], results["2"]
    assert set(one) == {"loss", "hard_loss", "soft_loss", "auc", "val_loss", "val_hard_loss",
                        "val_soft_loss", "val_auc"}
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, err_msg=key)
    assert one["loss"][-1] < one["loss"][0]  # it trained, so the equality covers the updates


# ---------------------------------------------------------------------- bad input
def test_configuration_errors_name_the_problem():
    student, teacher = tiny_model("student", seed=60), tiny_model("teacher", seed=61)
    with pytest.raises(ConfigError, match="loss"):
        Distiller(student, teacher, loss="kl")
    with pytest.raises(ConfigError, match="teacher_sampling"):
        Distiller(student, teacher, loss=KDLoss(), teacher_sampling="roulette")
    with pytest.raises(ConfigError, match="teacher_weights"):
        Distiller(student, [teacher, teacher], loss=KDLoss(), teacher_weights=[1.0])
    with pytest.raises(ConfigError, match="teacher_weights"):
        Distiller(student, [teacher, teacher], loss=KDLoss(), teacher_weights=[1.0, -1.0])
    with pytest.raises(ConfigError, match="teacher_weights"):
        Distiller(student, [teacher, teacher], loss=KDLoss(), teacher_weights=[1, 1],
                  teacher_sampling="random")
    keras.utils.set_random_seed(62)
    inputs = keras.Input((SIZE, SIZE, 3))
    five_classes = keras.Model(inputs, keras.layers.Dense(5)(
        keras.layers.GlobalAveragePooling2D()(inputs)), name="wide_teacher")
    with pytest.raises(ConfigError, match="wide_teacher"):
        Distiller(student, five_classes, loss=KDLoss())
    distiller = Distiller(student, None, loss=KDLoss())
    with pytest.raises(ConfigError, match="loss"):
        distiller.compile("sgd", loss="mse")
    distiller.compile("sgd")
    x, y = data(seed=8, n=4)
    with pytest.raises(ConfigError, match="teacher_logits"):
        distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    with pytest.raises(ConfigError, match="teacher_weights"):
        weighted = Distiller(student, None, loss=KDLoss(), teacher_weights=[1, 2, 3])
        weighted.compile("sgd")
        weighted.evaluate({"image": x, "teacher_logits": np.zeros((4, 2, C), np.float32)}, y,
                          verbose=0)


def _numpy_kl_t2(student, teacher, temperature):
    """float64 Hinton term: T^2 KL(softmax(z_t/T) || softmax(z_s/T)) per sample."""
    def log_softmax(z):
        z = z / temperature
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))
    log_p, log_q = log_softmax(teacher.astype(np.float64)), log_softmax(student.astype(np.float64))
    return temperature ** 2 * (np.exp(log_p) * (log_p - log_q)).sum(-1)


def test_teacher_combine_losses_is_the_weighted_sum_of_per_teacher_divergences():
    """RoS-KD Eq. 4: sum_k w_k KL(q_k, p), not one KL to the mixed logits."""
    teachers = [tiny_model(f"t{k}", seed=40 + k, logit_scale=3.0) for k in range(3)]
    loss = KDLoss("hinton", 0.5, 0.9)
    x, _ = data(seed=13, n=8)
    y = np.eye(C, dtype=np.float32)[np.random.default_rng(0).integers(0, C, 8)]
    live = np.stack([t.predict(x, verbose=0) for t in teachers], axis=1)
    for combine in ("losses", "logits"):
        distiller = Distiller(tiny_model("student", seed=44), teachers, loss=loss,
                              multi_label=False, teacher_sampling="random_per_example",
                              seed=3, teacher_combine=combine)
        distiller.compile(keras.optimizers.SGD(0.1))
        distiller.optimizer.iterations.assign(2)
        _, targets = distiller.teacher_targets({"image": x, "teacher_logits": live},
                                               training=True)
        student_logits = distiller.student.predict(x, verbose=0)
        losses = distiller.compute_kd_losses(y, student_logits, targets)
        w = numpy_dirichlet_rows(3, 2, (8, 3))
        if combine == "losses":
            soft = sum(w[:, k] * _numpy_kl_t2(student_logits, live[:, k], 0.5) for k in range(3))
        else:
            soft = _numpy_kl_t2(student_logits, (w[:, :, None] * live).sum(1), 0.5)
        z = student_logits.astype(np.float64)
        log_q = z - z.max(-1, keepdims=True)
        log_q = log_q - np.log(np.exp(log_q).sum(-1, keepdims=True))
        hard = -(y * log_q).sum(-1)
        np.testing.assert_allclose(float(losses["soft_loss"]), soft.mean(), rtol=1e-4)
        np.testing.assert_allclose(float(losses["loss"]), (0.1 * hard + 0.9 * soft).mean(),
                                   rtol=1e-4)
        if combine == "losses":
            per_teacher_soft = float(losses["soft_loss"])
    # The divergence is convex in the teacher's distribution, not in its logits, so the two
    # forms differ when teachers disagree; this guards against "losses" silently mixing logits.
    assert abs(per_teacher_soft - float(losses["soft_loss"])) > 1e-3
    history = distiller.fit({"image": x, "teacher_logits": live}, y, batch_size=4, epochs=1,
                            verbose=0)
    assert np.isfinite(history.history["soft_loss"][0])
    with pytest.raises(ConfigError, match="teacher_combine"):
        Distiller(tiny_model("s", seed=1), teachers, loss=loss, teacher_combine="mean")
