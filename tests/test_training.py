"""The fit loop: checkpoints of the best model, wall time, and resume after an interruption."""
import json
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from chestkd.errors import ConfigError
from chestkd.training.config import BASE_DEFAULTS
from chestkd.training.losses import MaskedAUC, MaskedBinaryCrossentropy
from chestkd.training.trainer import fit, make_optimizer, resolve_jit_compile, resolve_verbose


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
    # Regression: the first step of epoch 3 (step 20, read before the count moves on) still
    # ran at the old rate, one step later than the step_epochs branch decays.
    config = {**BASE_DEFAULTS, "epochs": 4, "learning_rate": 0.1, "schedule": "step"}
    optimizer = make_optimizer(config, steps_per_epoch=10)
    schedule = optimizer._learning_rate  # the LearningRateSchedule object
    values = [float(schedule(step)) for step in (0, 19, 20, 29, 30, 39)]
    np.testing.assert_allclose(values, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    # The same epochs as step_epochs [2, 3] give, step for step.
    listed = make_optimizer({**config, "step_epochs": [2, 3]}, 10)._learning_rate
    assert [float(listed(step)) for step in range(40)] == \
        [float(schedule(step)) for step in range(40)]


# --------------------------------------------------------------------------- XLA
class PyFuncLayer(keras.layers.Layer):
    """An op XLA cannot compile (a Python callback)."""

    def call(self, x):
        y = tf.numpy_function(lambda a: a, [x], tf.float32)
        y.set_shape(x.shape)
        return y

    def compute_output_shape(self, shape):
        return shape


def _conv_model(extra_layer=None):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    if extra_layer is not None:
        h = extra_layer(h)
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Dropout(0.2)(h))
    return keras.Model(inputs, keras.layers.Dense(2)(h), name="probe_me")


@pytest.fixture
def with_gpu(monkeypatch):
    """``auto`` probes XLA only where an accelerator is present: pretend there is one."""
    from chestkd.training import trainer
    monkeypatch.setattr(trainer, "accelerator_present", lambda: True)


def test_jit_compile_auto_is_off_on_a_cpu_only_machine(capsys, monkeypatch):
    from chestkd.training import trainer
    monkeypatch.setattr(trainer, "accelerator_present", lambda: False)
    config = {"jit_compile": "auto"}
    assert resolve_jit_compile(config, _conv_model()) is False
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "CPU only" in printed[0]
    assert resolve_jit_compile({"jit_compile": True}, _conv_model()) is True


def test_jit_compile_auto_uses_xla_when_the_model_compiles(capsys, with_gpu):
    model = _conv_model()
    state = [np.array(v.numpy()) for v in model.non_trainable_variables]
    config = {"jit_compile": "auto"}
    assert resolve_jit_compile(config, model) is True
    assert "_jit_compile_resolved" not in config  # returned, never written into the options
    assert capsys.readouterr().out == ""
    # The probe moved no BatchNorm statistic and no dropout seed.
    for before, variable in zip(state, model.non_trainable_variables):
        np.testing.assert_array_equal(before, variable.numpy())
    for given, expected in ((True, True), (False, False), ("true", True), ("False", False)):
        config = {"jit_compile": given}
        assert resolve_jit_compile(config, model) is expected
    with pytest.raises(ConfigError, match="jit-compile"):
        resolve_jit_compile({"jit_compile": "sometimes"}, model)


def test_jit_compile_auto_falls_back_with_one_line_saying_why(capsys, with_gpu):
    config = {"jit_compile": "auto"}
    assert resolve_jit_compile(config, _conv_model(PyFuncLayer())) is False
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "probe_me" in printed[0] and "PyFunc" in printed[0]


def test_compile_classifier_compiles_with_the_resolved_jit(monkeypatch, with_gpu):
    from types import SimpleNamespace

    from chestkd.training import classifier
    monkeypatch.setattr(classifier, "steps_per_epoch", lambda *args, **kwargs: 3)
    data = SimpleNamespace(multi_label=True, num_classes=2)
    for option, expected in ((False, False), ("auto", True)):
        config = {**BASE_DEFAULTS, "jit_compile": option}
        model = classifier.compile_classifier(_conv_model(), data, config)
        assert model.jit_compile is expected
    train, _ = _data()
    history = model.fit(train, epochs=1, verbose=0, shuffle=False)  # under XLA
    assert np.isfinite(history.history["loss"][0])


