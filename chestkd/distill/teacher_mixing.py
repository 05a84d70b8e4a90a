"""How the Distiller mixes the logits of K teachers into one target per example.

:math:`z_t[b] = \\sum_k w_{b,k} z^{(k)}[b]` with convex weights :math:`w_{b,\\cdot}` (non-negative,
summing to 1), or, with ``teacher_combine="losses"`` (RoS-KD's Eq. 4), the weighted sum of one
divergence per teacher. The sampling modes (``TEACHER_SAMPLING``):

``"fixed"``
    the constructor's ``teacher_weights`` (default the uniform mean), the same for every example.
``"random"`` (RoS-KD)
    one draw :math:`w \\sim \\mathrm{Dirichlet}(1, \\dots, 1)` per training step, shared by the
    batch: K Exp(1) variables :math:`-\\log U` normalised to sum 1, with ``U`` from
    ``tf.random.stateless_uniform((K,), seed=(seed, step), minval=1e-12, maxval=1)``.
``"random_per_example"``
    every example draws its own Dirichlet(1, ..., 1) weights: the same construction with
    ``U`` of shape (B, K), keyed by ``(seed, step)``; under tf.distribute the replica id is
    folded into the key (``stateless_fold_in``) so replicas do not repeat each other's draws.

The random modes draw in one of two forms (``weight_draw``, ``WEIGHT_DRAWS``):
``"normalised"`` (the default) divides the K Exp(1) draws by their sum (Dirichlet(1)): the
soft term keeps the scale ``alpha`` gives it. ``"exponential"`` keeps them as drawn, RoS-KD's
Eq. 4 taken literally (``w_k ~ Exp(1)``, not normalised): their sum is Gamma(K, 1) (mean K), so
the soft term is on average K times larger and its size varies from step to step; the
teachers' relative weights are the same in both forms. Unnormalised weights only make sense
as weights of divergences, so ``"exponential"`` needs ``teacher_combine="losses"``.
``"confidence"`` (a simple, documented substitute for RoS-KD's Baseline IV)
    the RoS-KD paper's Baseline IV learns per-example teacher weights with a reinforcement-
    learning policy; this mode is NOT that policy. It weighs each teacher by how sure it is on
    the example, with no learned parameters:

    .. math:: c_{b,k} = \\frac{1}{C}\\sum_c |2\\sigma(z^{(k)}_{b,c}) - 1|
              \\ \\text{(multi-label)}, \\qquad
              c_{b,k} = \\max_c \\mathrm{softmax}(z^{(k)}_b)_c \\ \\text{(single-label)},

    .. math:: w_{b,k} = \\mathrm{softmax}_k(c_{b,k} / \\tau).

    :math:`c \\in [0, 1]` in both cases (0: a coin flip on every finding / the uniform
    distribution; 1: certain), so the temperature :math:`\\tau` (``confidence_temperature``,
    default 0.1) has the same meaning for both: a teacher 0.1 more confident than another gets
    :math:`e^{0.1/\\tau}` (= e ≈ 2.7 at the default) times its weight. Large :math:`\\tau` tends
    to the uniform mean, small :math:`\\tau` to "trust the most confident teacher". Confidence
    is computed on the raw (T = 1) logits, before any distillation temperature.

Evaluation (``training=False``) always uses the uniform mean (or ``teacher_weights``) so
validation losses compare across steps and modes. All weights are gradient-free.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from keras import ops

from chestkd.errors import ConfigError

TEACHER_SAMPLING = ("fixed", "random", "random_per_example", "confidence")
PER_EXAMPLE_SAMPLING = ("random_per_example", "confidence")
RANDOM_SAMPLING = ("random", "random_per_example")
# "normalised": Dirichlet(1) (Exp(1) draws / their sum); "exponential": Exp(1) as drawn (Eq. 4)
WEIGHT_DRAWS = ("normalised", "exponential")
# "logits": one divergence to the mixed logits; "losses": the mixed divergences (RoS-KD Eq. 4)
TEACHER_COMBINE = ("logits", "losses")
DEFAULT_CONFIDENCE_TEMPERATURE = 0.1


def exponential_draws(shape, seed):
    """Independent Exp(1) weights ``-log U`` of ``shape``, stateless (``seed``: int64 (2,))."""
    uniform = tf.random.stateless_uniform(shape, seed=seed, minval=1e-12, maxval=1.0)
    return -ops.log(uniform)


def dirichlet_ones(shape, seed):
    """Convex weights ~ Dirichlet(1, ..., 1) along the last axis of ``shape``, stateless.

    ``seed`` is an int64 (2,) tensor. Normalised Exp(1) draws ``-log U`` are Dirichlet(1..1).
    """
    exponential = exponential_draws(shape, seed)
    return exponential / ops.sum(exponential, axis=-1, keepdims=True)


def random_weights(shape, seed, weight_draw: str = "normalised"):
    """The random modes' draw: Dirichlet(1) (``"normalised"``) or Exp(1) as drawn
    (``"exponential"``, RoS-KD's Eq. 4); the same ``-log U`` underneath, so for one key the
    two differ only by the sum of the draws."""
    if weight_draw == "exponential":
        return exponential_draws(shape, seed)
    return dirichlet_ones(shape, seed)


def check_weight_draw(weight_draw, sampling, combine) -> str:
    """``weight_draw`` checked against the sampling mode and the combination."""
    if weight_draw not in WEIGHT_DRAWS:
        raise ConfigError(f"Distiller: unknown option 'weight_draw'={weight_draw!r}; choose "
                          f"one of {list(WEIGHT_DRAWS)}")
    if weight_draw == "exponential" and sampling in RANDOM_SAMPLING and combine != "losses":
        raise ConfigError("Distiller: weight_draw='exponential' (unnormalised Exp(1) weights) "
                          "needs teacher_combine='losses': unnormalised weights would rescale "
                          "the mixed logits")
    return weight_draw


def step_seed(seed: int, step, per_replica: bool = False):
    """The stateless key ``(seed, step)``; with ``per_replica`` the replica id is folded in
    when more than one replica is in sync (one replica: exactly ``(seed, step)``)."""
    key = tf.stack([tf.constant(int(seed), tf.int64), ops.cast(step, "int64")])
    if per_replica:
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            replica = ops.cast(context.replica_id_in_sync_group, "int64")
            key = tf.random.experimental.stateless_fold_in(key, replica)
    return key


def teacher_confidence(stacked_logits, multi_label: bool):
    """(B, K) confidence in [0, 1] of each teacher on each example, from (B, K, C) logits."""
    logits = ops.cast(stacked_logits, "float32")
    if multi_label:
        return ops.mean(ops.abs(2.0 * ops.sigmoid(logits) - 1.0), axis=-1)
    return ops.max(ops.softmax(logits, axis=-1), axis=-1)


def confidence_weights(stacked_logits, multi_label: bool,
                       temperature: float = DEFAULT_CONFIDENCE_TEMPERATURE):
    """(B, K) weights :math:`\\mathrm{softmax}_k(c_{b,k}/\\tau)` (see the module docstring)."""
    confidence = teacher_confidence(stacked_logits, multi_label)
    return ops.softmax(confidence / float(temperature), axis=-1)


def mix(stacked_logits, weights):
    """(B, C) = sum_k w z^(k) for (B, K, C) logits and (K,) or (B, K) weights."""
    if len(weights.shape) == 1:
        weights = weights[None, :]
    return ops.sum(stacked_logits * weights[:, :, None], axis=1)


def normalised_weights(weights, expected_count):
    """``teacher_weights`` as float32 summing to 1 (None stays None), checked."""
    if weights is None:
        return None
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if expected_count is not None and len(weights) != expected_count:
        raise ConfigError(f"Distiller: 'teacher_weights' has {len(weights)} values for "
                          f"{expected_count} teachers")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ConfigError(f"Distiller: 'teacher_weights' must be non-negative with a "
                          f"positive sum, got {weights.tolist()}")
    return (weights / weights.sum()).astype(np.float32)


def check_temperature(value) -> float:
    """``confidence_temperature`` as a float > 0, or a ConfigError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not np.isfinite(value) or value <= 0:
        raise ConfigError(f"Distiller: 'confidence_temperature' must be a number > 0, got "
                          f"{value!r}")
    return float(value)
