"""evaluate_model end to end on a tiny dataset: intervals, clean and noisy labels, calibration,
saved test predictions and their comparison; predict_logits; plots without pyplot."""
import json
import os
import subprocess
import sys

import cv2
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from chestkd.data.dataset import Dataset
from chestkd.data.pipeline import make_dataset
from chestkd.errors import ConfigError
from chestkd.evaluation import evaluate_model, print_results, statistics
from chestkd.evaluation.metrics import per_class_auc, predict_logits
from chestkd.scores import probabilities_from_logits
from chestkd.training.options import as_options

SIZE = 16
CLASSES = ["a", "b", "c"]
CONFIG = {"batch_size": 8, "image_size": SIZE, "normalization": "zero_one", "seed": 0,
          "bootstrap": 200, "latency_images": 2, "model": "tiny"}


def sigmoid_of(logits):
    return probabilities_from_logits(logits, multi_label=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """60 images (40 test, two per patient) whose brightness per quadrant carries the labels."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    n = 60
    labels = (rng.random((n, 3)) < 0.4).astype(np.float32)
    paths = []
    for i in range(n):
        image = rng.integers(0, 120, (SIZE, SIZE), dtype=np.uint8)
        for c in range(3):
            if labels[i, c]:
                image[(c // 2) * 8:(c // 2) * 8 + 8, (c % 2) * 8:(c % 2) * 8 + 8] += 100
        path = folder / f"img{i:03d}.png"
        cv2.imwrite(str(path), image)
        paths.append(str(path))
    split = np.array(["train"] * 20 + ["test"] * 40)
    patients = np.array([f"p{i // 2}" for i in range(n)])
    return Dataset("toy", CLASSES, True, np.array(paths), labels, patients, split, root=folder)


@pytest.fixture
def model_of(tiny_classifier):
    """This file's model of a seed: a strided Conv2D(4, 8), Flatten, Dense(3) logits."""
    return lambda seed=0: tiny_classifier((SIZE, SIZE, 3), 3, seed=seed,
                                          conv={"filters": 4, "kernel_size": 8, "strides": 8})


def _with_clean_labels(data, flip=0.25):
    """A copy of ``data`` whose labels are noisy and whose ``clean_labels`` are the truth."""
    rng = np.random.default_rng(1)
    noisy = np.where(rng.random(data.labels.shape) < flip, 1 - data.labels, data.labels)
    copy = data.select(np.arange(len(data)))
    copy.labels = noisy.astype(np.float32)
    copy.clean_labels = data.labels.copy()  # (set as an attribute: not a field yet)
    return copy


def test_predict_logits_runs_one_tf_function_equal_to_the_eager_model(data, model_of):
    model = model_of()
    test = make_dataset(data, "test", batch_size=16, image_size=SIZE, normalization="zero_one")
    logits, y = predict_logits(model, test)  # batches of 16, 16, 8: the last one retraces
    images = np.concatenate([x.numpy() for x, _ in test])
    np.testing.assert_allclose(logits, model(images, training=False).numpy(), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_array_equal(y, data.subset("test").labels)
    compiled, _ = predict_logits(model, test, jit_compile=True)
    np.testing.assert_allclose(compiled, logits, rtol=1e-4, atol=1e-5)


def test_evaluate_model_reports_intervals_calibration_and_predictions(data, tmp_path, capsys,
                                                                      model_of):
    model = model_of()
    results = evaluate_model(model, data, as_options(CONFIG), tmp_path)
    assert results["labels"] == "as given" and not any(k.startswith("noisy_") for k in results)
    assert results["test_images"] == 40 and results["test_patients"] == 20
    lo, hi = results["mean_auc_ci"]
    assert lo <= results["mean_auc"] <= hi
    assert set(results["per_class_auc_ci"]) == set(CLASSES)
    assert results["bootstrap"]["resamples"] == 200 and results["bootstrap"]["unit"] == "patient"
    # the same numbers as the statistics module on the pipeline's outputs
    test = data.subset("test")
    boot = statistics.bootstrap_auc(test.labels, sigmoid_of(predict_logits(model, make_dataset(
        data, "test", batch_size=8, image_size=SIZE, normalization="zero_one"))[0]),
        test.patients, n_boot=200, seed=0)
    assert results["mean_auc_ci"] == pytest.approx(boot["mean_ci"])
    calibration = results["calibration"]
    assert calibration["bins"] == 15 and set(calibration["per_class"]) == set(CLASSES)
    assert 0 <= calibration["ece"] <= 1 and 0 <= calibration["brier"] <= 1

    table = pd.read_csv(tmp_path / "per_class_auc.csv")
    assert {"ci_lo", "ci_hi"} <= set(table.columns)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["mean_auc"] == pytest.approx(table["auc"].mean(skipna=True))
    np.testing.assert_allclose(table[["ci_lo", "ci_hi"]].to_numpy(),
                               [metrics["per_class_auc_ci"][c] for c in CLASSES])
    assert "ci_lo" in (tmp_path / "per_class_auc.md").read_text()
    for name in ("reliability.png", "roc_curves.png", "test_predictions.npz"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically, nothing left behind

    with np.load(tmp_path / "test_predictions.npz", allow_pickle=False) as npz:
        assert {"logits", "labels", "patients", "paths", "class_names"} <= set(npz.files)
        assert "clean_labels" not in npz.files
        np.testing.assert_array_equal(npz["paths"], test.paths)
        np.testing.assert_array_equal(npz["patients"], test.patients)
        assert list(npz["class_names"]) == CLASSES
        assert per_class_auc(npz["labels"], sigmoid_of(npz["logits"]), CLASSES)["auc"].tolist() \
            == pytest.approx(list(results["per_class_auc"].values()))

    print_results(results)
    out = capsys.readouterr().out
    assert f"mean AUC {results['mean_auc']:.4f} [{lo:.3f}, {hi:.3f}]" in out
    # An interval with too few resamples is NaN, which metrics.json holds as null: printed
    # without a bracket (a TypeError before), with the count of resamples behind it.
    read_back = json.loads(json.dumps({**results, "mean_auc_ci_resamples": 12,
                                       "per_class_auc_ci": {c: [None, None] for c in CLASSES},
                                       "mean_auc_ci": [None, None]}))
    print_results(read_back)
    out = capsys.readouterr().out
    assert f"mean AUC {results['mean_auc']:.4f} |" in out
    assert "is from 12 of" in out and "(fewer than 40: no interval)" in out
    assert "ECE" in out and "Brier" in out


def test_a_partial_configuration_gets_a_model_card_with_the_run_s_preprocessing(
        data, tmp_path, model_of):
    # Regression: a notebook's partial configuration (as_options fills in the defaults)
    # crashed the model card with KeyError 'normalization' after metrics.json was written,
    # and a given normalization without a seed printed "seed None".
    evaluate_model(model_of(), data, as_options({"image_size": SIZE, "bootstrap": 0,
                                                 "latency_images": 2}), tmp_path)
    card = (tmp_path / "model_card.md").read_text()
    info = json.loads((tmp_path / "model_info.json").read_text())
    assert f"normalisation `{info['normalization']}`" in card and "seed 0," in card
    assert f"input: {SIZE}x{SIZE} RGB" in card


def test_clean_labels_are_the_headline_and_noisy_ones_are_reported_beside(data, tmp_path,
                                                                        capsys, model_of):
    noisy_data = _with_clean_labels(data)
    model = model_of()
    results = evaluate_model(model, noisy_data, as_options(CONFIG), tmp_path, prefix="x_")
    assert results["labels"] == "clean"
    plain = evaluate_model(model, data, as_options({**CONFIG, "bootstrap": 0}), tmp_path, prefix="plain_")
    # headline numbers against the clean labels == the same model on the clean dataset
    assert results["mean_auc"] == pytest.approx(plain["mean_auc"])
    assert results["calibration"]["ece"] == pytest.approx(plain["calibration"]["ece"])
    for key in ("noisy_mean_auc", "noisy_mean_auc_ci", "noisy_per_class_auc",
                "noisy_per_class_auc_ci", "noisy_calibration"):
        assert key in results, key
    assert results["noisy_mean_auc"] != pytest.approx(results["mean_auc"])
    table = pd.read_csv(tmp_path / "x_per_class_auc.csv")
    assert {"noisy_auc", "noisy_ci_lo", "noisy_ci_hi"} <= set(table.columns)
    with np.load(tmp_path / "x_test_predictions.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["clean_labels"], data.subset("test").labels)
        np.testing.assert_array_equal(npz["labels"], noisy_data.subset("test").labels)
    print_results(results)
    assert "noisy labels" in capsys.readouterr().out
    # bootstrap=0: no intervals, and the table says n/a
    assert "mean_auc_ci" not in plain and "bootstrap" not in plain


def test_two_finished_runs_are_compared_from_their_predictions(data, tmp_path, model_of):
    noisy_data = _with_clean_labels(data)
    for seed in (0, 1):
        evaluate_model(model_of(seed), noisy_data, as_options(CONFIG), tmp_path, prefix=f"m{seed}_",
                       model_name=f"model{seed}")
    summary, table = statistics.compare_predictions(tmp_path / "m0_test_predictions.npz",
                                                    tmp_path / "m1_test_predictions.npz",
                                                    n_boot=100, seed=0)
    assert summary["labels"] == "clean" and summary["model_a"] == "model0"
    first = json.loads((tmp_path / "m0_metrics.json").read_text())
    assert summary["comparison"]["mean_auc_a"] == pytest.approx(first["mean_auc"])
    assert summary["noisy_comparison"]["mean_auc_a"] == pytest.approx(first["noisy_mean_auc"])
    assert summary["comparison"]["calibration_a"]["ece"] == pytest.approx(
        first["calibration"]["ece"])
    assert 0 <= summary["comparison"]["p_value"] <= 1
    assert set(table["test"]) == {"paired patient bootstrap"}  # per class too: patient-aware
    # a run on other test images is refused
    other = data.select(np.r_[np.arange(20), np.arange(21, 60), 20])
    evaluate_model(model_of(), other, as_options({**CONFIG, "bootstrap": 0}), tmp_path, prefix="o_")
    with pytest.raises(ConfigError, match="same images"):
        statistics.compare_predictions(tmp_path / "m0_test_predictions.npz",
                                       tmp_path / "o_test_predictions.npz", n_boot=10, seed=0)


def test_plot_reliability_writes_a_png(tmp_path):
    from chestkd.evaluation.plots import plot_reliability
    rng = np.random.default_rng(0)
    p = rng.random((200, 2))
    y = (rng.random((200, 2)) < p).astype(float)
    curve = statistics.reliability_curve(y, p)
    path = plot_reliability({"clean": {**curve, "ece": 0.01}, "noisy": curve},
                            tmp_path / "r.png")
    assert path.stat().st_size > 1000
    assert plot_reliability(curve, tmp_path / "one.png").exists()


def test_roc_curves_tell_14_findings_apart_and_pass_over_an_unknown_class(tmp_path,
                                                                           monkeypatch):
    # Regressions: matplotlib's 10-colour cycle gave Atelectasis and Emphysema (and three
    # more pairs) one colour and style; a class whose labels are all unknown (-1, CheXpert's
    # U-Ignore) crashed the plot after metrics.json was written.
    from chestkd.evaluation import plots
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or Path(path))
    rng = np.random.default_rng(0)
    y = (rng.random((60, 15)) < 0.4).astype(float)
    y[:, 14] = -1
    plots.plot_roc_curves(y, rng.normal(size=(60, 15)), [f"c{i}" for i in range(15)],
                          tmp_path / "roc.png")
    curves = [line for line in figures[0].axes[0].lines if line.get_label().startswith("c")]
    assert [line.get_label().split()[0] for line in curves] == [f"c{i}" for i in range(14)]
    looks = {(line.get_color(), line.get_linestyle()) for line in curves}
    assert len(looks) == 14


def test_importing_plots_leaves_the_matplotlib_backend_alone():
    # A notebook's inline backend; the old module called matplotlib.use("Agg") at import.
    code = ("import matplotlib, sys; before = matplotlib.rcParams['backend']; "
            "import chestkd.evaluation.plots; "
            "print(before == matplotlib.rcParams['backend'], 'matplotlib.pyplot' in sys.modules)")
    env = {**os.environ, "MPLBACKEND": "module://matplotlib_inline.backend_inline",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True)
    assert done.stdout.split()[-2:] == ["True", "False"], done.stdout + done.stderr


def _with_val_split(data):
    copy = data.select(np.arange(len(data)))
    copy.split = np.array(["train"] * 10 + ["val"] * 10 + ["test"] * 40)
    return copy


def _youden(y, p, threshold):
    decided = p >= threshold
    return decided[y == 1].mean() - decided[y == 0].mean()


def test_thresholds_are_chosen_on_the_validation_split_and_recorded_with_the_model(
        data, tmp_path, model_of):
    with_val = _with_val_split(data)
    model = model_of()
    results = evaluate_model(model, with_val, as_options({**CONFIG, "bootstrap": 0}), tmp_path)
    thresholds = results["thresholds"]
    assert thresholds["rule"] == "youden" and thresholds["values"] == thresholds["youden"]
    assert thresholds["split"].startswith("val (10 images)")
    val = with_val.subset("val")
    p = sigmoid_of(predict_logits(model, make_dataset(with_val, "val", batch_size=8,
                                                   image_size=SIZE,
                                                   normalization="zero_one"))[0])
    for c in range(3):  # Youden's J at the chosen cut is the best over every possible cut
        y = val.labels[:, c]
        best = max(_youden(y, p[:, c], t) for t in np.r_[p[:, c], 1.0])
        assert _youden(y, p[:, c], thresholds["youden"][c]) == pytest.approx(best)
    info = json.loads((tmp_path / "model_info.json").read_text())
    assert info["class_names"] == CLASSES and info["image_size"] == SIZE
    assert info["normalization"] == "zero_one" and info["multi_label"] is True
    assert info["thresholds"]["youden"] == pytest.approx(thresholds["youden"])
    report = pd.read_csv(tmp_path / "classification_report.csv")
    assert list(report["class"][:3]) == CLASSES and "micro avg" in set(report["class"])
    assert (tmp_path / "model_card.md").exists()

    # the test labels never move them; the validation labels do; the rule is an option
    changed_test = with_val.select(np.arange(len(with_val)))
    changed_test.labels = np.where(changed_test.split[:, None] == "test",
                                   1 - changed_test.labels, changed_test.labels)
    again = evaluate_model(model, changed_test, as_options({**CONFIG, "bootstrap": 0}), tmp_path,
                           prefix="t_")
    assert again["thresholds"]["youden"] == pytest.approx(thresholds["youden"])
    by_f1 = evaluate_model(model, with_val, as_options({**CONFIG, "bootstrap": 0,
                                                        "threshold_rule": "f1"}), tmp_path, prefix="f_")
    assert by_f1["thresholds"]["values"] == by_f1["thresholds"]["f1"]
    with pytest.raises(ConfigError, match="threshold-rule"):
        evaluate_model(model, with_val, as_options({**CONFIG, "bootstrap": 0,
                                             "threshold_rule": "max"}), tmp_path, prefix="x_")


def test_without_a_validation_split_every_threshold_is_one_half(data, tmp_path, model_of):
    results = evaluate_model(model_of(), data, as_options({**CONFIG, "bootstrap": 0}), tmp_path)
    assert results["thresholds"]["values"] == [0.5] * 3
    assert "no validation split" in results["thresholds"]["split"]


def test_a_markdown_table_shows_an_interval_in_the_table_s_format():
    # The report's comparisons table printed difference_ci as the raw list
    # "[-0.17783363931007168, -0.06987179605357986]".
    from chestkd.evaluation import markdown_table
    frame = pd.DataFrame({"difference": [-0.1071], "difference_ci": [[-0.17783363931007168,
                                                                       -0.06987179605357986]],
                          "ci": [[float("nan"), 0.5]], "names": [["a", "b"]]})
    assert markdown_table(frame, ".3f").splitlines()[-1] == \
        "| -0.107 | [-0.178, -0.070] | [n/a, 0.500] | ['a', 'b'] |"
