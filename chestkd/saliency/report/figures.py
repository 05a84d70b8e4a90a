"""Saliency figures: heat maps over the radiograph, with boxes, contours and a colour bar.

* :func:`plot_saliency_grid` — one row per image: the radiograph, then one overlay per method.
  With GBP, SmoothGrad and SmoothGrad-IG this is the layout of Ho & Gwak (2020) Fig. 4.
* The same function with ``boxes`` draws the ground-truth box on every panel: CAM vs.
  SmoothGrad-IG with boxes is the layout of Fig. 5.
* :func:`plot_model_comparison` — the same images and methods for two models side by side
  (base vs. distilled: does KD change where the model looks?).

Every overlay's opacity follows the saliency (0 is transparent, so the radiograph shows where
the map is low), a white contour encloses the top ``contour_share`` of the map (5 % by
default), and each panel's title names the method and the predicted probability. Maps are
expected in [0, 1] (see :func:`chestkd.saliency.analysis.display.display_maps`).

Figures are built with matplotlib's object-oriented API (:class:`matplotlib.figure.Figure`),
never pyplot: no display is needed, the caller's backend (a notebook's inline backend, say) is
left as it is, and no figure stays open in pyplot's global state.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from chestkd.saliency.analysis.display import top_share_mask

METHOD_TITLES = {
    "vanilla": "Gradient", "guided_backprop": "Guided backprop", "smoothgrad": "SmoothGrad",
    "integrated_gradients": "Integrated gradients", "smoothgrad_ig": "SmoothGrad-IG",
    "cam": "CAM", "gradcam": "Grad-CAM", "gradcam_plus_plus": "Grad-CAM++",
    "scorecam": "Score-CAM", "centre": "Centre baseline",
}
HEAT_ALPHA = 0.75        # opacity at saliency 1; it falls linearly to 0 at saliency 0
HEAT_CMAP = "inferno"    # perceptually uniform, dark at 0: low values do not look "hot"
CONTOUR_SHARE = 0.05


def display_image(image: np.ndarray) -> np.ndarray:
    """A model input (H, W, C) in any normalisation as a grey (H, W) image in [0, 1]."""
    grey = np.asarray(image, np.float64)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    low, high = grey.min(), grey.max()
    return (grey - low) / (high - low) if high > low else np.zeros_like(grey)


def draw_box(ax, box, colour: str = "cyan") -> None:
    """Draw ``box = (x, y, w, h)`` in pixel units (pixel centres at integer + 1/2)."""
    x, y, w, h = box
    # imshow puts pixel (r, c) centred at (c, r): shift by -1/2 into that frame.
    ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor=colour, linewidth=1.5))


def overlay_rgba(saliency: np.ndarray, max_alpha: float = HEAT_ALPHA) -> np.ndarray:
    """(H, W, 4) colours of a [0, 1] map whose alpha is ``max_alpha * saliency``."""
    values = np.clip(np.asarray(saliency, np.float64), 0.0, 1.0)
    rgba = colormaps[HEAT_CMAP](values)
    rgba[..., 3] = max_alpha * values
    return rgba


def draw_overlay(ax, grey, saliency, boxes=(), contour_share: float | None = CONTOUR_SHARE):
    """The radiograph, the saliency overlay, the top-share contour and the boxes on ``ax``."""
    ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
    if saliency is not None:
        ax.imshow(overlay_rgba(saliency))
        if contour_share and np.ptp(saliency) > 0:
            ax.contour(top_share_mask(saliency, contour_share).astype(float), levels=[0.5],
                       colors="white", linewidths=0.8)
    for box in boxes or ():
        draw_box(ax, box)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_panels(images, columns, path, *, row_titles=None, boxes=None, title=None,
                caption=None, contour_share: float | None = CONTOUR_SHARE) -> str:
    """Write a PNG grid: rows = images; column 0 the radiograph, then one column per entry.

    Args:
        images: (N, H, W, C) model inputs.
        columns: list of ``(heading, maps (N, H, W) in [0, 1], probabilities (N,) or None)``.
        path: output PNG path.
        row_titles: one title per image for the radiograph column.
        boxes: optional list (one per image) of lists of ``(x, y, w, h)``, drawn in every panel.
        title, caption: figure title and a caption line under the grid.
        contour_share: share of the map enclosed by the contour (None: no contour).
    """
    images = np.asarray(images)
    rows, cols = len(images), 1 + len(columns)
    figure = Figure(figsize=(2.3 * cols + 0.9, 2.5 * rows + 0.6 + 0.3 * bool(caption)),
                    layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    for r in range(rows):
        grey = display_image(images[r])
        image_boxes = boxes[r] if boxes else []
        draw_overlay(axes[r, 0], grey, None, image_boxes)
        axes[r, 0].set_title(row_titles[r] if row_titles else "Original", fontsize=7)
        for c, (heading, maps, probabilities) in enumerate(columns, start=1):
            draw_overlay(axes[r, c], grey, np.asarray(maps[r]), image_boxes, contour_share)
            text = heading if probabilities is None else f"{heading}\np = {probabilities[r]:.2f}"
            axes[r, c].set_title(text, fontsize=7)
    if columns:
        bar = figure.colorbar(ScalarMappable(Normalize(0, 1), colormaps[HEAT_CMAP]), ax=axes,
                              shrink=min(1.0, 3.0 / rows), aspect=25)
        bar.set_label("saliency (1 = 99th percentile)", fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    if caption:
        figure.supxlabel(caption, fontsize=6.5, wrap=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)   # Figure picks the Agg canvas for PNG itself
    return str(path)


def plot_saliency_grid(images, maps: dict, path, *, row_titles=None, boxes=None,
                       title: str | None = None, probabilities=None, caption=None,
                       contour_share: float | None = CONTOUR_SHARE) -> str:
    """Write a PNG grid: rows = images; columns = original, then one overlay per method.

    Args:
        images: (N, H, W, C) model inputs.
        maps: method name -> (N, H, W) maps in [0, 1] (columns in this order).
        path: output PNG path.
        row_titles: one title per image (e.g. ``"Cardiomegaly\\nimage.png"``).
        boxes: optional list (one per image) of lists of ``(x, y, w, h)`` boxes to draw.
        title: figure title.
        probabilities: the explained class's predicted probability per image (panel titles).
        caption: a line under the grid (say how the maps were made).
        contour_share: share of the map enclosed by the contour (None: none).
    """
    columns = [(METHOD_TITLES.get(name, name), m, probabilities) for name, m in maps.items()]
    return plot_panels(images, columns, path, row_titles=row_titles, boxes=boxes, title=title,
                       caption=caption, contour_share=contour_share)


def plot_model_comparison(images, maps_by_model: dict, path, *, probabilities_by_model=None,
                          row_titles=None, boxes=None, title=None, caption=None,
                          contour_share: float | None = CONTOUR_SHARE) -> str:
    """Side by side per method: model A's map next to model B's, for the same images.

    ``maps_by_model``: model name -> {method: (N, H, W) maps}; the methods of the first model
    set the column order. ``probabilities_by_model``: model name -> (N,) probabilities.
    """
    models = list(maps_by_model)
    methods = [m for m in maps_by_model[models[0]] if all(m in maps_by_model[k] for k in models)]
    probabilities_by_model = probabilities_by_model or {}
    columns = [(f"{model}: {METHOD_TITLES.get(method, method)}", maps_by_model[model][method],
                probabilities_by_model.get(model)) for method in methods for model in models]
    return plot_panels(images, columns, path, row_titles=row_titles, boxes=boxes, title=title,
                       caption=caption, contour_share=contour_share)
