"""Statistics of test-split results: exact AUC, patient bootstrap, paired tests, DeLong,
calibration, and the comparison of two runs' saved predictions, each against a reference."""
import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from chestkd.errors import ConfigError, DataError
from chestkd.evaluation import statistics as st


def _sklearn_auc(y, s):
    """Per-class sklearn AUC over known labels, NaN for a one-valued class."""
    out = []
    for c in range(y.shape[1]):
        known = y[:, c] >= 0
        yc, sc = y[known, c], s[known, c]
        out.append(roc_auc_score(yc, sc) if 0 < yc.sum() < len(yc) else np.nan)
    return np.array(out)


def _problem(n=300, classes=5, seed=0, signal=1.0, ties=True, unknown=0.05):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, classes)) < 0.3).astype(np.float64)
    s = rng.normal(size=(n, classes)) + signal * y
    if ties:
        s = np.round(s, 1)  # many tied scores
    y[rng.random((n, classes)) < unknown] = -1
    return y, s


# ------------------------------------------------------------------ exact AUC


def test_exact_auc_equals_sklearn_with_ties_and_unknown_labels():
    y, s = _problem()
    np.testing.assert_allclose(st.exact_auc(y, s), _sklearn_auc(y, s), rtol=0, atol=1e-12)
    # one class, 1-D input: a float
    assert st.exact_auc(y[:, 0], s[:, 0]) == pytest.approx(_sklearn_auc(y, s)[0], abs=1e-12)
    # all scores tied: 0.5
    assert st.exact_auc(np.array([0, 1, 0, 1.0]), np.zeros(4)) == 0.5


def test_exact_auc_weights_equal_repeated_rows():
    y, s = _problem(n=120, seed=1)
    w = np.random.default_rng(2).integers(0, 4, len(y))
    repeated = np.repeat(np.arange(len(y)), w)
    np.testing.assert_allclose(st.exact_auc(y, s, w), _sklearn_auc(y[repeated], s[repeated]),
                               atol=1e-12)
    # a batch of weight rows gives the same as one row at a time
    batch = np.random.default_rng(3).integers(0, 3, (6, len(y)))
    np.testing.assert_allclose(st.exact_auc(y, s, batch),
                               np.stack([st.exact_auc(y, s, row) for row in batch]), atol=1e-15)


def test_one_valued_class_is_nan_and_left_out_of_the_mean():
    y, s = _problem(n=50, classes=3, seed=4)
    y[:, 1] = np.where(y[:, 1] >= 0, 0.0, -1.0)  # no positive
    auc = st.exact_auc(y, s)
    assert np.isnan(auc[1]) and np.isfinite(auc[[0, 2]]).all()
    assert st.mean_over_classes(auc) == pytest.approx(np.mean(auc[[0, 2]]))


