"""Coupled (PyTorch-style) vs decoupled (Keras-style) weight decay, against float64 NumPy
implementations of both frameworks' update rules."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from chestkd.errors import ConfigError
from chestkd.training.config import BASE_DEFAULTS
from chestkd.training.optimizers import CoupledAdam, CoupledSGD
from chestkd.training.trainer import make_optimizer

W0 = np.array([[0.5, -1.5, 2.0], [0.25, -0.75, 3.0]])
A = np.array([[1.0, 2.0, 0.5], [3.0, 0.1, 1.5]])
B = np.array([[0.3, -0.2, 0.1], [-0.4, 0.5, 0.0]])
LR, MOMENTUM, WD = 0.1, 0.9, 0.05  # a large decay so its effect is far above float32 noise


def gradient(w):
    """Gradient of the quadratic 0.5 * sum(A w^2) + sum(B w)."""
    return A * w + B


def float32_gradient(variable):
    return tf.constant((A * variable.numpy() + B).astype(np.float32))


def keras_steps(optimizer, steps):
    """Run ``steps`` updates of ``optimizer`` on the quadratic; the float32 weights after each."""
    variable = keras.Variable(W0.astype(np.float32))
    weights = []
    for _ in range(steps):
        optimizer.apply_gradients([(float32_gradient(variable), variable)])
        weights.append(variable.numpy().astype(np.float64))
    return weights


def torch_sgd(steps, lr=LR, momentum=MOMENTUM, wd=WD):
    """torch.optim.SGD(lr, momentum, weight_decay=wd), dampening 0, no Nesterov."""
    w, buf, weights = W0.copy(), None, []
    for _ in range(steps):
        g = gradient(w) + wd * w
        buf = g if buf is None else momentum * buf + g
        w = w - lr * buf
        weights.append(w)
    return weights


def keras_decoupled_sgd(steps, lr=LR, momentum=MOMENTUM, wd=WD):
    """keras.optimizers.SGD(lr, momentum, weight_decay=wd): the gradient is taken at w, the
    weights shrink by lr * wd * w, then the momentum step."""
    w, velocity, weights = W0.copy(), np.zeros_like(W0), []
    for _ in range(steps):
        g = gradient(w)
        w = w - lr * wd * w
        velocity = momentum * velocity - lr * g
        w = w + velocity
        weights.append(w)
    return weights


def torch_adam(steps, lr=0.01, betas=(0.9, 0.999), eps=1e-12, wd=WD):
    """torch.optim.Adam(lr, betas, eps, weight_decay=wd) (coupled L2, not AdamW)."""
    w, m, v, weights = W0.copy(), np.zeros_like(W0), np.zeros_like(W0), []
    for t in range(1, steps + 1):
        g = gradient(w) + wd * w
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        w = w - lr * m_hat / (np.sqrt(v_hat) + eps)
        weights.append(w)
    return weights


def config(**overrides):
    return {**BASE_DEFAULTS, "schedule": "constant", "learning_rate": LR, "momentum": MOMENTUM,
            "weight_decay": WD, **overrides}


@pytest.mark.parametrize("steps", [1, 5])
def test_coupled_sgd_is_pytorch_sgd_with_weight_decay(steps):
    optimizer = make_optimizer(config(weight_decay_mode="coupled", optimizer="sgd"), 10)
    assert isinstance(optimizer, CoupledSGD) and optimizer.weight_decay is None
    for ours, torch in zip(keras_steps(optimizer, steps), torch_sgd(steps)):
        np.testing.assert_allclose(ours, torch, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("steps", [1, 5])
def test_decoupled_sgd_is_keras_weight_decay_and_differs_from_coupled(steps):
    optimizer = make_optimizer(config(weight_decay_mode="decoupled", optimizer="sgd"), 10)
    assert type(optimizer) is keras.optimizers.SGD and optimizer.weight_decay == WD
    ours = keras_steps(optimizer, steps)
    for step, keras_rule in zip(ours, keras_decoupled_sgd(steps)):
        np.testing.assert_allclose(step, keras_rule, rtol=2e-6, atol=1e-7)
    coupled = torch_sgd(steps)[-1]
    if steps == 1:  # an empty momentum buffer: both rules take the same first step ...
        np.testing.assert_allclose(ours[-1], coupled, rtol=2e-6)
    else:  # ... then the coupled decay accumulates in the buffer, the decoupled does not
        assert np.abs(ours[-1] - coupled).max() > 1e-2


def test_coupled_decay_is_about_ten_times_the_decoupled_at_momentum_09():
    """With no loss gradient, the per-step shrink settles at lr*wd/(1-momentum) (coupled)
    against lr*wd (decoupled): the factor of 10 the papers' 5e-4 depends on."""
    lr, wd, steps = 0.1, 5e-4, 300

    def shrink_per_step(optimizer):
        variable = keras.Variable(np.ones((4,), np.float32))
        values = []
        for _ in range(steps):
            optimizer.apply_gradients([(tf.zeros((4,)), variable)])
            values.append(float(variable.numpy()[0]))
        return 1.0 - values[-1] / values[-2]

    coupled = shrink_per_step(CoupledSGD(lr, momentum=0.9, l2=wd))
    decoupled = shrink_per_step(keras.optimizers.SGD(lr, momentum=0.9, weight_decay=wd))
    np.testing.assert_allclose(decoupled, lr * wd, rtol=0.02)
    np.testing.assert_allclose(coupled / decoupled, 10.0, rtol=0.05)


