"""Localisation scores with 95 % bootstrap intervals, and each method against the centre baseline.

The per-box scores of :func:`chestkd.saliency.analysis.localisation.localisation_scores` are
averaged per (model, method, finding) and over all findings. Their uncertainty comes from a
**cluster bootstrap over images**: the images (with all of their boxes) are drawn with replacement,
``n_boot`` times, and each score is re-averaged over the drawn boxes; the interval is the 2.5th
and 97.5th percentile of those means (the percentile bootstrap). Resampling images rather than
boxes keeps the several boxes of one radiograph together (they share one map); with one box per
image the two are the same. NaN scores are left out of the means. A group of fewer than
:data:`MIN_IMAGES` images gets no interval and no verdict (one image resampled is always
itself: a zero-width interval that says nothing).

**Against the centre baseline** (a fixed Gaussian, :func:`~chestkd.saliency.analysis.localisation.
centre_baseline_maps`): per box the difference ``method - centre`` is formed first (both scored
on the same box), then bootstrapped the same way — a *paired* bootstrap, far tighter than
comparing two separate intervals. A method beats the centre when the difference's interval lies
above 0, is worse when it lies below 0, and is not distinguishable otherwise.

All draws come from ``numpy.random.default_rng([seed, group])``: the same seed gives the same
intervals.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from chestkd.saliency.analysis.localisation import IOU_THRESHOLDS

CI_METRICS = ("pointing", "energy", "mean_iou", "mean_iobb")
MIN_IMAGES = 2
COMPARED_METRICS = ("pointing", "energy", "mean_iou")
BASELINE = "centre"


def box_metrics(per_box: pd.DataFrame, thresholds=IOU_THRESHOLDS) -> pd.DataFrame:
    """One row per box, one float column per summary metric (hits and ``iou>T`` as 0/1)."""
    values = {"pointing": per_box["pointing_hit"].astype(float),
              "energy": per_box["energy"].astype(float),
              "mean_iou": per_box["iou"].astype(float),
              "mean_iobb": per_box["iobb"].astype(float)}
    for t in thresholds:
        values[f"iou>{t:g}"] = (per_box["iou"] > t).astype(float)
    for t in thresholds:
        values[f"iobb>{t:g}"] = (per_box["iobb"] > t).astype(float)
    return pd.DataFrame(values, index=per_box.index)


def cluster_bootstrap_means(values, clusters, n_boot: int, rng) -> np.ndarray:
    """Means of ``values`` (boxes x metrics, NaN = missing) over ``n_boot`` resamplings of the
    clusters (one id per box) with replacement: ``(n_boot, metrics)``."""
    values = np.asarray(values, np.float64)
    values = values[:, None] if values.ndim == 1 else values
    ids, cluster_of_box = np.unique(np.asarray(clusters), return_inverse=True)
    present = ~np.isnan(values)
    sums = np.zeros((len(ids), values.shape[1]))
    counts = np.zeros_like(sums)
    np.add.at(sums, cluster_of_box, np.where(present, values, 0.0))
    np.add.at(counts, cluster_of_box, present.astype(float))
    draws = rng.integers(0, len(ids), size=(int(n_boot), len(ids)))
    times = np.zeros((int(n_boot), len(ids)))
    np.add.at(times, (np.arange(int(n_boot))[:, None], draws), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (times @ sums) / (times @ counts)


def percentile_interval(resampled: np.ndarray, level: float = 0.95) -> tuple:
    """``(low, high)`` percentiles of bootstrap replicates per column (NaN replicates skipped)."""
    tail = 100.0 * (1.0 - level) / 2.0
    with warnings.catch_warnings():          # a metric with no values at all: NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(resampled, [tail, 100.0 - tail], axis=0)
    return low, high


def _nanmean(values) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values))


def _cluster_ids(frame: pd.DataFrame) -> np.ndarray:
    images = frame["image"].astype(str) if "image" in frame.columns else None
    if images is None or (images == "").any():
        return frame["map_index"].to_numpy()
    return images.to_numpy()


def _groups(per_box: pd.DataFrame):
    """(model, method, label) groups, plus each (model, method) over all labels as ``all``."""
    keys = ["model", "method"] if "model" in per_box.columns else ["method"]
    for key, by_method in per_box.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for label, group in by_method.groupby("label", sort=True):
            yield dict(zip(keys, key)), label, group
        yield dict(zip(keys, key)), "all", by_method


def summarise_with_intervals(per_box: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0,
                             level: float = 0.95, thresholds=IOU_THRESHOLDS) -> pd.DataFrame:
    """Per (model,) method and label (and ``all``): box and image counts, each metric's mean and
    for :data:`CI_METRICS` and ``iou>T`` its bootstrap interval (``<metric>_lo``, ``_hi``)."""
    rows = []
    for index, (keys, label, group) in enumerate(_groups(per_box)):
        values = box_metrics(group, thresholds)
        clusters = _cluster_ids(group)
        row = {**keys, "label": label, "boxes": len(group), "images": len(np.unique(clusters))}
        means = values.mean(axis=0)
        row.update({name: float(means[name]) for name in values.columns})
        with_ci = [c for c in values.columns if c in CI_METRICS or c.startswith("iou>")]
        if n_boot and row["images"] < MIN_IMAGES:
            row.update({f"{name}_{end}": float("nan") for name in with_ci for end in ("lo", "hi")})
        elif n_boot:
            rng = np.random.default_rng([int(seed), index])
            low, high = percentile_interval(
                cluster_bootstrap_means(values[with_ci].to_numpy(), clusters, n_boot, rng), level)
            for name, lo, hi in zip(with_ci, low, high):
                row[f"{name}_lo"], row[f"{name}_hi"] = float(lo), float(hi)
        rows.append(row)
    return pd.DataFrame(rows)


def compare_with_baseline(per_box: pd.DataFrame, *, baseline: str = BASELINE,
                          n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                          metrics=COMPARED_METRICS) -> pd.DataFrame:
    """Paired bootstrap of ``method - baseline`` per (model,) method, label and metric.

    Boxes are matched by ``box_index`` (or by their position among the method's rows when
    there is none). Returns rows: (model,) method, label, metric, method, baseline values,
    difference, low, high, verdict (``beats centre`` / ``worse than centre`` /
    ``not distinguishable``).
    """
    if "box_index" not in per_box.columns:
        keys = [c for c in ("model", "method") if c in per_box.columns]
        per_box = per_box.assign(box_index=per_box.groupby(keys, sort=False).cumcount())
    reference = per_box[per_box["method"] == baseline].drop_duplicates(subset=["box_index"])
    if not len(reference):
        return pd.DataFrame()
    reference_values = box_metrics(reference)
    reference_values.index = reference["box_index"].to_numpy()
    rows = []
    others = per_box[per_box["method"] != baseline]
    for index, (keys, label, group) in enumerate(_groups(others)):
        positions = group["box_index"].to_numpy()
        mine = box_metrics(group)[list(metrics)].to_numpy()
        theirs = reference_values.loc[positions, list(metrics)].to_numpy()
        difference = mine - theirs
        rng = np.random.default_rng([int(seed), 10_000 + index])
        clusters = _cluster_ids(group)
        enough = len(np.unique(clusters)) >= MIN_IMAGES
        if n_boot and enough:
            low, high = percentile_interval(
                cluster_bootstrap_means(difference, clusters, n_boot, rng), level)
        else:
            low = high = np.full(len(metrics), np.nan)
        for k, metric in enumerate(metrics):
            lo, hi = float(low[k]), float(high[k])
            verdict = ("no interval" if not n_boot else "too few images" if not enough
                       else "beats centre" if lo > 0 else "worse than centre" if hi < 0
                       else "not distinguishable")
            # value, baseline and difference over the same boxes: those both scored
            paired = ~np.isnan(difference[:, k])
            rows.append({**keys, "label": label, "metric": metric,
                         "value": _nanmean(mine[paired, k]),
                         "baseline": _nanmean(theirs[paired, k]),
                         "difference": _nanmean(difference[paired, k]),
                         "low": lo, "high": hi, "verdict": verdict})
    return pd.DataFrame(rows)


def with_interval(value, low, high, digits: int = 3) -> str:
    """``"0.667 [0.551, 0.783]"`` (or the value alone without an interval)."""
    if value is None or not np.isfinite(value):
        return "n/a"
    if low is None or not (np.isfinite(low) and np.isfinite(high)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
