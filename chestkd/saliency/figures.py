"""Saliency figures: heat maps over the radiograph, with a colour bar and optional boxes.

* :func:`plot_saliency_grid` — one row per image: the radiograph, then one overlay per method.
  With GBP, SmoothGrad and SmoothGrad-IG this is the layout of Ho & Gwak (2020) Fig. 4.
* The same function with ``boxes`` draws the ground-truth box on every panel: CAM vs.
  SmoothGrad-IG with boxes is the layout of Fig. 5.

Figures are built with matplotlib's object-oriented API (:class:`matplotlib.figure.Figure`),
never pyplot: no display is needed, the caller's backend (a notebook's inline backend, say) is
left as it is, and no figure stays open in pyplot's global state.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

METHOD_TITLES = {
    "vanilla": "Gradient", "guided_backprop": "Guided backprop", "smoothgrad": "SmoothGrad",
    "integrated_gradients": "Integrated gradients", "smoothgrad_ig": "SmoothGrad-IG",
    "cam": "CAM", "gradcam": "Grad-CAM", "gradcam_plus_plus": "Grad-CAM++",
    "scorecam": "Score-CAM", "centre": "Centre baseline",
}
HEAT_ALPHA = 0.5
HEAT_CMAP = "jet"


def display_image(image: np.ndarray) -> np.ndarray:
    """A model input (H, W, C) in any normalisation as a grey (H, W) image in [0, 1]."""
    grey = np.asarray(image, np.float64)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    low, high = grey.min(), grey.max()
    return (grey - low) / (high - low) if high > low else np.zeros_like(grey)


def draw_box(ax, box, colour: str = "lime") -> None:
    """Draw ``box = (x, y, w, h)`` in pixel units (pixel centres at integer + 1/2)."""
    x, y, w, h = box
    # imshow puts pixel (r, c) centred at (c, r): shift by -1/2 into that frame.
    ax.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor=colour, linewidth=1.5))


def plot_saliency_grid(images, maps: dict, path, *, row_titles=None, boxes=None,
                       title: str | None = None) -> str:
    """Write a PNG grid: rows = images; columns = original, then one overlay per method.

    Args:
        images: (N, H, W, C) model inputs.
        maps: method name -> (N, H, W) maps in [0, 1] (columns in this order).
        path: output PNG path.
        row_titles: one title per image (e.g. ``"Cardiomegaly, p = 0.87"``).
        boxes: optional list (one per image) of lists of ``(x, y, w, h)`` boxes to draw.
        title: figure title.
    """
    images = np.asarray(images)
    names = list(maps)
    rows, cols = len(images), 1 + len(names)
    # Constrained layout keeps square panels packed with room for titles and the colour bar.
    figure = Figure(figsize=(2.4 * cols + 0.9, 2.7 * rows + 0.5), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    heat = None
    for r in range(rows):
        grey = display_image(images[r])
        axes[r, 0].imshow(grey, cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(row_titles[r] if row_titles else "Original", fontsize=8)
        for c, name in enumerate(names, start=1):
            axes[r, c].imshow(grey, cmap="gray", vmin=0, vmax=1)
            heat = axes[r, c].imshow(np.asarray(maps[name][r]), cmap=HEAT_CMAP, vmin=0, vmax=1,
                                     alpha=HEAT_ALPHA)
            axes[r, c].set_title(METHOD_TITLES.get(name, name), fontsize=8)
        for c in range(cols):
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            for box in (boxes[r] if boxes else []):
                draw_box(axes[r, c], box)
    if heat is not None:
        bar = figure.colorbar(heat, ax=axes, shrink=min(1.0, 3.0 / rows), aspect=25)
        bar.set_label("saliency (normalised)", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)   # Figure picks the Agg canvas for PNG itself
    return str(path)
