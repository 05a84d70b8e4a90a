"""RoS-KD end to end at tiny settings: two teachers trained on their subsets, one epoch,
32-px images."""
import json

import numpy as np
import pandas as pd
import pytest

from chestkd.errors import ConfigError
from chestkd.recipes import ros_kd

EIGHT = "[Atelectasis,Cardiomegaly,Effusion,Infiltration,Mass,Nodule,Pneumonia,Pneumothorax]"


@pytest.fixture(scope="module")
def ros_run(tmp_path_factory):
    from chestkd.data.phantom import write_phantom
    root = tmp_path_factory.mktemp("ros")
    data = write_phantom(root / "data", images=64, size=32, seed=2)
    # Two zoo teachers, each trained (one epoch) on its own overlapping patient subset.
    teachers = ["conv3_student", "conv3_student"]
    argv = ["--dataset", "chestxray14", "--data-dir", str(data), "--out", str(root / "runs"),
            "split=patient", f"labels={EIGHT}", "--image-size", "32", "--batch-size", "16",
            "--epochs", "1", "--learning-rate", "0.01", "--schedule", "constant",
            "latency_images=1", "bootstrap=0", "jit_compile=false", "saliency=false",
            "--teachers", ",".join(teachers), "--student", "conv3_student",
            "--subsets", "2", "--overlap", "0.5", "--baselines", "none",
            "--studies", "table1,folds,robustness", "--averaging-start", "0",
            "fold_seeds=[0]", "robustness_images=8", "pgd_steps=2"]
    results = ros_kd.run(argv)
    run_dir = next((root / "runs").glob("ros_kd-conv3_student-*"))
    return results, run_dir, argv


def test_ros_kd_writes_tables_one_to_three_and_robustness(ros_run):
    results, run_dir, argv = ros_run
    table1 = pd.read_csv(run_dir / "table1.csv")
    assert list(table1["key"]) == ["ros_kd"]
    assert table1[["precision", "recall", "f1", "mean_auc"]].notna().all().all()
    ros = table1.set_index("key").loc["ros_kd"]
    assert np.isfinite(ros["raw_mean_auc"])        # the raw student's score beside it
    folder = run_dir / "settings" / "ros_kd-conv3_student-k2-p0.5-noise0-seed0"
    history = pd.read_csv(folder / "history.csv")
    assert {"raw_val_auc", "averaged_epochs"} <= set(history.columns)
    assert (folder / "raw_model.keras").exists()
    table3 = pd.read_csv(run_dir / "table3.csv")
    assert list(table3["class"])[:8] == EIGHT.strip("[]").split(",")
    table2 = pd.read_csv(run_dir / "table2.csv")
    assert list(table2["attack"]) == ["fgsm", "pgd"]
    np.testing.assert_allclose(table2["epsilon"], 1.28 / 255)
    # one (images x 2 views x K teachers x C) logit table for the teacher set
    tables = sorted(run_dir.glob("teacher_tables/*/teacher_logits_train.npy"))
    assert len(tables) == 1 and np.load(tables[0]).shape[1:] == (2, 2, 8)
    # each teacher was trained once, in the store folder of its own subset, on its own rows
    subsets = sorted(p.name for p in run_dir.parent.glob("teachers/ros_kd*/k2-p0.5-s0-*"))
    assert subsets == ["k2-p0.5-s0-0", "k2-p0.5-s0-1"]
    saved = json.loads((folder / "setting.json").read_text())
    assert saved["sampling"] == "random" and len(saved["teachers"]) == 2
    assert saved["combine"] == "losses"            # Eq. 4: weighted per-teacher divergences
    assert results["table1"][0]["setting"] == "RoS-KD"


def test_resume_reuses_every_finished_setting(ros_run, capsys):
    _, run_dir, _ = ros_run
    before = {p: p.stat().st_mtime for p in run_dir.glob("settings/*/model.keras")}
    ros_kd.run(["--resume", str(run_dir)])
    assert {p: p.stat().st_mtime for p in run_dir.glob("settings/*/model.keras")} == before
    assert "=== " not in capsys.readouterr().out      # nothing trained again


def test_bad_options_name_themselves():
    with pytest.raises(ConfigError, match="baselines"):
        ros_kd.check_ros_config({**ros_kd.DEFAULTS, "baselines": "VI"})
    with pytest.raises(ConfigError, match="teacher-sampling"):
        ros_kd.check_ros_config({**ros_kd.DEFAULTS, "teacher_sampling": "fixed"})


