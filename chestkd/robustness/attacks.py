"""Adversarial attacks on a classifier's inputs: FGSM (Goodfellow et al. 2015) and PGD
(Madry et al. 2018), under the L-infinity or L2 norm.

Units: ``epsilon`` is in INTENSITY units, 1.0 being the full 0-255 range of a pixel, as papers
quote it (RoS-KD's L2 radius is 1.28/255), whatever the model's input normalisation. The
attacks take the run's ``normalization`` (and ``mean_std``) and derive, per channel, how many
model-input units one intensity unit is (``scale``: 2 for ``minus_one_one``, 1 for
``zero_one``, ``1/std`` for ``imagenet`` and ``mean_std``) and the model-input values of
intensities 0 and 1 (:func:`input_range`). The perturbation is built in intensity units (the
L2 norm is taken there, so a channel-wise scale does not stretch the ball), moved into model
units by ``scale``, and adversarial inputs are clipped to the valid range, widened where a
clean input already lies beyond it by rounding, so a clean pixel is never clipped and
``epsilon = 0`` returns the images unchanged.

The attacked loss is the model's own training loss per image: the binary cross-entropy over
the known findings for multi-label data (unknown -1 labels left out), the softmax
cross-entropy for exclusive classes. Attacks run batched, the gradient step compiled with
``tf.function``; the model runs with ``training=False`` (BatchNorm moving statistics, no
dropout) and none of its weights change.
"""
from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from chestkd.data.images import IMAGENET_MEAN, IMAGENET_STD
from chestkd.data.pipeline import NORMALIZATIONS
from chestkd.errors import ConfigError
from chestkd.training.losses import categorical_crossentropy_from_logits, \
    masked_binary_crossentropy

NORMS = ("linf", "l2")
_COMPILED = weakref.WeakKeyDictionary()   # model -> {multi_label: compiled gradient}


class InputRange(NamedTuple):
    """Per channel (C,): model-input units per intensity unit, and the model inputs of
    intensities 0 (``low``) and 1 (``high``)."""
    scale: np.ndarray
    low: np.ndarray
    high: np.ndarray


def input_range(normalization: str = "minus_one_one", mean_std=None,
                channels: int = 3) -> InputRange:
    """How the pipeline's ``normalization`` maps intensities in [0, 1] to model inputs
    (:func:`chestkd.data.pipeline.normalize`: ``(x - mean) / std`` per channel)."""
    if normalization == "minus_one_one":
        mean, std = 0.5, 0.5
    elif normalization == "zero_one":
        mean, std = 0.0, 1.0
    elif normalization == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif normalization == "mean_std":
        if mean_std is None or len(mean_std) != 2:
            raise ConfigError(f"normalization 'mean_std' needs mean_std=(mean, std), got "
                              f"{mean_std!r}")
        mean, std = mean_std
    else:
        raise ConfigError(f"normalization {normalization!r}: choose one of "
                          f"{list(NORMALIZATIONS)}")
    try:
        mean = np.broadcast_to(np.asarray(mean, np.float64), (channels,))
        std = np.broadcast_to(np.asarray(std, np.float64), (channels,))
    except ValueError:
        raise ConfigError(f"mean_std {mean_std!r}: one value or one per channel "
                          f"({channels})") from None
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise ConfigError(f"{normalization}: mean {mean.tolist()} and std {std.tolist()} must "
                          f"be finite, std > 0")
    return InputRange(scale=(1.0 / std).astype(np.float32),
                      low=((0.0 - mean) / std).astype(np.float32),
                      high=((1.0 - mean) / std).astype(np.float32))


def attack_loss(labels, logits, multi_label: bool):
    """Per-image loss (B,) the attacks ascend: masked BCE (multi-label) or softmax CE."""
    if multi_label:
        return masked_binary_crossentropy(labels, logits)
    return categorical_crossentropy_from_logits(labels, logits)


