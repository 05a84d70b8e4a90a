"""Integrated Gradients (Sundararajan et al. 2017) and SmoothGrad-IG.

Integrated gradients with baseline x' integrate the gradient along the straight path:

    IG_i(x) = (x_i - x'_i) * integral_0^1 d z_c(x' + a (x - x')) / dx_i  da

approximated by the midpoint rule with m steps (error O(1/m^2) for smooth models):

    IG_i(x) ~ (x_i - x'_i) * 1/m sum_{k=0}^{m-1} d z_c(x' + (k + 1/2)/m (x - x')) / dx_i.

Completeness: sum_i IG_i(x) = z_c(x) - z_c(x') (up to the quadrature error).
The default baseline is all zeros, mid-grey for images scaled to [-1, 1].

SmoothGrad-IG (Smilkov et al. 2017, used by Ho & Gwak 2020) averages IG over noisy copies
x_j = x + e_j of the image (same noise rule as :mod:`chestkd.saliency.methods.smoothgrad`):

    SG-IG(x) = 1/n sum_j IG(x_j).

All path points of all images and samples are evaluated ``batch_size`` at a time.
"""
from __future__ import annotations

import numpy as np

from chestkd.errors import ConfigError
from chestkd.saliency.methods.base import GradientEngine, SaliencyMethod
from chestkd.saliency.methods.smoothgrad import (check_noise_level, check_positive,
                                                 smoothgrad_noise)


def midpoint_alphas(steps: int) -> np.ndarray:
    """Path positions ``(k + 1/2) / steps`` of the midpoint rule."""
    return ((np.arange(steps) + 0.5) / steps).astype(np.float32)


def broadcast_baseline(baseline, images: np.ndarray) -> np.ndarray:
    """Baseline as ``(N, H, W, C)``: None -> zeros; a scalar, (H, W, C) or (N, H, W, C) array."""
    if baseline is None:
        return np.zeros_like(images)
    baseline = np.asarray(baseline, np.float32)
    try:
        return np.broadcast_to(baseline, images.shape).astype(np.float32)
    except ValueError:
        raise ConfigError(f"baseline of shape {baseline.shape} does not match images of shape "
                          f"{images.shape}; give a scalar, (H, W, C) or (N, H, W, C)") from None


def path_pieces(image_index, image, baseline, alphas, weight):
    """One IG path as an engine piece: its points, multiplier ``x - x'`` and weight."""
    delta = image - baseline
    points = baseline[None] + alphas[:, None, None, None] * delta[None]
    return image_index, points, delta, weight


class IntegratedGradients(SaliencyMethod):
    """Integrated gradients of the class logit from a baseline.

    Args:
        steps: midpoint-rule steps along the path (32-300; 64 gives completeness within a
            few per cent for ordinary CNNs).
        baseline: None (zeros: mid-grey in [-1, 1]), a scalar, (H, W, C) or (N, H, W, C).
    """

    name = "integrated_gradients"

    def __init__(self, model, *, steps: int = 32, baseline=None, **kwargs):
        super().__init__(model, **kwargs)
        self.steps = check_positive("steps", steps)
        self.baseline = baseline
        self.engine = GradientEngine(self.logits_model, self.batch_size)

    def attribute(self, images, classes) -> np.ndarray:
        baselines = broadcast_baseline(self.baseline, images)
        alphas = midpoint_alphas(self.steps)
        weight = 1.0 / self.steps
        pieces = (path_pieces(i, images[i], baselines[i], alphas, weight)
                  for i in range(len(images)))
        return self.engine.accumulate(pieces, len(images), images.shape[1:], classes,
                                      progress=self.advance)


class SmoothGradIG(SaliencyMethod):
    """Integrated gradients averaged over noisy copies of the image.

    Args:
        samples: noisy copies per image.
        steps: midpoint-rule steps per path.
        noise_level: noise standard deviation as a fraction of the image range.
        baseline: as for :class:`IntegratedGradients`.
        seed: noise seed (see :func:`chestkd.saliency.methods.smoothgrad.smoothgrad_noise`).
    """

    name = "smoothgrad_ig"

    def __init__(self, model, *, samples: int = 16, steps: int = 16,
                 noise_level: float = 0.15, baseline=None, seed=0, **kwargs):
        super().__init__(model, **kwargs)
        self.samples = check_positive("samples", samples)
        self.steps = check_positive("steps", steps)
        self.noise_level = check_noise_level(noise_level)
        self.baseline = baseline
        self.seed = seed
        self.engine = GradientEngine(self.logits_model, self.batch_size)

    def attribute(self, images, classes, *, noise=None) -> np.ndarray:
        """``noise``: optional exact perturbations ``(N, samples, H, W, C)``."""
        baselines = broadcast_baseline(self.baseline, images)
        alphas = midpoint_alphas(self.steps)
        weight = 1.0 / (self.steps * self.samples)

        def pieces():
            noises = smoothgrad_noise(images, self.samples, self.noise_level, self.seed, noise)
            for i, eps in enumerate(noises):
                for sample in eps:
                    yield path_pieces(i, images[i] + sample, baselines[i], alphas, weight)

        return self.engine.accumulate(pieces(), len(images), images.shape[1:], classes,
                                      progress=self.advance)
