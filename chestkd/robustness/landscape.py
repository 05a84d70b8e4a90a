"""The loss landscape around a trained model (Li et al. 2018, "Visualizing the loss landscape
of neural nets"), as RoS-KD's Fig. 4 draws it.

    python -m chestkd.landscape RUN_DIR [--images 128] [--resolution 21] [--span 1.0]
        [--clamp 8] [--seed 0] [--out DIR]

Two random directions ``d1``, ``d2`` in weight space are FILTER-NORMALISED: every filter of a
direction is rescaled to the norm of the same filter of the weights, so the plot's scale means
the same for layers of any size (Keras kernels keep the filters on the LAST axis: Conv2D
``(kh, kw, in, out)``, Dense ``(in, out)``; a DepthwiseConv2D kernel
``(kh, kw, in, multiplier)`` has one filter per (in, multiplier) pair). Biases, BatchNorm
parameters and every non-trainable variable (moving statistics) get a zero direction. The loss
``L(w + a d1 + b d2)`` (the model's own: masked BCE per finding, or softmax CE) on a fixed set
of test images over an ``a, b`` grid in ``[-span, span]`` is written as ``landscape.csv`` and
drawn as a contour plot ``landscape.png`` (losses clamped at ``clamp`` for display, as the
paper's figure). The grid always holds the trained model itself, ``a = b = 0``: an even
``resolution`` (whose evenly spaced points skip 0) gets 0 added to each axis, so
``centre_loss`` and the basin fraction describe the model, not a perturbed neighbour.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from matplotlib.figure import Figure

from chestkd.cli import main_of, number_option
from chestkd.errors import ConfigError
from chestkd.io import atomic_write_json
from chestkd.robustness.attacks import attack_loss
from chestkd.robustness.tables import split_arrays
from chestkd.training.classifier import image_options, load_run_data
from chestkd.training.run import finished_run, load_model


def _depthwise_kernels(model) -> set:
    """ids of the depthwise kernels of ``model`` (one filter per (in, multiplier) pair)."""
    kernels = set()
    for layer in model._flatten_layers(include_self=False, recursive=True):
        kernel = getattr(layer, "depthwise_kernel", None)
        if kernel is None and isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel = layer.kernel   # Keras 3 names DepthwiseConv2D's kernel "kernel"
        if kernel is not None:
            kernels.add(id(kernel))
    return kernels


def _filter_axes(variable, depthwise: set) -> tuple:
    """Axes summed over for one filter's norm (all but the filter axes)."""
    if id(variable) in depthwise:
        return (0, 1)
    return tuple(range(len(variable.shape) - 1))


def filter_norms(values: np.ndarray, axes: tuple) -> np.ndarray:
    """L2 norm of every filter of ``values`` (summed over ``axes``), keeping dims."""
    return np.sqrt(np.sum(np.square(values, dtype=np.float64), axis=axes, keepdims=True))


def filter_normalised_direction(model, seed: int = 0) -> list[np.ndarray]:
    """One random Gaussian direction per variable of ``model.weights``, filter-normalised
    (module docstring); zero for biases, BatchNorm parameters and non-trainable variables."""
    rng = np.random.default_rng(seed)
    trainable = {id(v) for v in model.trainable_weights}
    depthwise = _depthwise_kernels(model)
    direction = []
    for variable in model.weights:
        weights = np.asarray(variable, np.float64)
        if id(variable) not in trainable or weights.ndim < 2:
            direction.append(np.zeros_like(weights))
            continue
        axes = _filter_axes(variable, depthwise)
        random = rng.standard_normal(weights.shape)
        scale = filter_norms(weights, axes) / np.maximum(filter_norms(random, axes), 1e-12)
        direction.append(random * scale)
    return direction


def loss_function(model, multi_label: bool, batch_size: int = 64):
    """``f(images, labels) -> mean per-image loss`` of ``model`` (compiled, batched)."""
    @tf.function(reduce_retracing=True)
    def batch_loss(images, labels):
        logits = tf.cast(model(images, training=False), tf.float32)
        return tf.reduce_sum(attack_loss(labels, logits, multi_label))

    def mean_loss(images, labels):
        total = 0.0
        for start in range(0, len(images), batch_size):
            total += float(batch_loss(tf.constant(images[start:start + batch_size]),
                                      tf.constant(labels[start:start + batch_size])))
        return total / len(images)

    return mean_loss


def grid_steps(resolution: int, span: float) -> np.ndarray:
    """``resolution`` evenly spaced steps in ``[-span, span]``, plus 0 when they miss it (an
    even ``resolution``): the grid always holds the trained model."""
    steps = np.linspace(-span, span, resolution)
    steps[np.isclose(steps, 0.0, rtol=0.0, atol=1e-12 * span)] = 0.0   # odd: exactly 0
    return steps if np.any(steps == 0.0) else np.sort(np.append(steps, 0.0))


