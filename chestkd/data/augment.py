"""Training-split augmentation for the tf.data pipeline: ``flip``, ``light`` or ``strong``.

* ``flip``: a random horizontal flip, the papers' only augmentation (and the only one a
  cached teacher table can follow: it holds the original and the flipped view).
* ``light``: the flip plus a small random affine map and intensity change, the ranges used
  for chest radiographs since the CheXpert era (rotation of a few to 15 degrees, 5-10 %
  zoom and shift, brightness and contrast of about 10 %):

  ========== =============== ==========================================================
  rotation   +-10 degrees    about the image centre
  scale      0.9 to 1.1      zoom in or out about the centre
  shift      +-5 %           of the image side, independently in x and y
  brightness +-0.1           added to intensities in [0, 1]
  contrast   0.9 to 1.1      times the deviation from the image's mean intensity
  ========== =============== ==========================================================

* ``strong``: the flip plus torchxrayvision's training ranges (its ``train_model.py``:
  ``RandomAffine(45, translate=(0.15, 0.15), scale=(0.85, 1.15))``) and brightness +-0.2,
  contrast 0.8 to 1.2.

Each parameter is drawn uniformly in its range. The affine map resamples bilinearly and
fills the border by repeating the edge pixels (as the phantom's own patient positioning
does), so no black corners appear; intensities are clipped back to [0, 1], the range of
the pipeline before normalisation.

Randomness is stateless: the pipeline draws one 64-bit key per element from
``tf.data.Dataset.random(seed + 2, rerandomize_each_iteration=True)`` and the parameters
are ``tf.random.stateless_uniform(seed=[key, index])``; two pipelines built with the same
seed give the same augmented images in every epoch, and every epoch draws new ones. Only
training batches are augmented (``make_dataset(training=True)``); validation, test,
evaluation and saliency read the images as they are, so boxes stay where they were drawn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf

from chestkd.errors import ConfigError

AUGMENTATIONS = ("flip", "light", "strong")
PARAMETERS = 6   # angle (rad), scale, shift x, shift y (fractions), brightness, contrast


@dataclass(frozen=True)
class AffineRanges:
    """Half-widths or bounds of the uniform draws of one augmentation level."""

    rotation_degrees: float
    scale: tuple[float, float]
    shift: float
    brightness: float
    contrast: tuple[float, float]


RANGES = {
    "light": AffineRanges(10.0, (0.9, 1.1), 0.05, 0.1, (0.9, 1.1)),
    "strong": AffineRanges(45.0, (0.85, 1.15), 0.15, 0.2, (0.8, 1.2)),
}


def check_augment(name) -> str:
    """``name`` if it is one of :data:`AUGMENTATIONS`, else a ConfigError naming the choices."""
    if name not in AUGMENTATIONS:
        raise ConfigError(f"--augment {name!r}: choose one of {', '.join(AUGMENTATIONS)}")
    return name


def draw_parameters(key: tf.Tensor, index: tf.Tensor, ranges: AffineRanges) -> tf.Tensor:
    """The (6,) float32 parameters of one image from the stateless seed ``[key, index]``."""
    seed = tf.stack([tf.cast(key, tf.int64), tf.cast(index, tf.int64)])
    u = tf.random.stateless_uniform([PARAMETERS], seed=seed, dtype=tf.float32)
    lows = tf.constant([-math.radians(ranges.rotation_degrees), ranges.scale[0], -ranges.shift,
                        -ranges.shift, -ranges.brightness, ranges.contrast[0]], tf.float32)
    highs = tf.constant([math.radians(ranges.rotation_degrees), ranges.scale[1], ranges.shift,
                         ranges.shift, ranges.brightness, ranges.contrast[1]], tf.float32)
    return lows + u * (highs - lows)


def identity_parameters() -> tf.Tensor:
    """Parameters that leave an image unchanged."""
    return tf.constant([0.0, 1.0, 0.0, 0.0, 0.0, 1.0], tf.float32)


def affine_transforms(parameters: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """(B, 8) rows for ``ImageProjectiveTransformV3``: output pixel -> input pixel.

    The forward map is ``p_out = c + s R(theta) (p_in - c) + t`` (c the image centre, t the
    shift in pixels); the op wants its inverse ``p_in = c + R(-theta) (p_out - c - t) / s``.
    """
    angle, scale, shift_x, shift_y = (parameters[:, k] for k in range(4))
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    tx, ty = shift_x * width, shift_y * height
    a0, a1 = tf.cos(angle) / scale, tf.sin(angle) / scale
    b0, b1 = -tf.sin(angle) / scale, tf.cos(angle) / scale
    a2 = cx - a0 * (cx + tx) - a1 * (cy + ty)
    b2 = cy - b0 * (cx + tx) - b1 * (cy + ty)
    zeros = tf.zeros_like(angle)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def augment_batch(images01: tf.Tensor, parameters: tf.Tensor) -> tf.Tensor:
    """Apply each image's affine map and intensity change; (B, H, W, C) in [0, 1] stays there."""
    height, width = images01.shape[1], images01.shape[2]
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=images01, transforms=affine_transforms(parameters, height, width),
        output_shape=tf.constant([height, width], tf.int32), fill_value=0.0,
        interpolation="BILINEAR", fill_mode="NEAREST")
    brightness = tf.reshape(parameters[:, 4], [-1, 1, 1, 1])
    contrast = tf.reshape(parameters[:, 5], [-1, 1, 1, 1])
    mean = tf.reduce_mean(moved, axis=[1, 2, 3], keepdims=True)
    return tf.clip_by_value((moved - mean) * contrast + mean + brightness, 0.0, 1.0)
