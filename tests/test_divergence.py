"""A diverging fit stops at the first non-finite loss or logits with a message a person can act
on (epoch, step, learning rate, what to change), keeps what the run wrote, and exits 2."""
import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from chestkd.errors import ChestKDError
from chestkd.training.config import BASE_DEFAULTS
from chestkd.training.losses import MaskedAUC, MaskedBinaryCrossentropy
from chestkd.training.trainer import fit, make_optimizer

STEPS_PER_EPOCH = 3


class NaNFromCall(keras.losses.Loss):
    """Binary cross-entropy that returns NaN from its ``nan_from``-th call on (1-based)."""

    def __init__(self, nan_from):
        super().__init__(name="nan_from_call")
        self.nan_from = nan_from
        self.calls = tf.Variable(0, dtype=tf.int64, trainable=False)

    def call(self, y_true, y_pred):
        self.calls.assign_add(1)
        loss = MaskedBinaryCrossentropy()(y_true, y_pred)
        return tf.where(self.calls >= self.nan_from, tf.constant(np.nan, loss.dtype), loss)


class NaNAtInference(keras.layers.Layer):
    """Identity while training, NaN in inference mode: finite training losses, NaN logits."""

    def call(self, x, training=False):
        return x if training else x * np.nan


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 3)).astype("float32")
    y = (x.mean(axis=(1, 2))[:, :2] > 0).astype("float32")
    return (tf.data.Dataset.from_tensor_slices((x[:48], y[:48])).batch(16),  # 3 steps
            tf.data.Dataset.from_tensor_slices((x[48:], y[48:])).batch(16))


def _model(config, loss, extra_layer=None):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]
    model = keras.Sequential(layers + ([extra_layer] if extra_layer else []))
    model.compile(make_optimizer(config, STEPS_PER_EPOCH), loss,
                  metrics=[MaskedAUC(num_labels=2, name="auc")])
    return model


def test_a_nan_loss_stops_the_fit_naming_epoch_step_and_learning_rate(tmp_path):
    config = {**BASE_DEFAULTS, "epochs": 3, "learning_rate": 0.05, "schedule": "cosine"}
    train, val = _data()
    # Calls 1-3: epoch 1's steps, 4: its validation loss, 5: epoch 2 step 1, 6: step 2.
    model = _model(config, NaNFromCall(nan_from=STEPS_PER_EPOCH + 1 + 2))
    with pytest.raises(ChestKDError) as error:
        fit(model, train, val, config, tmp_path, verbose=0)
    message = str(error.value)
    assert "epoch 2 of 3" in message and "step 2 of 3" in message
    # the rate of the failing step (the 5th, index 4, of a 9-step cosine decay)
    rate = 0.05 * 0.5 * (1 + np.cos(np.pi * 4 / 9))
    assert f"learning rate {rate:g} at this step; the schedule starts at 0.05" in message
    assert "--learning-rate 0.005" in message  # a tenth of the rate the user gave
    # what the run wrote is kept: epoch 1's history row, its checkpoint, the backup to resume
    assert len(pd.read_csv(tmp_path / "history.csv")) == 1
    assert (tmp_path / "model.keras").exists() and (tmp_path / "backup").exists()
    record = json.loads((tmp_path / "diverged.json").read_text())
    assert (record["epoch"], record["step"]) == (2, 2)
    assert record["learning_rate"] == pytest.approx(rate)
    assert record["initial_learning_rate"] == pytest.approx(0.05)
    # the checkpoint is epoch 1's model, not the NaN weights of the failing step
    saved = keras.models.load_model(tmp_path / "model.keras", compile=False)
    assert all(np.isfinite(w).all() for w in saved.get_weights())


def test_non_finite_validation_logits_stop_the_fit_at_the_end_of_the_epoch(tmp_path):
    config = {**BASE_DEFAULTS, "epochs": 2, "learning_rate": 0.05, "schedule": "constant"}
    train, val = _data()
    model = _model(config, MaskedBinaryCrossentropy(), NaNAtInference())
    with pytest.raises(ChestKDError) as error:
        fit(model, train, val, config, tmp_path, verbose=0)
    message = str(error.value)
    assert "epoch 1 of 2" in message and "validation" in message
    assert "learning rate 0.05" in message
    assert json.loads((tmp_path / "diverged.json").read_text())["epoch"] == 1


def test_a_diverging_recipe_run_exits_2_with_one_line(tmp_path, capsys):
    from chestkd.recipes import base_training
    out = tmp_path / "runs"
    argv = ["--model", "conv3_student", "--epochs", "1", "--batch-size", "16",
            "--image-size", "32", "phantom_images=120", "--optimizer", "sgd",
            "--learning-rate", "1e30", "--schedule", "constant", "--out", str(out), "latency_images=2",
            "bootstrap=40", "jit_compile=false"]
    try:
        code = base_training.main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "diverged" in err and "epoch 1 of 1" in err and "(learning rate 1e+30)" in err
    assert "--learning-rate 1e+29" in err
    assert "Traceback" not in err
    # the run kept its folder and configuration
    assert len(list(out.glob("base_training-conv3_student-*/config.yaml"))) == 1


@pytest.mark.parametrize("loss_scaled", [False, True])
def test_the_learning_rate_named_is_the_last_step_s_under_mixed_precision_too(loss_scaled):
    # Regression: a LossScaleOptimizer (mixed_float16) has a plain 0.0 rate of its own, so
    # the message named the NEXT step's rate, for the schedule's start as well.
    from chestkd.training.callbacks import current_learning_rate
    from chestkd.training.optimizers import CoupledSGD
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([4], [0.1, 0.01])
    optimizer = CoupledSGD(schedule, momentum=0.9, l2=5e-4)
    if loss_scaled:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(np.ones((5, 3), "float32"), np.ones((5, 1), "float32"), batch_size=1, verbose=0)
    assert current_learning_rate(model) == pytest.approx(0.1)          # steps 0-4 ran at 0.1
    assert current_learning_rate(model, initial=True) == pytest.approx(0.1)
