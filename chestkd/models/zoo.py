"""Model registry: ``build(name, num_classes, input_shape, weights)`` -> flat logits model.

Contract of every model
-----------------------
* Input: one tensor named ``"image"``, shape ``input_shape`` (H, W, C), channels last, values
  in [-1, 1] (what ``chestkd.data.pipeline`` and ``chestkd.data.images.read_image`` produce).
  Backbones pretrained on another range get a weightless ``Rescaling`` layer named
  ``"input_adapter"`` right after the input (present whatever ``weights`` is, so the
  architecture does not depend on it):

  ===========================  ==============================  =============================
  model                        what the ImageNet weights saw    input_adapter
  ===========================  ==============================  =============================
  mobilenet_v1/v2, inception   [-1, 1] ("tf" mode)              none
  vgg19, resnet50, resnet152   BGR [0, 255] minus channel mean  127.5 x + 127.5 - mean_bgr[c]
  densenet121                  ([0, 1] - mean_rgb) / std_rgb    (x + 1) / 2 then normalise
  efficientnet_b6/b7           [0, 255] (model rescales)        127.5 x + 127.5
  ===========================  ==============================  =============================

  Keras 3.15's EfficientNet (V1) has no ``include_preprocessing`` switch, its own
  Rescaling/Normalization layers stay and the adapter feeds them [0, 255]. The "caffe" models
  were trained on BGR images: the adapter subtracts mean_bgr[c] from channel c but does not
  reorder channels (no weightless Keras layer can), which is exact for chest X-rays (grey
  values repeated on 3 channels) and only permutes colour channels for colour images. With a
  number of channels other than 3, the channel statistics are averaged into one scalar.
* Output: float32 LOGITS (B, num_classes), no activation; losses apply sigmoid or softmax. The
  ``"logits"`` Dense layer is float32 even under a mixed-precision policy.
* Head: every model except ``baseline_cnn`` ends with
  ``GlobalAveragePooling2D(name="features_pool") -> Dense(num_classes, name="logits")``, so the
  last 4-D feature map is the input of ``"features_pool"`` and the CAM weights are the
  ``"logits"`` kernel (see :mod:`chestkd.models.feature_layers`). ``baseline_cnn`` has a
  Flatten + dense head: CAM does not apply to it.
* Flat: ``keras.applications`` backbones are built with ``input_tensor=`` so all their layers
  sit directly in the returned model (no nested ``keras.Model``), as CAM and guided
  backpropagation need. The model is named after its registry name.
* Deterministic layer names: layers that Keras names automatically (``conv2d_94``: the
  number depends on what was built before in the session, e.g. most of InceptionV3, the
  EfficientNet input normalisation) are renamed ``conv2d``, ``conv2d_1``, ... in creation
  order, i.e. the names a fresh Keras session gives. Feature-layer names written in configs
  and the by-name weight copy of ``.keras`` files therefore work across sessions.

Fine-tuning: :func:`freeze_backbone` (a fixed feature extractor, only ``"logits"`` trains)
and :func:`unfreeze_backbone` (everything trains except BatchNormalization, kept in inference
mode), for the two-stage transfer of :mod:`chestkd.recipes.transfer_learning`.

Input sizes: :data:`RECOMMENDED_INPUT_SIZES` (299 for inception_v3, 224 for the others) and
:data:`MIN_INPUT_SIZES` (75 for inception_v3, 32 for the others: five stride-2 stages).
``resnet20``, ``resnet32``, ``conv3_student`` and ``baseline_cnn`` are CIFAR-sized networks that
downsample early on inputs of 112 pixels or more (see :mod:`chestkd.models.resnet` and
:mod:`chestkd.models.small`) so that 224x224 training stays affordable.
"""

from __future__ import annotations

from dataclasses import dataclass
import re
from typing import Callable, Dict, List, Sequence, Tuple

import keras
from keras import layers
import numpy as np

from chestkd.errors import ConfigError
from chestkd.models import resnet, small
from chestkd.models.weights import (
    IMAGENET,
    WeightsOption,
    imagenet_unavailable,
    load_weights_file,
    resolve_weights,
)

