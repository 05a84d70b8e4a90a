"""Runs and model-store entries written by chestkd 0.1 (commit 11ffb0a) are still found.

The fixture in tests/data/legacy_v0_1 was written by

    python -m chestkd.recipes.kd --teacher conv3_student --student conv3_student --epochs 1
        --batch-size 16 --image-size 32 phantom_images=120 --out /tmp/fx/runs
        --teachers-dir /tmp/fx/store --run-name legacy-kd --bootstrap 50 --saliency false

(figures, logs, cached teacher logits and the store's snapshot left out to keep it small).
A new option at its default must not change ``config_id`` or a store key, or every table cell
and teacher a user trained before would silently be trained again.
"""
import filecmp
import shutil
from pathlib import Path

import yaml

from chestkd.experiments.store import model_key
from chestkd.recipes import kd
from chestkd.training.config import config_id, resolve_config

FIXTURE = Path(__file__).parent / "data" / "legacy_v0_1"
RUN = FIXTURE / "runs" / "legacy-kd"
ENTRY = "conv3_student-e1-ad8ce9519d"
ARGV = ["--teacher", "conv3_student", "--student", "conv3_student", "--epochs", "1",
        "--batch-size", "16", "--image-size", "32", "phantom_images=120",
        "--out", "/tmp/fx/runs", "--teachers-dir", "/tmp/fx/store", "--run-name", "legacy-kd",
        "--bootstrap", "50", "--saliency", "false"]


def saved(path):
    return yaml.safe_load(Path(path).read_text())


def resolved():
    """The command's configuration as the kd recipe completes it before saving it."""
    return {**resolve_config(ARGV, kd.DEFAULTS), "recipe": "kd"}


def test_the_same_command_gives_the_saved_config_id():
    config = resolved()
    assert config_id(config) == saved(RUN / "config.yaml")["config_id"] == "54493b379e67"


def test_the_saved_configuration_still_digests_to_its_id():
    for path in (RUN / "config.yaml", FIXTURE / "store" / ENTRY / "config.yaml"):
        config = saved(path)
        assert config_id(config) == config["config_id"], path


def test_the_store_entry_is_found_under_its_old_key():
    config = resolved()
    assert model_key(config, "conv3_student", 1) == ENTRY


def test_resuming_a_finished_run_repeats_no_stage(tmp_path):
    run = tmp_path / "legacy-kd"
    shutil.copytree(RUN, run)
    before = (run / "stages.json").read_text()
    kd.run(["--resume", str(run)])
    assert (run / "stages.json").read_text() == before
    assert filecmp.cmp(run / "model.keras", RUN / "model.keras", shallow=False)


def test_a_resumed_run_keeps_what_options_added_after_it_did(tmp_path):
    """Regression: resuming a run saved before an option existed read today's default (or a
    code default) for it: a 0.1 RoS-KD run (no overlap_mode, Baseline III options) resumed
    with a core of shared patients, Eq. 4 for Baseline III and subset teachers, not its
    circle, mean of logits and full-split teachers. The resumed options now hold the values
    that reproduce the run (ADDED_OPTION_DEFAULTS), the recipe's own keys only, id unchanged."""
    from chestkd.recipes import ros_kd
    from chestkd.training.config import ADDED_OPTION_DEFAULTS, save_config
    from chestkd.training.options import run_options
    from chestkd.training.run import open_run

    later = ("overlap_mode", "weight_draw", "confidence_temperature", "baseline_iii_combine",
             "baseline_iii_teachers", "checkpoint", "images")
    old = {k: v for k, v in resolve_config([], ros_kd.DEFAULTS).items()
           if not k.startswith("_") and k not in later}
    old["recipe"] = "ros_kd"
    old["config_id"] = config_id(old)
    run = tmp_path / "ros-0.1"
    run.mkdir()
    save_config(old, run / "config.yaml")
    _, options = open_run(run_options(resolve_config(["--resume", str(run)], ros_kd.DEFAULTS)),
                          "ros_kd")
    assert {k: options.config[k] for k in later} == {k: ADDED_OPTION_DEFAULTS[k] for k in later}
    assert (options.config["overlap_mode"], options.config["baseline_iii_teachers"]) == (
        "circle", "full")
    assert config_id(options.config) == old["config_id"]
    _, legacy = open_run(run_options(resolve_config(["--resume", str(RUN)], kd.DEFAULTS)),
                         "kd")
    assert "overlap_mode" not in legacy.config and legacy.config["checkpoint"] == "best_val"


def test_a_run_resumed_from_another_folder_keeps_its_model_store(tmp_path, monkeypatch):
    """Regression: ``out`` (default ``runs``) was saved as typed and read from the folder of
    the resume, so the teacher was trained again into a new store there."""
    from chestkd.experiments.store import store_root
    from chestkd.training.options import run_options
    from chestkd.training.run import open_run

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    run_dir, _ = open_run(run_options(resolve_config(["--out", "runs"], kd.DEFAULTS)), "kd")
    _, other = open_run(run_options(resolve_config(["teachers_dir=store"], kd.DEFAULTS)), "kd")
    assert other.config["teachers_dir"] == str(tmp_path / "a" / "store")
    monkeypatch.chdir(tmp_path / "b")
    resumed_dir, resumed = open_run(run_options(resolve_config(
        ["--resume", str(tmp_path / "a" / run_dir)], kd.DEFAULTS)), "kd")
    assert store_root(resumed) == tmp_path / "a" / "runs" / "teachers"
    assert resumed.config["run_dir"] == str(resumed_dir)
