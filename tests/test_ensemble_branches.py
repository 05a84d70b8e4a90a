"""Ensembles of different zoo models: each branch's feature vector is found from its logits,
and ensemble_kd resolves every layer it needs before anything trains (issue 15, defect 10:
``branches=[conv3_student, baseline_cnn]`` trained, then died on 'branch1_features_pool')."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from chestkd.distill.feature_terms import FeatureTermSet  # noqa: E402
from chestkd.errors import ConfigError  # noqa: E402
from chestkd.experiments.ensemble import EnsembleOptions, pooled_feature_terms  # noqa: E402
from chestkd.models import build, ensemble_student, feature_model  # noqa: E402
from chestkd.models.ensemble import (branch_feature_layers, branch_layer_name,  # noqa: E402
                                     features_layer)
from chestkd.models.zoo import MIN_INPUT_SIZES, available  # noqa: E402
from chestkd.recipes import ensemble_kd  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# The paper's families at their cheapest (MobileNet, VGG, ResNet) and both head kinds (pooled,
# Flatten + Dense). Every zoo model's own feature vector is checked in test_models; building
# every zoo model as a branch takes minutes on 2 cores, so the rest run with
# CHESTKD_ALL_ZOO_BRANCHES=1 (test_every_zoo_model_as_a_branch).
MIXED = ["conv3_student", "baseline_cnn", "mobilenet_v1", "vgg19", "resnet32"]
TERMS = EnsembleOptions(teacher="resnet32", branches=("conv3_student",), combine="sum",
                        feature_distance="mse", feature_weight=1.0, feature_scale="none",
                        standalone=())


def _expected_feature_layer(name: str) -> str:
    return "fc1_relu" if name == "baseline_cnn" else "features_pool"


def _assert_each_branch_reads_its_feature_vector(model, names, size):
    """Branch i's logits == its feature vector @ W_i + b_i (float64), and the names."""
    layers = branch_feature_layers(model)
    assert layers == [branch_layer_name(i, _expected_feature_layer(n)) for i, n in
                      enumerate(names)]
    logits = [branch_layer_name(i, "logits") for i in range(len(names))]
    images = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    outputs = [np.asarray(o, np.float64) for o in feature_model(model, layers + logits)(images)]
    for i, name in enumerate(logits):
        kernel, bias = (np.asarray(w, np.float64) for w in model.get_layer(name).get_weights())
        expected = outputs[i] @ kernel + bias
        np.testing.assert_allclose(outputs[len(names) + i], expected, rtol=1e-4,
                                   atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_mixed_branches_find_their_features_and_the_recipe_terms_resolve():
    keras.utils.set_random_seed(0)
    model = ensemble_student(MIXED, 3, (32, 32, 3))
    _assert_each_branch_reads_its_feature_vector(model, MIXED, 32)
    # the recipe's terms against a pooled teacher and against a Flatten-head teacher
    for teacher_name, teacher_layer in (("resnet32", "features_pool"),
                                        ("baseline_cnn", "fc1_relu")):
        teacher = build(teacher_name, 3, (32, 32, 3))
        assert features_layer(teacher) == teacher_layer
        terms = pooled_feature_terms(model, teacher_layer, TERMS)
        assert [t.student_layer for t in terms] == branch_feature_layers(model)
        assert [t.name for t in terms] == [f"feature_branch{i}_pool" for i in range(5)]
        FeatureTermSet(terms, model, [teacher])  # every name and shape resolves


def test_the_issue_ensemble_distils_with_a_feature_term_per_branch():
    """One Distiller step of [conv3_student, baseline_cnn] from resnet32, the issue's case."""
    from chestkd.distill import Distiller, KDLoss
    keras.utils.set_random_seed(0)
    names = ["conv3_student", "baseline_cnn"]
    model = ensemble_student(names, 3, (32, 32, 3))
    teacher = build("resnet32", 3, (32, 32, 3))
    terms = pooled_feature_terms(model, "features_pool", TERMS)
    assert [t.student_layer for t in terms] == ["branch0_features_pool", "branch1_fc1_relu"]
    distiller = Distiller(model, teachers=[teacher], loss=KDLoss("sigmoid", 4.0, 0.5),
                            feature_terms=terms)
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    y = (rng.random((8, 3)) < 0.5).astype(np.float32)
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    for name in ("feature_branch0_pool", "feature_branch1_pool"):
        assert np.isfinite(history[name][0]) and history[name][0] > 0


def _without_logits_layer(path):
    """A saved model whose classifier is not called 'logits' (a user's own network)."""
    image = keras.Input((32, 32, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(image))
    keras.Model(image, keras.layers.Dense(3, name="scores")(x)).save(path)
    return path


def test_a_missing_layer_is_a_config_error_before_anything_trains(tmp_path, capsys):
    teacher = _without_logits_layer(tmp_path / "teacher.keras")
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_code:
        ensemble_kd.main([
            "--teacher", str(teacher), "branches=[conv3_student, baseline_cnn]", "--epochs", "1",
            "--batch-size", "16", "--image-size", "32", "phantom_images=60", "--out", str(out),
            "--teachers-dir", str(out / "teachers"), "labels=[Effusion, Cardiomegaly, Mass]"])
    assert exit_code.value.code == 2
    error = capsys.readouterr().err
    assert "teacher" in error and str(teacher) in error and "'logits'" in error
    assert not (out / "teachers").exists()  # no branch model was trained
    assert not list(out.rglob("history.csv"))
    image = keras.Input((8, 8, 3))
    four_d = keras.Model(image, keras.layers.Dense(2, name="logits")(image))
    with pytest.raises(ConfigError, match="branch 1 .*'logits' does not read one"):
        features_layer(four_d, model_label="branch 1 (x)")


@pytest.mark.skipif(os.environ.get("CHESTKD_ALL_ZOO_BRANCHES") != "1",
                    reason="minutes on 2 CPU cores; set CHESTKD_ALL_ZOO_BRANCHES=1")
@pytest.mark.parametrize("name", sorted(set(available()) - set(MIXED)))
def test_every_zoo_model_as_a_branch(name):
    size = max(32, MIN_INPUT_SIZES[name])
    names = ["baseline_cnn", name]  # the model as a non-first branch, next to a Flatten head
    model = ensemble_student(names, 2, (size, size, 3))
    _assert_each_branch_reads_its_feature_vector(model, names, size)
    teacher = build("conv3_student", 2, (size, size, 3))
    FeatureTermSet(pooled_feature_terms(model, "features_pool", TERMS), model,
                   [teacher])
