"""Score-CAM (Wang et al. 2020), computed by tf-keras-vis's ``Scorecam``.

Each feature map A_f of a layer is upsampled to the input size, rescaled to [0, 1] and used
as a mask; the weight of A_f is the class probability of the masked image:

    w_fc = p_c(x * norm(up(A_f))),       M_c(i, j) = relu(sum_f w_fc A_ijf).

No gradients: one forward pass per feature map and image (1,024 for DenseNet-121), so it is
slow on a CPU. ``max_maps=K`` keeps only the K maps of largest spatial standard deviation
(tf-keras-vis's "Faster Score-CAM", ``max_N``); images are explained one at a time so those
K maps are each image's own.

The probability p_c: tf-keras-vis always takes a softmax over the outputs, which is Score-CAM
for mutually exclusive classes (``probability="softmax"``). Multi-label findings
(``probability="sigmoid"``, chestkd's default for a logits model) get ``sigmoid(z_c)`` by
handing tf-keras-vis the two outputs ``[z_c, 0]``, whose softmax is ``[sigmoid(z_c), ...]``.
The layer default and the handling of nested backbones and of a final sigmoid/softmax are
Grad-CAM's (:mod:`chestkd.saliency.methods.gradcam`). ``raw=True`` returns the unnormalised map
(non-negative: tf-keras-vis applies the relu), upsampled bilinearly to (N, H, W), or
(N, h, w) with ``upsample=False``.
"""
from __future__ import annotations

import keras
import numpy as np
from tf_keras_vis.scorecam import Scorecam

from chestkd.errors import ConfigError
from chestkd.saliency.methods.cam import MapMethod
from chestkd.saliency.methods.graph import ends_in_probability
from chestkd.saliency.methods.tfkv import class_score, feature_tap, quiet_keras

PROBABILITIES = ("sigmoid", "softmax")


class ScoreCAM(MapMethod):
    """Score-CAM of one feature layer.

    Args:
        layer: name or nesting path of the feature layer; None for the pooled feature map.
        probability: ``"sigmoid"`` (multi-label) or ``"softmax"`` (single-label) class
            probability; None: the model's own output activation, else ``"sigmoid"``.
        max_maps: use only this many feature maps per image (None: all).
    """

    name = "scorecam"
    images_per_call = 1

    def __init__(self, model, *, layer: str | None = None, probability: str | None = None,
                 max_maps: int | None = None, **kwargs):
        super().__init__(model, **kwargs)
        self.layer, self.tap = feature_tap(self.graph, layer, "Score-CAM")
        self.probability = probability or ends_in_probability(model) or "sigmoid"
        if self.probability not in PROBABILITIES:
            raise ConfigError(f"Score-CAM probability must be one of {PROBABILITIES}, "
                              f"got {probability!r}")
        channels = int(self.tap.output.shape[-1])
        if max_maps is not None and not 1 <= int(max_maps) <= channels:
            raise ConfigError(f"max_maps must be between 1 and the layer's {channels} "
                              f"feature maps, got {max_maps!r}")
        self.max_maps = None if max_maps is None else int(max_maps)
        self._scorecams: dict = {}

    def _scorecam(self, class_index: int) -> tuple[Scorecam, int]:
        """tf-keras-vis Score-CAM whose softmax output ``column`` is ``p_c``."""
        key = class_index if self.probability == "sigmoid" else "softmax"
        if key not in self._scorecams:
            model = self.logits_model
            if self.probability == "sigmoid":
                logit = model.outputs[0][:, class_index:class_index + 1]
                pair = keras.layers.Concatenate()([logit, keras.ops.zeros_like(logit)])
                model = keras.Model(model.inputs, pair)
            self._scorecams[key] = Scorecam(model, model_modifier=None, clone=False)
        return self._scorecams[key], 0 if self.probability == "sigmoid" else class_index

    def feature_maps(self, images, classes) -> np.ndarray:
        maps = []
        for image, class_index in zip(images, classes):
            scorecam, column = self._scorecam(int(class_index))
            with quiet_keras():  # tf-keras-vis's model.predict would print its own bar
                maps.append(np.asarray(scorecam(
                    class_score([column]), image[None], penultimate_layer=self.tap,
                    seek_penultimate_conv_layer=False, batch_size=self.batch_size,
                    max_N=self.max_maps, expand_cam=False, normalize_cam=False))[0])
        return np.stack(maps)
