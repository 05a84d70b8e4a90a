"""The ensemble student: flat, its output the sum (or mean) of its branches' logits."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from chestkd.errors import ConfigError  # noqa: E402
from chestkd.models import build, ensemble_branches, ensemble_student, feature_model  # noqa
from chestkd.models.zoo import count_params  # noqa: E402

SHAPE = (32, 32, 3)


def images(seed=0, n=3):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *SHAPE)).astype(np.float32)


def test_output_is_the_sum_or_mean_of_the_branches_and_the_model_is_flat(tmp_path):
    keras.utils.set_random_seed(0)
    model = ensemble_student(["conv3_student", "resnet32", "conv3_student"], 4, SHAPE)
    assert [b.zoo_name for b in model.branches] == ["conv3_student", "resnet32", "conv3_student"]
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    x = images()
    branch_logits = [np.asarray(branch(x), np.float64) for branch in model.branches]
    np.testing.assert_allclose(model(x), sum(branch_logits), rtol=1e-5, atol=1e-6)
    assert not np.allclose(branch_logits[0], branch_logits[2])  # own weights per branch
    # Parameters: the branches' sum (the add layer has none), each like its zoo model.
    assert count_params(model) == sum(count_params(build(n, 4, SHAPE)) for n in
                                      ("conv3_student", "resnet32", "conv3_student"))
    # The branches share the ensemble's layers: changing one changes the ensemble output.
    kernel = model.get_layer("branch1_logits").kernel
    kernel.assign(kernel.numpy() + 1.0)
    assert not np.allclose(model.branches[1](x), branch_logits[1])
    np.testing.assert_allclose(model(x), sum(np.asarray(b(x), np.float64) for b in
                                             model.branches), rtol=1e-5, atol=1e-5)
    # Pooled features of each branch are reachable by name (feature distillation).
    pooled = feature_model(model, ["branch0_features_pool", "branch1_features_pool"])(x)
    assert pooled[0].shape == (3, 128) and pooled[1].shape == (3, 64)
    # Saved and loaded: the same function, branches recovered by name.
    path = tmp_path / "ensemble.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x), model(x), rtol=1e-6)
    for branch, again in zip(model.branches, ensemble_branches(loaded)):
        np.testing.assert_allclose(again(x), branch(x), rtol=1e-6)

    averaged = ensemble_student(["conv3_student", "conv3_student"], 4, SHAPE, combine="mean")
    np.testing.assert_allclose(averaged(x), np.mean([np.asarray(b(x), np.float64)
                                                     for b in averaged.branches], 0),
                               rtol=1e-5, atol=1e-6)


def test_bad_options_raise_config_errors():
    with pytest.raises(ConfigError, match="combine"):
        ensemble_student(["conv3_student"], 2, SHAPE, combine="max")
    with pytest.raises(ConfigError, match="branches"):
        ensemble_student("conv3_student", 2, SHAPE)
    with pytest.raises(ConfigError, match="Unknown model"):
        ensemble_student(["conv3_student", "alexnet"], 2, SHAPE)
    with pytest.raises(ConfigError, match="weights"):
        ensemble_student(["conv3_student"], 2, SHAPE, weights=[None, None])
    with pytest.raises(ConfigError, match="not an ensemble"):
        ensemble_branches(build("conv3_student", 2, SHAPE))
