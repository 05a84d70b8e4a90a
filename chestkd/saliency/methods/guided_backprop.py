"""Guided backpropagation (Springenberg et al. 2015) that reaches every ReLU.

The guided rule replaces the backward pass of each rectifier ``y = relu(x)`` (or
``relu6(x) = min(max(x, 0), 6)``) by

    dL/dx = dL/dy * [dL/dy > 0] * [x > 0]            (ReLU)
    dL/dx = dL/dy * [dL/dy > 0] * [0 < x < 6]        (ReLU6)

so only positive evidence flowing through active units reaches the image.

tf-keras-vis's ``GuidedBackpropagation`` modifier only swaps ``layer.activation``; models built
from standalone ``ReLU``/``ReLU(6)``/``Activation("relu")`` layers (MobileNetV2, DenseNet-121)
silently keep the vanilla gradient. Here the model's flat graph is rebuilt with every
rectifier replaced: standalone rectifier layers by :class:`GuidedReLU`, and layers with a
fused ``activation="relu"`` by the same layer called without its activation
(:class:`~chestkd.saliency.methods.graph.PreActivation`, which reads the layer's own variables, so
re-initialising the model reaches the guided graph) followed by a :class:`GuidedReLU`.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from chestkd.saliency.methods.graph import FlatGraph, activation_name, linear_twin, logits_graph
from chestkd.saliency.methods.vanilla import Vanilla

RECTIFIER_MAX = {"relu": None, "relu6": 6.0}


def guided_relu(x, max_value=None):
    """ReLU (or ReLU capped at ``max_value``) whose gradient follows the guided rule."""

    @tf.custom_gradient
    def forward(inputs):
        active = inputs > 0
        if max_value is None:
            outputs = tf.nn.relu(inputs)
        else:
            outputs = tf.clip_by_value(inputs, 0.0, max_value)
            active = tf.logical_and(active, inputs < max_value)

        def backward(upstream):
            gate = tf.logical_and(upstream > 0, active)
            return tf.where(gate, upstream, tf.zeros_like(upstream))

        return outputs, backward

    return forward(x)


class GuidedReLU(keras.layers.Layer):
    """A ReLU / ReLU6 layer whose backward pass is the guided-backpropagation rule."""

    def __init__(self, max_value=None, **kwargs):
        super().__init__(**kwargs)
        self.max_value = max_value

    def call(self, inputs):
        return guided_relu(inputs, self.max_value)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return dict(super().get_config(), max_value=self.max_value)


def guided_substitute(layer, args, kwargs):
    """flatten_model hook: the guided replacement of a rectifying layer call, else None."""
    kind = activation_name(layer)
    if kind not in RECTIFIER_MAX:
        return None
    guided = GuidedReLU(RECTIFIER_MAX[kind], name=f"{layer.name}_guided")
    if isinstance(layer, (keras.layers.ReLU, keras.layers.Activation)):
        return guided(args[0])
    if "activation" not in layer.get_config():
        return None
    return guided(linear_twin(layer, args[0]))


def guided_graph(model) -> FlatGraph:
    """The logits graph of ``model`` with every ReLU/ReLU6 made guided."""
    return logits_graph(model, substitute=guided_substitute)


def count_guided(model: keras.Model) -> int:
    """Number of guided rectifiers in a (flat) model: a check that none were missed."""
    return sum(isinstance(layer, GuidedReLU) for layer in model.layers)


class GuidedBackprop(Vanilla):
    """Input gradient of the class logit through guided rectifiers."""

    name = "guided_backprop"

    def _build_graph(self, model) -> FlatGraph:
        return guided_graph(model)
