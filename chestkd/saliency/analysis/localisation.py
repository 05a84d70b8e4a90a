"""How well saliency maps localise findings, scored against ground-truth boxes.

Geometry: a map of shape (H, W) covers the plane ``[0, W) x [0, H)``; pixel (row r, col c) is
the unit square ``[c, c+1) x [r, r+1)`` with centre ``(c + 1/2, r + 1/2)``. Boxes are
``(x, y, w, h)`` in the same pixel units (the model input's, see :func:`scale_boxes`). A
pixel is *inside* a box when its centre is.

Scores per ground-truth box:

* **pointing game** (Zhang et al. 2018): a hit if the map's maximum (first in row-major order
  when tied) lies inside the box grown by a tolerance on every side; the tolerance is 15 px at
  224 px (Zhang et al.) and scales with the map: ``15 * H / 224``. A flat map (every pixel
  equal, an all-zero Grad-CAM say) has no maximum to point with: a miss.
* **energy** inside the box: ``sum_{p in box} max(m_p, 0) / sum_p max(m_p, 0)`` — the
  share of the non-negative map's mass inside; 0 for a map without positive mass, which puts
  nothing in the box (leaving it out would score a method only where it produced a map).
* **IoU / IoBB** of the thresholded map's box (ChestX-ray8, Wang et al. 2017): the map is
  thresholded at ``map_threshold`` times its maximum, each connected region (8-connectivity)
  gets its bounding box, and the region box best overlapping the ground truth (highest IoU)
  is kept. ``IoU = |B n G| / |B u G|``, ``IoBB = |B n G| / |B|`` (intersection over the
  detected box). A box counts as localised at ``T`` when IoU (IoBB) ``> T``, reported for
  ``T`` = 0.1 ... 0.7 as in ChestX-ray8.

:func:`centre_baseline_maps` gives the fixed map every method must beat: a Gaussian at the
image centre, scored the same way.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from chestkd.errors import DataError

IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
POINTING_TOLERANCE_AT_224 = 15.0
BOX_COLUMNS = ("x", "y", "w", "h")


def pointing_tolerance(map_size: int) -> float:
    """Pointing-game tolerance in pixels of a map of side ``map_size`` (15 px at 224)."""
    return POINTING_TOLERANCE_AT_224 * float(map_size) / 224.0


def centre_baseline_maps(n: int, size, sigma_fraction: float = 0.25) -> np.ndarray:
    """``n`` copies of a centred Gaussian ``exp(-d^2 / (2 s^2))``, ``s = sigma_fraction * side``.

    Pixel centres ``(c + 1/2, r + 1/2)`` are measured from the image centre ``(W/2, H/2)``;
    the maximum is 1.
    """
    height, width = (size, size) if np.isscalar(size) else size
    rows = (np.arange(height) + 0.5 - height / 2.0) / (sigma_fraction * height)
    cols = (np.arange(width) + 0.5 - width / 2.0) / (sigma_fraction * width)
    gaussian = np.exp(-0.5 * (rows[:, None] ** 2 + cols[None, :] ** 2))
    gaussian = gaussian / gaussian.max()
    return np.repeat(gaussian[None].astype(np.float32), n, axis=0)


def inside_mask(shape, box) -> np.ndarray:
    """Boolean (H, W) mask of pixels whose centres lie in ``box = (x, y, w, h)``."""
    x, y, w, h = box
    rows = np.arange(shape[0]) + 0.5
    cols = np.arange(shape[1]) + 0.5
    return ((rows >= y) & (rows <= y + h))[:, None] & ((cols >= x) & (cols <= x + w))[None, :]


def pointing_hit(saliency: np.ndarray, box, tolerance: float) -> bool:
    """True if the map's maximum lies within ``tolerance`` px of ``box`` (a flat map: False)."""
    if np.ptp(saliency) == 0:
        return False
    row, col = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    x, y, w, h = box
    return bool(x - tolerance <= col + 0.5 <= x + w + tolerance
                and y - tolerance <= row + 0.5 <= y + h + tolerance)