# ImageNet statistics used by keras.applications.imagenet_utils.preprocess_input.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registry entry.

    ``build_logits(image, num_classes, keras_weights)`` returns the logits tensor;
    ``keras_weights`` is "imagenet" or None (only ever "imagenet" when ``has_imagenet``).
    """

    name: str
    build_logits: Callable
    has_imagenet: bool
    min_input_size: int = 32
    recommended_input_size: int = 224


def pooled_head(feature_map, num_classes: int):
    """GAP ("features_pool") -> float32 Dense ("logits"): z = W^T mean_ij(A_ij) + b."""
    pooled = layers.GlobalAveragePooling2D(name="features_pool")(feature_map)
    return layers.Dense(num_classes, dtype="float32", name="logits")(pooled)


# ----------------------------------------------------------------------------- input adapters


def _per_channel(values: Sequence[float], channels: int):
    """Per-channel constants for 3 channels, their mean as a scalar otherwise."""
    return [float(v) for v in values] if channels == 3 else float(np.mean(values))


def _adapter_to_0_255(image):
    return layers.Rescaling(127.5, offset=127.5, name="input_adapter")(image)


def _adapter_caffe(image):
    # 127.5 x + 127.5 is the [0, 255] pixel; the caffe models then subtract the BGR mean.
    channels = image.shape[-1]
    offset = _per_channel([127.5 - m for m in CAFFE_MEAN_BGR], channels)
    return layers.Rescaling(127.5, offset=offset, name="input_adapter")(image)


def _adapter_torch(image):
    # ((x + 1) / 2 - mean) / std = x * 0.5 / std + (0.5 - mean) / std
    channels = image.shape[-1]
    scale = _per_channel([0.5 / s for s in TORCH_STD_RGB], channels)
    offset = _per_channel([(0.5 - m) / s for m, s in zip(TORCH_MEAN_RGB, TORCH_STD_RGB)], channels)
    return layers.Rescaling(scale, offset=offset, name="input_adapter")(image)


def _no_adapter(image):
    return image


# ----------------------------------------------------------------------------- keras.applications


def _application(constructor_name: str, adapter: Callable, **kwargs) -> Callable:
    """Builder for a keras.applications backbone, flat, with our pooled head."""

    def build_logits(image, num_classes, keras_weights):
        constructor = getattr(keras.applications, constructor_name)
        adapted = adapter(image)
        backbone = constructor(
            include_top=False,
            weights=keras_weights,
            input_tensor=adapted,
            # Passing the shape too makes Keras validate it (minimum size, 3 channels).
            input_shape=tuple(image.shape[1:]),
            pooling=None,
            **kwargs,
        )
        return pooled_head(backbone.output, num_classes)

    return build_logits


def _own(features: Callable) -> Callable:
    """Builder for a network written here: feature extractor + pooled head."""

    def build_logits(image, num_classes, keras_weights):
        return pooled_head(features(image), num_classes)

    return build_logits


def _baseline_cnn(image, num_classes, keras_weights):
    return small.baseline_cnn_logits(image, num_classes)


_SPECS = [
    ModelSpec("mobilenet_v1", _application("MobileNet", _no_adapter), True),
    ModelSpec("mobilenet_v2", _application("MobileNetV2", _no_adapter), True),
    ModelSpec("vgg19", _application("VGG19", _adapter_caffe), True),
    ModelSpec("resnet50", _application("ResNet50", _adapter_caffe), True),
    ModelSpec("resnet152", _application("ResNet152", _adapter_caffe), True),
    ModelSpec("densenet121", _application("DenseNet121", _adapter_torch), True),
    ModelSpec("inception_v3", _application("InceptionV3", _no_adapter), True,
              min_input_size=75, recommended_input_size=299),
    ModelSpec("efficientnet_b6", _application("EfficientNetB6", _adapter_to_0_255), True),
    ModelSpec("efficientnet_b7", _application("EfficientNetB7", _adapter_to_0_255), True),
    ModelSpec("resnet18", _own(resnet.resnet18_features), False),
    ModelSpec("resnet34", _own(resnet.resnet34_features), False),
    ModelSpec("resnet20", _own(resnet.resnet20_features), False),
    ModelSpec("resnet32", _own(resnet.resnet32_features), False),
    ModelSpec("conv3_student", _own(small.conv3_student_features), False),
    ModelSpec("baseline_cnn", _baseline_cnn, False),
]
MODEL_SPECS: Dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}
RECOMMENDED_INPUT_SIZES: Dict[str, int] = {s.name: s.recommended_input_size for s in _SPECS}
MIN_INPUT_SIZES: Dict[str, int] = {s.name: s.min_input_size for s in _SPECS}
IMAGENET_MODELS = tuple(sorted(s.name for s in _SPECS if s.has_imagenet))


def available() -> List[str]:
    """Sorted registry names."""
    return sorted(MODEL_SPECS)


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; ConfigError listing the available names otherwise."""
    spec = MODEL_SPECS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ConfigError(f"Unknown model {name!r}. Available models: {', '.join(available())}.")
    return spec


# ----------------------------------------------------------------------------- build


