"""Checkpoints chosen on the EXACT validation AUC, and epoch snapshots."""
import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from chestkd.distill import Distiller, KDLoss
from chestkd.errors import ConfigError
from chestkd.training.callbacks import EpochSnapshot, ExactValidationAUC
from chestkd.training.config import BASE_DEFAULTS
from chestkd.scores import exact_auc, probabilities_from_logits
from chestkd.training.losses import MaskedAUC, MaskedBinaryCrossentropy, exact_mean_auc
from chestkd.training.trainer import fit


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------- the exact AUC itself
def test_exact_mean_auc_leaves_out_unknown_labels_and_undefined_classes():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 3))
    y = (rng.random((40, 3)) < 0.3).astype(np.float32)
    y[:7, 0] = -1.0               # unknown labels of class 0
    y[:, 2] = 0.0                 # class 2 has no positive: undefined
    known = y[:, 0] >= 0
    expected = [roc_auc_score(y[known, 0], sigmoid(logits[known, 0])),
                roc_auc_score(y[:, 1], sigmoid(logits[:, 1]))]
    per_class = exact_auc(y, probabilities_from_logits(logits, multi_label=True))
    np.testing.assert_allclose(per_class[:2], expected)
    assert np.isnan(per_class[2])
    assert exact_mean_auc(y, logits, multi_label=True) == pytest.approx(np.mean(expected))
    assert exact_mean_auc(np.zeros((4, 2)), logits[:4, :2], True) == 0.0  # none defined
    # Single-label: one-vs-rest on softmax scores, which logits alone do not rank.
    one_hot = np.eye(3)[rng.integers(0, 3, 40)]
    expected = np.mean([roc_auc_score(one_hot[:, c], softmax(logits)[:, c]) for c in range(3)])
    assert exact_mean_auc(one_hot, logits, multi_label=False) == pytest.approx(expected)
    # Ties count one half; float64 does not tie logits that float32's sigmoid would.
    assert exact_mean_auc(np.array([[1.0], [0.0]]), np.array([[3.0], [3.0]]), True) == 0.5
    assert exact_mean_auc(np.array([[1.0], [0.0]]), np.array([[19.0], [18.0]]), True) == 1.0


# ------------------------------------------- the callback picks the right checkpoint
N_VAL = 100


def rare_finding_data():
    """Validation set of a rare finding (4 positives in 100, 5 labels unknown) and an
    always-negative class (undefined, left out). Feature ``a`` ranks it perfectly, feature
    ``b`` only partly."""
    rng = np.random.default_rng(1)
    y = np.zeros((N_VAL, 2), np.float32)
    y[rng.choice(N_VAL, 4, replace=False), 0] = 1.0
    y[np.flatnonzero(y[:, 0] == 0)[:5], 0] = -1.0
    a = np.where(y[:, 0] == 1, rng.uniform(0.6, 1.0, N_VAL), rng.uniform(0.0, 0.5, N_VAL))
    b = np.clip(rng.uniform(0, 1, N_VAL) + 0.35 * (y[:, 0] == 1), 0, 1)
    x = np.stack([a, b], axis=1).astype(np.float32)
    return x, y


# Epoch 1: logits 0.001 + 0.008 a, sigmoid scores all inside ONE of MaskedAUC's 200 buckets
# (0.50025 .. 0.50225 between the thresholds 99/199 and 100/199), ranked perfectly.
PACKED = [np.array([[0.008, 0.0], [0.0, 0.0]], np.float32), np.array([0.001, 0.0], np.float32)]
# Epoch 2: logits 4 b - 2, spread over many buckets, ranked only partly right.
SPREAD = [np.array([[0.0, 0.0], [4.0, 0.0]], np.float32), np.array([-2.0, 0.0], np.float32)]


class SetWeights(keras.callbacks.Callback):
    """Gives the model chosen weights for each epoch (training runs at learning rate 0)."""

    def __init__(self, per_epoch):
        super().__init__()
        self.per_epoch = per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.model.get_layer("logits").set_weights(self.per_epoch[epoch])


