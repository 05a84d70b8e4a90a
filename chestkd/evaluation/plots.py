"""Plots written into a run directory: ROC curves, training curves, confusion matrix and the
reliability diagram.

Figures are built with matplotlib's object-oriented API (``matplotlib.figure.Figure`` saved by
its own canvas), never pyplot: no backend is chosen or switched at import, so importing chestkd
in a notebook leaves its inline backend alone, and headless machines need no display.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn import metrics as skm


def _save(fig: Figure, path) -> Path:
    fig.savefig(path, dpi=120)
    return Path(path)


def curve_style(index: int) -> dict:
    """Colour and line style of curve ``index``: 20 told apart (matplotlib's default cycle
    repeats after 10, which gave Atelectasis and Emphysema one colour among 14 findings)."""
    colours = colormaps["tab20"].colors          # a dark and a light shade of 10 hues
    return {"color": colours[2 * (index % 10) + (index // 10) % 2],
            "linestyle": "-" if index % 20 < 10 else "--"}


def plot_roc_curves(y_true, scores, class_names, path, title="ROC curves (test split)"):
    """One ROC curve per class with both labels among its known ones (-1 is unknown)."""
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    for c, name in enumerate(class_names):
        known = y_true[:, c] >= 0
        y, s = y_true[known, c], scores[known, c]
        if y.size == 0 or y.min() == y.max():
            continue
        fpr, tpr, _ = skm.roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.2, label=f"{name} ({skm.auc(fpr, tpr):.3f})", **curve_style(c))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right", ncol=1 if len(class_names) <= 8 else 2)
    fig.tight_layout()
    return _save(fig, path)


def plot_training_curves(history: pd.DataFrame, path, title="Training curves", label=None,
                         other: pd.DataFrame | None = None, other_label=None):
    """Loss and mean AUC per epoch, training and validation; optionally a second run beside."""
    panels = [k for k in ("loss", "auc", "accuracy") if k in history.columns]
    fig = Figure(figsize=(5 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, key in zip(axes[0], panels):
        for frame, name, style in ((history, label, "-"), (other, other_label, "--")):
            if frame is None or key not in frame.columns:
                continue
            prefix = f"{name} " if name else ""
            epochs = np.arange(1, len(frame) + 1)
            ax.plot(epochs, frame[key], style, color="tab:blue", label=f"{prefix}train")
            if f"val_{key}" in frame.columns:
                ax.plot(epochs, frame[f"val_{key}"], style, color="tab:orange",
                        label=f"{prefix}validation")
        ax.set(xlabel="epoch", ylabel=key, title=key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion_matrix(matrix, class_names, path, title="Confusion matrix (test split)"):
    matrix = np.asarray(matrix)
    fig = Figure(figsize=(1.2 * len(class_names) + 2, 1.2 * len(class_names) + 1.5))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ax.set(xticks=range(len(class_names)), yticks=range(len(class_names)),
           xticklabels=class_names, yticklabels=class_names, xlabel="predicted", ylabel="true",
           title=title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                    color="white" if matrix[i, j] > threshold else "black")
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(curves: dict, path, title="Reliability diagram (test split)"):
    """Reliability diagram: observed frequency against mean predicted probability per bin
    (``statistics.reliability_curve``), one line per entry of ``curves`` (label -> curve, e.g.
    clean and noisy labels), with the bins' image counts below. The diagonal is perfect
    calibration; the legend gives each curve's ECE when the curve carries an ``ece`` entry."""
    if "observed" in curves:  # a single curve
        curves = {"": curves}
    fig = Figure(figsize=(6, 6.5))
    ax, counts = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    drawn = None
    for i, (label, curve) in enumerate(curves.items()):
        colour = f"C{i}"
        edges = np.asarray(curve["edges"])
        filled = np.asarray(curve["count"]) > 0
        name = label or "model"
        if "ece" in curve:
            name += f" (ECE {curve['ece']:.3f})"
        ax.plot(np.asarray(curve["mean_predicted"])[filled],
                np.asarray(curve["observed"])[filled], "o-", color=colour, lw=1.2, ms=4,
                label=name)
        if drawn is None or not np.array_equal(drawn, curve["count"]):
            # the same predictions under other labels have the same bins: draw them once
            centres = (edges[:-1] + edges[1:]) / 2
            counts.bar(centres, curve["count"], width=np.diff(edges) * 0.9, color=colour,
                       alpha=0.8 if drawn is None else 0.5)
            drawn = np.asarray(curve["count"])
    ax.set(ylabel="observed frequency", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    counts.set(xlabel="predicted probability", ylabel="count")
    counts.set_yscale("symlog")
    fig.tight_layout()
    return _save(fig, path)