def loss_and_gradient(model, multi_label: bool):
    """A compiled ``f(images, labels) -> (per-image loss (B,), d loss / d images)``."""
    per_model = _COMPILED.setdefault(model, {})
    if multi_label not in per_model:
        @tf.function(reduce_retracing=True)
        def compute(images, labels):
            with tf.GradientTape() as tape:
                tape.watch(images)
                logits = tf.cast(model(images, training=False), tf.float32)
                loss = attack_loss(labels, logits, multi_label)
                # The sum's gradient is each image's own loss gradient (images independent).
                total = tf.reduce_sum(loss)
            return loss, tape.gradient(total, images)

        @tf.function(reduce_retracing=True)
        def compute_reduced(images, labels):
            # A mixed-precision model's gradients flow back in float16, where a confident
            # model's (1e-18 at a logit margin of 40) are 0, and sign(0) never moves a pixel.
            # The attacks use only each image's gradient direction: the loss gradient at the
            # logits, in float32, is scaled per image to a largest entry of 1 before it
            # enters the model.
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(images)
                logits = tf.cast(model(images, training=False), tf.float32)
                loss = attack_loss(labels, logits, multi_label)
                total = tf.reduce_sum(loss)
            upstream = tape.gradient(total, logits)
            largest = tf.reduce_max(tf.abs(upstream), axis=-1, keepdims=True)
            upstream = tf.math.divide_no_nan(upstream, largest)
            gradient = tape.gradient(logits, images, output_gradients=upstream)
            del tape
            return loss, gradient

        per_model[multi_label] = compute_reduced if _reduced_precision(model) else compute
    return per_model[multi_label]


def _reduced_precision(model) -> bool:
    """Whether any layer of ``model`` computes in float16 or bfloat16 (mixed precision sets
    the layers' policy; the model's own may stay float32)."""
    layers = model._flatten_layers(include_self=False, recursive=True)
    return any(layer.compute_dtype in ("float16", "bfloat16") for layer in layers)