def test_bad_inputs_are_data_errors():
    with pytest.raises(DataError, match="1, 0 or -1"):
        st.exact_auc(np.array([0, 0.5, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(DataError, match="shape"):
        st.exact_auc(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(DataError, match="non-finite"):
        st.exact_auc(np.array([0, 1.0]), np.array([0.1, np.nan]))
    with pytest.raises(DataError, match="groups"):
        st.bootstrap_auc(np.array([0, 1.0]), np.array([0.1, 0.2]), ["a"], n_boot=5)
    with pytest.raises(ConfigError, match="confidence"):
        st.bootstrap_auc(np.array([0, 1.0]), np.array([0.1, 0.2]), ["a", "b"], confidence=95)


def test_statistics_does_not_import_tensorflow():
    code = ("import sys, chestkd.evaluation.statistics as s; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


# ------------------------------------------------------------------ bootstrap


def _plain_bootstrap(y, s, n_boot, seed, confidence=0.95):
    """Reference: resample images with replacement and score the materialised rows."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        rows = rng.integers(0, len(y), len(y))
        samples.append(_sklearn_auc(y[rows], s[rows]))
    samples = np.array(samples)
    a = (1 - confidence) / 2
    per_class = [np.quantile(col[np.isfinite(col)], [a, 1 - a]) for col in samples.T]
    return np.array(per_class), np.quantile(np.nanmean(samples, axis=1), [a, 1 - a])


def test_bootstrap_with_one_image_per_patient_is_the_plain_bootstrap():
    y, s = _problem(n=80, classes=3, seed=5, unknown=0.0)
    groups = [f"patient-{i}" for i in range(len(y))][::-1]  # ids in any order
    result = st.bootstrap_auc(y, s, groups, n_boot=150, seed=7)
    per_class, mean = _plain_bootstrap(y, s, 150, 7)
    np.testing.assert_allclose(result["per_class_ci"], per_class, atol=1e-12)
    np.testing.assert_allclose(result["mean_ci"], mean, atol=1e-12)
    np.testing.assert_allclose(result["per_class_auc"], _sklearn_auc(y, s), atol=1e-12)
    assert result["patients"] == result["images"] == 80


def test_cluster_bootstrap_keeps_a_patients_images_together():
    y, s = _problem(n=100, classes=3, seed=6)
    twice_y, twice_s = np.concatenate([y, y]), np.concatenate([s, s])
    patients = np.tile(np.arange(100), 2)  # each patient has two identical films
    clustered = st.bootstrap_auc(twice_y, twice_s, patients, n_boot=200, seed=1)
    # doubling every patient's weight leaves each resample's AUC unchanged: the same intervals
    # as one film per patient
    single = st.bootstrap_auc(y, s, np.arange(100), n_boot=200, seed=1)
    np.testing.assert_allclose(clustered["per_class_ci"], single["per_class_ci"], atol=1e-12)
    np.testing.assert_allclose(clustered["mean_ci"], single["mean_ci"], atol=1e-12)
    # resampling films as if independent understates the spread
    naive = st.bootstrap_auc(twice_y, twice_s, np.arange(200), n_boot=200, seed=1)
    assert np.diff(naive["mean_ci"])[0] < 0.85 * np.diff(clustered["mean_ci"])[0]


def test_interval_contains_the_estimate_and_narrows_with_more_data():
    widths = []
    for n in (200, 2000):
        y, s = _problem(n=n, classes=4, seed=8, ties=False)
        result = st.bootstrap_auc(y, s, np.arange(n), n_boot=300, seed=0)
        lo, hi = result["mean_ci"]
        assert lo < result["mean_auc"] < hi
        for (lo_c, hi_c), auc in zip(result["per_class_ci"], result["per_class_auc"]):
            assert lo_c <= auc <= hi_c
        widths.append(hi - lo)
    assert widths[1] < 0.5 * widths[0]  # ~ 1 / sqrt(10)


def test_bootstrap_is_nan_safe_and_reproducible():
    y, s = _problem(n=60, classes=3, seed=9, unknown=0.0)
    y[:, 1] = 0.0          # no positive at all: NaN estimate and interval
    y[:, 2] = 0.0
    y[:2, 2] = 1.0         # two positives: some resamples lose both
    result = st.bootstrap_auc(y, s, np.arange(60), n_boot=300, seed=3)
    assert np.isnan(result["per_class_auc"][1]) and np.isnan(result["per_class_ci"][1]).all()
    assert np.isfinite(result["per_class_ci"][2]).all()
    assert 0 < result["per_class_valid_resamples"][2] < 300
    assert result["per_class_valid_resamples"][1] == 0
    assert np.isfinite(result["mean_ci"]).all()
    again = st.bootstrap_auc(y, s, np.arange(60), n_boot=300, seed=3)
    assert json.dumps(result) == json.dumps(again)  # (NaN != NaN, so compare the JSON)


def _reference_resample_aucs(y, scores, n, n_boot, seed):
    """(B, C) sklearn AUCs of the patient resamples (one image per patient), drawn as
    ``_resample_weights`` draws them; NaN where a resample lacks a class's positives."""
    rng = np.random.default_rng(seed)
    out = np.full((n_boot, y.shape[1]), np.nan)
    for b in range(n_boot):
        pick = rng.integers(0, n, n)
        out[b] = _sklearn_auc(y[pick], scores[pick])
    return out


def test_mean_interval_uses_only_resamples_that_keep_every_finding():
    # A rare finding (two positive patients, AUC ~ 0) beside four good ones: a resample that
    # loses both positives used to contribute the four-finding mean (~0.95) to the interval of
    # the five-finding mean (~0.76), stretching it far above any five-finding value.
    rng = np.random.default_rng(0)
    n = 50
    y = rng.choice([0.0, 1.0], size=(n, 5))
    y[:, 4] = 0.0
    y[:2, 4] = 1.0
    s = rng.normal(size=(n, 5)) + 2.5 * y
    s[:, 4] = rng.normal(size=n)
    s[0, 4], s[1, 4] = -3.0, -2.0
    b = s + rng.normal(scale=0.3, size=s.shape)
    result = st.bootstrap_auc(y, s, np.arange(n), n_boot=400, seed=1)
    ref = _reference_resample_aucs(y, s, n, 400, seed=1)
    complete = np.isfinite(ref).all(axis=1)
    assert 0 < (~complete).sum() < 400                      # some resamples lose the finding
    assert result["mean_ci"][1] < 0.85                      # the mixture's upper end was 0.96
    np.testing.assert_allclose(result["mean_ci"], np.quantile(ref[complete].mean(1),
                                                              [0.025, 0.975]), atol=1e-12)
    assert result["mean_valid_resamples"] == complete.sum()
    paired = st.paired_bootstrap(y, s, b, np.arange(n), n_boot=400, seed=1)
    ref_b = _reference_resample_aucs(y, b, n, 400, seed=1)
    difference = ref_b[complete].mean(1) - ref[complete].mean(1)
    assert paired["mean_valid_resamples"] == complete.sum()
    np.testing.assert_allclose(paired["difference_ci"],
                               np.quantile(difference, [0.025, 0.975]), atol=1e-12)
    np.testing.assert_allclose(paired["mean_ci_a"], result["mean_ci"], atol=1e-12)
    tail = min(1 + (difference <= 0).sum(), 1 + (difference >= 0).sum())
    assert paired["p_value"] == pytest.approx(min(1.0, 2 * tail / (complete.sum() + 1)))


def test_an_interval_needs_a_resample_in_each_tail():
    # One surviving resample used to give a zero-width "interval" [d, d] that excluded zero
    # beside p = 1 (and did not contain the point estimate).
    assert st.min_resamples(0.95) == 40 and st.min_resamples(0.9) == 20
    assert np.isnan(st._interval([0.1], 0.95)).all()
    assert np.isnan(st._interval(np.r_[np.arange(39.0), np.nan], 0.95)).all()
    np.testing.assert_allclose(st._interval(np.arange(40.0), 0.95),
                               np.quantile(np.arange(40.0), [0.025, 0.975]))


def test_bootstrap_is_fast_enough_for_a_real_test_split():
    y, s = _problem(n=600, classes=14, seed=10)
    groups = np.arange(600) // 2
    start = time.perf_counter()
    st.bootstrap_auc(y, s, groups, n_boot=1000)
    assert time.perf_counter() - start < 10.0  # ~0.3 s alone; the machine is shared


# ------------------------------------------------------------------ paired bootstrap


def test_identical_models_differ_by_zero_with_p_one():
    y, s = _problem(n=150, classes=3, seed=11)
    result = st.paired_bootstrap(y, s, s.copy(), np.arange(150) // 3, n_boot=200)
    assert result["difference"] == 0.0 and result["difference_ci"] == [0.0, 0.0]
    assert result["p_value"] == 1.0
    assert result["mean_auc_a"] == result["mean_auc_b"]


def test_clearly_different_models_have_a_tiny_p_value():
    y, s = _problem(n=400, classes=3, seed=12, signal=2.0, unknown=0.0)
    noise = np.random.default_rng(0).normal(size=s.shape)
    weak = s + 3.0 * noise
    result = st.paired_bootstrap(y, weak, s, np.arange(400), n_boot=500, seed=1)
    assert result["difference"] > 0.1 and result["difference_ci"][0] > 0
    assert result["p_value"] == pytest.approx(2 / 501)  # no resample reaches 0
    assert all(p < 0.01 for p in result["per_class_p_value"])


def test_bootstrap_p_value_formula():
    assert st.bootstrap_p_value(np.zeros(9)) == 1.0
    assert st.bootstrap_p_value(np.ones(9)) == pytest.approx(2 * 1 / 10)
    # 3 of 9 at or below 0: 2 * (1 + 3) / 10
    assert st.bootstrap_p_value([-1, -2, 0, 1, 2, 3, 4, 5, 6]) == pytest.approx(0.8)
    assert st.bootstrap_p_value([-1, -2, -3, 1, 2, 3, 4, 5, 6, np.nan]) == pytest.approx(0.8)


# ------------------------------------------------------------------ DeLong


def _delong_reference(y, scores):
    """Straightforward O(m n) DeLong structural components (DeLong et al. 1988), float64."""
    x, yy = scores[:, y == 1], scores[:, y == 0]
    m, n = x.shape[1], yy.shape[1]
    psi = (x[:, :, None] > yy[:, None, :]) + 0.5 * (x[:, :, None] == yy[:, None, :])
    v10 = psi.mean(axis=2)   # (k, m)
    v01 = psi.mean(axis=1)   # (k, n)
    aucs = psi.mean(axis=(1, 2))
    s10 = (v10 - aucs[:, None]) @ (v10 - aucs[:, None]).T / (m - 1)
    s01 = (v01 - aucs[:, None]) @ (v01 - aucs[:, None]).T / (n - 1)
    return aucs, s10 / m + s01 / n


def test_delong_matches_the_quadratic_reference():
    rng = np.random.default_rng(13)
    y = (rng.random(150) < 0.35).astype(float)
    scores = np.round(np.stack([y + rng.normal(size=150), 0.5 * y + rng.normal(size=150),
                                rng.normal(size=150)]), 1)
    aucs, cov = st.delong_covariance(y, scores)
    ref_aucs, ref_cov = _delong_reference(y, scores)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-13)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10, atol=1e-16)
    auc_a, auc_b, z, p = st.delong_test(y, scores[0], scores[1])
    var = ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1]
    assert z == pytest.approx((ref_aucs[1] - ref_aucs[0]) / np.sqrt(var), rel=1e-10)
    assert p == pytest.approx(2 * sps.norm.sf(abs(z)), rel=1e-10)
    assert (auc_a, auc_b) == pytest.approx(tuple(ref_aucs[:2]))
    # unknown labels are left out
    y_unknown = y.copy()
    y_unknown[:10] = -1
    assert st.delong_test(y_unknown, scores[0], scores[1])[:2] == pytest.approx(
        tuple(_delong_reference(y[10:], scores[:, 10:])[0][:2]))


def test_delong_variance_of_one_auc_matches_the_null_formula():
    # Two identical continuous distributions: Var(AUC) = (m + n + 1) / (12 m n), the variance of
    # the Mann-Whitney U / (m n); DeLong's estimate is unbiased for it to O(1/N).
    rng = np.random.default_rng(14)
    m, n = 40, 60
    y = np.r_[np.ones(m), np.zeros(n)]
    variances, aucs = [], []
    for _ in range(600):
        auc, cov = st.delong_covariance(y, rng.normal(size=m + n))
        variances.append(cov[0, 0])
        aucs.append(auc[0])
    exact = (m + n + 1) / (12 * m * n)
    assert np.mean(variances) == pytest.approx(exact, rel=0.05)
    assert np.var(aucs, ddof=1) == pytest.approx(exact, rel=0.15)
    # a hand example: positives [0.9, 0.4], negatives [0.5, 0.1]: V10 = [1, 0.5], V01 = [0.5, 1]
    auc, cov = st.delong_covariance(np.array([1, 1, 0, 0.0]), np.array([0.9, 0.4, 0.5, 0.1]))
    assert auc[0] == 0.75 and cov[0, 0] == pytest.approx(0.125 / 2 + 0.125 / 2)


def test_delong_agrees_roughly_with_the_paired_bootstrap():
    rng = np.random.default_rng(15)
    n = 500
    y = (rng.random(n) < 0.4).astype(float)
    a = 0.8 * y + rng.normal(size=n)
    b = a + 0.4 * y + 0.6 * rng.normal(size=n)
    auc_a, auc_b, z, p = st.delong_test(y, a, b)
    boot = st.paired_bootstrap(y, a, b, np.arange(n), n_boot=1000, seed=2)
    sd_delong = (auc_b - auc_a) / z
    assert boot["difference"] == pytest.approx(auc_b - auc_a, abs=1e-12)
    assert boot["difference_sd"] == pytest.approx(sd_delong, rel=0.2)
    assert p < 0.05 and boot["p_value"] < 0.05


def test_delong_degenerate_cases():
    y = np.array([0, 1, 0, 1, 1.0])
    s = np.array([0.1, 0.7, 0.3, 0.2, 0.9])
    assert st.delong_test(y, s, s.copy())[2:] == (0.0, 1.0)
    assert all(np.isnan(st.delong_test(np.zeros(5), s, s)))


# ------------------------------------------------------------------ calibration


def test_ece_of_a_calibrated_model_is_near_zero_and_of_a_bad_one_is_not():
    rng = np.random.default_rng(16)
    p = rng.random((20000, 2))
    y = (rng.random((20000, 2)) < p).astype(float)
    result = st.expected_calibration_error(y, p, bins=10)
    assert result["ece"] < 0.01 and (result["per_class"] < 0.015).all()
    overconfident = np.clip((p - 0.5) * 3 + 0.5, 0, 1)
    assert st.expected_calibration_error(y, overconfident, bins=10)["ece"] > 0.1


def test_ece_brier_and_reliability_on_a_hand_example():
    # two bins: [0, 0.5) and [0.5, 1]
    y = np.array([0, 1, 1, 1, 0, -1.0])
    p = np.array([0.2, 0.4, 0.6, 0.8, 1.0, 0.9])
    # bin 0: conf (0.2 + 0.4) / 2 = 0.3, acc 0.5; bin 1: conf 0.8, acc 2/3 (the -1 is left out)
    ece = 2 / 5 * abs(0.5 - 0.3) + 3 / 5 * abs(2 / 3 - 0.8)
    assert st.expected_calibration_error(y, p, bins=2)["ece"] == pytest.approx(ece, abs=1e-15)
    brier = (0.2 ** 2 + 0.6 ** 2 + 0.4 ** 2 + 0.2 ** 2 + 1.0) / 5
    assert st.brier_score(y, p)["brier"] == pytest.approx(brier, abs=1e-15)
    curve = st.reliability_curve(y, p, bins=4)
    np.testing.assert_array_equal(curve["count"], [1, 1, 1, 2])
    np.testing.assert_allclose(curve["mean_predicted"], [0.2, 0.4, 0.6, 0.9])
    np.testing.assert_allclose(curve["observed"], [0, 1, 1, 0.5])
    np.testing.assert_allclose(curve["edges"], [0, 0.25, 0.5, 0.75, 1])
    assert np.isnan(st.reliability_curve(y, p, bins=10)["observed"][0])  # an empty bin


def test_multi_label_calibration_pools_known_pairs():
    y = np.array([[1, 0], [0, -1], [1, 1.0]])
    p = np.array([[0.9, 0.2], [0.3, 0.5], [0.6, 0.7]])
    result = st.expected_calibration_error(y, p, bins=1)  # one bin: |mean y - mean p|
    assert result["ece"] == pytest.approx(abs(3 / 5 - (0.9 + 0.2 + 0.3 + 0.6 + 0.7) / 5))
    np.testing.assert_allclose(result["per_class"], [abs(2 / 3 - 0.6), abs(0.5 - 0.45)])
    brier = st.brier_score(y, p)
    np.testing.assert_allclose(brier["per_class"], [(0.01 + 0.09 + 0.16) / 3,
                                                    (0.04 + 0.09) / 2])
    assert brier["brier"] == pytest.approx((0.01 + 0.09 + 0.16 + 0.04 + 0.09) / 5)


def test_single_label_calibration_is_top_label_ece_and_multiclass_brier():
    y = np.eye(3)[[0, 1, 2, 0]]
    p = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1]])
    # top labels 0, 0, 2, 1: correct, wrong, correct, wrong; confidences 0.7, 0.5, 0.8, 0.6
    result = st.expected_calibration_error(y, p, bins=1, multi_label=False)
    assert result["ece"] == pytest.approx(abs(0.5 - (0.7 + 0.5 + 0.8 + 0.6) / 4))
    brier = st.brier_score(y, p, multi_label=False)
    expected = np.mean(((p - y) ** 2).sum(axis=1))
    assert brier["brier"] == pytest.approx(expected)
    assert brier["per_class"].sum() == pytest.approx(expected)
    curve = st.reliability_curve(y, p, bins=2, multi_label=False)
    np.testing.assert_array_equal(curve["count"], [0, 4])
    with pytest.raises(DataError, match="probabilities"):
        st.brier_score(y, p * 2)
    with pytest.raises(ConfigError, match="bins"):
        st.expected_calibration_error(y, p, bins=0)


