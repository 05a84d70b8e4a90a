"""Named profiles (``--profile``), the automatic small-real profile, and ``checkpoint``."""
import importlib
import json

import cv2
import numpy as np
import pytest
import yaml

from chestkd.errors import ConfigError
from chestkd.training.config import (BASE_DEFAULTS, PHANTOM_PROFILE, SMALL_REAL_IMAGENET,
                                     SMALL_REAL_MAX_TRAIN_IMAGES, SMALL_REAL_PROFILE,
                                     apply_small_data_profile, check_config, config_id,
                                     resolve_config)

RECIPES = ("base_training", "kd", "self_training", "standard_kd", "reversed_kd", "defective_kd",
           "ensemble_kd", "assistant_kd", "ros_kd", "transfer_learning")




@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_takes_the_small_real_profile_and_keeps_what_the_user_set(recipe):
    defaults = importlib.import_module(f"chestkd.recipes.{recipe}").DEFAULTS
    config = resolve_config(["--profile", "small-real", "--dataset", "folder", "--epochs", "3",
                             "batch_size=8"], defaults)
    assert config["profile"] == "small-real"
    for key, value in SMALL_REAL_PROFILE.items():
        if key in defaults and key not in ("epochs", "batch_size"):
            assert config[key] == value, key
    assert config["epochs"] == 3 and config["batch_size"] == 8
    check_config(config)


def test_profile_from_a_yaml_file_and_the_papers_profile(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("profile: small-real\nlearning_rate: 0.01\n")
    config = resolve_config(["--config", str(path), "--dataset", "csv"], BASE_DEFAULTS)
    assert config["model"] == "conv3_student" and config["learning_rate"] == 0.01
    papers = resolve_config(["--profile", "papers", "--dataset", "csv"], BASE_DEFAULTS)
    assert papers["model"] == "densenet121" and papers["epochs"] == 200
    assert papers["checkpoint"] == "best_val"
    # the phantom keeps its own profile by default, and can be given explicitly
    phantom = resolve_config([], BASE_DEFAULTS)
    assert phantom["profile"] == "phantom" and phantom["model"] == PHANTOM_PROFILE["model"]


def test_small_real_with_imagenet_weights_fine_tunes_densenet121():
    config = resolve_config(["--profile", "small-real", "--dataset", "folder",
                             "--weights", "imagenet"], BASE_DEFAULTS)
    for key, value in SMALL_REAL_IMAGENET.items():
        assert config[key] == value, key
    assert config["model"] == "densenet121" and config["checkpoint"] == "average"


def test_an_unknown_profile_is_an_error_naming_the_option():
    with pytest.raises(ConfigError, match="--profile 'tiny'.*small-real"):
        resolve_config(["--profile", "tiny", "--dataset", "folder"], BASE_DEFAULTS)
    with pytest.raises(ConfigError, match="--checkpoint"):
        check_config(resolve_config(["--checkpoint", "best"], BASE_DEFAULTS))


def test_profile_and_default_checkpoint_leave_config_id_unchanged():
    config = resolve_config(["--dataset", "folder"], BASE_DEFAULTS)
    before = {k: v for k, v in config.items() if k not in ("profile", "checkpoint")}
    assert config_id(config) == config_id(before)
    assert config_id(config) != config_id({**config, "checkpoint": "average"})


def test_automatic_choice_below_the_threshold_prints_a_line(capsys):
    config = resolve_config(["--dataset", "folder", "--epochs", "4"], BASE_DEFAULTS)
    assert config["profile"] is None and config["model"] == "densenet121"
    assert apply_small_data_profile(config, 375)
    line = capsys.readouterr().out
    assert "profile small-real chosen automatically: 375 training images" in line
    assert f"fewer than {SMALL_REAL_MAX_TRAIN_IMAGES}" in line and "kept your epochs" in line
    assert config["profile"] == "small-real" and config["model"] == "conv3_student"
    assert config["epochs"] == 4 and config["checkpoint"] == "average"
    assert config["augment"] == "light"


@pytest.mark.parametrize("argv, images", [
    (["--dataset", "folder"], SMALL_REAL_MAX_TRAIN_IMAGES),          # at the threshold
    (["--dataset", "folder", "--profile", "papers"], 100),           # the user chose
    (["--dataset", "phantom"], 100),                                  # the phantom's own
])
def test_no_automatic_choice(argv, images, capsys):
    config = resolve_config(argv, BASE_DEFAULTS)
    before = dict(config)
    assert not apply_small_data_profile(config, images)
    assert config == before and capsys.readouterr().out == ""


def test_a_saved_run_configuration_is_never_changed():
    saved = {k: v for k, v in resolve_config(["--dataset", "folder"], BASE_DEFAULTS).items()
             if not k.startswith("_")}
    assert not apply_small_data_profile(saved, 10)
    assert saved["model"] == "densenet121"


def _folder_dataset(root, per_class=6):
    rng = np.random.default_rng(0)
    for name in ("normal", "pneumonia"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(root / name / f"p{i}_{name}.png"),
                        rng.integers(0, 255, (20, 20), dtype=np.uint8))


def test_load_run_data_applies_the_profile_and_records_it(tmp_path, capsys):
    from chestkd.training.classifier import load_run_data
    _folder_dataset(tmp_path / "data")
    config = resolve_config(["--dataset", "folder", "--data-dir", str(tmp_path / "data"),
                             "--learning-rate", "0.002"], BASE_DEFAULTS)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    data = load_run_data(config, run_dir)
    assert "profile small-real chosen automatically" in capsys.readouterr().out
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["profile"] == "small-real" and saved["model"] == "conv3_student"
    assert saved["learning_rate"] == 0.002 and saved["image_size"] == SMALL_REAL_PROFILE["image_size"]
    assert int((data.split == "train").sum()) < SMALL_REAL_MAX_TRAIN_IMAGES


# ----------------------------------------------------------------------------- checkpoint


def _fit(tmp_path, checkpoint, epochs=6, learning_rate=0.05):
    import keras
    import tensorflow as tf
    from chestkd.models import build
    from chestkd.training.trainer import fit
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 32, 32, 3)).astype("float32")
    y = (rng.random((24, 2)) < 0.5).astype("float32")
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    val = tf.data.Dataset.from_tensor_slices((x[:12], y[:12])).batch(12)
    keras.utils.set_random_seed(0)
    model = build("conv3_student", 2, (32, 32, 3))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))
    config = {"epochs": epochs, "checkpoint": checkpoint, "schedule": "constant"}
    fit(model, train, val, config, tmp_path, verbose=0,
        snapshot_epochs=tuple(range(1, epochs + 1)))
    return keras, json.loads((tmp_path / "best.json").read_text())