# --------------------------------------------------------------------- fit options
def test_verbose_auto_is_one_line_per_epoch_unless_on_a_terminal(monkeypatch):
    class Stream:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

        def write(self, text):
            pass

    monkeypatch.setattr(sys, "stdout", Stream(False))
    assert resolve_verbose("auto") == 2
    monkeypatch.setattr(sys, "stdout", Stream(True))
    assert resolve_verbose("auto") == 1
    assert resolve_verbose(0) == 0


def test_keep_backup_lets_a_finished_run_continue_later(tmp_path):
    """A teacher kept at epoch 2 of a 4-epoch schedule continues to epoch 4 later."""
    config = {**BASE_DEFAULTS, "epochs": 4, "learning_rate": 0.05, "schedule": "step"}
    train, val = _data()
    fit(_model(config), train, val, config, tmp_path, epochs=2, verbose=0, keep_backup=True)
    assert (tmp_path / "backup").exists()
    continued = _model(config)
    fit(continued, train, val, config, tmp_path, verbose=0)
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [0, 1, 2, 3]
    assert int(continued.optimizer.iterations.numpy()) == 4 * 3
    assert not (tmp_path / "backup").exists()  # the default removes it at the end
    reference = _model(config)
    fit(reference, train, val, config, tmp_path / "reference", verbose=0)
    for a, b in zip(continued.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_step_epochs_divide_by_ten_after_the_listed_epochs():
    config = {**BASE_DEFAULTS, "epochs": 50, "learning_rate": 0.1, "schedule": "step",
              "step_epochs": [25, 40]}
    schedule = make_optimizer(config, steps_per_epoch=10)._learning_rate
    values = [float(schedule(step)) for step in (0, 249, 250, 399, 400, 499)]
    np.testing.assert_allclose(values, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    with pytest.raises(ConfigError, match="step-epochs"):
        make_optimizer({**config, "step_epochs": [40, 25]}, 10)


def test_step_epochs_past_the_schedule_are_named_with_what_happens_instead(capsys):
    config = {**BASE_DEFAULTS, "epochs": 6, "learning_rate": 0.1, "schedule": "step",
              "step_epochs": [25, 40]}
    schedule = make_optimizer(config, steps_per_epoch=10)._learning_rate
    assert "step_epochs: epoch(s) 25, 40 not before the end of the 6-epoch schedule; x0.1 " \
           "after epoch 3 (half) instead" in capsys.readouterr().out
    assert [float(schedule(s)) for s in (29, 30)] == pytest.approx([0.1, 0.01])
    make_optimizer({**config, "step_epochs": [2, 40]}, 10)
    assert "epoch(s) 40 not before the end of the 6-epoch schedule\n" in capsys.readouterr().out


def test_checkpoint_last_keeps_the_final_epoch_of_a_continued_fit(tmp_path):
    # Regression: last (and average) still saved only on a better val_auc, measured against
    # the stop epoch's best.json, so a fit continued with more epochs kept the older model.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8, 8, 1)).astype("float32")
    y = np.stack([x.mean(axis=(1, 2, 3)) > 0] * 2, 1).astype("float32")
    y[:, 1] = 1 - y[:, 0]
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    val = tf.data.Dataset.from_tensor_slices((x, 1 - y)).batch(8)  # worse as it learns
    config = {**BASE_DEFAULTS, "epochs": 2, "learning_rate": 0.05, "schedule": "constant",
              "checkpoint": "last", "weight_decay": 0.0}
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.05), MaskedBinaryCrossentropy())
    first = fit(model, train, val, config, tmp_path, verbose=0, keep_backup=True)
    second = fit(model, train, val, config, tmp_path, epochs=3, verbose=0, keep_backup=True)
    assert second.history["val_auc"][-1] < max(first.history["val_auc"])
    saved = keras.models.load_model(tmp_path / "model.keras", compile=False)
    for a, b in zip(saved.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert json.loads((tmp_path / "best.json").read_text())["epoch"] == 3


class StopAfter(keras.callbacks.Callback):
    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            self.model.stop_training = True


def test_a_fit_stopped_early_averages_on_the_schedule_s_window(tmp_path):
    # Regression: checkpoint average took its window from the stop epoch, so a defective
    # teacher's copy trained to epoch 6 of 12 averaged from epoch 5 on, and the BatchNorm
    # re-estimation's passes moved the data order: its epoch-6 checkpoint was not the full
    # schedule's epoch-6 checkpoint.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    y = (rng.random((16, 2)) < 0.5).astype("float32")
    config = {**BASE_DEFAULTS, "epochs": 12, "learning_rate": 0.05, "schedule": "constant",
              "checkpoint": "average", "weight_decay": 0.0}

    def epoch_6(folder, **fit_options):
        keras.utils.set_random_seed(5)
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
                                  keras.layers.BatchNormalization(),
                                  keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9), MaskedBinaryCrossentropy())
        train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
            16, seed=1, reshuffle_each_iteration=True).batch(4)
        val = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
        fit(model, train, val, config, tmp_path / folder, verbose=0, snapshot_epochs=[6],
            **fit_options)
        return keras.models.load_model(tmp_path / folder / "snapshots" / "epoch-0006.keras",
                                       compile=False).get_weights()

    full = epoch_6("full", extra_callbacks=[StopAfter(6)])
    for a, b in zip(full, epoch_6("until6", epochs=6)):
        np.testing.assert_array_equal(a, b)


