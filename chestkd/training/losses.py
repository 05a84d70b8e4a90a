"""Hard-label losses and the masked mean-AUC metric, shared by base training and distillation.

Label convention: ``y`` is float32 (B, C), multi-hot (independent findings) or one-hot
(mutually exclusive classes). A value of -1 marks an UNKNOWN label (CheXpert U-Ignore): it is
left out of every loss and metric here. Models output float32 LOGITS ``z``; every function
works from logits with the numerically stable forms below, so logits of +-1e4 give finite
losses and gradients.

Per-sample losses (shape (B,)) are the building blocks; the Keras ``Loss`` objects reduce them
with the usual ``sum_over_batch_size`` (the batch mean, sample weights applied), so they work
in ``model.compile(loss=...)`` and under ``tf.distribute``.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import ops

from chestkd.scores import exact_auc, ranking_scores

_PACKAGE = "chestkd"


def known_labels(y_true):
    """Split labels into (targets, mask): ``mask`` is 1 where the label is known (y >= 0),
    ``targets`` is y with unknown (-1) entries replaced by 0 so they are safe to multiply."""
    y_true = ops.cast(y_true, "float32")
    mask = ops.cast(ops.greater_equal(y_true, 0.0), "float32")
    return y_true * mask, mask


def sigmoid_cross_entropy(targets, logits):
    """Element-wise binary cross-entropy of ``sigmoid(logits)`` against soft or hard targets.

    .. math:: \\ell(p, z) = -p\\log\\sigma(z) - (1-p)\\log\\sigma(-z)
              = \\max(z, 0) - z p + \\log(1 + e^{-|z|})

    The right-hand form never takes the log of 0 nor exponentiates a positive number, so it is
    exact and finite for any finite logit.
    """
    targets = ops.cast(targets, "float32")
    logits = ops.cast(logits, "float32")
    return ops.relu(logits) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))


def masked_binary_crossentropy(y_true, logits):
    """Per-sample binary cross-entropy over the KNOWN findings, from logits.

    .. math:: L_i = \\frac{\\sum_c m_{ic}\\,\\ell(y_{ic}, z_{ic})}{\\sum_c m_{ic}}

    with :math:`m_{ic} = [y_{ic} \\ge 0]` and :math:`\\ell` the stable sigmoid cross-entropy of
    :func:`sigmoid_cross_entropy`. A sample with no known label gives 0 (it still counts in
    the batch mean, as one sample that carries no information).

    Returns:
        (B,) float32.
    """
    targets, mask = known_labels(y_true)
    per_class = sigmoid_cross_entropy(targets, logits) * mask
    return ops.divide_no_nan(ops.sum(per_class, axis=-1), ops.sum(mask, axis=-1))


def categorical_crossentropy_from_logits(y_true, logits):
    """Per-sample cross-entropy of ``softmax(logits)`` against one-hot (or multi-hot) labels.

    .. math:: L_i = -\\sum_c y_{ic} \\log \\mathrm{softmax}(z_i)_c

    computed with ``log_softmax`` (shift by the max logit), never ``log(softmax)``. For a
    multi-hot row every positive finding adds its own term (the sum is not renormalised).
    Unknown (-1) labels are treated as 0: they add no term, though their logits still take
    part in the softmax normaliser (a softmax cannot leave a class out).

    Returns:
        (B,) float32.
    """
    targets, _ = known_labels(y_true)
    log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    return -ops.sum(targets * log_probs, axis=-1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """Keras loss: batch mean of :func:`masked_binary_crossentropy` (multi-label findings)."""

    def __init__(self, name="masked_binary_crossentropy", reduction="sum_over_batch_size",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return masked_binary_crossentropy(y_true, y_pred)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CategoricalCrossentropyFromLogits(keras.losses.Loss):
    """Keras loss: batch mean of :func:`categorical_crossentropy_from_logits` (exclusive
    classes)."""

    def __init__(self, name="categorical_crossentropy_from_logits",
                 reduction="sum_over_batch_size", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return categorical_crossentropy_from_logits(y_true, y_pred)


def hard_loss_for(multi_label: bool) -> keras.losses.Loss:
    """The hard-label loss for a dataset: masked sigmoid BCE for independent findings,
    softmax cross-entropy for mutually exclusive classes."""
    return MaskedBinaryCrossentropy() if multi_label else CategoricalCrossentropyFromLogits()


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedAUC(keras.metrics.AUC):
    """Mean one-vs-rest ROC AUC over classes, from logits, ignoring unknown (-1) labels.

    A ``keras.metrics.AUC(multi_label=True, from_logits=True)`` whose update turns the label
    mask into a per-element (B, C) sample weight (Keras AUC accepts a weight of the same rank
    as ``y_true``; a weight-0 element adds nothing to any confusion-matrix count), and maps
    -1 to 0 so the label is a valid binary target.

    The result is the mean of the per-class trapezoidal ROC AUCs over the classes whose AUC
    is DEFINED in the data seen so far (at least one known positive and one known negative).
    Plain Keras AUC would count an undefined class as 0 and drag the mean down, which happens
    on small validation sets with rare findings (e.g. Hernia). With no defined class the
    result is 0.

    Args:
        num_labels: number of classes C; give it so the metric state is created at
            construction (required under ``tf.distribute``).
        softmax: False (multi-label): rank by ``sigmoid(z)``, one AUC per finding. True
            (single-label): rank by ``softmax(z)``, the usual one-vs-rest AUC of a softmax
            classifier (a class's softmax probability is not monotone in its own logit alone).
        num_thresholds: thresholds of the Keras approximation; with all scores in distinct
            threshold buckets the approximation equals the exact (Mann-Whitney) AUC.

    The approximation is coarse where it matters most: scores that fall in one of the
    ``num_thresholds`` buckets (width 1/199 by default) are tied, so a rare finding whose few
    positives score just above the negatives can read 0.5 instead of 1. Checkpoints are
    therefore chosen on :func:`exact_mean_auc` (the
    :class:`chestkd.training.callbacks.ExactValidationAUC` callback); this metric stays as the
    cheap in-graph progress figure.
    """

    def __init__(self, num_labels=None, softmax=False, num_thresholds=200, name="auc",
                 dtype=None, **ignored):
        # ``ignored`` swallows the fixed AUC options that ``AUC.get_config`` writes
        # (curve, multi_label, from_logits, ...) so ``from_config`` round-trips.
        super().__init__(num_thresholds=num_thresholds, curve="ROC",
                         summation_method="interpolation", name=name, dtype=dtype,
                         multi_label=True, num_labels=num_labels, from_logits=not softmax)
        self.softmax = bool(softmax)

    def update_state(self, y_true, y_pred, sample_weight=None):
        targets, mask = known_labels(y_true)
        weight = mask
        if sample_weight is not None:
            sample_weight = ops.cast(sample_weight, "float32")
            if len(sample_weight.shape) == 1:
                sample_weight = ops.expand_dims(sample_weight, -1)
            weight = weight * sample_weight
        y_pred = ops.cast(y_pred, "float32")
        if self.softmax:
            y_pred = ops.softmax(y_pred, axis=-1)
        super().update_state(targets, y_pred, sample_weight=weight)

    def result(self):
        tp, fp = self.true_positives, self.false_positives
        tn, fn = self.true_negatives, self.false_negatives
        tpr = ops.divide_no_nan(tp, tp + fn)
        fpr = ops.divide_no_nan(fp, fp + tn)
        # Thresholds ascend, so the curve runs from (1, 1) down to (0, 0): trapezoids.
        per_class = ops.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2.0, axis=0)
        # At the lowest threshold every sample is predicted positive: tp+fn = positives,
        # fp+tn = negatives of each class.
        defined = ops.cast(ops.logical_and(tp[0] + fn[0] > 0, fp[0] + tn[0] > 0), per_class.dtype)
        return ops.divide_no_nan(ops.sum(per_class * defined), ops.sum(defined))

    def get_config(self):
        return {"num_labels": self.num_labels, "softmax": self.softmax,
                "num_thresholds": self.num_thresholds, "name": self.name, "dtype": self.dtype}


def exact_mean_auc(y_true, logits, multi_label: bool, *, undefined: float = 0.0) -> float:
    """Mean over the DEFINED classes of :func:`chestkd.scores.exact_auc` of
    :func:`chestkd.scores.ranking_scores` (the order of the sigmoid or softmax scores, as
    :class:`MaskedAUC` ranks them, without their saturation), the exact counterpart of
    :class:`MaskedAUC`. Unknown (-1) labels are left out of their class. When no class is
    defined: ``undefined``, 0 as MaskedAUC gives (a training monitor needs a number); a
    report passes NaN, since 0 would read as a measured AUC.

    .. math:: \\mathrm{AUC}_c = \\frac{1}{P_c N_c} \\sum_{i \\in P_c} \\sum_{j \\in N_c}
              \\left([s_{ic} > s_{jc}] + \\tfrac12 [s_{ic} = s_{jc}]\\right)
    """
    per_class = exact_auc(y_true, ranking_scores(logits, multi_label))
    defined = per_class[~np.isnan(per_class)]
    return float(defined.mean()) if defined.size else float(undefined)
