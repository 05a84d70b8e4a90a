"""Every recipe end to end on a tiny phantom, the report built from their runs, and CLI errors."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chestkd.recipes import (base_training, defective_kd, reversed_kd, self_training,
                             standard_kd, table1)
from chestkd.report import write_report

TINY = ["--dataset", "chestxray14", "--image-size", "32", "--batch-size", "16", "--epochs", "2",
        "--learning-rate", "0.01", "--schedule", "constant", "latency_images=2"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from chestkd.data.phantom import write_phantom
    return write_phantom(tmp_path_factory.mktemp("phantom") / "data", images=120, size=64,
                         seed=1)


@pytest.fixture(scope="module")
def runs(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    common = [*TINY, "--data-dir", str(phantom), "--out", str(out), "split=patient"]
    kd = ["--teacher", "resnet32", "--student", "conv3_student", "saliency=false"]
    results = {
        "base_training": base_training.main([*common, "--model", "conv3_student"]),
        "standard_kd": standard_kd.main([*common, *kd]),
        "standard_kd_again": standard_kd.main([*common, *kd, "--teacher-outputs", "online"]),
        "reversed_kd": reversed_kd.main([*common, *kd]),
        "defective_kd": defective_kd.main([*common, *kd, "--epochs", "4"]),
        "self_training": self_training.main([*common, "--model", "conv3_student"]),
    }
    return out, results


def _run_dirs(out, prefix):
    return sorted(p for p in Path(out).glob(f"{prefix}*") if (p / "metrics.json").exists())


def test_every_recipe_writes_its_results(runs):
    out, results = runs
    for name, result in results.items():
        assert 0.0 <= result["mean_auc"] <= 1.0, name
        assert result["params"]["total"] > 0 and result["latency"]["median_ms"] > 0
    run = _run_dirs(out, "base_training")[0]
    for name in ("config.yaml", "model.keras", "history.csv", "metrics.json",
                 "per_class_auc.csv", "roc_curves.png", "training_curves.png", "logs"):
        assert (run / name).exists(), name
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 2 and (history["epoch_seconds"] > 0).all()
    table = pd.read_csv(run / "per_class_auc.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["mean_auc"] == pytest.approx(table["auc"].mean(skipna=True))
    assert metrics["train_seconds"] == pytest.approx(history["epoch_seconds"].sum())


def test_teachers_are_trained_once_and_reused(runs):
    out, results = runs
    teachers = sorted(p.name for p in (out / "teachers").iterdir())
    # resnet32 for 2 epochs (standard, twice), conv3_student for 2 (reversed, self-training),
    # resnet32 for 1 epoch (defective: a quarter of 4)
    assert len(teachers) == 3, teachers
    assert sorted(t.split("-")[0] + "-" + t.split("-")[1] for t in teachers) == [
        "conv3_student-e2", "resnet32-e1", "resnet32-e2"]
    assert results["defective_kd"]["teacher"] == "resnet32"
    assert results["reversed_kd"]["model"] == "resnet32"  # the deeper model is taught


def test_cached_and_online_teachers_give_the_same_first_epoch(runs):
    out, _ = runs
    first, second = _run_dirs(out, "standard_kd")
    a, b = (pd.read_csv(d / "history.csv") for d in (first, second))
    for column in ("loss", "hard_loss", "soft_loss", "val_loss"):
        assert a[column].iloc[0] == pytest.approx(b[column].iloc[0], rel=1e-4), column


def test_self_training_compares_base_and_self_trained(runs):
    out, results = runs
    run = _run_dirs(out, "self_training")[0]
    table = pd.read_csv(run / "comparison.csv")
    base = json.loads((run / "base_metrics.json").read_text())
    assert table["base"].iloc[-1] == pytest.approx(base["mean_auc"])
    assert table["self-trained"].iloc[-1] == pytest.approx(results["self_training"]["mean_auc"])
    assert (run / "base_history.csv").exists()


def test_report_builds_the_papers_tables_from_the_runs(runs):
    out, results = runs
    written = write_report(out)
    t1 = pd.read_csv(written["table1"].with_suffix(".csv"))
    base_row = t1[t1["model"] == "conv3_student"]
    assert base_row["base_training"].iloc[0] == pytest.approx(
        np.mean([results["base_training"]["mean_auc"]] +
                [json.loads((d / "metrics.json").read_text())["mean_auc"]
                 for d in (out / "teachers").iterdir() if d.name.startswith("conv3_student")]))
    t3 = pd.read_csv(written["table3"].with_suffix(".csv"))
    assert "Yao et al. 2017" in t3.columns and t3["finding"].iloc[0] == "Atelectasis"
    assert any(name.startswith("fig6-") for name in written)
    t2 = pd.read_csv(written["table2"].with_suffix(".csv"))
    assert set(t2["strategy"]) >= {"base_training", "standard_kd", "self_training"}


def test_table_runner_lists_cells_and_skips_finished_ones(tmp_path, capsys):
    finished = tmp_path / "standard_kd-mobilenet_v1-20260101-000000"
    finished.mkdir()
    (finished / "config.yaml").write_text(
        "config_file: recipes/table1/standard_kd-resnet152-mobilenet_v1.yaml\n")
    (finished / "metrics.json").write_text("{}")
    table1.main(["--recipes", "recipes/table1", "--only", "*resnet152-mobilenet_v1*",
                 "--dry-run", f"out={tmp_path}"])
    lines = capsys.readouterr().out.splitlines()
    assert [(line[:6], line[7:].split()[0]) for line in lines] == [
        ("[done]", "standard_kd-resnet152-mobilenet_v1.yaml:"),
        ("[run ]", "reversed_kd-resnet152-mobilenet_v1.yaml"),
        ("[run ]", "defective_kd-resnet152-mobilenet_v1.yaml")]


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet9000"], "resnet9000"),
    (["--dataset", "mnist"], "mnist"),
    (["--data-dir", "/no/such/folder", "--dataset", "chestxray14"], "/no/such/folder"),
    (["epochz=3"], "epochz"),
])
def test_user_mistakes_exit_2_with_a_named_error(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        base_training.main([*argv, "--out", str(tmp_path), "--epochs", "1"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_skipped_bad_images_are_listed_in_the_run_report(tmp_path):
    import cv2
    rng = np.random.default_rng(0)
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(12):
            image = rng.integers(0, 255, (32, 32), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / "data" / label / f"p{i}_{label}.png"), image)
    bad = tmp_path / "data" / "PNEUMONIA" / "p3_PNEUMONIA.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    argv = ["--dataset", "folder", "--data-dir", str(tmp_path / "data"), "--model",
            "conv3_student", "--image-size", "32", "--batch-size", "8", "--epochs", "1",
            "--out", str(tmp_path / "runs"), "latency_images=2"]
    with pytest.raises(SystemExit):
        base_training.main(argv)  # without the option: a clear error, no training
    result = base_training.main([*argv, "--skip-bad-images", "true"])
    assert [Path(r["path"]).name for r in result["skipped_images"]] == [bad.name]
    assert "truncated" in result["skipped_images"][0]["reason"]
    run = _run_dirs(tmp_path / "runs", "base_training")[0]
    assert bad.name in (run / "skipped.csv").read_text()
