"""ensemble_kd and assistant_kd (through recipes/covid19.yaml) end to end on tiny phantoms.

One module fixture runs both recipes once with the smallest settings that still exercise
every stage: 32 px images, 1 epoch, one shared model store, so the teacher of one stage is
reused as the base model of another. The ensemble (conv3_student teacher and branches) reads
each branch's pooled features through an adapter. The chain mixes two architectures
(conv3_student -> baseline_cnn -> conv3_student), so its feature terms pair layers of
different models by depth and need channel adapters (64 vs 32 and 128 vs 64 channels) and,
for one pair, none.
"""
import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import wasserstein_distance

from chestkd.recipes import assistant_kd, ensemble_kd

REPO = Path(__file__).resolve().parents[1]
TINY = ["--image-size", "32", "--batch-size", "16", "--epochs", "1", "--learning-rate", "0.01",
        "--schedule", "constant", "latency_images=2", "bootstrap=0", "jit_compile=false",
        "saliency=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from chestkd.data.phantom import write_phantom, write_pneumonia_phantom
    root = tmp_path_factory.mktemp("feature_recipes")
    findings = write_phantom(root / "findings", images=60, size=32, seed=1)
    pneumonia = write_pneumonia_phantom(root / "pneumonia", images=60, size=32, seed=1)
    out = root / "runs"
    store = ["--out", str(out), "--teachers-dir", str(out / "teachers")]
    ensemble = ensemble_kd.run([
        *TINY, *store, "--dataset", "chestxray14", "--data-dir", str(findings),
        "split=patient", "labels=[Effusion, Cardiomegaly, Mass]",
        "--teacher", "conv3_student", "branches=[conv3_student, conv3_student]"])
    chain = assistant_kd.run([
        "--config", str(REPO / "recipes" / "covid19.yaml"), *TINY, *store,
        "--data-dir", str(pneumonia), "phantom_images=60", "phantom_size=32",
        "chain=[conv3_student, baseline_cnn, conv3_student]",
        "learning_rates=[0.01, 0.01, 0.01]", "ablation=true"])
    return out, ensemble, chain


def test_ensemble_kd_writes_table1_and_the_ensemble_is_the_sum_of_its_branches(runs):
    out, results, _ = runs
    run_dir = Path(results["run_dir"])
    table = pd.read_csv(run_dir / "table1.csv")
    assert list(table["role"]) == ["teacher", "branch model", "student"]
    ensemble_metrics = json.loads((run_dir / "ensemble" / "metrics.json").read_text())
    assert table["EKD"].iloc[-1] == pytest.approx(ensemble_metrics["mean_auc"])
    teacher_metrics = json.loads((run_dir / "teacher" / "metrics.json").read_text())
    # The teacher IS the branch model's base cell: the store trained conv3_student once.
    assert table["base training"].iloc[0] == pytest.approx(teacher_metrics["mean_auc"])
    assert table["base training"].iloc[1] == pytest.approx(teacher_metrics["mean_auc"])
    assert len([p for p in (out / "teachers").iterdir() if p.name.startswith(
        "conv3_student-e1")]) >= 1
    kd_metrics = json.loads((run_dir / "standard_kd_conv3_student" / "metrics.json").read_text())
    assert table["standard KD"].iloc[1] == pytest.approx(kd_metrics["mean_auc"])
    branches = pd.read_csv(run_dir / "branches.csv")
    assert len(branches) == 3 and branches["auc"].between(0, 1).all()
    assert branches["params"].iloc[2] == branches["params"].iloc[0] + branches["params"].iloc[1]
    assert "EKD" in (run_dir / "table1.md").read_text()
    # The saved ensemble: no feature projections in it, output = sum of its branches.
    from chestkd.models import ensemble_branches
    saved = keras.models.load_model(run_dir / "ensemble" / "model.keras")
    assert not any("align" in layer.name for layer in saved.layers)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(saved(x), sum(np.asarray(b(x), np.float64) for b in
                                             ensemble_branches(saved)), rtol=1e-5, atol=1e-5)
    history = pd.read_csv(run_dir / "ensemble" / "history.csv")
    assert {"hard_loss", "soft_loss", "feature_branch0_pool", "feature_branch1_pool"} <= set(
        history.columns)
    # Each branch's pooled features reach the teacher's through a Dense adapter (always).
    pooled = history[["feature_branch0_pool", "feature_branch1_pool"]].to_numpy()
    assert np.all(np.isfinite(pooled)) and np.all(pooled > 0)


def test_assistant_kd_covid_yaml_writes_table2_confusion_matrices_and_the_ablation(runs):
    _, _, results = runs
    run_dir = Path(results["run_dir"])
    config = (run_dir / "config.yaml").read_text()
    assert "balance: both" in config and "temperature: 30.0" in config
    assert results["kd_loss"] == "hinton" and results["teachers_unchanged"] is True
    reports = (run_dir / "per_class_reports.md").read_text()
    for heading in ("(a) Teacher", "(b) Assistant", "(c) Student"):
        assert heading in reports
    for stage in ("teacher", "assistant", "student"):
        report = pd.read_csv(run_dir / stage / "classification_report.csv")
        assert list(report["class"]) == ["normal", "pneumonia", "covid19", "accuracy",
                                         "macro avg", "weighted avg"]
        assert (run_dir / stage / "confusion_matrix.png").exists()
    history = pd.read_csv(run_dir / "assistant" / "history.csv")
    # baseline_cnn's last map (8x8x64) against the teacher's (8x8x128): through an adapter.
    assert {"hard_loss", "soft_loss", "feature_kl_conv2_pool"} <= set(history.columns)
    student_history = pd.read_csv(run_dir / "student" / "history.csv")
    assert {"wasserstein_conv1_relu", "wasserstein_conv2_relu",
            "wasserstein_conv3_relu"} <= set(student_history.columns)
    ablation = pd.read_csv(run_dir / "ablation.csv")
    assert list(ablation["model"]) == ["teacher alone", "student alone", "student from teacher",
                                       "student from assistant"]
    student_report = pd.read_csv(run_dir / "student" / "classification_report.csv")
    macro = student_report.set_index("class").loc["macro avg"]
    assert ablation["f1"].iloc[3] == pytest.approx(macro["f1"])
    assert ablation[["precision", "recall", "f1", "auc"]].stack().between(0, 1).all()


def test_chain_feature_terms_pair_two_architectures_and_log_the_recomputed_distance(runs):
    _, _, results = runs
    run_dir = Path(results["run_dir"])
    history = pd.read_csv(run_dir / "student" / "history.csv")
    # Depth pairs of conv3_student (ends conv1/2/3_relu) with baseline_cnn (conv1_relu,
    # conv2_relu, conv2_pool): conv1 64 vs 32 channels and conv3 128 vs 64 need adapters.
    for layer in ("conv1_relu", "conv2_relu", "conv3_relu"):
        values = history[[f"wasserstein_{layer}", f"val_wasserstein_{layer}"]].to_numpy()
        assert np.all(np.isfinite(values)) and np.all(values > 0)
    assistant_kl = pd.read_csv(run_dir / "assistant" / "history.csv")[
        ["feature_kl_conv2_pool", "val_feature_kl_conv2_pool"]].to_numpy()
    assert np.all(np.isfinite(assistant_kl)) and np.all(assistant_kl > 0)
    # conv2_relu meets baseline_cnn's conv2_relu (16x16x64 both): no adapter, so the logged
    # validation distance is the mean over validation images of the 1-Wasserstein distance
    # of the saved student's and saved assistant's maps (one epoch: the saved models are the
    # ones the epoch's validation ran).
    from chestkd.training.classifier import image_options, load_run_data, make_dataset
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    data = load_run_data(config, run_dir)
    val = make_dataset(data, "val", batch_size=16, training=False,
                       **image_options(data, config))
    images = np.concatenate([np.asarray(x["image"] if isinstance(x, dict) else x)
                             for x, _ in val])

    def maps(stage):
        model = keras.models.load_model(run_dir / stage / "model.keras", compile=False)
        tap = keras.Model(model.input, model.get_layer("conv2_relu").output)
        return np.asarray(tap(images, training=False), np.float64)

    student, assistant = maps("student"), maps("assistant")
    assert student.shape == assistant.shape == (len(images), 16, 16, 64)
    expected = np.mean([wasserstein_distance(s.ravel(), a.ravel())
                        for s, a in zip(student, assistant)])
    assert expected > 0
    np.testing.assert_allclose(history["val_wasserstein_conv2_relu"].iloc[-1], expected,
                               rtol=1e-4)


def test_a_layer_a_later_stage_lacks_is_named_before_the_teacher_trains(runs, capsys):
    # Regression: the chain checked model names only; a typo in the student's layer pairs
    # failed after the teacher (and the assistant) had trained.
    out = runs[0]
    with pytest.raises(SystemExit) as stop:
        assistant_kd.main([*TINY, "--out", str(out / "bad"), "--dataset", "phantom",
                           "phantom_images=60", "phantom_size=32",
                           "chain=[conv3_student, baseline_cnn]",
                           "feature_layers=[[[conv1_relu, no_such_layer]]]", "ablation=false"])
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert "no_such_layer" in captured.err and "training conv3_student" not in captured.out