# ------------------------------------------------------------------ two runs


def _predictions(seed, n=120, classes=("a", "b", "c"), *, clean=True, paths=None, shift=0.0):
    rng = np.random.default_rng(100)  # the same images and labels for every run
    truth = (rng.random((n, len(classes))) < 0.3).astype(np.float32)
    noisy = np.where(rng.random(truth.shape) < 0.1, 1 - truth, truth).astype(np.float32)
    model = np.random.default_rng(seed)
    logits = (2 + shift) * truth + model.normal(size=truth.shape)
    pred = {"logits": logits, "labels": noisy,
            "patients": np.array([f"p{i // 2}" for i in range(n)]),
            "paths": np.array(paths if paths is not None else [f"/x/{i}.png" for i in range(n)]),
            "class_names": np.array(classes), "multi_label": np.array(True),
            "model": np.array(f"model{seed}")}
    if clean:
        pred["clean_labels"] = truth
    return pred


def test_compare_predictions_on_clean_and_noisy_labels(tmp_path):
    a, b = _predictions(1), _predictions(2, shift=1.0)
    np.savez(tmp_path / "a.npz", **a)
    summary, table = st.compare_predictions(tmp_path / "a.npz", b, n_boot=200, seed=0)
    assert summary["labels"] == "clean" and "noisy_comparison" in summary
    comparison = summary["comparison"]
    prob_a, prob_b = (st.probabilities_from_logits(p["logits"], True) for p in (a, b))
    for c, name in enumerate("abc"):
        expected = st.delong_test(a["clean_labels"][:, c], prob_a[:, c], prob_b[:, c])
        got = comparison["per_class"][name]
        assert (got["auc_a"], got["auc_b"], got["delong_z"], got["delong_p"]) == \
            pytest.approx(expected)
    paired = st.paired_bootstrap(a["clean_labels"], prob_a, prob_b, a["patients"], n_boot=200)
    assert comparison["difference"] == pytest.approx(paired["difference"])
    assert comparison["p_value"] == paired["p_value"] and comparison["difference"] > 0
    noisy = summary["noisy_comparison"]
    assert noisy["mean_auc_a"] == pytest.approx(
        st.mean_over_classes(st.exact_auc(a["labels"], prob_a)))
    assert noisy["mean_auc_a"] < comparison["mean_auc_a"]  # label noise lowers measured AUC
    assert set(comparison["calibration_a"]) == {"ece", "brier", "bins", "per_class"}
    json.dumps(summary)  # JSON-ready
    assert list(table["finding"]) == ["a", "b", "c", "**mean**"]
    assert {"model1", "model1_ci", "model2", "model2_ci", "change", "change_ci", "p", "p_holm",
            "test", "p_clustered_delong"} <= set(table.columns)
    for c, name in enumerate("abc"):
        expected = st.clustered_delong_test(a["clean_labels"][:, c], prob_a[:, c], prob_b[:, c],
                                            a["patients"])
        assert comparison["per_class"][name]["clustered_delong_p"] == pytest.approx(expected[3])
        assert table["p_clustered_delong"].iloc[c] == pytest.approx(expected[3])
    # the table's per-class p is the paired patient bootstrap's (same resamples), Holm beside it
    np.testing.assert_allclose(table["p"][:3], paired["per_class_p_value"])
    np.testing.assert_allclose(table["p_holm"][:3], st.holm(paired["per_class_p_value"]))
    assert table["p"].iloc[3] == paired["p_value"] and np.isnan(table["p_holm"].iloc[3])
    assert set(table["test"]) == {"paired patient bootstrap"}
    # each model's interval comes from the same patient resamples as bootstrap_auc's
    alone = st.bootstrap_auc(a["clean_labels"], prob_a, a["patients"], n_boot=200, seed=0)
    np.testing.assert_allclose(np.stack(table["model1_ci"][:3]), alone["per_class_ci"])
    np.testing.assert_allclose(table["model1_ci"].iloc[3], alone["mean_ci"])
    text = st.comparison_markdown(comparison, "model1", "model2")
    assert "p (paired patient bootstrap)" in text and "p Holm-adjusted (3 findings)" in text
    assert "p (clustered DeLong)" in text
    assert "ECE model1" in text and "(single test)" in text