def check_attack(epsilon, norm, steps=1) -> None:
    """The attack's options, or a ConfigError naming the flag (before any image is read)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating)) \
            or not np.isfinite(epsilon) or epsilon < 0:
        raise ConfigError(f"--epsilon {epsilon!r}: a non-negative number (intensity units, "
                          f"1.0 = the full 0-255 range)")
    if norm not in NORMS:
        raise ConfigError(f"--norm {norm!r}: choose linf or l2")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ConfigError(f"--steps {steps!r}: a positive integer")


def _l2_unit(values):
    """Each image of ``values`` divided by its L2 norm (zero images stay zero)."""
    norms = tf.sqrt(tf.reduce_sum(tf.square(values), axis=list(range(1, values.shape.rank)),
                                  keepdims=True))
    return tf.math.divide_no_nan(values, norms)


def _project(delta, radius, norm):
    """``delta`` projected onto the ball of ``radius`` (per image)."""
    if norm == "linf":
        return tf.clip_by_value(delta, -radius, radius)
    axes = list(range(1, delta.shape.rank))
    norms = tf.sqrt(tf.reduce_sum(tf.square(delta), axis=axes, keepdims=True))
    return delta * tf.minimum(1.0, tf.math.divide_no_nan(radius, norms))


def _step_direction(gradient, norm):
    return tf.sign(gradient) if norm == "linf" else _l2_unit(gradient)


def _batches(images, labels, batch_size):
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.float32)
    if len(images) != len(labels):
        raise ConfigError(f"{len(images)} images but {len(labels)} label rows")
    for start in range(0, len(images), batch_size):
        yield (tf.constant(images[start:start + batch_size]),
               tf.constant(labels[start:start + batch_size]))


def _ranges(images, normalization, mean_std):
    """(scale, low, high) as float32 tensors over the channel axis of ``images``."""
    channels = int(np.shape(images)[-1]) if np.ndim(images) else 1
    bounds = input_range(normalization, mean_std, channels)
    return tuple(tf.constant(v) for v in bounds)


def _clip(adversarial, x, low, high):
    """Clip to the valid input range, widened to hold the clean input ``x`` (a clean pixel
    that rounding put just beyond the range stays as it is)."""
    return tf.clip_by_value(adversarial, tf.minimum(low, x), tf.maximum(high, x))


def fgsm(model, images, labels, epsilon, *, multi_label=True, norm="linf",
         normalization="minus_one_one", mean_std=None, batch_size=64) -> np.ndarray:
    """Fast gradient sign method: ``x + scale * epsilon * sign(grad_x loss)``, clipped to the
    valid range (module docstring: ``scale`` and the range come from ``normalization``).

    With ``norm="l2"`` it is the fast gradient method: the step of L2 norm ``epsilon`` in
    intensity units along the gradient with respect to the intensities,
    ``scale * grad_x``. Returns float32 adversarial images.
    """
    check_attack(epsilon, norm)
    gradient_of = loss_and_gradient(model, bool(multi_label))
    scale, low, high = _ranges(images, normalization, mean_std)
    out = []
    for x, y in _batches(images, labels, batch_size):
        _, gradient = gradient_of(x, y)
        # d loss / d intensity = scale * d loss / d input (chain rule, per channel)
        step = float(epsilon) * _step_direction(gradient * scale, norm)
        out.append(_clip(x + scale * step, x, low, high))
    return np.concatenate([o.numpy() for o in out]) if out else np.asarray(images, np.float32)


def pgd(model, images, labels, epsilon, steps=10, step_size=None, norm="linf",
        random_start=True, seed=0, *, multi_label=True, normalization="minus_one_one",
        mean_std=None, batch_size=64) -> np.ndarray:
    """Projected gradient descent (ascent on the loss) inside the ``epsilon`` ball.

    The perturbation lives in intensity units (``epsilon`` ball, linf or L2, there). Each
    step moves ``step_size`` (intensity units; default ``2.5 * epsilon / steps``, Madry et
    al.) along the sign (linf) or unit L2 direction of the gradient with respect to the
    intensities, projects back onto the ball around the input and clips to the valid range
    (module docstring). ``random_start`` begins at a uniform point of the linf ball, or of the
    L2 ball (uniform direction, uniform radius), seeded by ``seed``. Per image the iterate
    with the HIGHEST loss is returned (the starting point included), so without a random
    start and with ``step_size >= epsilon`` (linf) the result never has a lower loss than
    FGSM's. Returns float32 adversarial images.
    """
    check_attack(epsilon, norm, steps)
    gradient_of = loss_and_gradient(model, bool(multi_label))
    scale, low, high = _ranges(images, normalization, mean_std)
    radius = float(epsilon)
    step = 2.5 * radius / steps if step_size is None else float(step_size)
    generator = tf.random.Generator.from_seed(int(seed))
    out = []
    for x, y in _batches(images, labels, batch_size):
        if random_start and radius > 0:
            if norm == "linf":
                delta = generator.uniform(tf.shape(x), -radius, radius)
            else:
                direction = _l2_unit(generator.normal(tf.shape(x)))
                lengths = generator.uniform((x.shape[0],) + (1,) * (x.shape.rank - 1), 0,
                                            radius)
                delta = direction * lengths
            adversarial = _clip(x + scale * delta, x, low, high)
        else:
            adversarial = x
        best, best_loss = adversarial, None
        for index in range(steps + 1):
            loss, gradient = gradient_of(adversarial, y)
            # Keep, per image, the iterate with the highest loss so far.
            if best_loss is None:
                best, best_loss = adversarial, loss
            else:
                better = loss > best_loss
                best = tf.where(tf.reshape(better, (-1,) + (1,) * (x.shape.rank - 1)),
                                adversarial, best)
                best_loss = tf.maximum(loss, best_loss)
            if index == steps:
                break
            # The current perturbation in intensity units, one step further, projected.
            moved = (adversarial - x) / scale + step * _step_direction(gradient * scale, norm)
            adversarial = _clip(x + scale * _project(moved, radius, norm), x, low, high)
        out.append(best)
    return np.concatenate([o.numpy() for o in out]) if out else np.asarray(images, np.float32)