def test_checkpoint_is_chosen_on_the_exact_auc_not_the_200_threshold_one(tmp_path):
    x, y = rare_finding_data()
    scores = {name: x @ kernel + bias for name, (kernel, bias) in
              (("packed", PACKED), ("spread", SPREAD))}
    exact = {k: exact_mean_auc(y, v, multi_label=True) for k, v in scores.items()}
    approx = {}
    for name, logits in scores.items():
        metric = MaskedAUC(num_labels=2)
        metric.update_state(y, logits)
        approx[name] = float(metric.result())
    # The trap: the 200-threshold AUC ranks the two the wrong way round.
    assert exact["packed"] == 1.0 and 0.6 < exact["spread"] < 0.95
    assert approx["packed"] == pytest.approx(0.5) and approx["spread"] > 0.6

    keras.utils.set_random_seed(0)
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(inputs))
    model.compile(keras.optimizers.SGD(0.0), MaskedBinaryCrossentropy(),
                  metrics=[MaskedAUC(num_labels=2, name="auc")])
    val = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    config = {**BASE_DEFAULTS, "epochs": 2, "schedule": "constant"}
    fit(model, val, val, config, tmp_path, verbose=0,
        extra_callbacks=[SetWeights([PACKED, SPREAD])])

    best = json.loads((tmp_path / "best.json").read_text())
    assert best["epoch"] == 1 and best["value"] == pytest.approx(1.0)
    saved = keras.models.load_model(tmp_path / "model.keras", compile=False)
    for weight, expected in zip(saved.get_layer("logits").get_weights(), PACKED):
        np.testing.assert_array_equal(weight, expected)
    history = pd.read_csv(tmp_path / "history.csv")
    np.testing.assert_allclose(history["val_auc"], [exact["packed"], exact["spread"]],
                               rtol=1e-6)
    np.testing.assert_allclose(history["val_auc_approx"], [approx["packed"], approx["spread"]],
                               rtol=1e-5)


