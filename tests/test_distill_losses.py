"""Hard-label losses, masked AUC and the distillation formulations against float64 NumPy."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from chestkd.distill.kd_loss import FORMULATIONS, KDLoss, distillation_loss  # noqa: E402
from chestkd.errors import ConfigError  # noqa: E402
from chestkd.training.losses import (  # noqa: E402
    CategoricalCrossentropyFromLogits,
    MaskedAUC,
    MaskedBinaryCrossentropy,
    categorical_crossentropy_from_logits,
    hard_loss_for,
    masked_binary_crossentropy,
)


# ----------------------------------------------------------------- float64 references
def log_softmax64(z):
    z = np.asarray(z, np.float64)
    shifted = z - z.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def log_sigmoid64(z):
    z = np.asarray(z, np.float64)
    return -np.logaddexp(0.0, -z)


def bce64(p, z):
    """-p log s(z) - (1-p) log s(-z), elementwise."""
    return -(p * log_sigmoid64(z) + (1 - p) * log_sigmoid64(-z))


def masked_bce64(y, z):
    y = np.asarray(y, np.float64)
    known = y >= 0
    per_class = np.where(known, bce64(np.where(known, y, 0), z), 0.0)
    counts = known.sum(-1)
    return np.where(counts > 0, per_class.sum(-1) / np.maximum(counts, 1), 0.0)


def cce64(y, z):
    y = np.clip(np.asarray(y, np.float64), 0, None)
    return -(y * log_softmax64(z)).sum(-1)


def kl64(zs, zt, t):
    lt, ls = log_softmax64(np.asarray(zt) / t), log_softmax64(np.asarray(zs) / t)
    return (np.exp(lt) * (lt - ls)).sum(-1)


def reference_terms(formulation, y, zs, zt, t):
    """(hard, soft) per-sample float64 terms of each formulation, written from the equations."""
    if formulation == "sigmoid":
        p_teacher = np.exp(log_sigmoid64(np.asarray(zt, np.float64) / t))
        return masked_bce64(y, zs), t * t * bce64(p_teacher, np.asarray(zs) / t).mean(-1)
    hard = cce64(y, zs)
    if formulation == "hinton":
        return hard, t * t * kl64(zs, zt, t)
    if formulation == "ho2020_eq5":
        p_teacher = np.exp(log_softmax64(np.asarray(zt) / t))
        return hard, -2 * t * t * (p_teacher * log_softmax64(np.asarray(zs) / t)).sum(-1)
    return hard, kl64(zs, zt, t)  # ho2020_eq8: no temperature factor


def mann_whitney_auc(y, scores):
    """Exact AUC: P(score_pos > score_neg) + 0.5 P(tie)."""
    pos, neg = scores[y == 1], scores[y == 0]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return greater + 0.5 * ties


def np_(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor), np.float64)


B, C = 12, 5


def random_batch(scale, seed):
    rng = np.random.default_rng(seed)
    zs = (rng.standard_normal((B, C)) * scale).astype(np.float32)
    zt = (rng.standard_normal((B, C)) * scale).astype(np.float32)
    y = (rng.random((B, C)) < 0.4).astype(np.float32)
    y[0] = 0.0  # an all-negative ("no finding") row
    y[1, :2] = -1.0  # unknown labels
    return y, zs, zt


# --------------------------------------------------------------------- hard losses
@pytest.mark.parametrize("scale", [1.0, 50.0, 1e4])
def test_masked_bce_matches_float64_reference(scale):
    y, z, _ = random_batch(scale, seed=int(scale))
    got = np_(masked_binary_crossentropy(y, z))
    np.testing.assert_allclose(got, masked_bce64(y, z), rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(got))


def test_masked_bce_leaves_out_unknown_labels_and_empty_rows():
    z = np.array([[3.0, -2.0, 0.5], [1.0, 1.0, 1.0]], np.float32)
    y = np.array([[1.0, -1.0, 0.0], [-1.0, -1.0, -1.0]], np.float32)
    got = np_(masked_binary_crossentropy(y, z))
    # Row 0: only classes 0 and 2 count, whatever the logit of the unknown class 1.
    expected0 = (bce64(1.0, 3.0) + bce64(0.0, 0.5)) / 2
    np.testing.assert_allclose(got, [expected0, 0.0], rtol=1e-6)
    changed = z.copy()
    changed[0, 1] = 1e4
    np.testing.assert_allclose(np_(masked_binary_crossentropy(y, changed)), got, rtol=1e-6)
    # The batch-mean Keras loss still divides by the 2 samples (the empty one adds 0).
    np.testing.assert_allclose(np_(MaskedBinaryCrossentropy()(y, z)), expected0 / 2, rtol=1e-6)


def test_hard_losses_at_extreme_logits_are_exact_and_finite():
    z = np.array([[1e4, -1e4], [-1e4, 1e4]], np.float32)
    y_right = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    y_wrong = 1.0 - y_right
    np.testing.assert_allclose(np_(masked_binary_crossentropy(y_right, z)), [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(np_(masked_binary_crossentropy(y_wrong, z)), [1e4, 1e4], rtol=1e-6)
    np.testing.assert_allclose(np_(categorical_crossentropy_from_logits(y_right, z)), [0, 0],
                               atol=1e-6)
    np.testing.assert_allclose(np_(categorical_crossentropy_from_logits(y_wrong, z)),
                               [2e4, 2e4], rtol=1e-6)
    variable = tf.Variable(z)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(masked_binary_crossentropy(y_wrong, variable)
                             + categorical_crossentropy_from_logits(y_wrong, variable))
    gradient = tape.gradient(loss, variable).numpy()
    assert np.all(np.isfinite(gradient))
    # d BCE/dz = sigmoid(z) - y (mean over 2 classes), d CE/dz = softmax(z) - y.
    np.testing.assert_allclose(gradient, [[1.5, -1.5], [-1.5, 1.5]], atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 50.0, 1e4])
def test_categorical_crossentropy_matches_float64_reference(scale):
    rng = np.random.default_rng(7)
    z = (rng.standard_normal((B, C)) * scale).astype(np.float32)
    y = np.eye(C, dtype=np.float32)[rng.integers(0, C, B)]
    got = np_(categorical_crossentropy_from_logits(y, z))
    np.testing.assert_allclose(got, cce64(y, z), rtol=1e-5, atol=1e-5)


def test_keras_loss_objects_in_compile_and_with_sample_weights():
    y, z, _ = random_batch(2.0, seed=3)
    onehot = np.eye(C, dtype=np.float32)[np.arange(B) % C]
    weights = np.linspace(0.0, 2.0, B).astype(np.float32)
    assert isinstance(hard_loss_for(True), MaskedBinaryCrossentropy)
    assert isinstance(hard_loss_for(False), CategoricalCrossentropyFromLogits)
    np.testing.assert_allclose(np_(hard_loss_for(True)(y, z, sample_weight=weights)),
                               (weights * masked_bce64(y, z)).sum() / B, rtol=1e-5)
    np.testing.assert_allclose(np_(hard_loss_for(False)(onehot, z)), cce64(onehot, z).mean(),
                               rtol=1e-5)
    # A model whose output is its input: evaluate() reports the loss of those logits.
    identity = keras.Sequential([keras.Input((C,)), keras.layers.Identity()])
    identity.compile(loss=MaskedBinaryCrossentropy(), metrics=[MaskedAUC(num_labels=C)])
    result = identity.evaluate(z, y, batch_size=B, verbose=0, return_dict=True)
    np.testing.assert_allclose(result["loss"], masked_bce64(y, z).mean(), rtol=1e-5)


# ------------------------------------------------------------------------ masked AUC
def bucketed_logits(rng, n, c, num_thresholds=200):
    """Logits whose sigmoids fall in distinct AUC-threshold buckets (Keras AUC is then exact)."""
    buckets = np.stack([rng.permutation(num_thresholds - 1)[:n] for _ in range(c)], axis=1)
    p = (buckets + 0.5) / (num_thresholds - 1)
    return np.log(p / (1 - p)).astype(np.float32)


def test_masked_auc_is_the_exact_mean_auc_over_known_labels():
    rng = np.random.default_rng(5)
    n, c = 40, 3
    z = bucketed_logits(rng, n, c)
    y = (rng.random((n, c)) < 0.4).astype(np.float32)
    y[:10, 1] = -1.0  # unknown labels of class 1 must be left out, not read as negatives
    metric = MaskedAUC(num_labels=c)
    metric.update_state(y[:25], z[:25])  # two batches accumulate
    metric.update_state(y[25:], z[25:])
    per_class = [mann_whitney_auc(y[y[:, k] >= 0, k], z[y[:, k] >= 0, k]) for k in range(c)]
    np.testing.assert_allclose(float(metric.result()), np.mean(per_class), atol=1e-6)
    # Reading -1 as a negative would change the answer: the mask is doing something.
    as_negative = mann_whitney_auc(np.clip(y[:, 1], 0, 1), z[:, 1])
    assert abs(as_negative - per_class[1]) > 1e-3


def test_masked_auc_skips_classes_without_positives_and_weights_samples():
    rng = np.random.default_rng(6)
    n = 30
    z = bucketed_logits(rng, n, 2)
    y = np.stack([(rng.random(n) < 0.5), np.zeros(n, bool)], axis=1).astype(np.float32)
    metric = MaskedAUC(num_labels=2)
    metric.update_state(y, z)
    # Class 1 has no positive: its AUC is undefined and left out of the mean (not counted as 0).
    np.testing.assert_allclose(float(metric.result()), mann_whitney_auc(y[:, 0], z[:, 0]),
                               atol=1e-6)
    weighted = MaskedAUC(num_labels=2)
    keep = np.arange(n) % 3 != 0
    weighted.update_state(y, z, sample_weight=keep.astype(np.float32))
    np.testing.assert_allclose(float(weighted.result()),
                               mann_whitney_auc(y[keep, 0], z[keep, 0]), atol=1e-6)
    empty = MaskedAUC(num_labels=2)
    empty.update_state(np.zeros((4, 2), np.float32), z[:4])
    assert float(empty.result()) == 0.0


def test_masked_auc_softmax_mode_is_one_vs_rest_on_probabilities():
    rng = np.random.default_rng(8)
    n, c = 60, 3
    z = (rng.standard_normal((n, c)) * 2).astype(np.float32)
    y = np.eye(c, dtype=np.float32)[rng.integers(0, c, n)]
    probabilities = np.exp(log_softmax64(z))
    expected = np.mean([mann_whitney_auc(y[:, k], probabilities[:, k]) for k in range(c)])
    sigmoid_ranked = np.mean([mann_whitney_auc(y[:, k], z[:, k]) for k in range(c)])
    assert abs(expected - sigmoid_ranked) > 1e-3  # ranking by softmax is a different metric
    metric = MaskedAUC(num_labels=c, softmax=True, num_thresholds=4000)
    metric.update_state(y, z)
    np.testing.assert_allclose(float(metric.result()), expected, atol=3e-3)
    clone = MaskedAUC.from_config(metric.get_config())
    assert clone.softmax and clone.num_thresholds == 4000 and clone.multi_label


# ---------------------------------------------------------------- distillation losses
@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("scale", [1.0, 50.0, 1e3])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_formulations_match_float64_reference(formulation, scale, temperature):
    y, zs, zt = random_batch(scale, seed=int(scale) + int(temperature))
    if formulation != "sigmoid":
        y = np.clip(y, -1, 1)
    alpha = 0.3
    loss = KDLoss(formulation, temperature, alpha)
    hard_ref, soft_ref = reference_terms(formulation, y, zs, zt, temperature)
    hard, soft, total = (np_(v) for v in loss.per_sample(y, zs, zt))
    tolerance = dict(rtol=2e-5, atol=2e-5 * max(scale, 1.0))
    np.testing.assert_allclose(hard, hard_ref, **tolerance)
    np.testing.assert_allclose(soft, soft_ref, **tolerance)
    np.testing.assert_allclose(total, (1 - alpha) * hard_ref + alpha * soft_ref, **tolerance)
    batch_mean = ((1 - alpha) * hard_ref + alpha * soft_ref).mean()
    np.testing.assert_allclose(float(loss(y, zs, zt)), batch_mean, **tolerance)
    np.testing.assert_allclose(
        float(distillation_loss(y, zs, zt, formulation=formulation, temperature=temperature,
                                alpha=alpha)), batch_mean, **tolerance)
    assert np.all(np.isfinite([hard, soft, total]))


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_alpha_zero_is_the_hard_loss_and_alpha_one_the_soft_term(formulation):
    y, zs, zt = random_batch(3.0, seed=11)
    hard_only = KDLoss(formulation, 3.0, 0.0)
    soft_only = KDLoss(formulation, 3.0, 1.0)
    hard_ref, soft_ref = reference_terms(formulation, y, zs, zt, 3.0)
    np.testing.assert_allclose(float(hard_only(y, zs, zt)), hard_ref.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(soft_only(y, zs, zt)), soft_ref.mean(), rtol=1e-5)
    # alpha = 1 ignores the labels entirely, alpha = 0 the teacher.
    np.testing.assert_allclose(float(soft_only(1 - np.abs(y), zs, zt)), soft_ref.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(hard_only(y, zs, -zt)), hard_ref.mean(), rtol=1e-5)


def test_temperature_factor_present_or_absent_per_formulation():
    y, zs, zt = random_batch(2.0, seed=12)
    for t in (1.0, 2.0, 5.0):
        hinton = np_(KDLoss("hinton", t, 1.0).soft(zs, zt))
        eq8 = np_(KDLoss("ho2020_eq8", t, 1.0).soft(zs, zt))
        eq5 = np_(KDLoss("ho2020_eq5", t, 1.0).soft(zs, zt))
        np.testing.assert_allclose(eq8, kl64(zs, zt, t), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(hinton, t * t * eq8, rtol=1e-5, atol=1e-7)
        # Eq. 5 = 2 T^2 (KL + H(p_t)): twice Hinton's term plus the teacher's entropy.
        p_teacher = np.exp(log_softmax64(zt / t))
        entropy = -(p_teacher * np.log(p_teacher)).sum(-1)
        np.testing.assert_allclose(eq5, 2 * hinton + 2 * t * t * entropy, rtol=1e-5)
    assert KDLoss("hinton", 3.0).soft_factor == 9.0
    assert KDLoss("ho2020_eq5", 3.0).soft_factor == 18.0
    assert KDLoss("ho2020_eq8", 3.0).soft_factor == 1.0
    assert KDLoss("sigmoid", 3.0).soft_factor == 9.0


def test_high_temperature_limit_of_hinton_is_logit_matching():
    """Hinton et al.: as T grows, T^2 KL -> sum_c (d_c - mean d)^2 / (2C), d = z_t - z_s."""
    rng = np.random.default_rng(13)
    zs = (rng.standard_normal((B, C)) * 0.5).astype(np.float32)
    zt = (rng.standard_normal((B, C)) * 0.5).astype(np.float32)
    d = zt.astype(np.float64) - zs
    matching = ((d - d.mean(-1, keepdims=True)) ** 2).sum(-1) / (2 * C)
    soft = np_(KDLoss("hinton", 50.0, 1.0).soft(zs, zt))
    np.testing.assert_allclose(soft, matching, rtol=0.05)


def test_limits_when_student_equals_teacher():
    # Saturated logits: every gap between two classes and every |z| is >= 1e3.
    rng = np.random.default_rng(14)
    z = np.stack([rng.permutation([-2e3, -1e3, 1e3, 2e3, 3e3]) for _ in range(B)]).astype(
        np.float32)
    y = np.zeros_like(z)
    for t in (1.0, 4.0):
        np.testing.assert_allclose(np_(KDLoss("hinton", t).soft(z, z)), 0.0, atol=1e-3)
        np.testing.assert_allclose(np_(KDLoss("ho2020_eq8", t).soft(z, z)), 0.0, atol=1e-3)
        # Saturated teachers (|z|/T >= 250) have zero entropy: Eq. 5 and sigmoid reach 0 too.
        np.testing.assert_allclose(np_(KDLoss("ho2020_eq5", t).soft(z, z)), 0.0, atol=1e-2)
        np.testing.assert_allclose(np_(KDLoss("sigmoid", t).soft(z, z)), 0.0, atol=1e-2)
    # With an unsaturated teacher the sigmoid soft term bottoms out at T^2 x binary entropy.
    small = np.linspace(-2, 2, C, dtype=np.float32)[None, :]
    p = 1 / (1 + np.exp(-small.astype(np.float64) / 2.0))
    entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p)).mean(-1)
    np.testing.assert_allclose(np_(KDLoss("sigmoid", 2.0).soft(small, small)), 4.0 * entropy,
                               rtol=1e-5)
    assert np.all(np.isfinite(np_(KDLoss("sigmoid", 1.0, 0.5).per_sample(y, z, -z)[2])))


@pytest.mark.parametrize("formulation", FORMULATIONS)
def test_soft_gradients_are_the_textbook_ones_and_finite(formulation):
    """d soft / d z_s = factor/T (p_s - p_t) for softmax KL/CE; (T/C)(s(z_s/T) - s(z_t/T)) for
    sigmoid. Checked at moderate and at extreme (+-1e3) logits."""
    t = 3.0
    for scale in (2.0, 1e3):
        _, zs, zt = random_batch(scale, seed=15)
        variable = tf.Variable(zs)
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(KDLoss(formulation, t, 1.0).soft(variable, zt))
        gradient = tape.gradient(total, variable).numpy().astype(np.float64)
        assert np.all(np.isfinite(gradient))
        if formulation == "sigmoid":
            sig = lambda v: np.exp(log_sigmoid64(np.asarray(v, np.float64) / t))  # noqa: E731
            expected = (t / C) * (sig(zs) - sig(zt))
        else:
            factor = KDLoss(formulation, t).soft_factor
            expected = factor / t * (np.exp(log_softmax64(zs / t)) - np.exp(log_softmax64(zt / t)))
        np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options, option_name", [
    (dict(formulation="softmax"), "formulation"),
    (dict(alpha=-0.1), "alpha"),
    (dict(alpha=1.5), "alpha"),
    (dict(alpha="0.5"), "alpha"),
    (dict(alpha=float("nan")), "alpha"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-2), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
])
def test_invalid_options_raise_config_error_naming_the_option(options, option_name):
    with pytest.raises(ConfigError, match=option_name):
        KDLoss(**options)
    with pytest.raises(ConfigError, match=option_name):
        distillation_loss(np.zeros((1, 2)), np.zeros((1, 2)), np.zeros((1, 2)),
                          **{"formulation": "hinton", "temperature": 2.0, "alpha": 0.5, **options})