def test_write_comparison_writes_the_table_the_markdown_and_the_summary(tmp_path, capsys):
    a, b = _predictions(1), _predictions(2, shift=1.0)
    summary = st.write_comparison(a, b, tmp_path, names=("base", "new"), title="T", n_boot=50,
                                  seed=3)
    expected, table = st.compare_predictions(a, b, n_boot=50, seed=3)
    assert json.loads((tmp_path / "comparison.json").read_text())["comparison"]["difference"] \
        == pytest.approx(expected["comparison"]["difference"])
    assert summary["comparison"]["p_value"] == expected["comparison"]["p_value"]
    written = pd.read_csv(tmp_path / "comparison.csv")
    assert list(written["finding"]) == ["a", "b", "c", "**mean**"]
    np.testing.assert_allclose(written["base"], table["model1"])  # named by ``names``
    np.testing.assert_allclose(written["new"], table["model2"])
    text = (tmp_path / "comparison.md").read_text()
    assert text.startswith("# T\n\n## Test AUC against clean labels\n")
    assert "## Test AUC against noisy labels" in text and text.endswith("\n")
    assert text.strip() in capsys.readouterr().out
    assert st.comparison_markdown(expected["noisy_comparison"], "base", "new") in text
    # without clean labels: one section, against the labels as given
    plain = tmp_path / "plain"
    plain.mkdir()
    st.write_comparison(_predictions(1, clean=False), _predictions(2, clean=False), plain,
                        n_boot=0)
    assert "as given labels" in (plain / "comparison.md").read_text()
    assert "noisy" not in (plain / "comparison.md").read_text()


