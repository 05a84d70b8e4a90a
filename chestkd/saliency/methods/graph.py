"""Model surgery shared by the saliency methods.

Every method needs the same view of a classifier: one flat functional graph from the image
to the class *logits*, in which any layer's output can be tapped. :func:`flatten_model`
builds it by re-calling every layer of the model (nested backbones included) on new symbolic
inputs, which

* inlines nested ``Functional``/``Sequential`` models, so a layer deep inside a backbone
  (DenseNet-121's final ``relu``) is an ordinary tensor of the flat graph — tf-keras-vis's
  Grad-CAM cannot reach it under Keras 3, where a nested layer's ``.output`` belongs to the
  nested model's own graph;
* shares the original layers and weights (nothing is copied, so it is cheap);
* records every layer call (layer, nesting path, input and output tensors), which is how
  the CAM head and Grad-CAM's default layer are found;
* lets a caller substitute a layer call, e.g. guided ReLUs for guided backpropagation.

:func:`logits_graph` additionally strips a final sigmoid/softmax so scores are logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import keras

from chestkd.errors import ConfigError

# Output activations that turn logits into probabilities; saliency must use the logit.
PROBABILITY_ACTIVATIONS = ("sigmoid", "softmax")
# Layers that are the identity at inference and may sit between pooling and classifier.
INFERENCE_IDENTITY_LAYERS = (keras.layers.Dropout, keras.layers.SpatialDropout2D,
                             keras.layers.GaussianNoise, keras.layers.GaussianDropout)


@dataclass
class LayerCall:
    """One call of a layer in the flat graph."""

    layer: keras.layers.Layer
    path: str                 # nesting path, e.g. "densenet121/relu"
    inputs: list              # the symbolic input tensors (flattened)
    output: object            # the symbolic output tensor (or structure)


@dataclass
class FlatGraph:
    """A flat functional view of a model: ``inputs`` -> ``output`` and every layer call."""

    inputs: list
    output: object
    calls: list[LayerCall] = field(default_factory=list)

    def producer(self, tensor) -> LayerCall | None:
        """The layer call whose output is ``tensor``."""
        for call in reversed(self.calls):
            if call.output is tensor:
                return call
        return None

    def find(self, name: str) -> LayerCall:
        """The call of the layer named ``name`` or with nesting path ``name`` (last call wins)."""
        for call in reversed(self.calls):
            if call.path == name:
                return call
        matches = [call for call in self.calls if call.layer.name == name]
        if not matches:
            candidates = [c.path for c in self.calls if _rank(c.output) == 4][-8:]
            raise ConfigError(
                f"layer {name!r} not found in the model; the last 4-D feature layers are "
                f"{candidates}")
        return matches[-1]

    def model(self, outputs) -> keras.Model:
        """A keras.Model from the flat inputs (a list of one) to ``outputs``; call it on ``[x]``."""
        return keras.Model(self.inputs, outputs)


def _rank(tensor) -> int:
    shape = getattr(tensor, "shape", None)
    return len(shape) if shape is not None else -1


def activation_name(layer) -> str | None:
    """Name of a layer's activation function (``"relu"``, ``"sigmoid"`` ...), or None."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    if isinstance(layer, keras.layers.ReLU):
        if layer.negative_slope == 0 and layer.threshold == 0:
            if layer.max_value is None:
                return "relu"
            return "relu6" if layer.max_value == 6 else None
        return None
    function = getattr(layer, "activation", None)
    if function is None or not callable(function):
        return None
    return getattr(function, "__name__", None)