@pytest.mark.parametrize("steps", [1, 5])
def test_coupled_adam_is_pytorch_adam_with_weight_decay(steps):
    optimizer = CoupledAdam(0.01, l2=WD, epsilon=1e-12)
    for ours, torch in zip(keras_steps(optimizer, steps), torch_adam(steps)):
        np.testing.assert_allclose(ours, torch, rtol=1e-5, atol=1e-7)
    built = make_optimizer(config(weight_decay_mode="coupled", optimizer="adam"), 10)
    assert isinstance(built, CoupledAdam) and built.l2 == WD and built.weight_decay is None
    assert type(make_optimizer(config(weight_decay_mode="decoupled", optimizer="adam"),
                               10)) is keras.optimizers.Adam


def test_coupled_sgd_under_loss_scaling_matches_float32():
    """Mixed precision wraps the optimizer in a LossScaleOptimizer: the L2 is added to the
    unscaled gradient, so the step is the same as without loss scaling."""
    plain = keras_steps(CoupledSGD(LR, momentum=MOMENTUM, l2=WD), 3)
    scaled = keras.optimizers.LossScaleOptimizer(CoupledSGD(LR, momentum=MOMENTUM, l2=WD))
    variable = keras.Variable(W0.astype(np.float32))
    for _ in range(3):
        # What the tape gives for a loss multiplied by the loss scale.
        scale = float(np.asarray(scaled.scale_loss(tf.constant(1.0))))
        scaled.apply_gradients([(float32_gradient(variable) * scale, variable)])
    np.testing.assert_allclose(variable.numpy(), plain[-1], rtol=1e-6)


def test_adamw_stays_decoupled_and_bad_options_name_themselves():
    adamw = make_optimizer(config(optimizer="adamw", weight_decay_mode="decoupled"), 10)
    assert type(adamw) is keras.optimizers.AdamW and adamw.weight_decay == WD
    with pytest.raises(ConfigError, match="adamw.*weight-decay-mode"):
        make_optimizer(config(optimizer="adamw", weight_decay_mode="coupled"), 10)
    with pytest.raises(ConfigError, match="weight-decay-mode"):
        make_optimizer(config(weight_decay_mode="pytorch"), 10)
    with pytest.raises(ConfigError, match="'l2'.*'weight_decay'"):
        CoupledSGD(0.1, l2=1e-4, weight_decay=1e-4)
    with pytest.raises(ConfigError, match="l2"):
        CoupledAdam(0.1, l2=-1.0)


def test_model_saved_with_its_coupled_optimizer_reloads(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(make_optimizer(config(schedule="step", epochs=4), steps_per_epoch=5), "mse")
    x = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    model.fit(x, x[:, :2], epochs=1, batch_size=4, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, CoupledSGD)
    assert loaded.optimizer.l2 == WD and loaded.optimizer.momentum == MOMENTUM
    assert loaded.optimizer.weight_decay is None
    assert int(loaded.optimizer.iterations.numpy()) == 2
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # It keeps training where it stopped, with the same rule.
    model.fit(x, x[:, :2], epochs=1, batch_size=4, verbose=0)
    loaded.fit(x, x[:, :2], epochs=1, batch_size=4, verbose=0)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)
