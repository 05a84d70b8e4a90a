"""Model zoo: flat Keras models that map [-1, 1] images to float32 logits.

>>> model = build("conv3_student", num_classes=14, input_shape=(224, 224, 3))
>>> cam_layer = default_feature_layer(model)          # last 4-D feature map
>>> features, logits = feature_model(model, [cam_layer])(images)

See :mod:`chestkd.models.zoo` for the contract every model follows (input range, head,
flatness, layer names), :mod:`chestkd.models.weights` for ``weights=`` and
:mod:`chestkd.models.feature_layers` for intermediate feature maps and :mod:`chestkd.models.ensemble`
for the parallel-branch ensemble student (``ensemble_student``).
"""

from chestkd.models.ensemble import ensemble_branches, ensemble_student
from chestkd.models.feature_layers import default_feature_layer, feature_layer_names, feature_model
from chestkd.models.weights import copy_weights_by_name, load_weights_file, save_model_atomically
from chestkd.models.zoo import (
    IMAGENET_MODELS,
    MIN_INPUT_SIZES,
    RECOMMENDED_INPUT_SIZES,
    available,
    build,
    count_params,
    get_spec,
)

__all__ = [
    "IMAGENET_MODELS",
    "MIN_INPUT_SIZES",
    "RECOMMENDED_INPUT_SIZES",
    "available",
    "build",
    "copy_weights_by_name",
    "count_params",
    "default_feature_layer",
    "ensemble_branches",
    "ensemble_student",
    "feature_layer_names",
    "feature_model",
    "get_spec",
    "load_weights_file",
    "save_model_atomically",
]
