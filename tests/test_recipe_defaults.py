"""The no-data defaults of ensemble_kd, assistant_kd and kd (issue 18): each recipe's own
phantom values ride on the one profile mechanism (chestkd.training.config), the paper's
settings stay one ``--config`` away, each run prints its plan, and the ensemble's feature term
is divided by the teacher features' mean square. Resolution and plans only: nothing trains."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from chestkd.errors import ConfigError  # noqa: E402
from chestkd.experiments import ensemble as ensemble_steps  # noqa: E402
from chestkd.experiments.chain import chain_options  # noqa: E402
from chestkd.recipes import assistant_kd, ensemble_kd, kd  # noqa: E402
from chestkd.training.config import PHANTOM_PROFILE, resolve_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def ensemble_config(*argv):
    return resolve_config(list(argv), ensemble_kd.DEFAULTS,
                          recipe_profiles=ensemble_kd.RECIPE_PROFILES)


def assistant_config(*argv):
    return resolve_config(list(argv), assistant_kd.DEFAULTS,
                          recipe_profiles=assistant_kd.RECIPE_PROFILES)


def test_ensemble_default_is_small_and_says_so():
    config = ensemble_config()
    assert config["profile"] == "phantom"
    assert (config["teacher"], config["branches"]) == ("resnet32", ["conv3_student",
                                                                    "baseline_cnn"])
    assert (config["image_size"], config["phantom_size"], config["phantom_images"],
            config["epochs"]) == (32, 32, 3000, 8)
    assert config["standalone"] == ["base", "kd"] and config["feature_scale"] == "teacher"
    # the rest of the phantom profile still applies (optimiser, label noise)
    assert (config["optimizer"], config["label_noise"]) == ("adam", PHANTOM_PROFILE["label_noise"])
    text = ensemble_steps.plan(config, list(ensemble_steps.ensemble_options(config).branches))
    for part in ("phantom profile", "3000 films written at 32 px", "32 px, 8 epochs",
                 "teacher resnet32: base training", "base training and standard KD from the "
                 "teacher (conv3_student, baseline_cnn)", "sum of conv3_student + baseline_cnn",
                 "mean square", "--config recipes/ensemble_kd.yaml"):
        assert part in text, part


def test_ensemble_paper_settings_are_one_config_away_and_keys_you_set_win():
    config = ensemble_config("--config", str(REPO / "recipes" / "ensemble_kd.yaml"))
    assert config["profile"] is None
    assert config["branches"] == ["mobilenet_v1", "vgg19", "resnet32", "resnet50"]
    assert (config["teacher"], config["image_size"], config["epochs"], config["optimizer"],
            config["learning_rate"], config["dataset"]) == ("densenet121", 224, 200, "sgd", 0.1,
                                                            "chestxray14")
    assert config["standalone"] == ["base", "kd"]
    mine = ensemble_config("epochs=3", "branches=[resnet32]", "standalone=[]")
    assert (mine["epochs"], mine["branches"], mine["image_size"]) == (3, ["resnet32"], 32)
    text = ensemble_steps.plan(mine, list(ensemble_steps.ensemble_options(mine).branches))
    assert "nothing (standalone=[])" in text
    # --profile papers on the phantom: neither the phantom profile nor the recipe's values
    papers = ensemble_config("--profile", "papers")
    assert (papers["branches"], papers["image_size"]) == (ensemble_steps.PAPER_BRANCHES, 224)


@pytest.mark.parametrize("argv, option", [
    (["standalone=[base, alone]"], "--standalone"), (["feature_scale=batch"], "--feature-scale"),
    (["branches=resnet32"], "--branches")])
def test_ensemble_options_are_checked_before_anything_runs(argv, option):
    with pytest.raises(ConfigError, match=option):
        ensemble_steps.ensemble_options(ensemble_config(*argv))


def test_assistant_default_is_small_and_the_yamls_keep_the_papers_settings():
    config = assistant_config()
    assert config["chain"] == [["resnet20", "baseline_cnn"], "resnet20", "conv3_student"]
    assert (config["image_size"], config["phantom_images"], config["epochs"]) == (32, 2000, 6)
    text = assistant_kd.plan(config, chain_options(config))
    for part in ("2000 films written at 32 px", "6 epochs", "teacher resnet20 + baseline_cnn",
                 "logits averaged", "resnet20 distilled from resnet20 + baseline_cnn",
                 "conv3_student distilled from resnet20", "ablation: conv3_student",
                 "--config recipes/assistant_kd.yaml"):
        assert part in text, part
    paper = assistant_config("--config", str(REPO / "recipes" / "assistant_kd.yaml"))
    assert paper["chain"] == assistant_kd.PAPER_CHAIN and paper["profile"] is None
    assert (paper["dataset"], paper["image_size"], paper["epochs"], paper["temperature"],
            paper["learning_rate"]) == ("chexpert", 224, 30, 20.0, 0.001)
    # covid19.yaml runs on the single-label phantom, so the phantom profile is chosen, but
    # every setting of the case study is in the file and wins over the recipe's phantom values
    covid = assistant_config("--config", str(REPO / "recipes" / "covid19.yaml"))
    assert covid["chain"] == ["inception_v3", "densenet121", "conv3_student"]
    assert (covid["image_size"], covid["phantom_size"], covid["phantom_images"],
            covid["epochs"], covid["temperature"]) == (299, 299, 1000, 30, 30.0)


def test_kd_default_is_the_phantom_profile_and_prints_its_plan(capsys):
    config = resolve_config([], kd.DEFAULTS, recipe_profiles=kd.RECIPE_PROFILES)
    for key in ("student", "image_size", "phantom_images"):
        assert config[key] == PHANTOM_PROFILE[key], key
    # the main job's model and schedule as the teacher (issue 18: within 8 minutes)
    assert (config["teacher"], config["batch_size"], config["epochs"]) == ("resnet20", 16, 10)
    text = kd.plan(config)
    assert "teacher resnet20: base training, 10 epochs" in text
    assert "student conv3_student distilled from it, 10 epochs" in text
    assert "3000 films written at 128 px" in text
    paper = resolve_config(["--config", str(REPO / "recipes" / "table1" /
                                             "reversed_kd-resnet152-densenet121.yaml")],
                           kd.DEFAULTS)
    assert (paper["image_size"], paper["epochs"], paper["optimizer"]) == (224, 200, "sgd")
    text = kd.plan(paper)
    # reversed: the student model (densenet121) teaches the teacher model (resnet152)
    assert "teacher densenet121" in text and "student resnet152" in text


def test_ensemble_feature_term_is_divided_by_the_teachers_mean_square(tmp_path):
    """Regression (issue 18): a ResNet-32 teacher's pooled features of values ~10^2 made the
    unscaled hint ~10^4 times the label loss. The divisor is the teacher features' mean square
    over the training images (float64 reference), and each term's weight is
    feature_weight / divisor."""
    import keras

    from chestkd.data import load_dataset
    from chestkd.data.phantom import write_phantom
    from chestkd.models import build, ensemble_student
    from chestkd.models.ensemble import features_layer
    from chestkd.training.classifier import image_options
    from chestkd.data.pipeline import make_dataset

    data = load_dataset("phantom", write_phantom(tmp_path / "p", images=40, size=32, seed=0))
    config = {**ensemble_config(), "image_size": 32, "batch_size": 8, "feature_weight": 2.0}
    keras.utils.set_random_seed(0)
    teacher = build("conv3_student", data.num_classes, (32, 32, 3), weights=None)
    layer = features_layer(teacher)
    ensemble = ensemble_steps.ensemble_options(config)
    scale = ensemble_steps.teacher_feature_scale(teacher, layer, data, config, ensemble)
    features = keras.Model(teacher.inputs, teacher.get_layer(layer).output)
    values = np.concatenate([np.asarray(features(x, training=False), np.float64) for x, *_ in
                             make_dataset(data, "train", batch_size=8, shuffle=False,
                                          **image_options(data, config))])
    np.testing.assert_allclose(scale, np.mean(values ** 2), rtol=1e-5)
    student = ensemble_student(["conv3_student", "baseline_cnn"], data.num_classes,
                               (32, 32, 3), weights=None)
    terms = ensemble_steps.pooled_feature_terms(student, layer, ensemble, scale)
    assert [t.weight for t in terms] == pytest.approx([2.0 / scale] * 2)
    unscaled = ensemble_steps.ensemble_options({**config, "feature_scale": "none"})
    assert ensemble_steps.teacher_feature_scale(teacher, layer, data, config, unscaled) == 1.0
