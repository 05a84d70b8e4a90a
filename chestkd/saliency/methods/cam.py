"""Class activation maps (Zhou et al. 2016), as in CheXNet and Ho & Gwak 2020.

For a classifier ``z_c = b_c + sum_f w_fc * mean_{ij} A_ijf`` (global average pooling of the
final feature maps A, then a Dense layer), the class activation map is

    M_c(i, j) = sum_f w_fc A_ijf,       so that  mean_{ij} M_c(i, j) + b_c = z_c.

chestkd models end in ``GlobalAveragePooling2D(name="features_pool") -> Dense(name="logits")``;
any model ending in global average pooling -> (Dropout) -> Dense is accepted, nested backbones
included. ``raw=True`` returns M_c (signed, unnormalised) upsampled bilinearly to the input
size (N, H, W); ``upsample=False`` keeps the feature-map resolution (N, h, w). Display maps
keep the positive evidence ``relu(M_c)`` and rescale it to [0, 1].
"""
from __future__ import annotations

import abc

import numpy as np
import tensorflow as tf

from chestkd.saliency.methods.base import SaliencyMethod
from chestkd.saliency.methods.graph import find_classifier_head


def upsample_maps(maps: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of (N, h, w) maps to (N, H, W) (half-pixel centres, like cv2)."""
    maps = np.asarray(maps, np.float32)
    if maps.shape[1:] == tuple(size):
        return maps
    resized = tf.image.resize(maps[..., None], tuple(size), method="bilinear")
    return resized.numpy()[..., 0]


class MapMethod(SaliencyMethod):
    """Base of CAM-like methods: one map per image, optionally upsampled to the input size."""

    per_channel = False

    def display(self, maps: np.ndarray) -> np.ndarray:
        return np.maximum(maps, 0.0)

    # Images per feature_maps call; Score-CAM sets 1 (each image is already many batches).
    images_per_call: int | None = None

    def attribute(self, images, classes, *, upsample: bool = True) -> np.ndarray:
        step = self.images_per_call or self.batch_size
        chunks = []
        for start in range(0, len(images), step):
            chunks.append(self.feature_maps(images[start:start + step],
                                            classes[start:start + step]))
            self.advance(min(start + step, len(images)))
        maps = np.concatenate(chunks)
        return upsample_maps(maps, images.shape[1:3]) if upsample else maps

    @abc.abstractmethod
    def feature_maps(self, images, classes) -> np.ndarray:
        """(N, h, w) class activation maps of ``classes[i]`` for ``images[i]``."""


class CAM(MapMethod):
    """Final feature maps weighted by the classifier's weights for the class."""

    name = "cam"

    def __init__(self, model, **kwargs):
        super().__init__(model, **kwargs)
        self.head = find_classifier_head(self.graph)
        self.feature_model = self.graph.model(self.head.features)
        self._features = tf.function(lambda x: self.feature_model([x], training=False),
                                     reduce_retracing=True)

    def feature_maps(self, images, classes) -> np.ndarray:
        features = self._features(tf.constant(images)).numpy().astype(np.float64)
        kernel = np.asarray(self.head.kernel, np.float64)        # (F, C)
        weights = kernel[:, classes].T                          # (N, F)
        return np.einsum("nhwf,nf->nhw", features, weights)