def loss_surface(model, images, labels, *, multi_label: bool, resolution: int = 21,
                 span: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """Losses on the grid of ``w + a d1 + b d2`` (:func:`grid_steps` on each axis:
    ``resolution`` points, one more when it is even); the model's weights are restored
    afterwards. Columns ``alpha, beta, loss``."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ConfigError(f"--resolution {resolution!r}: an integer >= 2")
    if not span > 0:
        raise ConfigError(f"--span {span!r}: must be > 0")
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.float32)
    first = filter_normalised_direction(model, seed)
    second = filter_normalised_direction(model, seed + 1)
    original = [np.asarray(v) for v in model.weights]
    mean_loss = loss_function(model, multi_label)
    steps = grid_steps(resolution, span)
    rows = []
    try:
        for alpha in steps:
            for beta in steps:
                for variable, w, d1, d2 in zip(model.weights, original, first, second):
                    if d1.any() or d2.any():
                        variable.assign((w + alpha * d1 + beta * d2).astype(w.dtype))
                rows.append({"alpha": alpha, "beta": beta,
                             "loss": mean_loss(images, labels)})
    finally:
        for variable, w in zip(model.weights, original):
            variable.assign(w)
    return pd.DataFrame(rows)


def plot_surface(surface: pd.DataFrame, path, *, clamp: float = 8.0, title: str = "") -> Path:
    """Contour plot of a :func:`loss_surface` grid (losses clamped at ``clamp``)."""
    grid = surface.pivot(index="beta", columns="alpha", values="loss")
    alphas, betas = grid.columns.to_numpy(), grid.index.to_numpy()
    values = np.minimum(grid.to_numpy(), clamp)
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    contours = ax.contour(alphas, betas, values, levels=20, cmap="viridis")
    ax.clabel(contours, fontsize=6, fmt="%.2f")
    ax.plot([0], [0], "r+", markersize=10)
    ax.set(xlabel="direction 1", ylabel="direction 2",
           title=title or "Loss landscape (filter-normalised directions)")
    fig.colorbar(contours, ax=ax, label=f"loss (clamped at {clamp:g})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return Path(path)


def write_landscape(model, images, labels, out, *, multi_label: bool, resolution: int = 21,
                    span: float = 1.0, seed: int = 0, clamp: float = 8.0,
                    title: str = "") -> dict:
    """``landscape.csv``, ``landscape.png`` and ``landscape.json`` (centre loss: the trained
    model's, at ``a = b = 0``; grid minimum; the fraction of the grid within 10 % of the centre
    loss) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    surface = loss_surface(model, images, labels, multi_label=multi_label,
                           resolution=resolution, span=span, seed=seed)
    surface.to_csv(out / "landscape.csv", index=False)
    plot_surface(surface, out / "landscape.png", clamp=clamp, title=title)
    centre = surface.loc[(surface.alpha == 0.0) & (surface.beta == 0.0), "loss"].item()
    summary = {"centre_loss": float(centre), "min_loss": float(surface.loss.min()),
               "basin_fraction_10pct": float((surface.loss <= 1.1 * centre).mean()),
               "resolution": resolution, "grid_points": int(len(surface)), "span": span,
               "images": len(images), "seed": seed}
    atomic_write_json(out / "landscape.json", summary)
    return summary


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m chestkd.landscape", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--resolution", type=int, default=21)
    parser.add_argument("--span", type=float, default=1.0)
    parser.add_argument("--clamp", type=float, default=8.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    return parser


def run(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    # Checked before the run's data is read.
    number_option(args.images, "--images", cast=int, low=1)
    number_option(args.resolution, "--resolution", cast=int, low=2)
    number_option(args.span, "--span", low=0, low_open=True)
    number_option(args.clamp, "--clamp", low=0, low_open=True)
    run_dir = args.run_dir
    config = finished_run(run_dir)
    out = args.out or run_dir
    data = load_run_data(config, out)
    images, labels = split_arrays(data, max_images=args.images, **image_options(data, config))
    summary = write_landscape(load_model(run_dir / "model.keras"), images, labels, out,
                              multi_label=data.multi_label, resolution=args.resolution,
                              span=args.span, seed=args.seed, clamp=args.clamp,
                              title=f"{config.get('run_name') or run_dir.name}")
    print(f"loss landscape: {out / 'landscape.png'} (centre loss {summary['centre_loss']:.4f})")
    return summary


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
