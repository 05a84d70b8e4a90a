"""A ``.keras`` model keeps the dtype policy it was saved with, whatever the run's
``mixed_precision`` says. Loss scaling used to follow the outer model's (the global) policy:
a file saved by a mixed_float16 run trained its float16 convolutions without a
LossScaleOptimizer in a float32 run (small gradients flush to zero silently), and a float32
file was loss-scaled in a mixed run. Now the layers decide, and one line says when a model's
precision is not the run's.
"""
from __future__ import annotations

from types import SimpleNamespace

import keras
import numpy as np
import pytest

from chestkd.distill import Distiller, KDLoss
from chestkd.training import classifier
from chestkd.training.config import BASE_DEFAULTS
from chestkd.training.optimizers import CoupledSGD
from chestkd.training.run import load_model

CASES = [  # (policy the file was saved with, the run's mixed_precision)
    ("mixed_float16", False), ("float32", True), ("mixed_float16", True), ("float32", False)]


def _model(name):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(2, dtype="float32")(h), name=name)


@pytest.fixture
def saved(tmp_path):
    """{policy: path of a model saved under it}; the global policy restored afterwards."""
    previous = keras.mixed_precision.global_policy()
    paths = {}
    try:
        for policy in ("mixed_float16", "float32"):
            keras.mixed_precision.set_global_policy(policy)
            paths[policy] = tmp_path / f"{policy}.keras"
            _model(f"saved_{policy}").save(paths[policy])
        yield paths
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _run(mixed_precision):
    config = {**BASE_DEFAULTS, "mixed_precision": mixed_precision, "jit_compile": False}
    classifier.set_precision(config)
    return config


@pytest.mark.parametrize("saved_as, run_mixed", CASES)
def test_the_classifier_is_loss_scaled_as_its_layers_compute(saved, monkeypatch, capsys,
                                                             saved_as, run_mixed):
    monkeypatch.setattr(classifier, "steps_per_epoch", lambda *args, **kwargs: 3)
    config = _run(run_mixed)
    model = load_model(saved[saved_as])
    float16 = saved_as == "mixed_float16"
    capsys.readouterr()
    classifier.compile_classifier(model, SimpleNamespace(multi_label=True, num_classes=2),
                                  config)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) is float16
    printed = capsys.readouterr().out.strip().splitlines()
    if float16 == run_mixed:
        assert printed == []
    else:
        assert printed == [
            f"saved_{saved_as} computes in {'float16' if float16 else 'float32'} as it was "
            f"saved, though mixed_precision is {'on' if run_mixed else 'off'}: trained "
            f"{'with' if float16 else 'without'} loss scaling"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    y = (rng.random((8, 2)) < 0.5).astype("float32")
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("saved_as, run_mixed", CASES)
def test_the_distiller_is_loss_scaled_as_its_student_computes(saved, capsys, saved_as,
                                                              run_mixed):
    _run(run_mixed)
    distiller = Distiller(load_model(saved[saved_as]), None, loss=KDLoss("sigmoid"))
    capsys.readouterr()
    distiller.compile(CoupledSGD(0.1))
    float16 = saved_as == "mixed_float16"
    assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer) is float16
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == (0 if float16 == run_mixed else 1)
    if printed:
        assert printed[0].startswith(f"saved_{saved_as} computes in ")


def test_a_model_built_in_the_run_is_loss_scaled_as_before(saved, capsys):
    for run_mixed in (True, False):
        _run(run_mixed)
        distiller = Distiller(_model("fresh"), None, loss=KDLoss("sigmoid"))
        distiller.compile(CoupledSGD(0.1))
        assert isinstance(distiller.optimizer,
                          keras.optimizers.LossScaleOptimizer) is run_mixed
    assert capsys.readouterr().out == ""


def test_the_layers_not_the_outer_policy_tell_float16(saved):
    from chestkd.training.optimizers import computes_in_float16
    for run_mixed in (True, False):
        _run(run_mixed)  # the outer model and its input layer take the global policy
        assert computes_in_float16(load_model(saved["mixed_float16"])) is True
        assert computes_in_float16(load_model(saved["float32"])) is False