def test_fit_prints_the_expected_time_of_the_schedule_and_later_stages(tmp_path, capsys):
    config = {**BASE_DEFAULTS, "epochs": 3, "learning_rate": 0.05, "schedule": "constant"}
    train, val = _data()
    fit(_model(config), train, val, config, tmp_path, verbose=0,
        later_stages=[{"name": "distillation", "epochs": 5}])
    lines = [line for line in capsys.readouterr().out.splitlines() if "expected" in line]
    assert len(lines) == 2  # after the first epoch, then after a steady one
    assert lines[0].startswith("epoch 1 of 3 took ") and lines[1].startswith("epoch 2 of 3")
    assert all("for this 3-epoch fit" in line for line in lines)
    assert all("then distillation: 5 epoch(s), about " in line for line in lines)
    # the schedule's estimate is at least the first epoch, which history.csv also timed
    seconds = pd.read_csv(tmp_path / "history.csv")["epoch_seconds"]
    printed = float(lines[0].split(" took ")[1].split(" s ")[0])
    assert printed == pytest.approx(seconds.iloc[0], abs=0.15)


def test_a_backup_damaged_while_written_resumes_from_the_epoch_before(tmp_path):
    # Regression: a run killed while BackupAndRestore wrote latest.weights.h5 could not be
    # resumed (OSError: bad object header); the previous epoch's copy is now kept.
    config = {**BASE_DEFAULTS, "epochs": 3, "learning_rate": 0.05, "schedule": "constant"}
    train, val = _data()
    fit(_model(config), train, val, config, tmp_path, epochs=2, verbose=0, keep_backup=True)
    latest = next((tmp_path / "backup").glob("latest*.h5"))
    latest.write_bytes(latest.read_bytes()[:100])            # cut off mid-write
    resumed = _model(config)
    fit(resumed, train, val, config, tmp_path, verbose=0)
    epochs = pd.read_csv(tmp_path / "history.csv")["epoch"].tolist()
    assert epochs == [0, 1, 1, 2]                           # epoch 2 again, from epoch 1
    assert int(resumed.optimizer.iterations.numpy()) == 3 * 3


def test_a_fit_that_had_finished_is_not_trained_again(tmp_path, capsys):
    # A run stopped after its fit ended but before its caller marked the stage trained again
    # from epoch 1 on resume (Keras had removed the backup) and logged every epoch twice.
    config = {**BASE_DEFAULTS, "epochs": 3, "learning_rate": 0.05, "schedule": "step"}
    train, val = _data()
    assert fit(_model(config), train, val, config, tmp_path, verbose=0) is not None
    saved = (tmp_path / "model.keras").read_bytes()
    assert fit(_model(config), train, val, config, tmp_path, verbose=0) is None
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [0, 1, 2]
    assert (tmp_path / "model.keras").read_bytes() == saved
    assert "training had finished (history.csv reaches epoch 3); not trained again" in \
        capsys.readouterr().out
    # a longer schedule in the same folder is no finished fit
    from chestkd.training.trainer import trained_before
    assert trained_before(tmp_path, 3) and not trained_before(tmp_path, 4)
