"""Run configuration and run directories."""
import pytest
import yaml

from chestkd.errors import ConfigError
from chestkd.data import loader_options
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS, resolve_config
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
    assert loader_options(config["dataset"], config)["labels"] == ["Mass"]


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


def test_boolean_options_work_bare_negated_and_with_a_value():
    assert resolve_config(["--skip-bad-images"], BASE_DEFAULTS)["skip_bad_images"] is True
    assert resolve_config(["--no-saliency"], BASE_DEFAULTS)["saliency"] is False
    assert resolve_config(["--saliency", "false"], BASE_DEFAULTS)["saliency"] is False
    assert resolve_config(["saliency=false"], BASE_DEFAULTS)["saliency"] is False
    # a bare boolean before a key=value pair does not swallow it
    config = resolve_config(["--skip-bad-images", "epochs=3"], BASE_DEFAULTS)
    assert config["skip_bad_images"] is True and config["epochs"] == 3
    with pytest.raises(SystemExit):
        resolve_config(["--saliency=maybe"], BASE_DEFAULTS)
    with pytest.raises(ConfigError, match="maybe"):
        resolve_config(["--saliency", "maybe"], BASE_DEFAULTS)


def test_yaml_files_inherit_a_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text("epochs: 7\nbatch_size: 8\nseed: 1\n")
    (tmp_path / "cells").mkdir()
    cell = tmp_path / "cells" / "cell.yaml"
    cell.write_text("defaults: ../base.yaml\nepochs: 3\n")
    config = resolve_config(["--config", str(cell)], BASE_DEFAULTS)
    assert (config["epochs"], config["batch_size"], config["seed"]) == (3, 8, 1)
    (tmp_path / "loop.yaml").write_text("defaults: loop.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        resolve_config(["--config", str(tmp_path / "loop.yaml")], BASE_DEFAULTS)


def test_the_papers_cells_share_one_base_file():
    from pathlib import Path
    from chestkd.training.config import load_yaml
    cells = sorted(Path("recipes/table1").glob("*.yaml"))
    assert len(cells) == 42
    for cell in cells:
        config = load_yaml(cell)
        assert config["weight_decay"] == 0.0005 and config["epochs"] == 200, cell
        assert config["weight_decay_mode"] == "coupled" and config["learning_rate"] == 0.1
        assert len(cell.read_text().splitlines()) <= 8, cell  # no copied settings


def test_config_id_ignores_bookkeeping_but_not_what_shapes_a_run():
    from chestkd.training.config import config_id
    config = resolve_config([], BASE_DEFAULTS)
    assert config_id(config) == config_id({**config, "out": "elsewhere", "run_name": "x"})
    assert config_id(config) != config_id({**config, "epochs": 2})
    assert config_id(config) != config_id({**config, "label_noise": 0.2})


def test_new_dataset_options_reach_their_loaders_and_bad_values_are_named(tmp_path):
    from chestkd.training.config import check_config
    csv = resolve_config(["--dataset", "csv", "--csv", "metadata.csv", "--label-column", "finding",
                          "filters={view: [PA]}", "--balance", "undersample"], BASE_DEFAULTS)
    options = loader_options("csv", csv)
    assert options["csv"] == "metadata.csv" and options["filters"] == {"view": ["PA"]}
    assert options["balance"] == "undersample" and options["seed"] == 0
    folder = loader_options("folder", resolve_config(
        ["--dataset", "folder", "--val-split", "official", "patient_regex=kermany"], BASE_DEFAULTS))
    assert folder["val_split"] == "official" and folder["patient_regex"] == "kermany"
    phantom = loader_options("pneumonia_phantom",
                             resolve_config(["--dataset", "pneumonia_phantom"], BASE_DEFAULTS))
    assert phantom["images"] == 3000 and phantom["size"] == 128   # the phantom profile
    saved = start_run(resolve_config(["--dataset", "folder", "--out", str(tmp_path)],
                                     BASE_DEFAULTS), "base_training")
    assert yaml.safe_load((saved / "config.yaml").read_text())["augment"] == "light"  # resolved
    for argv, match in ((["--balance", "undersample"], "needs single-label classes"),
                        (["--dataset", "folder", "--val-split", "x"], "--val-split 'x'"),
                        (["--dataset", "folder", "--balance", "smote"], "--balance 'smote'")):
        with pytest.raises(ConfigError, match=match):
            check_config(resolve_config(argv, BASE_DEFAULTS))


def test_loader_keywords_come_from_the_loaders_own_signature(monkeypatch):
    """Issue 17: no list of each loader's keywords outside the loader. A keyword a loader
    declares reaches it from the configuration; None leaves the loader's default; the
    phantoms read their film count and size under the configuration's names; the run decides
    cache_dir and check_images; the phantom also takes the ChestX-ray14 loader's keywords."""
    import sys
    import types

    import chestkd.data as data

    module = types.ModuleType("toy_loader")

    def load_toy(data_dir, *, contrast=1.0, views=None, seed=0, check_images=False, **extra):
        return None

    module.load_toy = load_toy
    monkeypatch.setitem(sys.modules, "toy_loader", module)
    monkeypatch.setitem(data.LOADERS, "toy", "toy_loader:load_toy")
    config = {**BASE_DEFAULTS, "contrast": 2.5, "views": None, "seed": 7, "check_images": True}
    assert loader_options("toy", config) == {"contrast": 2.5, "seed": 7}
    phantom = loader_options("phantom", {**BASE_DEFAULTS, "phantom_images": 321,
                                         "phantom_size": 48, "views": ["PA"], "split": None})
    assert phantom["images"] == 321 and phantom["size"] == 48 and phantom["views"] == ["PA"]
    assert "split" not in phantom and "cache_dir" not in phantom   # loader default; the run's
    assert "seed" not in loader_options("chexpert", {**BASE_DEFAULTS, "seed": 3})


def test_an_exponent_without_a_dot_is_a_number_on_the_command_line_and_in_yaml(tmp_path):
    # YAML 1.1 (PyYAML) reads 1e-3 as the text '1e-3': kd, ensemble_kd and ros_kd then
    # crashed, and base training keyed its stored model by the text.
    config_file = tmp_path / "run.yaml"
    config_file.write_text("learning_rate: 5e-4\nweight_decay: 1E-5\nrun_name: 1e3x\n")
    config = resolve_config(["--config", str(config_file), "momentum=9e-1"], BASE_DEFAULTS)
    assert (config["learning_rate"], config["weight_decay"], config["momentum"]) == (
        0.0005, 1e-05, 0.9)
    assert config["run_name"] == "1e3x"
    assert resolve_config(["learning_rate=1e-3"], BASE_DEFAULTS)["learning_rate"] == 0.001


def test_a_keras_file_given_as_the_model_names_the_run_folder_by_its_stem(tmp_path):
    # Regression: --model runs/x/model.keras named the folder base_training-runs/x/model.keras-
    # <stamp>, a path into folders that do not exist (FileNotFoundError).
    from chestkd.training.run import run_label
    assert run_label({"model": "runs/x/model.keras"}, "base_training") == "base_training-model"
    assert run_label({"strategy": "standard", "student": "/a b/small.keras"}, "kd") == \
        "standard_kd-small"
    assert run_label({"model": "resnet20"}, "self_training") == "self_training-resnet20"
    assert new_run_dir(tmp_path, run_label({"model": "r/m.keras"}, "base_training")).is_dir()


def test_one_setting_has_one_id_however_its_numbers_are_written():
    # label_noise=0 and 0.0, temperature 4 and 4.0, learning_rate '1e-3' and 0.001 each gave
    # two config_ids (and model-store keys: the same model trained twice); a quoted number
    # also crashed the kd plan's "{:g}".
    from chestkd.training.config import config_id
    from chestkd.training.options import run_options
    from chestkd.experiments.store import model_key

    def ids(*argv, defaults=BASE_DEFAULTS):
        config = resolve_config(list(argv), defaults)
        return config_id(config), model_key(run_options(config), "resnet20", 3)

    assert ids("label_noise=0") == ids("label_noise=0.0")
    assert ids("weight_decay=0") == ids("weight_decay=0.0")
    assert ids("learning_rate='1e-3'") == ids("learning_rate=0.001")
    assert ids("epochs='3'") == ids("epochs=3")
    kd = {**BASE_DEFAULTS, **KD_DEFAULTS}
    assert ids("--temperature", "4", defaults=kd) == ids(defaults=kd)
    assert resolve_config(["learning_rate='1e-3'"], BASE_DEFAULTS)["learning_rate"] == 0.001
    assert ids("label_noise=0.1") != ids("label_noise=0.0")
    with pytest.raises(ConfigError, match="--learning-rate 'fast'"):
        run_options(resolve_config(["learning_rate=fast"], BASE_DEFAULTS))


@pytest.mark.parametrize("argv, match", [
    # each was a traceback (a NumPy seed error after the run folder was made, the phantom
    # writer's --images / --size after it, a TypeError or IsADirectoryError of the YAML)
    (["seed=-1"], "--seed -1: expected an integer >= 0"),
    (["seeds=0,-1"], "--seeds '0,-1': expected seeds from 0 to"),
    (["phantom_images=abc"], "--phantom-images 'abc': expected an integer"),
    (["phantom_images=5"], "--phantom-images 5: expected an integer >= 10"),
    (["phantom_size=16"], "--phantom-size 16: expected an integer >= 32"),
])
def test_seeds_and_phantom_options_are_named_before_the_run_opens(argv, match, tmp_path):
    from chestkd.training.options import run_options
    with pytest.raises(ConfigError, match=match):
        run_options(resolve_config([*argv, "--out", str(tmp_path)], BASE_DEFAULTS))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("text, match", [
    ("defaults: 5\n", "'defaults' must be a file name or a list of file names, got 5"),
    ("defaults: [base.yaml, 3]\n", "'defaults' must be a file name or a list"),
    ("defaults: sub\n", "sub: not a file"),
])
def test_a_bad_yaml_file_is_named(text, match, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("epochs: 2\n")
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(ConfigError, match=match):
        resolve_config(["--config", str(tmp_path / "run.yaml")], BASE_DEFAULTS)
    (tmp_path / "latin1.yaml").write_bytes("model: r\xe9snet\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml: cannot be read as UTF-8 text"):
        resolve_config(["--config", str(tmp_path / "latin1.yaml")], BASE_DEFAULTS)
    with pytest.raises(ConfigError, match="sub: not a file"):
        resolve_config(["--config", str(tmp_path / "sub")], BASE_DEFAULTS)


def test_a_saved_run_configuration_is_a_config_file_with_the_same_id(tmp_path):
    # It was refused: unknown option(s) ['config_id', 'run_dir'].
    from chestkd.training.options import run_options
    from chestkd.training.run import open_run
    argv = ["--out", str(tmp_path), "epochs=2", "label_noise=0.05"]
    run_dir, options = open_run(run_options(resolve_config(argv, BASE_DEFAULTS)),
                                "base_training")
    again = resolve_config(["--config", str(run_dir / "config.yaml")], BASE_DEFAULTS)
    _, reopened = open_run(run_options(again), "base_training")
    assert reopened.config["config_id"] == options.config["config_id"]


def test_an_abbreviated_flag_is_refused_as_an_unknown_key_is():
    with pytest.raises(SystemExit):
        resolve_config(["--epoch", "3"], BASE_DEFAULTS)    # was read as --epochs 3
    assert resolve_config(["--epochs", "3"], BASE_DEFAULTS)["epochs"] == 3


def test_seeds_zero_is_a_repeat_over_seed_zero():
    # YAML read --seeds 0 as the int 0, which the repeat (``if not config.get("seeds")``)
    # took for "no seeds": it trained --seed instead, once, with no summary.
    config = resolve_config(["--seeds", "0", "--seed", "5"], BASE_DEFAULTS)
    assert config["seeds"] == [0] and bool(config["seeds"])
    assert resolve_config(["--seeds", "0,2"], BASE_DEFAULTS)["seeds"] == [0, 2]
    assert resolve_config([], BASE_DEFAULTS)["seeds"] is None


def test_help_shows_what_a_run_with_no_data_takes(capsys):
    # --help said "--model (default: 'densenet121')" and "--epochs (default: 200)", while a
    # run with no data trains the phantom profile's ResNet-20 for 10 epochs.
    from chestkd.recipes import self_training
    with pytest.raises(SystemExit):
        self_training.run(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--model MODEL (default: 'densenet121'; with no data, the phantom profile's " \
        "'resnet20')" in text
    assert "--epochs EPOCHS (default: 200; with no data, the phantom profile's 10)" in text
    assert "--seed SEED (default: 0)" in text
