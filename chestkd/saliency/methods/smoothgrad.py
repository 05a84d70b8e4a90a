"""SmoothGrad (Smilkov et al. 2017): the gradient averaged over noisy copies of the image.

    a(x) = 1/n sum_j d z_c(x + e_j) / dx,   e_j ~ N(0, sigma^2),
    sigma = noise_level * (max(x) - min(x))          (per image)

Unlike tf-keras-vis's Saliency (one gradient call per noise sample), the n noisy copies of
all images are evaluated ``batch_size`` at a time by one compiled gradient function.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from chestkd.errors import ConfigError
from chestkd.saliency.methods.base import GradientEngine, SaliencyMethod


def noise_sigma(image: np.ndarray, noise_level: float) -> float:
    """Standard deviation of SmoothGrad noise: ``noise_level * (max - min)`` of the image."""
    return float(noise_level) * float(np.max(image) - np.min(image))


def smoothgrad_noise(images: np.ndarray, samples: int, noise_level: float,
                     seed=None, noise=None) -> Iterator[np.ndarray]:
    """The perturbations ``(samples, H, W, C)`` of each image in turn.

    With ``noise`` given (shape ``(N, samples, H, W, C)``) those exact perturbations are used.
    Otherwise ``rng = numpy.random.default_rng(seed)`` draws
    ``rng.standard_normal((samples, H, W, C))`` for image 0, 1, ... in order, scaled by each
    image's sigma, so the same seed gives the same noise whatever the batch size.
    """
    if noise is not None:
        noise = np.asarray(noise, np.float32)
        expected = (len(images), samples) + images.shape[1:]
        if noise.shape != expected:
            raise ConfigError(f"noise must have shape (N, samples, H, W, C) = {expected}, "
                              f"got {noise.shape}")
        yield from noise
        return
    rng = np.random.default_rng(seed)
    for image in images:
        draws = rng.standard_normal((samples,) + image.shape, dtype=np.float32)
        yield draws * np.float32(noise_sigma(image, noise_level))


def check_positive(name: str, value) -> int:
    if int(value) != value or int(value) < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_noise_level(value) -> float:
    if not 0 <= float(value) < 10:
        raise ConfigError(f"noise_level is a fraction of the image range, got {value!r}")
    return float(value)


class SmoothGrad(SaliencyMethod):
    """Mean input gradient over ``samples`` noisy copies of each image.

    Args:
        samples: noisy copies per image (16-50 in the paper).
        noise_level: noise standard deviation as a fraction of the image range (0.1-0.2).
        seed: seed of the noise generator (see :func:`smoothgrad_noise`).
    """

    name = "smoothgrad"

    def __init__(self, model, *, samples: int = 16, noise_level: float = 0.15, seed=0,
                 **kwargs):
        super().__init__(model, **kwargs)
        self.samples = check_positive("samples", samples)
        self.noise_level = check_noise_level(noise_level)
        self.seed = seed
        self.engine = GradientEngine(self.logits_model, self.batch_size)

    def attribute(self, images, classes, *, noise=None) -> np.ndarray:
        """``noise``: optional exact perturbations ``(N, samples, H, W, C)``."""
        weight = 1.0 / self.samples
        pieces = ((i, images[i] + eps, None, weight) for i, eps in enumerate(
            smoothgrad_noise(images, self.samples, self.noise_level, self.seed, noise)))
        return self.engine.accumulate(pieces, len(images), images.shape[1:], classes,
                                      progress=self.advance)
