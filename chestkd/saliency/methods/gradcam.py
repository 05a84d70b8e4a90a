"""Grad-CAM (Selvaraju et al. 2017) on flat or nested-backbone models.

With A (h, w, F) the feature map of a layer and z_c the class logit,

    alpha_fc = mean_{ij} d z_c / d A_ijf,        M_c(i, j) = sum_f alpha_fc A_ijf.

Display maps are ``relu(M_c)`` rescaled to [0, 1] (as tf-keras-vis); ``raw=True`` returns the
signed M_c upsampled bilinearly to (N, H, W), or (N, h, w) with ``upsample=False``.

The default layer is the last feature map the classifier pools (the input of the final
global pooling layer: DenseNet-121's final ``relu``, not its last Conv layer). Because the
model is flattened first (:func:`chestkd.saliency.methods.graph.flatten_model`), a layer inside a
nested backbone can be named, by its name or by its path (``"densenet121/relu"``); this
is where tf-keras-vis's Gradcam fails under Keras 3.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from chestkd.saliency.methods.cam import MapMethod
from chestkd.saliency.methods.graph import feature_map


class GradCAM(MapMethod):
    """Gradient-weighted class activation map of one feature layer.

    Args:
        layer: name or nesting path of the feature layer; None for the pooled feature map.
    """

    name = "gradcam"

    def __init__(self, model, *, layer: str | None = None, **kwargs):
        super().__init__(model, **kwargs)
        self.layer, features = feature_map(self.graph, layer, "Grad-CAM")
        self.feature_model = self.graph.model([features, self.graph.output])
        self._maps = tf.function(self._gradcam, reduce_retracing=True)

    def _gradcam(self, images, classes):
        with tf.GradientTape() as tape:
            features, logits = self.feature_model([images], training=False)
            scores = tf.gather(tf.cast(logits, tf.float32), classes, axis=1, batch_dims=1)
        grads = tf.cast(tape.gradient(scores, features), tf.float32)
        features = tf.cast(features, tf.float32)
        alphas = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        return tf.reduce_sum(alphas * features, axis=-1)

    def feature_maps(self, images, classes) -> np.ndarray:
        return self._maps(tf.constant(images), tf.constant(classes)).numpy()
