"""An ensemble student: parallel zoo branches on one input, their logits summed (or averaged).

>>> model = ensemble_student(["mobilenet_v1", "vgg19", "resnet32", "resnet50"], 14,
...                          (224, 224, 3), combine="sum")
>>> model.branches[0]          # the mobilenet_v1 branch, sharing the input and weights
>>> model(images)              # == sum of the branches' logits

The ensemble-KD paper's student: the branches learn different features from the same image
(the teacher also guides each branch's pooled features) and the sum of their logits is the
prediction. The model follows the zoo contract (:mod:`chestkd.models.zoo`) except the head:

* ONE flat functional model (no nested ``keras.Model``): every branch is built by
  :func:`chestkd.models.build`, its layers renamed ``branch<i>_<layer name>`` (two branches
  may be the same architecture, and all layer names must be unique), and its graph re-traced
  on the shared ``"image"`` input (then cloned with its weights, so each layer is called
  once). Every layer is therefore
  addressable by name for feature distillation and saliency (e.g. ``branch0_features_pool``,
  the pooled features of branch 0; ``branch0_logits``, its logits). Branches differ in their
  heads (``baseline_cnn`` has Flatten + Dense, no ``features_pool``), so a branch's feature
  vector is found from its logits, never assumed: :func:`features_layer` and
  :func:`branch_feature_layers`.
* output: a float32 ``Add`` (``combine="sum"``) or ``Average`` (``"mean"``) layer named
  ``"logits"`` over the branches' logits. Summing logits multiplies the ensemble's confidence
  by the number of branches; ``mean`` keeps the scale of one branch.
* ``model.branches``: one ``keras.Model`` per branch, from the shared input to that branch's
  logits, sharing the ensemble's layers (training the ensemble trains them). After
  ``keras.models.load_model`` call :func:`ensemble_branches` to get them again.
"""
from __future__ import annotations

from typing import List, Sequence

import keras

from chestkd.errors import ConfigError
from chestkd.models.feature_layers import LOGITS
from chestkd.models.zoo import build

COMBINE = ("sum", "mean")
BRANCH_PREFIX = "branch"


def branch_layer_name(index: int, layer_name: str) -> str:
    """The ensemble's name of ``layer_name`` of branch ``index``."""
    return f"{BRANCH_PREFIX}{index}_{layer_name}"


def features_layer(model: keras.Model, logits_layer: str = LOGITS, *,
                   model_label: str | None = None) -> str:
    """Name of the layer whose (B, D) output the Dense ``logits_layer`` reads: the feature
    vector the classifier sees (``features_pool`` for every pooled zoo model, ``fc1_relu`` for
    ``baseline_cnn``). Dropout layers between it and the logits are skipped (they are the
    identity at inference and would make a feature target random while training).

    ``model_label`` names the model in errors (e.g. "branch 1 (baseline_cnn)"); default its
    ``name``. ConfigError when the layer is missing or its input is not one (B, D) tensor.
    """
    label = model_label or f"Model '{model.name}'"
    names = {layer.name for layer in model.layers}
    if logits_layer not in names:
        raise ConfigError(f"{label} has no layer named '{logits_layer}' (its logits), so its "
                          "feature vector cannot be found")
    node_input = model.get_layer(logits_layer).input
    if isinstance(node_input, (list, tuple)) or len(node_input.shape) != 2:
        raise ConfigError(f"{label}: layer '{logits_layer}' does not read one (batch, features)"
                          f" tensor; its input is {node_input!r}")
    source = node_input._keras_history.operation
    while isinstance(source, keras.layers.Dropout):
        source = source.input._keras_history.operation
    if isinstance(source, keras.layers.InputLayer) or len(source.output.shape) != 2:
        raise ConfigError(f"{label}: no (batch, features) layer feeds '{logits_layer}'")
    return source.name


def branch_feature_layers(model: keras.Model, branch_names=None) -> List[str]:
    """The ensemble's name of each branch's feature vector (:func:`features_layer` of
    ``branch<i>_logits``), e.g. ``["branch0_features_pool", "branch1_fc1_relu"]``."""
    count = len(ensemble_branches(model))
    branch_names = list(branch_names or getattr(model, "branch_names", None) or [None] * count)
    return [features_layer(model, branch_layer_name(index, LOGITS),
                           model_label=f"ensemble '{model.name}', branch {index}"
                           + (f" ({branch_names[index]})" if branch_names[index] else ""))
            for index in range(count)]