def test_equal_model_names_keep_both_columns(tmp_path):
    # Two seeds of one model: the table's row dict used to keep only model B's AUC column.
    a, b = _predictions(0), _predictions(1, shift=0.5)
    summary = st.write_comparison(a, b, tmp_path, names=("resnet20", "resnet20"), n_boot=0)
    table = pd.read_csv(tmp_path / "comparison.csv")
    per_class = summary["comparison"]["per_class"]
    np.testing.assert_allclose(table["A: resnet20"][:-1], [v["auc_a"] for v in per_class.values()])
    np.testing.assert_allclose(table["B: resnet20"][:-1], [v["auc_b"] for v in per_class.values()])
    assert "A: resnet20 AUC" in (tmp_path / "comparison.md").read_text()


def test_compare_predictions_without_clean_labels_and_without_bootstrap():
    summary, table = st.compare_predictions(_predictions(1, clean=False),
                                            _predictions(2, clean=False), n_boot=0, seed=0)
    assert summary["labels"] == "as given" and "noisy_comparison" not in summary
    assert np.isnan(summary["comparison"]["p_value"])
    assert np.isfinite(summary["comparison"]["per_class"]["a"]["delong_p"])
    assert table["p"].isna().all() and set(table["test"]) == {"none (bootstrap=0)"}
    assert np.isfinite(table["p_clustered_delong"].iloc[:3]).all()  # no bootstrap needed
    assert "bootstrap was off" in st.comparison_markdown(summary["comparison"])


