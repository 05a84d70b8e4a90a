"""Adversarial attacks on a classifier's inputs: FGSM (Goodfellow et al. 2015) and PGD
(Madry et al. 2018), under the L-infinity or L2 norm.

Units: ``epsilon`` is in INTENSITY units, 1.0 being the full 0-255 range, as papers quote it
(RoS-KD's L2 radius is 1.28/255). chestkd models see inputs in [-1, 1] (the
``minus_one_one`` normalisation), a range twice as wide, so a perturbation of ``epsilon``
moves the model's inputs by ``scale * epsilon`` with ``scale = 2``; adversarial inputs are
clipped to ``[-1, 1]``. Pass ``scale``/``clip`` for another normalisation.

The attacked loss is the model's own training loss per image: the binary cross-entropy over
the known findings for multi-label data (unknown -1 labels left out), the softmax
cross-entropy for exclusive classes. Attacks run batched, the gradient step compiled with
``tf.function``; the model runs with ``training=False`` (BatchNorm moving statistics, no
dropout) and none of its weights change.
"""
from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

from chestkd.errors import ConfigError
from chestkd.training.losses import categorical_crossentropy_from_logits, \
    masked_binary_crossentropy

NORMS = ("linf", "l2")
_COMPILED = weakref.WeakKeyDictionary()   # model -> {multi_label: compiled gradient}


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

        per_model[multi_label] = compute
    return per_model[multi_label]


def _check(epsilon, norm, steps=1):
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


def fgsm(model, images, labels, epsilon, *, multi_label=True, norm="linf", scale=2.0,
         clip=(-1.0, 1.0), batch_size=64) -> np.ndarray:
    """Fast gradient sign method: ``clip(x + scale*epsilon * sign(grad_x loss))``.

    With ``norm="l2"`` it is the fast gradient method, the step
    ``scale*epsilon * g / ||g||_2`` per image. Returns float32 adversarial images.
    """
    _check(epsilon, norm)
    gradient_of = loss_and_gradient(model, bool(multi_label))
    radius = float(scale) * float(epsilon)
    out = []
    for x, y in _batches(images, labels, batch_size):
        _, gradient = gradient_of(x, y)
        out.append(tf.clip_by_value(x + radius * _step_direction(gradient, norm), *clip))
    return np.concatenate([o.numpy() for o in out]) if out else np.asarray(images, np.float32)


def pgd(model, images, labels, epsilon, steps=10, step_size=None, norm="linf",
        random_start=True, seed=0, *, multi_label=True, scale=2.0, clip=(-1.0, 1.0),
        batch_size=64) -> np.ndarray:
    """Projected gradient descent (ascent on the loss) inside the ``epsilon`` ball.

    Each step moves ``step_size`` (intensity units; default ``2.5 * epsilon / steps``,
    Madry et al.) along the gradient's sign (linf) or unit L2 direction, projects back onto
    the ball around the input and clips to ``clip``. ``random_start`` begins at a uniform point
    of the linf ball, or of the L2 ball (uniform direction, uniform radius), seeded by
    ``seed``. Per image the iterate with the HIGHEST loss is returned (the starting point
    included), so without a random start and with ``step_size >= epsilon`` (linf) the result
    never has a lower loss than FGSM's. Returns float32 adversarial images.
    """
    _check(epsilon, norm, steps)
    gradient_of = loss_and_gradient(model, bool(multi_label))
    radius = float(scale) * float(epsilon)
    step = float(scale) * (2.5 * float(epsilon) / steps if step_size is None else
                           float(step_size))
    generator = tf.random.Generator.from_seed(int(seed))
    low, high = clip
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
            adversarial = tf.clip_by_value(x + delta, low, high)
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
            moved = adversarial + step * _step_direction(gradient, norm)
            adversarial = tf.clip_by_value(x + _project(moved - x, radius, norm), low, high)
        out.append(best)
    return np.concatenate([o.numpy() for o in out]) if out else np.asarray(images, np.float32)