def ensemble_student(branch_names: Sequence[str], num_classes: int, input_shape,
                     combine: str = "sum", weights=None, name: str = "ensemble_student"):
    """Build the ensemble student (module docstring).

    Args:
        branch_names: zoo names of the branches (at least one; repeats allowed).
        num_classes: width of the logits.
        input_shape: (H, W, C) of the [-1, 1] images.
        combine: ``"sum"`` or ``"mean"`` of the branch logits.
        weights: what :func:`chestkd.models.build` accepts (None, "imagenet", a file), for
            every branch, or a list with one entry per branch.

    Returns:
        a ``keras.Model`` with a ``branches`` attribute (list of branch models).
    """
    if isinstance(branch_names, str) or not list(branch_names):
        raise ConfigError(f"ensemble_student: 'branches' must be a non-empty list of model "
                          f"names, got {branch_names!r}")
    branch_names = list(branch_names)
    if combine not in COMBINE:
        raise ConfigError(f"ensemble_student: unknown option 'combine'={combine!r}; choose one "
                          f"of {list(COMBINE)}")
    per_branch = list(weights) if isinstance(weights, (list, tuple)) else \
        [weights] * len(branch_names)
    if len(per_branch) != len(branch_names):
        raise ConfigError(f"ensemble_student: {len(per_branch)} 'weights' entries for "
                          f"{len(branch_names)} branches")
    image = keras.Input(shape=tuple(input_shape), name="image")
    branch_logits = []
    for index, (branch_name, branch_weights) in enumerate(zip(branch_names, per_branch)):
        branch = build(branch_name, num_classes, input_shape, weights=branch_weights)
        for layer in branch.layers:
            if not isinstance(layer, keras.layers.InputLayer):
                layer.name = branch_layer_name(index, layer.name)
        # Re-trace the branch's graph on the shared input with the SAME layer objects, so the
        # ensemble stays flat and shares the branch's weights.
        retraced = keras.models.clone_model(branch, input_tensors=image,
                                            clone_function=lambda layer: layer)
        branch_logits.append(retraced.output)
    if len(branch_logits) == 1:
        combined = keras.layers.Identity(name="logits", dtype="float32")(branch_logits[0])
    elif combine == "sum":
        combined = keras.layers.Add(name="logits", dtype="float32")(branch_logits)
    else:
        combined = keras.layers.Average(name="logits", dtype="float32")(branch_logits)
    traced = keras.Model(image, combined, name=name)
    # The layers were called twice (the branch's own graph, then the shared input), and
    # ``layer.output`` names the FIRST call. A clone with the same weights has every layer
    # called once, so layer outputs (feature_model, ensemble_branches) are the ensemble's.
    model = keras.models.clone_model(traced)
    model.set_weights(traced.get_weights())
    attach_branches(model, branch_names)
    return model


def ensemble_branches(model: keras.Model) -> List[keras.Model]:
    """The branch models of an ensemble (e.g. one loaded from a ``.keras`` file)."""
    names = {layer.name for layer in model.layers}
    branches = []
    while branch_layer_name(len(branches), "logits") in names:
        index = len(branches)
        output = model.get_layer(branch_layer_name(index, "logits")).output
        branches.append(keras.Model(model.input, output, name=f"{BRANCH_PREFIX}{index}"))
    if not branches:
        raise ConfigError(f"Model '{model.name}' is not an ensemble student (no "
                          f"'{branch_layer_name(0, 'logits')}' layer)")
    return branches


def attach_branches(model: keras.Model, branch_names=None) -> keras.Model:
    """Set ``model.branches`` (and ``model.branch_names`` when given) and return ``model``.

    Set without Keras' attribute tracking: the branches are views of layers the model already
    owns, and must not become nested sub-models of it (saving, ``model.layers``).
    """
    branches = ensemble_branches(model)
    if branch_names is not None:
        for branch, branch_name in zip(branches, branch_names):
            object.__setattr__(branch, "zoo_name", branch_name)
    object.__setattr__(model, "branches", branches)
    object.__setattr__(model, "branch_names", list(branch_names) if branch_names else None)
    return model