def energy_in_box(saliency: np.ndarray, box) -> float:
    """Share of the non-negative map's mass inside ``box`` (0 if the map has no mass)."""
    positive = np.maximum(np.asarray(saliency, np.float64), 0.0)
    total = positive.sum()
    if total <= 0:
        return 0.0
    return float(positive[inside_mask(positive.shape, box)].sum() / total)


def region_boxes(saliency: np.ndarray, map_threshold: float = 0.5) -> list[tuple]:
    """Bounding boxes ``(x, y, w, h)`` of the connected regions of ``m >= t * max(m)``."""
    saliency = np.asarray(saliency, np.float64)
    peak = saliency.max()
    if peak <= 0:
        return []
    binary = (saliency >= map_threshold * peak).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    return [tuple(float(v) for v in stats[k, :4]) for k in range(1, count)]


def box_overlap(detected, truth) -> tuple[float, float]:
    """``(IoU, IoBB)`` of a detected box with a ground-truth box, both ``(x, y, w, h)``."""
    dx, dy, dw, dh = detected
    tx, ty, tw, th = truth
    iw = max(0.0, min(dx + dw, tx + tw) - max(dx, tx))
    ih = max(0.0, min(dy + dh, ty + th) - max(dy, ty))
    intersection = iw * ih
    union = dw * dh + tw * th - intersection
    iou = intersection / union if union > 0 else 0.0
    iobb = intersection / (dw * dh) if dw * dh > 0 else 0.0
    return float(iou), float(iobb)


def best_region_overlap(saliency, truth, map_threshold: float = 0.5) -> tuple[float, float]:
    """IoU and IoBB of the region box with the highest IoU (0, 0 when there is no region)."""
    overlaps = [box_overlap(box, truth) for box in region_boxes(saliency, map_threshold)]
    return max(overlaps, default=(0.0, 0.0))


def _check_boxes(maps: np.ndarray, boxes: pd.DataFrame) -> None:
    missing = [c for c in ("map_index", *BOX_COLUMNS) if c not in boxes.columns]
    if missing:
        raise DataError(f"boxes table lacks column(s) {missing}; expected map_index, label, "
                        f"x, y, w, h (model-input pixels)")
    index = boxes["map_index"].to_numpy()
    if len(index) and (index.min() < 0 or index.max() >= len(maps)):
        raise DataError(f"boxes refer to map_index {int(index.max())}, but only "
                        f"{len(maps)} maps were given")
    sizes = boxes[["w", "h"]].to_numpy(float)
    if len(sizes) and (sizes <= 0).any():
        row = int(np.flatnonzero((sizes <= 0).any(axis=1))[0])
        raise DataError(f"box row {row} has a non-positive width or height")


def localisation_scores(maps, boxes: pd.DataFrame, *, method: str = "", tolerance=None,
                        map_threshold: float = 0.5) -> pd.DataFrame:
    """Score maps against boxes: one row per box.

    Args:
        maps: (N, H, W) saliency maps (any scale; only their shape, maximum and non-negative
            part matter).
        boxes: table with ``map_index`` (row of ``maps``), ``x, y, w, h`` in map pixels and
            optionally ``label`` and ``image``.
        method: name written in the ``method`` column.
        tolerance: pointing-game tolerance in pixels (default :func:`pointing_tolerance`).
        map_threshold: threshold for region boxes, a fraction of each map's maximum.

    Returns:
        DataFrame: method, map_index, image, label, pointing_hit, energy, iou, iobb.
    """
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise DataError(f"maps must have shape (N, H, W), got {maps.shape}")
    _check_boxes(maps, boxes)
    tolerance = pointing_tolerance(maps.shape[1]) if tolerance is None else float(tolerance)
    rows = []
    for record in boxes.to_dict("records"):
        saliency = maps[int(record["map_index"])]
        box = tuple(float(record[c]) for c in BOX_COLUMNS)
        iou, iobb = best_region_overlap(saliency, box, map_threshold)
        rows.append({"method": method, "map_index": int(record["map_index"]),
                     "image": record.get("image", ""), "label": record.get("label", ""),
                     "pointing_hit": pointing_hit(saliency, box, tolerance),
                     "energy": energy_in_box(saliency, box), "iou": iou, "iobb": iobb})
    return pd.DataFrame(rows, columns=["method", "map_index", "image", "label", "pointing_hit",
                                       "energy", "iou", "iobb"])