class FakeExperiment:
    """Settings as rows without training: the studies' bookkeeping alone."""

    def __init__(self, tmp_path, **config):
        self.config = {**ros_kd.DEFAULTS, "dataset": "phantom", "label_noise": 0.1,
                       **config}
        self.run_dir, self.calls = tmp_path, []

    def folder(self, name, student, overlap, noise, seed):
        folder = self.run_dir / f"{name}-{student}-{overlap}-{noise}-{seed}"
        folder.mkdir(exist_ok=True)
        auc = 0.6 + 0.1 * seed
        (folder / "metrics.json").write_text(json.dumps(
            {"mean_auc": auc, "per_class_auc": {"A": auc, "B": auc + 0.1, "C": None}}))
        return folder

    def setting(self, name, *, student=None, overlap=None, noise=None, seed=None):
        student = student or self.config["student"]
        overlap = self.config["overlap"] if overlap is None else overlap
        noise = self.config["label_noise"] if noise is None else noise
        seed = self.config["seed"] if seed is None else seed
        self.calls.append((name, student, overlap, noise, seed))
        return {"setting": ros_kd.LABELS[name], "key": name, "student": student,
                "overlap": overlap, "noise": noise, "seed": seed, "f1": 0.5,
                "folder": str(self.folder(name, student, overlap, noise, seed))}


def test_studies_ask_for_the_settings_of_each_figure_and_table(tmp_path):
    from chestkd.experiments.ros_studies import run_studies
    fake = FakeExperiment(tmp_path, baselines=["I", "III"], overlap_study=[0.0, 1.0],
                          student_study=["resnet18", "mobilenet_v2"], fold_seeds=[0, 1, 2],
                          noise_levels=[0.0, 0.2])
    results = run_studies(fake, ["table1", "overlap", "students", "folds", "noise"],
                          ros_kd.write_table)
    assert [r["key"] for r in results["table1"]] == ["I", "III", "ros_kd"]
    assert [(r["key"], r["overlap"]) for r in results["overlap"]] == [
        ("ros_kd", 0.0), ("ros_kd", 1.0), ("III", 0.4)]
    assert [(r["key"], r["student"]) for r in results["students"]] == [
        ("III", "resnet18"), ("ros_kd", "resnet18"), ("III", "mobilenet_v2"),
        ("ros_kd", "mobilenet_v2")]
    assert [(r["key"], r["noise"]) for r in results["noise"]] == [
        (k, n) for n in (0.0, 0.2) for k in ("I", "III", "ros_kd")]
    table3 = pd.read_csv(tmp_path / "table3.csv").set_index("class")
    assert table3.loc["A", "mean"] == pytest.approx(0.7)
    assert table3.loc["A", "std"] == pytest.approx(0.1)          # sample std of .6,.7,.8
    assert table3.loc["Mean", "mean"] == pytest.approx(0.7)
    assert np.isnan(table3.loc["C", "mean"])                      # undefined in every run
    for name in ("table1", "overlap", "students", "table3", "noise"):
        assert (tmp_path / f"{name}.md").read_text().startswith("# ")


def test_robustness_and_landscape_commands_work_on_a_setting(ros_run, tmp_path):
    from chestkd.landscape import main as landscape_main
    from chestkd.robustness.__main__ import main as robustness_main
    _, run_dir, _ = ros_run
    folder = run_dir / "settings" / "ros_kd-conv3_student-k2-p0.5-noise0-seed0"
    assert robustness_main([str(folder), "--max-images", "4", "--steps", "1", "--norm", "linf",
                            "--out", str(tmp_path / "r")]) == 0
    table = pd.read_csv(tmp_path / "r" / "robustness.csv")
    assert list(table["attack"]) == ["fgsm", "pgd"] and (table["images"] == 4).all()
    assert landscape_main([str(folder), "--images", "4", "--resolution", "2",
                           "--out", str(tmp_path / "l")]) == 0
    assert len(pd.read_csv(tmp_path / "l" / "landscape.csv")) == 4
    assert (tmp_path / "l" / "landscape.png").exists()
    with pytest.raises(SystemExit) as error:      # not a run: exit 2 naming the folder
        robustness_main([str(tmp_path), "--out", str(tmp_path / "x")])
    assert error.value.code == 2
