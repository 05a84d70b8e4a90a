"""Plots written into a run directory: ROC curves, training curves, confusion matrix."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: Colab, CI and servers have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn import metrics as skm  # noqa: E402


def plot_roc_curves(y_true, scores, class_names, path, title="ROC curves (test split)"):
    fig, ax = plt.subplots(figsize=(7, 6))
    for c, name in enumerate(class_names):
        known = y_true[:, c] >= 0
        y, s = y_true[known, c], scores[known, c]
        if y.min() == y.max():
            continue
        fpr, tpr, _ = skm.roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.2, label=f"{name} ({skm.auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="False positive rate", ylabel="True positive rate", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right", ncol=1 if len(class_names) <= 8 else 2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_training_curves(history: pd.DataFrame, path, title="Training curves", label=None,
                         other: pd.DataFrame | None = None, other_label=None):
    """Loss and mean AUC per epoch, training and validation; optionally a second run beside."""
    panels = [k for k in ("loss", "auc", "accuracy") if k in history.columns]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_confusion_matrix(matrix, class_names, path, title="Confusion matrix (test split)"):
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.2 * len(class_names) + 1.5))
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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