def _check_input_shape(spec: ModelSpec, input_shape) -> Tuple[int, int, int]:
    if keras.backend.image_data_format() != "channels_last":
        raise ConfigError(
            "chestkd models need keras image_data_format 'channels_last' "
            f"(~/.keras/keras.json says {keras.backend.image_data_format()!r})."
        )
    try:
        shape = tuple(int(v) for v in input_shape)
        valid = len(shape) == 3 and all(v > 0 for v in shape) and shape == tuple(input_shape)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ConfigError(
            f"input_shape={input_shape!r} for model '{spec.name}' must be three positive "
            f"integers (height, width, channels), e.g. (224, 224, 3)."
        )
    if min(shape[:2]) < spec.min_input_size:
        raise ConfigError(
            f"Model '{spec.name}' needs inputs of at least {spec.min_input_size}x"
            f"{spec.min_input_size} pixels; got input_shape={shape} "
            f"(recommended image_size: {spec.recommended_input_size})."
        )
    return shape


def _check_num_classes(name: str, num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ConfigError(f"num_classes={num_classes!r} for model '{name}' must be a positive integer.")
    return int(num_classes)


def _snake_case(class_name: str) -> str:
    """Keras' automatic layer-name prefix (keras.src.utils.naming.to_snake_case)."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def canonicalize_layer_names(model: keras.Model) -> None:
    """Rename auto-named layers (``<snake_class>`` or ``<snake_class>_<n>``) to the names a fresh
    Keras session would give them: per class, in creation order (the order of ``n``)."""
    auto_named: Dict[str, List[Tuple[int, keras.layers.Layer]]] = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        base = _snake_case(type(layer).__name__)
        match = re.fullmatch(re.escape(base) + r"(?:_(\d+))?", layer.name)
        if match:
            auto_named.setdefault(base, []).append((int(match.group(1) or 0), layer))
    for base, numbered in auto_named.items():
        for rank, (_, layer) in enumerate(sorted(numbered, key=lambda item: item[0])):
            layer.name = base if rank == 0 else f"{base}_{rank}"
    names = [layer.name for layer in model.layers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:  # Only possible if a builder names a layer like an automatic one.
        raise RuntimeError(f"Layer names not unique after renaming in '{model.name}': {duplicates}")


def build(
    name: str,
    num_classes: int,
    input_shape: Sequence[int] = (224, 224, 3),
    weights: WeightsOption = None,
) -> keras.Model:
    """Build registry model ``name`` as one flat functional model returning float32 logits.

    Args:
        name: one of :func:`available`.
        num_classes: width C of the logits (B, C).
        input_shape: (H, W, C) of the [-1, 1] input images, at least ``MIN_INPUT_SIZES[name]``.
        weights: None (random), "imagenet" (keras.applications backbones only, 3 channels,
            internet access the first time) or a path to a ``.weights.h5`` / ``.keras`` file.

    Raises:
        ConfigError: unknown name, invalid shape / num_classes, or weights that cannot be used.
    """
    spec = get_spec(name)
    shape = _check_input_shape(spec, input_shape)
    num_classes = _check_num_classes(spec.name, num_classes)
    source = resolve_weights(spec.name, weights, has_imagenet=spec.has_imagenet, channels=shape[-1])
    keras_weights = IMAGENET if source == IMAGENET else None

    image = keras.Input(shape=shape, name="image")
    try:
        logits = spec.build_logits(image, num_classes, keras_weights)
    except Exception as exc:
        if keras_weights is None:
            raise
        # Download failure (offline), corrupt cache, ...: the user can fall back to weights=None.
        raise imagenet_unavailable(spec.name, exc) from exc
    model = keras.Model(inputs=image, outputs=logits, name=spec.name)
    canonicalize_layer_names(model)
    if source is not None and source != IMAGENET:
        load_weights_file(model, source)
    return model


def count_params(model: keras.Model, trainable_only: bool = False) -> int:
    """Number of scalar parameters: trainable + non-trainable (e.g. BN moving statistics),
    or only the trainable ones."""
    variables = model.trainable_weights if trainable_only else model.weights
    return int(sum(int(np.prod(v.shape)) for v in variables))


# ----------------------------------------------------------------------------- fine-tuning


def freeze_backbone(model: keras.Model, head: Sequence[str] = ("logits",)) -> keras.Model:
    """Make every layer except ``head`` untrainable (a fixed feature extractor).

    In Keras 3 an untrainable BatchNormalization layer also runs in inference mode (it uses
    and keeps its moving statistics), so the frozen base computes exactly what it computed
    before training. Recompile after calling this.
    """
    for layer in model.layers:
        layer.trainable = layer.name in head
    return model


def unfreeze_backbone(model: keras.Model) -> keras.Model:
    """Make every layer trainable again EXCEPT BatchNormalization, which stays frozen and in
    inference mode: the Keras fine-tuning convention (fitting batch statistics of a small
    data set would wreck what the pretrained layers learned). Recompile, with a much lower
    learning rate, after calling this."""
    for layer in model.layers:
        layer.trainable = not isinstance(layer, layers.BatchNormalization)
    return model
