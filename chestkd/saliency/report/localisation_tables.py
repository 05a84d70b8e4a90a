"""Localisation tables of the saliency report: scores with intervals, and the centre verdicts.

:func:`write_localisation_report` writes, from per-box scores of one or more models' methods
and the centre baseline,

* ``localisation_per_box.csv`` — every box's pointing hit, energy, IoU, IoBB;
* ``localisation.csv`` — per (model,) method and finding (and ``all``): counts, means and 95 %
  cluster-bootstrap intervals
  (:func:`chestkd.saliency.analysis.bootstrap.summarise_with_intervals`);
* ``localisation_vs_centre.csv`` — paired bootstrap of ``method - centre`` per metric;
* ``localisation.md`` — both tables, and per method whether it beats the centre beyond its
  interval.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from chestkd.saliency.analysis.bootstrap import (COMPARED_METRICS, compare_with_baseline,
                                                 summarise_with_intervals, with_interval)

SHOWN_METRICS = ("pointing", "energy", "mean_iou", "iou>0.1", "iou>0.3", "iou>0.5")


def _markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def summary_markdown(summary: pd.DataFrame) -> str:
    """The summary with ``value [low, high]`` cells for :data:`SHOWN_METRICS`."""
    keys = [c for c in ("model", "method", "label") if c in summary.columns]
    shown = summary[keys + ["boxes"]].copy()
    for metric in SHOWN_METRICS:
        if metric in summary.columns:
            shown[metric] = [with_interval(v, lo, hi) for v, lo, hi in zip(
                summary[metric], summary.get(f"{metric}_lo", [None] * len(summary)),
                summary.get(f"{metric}_hi", [None] * len(summary)))]
    return _markdown(shown)


def verdict_lines(comparison: pd.DataFrame) -> list[str]:
    """One sentence per (model,) method over all findings: beats the centre or not, per metric."""
    if not len(comparison):
        return []
    lines = []
    overall = comparison[comparison["label"] == "all"]
    keys = [c for c in ("model", "method") if c in overall.columns]
    for key, group in overall.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        name = " / ".join(str(k) for k in key if k)
        parts = [f"{row.metric} {row.difference:+.3f} [{row.low:+.3f}, {row.high:+.3f}]: "
                 f"{row.verdict}" for row in group.itertuples()]
        won = group.loc[group["verdict"] == "beats centre", "metric"].tolist()
        claim = (f"beats the centre baseline beyond its interval on {', '.join(won)}" if won
                 else "does not beat the centre baseline beyond its interval on any metric")
        lines.append(f"- **{name}** {claim} ({'; '.join(parts)}).")
    return lines


def write_localisation_report(per_box: pd.DataFrame, out_dir, *, map_threshold: float = 0.5,
                              n_boot: int = 2000, seed: int = 0, stem: str = "localisation",
                              note: str = ""):
    """Write the per-box, summary and vs-centre tables (CSV) and the Markdown report.

    Returns:
        (summary DataFrame, comparison DataFrame, dict of written paths).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise_with_intervals(per_box, n_boot=n_boot, seed=seed)
    comparison = compare_with_baseline(per_box, n_boot=n_boot, seed=seed)
    paths = {"per_box_csv": out_dir / f"{stem}_per_box.csv",
             "summary_csv": out_dir / f"{stem}.csv",
             "vs_centre_csv": out_dir / f"{stem}_vs_centre.csv",
             "summary_md": out_dir / f"{stem}.md"}
    per_box.to_csv(paths["per_box_csv"], index=False)
    summary.to_csv(paths["summary_csv"], index=False)
    comparison.to_csv(paths["vs_centre_csv"], index=False)
    images = summary.loc[summary["label"] == "all", "images"].max() if len(summary) else 0
    text = [
        "# Localisation of saliency maps against ground-truth boxes", "",
        f"{len(per_box[per_box['method'] == 'centre']) or len(per_box)} boxes on {images} "
        "images. Pointing game: the map's maximum within 15 px (at 224 px, scaled with the map "
        "size) of the box; Zhang et al.'s 15 px are pixels of the original image, so on "
        "ChestX-ray14's 1024 px films chestkd's tolerance is about 4.6 times theirs. Energy: "
        "share of the non-negative map inside the box. IoU: best "
        f"region box of the map thresholded at {map_threshold:g} x its maximum; `iou>T` is the "
        "share of boxes with IoU > T (ChestX-ray8); the IoBB beside it is that same best-IoU "
        "region's, not the region with the best IoBB. `centre` is a fixed Gaussian at the image "
        f"centre. Brackets: 95 % bootstrap intervals ({n_boot} resamplings of the images, "
        f"seed {seed}). {note}".strip(), "",
        summary_markdown(summary), "",
        "## Against the centre baseline", "",
        "Paired bootstrap of the per-box difference method - centre (same boxes, same "
        f"resampled images), metrics {', '.join(COMPARED_METRICS)}, all findings:", "",
        *verdict_lines(comparison), ""]
    paths["summary_md"].write_text("\n".join(text) + "\n")
    return summary, comparison, {k: str(v) for k, v in paths.items()}