def test_compare_predictions_refuses_different_test_images():
    a = _predictions(1)
    with pytest.raises(ConfigError, match="same images"):
        st.compare_predictions(a, _predictions(2, paths=[f"/y/{i}.png" for i in range(120)]),
                               n_boot=10, seed=0)
    with pytest.raises(ConfigError, match="same images"):
        st.compare_predictions(a, {k: v[:60] if np.ndim(v) else v
                                   for k, v in _predictions(2).items()}, n_boot=10, seed=0)
    with pytest.raises(ConfigError, match="classes"):
        st.compare_predictions(a, {**_predictions(2), "class_names": np.array(["a", "b", "d"])},
                               n_boot=10, seed=0)
    with pytest.raises(DataError, match="missing"):
        st.compare_predictions(a, {"logits": a["logits"]}, n_boot=10, seed=0)


# ------------------------------------------------------------------ per-class p and patients


def test_holm_matches_a_hand_computed_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 * 0.005, 3 * 0.01, 2 * 0.03, 1 * 0.04, then the
    # running maximum: 0.02, 0.03, 0.06, 0.06; a NaN is not a test (m = 4, it stays NaN)
    adjusted = st.holm([0.01, 0.04, np.nan, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, np.nan, 0.06, 0.02])
    np.testing.assert_allclose(st.holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    assert st.holm([0.04]) == pytest.approx([0.04])  # one test: unchanged
    assert np.isnan(st.holm([np.nan, np.nan])).all()
    # against the definition, on random p-values with ties
    p = np.random.default_rng(0).choice([0.001, 0.01, 0.02, 0.2, 0.5], 9)
    order = np.argsort(p, kind="mergesort")
    expected = np.empty(9)
    expected[order] = np.minimum(1, np.maximum.accumulate((9 - np.arange(9)) * p[order]))
    np.testing.assert_allclose(st.holm(p), expected)


def _duplicated_patients(copies=25, patients=40, seed=2):
    """One image per patient, each image repeated ``copies`` times (one patient's views)."""
    rng = np.random.default_rng(seed)
    y = (np.arange(patients) % 2).astype(float)
    a = y + 1.2 * rng.normal(size=patients)
    b = y + 1.2 * rng.normal(size=patients)
    pred = {"labels": np.repeat(y, copies)[:, None],
            "patients": np.repeat([f"p{i}" for i in range(patients)], copies),
            "paths": np.array([f"/x/{i}.png" for i in range(patients * copies)]),
            "class_names": np.array(["finding"]), "multi_label": np.array(True)}
    logit = lambda s: np.log(s) - np.log1p(-s)  # noqa: E731  scores as logits, order kept
    squash = lambda s: 1 / (1 + np.exp(-s))  # noqa: E731
    return ({**pred, "logits": logit(squash(np.repeat(a, copies)))[:, None]},
            {**pred, "logits": logit(squash(np.repeat(b, copies)))[:, None]})


def test_table_p_is_patient_aware_when_images_of_a_patient_repeat():
    a, b = _duplicated_patients()
    # image-level DeLong counts the 25 copies as independent evidence: p far below 0.05
    _, _, _, image_level_p = st.delong_test(a["labels"][:, 0], a["logits"][:, 0],
                                            b["logits"][:, 0])
    assert image_level_p < 1e-3
    summary, table = st.compare_predictions(a, b, n_boot=500, seed=0)
    row = table.iloc[0]
    lo, hi = row["change_ci"]
    # the patient bootstrap sees 40 patients: the interval includes 0 and p agrees with it
    assert lo < 0 < hi
    assert row["p"] > 0.2 and row["p_holm"] == row["p"]  # one finding: Holm leaves it
    # the analytic patient-aware test agrees: clustered DeLong = DeLong on the 40 patients
    on_patients = st.delong_test(a["labels"][::25, 0], a["logits"][::25, 0], b["logits"][::25, 0])
    assert row["p_clustered_delong"] == pytest.approx(on_patients[3]) and on_patients[3] > 0.2
    assert summary["comparison"]["per_class"]["finding"]["delong_p"] == pytest.approx(
        image_level_p)
    # the cluster bootstrap is blind to copies: one image per patient gives the same p
    one_a, one_b = _duplicated_patients(copies=1)
    _, single = st.compare_predictions(one_a, one_b, n_boot=500, seed=0)
    assert single["p"].iloc[0] == pytest.approx(row["p"])


def _clustered_delong_reference(y, scores, groups):
    """Obuchowski (1997) written out with explicit loops in float64."""
    y, scores, groups = np.asarray(y, float), np.atleast_2d(scores), np.asarray(groups)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    M, N = len(pos), len(neg)

    def psi(x, z):
        return 1.0 if x > z else 0.5 if x == z else 0.0

    k = len(scores)
    v10 = np.array([[sum(psi(s[i], s[j]) for j in neg) / N for i in pos] for s in scores])
    v01 = np.array([[sum(psi(s[i], s[j]) for i in pos) / M for j in neg] for s in scores])
    auc = v10.mean(axis=1)
    patients = list(dict.fromkeys(groups[(y == 0) | (y == 1)]))
    d10 = np.zeros((k, len(patients)))
    d01 = np.zeros((k, len(patients)))
    for c, patient in enumerate(patients):
        mine_pos = [a for a, i in enumerate(pos) if groups[i] == patient]
        mine_neg = [b for b, j in enumerate(neg) if groups[j] == patient]
        for r in range(k):
            d10[r, c] = v10[r, mine_pos].sum() - len(mine_pos) * auc[r]
            d01[r, c] = v01[r, mine_neg].sum() - len(mine_neg) * auc[r]
    i10 = sum(any(groups[i] == p for i in pos) for p in patients)
    i01 = sum(any(groups[j] == p for j in neg) for p in patients)
    n_all = len(patients)
    cov = np.zeros((k, k))
    for r in range(k):
        for s in range(k):
            s10 = i10 / ((i10 - 1) * M) * sum(d10[r, c] * d10[s, c] for c in range(n_all))
            s01 = i01 / ((i01 - 1) * N) * sum(d01[r, c] * d01[s, c] for c in range(n_all))
            s11 = n_all / (n_all - 1) * sum(d10[r, c] * d01[s, c] for c in range(n_all))
            s11t = n_all / (n_all - 1) * sum(d10[s, c] * d01[r, c] for c in range(n_all))
            cov[r, s] = s10 / M + s01 / N + (s11 + s11t) / (M * N)
    return auc, cov


def test_clustered_delong_matches_a_loop_reference_with_mixed_patients():
    rng = np.random.default_rng(4)
    groups = np.repeat([f"p{i}" for i in range(14)], rng.integers(1, 5, 14))
    n = len(groups)
    y = (rng.random(n) < 0.4).astype(float)
    y[rng.random(n) < 0.1] = -1  # unknown labels are left out
    scores = np.stack([y + rng.normal(size=n), np.round(y + rng.normal(size=n), 1)])  # ties
    aucs, cov = st.clustered_delong_covariance(y, scores, groups)
    ref_aucs, ref_cov = _clustered_delong_reference(y, scores, groups)
    np.testing.assert_allclose(aucs, ref_aucs, rtol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10, atol=1e-15)
    assert aucs[0] == pytest.approx(st.exact_auc(y, scores[0]))


def test_clustered_delong_is_delong_with_one_image_per_patient_and_blind_to_copies():
    rng = np.random.default_rng(5)
    y = (rng.random(60) < 0.5).astype(float)
    a, b = y + rng.normal(size=60), y + 1.5 * rng.normal(size=60)
    plain = st.delong_covariance(y, np.stack([a, b]))
    clustered = st.clustered_delong_covariance(y, np.stack([a, b]), np.arange(60))
    np.testing.assert_allclose(clustered[1], plain[1], rtol=1e-12)
    expected = st.delong_test(y, a, b)
    assert st.clustered_delong_test(y, a, b, np.arange(60)) == pytest.approx(expected)
    copies = 7  # each patient's image 7 times: a patient still counts once
    repeated = st.clustered_delong_test(np.repeat(y, copies), np.repeat(a, copies),
                                        np.repeat(b, copies), np.repeat(np.arange(60), copies))
    assert repeated == pytest.approx(expected)
    assert st.delong_test(np.repeat(y, copies), np.repeat(a, copies),
                          np.repeat(b, copies))[3] < expected[3]  # image-level: overconfident
    # too few patients with a positive: no variance
    _, cov = st.clustered_delong_covariance([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.2], [0, 0, 1, 2])
    assert np.isnan(cov).all()


def test_a_finding_of_one_patient_gets_no_p_and_is_left_out_of_holm():
    rng = np.random.default_rng(6)
    patients = np.repeat([f"p{i}" for i in range(30)], 3)
    common = (rng.random(90) < 0.4).astype(float)
    rare = (patients == "p0").astype(float)  # every positive image is one patient's
    labels = np.stack([common, rare], axis=1)
    pred = {"labels": labels, "patients": patients, "class_names": np.array(["common", "rare"]),
            "paths": np.array([f"/x/{i}.png" for i in range(90)]), "multi_label": np.array(True)}
    a = {**pred, "logits": labels * 2 + rng.normal(size=(90, 2))}
    b = {**pred, "logits": labels * 3 + rng.normal(size=(90, 2))}
    summary, table = st.compare_predictions(a, b, n_boot=200, seed=0)
    rare_entry = summary["comparison"]["per_class"]["rare"]
    assert rare_entry["patients_with"] == {"positive": 1, "negative": 29}
    assert np.isnan(table["p"].iloc[1]) and np.isnan(table["p_holm"].iloc[1])
    assert np.isnan(table["p_clustered_delong"].iloc[1])  # one positive patient: no variance
    assert np.isfinite(table["p"].iloc[0]) and table["p_holm"].iloc[0] == table["p"].iloc[0]
    assert summary["comparison"]["multiplicity"] == "Holm over 1 findings"


def test_one_patient_gives_no_interval_and_no_p_value():
    # Every resample of one patient is the split itself: no spread, so no interval and no p
    # (it was a zero-width interval and p = 2 / (B + 1), "significant").
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, (40, 2)).astype(float)
    a = rng.normal(size=(40, 2))
    one = np.array(["p0"] * 40)
    paired = st.paired_bootstrap(y, a, a + 0.3 * y, one, n_boot=200)
    assert paired["difference"] > 0 and np.isnan(paired["p_value"])
    assert np.isnan(paired["difference_ci"]).all() and np.isnan(paired["mean_ci_b"]).all()
    single = st.bootstrap_auc(y, a, one, n_boot=200)
    assert np.isfinite(single["mean_auc"]) and np.isnan(single["mean_ci"]).all()
    assert single["per_class_valid_resamples"] == [0, 0]


def test_too_few_complete_resamples_give_no_interval_no_p_and_say_why():
    # 7 of 50 resamples kept every finding in a tiny run: the p of those 7 (0.250) stood
    # beside "no interval (bootstrap=0)", though the bootstrap was on.
    a, b = _predictions(0), _predictions(1, shift=0.5)
    for pred in (a, b):
        for key in ("labels", "clean_labels"):
            pred[key] = pred[key].copy()
            pred[key][:, 2] = 0.0
            pred[key][:2, 2] = 1.0          # one patient (p0) holds the only positives
    summary, _ = st.compare_predictions(a, b, n_boot=50, seed=0)
    comparison = summary["comparison"]
    assert comparison["mean_valid_resamples"] < 40
    assert np.isnan(comparison["difference_ci"]).all() and np.isnan(comparison["p_value"])
    text = st.comparison_markdown(comparison, "a", "b")
    assert "no interval (fewer than 40 resamples kept every finding)" in text
    assert "bootstrap=0" not in text
