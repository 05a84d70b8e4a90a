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
