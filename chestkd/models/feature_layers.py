"""Access to the intermediate feature maps of a zoo model (CAM, feature distillation).

Every model built by :func:`chestkd.models.build` is ONE FLAT functional model (no nested
``keras.Model`` layers), so any layer output can be exposed without rebuilding anything:

* :func:`default_feature_layer` names the layer whose output is the last 4-D feature map
  A (B, h, w, K). For pooled models it is the input of ``"features_pool"``, and the logits are

      z_c = sum_k W[k, c] * (1 / hw) * sum_{i,j} A[b, i, j, k] + bias_c,

  with W, bias the kernel and bias of the ``"logits"`` layer; the class activation map of
  class c is CAM_c[i, j] = sum_k W[k, c] A[i, j, k] (Zhou et al. 2016). For ``baseline_cnn``
  (Flatten + dense head) it is the last pooling layer, the input of ``"flatten"``; CAM does
  not apply there but gradient methods (Grad-CAM) and feature distillation do.
* :func:`feature_model` returns a model sharing the original's weights whose outputs are the
  named layer outputs followed by the logits. Feature-distillation losses (FitNets-style hints,
  attention transfer) use it to read teacher and student features in the same forward pass.

Layer names are deterministic (see ``chestkd.models.zoo``), so they can be written in configs.
"""

from __future__ import annotations

from typing import Iterable, List, Union

import keras

from chestkd.errors import ConfigError

FEATURES_POOL = "features_pool"
LOGITS = "logits"


def feature_layer_names(model: keras.Model) -> List[str]:
    """Names of the layers with a 4-D (B, h, w, K) output, in graph order."""
    return [
        layer.name
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer) and len(layer.output.shape) == 4
    ]


def default_feature_layer(model: keras.Model) -> str:
    """Name of the layer that outputs the last 4-D feature map (the input of "features_pool")."""
    names = {layer.name for layer in model.layers}
    if FEATURES_POOL in names:
        pool_input = model.get_layer(FEATURES_POOL).input
        return pool_input._keras_history.operation.name
    candidates = feature_layer_names(model)
    if not candidates:
        raise ConfigError(f"Model '{model.name}' has no layer with a 4-D (B, h, w, K) feature map.")
    return candidates[-1]


def feature_model(model: keras.Model, layer_names: Union[str, Iterable[str]]) -> keras.Model:
    """Model with the same input and weights as ``model`` returning
    ``[output of layer_names[0], ..., output of layer_names[-1], logits]``.
    """
    names = [layer_names] if isinstance(layer_names, str) else list(layer_names)
    known = {layer.name: layer for layer in model.layers}
    unknown = [name for name in names if name not in known]
    if unknown:
        valid = feature_layer_names(model)
        shown = ", ".join(valid[-12:])
        raise ConfigError(
            f"Model '{model.name}' has no layer named {', '.join(map(repr, unknown))}. "
            f"Valid feature layers include (last {min(12, len(valid))} of {len(valid)}): {shown}; "
            f"default: '{default_feature_layer(model)}'."
        )
    outputs = [known[name].output for name in names] + list(model.outputs)
    # Keep the input structure of ``model`` (a bare tensor for our one-input models) so the
    # feature model is called exactly like the model itself.
    inputs = model.input if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs=inputs, outputs=outputs, name=f"{model.name}_features")