def test_checkpoint_last_keeps_the_final_epoch(tmp_path):
    # learning rate 0: every epoch has the same validation AUC, so best_val would keep the
    # first epoch (a later one must be strictly better) and only "last" saves epoch 6
    keras, best = _fit(tmp_path, "last", learning_rate=0.0)
    assert best["epoch"] == 6
    saved = keras.models.load_model(tmp_path / "model.keras", compile=False)
    final = keras.models.load_model(tmp_path / "snapshots" / "epoch-0006.keras", compile=False)
    for a, b in zip(saved.get_weights(), final.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_average_keeps_the_mean_of_the_last_third(tmp_path):
    keras, best = _fit(tmp_path, "average")
    assert best["epoch"] == 6
    saved = keras.models.load_model(tmp_path / "model.keras", compile=False)
    snaps = [keras.models.load_model(tmp_path / "snapshots" / f"epoch-000{e}.keras",
                                     compile=False) for e in (5, 6)]   # epochs 5, 6 of 6
    for index, weight in enumerate(saved.trainable_weights):
        mean = np.mean([np.asarray(s.trainable_weights[index], np.float64) for s in snaps], 0)
        np.testing.assert_allclose(np.asarray(weight), mean, rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(snaps[0].trainable_weights[0]),
                           np.asarray(snaps[1].trainable_weights[0]))


def test_the_papers_profile_is_part_of_a_real_data_experiment():
    # On real data the small-real profile is chosen after the run opened, so a run asking for
    # the papers' settings and one letting the data choose used to share a config_id (and a
    # table cell) while training different models.
    auto = resolve_config(["--dataset", "folder"], BASE_DEFAULTS)
    papers = resolve_config(["--dataset", "folder", "--profile", "papers"], BASE_DEFAULTS)
    assert config_id(auto) != config_id(papers)
    assert config_id(auto) == config_id({**auto, "profile": "small-real"})
    # The phantom's ids, and the model store's keys, are what they were.
    phantom = resolve_config(["--profile", "papers"], BASE_DEFAULTS)
    assert config_id(phantom) == config_id({**phantom, "profile": None})
    from chestkd.experiments.store import model_config, model_key
    from chestkd.training.options import as_options
    entry = model_config(as_options(papers), "resnet20", 3)
    assert model_key(as_options(papers), "resnet20", 3).endswith(
        config_id({k: v for k, v in entry.items() if k != "profile"})[:10])


def test_a_run_resumed_before_its_data_was_read_chooses_the_profile_as_a_fresh_one(tmp_path,
                                                                                  capsys):
    # A run killed after it opened (config.yaml saved) but before its data chose the profile
    # used to resume with the unprofiled configuration: DenseNet-121 at 224 px for 200 epochs.
    from chestkd.training.classifier import prepare_run_data
    from chestkd.training.options import run_options
    from chestkd.training.run import open_run
    _folder_dataset(tmp_path / "data")
    argv = ["--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--out",
            str(tmp_path / "runs"), "--learning-rate", "0.002"]
    fresh_dir, fresh = open_run(run_options(resolve_config(argv, BASE_DEFAULTS)),
                                "base_training")
    _, fresh = prepare_run_data(fresh, fresh_dir)
    killed_dir, _ = open_run(run_options(resolve_config(argv, BASE_DEFAULTS)),
                             "base_training")          # ... and stopped here
    assert yaml.safe_load((killed_dir / "config.yaml").read_text())["model"] == "densenet121"
    resumed_dir, resumed = open_run(run_options(resolve_config(
        ["--resume", str(killed_dir)], BASE_DEFAULTS)), "base_training")
    _, resumed = prepare_run_data(resumed, resumed_dir)
    ignore = {"run_dir", "resume", "out", "config_file"}
    assert ({k: v for k, v in resumed.to_config().items() if k not in ignore
             and not k.startswith("_")}
            == {k: v for k, v in fresh.to_config().items() if k not in ignore
                and not k.startswith("_")})
    saved = yaml.safe_load((killed_dir / "config.yaml").read_text())
    assert saved["model"] == "conv3_student" and saved["learning_rate"] == 0.002
    out = capsys.readouterr().out.split("profile small-real chosen automatically")[-1]
    assert "the run trains with image_size=32, model=conv3_student" in out