def flatten_model(model: keras.Model,
                  substitute: Callable | None = None) -> FlatGraph:
    """Inline ``model`` (nested models included) into one flat graph that shares its layers.

    Args:
        model: a Functional or Sequential keras.Model with one input and one output.
        substitute: optional ``fn(layer, args, kwargs) -> output | None``; when it returns a
            tensor, that replaces the layer's call in the flat graph (used for guided ReLUs).
    """
    if not isinstance(model, keras.Model):
        raise ConfigError(f"saliency needs a keras.Model, got {type(model).__name__}")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConfigError(
            f"saliency needs a model with one image input and one logits output; "
            f"{model.name!r} has {len(model.inputs)} input(s) and {len(model.outputs)} output(s)")
    calls: list[LayerCall] = []

    def call_layer(prefix, layer, *args, **kwargs):
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Sequential):
            tensor = args[0]
            for inner in layer.layers:
                tensor = call_layer(path + "/", inner, tensor)
            return tensor
        if isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth"):
            # clone_model with identity layers re-runs the nested graph on our tensors:
            # its layers are called in the flat graph instead of the nested model as one op.
            inner = keras.models.clone_model(
                layer, input_tensors=args[0], clone_function=lambda same: same,
                call_function=lambda l, *a, **k: call_layer(path + "/", l, *a, **k))
            return inner.outputs[0] if len(inner.outputs) == 1 else inner.outputs
        if isinstance(layer, keras.Model):
            raise ConfigError(
                f"cannot look inside the subclassed model {layer.name!r}; build it with the "
                "functional API so its layers can be reached")
        output = substitute(layer, args, kwargs) if substitute is not None else None
        if output is None:
            output = layer(*args, **kwargs)
        calls.append(LayerCall(layer, path, list(keras.tree.flatten(args)), output))
        return output

    if isinstance(model, keras.Sequential):
        inputs = [keras.Input(batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype)]
        output = call_layer("", model, inputs[0])
        calls = [LayerCall(c.layer, c.path.split("/", 1)[1], c.inputs, c.output) for c in calls]
    else:
        clone = keras.models.clone_model(
            model, clone_function=lambda same: same,
            call_function=lambda layer, *a, **k: call_layer("", layer, *a, **k))
        inputs, output = list(clone.inputs), clone.outputs[0]
    return FlatGraph(inputs=inputs, output=output, calls=calls)


class PreActivation(keras.layers.Layer):
    """``layer`` called with its fused ``activation=`` switched off, on ``layer``'s own variables.

    A copy of the layer would do the same arithmetic today and go stale tomorrow: the sanity
    check's cascade re-initialises the model's layers after a method was built, and a copy
    would keep differentiating the trained weights (issue 15). This wrapper holds no weights
    of its own; each call (symbolic, traced or eager) runs the wrapped layer with its
    activation set to the identity for the duration of that call.
    """

    def __init__(self, layer, **kwargs):
        kwargs.setdefault("name", f"{layer.name}_preactivation")
        super().__init__(dtype=layer.dtype_policy, **kwargs)
        self.wrapped = layer

    def call(self, inputs):
        activation = self.wrapped.activation
        self.wrapped.activation = keras.activations.linear
        try:
            return self.wrapped(inputs)
        finally:
            self.wrapped.activation = activation

    def compute_output_shape(self, input_shape):
        return self.wrapped.compute_output_shape(input_shape)


def linear_twin(layer, tensor):
    """``layer`` without its activation, called on ``tensor``; shares the layer's variables."""
    return PreActivation(layer)(tensor)


def logits_graph(model: keras.Model, substitute: Callable | None = None) -> FlatGraph:
    """:func:`flatten_model` whose output is the class logits.

    A model whose last layer applies a sigmoid or softmax (``Dense(..., activation="sigmoid")``,
    ``Activation("softmax")`` or ``Softmax``) is cut before that activation: the saliency
    score must be the pre-activation logit, never a saturating probability. chestkd models
    already output logits, so for them this is the plain flat graph.
    """
    graph = flatten_model(model, substitute)
    last = graph.producer(graph.output)
    if last is None or activation_name(last.layer) not in PROBABILITY_ACTIVATIONS:
        return graph
    if isinstance(last.layer, (keras.layers.Activation, keras.layers.Softmax)):
        graph.output = last.inputs[0]
    else:
        graph.output = linear_twin(last.layer, last.inputs[0])
    graph.calls = graph.calls[:-1] + [LayerCall(last.layer, last.path, last.inputs, graph.output)]
    return graph


