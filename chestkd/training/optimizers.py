"""SGD and Adam with COUPLED (PyTorch-style) L2 weight decay.

The papers' ``weight_decay=5e-4`` is PyTorch's, which adds the decay to the gradient before
the optimizer's update (dampening 0, no Nesterov)::

    g   <- g + wd * w
    buf <- momentum * buf + g
    w   <- w - lr * buf

Keras' ``weight_decay`` is DECOUPLED: each step it shrinks the weights directly,
``w <- w - lr * wd * w``, outside the momentum buffer. With momentum 0.9 the coupled decay
accumulates in the buffer to ``wd * w / (1 - 0.9)`` per step, so Keras' decoupled decay
of the same value is about 10x weaker. :class:`CoupledSGD` and :class:`CoupledAdam` add
``l2 * w`` to the gradient and then run Keras' own update unchanged.

Keras' SGD keeps the velocity with the learning rate folded in
(``v <- momentum * v - lr * g``, ``w <- w + v``): with a constant learning rate that is
exactly PyTorch's rule (``v = -lr * buf``); when the learning rate changes the two differ only
in whether the buffer remembers the old rate. Keras' Adam puts its epsilon outside the bias
correction (``eps`` where PyTorch has ``eps * sqrt(1 - beta_2^t)``), a difference that only
shows for gradients of the size of epsilon.
"""
from __future__ import annotations

import keras
from keras import ops

from chestkd.errors import ConfigError

_PACKAGE = "chestkd"


def _checked_l2(l2, weight_decay, optimizer: str) -> float:
    l2 = float(l2 or 0.0)
    if l2 < 0:
        raise ConfigError(f"{optimizer}: 'l2' (coupled weight decay) must be >= 0, got {l2}")
    if l2 and weight_decay:
        # Both would decay the weights twice, in two different ways.
        raise ConfigError(f"{optimizer}: give either 'l2' (coupled, PyTorch-style) or "
                          f"'weight_decay' (decoupled, Keras-style), not both")
    return l2


def _with_l2(gradient, variable, l2: float):
    """:math:`g + \\lambda w`, in the variable's dtype (float32 under mixed precision)."""
    gradient = ops.cast(gradient, variable.dtype)
    if not l2:
        return gradient
    return ops.add(gradient, ops.multiply(ops.cast(l2, variable.dtype), variable))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CoupledSGD(keras.optimizers.SGD):
    """``keras.optimizers.SGD`` with PyTorch's coupled L2 weight decay ``l2``.

    .. math:: g \\leftarrow g + \\lambda w,\\quad b \\leftarrow \\mu b + g,\\quad
              w \\leftarrow w - \\eta b

    (PyTorch ``SGD(lr=eta, momentum=mu, weight_decay=lambda)``, dampening 0). All other
    arguments are ``keras.optimizers.SGD``'s; Keras' own ``weight_decay`` must stay None.
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, l2=0.0, **kwargs):
        l2 = _checked_l2(l2, kwargs.get("weight_decay"), "CoupledSGD")
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(_with_l2(gradient, variable, self.l2), variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class CoupledAdam(keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with PyTorch's coupled L2 weight decay ``l2``
    (``torch.optim.Adam(weight_decay=lambda)``, not AdamW).

    .. math:: g \\leftarrow g + \\lambda w,\\quad m \\leftarrow \\beta_1 m + (1-\\beta_1) g,\\quad
              v \\leftarrow \\beta_2 v + (1-\\beta_2) g^2,\\quad
              w \\leftarrow w - \\eta \\frac{\\sqrt{1-\\beta_2^t}}{1-\\beta_1^t}
              \\frac{m}{\\sqrt{v} + \\epsilon}

    The decay passes through Adam's normalisation, so it is NOT a plain shrinkage of the
    weights; that is what AdamW (decoupled) changes.
    """

    def __init__(self, learning_rate=0.001, l2=0.0, **kwargs):
        l2 = _checked_l2(l2, kwargs.get("weight_decay"), "CoupledAdam")
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.l2 = l2

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(_with_l2(gradient, variable, self.l2), variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2}


def computes_in_float16(*models) -> bool:
    """Whether any layer of ``models`` (nested ones included) computes in float16.

    A model read from a ``.keras`` file keeps every layer's dtype policy as it was saved,
    whatever the run's ``mixed_precision`` (the global policy) says, while Keras' ``compile``
    decides loss scaling from the OUTER model's policy. So the layers decide here. Models
    (the outer one, a nested backbone) and input layers are skipped: they are given the
    global policy when read back, and compute nothing themselves (a functional model does
    not cast its inputs either).
    """
    return any(layer.dtype_policy.compute_dtype == "float16"
               for model in models for layer in model._flatten_layers(include_self=True)
               if not isinstance(layer, (keras.Model, keras.layers.InputLayer)))


def loss_scaled(optimizer, model, *also_trained):
    """``optimizer`` in a ``LossScaleOptimizer`` when a layer of ``model`` (or of
    ``also_trained``, e.g. feature adapters) computes in float16: small float16 gradients
    would flush to zero without it. Otherwise ``optimizer`` as given.

    When that precision is not the run's (a ``.keras`` model saved by a run with another
    ``mixed_precision``), one line says which precision ``model`` trains in.
    """
    optimizer = keras.optimizers.get(optimizer)
    float16 = computes_in_float16(model, *also_trained)
    run_float16 = keras.mixed_precision.global_policy().compute_dtype == "float16"
    if float16 != run_float16:
        print(f"{model.name} computes in {'float16' if float16 else 'float32'} as it was "
              f"saved, though mixed_precision is {'on' if run_float16 else 'off'}: trained "
              f"{'with' if float16 else 'without'} loss scaling")
    if float16 and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
