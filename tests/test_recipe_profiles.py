"""Every recipe's no-data default rides on the one phantom-profile mechanism (issue 17, 18):
``resolve_config(..., recipe_profiles=RECIPE_PROFILES)`` lays the recipe's own values over the
phantom profile, explicit flags, key=value pairs and YAML keys win over them, and each
recipe's YAML still sets the paper's value of every key the profile changes. Resolution and
plans only: nothing trains."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from chestkd.recipes import assistant_kd, ensemble_kd, kd, ros_kd, self_training  # noqa: E402
from chestkd.training.config import PHANTOM_PROFILE, resolve_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROFILED = {"ensemble_kd": ensemble_kd, "assistant_kd": assistant_kd, "ros_kd": ros_kd,
            "self_training": self_training, "kd": kd}
# The paper's settings of a recipe without a YAML of its own: a cell of Table 1.
PAPER_YAML = {"self_training": "table1/self_training-densenet121.yaml",
              "kd": "table1/standard_kd-resnet152-densenet121.yaml"}
# What each no-data default trains (the values chosen to finish within minutes on 2 cores).
EXPECTED = {
    "kd": {"teacher": "resnet20", "student": "conv3_student", "batch_size": 16, "epochs": 10,
           "image_size": 128},
    "self_training": {"model": "resnet20", "batch_size": 16, "epochs": 10, "image_size": 128,
                      "phantom_images": 3000, "label_noise": 0.1},
    "ensemble_kd": {"teacher": "resnet32", "branches": ["conv3_student", "baseline_cnn"],
                    "image_size": 32, "phantom_size": 32, "phantom_images": 3000,
                    "epochs": 8, "standalone": ["base", "kd"]},
    "assistant_kd": {"chain": [["resnet20", "baseline_cnn"], "resnet20", "conv3_student"],
                     "image_size": 32, "phantom_size": 32, "phantom_images": 2000,
                     "epochs": 6, "ablation": True},
    "ros_kd": {"teachers": ["resnet32", "baseline_cnn", "conv3_student"], "subsets": 3,
               "kd_teacher": "resnet32", "student": "conv3_student", "image_size": 32,
               "phantom_size": 32, "phantom_images": 3000, "epochs": 6, "averaging_start": 3,
               "studies": ["table1"], "baselines": ["I", "II", "III", "IV", "V"]},
}


def resolved(name, *argv):
    module = PROFILED[name]
    return resolve_config(list(argv), module.DEFAULTS, recipe_profiles=module.RECIPE_PROFILES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_no_data_default_is_the_recipes_profile(name):
    config = resolved(name)
    assert config["profile"] == "phantom" and config["dataset"] == "phantom"
    assert {key: config[key] for key in EXPECTED[name]} == EXPECTED[name]
    # the rest of the phantom profile still applies
    assert (config["optimizer"], config["label_noise"]) == ("adam",
                                                           PHANTOM_PROFILE["label_noise"])


def test_ros_kd_run_resolves_its_profile_through_the_one_mechanism(monkeypatch):
    """Regression (issue 17): ros_kd laid PHANTOM_ROS over the config by hand after
    resolve_config (the phantom's 128 px, 3,000 films, 15 epochs and all seven studies
    stayed); ``run`` now resolves it like every recipe."""
    class Started(Exception):
        """Raised where the run would make its folder, carrying the resolved configuration."""

    def open_run(options, recipe):
        raise Started(dict(options.config))

    def resolved_by_run(argv):
        with pytest.raises(Started) as started:
            ros_kd.run(argv)
        return started.value.args[0]

    monkeypatch.setattr(ros_kd, "open_run", open_run)
    config = resolved_by_run([])
    assert {key: config[key] for key in EXPECTED["ros_kd"]} == EXPECTED["ros_kd"]
    mine = resolved_by_run(["--epochs", "2", "subsets=2", "--image-size", "48",
                            "studies=[table1,robustness]", "teachers=[conv3_student]"])
    assert (mine["epochs"], mine["subsets"], mine["image_size"], mine["studies"],
            mine["teachers"]) == (2, 2, 48, ["table1", "robustness"], ["conv3_student"])
    assert (mine["phantom_images"], mine["kd_teacher"]) == (3000, "resnet32")


@pytest.mark.parametrize("name, argv, expected", [
    ("self_training", ["--model", "resnet32", "--batch-size", "32"],
     {"model": "resnet32", "batch_size": 32, "epochs": 10, "image_size": 128}),
    ("ensemble_kd", ["--epochs", "3", "--image-size", "64", "standalone=[base]"],
     {"epochs": 3, "image_size": 64, "standalone": ["base"], "phantom_images": 3000}),
    ("assistant_kd", ["epochs=2", "ablation=false", "phantom_images=500"],
     {"epochs": 2, "ablation": False, "phantom_images": 500, "image_size": 32}),
    ("ros_kd", ["--averaging-start", "1", "baselines=[I,III]", "student=baseline_cnn"],
     {"averaging_start": 1, "baselines": ["I", "III"], "student": "baseline_cnn",
      "epochs": 6}),
])
def test_explicit_options_win_over_the_profile(name, argv, expected):
    config = resolved(name, *argv)
    assert {key: config[key] for key in expected} == expected


def test_a_yaml_on_the_phantom_wins_over_the_profile(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("epochs: 5\nsubsets: 4\nstudies: [table1, noise]\n")
    config = resolved("ros_kd", "--config", str(mine))
    assert config["profile"] == "phantom"
    assert (config["epochs"], config["subsets"], config["studies"]) == (5, 4, ["table1", "noise"])
    assert config["teachers"] == EXPECTED["ros_kd"]["teachers"]  # not in the file


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_profile_papers_and_the_yaml_keep_the_papers_settings(name):
    module = PROFILED[name]
    papers = resolved(name, "--profile", "papers")
    profile = module.RECIPE_PROFILES["phantom"]
    for key in profile:
        assert papers[key] == module.DEFAULTS[key], key
    # Every key the profile changes (but the phantom's own) is set in the recipe's YAML, so
    # the paper's run never depends on a default.
    yaml = PAPER_YAML.get(name, f"{name}.yaml")
    paper = resolved(name, "--config", str(REPO / "recipes" / yaml))
    assert paper["profile"] is None and paper["dataset"] != "phantom"
    missing = [k for k in profile if not k.startswith("phantom_") and k not in paper["_explicit"]]
    assert not missing, f"recipes/{yaml} does not set {missing}"


def test_ros_kd_paper_values_and_plan():
    paper = resolved("ros_kd", "--config", str(REPO / "recipes" / "ros_kd.yaml"))
    assert (paper["subsets"], paper["image_size"], paper["epochs"], paper["averaging_start"],
            paper["student"], paper["kd_teacher"]) == (5, 224, 50, 10, "resnet18",
                                                       "densenet121")
    assert paper["teachers"] == ros_kd.PAPER_TEACHERS and len(paper["studies"]) == 7
    assert ros_kd.demo_note(paper) == ""
    config = resolved("ros_kd")
    text = ros_kd.plan(config)
    for part in ("phantom profile", "3000 films written at 32 px", "32 px, 6 epochs",
                 "K = 3 teachers (resnet32, baseline_cnn, conv3_student)",
                 "II standard KD from resnet32", "weight averaging after epoch 3",
                 "studies: table1 (of", "--config recipes/ros_kd.yaml"):
        assert part in text, part
    assert "NOT the paper's numbers" in ros_kd.demo_note(config)


def test_kd_default_is_the_phantom_profile():
    config = resolve_config([], kd.DEFAULTS)
    assert config["profile"] == "phantom"
    for key in ("teacher", "student", "image_size", "phantom_images", "epochs"):
        assert config[key] == PHANTOM_PROFILE[key], key
    assert resolve_config(["--epochs", "2"], kd.DEFAULTS)["epochs"] == 2