def ends_in_probability(model: keras.Model) -> str | None:
    """``"sigmoid"``/``"softmax"`` when the model's output is a probability, else None."""
    graph = flatten_model(model)
    last = graph.producer(graph.output)
    name = activation_name(last.layer) if last is not None else None
    return name if name in PROBABILITY_ACTIVATIONS else None


@dataclass
class ClassifierHead:
    """The pooled classifier head: feature map -> global average pooling -> Dense."""

    features: object          # symbolic (N, h, w, F) feature map the classifier pools
    features_path: str        # nesting path of the layer producing it
    kernel: object            # (F, C) classifier weights
    bias: object | None       # (C,) or None


def find_classifier_head(graph: FlatGraph) -> ClassifierHead:
    """Locate ``GlobalAveragePooling2D -> [Dropout] -> Dense`` ending the graph.

    chestkd models name these ``features_pool`` and ``logits``; any model ending that way is
    accepted (keras.applications' ``avg_pool`` -> ``predictions``). The Dense layer must be
    the last layer (up to an output activation), otherwise CAM is not defined.
    """
    calls = graph.calls
    last = len(calls) - 1
    while last >= 0 and isinstance(calls[last].layer, (keras.layers.Activation,
                                                       keras.layers.Softmax)):
        last -= 1
    if last < 0 or not isinstance(calls[last].layer, keras.layers.Dense):
        name = calls[last].path if last >= 0 else "nothing"
        raise ConfigError(
            f"CAM needs a model ending in GlobalAveragePooling2D -> Dense (chestkd: "
            f"'features_pool' -> 'logits'); this model ends with {name!r}")
    dense = calls[last]
    call = graph.producer(dense.inputs[0])
    while call is not None and isinstance(call.layer, INFERENCE_IDENTITY_LAYERS):
        call = graph.producer(call.inputs[0])
    if call is None or not isinstance(call.layer, keras.layers.GlobalAveragePooling2D):
        found = call.path if call is not None else "the model input"
        raise ConfigError(
            f"CAM needs the classifier {dense.path!r} to read a GlobalAveragePooling2D of the "
            f"last feature map, but it reads {found!r}")
    producer = graph.producer(call.inputs[0])
    return ClassifierHead(
        features=call.inputs[0],
        features_path=producer.path if producer is not None else "input",
        kernel=dense.layer.kernel, bias=dense.layer.bias if dense.layer.use_bias else None)


def default_feature_layer(graph: FlatGraph) -> str:
    """Path of the last feature map the classifier pools (Grad-CAM's default layer).

    That is the input of the final global pooling layer — for DenseNet-121 the final
    ``relu`` after the last batch norm, not the last Conv layer — or, for a model without
    global pooling, the last layer with a 4-D output.
    """
    pools = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)
    for call in reversed(graph.calls):
        if isinstance(call.layer, pools):
            producer = graph.producer(call.inputs[0])
            if producer is not None:
                return producer.path
    for call in reversed(graph.calls):
        if _rank(call.output) == 4:
            return call.path
    raise ConfigError("Grad-CAM needs a 4-D feature map, and this model has none")


def feature_map(graph: FlatGraph, layer: str | None = None,
                method: str = "Grad-CAM") -> tuple[str, object]:
    """``(path, symbolic output)`` of the CAM layer ``layer`` (None: :func:`default_feature_layer`).

    The layer is found by name or nesting path in the flat graph, and must output a 4-D
    ``(N, h, w, F)`` feature map; ``method`` names the caller in the error.
    """
    path = layer or default_feature_layer(graph)
    features = graph.find(path).output
    if _rank(features) != 4:
        raise ConfigError(f"{method} layer {path!r} has output shape "
                          f"{getattr(features, 'shape', None)}; it needs a 4-D feature map")
    return path, features
