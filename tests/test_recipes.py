"""Every recipe end to end on a tiny phantom, the model store, the report built from their
runs, the table runner, resume, and CLI errors."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from chestkd.experiments.table_cells import resolved_cell
from chestkd.recipes import base_training, kd, self_training, table1
from chestkd.report import write_report
from chestkd.training.config import config_id

TINY = ["--dataset", "chestxray14", "--image-size", "32", "--batch-size", "16", "--epochs", "2",
        "--learning-rate", "0.01", "--schedule", "constant", "latency_images=2",
        "bootstrap=50", "jit_compile=false"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from chestkd.data.phantom import write_phantom
    return write_phantom(tmp_path_factory.mktemp("phantom") / "data", images=120, size=64,
                         seed=1)


@pytest.fixture(scope="module")
def runs(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    common = [*TINY, "--data-dir", str(phantom), "--out", str(out), "split=patient"]
    kd_args = ["--teacher", "resnet32", "--student", "conv3_student", "saliency=false"]
    results = {
        "standard_kd": kd.run([*common, *kd_args]),
        # the teacher of standard KD is a base-training run of the same configuration
        "base_training_resnet32": base_training.run([*common, "--model", "resnet32"]),
        "base_training": base_training.run([*common, "--model", "conv3_student"]),
        "standard_kd_again": kd.run([*common, *kd_args, "--teacher-outputs", "online"]),
        "reversed_kd": kd.run([*common, *kd_args, "--strategy", "reversed"]),
        "defective_kd": kd.run([*common, *kd_args, "--strategy", "defective", "--epochs", "4"]),
        "self_training": self_training.run([*common, "--model", "conv3_student",
                                            "--no-saliency"]),
        # another setting (image size): never averaged with the others
        "base_training_64": base_training.run([*common, "--model", "conv3_student",
                                               "--image-size", "48"]),
    }
    return out, results


def _run_dirs(out, prefix):
    return sorted(p for p in Path(out).glob(f"{prefix}*") if (p / "metrics.json").exists())


def _store(out):
    return sorted(p for p in (Path(out) / "teachers").iterdir() if p.is_dir())


def test_every_recipe_writes_its_results(runs):
    out, results = runs
    for name, result in results.items():
        assert 0.0 <= result["mean_auc"] <= 1.0, name
        lo, hi = result["mean_auc_ci"]
        if result["mean_auc_ci_resamples"] >= 40:
            assert lo <= result["mean_auc"] <= hi, name
        else:   # 40 resamples of a 24-image test split: few keep every finding, no interval
            assert np.isnan(np.asarray([lo, hi], np.float64)).all(), name
        assert result["params"]["total"] > 0 and result["latency"]["median_ms"] > 0
    run = _run_dirs(out, "base_training-conv3_student")[0]
    for name in ("config.yaml", "model.keras", "history.csv", "metrics.json",
                 "per_class_auc.csv", "roc_curves.png", "training_curves.png",
                 "test_predictions.npz"):
        assert (run / name).exists(), name
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 2 and (history["epoch_seconds"] > 0).all()
    table = pd.read_csv(run / "per_class_auc.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["mean_auc"] == pytest.approx(table["auc"].mean(skipna=True))
    assert metrics["train_seconds"] == pytest.approx(history["epoch_seconds"].sum())


def test_the_model_store_trains_each_model_once(runs):
    out, results = runs
    entries = [p.name for p in _store(out)]
    # resnet32 for 2 epochs (standard KD's teacher = the base-training cell of resnet32),
    # conv3_student for 2 (base cell = reversed KD's teacher = self-training's base),
    # conv3_student at 48 px, resnet32 on the 4-epoch schedule (defective KD's teacher).
    assert sorted(e.split("-")[0] + "-" + e.split("-")[1] for e in entries) == [
        "conv3_student-e2", "conv3_student-e2", "resnet32-e2", "resnet32-e4"], entries
    teacher = results["standard_kd"]["teacher_source"]
    assert results["base_training_resnet32"]["trained_in"] == teacher
    assert results["base_training"]["trained_in"] == results["reversed_kd"]["teacher_source"]
    assert results["reversed_kd"]["model"] == "resnet32"  # the deeper model is taught


def test_defective_teacher_is_a_checkpoint_of_the_full_schedule(runs):
    out, results = runs
    source = Path(results["defective_kd"]["teacher_source"])
    # a quarter of the 4-epoch schedule: the weights after epoch 1 of that schedule
    assert source.name == "epoch-0001.keras" and source.parent.name == "snapshots"
    entry = source.parent.parent
    # a copy of its own beside the store's entry, which never stops part-way
    assert entry.name.startswith("resnet32-e4-") and entry.name.endswith("-until1")
    assert not entry.with_name(entry.name[:-len("-until1")]).exists()
    history = pd.read_csv(entry / "history.csv")
    assert len(history) == 1                     # trained up to the checkpoint only
    assert not (entry / "metrics.json").exists()  # not a finished base run
    assert results["defective_kd"]["teacher_epochs"] == "1 of 4"


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
    comparison = json.loads((run / "comparison.json").read_text())
    values = comparison["comparison"]
    if values["mean_valid_resamples"] >= 40:
        assert 0.0 <= values["p_value"] <= 1.0
    else:   # a 24-image test split: few of 40 resamples keep every finding, no p (JSON null)
        assert values["p_value"] is None and values["difference_ci"] == [None, None]
    assert values["difference"] == pytest.approx(values["mean_auc_b"] - values["mean_auc_a"])
    assert results["self_training"]["kd_loss"] == "sigmoid"  # the multi-label default
    assert "sigmoid KD" in (run / "comparison.md").read_text()  # the title names the loss
    # one table builder: the per-class p is the patient bootstrap's, Holm-adjusted beside it
    assert list(table.columns) == ["finding", "base", "base_ci", "self-trained",
                                   "self-trained_ci", "change", "change_ci", "p", "p_holm",
                                   "test", "p_clustered_delong"]
    per_class = values["per_class"]
    for column, key in (("p", "p_value"), ("p_holm", "p_holm")):  # JSON writes NaN as null
        np.testing.assert_allclose(table[column].iloc[:-1],
                                   np.array([v[key] for v in per_class.values()], float))
    assert set(table["test"]) == {"paired patient bootstrap"}
    assert "p (paired patient bootstrap)" in (run / "comparison.md").read_text()


def test_report_base_column_holds_full_base_runs_of_one_setting(runs):
    out, results = runs
    written = write_report(out)
    t1 = pd.read_csv(written["table1"].with_suffix(".csv"))
    base = t1[(t1["model"] == "conv3_student") & (t1["column"] == "base_training")]
    # two settings (32 and 48 px), each with its own base cell holding one run: neither a
    # defective teacher nor the other image size is averaged in
    assert len(base) == 2 and set(base["n"]) == {1}
    assert sorted(base["mean_auc"]) == pytest.approx(sorted(
        [results["base_training"]["mean_auc"], results["base_training_64"]["mean_auc"]]))
    resnet = t1[(t1["model"] == "resnet32") & (t1["column"] == "base_training")]
    assert len(resnet) == 1 and int(resnet["n"].iloc[0]) == 1  # the store entry, counted once
    assert resnet["mean_auc"].iloc[0] == pytest.approx(
        results["base_training_resnet32"]["mean_auc"])
    t3 = pd.read_csv(written["table3"].with_suffix(".csv"))
    assert "Yao et al. 2017" in t3.columns and t3["finding"].iloc[0] == "Atelectasis"
    assert t3.loc[t3.finding == "Hernia", "Ho & Gwak 2020 (proposed)"].iloc[0] == 0.876
    assert any(name.startswith("fig6-") for name in written)
    t2 = pd.read_csv(written["table2"].with_suffix(".csv"))
    assert set(t2["strategy"]) >= {"base_training", "standard_kd", "self_training"}
    pairs = pd.read_csv(written["comparisons"].with_suffix(".csv"))
    assert {"standard_kd", "self_training"} <= {s.split(" ")[0] for s in pairs["strategy"]}
    assert pairs["p_value"].between(0, 1).all()


def test_table_runner_marks_a_cell_done_only_for_the_same_configuration(tmp_path, capsys):
    cell = Path("recipes/table1/standard_kd-resnet152-mobilenet_v1.yaml")
    _, smoke = resolved_cell(cell, [f"out={tmp_path}", "epochs=2"], table1.RECIPES)
    finished = tmp_path / "standard_kd-mobilenet_v1-20260101-000000"
    finished.mkdir()
    (finished / "config.yaml").write_text(yaml.safe_dump(
        {**{k: v for k, v in smoke.items() if not k.startswith("_")},
         "config_id": config_id(smoke)}))
    (finished / "metrics.json").write_text("{}")
    argv = ["--recipes", "recipes/table1", "--only", "*resnet152-mobilenet_v1*", "--dry-run"]
    table1.run([*argv, f"out={tmp_path}", "epochs=2"])
    lines = capsys.readouterr().out.splitlines()
    assert [(line[:6], line[7:].split()[0]) for line in lines] == [
        ("[done]", "standard_kd-resnet152-mobilenet_v1.yaml:"),
        ("[run ]", "reversed_kd-resnet152-mobilenet_v1.yaml"),
        ("[run ]", "defective_kd-resnet152-mobilenet_v1.yaml")]
    # the smoke run (epochs=2) does not mark the real cell (200 epochs) done
    table1.run([*argv, f"out={tmp_path}"])
    lines = capsys.readouterr().out.splitlines()
    assert [line[:6] for line in lines] == ["[run ]"] * 3


def test_resume_after_training_continues_with_evaluation(phantom, tmp_path, monkeypatch):
    """A crash after fit (here in the evaluation) must not retrain on --resume."""
    import chestkd.experiments.kd as kd_module
    argv = [*TINY, "--data-dir", str(phantom), "--out", str(tmp_path), "split=patient",
            "--teacher", "conv3_student", "--student", "conv3_student", "--epochs", "1"]
    real = kd_module.evaluate_model

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash during evaluation")

    monkeypatch.setattr(kd_module, "evaluate_model", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        kd.run(argv)
    run_dir = _run_dirs(tmp_path, "standard_kd") or sorted(tmp_path.glob("standard_kd*"))
    run_dir = run_dir[0]
    rows = len(pd.read_csv(run_dir / "history.csv"))
    model_time = (run_dir / "model.keras").stat().st_mtime_ns
    monkeypatch.setattr(kd_module, "evaluate_model", real)
    result = kd.run(["--resume", str(run_dir), "--epochs", "5"])
    assert len(pd.read_csv(run_dir / "history.csv")) == rows   # no epoch trained again
    assert (run_dir / "model.keras").stat().st_mtime_ns == model_time
    assert result["mean_auc"] >= 0 and (run_dir / "metrics.json").exists()


def test_resume_refuses_another_recipe_and_names_ignored_flags(phantom, tmp_path, capsys):
    from chestkd.training.config import BASE_DEFAULTS, resolve_config
    from chestkd.training.run import start_run
    config = resolve_config([*TINY, "--data-dir", str(phantom), "--out", str(tmp_path)],
                            BASE_DEFAULTS)
    run_dir = start_run(config, "base_training")
    with pytest.raises(SystemExit) as exit_info:
        self_training.main(["--resume", str(run_dir)])
    assert exit_info.value.code == 2
    assert "base_training" in capsys.readouterr().err
    resumed = resolve_config(["--resume", str(run_dir), "--epochs", "9", "seed=4"],
                             BASE_DEFAULTS)
    start_run(resumed, "base_training")
    assert "ignoring --epochs, --seed" in capsys.readouterr().out
    assert resumed["epochs"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet9000"], "resnet9000"),
    (["--dataset", "mnist"], "mnist"),
    (["--data-dir", "/no/such/folder", "--dataset", "chestxray14"], "/no/such/folder"),
    (["epochz=3"], "epochz"),
    (["--weight-decay-mode", "both"], "weight-decay-mode"),
    (["--seeds", "a,b"], "seeds"),
])
def test_user_mistakes_exit_2_with_a_named_error(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        base_training.main([*argv, "--out", str(tmp_path), "--epochs", "1"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def _folder_data(tmp_path, bad=False):
    import cv2
    rng = np.random.default_rng(0)
    for label in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "data" / label).mkdir(parents=True, exist_ok=True)
        for i in range(12):
            image = rng.integers(0, 255, (32, 32), dtype=np.uint8)
            cv2.imwrite(str(tmp_path / "data" / label / f"p{i}_{label}.png"), image)
    bad_file = tmp_path / "data" / "PNEUMONIA" / "p3_PNEUMONIA.png"
    if bad:
        bad_file.write_bytes(bad_file.read_bytes()[:40])  # truncated
    return tmp_path / "data", bad_file


FOLDER = ["--dataset", "folder", "--image-size", "32", "--batch-size", "8", "--epochs", "1",
          "latency_images=2", "bootstrap=40", "jit_compile=false"]


def test_skipped_bad_images_are_listed_and_the_flag_works_bare(tmp_path):
    data, bad = _folder_data(tmp_path, bad=True)
    argv = [*FOLDER, "--data-dir", str(data), "--model", "conv3_student",
            "--out", str(tmp_path / "runs")]
    with pytest.raises(SystemExit):
        base_training.main(argv)  # without the option: a clear error, no training
    result = base_training.run([*argv, "--skip-bad-images"])  # a bare boolean flag
    assert [Path(r["path"]).name for r in result["skipped_images"]] == [bad.name]
    assert "truncated" in result["skipped_images"][0]["reason"]
    run = _run_dirs(tmp_path / "runs", "base_training")[0]
    assert bad.name in (run / "skipped.csv").read_text()


def test_kd_loss_follows_the_data(tmp_path, capsys):
    data, _ = _folder_data(tmp_path)
    argv = [*FOLDER, "--data-dir", str(data), "--teacher", "conv3_student", "--student",
            "conv3_student", "--out", str(tmp_path / "runs")]
    result = kd.run(argv)
    assert result["kd_loss"] == "hinton"  # exclusive classes: the softmax form
    with pytest.raises(SystemExit) as exit_info:
        kd.main([*argv, "--kd-loss", "sigmoid"])
    assert exit_info.value.code == 2
    assert "mutually exclusive" in capsys.readouterr().err
