"""The fit loop: checkpoints of the best model, wall time, and resume after an interruption."""
import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from chestkd.training.config import BASE_DEFAULTS
from chestkd.training.losses import MaskedAUC, MaskedBinaryCrossentropy
from chestkd.training.trainer import fit, make_optimizer


class Interrupt(keras.callbacks.Callback):
    def __init__(self, after_epoch):
        super().__init__()
        self.after_epoch = after_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after_epoch:
            raise KeyboardInterrupt("simulated interruption")


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8, 8, 3)).astype("float32")
    y = (x.mean(axis=(1, 2))[:, :2] > 0).astype("float32")
    return (tf.data.Dataset.from_tensor_slices((x[:48], y[:48])).batch(16),
            tf.data.Dataset.from_tensor_slices((x[48:], y[48:])).batch(16))


def _model(config):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    model.compile(make_optimizer(config, 3), MaskedBinaryCrossentropy(),
                  metrics=[MaskedAUC(num_labels=2, name="auc")])
    return model


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    config = {**BASE_DEFAULTS, "epochs": 4, "learning_rate": 0.05, "schedule": "step"}
    train, val = _data()
    with pytest.raises(KeyboardInterrupt):
        fit(_model(config), train, val, config, tmp_path, verbose=0,
            extra_callbacks=[Interrupt(after_epoch=1)])
    assert len(pd.read_csv(tmp_path / "history.csv")) == 2
    assert (tmp_path / "backup").exists()
    resumed = _model(config)
    fit(resumed, train, val, config, tmp_path, verbose=0)
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    assert int(resumed.optimizer.iterations.numpy()) == 4 * 3  # not restarted at step 0
    # an uninterrupted run with the same seed ends with the same weights
    reference_dir = tmp_path / "reference"
    reference = _model(config)
    fit(reference, train, val, config, reference_dir, verbose=0)
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["value"] == pytest.approx(history["val_auc"].max())
    saved = keras.models.load_model(tmp_path / "model.keras", compile=False)
    assert saved.count_params() == resumed.count_params()


def test_step_schedule_divides_by_ten_at_half_and_three_quarters():
    config = {**BASE_DEFAULTS, "epochs": 4, "learning_rate": 0.1, "schedule": "step"}
    optimizer = make_optimizer(config, steps_per_epoch=10)
    schedule = optimizer._learning_rate  # the LearningRateSchedule object
    values = [float(schedule(step)) for step in (0, 19, 21, 29, 31, 39)]
    np.testing.assert_allclose(values, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
