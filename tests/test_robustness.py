"""FGSM and PGD against independent references, and the robustness command."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from chestkd.errors import ConfigError
from chestkd.robustness import fgsm, pgd
from chestkd.robustness.attacks import attack_loss
from chestkd.robustness.tables import robustness_table


def tiny_model(classes=3, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, activation="tanh")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(classes)(h))


def batch(n=20, classes=3, seed=0, multi_label=True):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 6, 6, 3)).astype(np.float32)
    x[0, 0, 0] = 1.0     # on the boundary: clipping must bite
    if multi_label:
        y = (rng.uniform(size=(n, classes)) < 0.4).astype(np.float32)
        y[:4, 0] = -1.0
    else:
        y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
    return x, y


def reference_loss(model, x, y, multi_label):
    """Per-image loss in float64 NumPy from the model's logits (not the package's loss)."""
    z = np.asarray(model(x, training=False), np.float64)
    if multi_label:
        known = y >= 0
        t = np.where(known, y, 0)
        bce = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
        return (bce * known).sum(1) / np.maximum(known.sum(1), 1)
    log_p = z - z.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    return -(y * log_p).sum(1)


@pytest.mark.parametrize("multi_label", [True, False])
def test_fgsm_is_the_clipped_signed_gradient_step(multi_label):
    model = tiny_model()
    x, y = batch(multi_label=multi_label)
    epsilon = 8 / 255
    adversarial = fgsm(model, x, y, epsilon, multi_label=multi_label, batch_size=7)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        z = model(xt, training=False)
        if multi_label:
            known = tf.cast(y >= 0, tf.float32)
            bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=np.where(y >= 0, y, 0), logits=z)
            loss = tf.reduce_sum(tf.reduce_sum(bce * known, 1) / tf.reduce_sum(known, 1))
        else:
            loss = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=z))
    expected = np.clip(x + 2 * epsilon * np.sign(tape.gradient(loss, xt).numpy()), -1, 1)
    np.testing.assert_allclose(adversarial, expected, atol=1e-6)
    assert np.abs(adversarial - x).max() == pytest.approx(2 * epsilon, rel=1e-5)
    assert adversarial.max() <= 1.0 and adversarial.min() >= -1.0
    # the loss the attack ascends is the reference loss, and it went up
    np.testing.assert_allclose(np.asarray(attack_loss(y, model(x), multi_label)),
                               reference_loss(model, x, y, multi_label), rtol=1e-5, atol=1e-6)
    assert (reference_loss(model, adversarial, y, multi_label).mean()
            > reference_loss(model, x, y, multi_label).mean())


def test_unknown_labels_do_not_move_the_attack():
    model = tiny_model()
    x, y = batch(multi_label=True)
    y[5] = -1.0                                # nothing known about image 5
    adversarial = fgsm(model, x, y, 0.05)
    np.testing.assert_array_equal(adversarial[5], x[5])
    changed = y.copy()
    changed[:4, 0] = 1.0                       # an unknown label made known changes the step
    assert not np.array_equal(fgsm(model, x, changed, 0.05)[:4], adversarial[:4])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_the_ball_and_the_valid_range(norm):
    model = tiny_model()
    x, y = batch()
    epsilon = 0.03
    adversarial = pgd(model, x, y, epsilon, steps=5, norm=norm, seed=1, batch_size=8)
    delta = (adversarial - x).reshape(len(x), -1).astype(np.float64)
    size = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta ** 2).sum(1))
    assert size.max() <= 2 * epsilon * (1 + 1e-5)
    assert adversarial.max() <= 1.0 and adversarial.min() >= -1.0
    assert size.max() > 0.5 * 2 * epsilon       # it moved
    np.testing.assert_array_equal(adversarial, pgd(model, x, y, epsilon, steps=5, norm=norm,
                                                   seed=1, batch_size=8))


def test_pgd_loss_is_never_below_fgsm_on_the_same_inputs():
    model = tiny_model(seed=2)
    x, y = batch(seed=2)
    epsilon = 0.05
    one_step = fgsm(model, x, y, epsilon)
    many = pgd(model, x, y, epsilon, steps=6, step_size=epsilon, random_start=False)
    loss_fgsm = reference_loss(model, one_step, y, True)
    loss_pgd = reference_loss(model, many, y, True)
    assert np.all(loss_pgd >= loss_fgsm - 1e-6)
    assert loss_pgd.mean() > loss_fgsm.mean()
    started = pgd(model, x, y, epsilon, steps=6, random_start=True)
    assert reference_loss(model, started, y, True).mean() >= loss_fgsm.mean() - 1e-6


def test_bad_attack_options_are_config_errors():
    model = tiny_model()
    x, y = batch()
    with pytest.raises(ConfigError, match="norm"):
        pgd(model, x, y, 0.01, norm="l1")
    with pytest.raises(ConfigError, match="epsilon"):
        fgsm(model, x, y, -1.0)


def test_robustness_table_reports_scores_before_and_after_each_attack():
    model = tiny_model(classes=3)
    x, y = batch(n=30, multi_label=False)
    table = robustness_table(model, x, y, ["a", "b", "c"], multi_label=False, epsilon=0.1,
                             norm="linf", steps=3)
    assert list(table["attack"]) == ["fgsm", "pgd"]
    assert table["before_f1"].nunique() == 1
    assert np.all(table["mean_auc_drop"] > 0)    # the attack hurts ranking on this model
    for key in ("precision", "recall", "f1", "mean_auc"):
        np.testing.assert_allclose(table[f"{key}_drop"],
                                   table[f"before_{key}"] - table[f"after_{key}"])