def test_callback_predicts_with_the_student_of_a_distiller_on_dict_batches():
    """Single-label (softmax) student of a Distiller, batches ``({"image", "teacher_logits"},
    y, w)``: the exact AUC of the student's softmax scores; Keras' value kept as approx."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 6, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    student = keras.Model(inputs, keras.layers.Dense(3, name="logits")(features),
                          name="student")
    distiller = Distiller(student, None, loss=KDLoss("hinton", 2.0), multi_label=False)
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (30, 6, 6, 3)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 30)]
    y[:3] = -1.0
    batches = tf.data.Dataset.from_tensor_slices(
        ({"image": x, "teacher_logits": np.zeros((30, 3), np.float32)}, y,
         np.ones(30, np.float32))).batch(8)
    callback = ExactValidationAUC(batches, multi_label=False, jit_compile=True)
    callback.set_model(distiller)
    logs = {"val_auc": 0.25, "val_loss": 1.0}
    callback.on_epoch_end(0, logs)
    logits = student.predict(x, verbose=0)
    expected = np.mean([roc_auc_score(y[3:, c], softmax(logits[3:])[:, c]) for c in range(3)])
    assert logs["val_auc"] == pytest.approx(expected, rel=1e-6)
    assert logs["val_auc_approx"] == 0.25 and logs["val_loss"] == 1.0


# ----------------------------------------------------------------------- snapshots
def test_epoch_snapshots_keep_the_student_at_the_listed_epochs(tmp_path):
    keras.utils.set_random_seed(4)
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(inputs))
    model.compile(keras.optimizers.SGD(0.5), MaskedBinaryCrossentropy(),
                  metrics=[MaskedAUC(num_labels=2, name="auc")])
    x, y = rare_finding_data()
    y = np.abs(y)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(25)

    class Weights(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.after = []

        def on_epoch_end(self, epoch, logs=None):
            self.after.append(self.model.get_weights())

    recorder = Weights()
    config = {**BASE_DEFAULTS, "epochs": 3, "schedule": "constant"}
    fit(model, data, data, config, tmp_path, verbose=0, snapshot_epochs=(1, 3),
        extra_callbacks=[recorder])
    folder = tmp_path / "snapshots"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0001.keras", "epoch-0003.keras"]
    for epoch in (1, 3):
        snapshot = keras.models.load_model(folder / f"epoch-{epoch:04d}.keras", compile=False)
        for a, b in zip(snapshot.get_weights(), recorder.after[epoch - 1]):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(recorder.after[0][0], recorder.after[2][0])  # it trained
    with pytest.raises(ConfigError, match="snapshot_epochs"):
        EpochSnapshot(folder, [0])


# ------------------------------------------------------------------ weight averaging
from chestkd.training.callbacks import WeightAveraging, reestimate_batch_norm  # noqa: E402


def bn_model(seed=5):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 3))
    conv = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(conv)
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(h))
    return keras.Model(inputs, keras.layers.Dense(2, name="logits")(h))


def bn_data(n=40, seed=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 1.5, (n, 6, 6, 3)).astype(np.float32)
    y = (x.mean(axis=(1, 2))[:, :2] > 0.3).astype(np.float32)
    return x, y


class RecordWeights(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.after = []

    def on_epoch_end(self, epoch, logs=None):
        self.after.append([np.asarray(w, np.float64) for w in self.model.weights])


def test_weight_averaging_writes_the_mean_of_the_averaged_end_of_epoch_weights():
    model = bn_model()
    model.compile(keras.optimizers.SGD(0.2), MaskedBinaryCrossentropy())
    x, y = bn_data()
    recorder, averaging = RecordWeights(), WeightAveraging(start_epoch=2)
    model.fit(x, y, batch_size=10, epochs=5, verbose=0, shuffle=False,
              callbacks=[recorder, averaging])
    assert averaging.count == 3
    for index, weight in enumerate(model.weights):
        expected = np.mean([epoch[index] for epoch in recorder.after[2:]], axis=0)
        np.testing.assert_allclose(np.asarray(weight), expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(recorder.after[2][0], recorder.after[4][0])  # it trained


def test_batch_norm_reestimation_gives_the_exact_statistics_of_the_data():
    model = bn_model()
    x, _ = bn_data(37)
    batches = tf.data.Dataset.from_tensor_slices((x, np.zeros((37, 2), np.float32))).batch(10)
    assert reestimate_batch_norm(model, batches) == 37
    conv = keras.Model(model.inputs[0], model.get_layer("conv").output)(x).numpy().astype(
        np.float64)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), conv.mean(axis=(0, 1, 2)), rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), conv.var(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.99                     # restored


def test_fit_saves_the_averaged_model_and_logs_the_raw_score_beside_it(tmp_path):
    model = bn_model(7)
    model.compile(keras.optimizers.SGD(0.2), MaskedBinaryCrossentropy(),
                  metrics=[MaskedAUC(num_labels=2, name="auc")])
    x, y = bn_data(48, 7)
    train = tf.data.Dataset.from_tensor_slices((x[:32], y[:32])).batch(16)
    val = tf.data.Dataset.from_tensor_slices((x[32:], y[32:])).batch(16)
    recorder = RecordWeights()
    averaging = WeightAveraging(start_epoch=1, bn_data=train,
                                raw_path=tmp_path / "raw_model.keras")
    config = {**BASE_DEFAULTS, "epochs": 3, "schedule": "constant"}
    fit(model, train, val, config, tmp_path, verbose=0, weight_averaging=averaging,
        extra_callbacks=[recorder])
    history = pd.read_csv(tmp_path / "history.csv")
    assert {"raw_val_auc", "val_auc", "averaged_epochs"} <= set(history.columns)
    assert history["averaged_epochs"].tolist() == [0, 1, 2]
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["epoch"] >= 2                    # warm-up epochs are not candidates
    # recorder (after the restore) saw the raw weights; the saved model is their average
    kernel = [w.path for w in model.weights].index(model.get_layer("conv").kernel.path)
    expected = np.mean([e[kernel] for e in recorder.after[1:best["epoch"]]], axis=0)
    saved = keras.models.load_model(tmp_path / "model.keras", compile=False)
    np.testing.assert_allclose(saved.get_layer("conv").kernel.numpy(), expected, rtol=1e-5)
    final = np.mean([e[kernel] for e in recorder.after[1:]], axis=0)
    np.testing.assert_allclose(model.get_layer("conv").kernel.numpy(), final, rtol=1e-5)
    raw = keras.models.load_model(tmp_path / "raw_model.keras", compile=False)
    np.testing.assert_allclose(raw.get_layer("conv").kernel.numpy(), recorder.after[-1][kernel],
                               rtol=1e-6)
    # the saved model's BatchNorm holds the statistics of its own weights on the train data
    conv = keras.Model(saved.inputs[0], saved.get_layer("conv").output)(x[:32]).numpy()
    np.testing.assert_allclose(saved.get_layer("bn").moving_mean.numpy(),
                               conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------- the expected time of a schedule
class ScriptedClock:
    """A clock that returns the given times, one per call."""

    def __init__(self, times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def test_schedule_estimate_leaves_out_the_first_batches_tracing_then_uses_a_steady_epoch(
        capsys):
    from chestkd.training.callbacks import ScheduleEstimate, format_duration
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype("float32"), np.zeros((64, 2), "float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    # fit begins at 0, epoch 1 at 1; its 3 steps end at 6 (tracing), 7 and 8; validation
    # (2 batches) begins at 8 and its batches end at 10 (tracing) and 10.5; the epoch ends
    # at 11. Epoch 2: 11 to 15 (steps 12, 13, 14; validation 14, batches 14.5, 15), ends 15.
    # Epoch 3 reads no clock.
    clock = ScriptedClock([0, 1, 6, 7, 8, 8, 10, 10.5, 11,
                           11, 12, 13, 14, 14, 14.5, 15, 15])
    estimate = ScheduleEstimate([{"name": "distillation", "epochs": 4},
                                 {"name": "fine-tuning", "epochs": 2, "cost": 0.5}],
                                clock=clock)
    model.fit(x[:48], y[:48], batch_size=16, epochs=3, verbose=0, callbacks=[estimate],
              validation_data=(x[48:], y[48:]), validation_batch_size=8)
    first, second = estimate.estimates
    # typical step 1 s: 4 s of the first step were one-off; typical validation batch 0.5 s:
    # 1.5 s of the first one; a later epoch: 10 - 5.5 = 4.5 s
    assert first["one_off_seconds"] == pytest.approx(5.5)
    assert first["later_epoch_seconds"] == pytest.approx(4.5)
    assert first["schedule_seconds"] == pytest.approx(11 + 2 * 4.5)
    assert [s["seconds"] for s in first["later_stages"]] == [18.0, 4.5]
    assert first["total_seconds"] == pytest.approx(20 + 18 + 4.5)
    # the second epoch took 4 s, all of it steady
    assert (second["one_off_seconds"], second["later_epoch_seconds"]) == (0.0, 4.0)
    assert second["schedule_seconds"] == pytest.approx(15 + 4)
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [
        "epoch 1 of 3 took 10.0 s (about 5.5 s of it one-off tracing and warm-up); expected: "
        "4.5 s per later epoch, 9.0 s for the 2 left, 20.0 s for this 3-epoch fit; "
        "then distillation: 4 epoch(s), about 18.0 s; then fine-tuning: 2 epoch(s), about "
        "4.5 s; in all about 42.5 s from the start of this fit",
        "epoch 2 of 3 took 4.0 s; expected: 4.0 s per later epoch, 4.0 s for the 1 left, "
        "19.0 s for this 3-epoch fit; then distillation: 4 epoch(s), about 16.0 s; then "
        "fine-tuning: 2 epoch(s), about 4.0 s; in all about 39.0 s from the start of this fit"]
    assert [format_duration(s) for s in (59.94, 245, 7620, 3 * 86400 + 4 * 3600 + 59)] == [
        "59.9 s", "4 min 05 s", "2 h 07 min", "3 d 04 h"]
