"""Thresholded scores against scikit-learn and hand-computed references."""
import numpy as np
import pytest
from sklearn import metrics as skm

from chestkd.errors import ConfigError
from chestkd.evaluation.classification import (choose_thresholds, classification_report,
                                               confusion_matrix_figure, predicted_labels,
                                               precision_recall_f1, report_summary)


def _single_label(n=200, c=3, seed=0):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[true]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return np.eye(c)[true], p


def test_single_label_report_matches_scikit_learn():
    y, p = _single_label()
    names = ["normal", "pneumonia", "covid19"]
    report = classification_report(y, p, names, multi_label=False).set_index("class")
    reference = skm.classification_report(y.argmax(1), p.argmax(1), target_names=names,
                                          output_dict=True, zero_division=0)
    for name in names + ["macro avg", "weighted avg"]:
        for key, ref_key in (("precision", "precision"), ("recall", "recall"),
                             ("f1", "f1-score"), ("support", "support")):
            assert report.loc[name, key] == pytest.approx(reference[name][ref_key])
    assert report.loc["accuracy", "f1"] == pytest.approx(reference["accuracy"])
    summary = report_summary(report.reset_index(), multi_label=False)
    assert summary["f1"] == pytest.approx(reference["macro avg"]["f1-score"])


def test_multi_label_report_uses_thresholds_and_masks_unknown_labels():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, -1], [1, 0]], dtype=float)
    p = np.array([[0.9, 0.2], [0.4, 0.7], [0.3, 0.6], [0.8, 0.9], [0.6, 0.55]])
    report = classification_report(y, p, ["a", "b"], multi_label=True,
                                   thresholds=[0.5, 0.58]).set_index("class")
    # a: predictions 1,0,0,1,1 vs truth 1,0,1,0,1 -> tp 2, fp 1, fn 1
    assert report.loc["a", "precision"] == pytest.approx(2 / 3)
    assert report.loc["a", "recall"] == pytest.approx(2 / 3)
    # b (row 4 unknown): predictions 0,1,1,0 vs truth 0,1,1,0 -> perfect
    assert report.loc["b", ["precision", "recall", "f1"]].tolist() == [1.0, 1.0, 1.0]
    assert report.loc["b", "support"] == 2
    # micro: tp 4, fp 1, fn 1
    assert report.loc["micro avg", "precision"] == pytest.approx(0.8)
    # subset accuracy: rows 1, 2 (0-based), 4 right; row 3's unknown b ignored, a wrong
    assert report.loc["accuracy", "precision"] == pytest.approx(3 / 5)
    decisions = predicted_labels(p, multi_label=True, thresholds=[0.5, 0.58])
    assert decisions[:, 1].tolist() == [0, 1, 1, 1, 0]


def test_thresholds_maximise_youden_and_f1_on_the_given_data():
    rng = np.random.default_rng(1)
    y = (rng.random((300, 2)) < 0.3).astype(float)
    p = np.clip(0.3 * y + rng.random((300, 2)) * 0.7, 0, 1)
    youden = choose_thresholds(y, p, "youden")
    f1 = choose_thresholds(y, p, "f1")
    for c in range(2):
        candidates = np.unique(p[:, c])
        j = [((p[:, c] >= t) & (y[:, c] == 1)).sum() / y[:, c].sum()
             - ((p[:, c] >= t) & (y[:, c] == 0)).sum() / (1 - y[:, c]).sum() for t in candidates]
        best_j = max(j)
        got = youden[c]
        got_j = (((p[:, c] >= got) & (y[:, c] == 1)).sum() / y[:, c].sum()
                 - ((p[:, c] >= got) & (y[:, c] == 0)).sum() / (1 - y[:, c]).sum())
        assert got_j == pytest.approx(best_j)
        scores = [skm.f1_score(y[:, c], p[:, c] >= t) for t in candidates]
        assert skm.f1_score(y[:, c], p[:, c] >= f1[c]) == pytest.approx(max(scores))
    constant = choose_thresholds(np.zeros((4, 1)), np.full((4, 1), 0.2))
    assert constant.tolist() == [0.5]
    with pytest.raises(ConfigError, match="--threshold-rule .median.: choose one of youden, f1"):
        choose_thresholds(y, p, "median")


def test_confusion_matrix_figure_is_written(tmp_path):
    y, p = _single_label(30)
    path = confusion_matrix_figure(y, p, ["a", "b", "c"], tmp_path / "cm.png")
    assert path.stat().st_size > 1000
    with pytest.raises(ConfigError, match="class names"):
        classification_report(y, p, ["a", "b"], multi_label=False)


def test_a_class_without_positives_is_left_out_of_the_macro_average_and_named():
    # Regression: a class with no positives counted as precision = recall = F1 = 0, so a
    # perfect classifier's macro F1 read 0.5 (multi-label) or 0.667 (single-label) whenever a
    # rare class had no test images; its AUC is NaN and left out, and so are these now.
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=float)
    p = np.array([[0.9, 0.1], [0.1, 0.2], [0.8, 0.3], [0.2, 0.1]])
    report = classification_report(y, p, ["a", "b"], multi_label=True).set_index("class")
    assert report.loc["a", ["precision", "recall", "f1"]].tolist() == [1.0, 1.0, 1.0]
    assert np.isnan(report.loc["b", ["precision", "recall", "f1"]].to_numpy(float)).all()
    assert report.loc["macro avg", ["precision", "recall", "f1"]].tolist() == [1.0, 1.0, 1.0]
    assert report.loc["weighted avg", "f1"] == 1.0
    summary = report_summary(report.reset_index(), multi_label=True)
    assert summary["f1"] == 1.0 and summary["classes_without_positives"] == ["b"]
    # A false positive of the absent class still counts where it is defined: micro precision.
    p[1, 1] = 0.9
    report = classification_report(y, p, ["a", "b"], multi_label=True).set_index("class")
    assert report.loc["micro avg", "precision"] == pytest.approx(2 / 3)
    assert report.loc["macro avg", "f1"] == 1.0

    # Single-label: class c has no test image; the arg-max decisions are all right.
    y = np.eye(3)[[0, 1, 0, 1]]
    p = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.2, 0.7, 0.1]])
    report = classification_report(y, p, ["a", "b", "c"], multi_label=False)
    summary = report_summary(report, multi_label=False)
    assert (summary["accuracy"], summary["recall"], summary["f1"]) == (1.0, 1.0, 1.0)
    assert summary["classes_without_positives"] == ["c"]
    from chestkd.evaluation.metrics import single_label_metrics
    single = single_label_metrics(y, p, ["a", "b", "c"])
    assert single["f1"] == 1.0 and single["classes_without_positives"] == ["c"]
    assert single["per_class"]["support"].tolist() == [2, 2, 0]
    assert single["confusion_matrix"].tolist() == [[2, 0, 0], [0, 2, 0], [0, 0, 0]]
    # A class with positives and no positive decision keeps precision 0 (it is scored).
    assert precision_recall_f1(0, 0, 3) == (0.0, 0.0, 0.0)
