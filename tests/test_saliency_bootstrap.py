"""Bootstrap intervals of localisation scores and the paired comparison with the centre."""
import numpy as np
import pandas as pd
import pytest

from chestkd.saliency.analysis.bootstrap import (cluster_bootstrap_means, compare_with_baseline,
                                                 percentile_interval, summarise_with_intervals)


def test_cluster_bootstrap_matches_a_numpy_loop():
    rng = np.random.default_rng(0)
    values = rng.random((9, 2))
    values[3, 1] = np.nan                                   # a missing score is left out
    clusters = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4])
    means = cluster_bootstrap_means(values, clusters, 50, np.random.default_rng(7))
    draws = np.random.default_rng(7).integers(0, 5, size=(50, 5))
    for b in range(50):
        rows = np.concatenate([np.flatnonzero(clusters == c) for c in draws[b]])
        np.testing.assert_allclose(means[b], np.nanmean(values[rows], axis=0), rtol=1e-12)


def test_boxes_of_one_image_are_resampled_together():
    means = cluster_bootstrap_means(np.array([1.0, 1.0, 0.0]), np.array(["a", "a", "b"]), 400,
                                    np.random.default_rng(1))[:, 0]
    # a drawn twice: 1; b twice: 0; one of each: 2 / 3 (resampling boxes could also give 1 / 3).
    assert set(np.round(means, 6)) == {0.0, round(2 / 3, 6), 1.0}


def test_percentile_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(2)
    p, n, hits = 0.3, 80, 0
    for _ in range(300):
        sample = (rng.random(n) < p).astype(float)
        low, high = percentile_interval(
            cluster_bootstrap_means(sample, np.arange(n), 400, rng), 0.95)
        hits += low[0] <= p <= high[0]
    assert 0.90 <= hits / 300 <= 0.99


def per_box_table(hits_method, hits_centre, labels):
    n = len(labels)
    rows = []
    for method, hits in (("smoothgrad_ig", hits_method), ("centre", hits_centre)):
        rows.append(pd.DataFrame({"method": method, "map_index": np.arange(n),
                                  "image": [f"img{k}.png" for k in range(n)], "label": labels,
                                  "pointing_hit": hits, "energy": np.where(hits, 0.6, 0.1),
                                  "iou": np.where(hits, 0.5, 0.05),
                                  "iobb": np.where(hits, 0.7, 0.1), "box_index": np.arange(n)}))
    return pd.concat(rows, ignore_index=True)


def test_summary_has_intervals_and_counts():
    rng = np.random.default_rng(3)
    labels = np.array(["Mass", "Nodule"] * 30)
    per_box = per_box_table(rng.random(60) < 0.7, rng.random(60) < 0.4, labels)
    summary = summarise_with_intervals(per_box, n_boot=500, seed=0).set_index(["method", "label"])
    row = summary.loc[("smoothgrad_ig", "all")]
    assert row["boxes"] == 60 and row["images"] == 60
    assert row["pointing_lo"] < row["pointing"] < row["pointing_hi"]
    assert row["iou>0.1"] == pytest.approx(row["pointing"])        # iou 0.5 exactly on hits
    assert summary.loc[("centre", "Mass"), "boxes"] == 30
    again = summarise_with_intervals(per_box, n_boot=500, seed=0).set_index(["method", "label"])
    assert again.loc[("smoothgrad_ig", "all"), "pointing_lo"] == row["pointing_lo"]


def test_paired_comparison_with_the_centre():
    labels = np.array(["Mass"] * 40)
    always = per_box_table(np.ones(40, bool), np.zeros(40, bool), labels)
    table = compare_with_baseline(always, n_boot=300).set_index(["label", "metric"])
    assert table.loc[("all", "pointing"), "difference"] == 1.0
    assert table.loc[("all", "pointing"), "verdict"] == "beats centre"
    same = np.random.default_rng(4).random(40) < 0.5
    tie = compare_with_baseline(per_box_table(same, same, labels), n_boot=300)
    assert (tie["difference"] == 0).all() and (tie["verdict"] == "not distinguishable").all()
    worse = compare_with_baseline(per_box_table(np.zeros(40, bool), np.ones(40, bool), labels),
                                  n_boot=300)
    assert (worse["verdict"] == "worse than centre").all()


def test_a_finding_on_one_image_gets_no_interval_and_no_verdict():
    # Regression: one image resampled is always itself, so the interval had zero width,
    # [1.000, 1.000], and the verdict read "beats centre" from a single box.
    labels = np.array(["Mass"] + ["Nodule"] * 20)
    per_box = per_box_table(np.ones(21, bool), np.zeros(21, bool), labels)
    summary = summarise_with_intervals(per_box, n_boot=200).set_index(["method", "label"])
    assert np.isnan(summary.loc[("smoothgrad_ig", "Mass"), ["pointing_lo", "pointing_hi"]]
                    .to_numpy(float)).all()
    assert summary.loc[("smoothgrad_ig", "Nodule"), "pointing_lo"] == 1.0
    table = compare_with_baseline(per_box, n_boot=200).set_index(["label", "metric"])
    assert table.loc[("Mass", "pointing"), "verdict"] == "too few images"
    assert np.isnan(table.loc[("Mass", "pointing"), "low"])
    assert table.loc[("Nodule", "pointing"), "verdict"] == "beats centre"


def test_value_minus_baseline_is_the_difference_over_the_same_boxes():
    # Regression: a box the method did not score (NaN) left the method's mean but stayed in
    # the centre's, so value - baseline != difference (0.92 - 0.08 against 0.936).
    labels = np.array(["Mass"] * 10)
    per_box = per_box_table(np.ones(10, bool), np.zeros(10, bool), labels)
    per_box.loc[(per_box["method"] == "smoothgrad_ig") & (per_box["map_index"] < 3),
                "energy"] = np.nan
    per_box.loc[(per_box["method"] == "centre") & (per_box["map_index"] < 3), "energy"] = 0.9
    row = compare_with_baseline(per_box, n_boot=100).set_index(["label", "metric"]).loc[
        ("all", "energy")]
    assert row["value"] - row["baseline"] == pytest.approx(row["difference"])
    assert row["baseline"] == pytest.approx(0.1)
