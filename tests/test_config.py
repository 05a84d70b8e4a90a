"""Run configuration and run directories."""
import pytest
import yaml

from chestkd.errors import ConfigError
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS, dataset_options, resolve_config
from chestkd.training.run import new_run_dir, start_run


def test_precedence_defaults_profile_yaml_flags_overrides(tmp_path):
    config_file = tmp_path / "x.yaml"
    config_file.write_text("dataset: chestxray14\nepochs: 7\nbatch_size: 8\nlabels: [Mass]\n")
    config = resolve_config(["--config", str(config_file), "--epochs", "9", "seed=3",
                             "views=[PA, AP]"], BASE_DEFAULTS)
    assert config["dataset"] == "chestxray14"
    assert config["epochs"] == 9            # flag beats file
    assert config["batch_size"] == 8        # file beats default
    assert config["seed"] == 3              # key=value, parsed as YAML
    assert config["views"] == ["PA", "AP"]
    assert config["model"] == BASE_DEFAULTS["model"]  # no phantom profile for real data
    assert dataset_options(config)["labels"] == ["Mass"]


def test_phantom_profile_applies_only_to_unset_keys():
    config = resolve_config(["--epochs", "1"], {**BASE_DEFAULTS, **KD_DEFAULTS})
    assert config["dataset"] == "phantom"
    assert config["epochs"] == 1
    assert config["model"] == "resnet32" and config["student"] == "conv3_student"
    assert config["image_size"] == 128 and config["optimizer"] == "adam"


@pytest.mark.parametrize("argv, match", [
    (["nonsense=1"], "nonsense"),
    (["novalue"], "key=value"),
    (["--config", "/no/such.yaml"], "/no/such.yaml"),
])
def test_bad_options_are_named(argv, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(argv, BASE_DEFAULTS)


def test_unknown_key_in_yaml_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochz: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*epochz"):
        resolve_config(["--config", str(path)], BASE_DEFAULTS)


def test_run_directories_are_new_every_time_and_config_is_saved(tmp_path):
    first = new_run_dir(tmp_path, "x")
    second = new_run_dir(tmp_path, "x")
    assert first != second and first.is_dir() and second.is_dir()
    config = resolve_config([f"out={tmp_path}", "epochs=2"], BASE_DEFAULTS)
    run_dir = start_run(config, "base_training")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["epochs"] == 2 and saved["recipe"] == "base_training"
    resumed = resolve_config([f"resume={run_dir}"], BASE_DEFAULTS)
    assert start_run(resumed, "base_training") == run_dir
    assert resumed["epochs"] == 2


def test_a_yaml_for_another_recipe_is_refused(tmp_path):
    path = tmp_path / "kd.yaml"
    path.write_text(f"recipe: standard_kd\nout: {tmp_path}\n")
    config = resolve_config(["--config", str(path)], BASE_DEFAULTS)
    with pytest.raises(ConfigError, match="standard_kd"):
        start_run(config, "base_training")