def summarise_localisation(per_box: pd.DataFrame,
                           thresholds=IOU_THRESHOLDS) -> pd.DataFrame:
    """Per method and label (and ``all`` labels): box count, pointing accuracy, mean energy,
    mean IoU / IoBB and the share of boxes with IoU > T and IoBB > T for each threshold."""
    def summary(group: pd.DataFrame) -> dict:
        row = {"boxes": len(group), "pointing": group["pointing_hit"].mean(),
               "energy": group["energy"].mean(), "mean_iou": group["iou"].mean(),
               "mean_iobb": group["iobb"].mean()}
        for t in thresholds:
            row[f"iou>{t:g}"] = (group["iou"] > t).mean()
        for t in thresholds:
            row[f"iobb>{t:g}"] = (group["iobb"] > t).mean()
        return row

    rows = []
    for method, by_method in per_box.groupby("method", sort=False):
        for label, group in by_method.groupby("label", sort=True):
            rows.append({"method": method, "label": label, **summary(group)})
        rows.append({"method": method, "label": "all", **summary(by_method)})
    return pd.DataFrame(rows)


def scale_boxes(boxes: pd.DataFrame, image_size) -> pd.DataFrame:
    """Boxes from on-disk pixels to a ``S x S`` (or ``(height, width)``) model input.

    The input pipeline stretches every image to the model size, so ``x' = x * S_w / W`` and
    ``y' = y * S_h / H``. The on-disk size ``W x H`` comes from the ``width``/``height``
    columns when present, otherwise from the image file's header.
    """
    from chestkd.data.images import image_size_of

    out_h, out_w = (image_size, image_size) if np.isscalar(image_size) else image_size
    boxes = boxes.reset_index(drop=True).copy()
    if {"width", "height"}.issubset(boxes.columns):
        widths = boxes["width"].to_numpy(float)
        heights = boxes["height"].to_numpy(float)
    else:
        sizes = {path: image_size_of(path) for path in boxes["path"].unique()}
        widths = np.array([sizes[p][0] for p in boxes["path"]], float)
        heights = np.array([sizes[p][1] for p in boxes["path"]], float)
    boxes["x"] = boxes["x"] * out_w / widths
    boxes["w"] = boxes["w"] * out_w / widths
    boxes["y"] = boxes["y"] * out_h / heights
    boxes["h"] = boxes["h"] * out_h / heights
    return boxes


def write_localisation_tables(per_box: pd.DataFrame, out_dir, stem: str = "localisation",
                              map_threshold: float = 0.5):
    """Write per-box and summary tables as CSV, and the summary as Markdown.

    Returns:
        (summary DataFrame, dict of written paths).
    """
    from chestkd.evaluation.evaluate import markdown_table

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise_localisation(per_box)
    paths = {"per_box_csv": out_dir / f"{stem}_per_box.csv",
             "summary_csv": out_dir / f"{stem}.csv", "summary_md": out_dir / f"{stem}.md"}
    per_box.to_csv(paths["per_box_csv"], index=False)
    summary.to_csv(paths["summary_csv"], index=False)
    tolerance = "15 px at 224 px, scaled with the map size"
    paths["summary_md"].write_text(
        "# Localisation of saliency maps against ground-truth boxes\n\n"
        f"Pointing game tolerance: {tolerance}. Energy: share of the non-negative map inside "
        f"the box. IoU/IoBB: best region box of the map thresholded at {map_threshold:g} x its "
        "maximum; "
        "`iou>T` is the share of boxes with IoU > T (ChestX-ray8). `centre` is a fixed "
        "Gaussian at the image centre.\n\n" + markdown_table(summary, ".3f") + "\n")
    return summary, {k: str(v) for k, v in paths.items()}
