"""Grad-CAM++ (Chattopadhyay et al. 2018), computed by tf-keras-vis's ``GradcamPlusPlus``.

With A (h, w, F) the feature map of a layer, g = d z_c / dA and S = sum_ij A_ijf,

    a_ijf = g^2 / (2 g^2 + S g^3)  (a zero denominator read as 1),
    alpha_ijf = a_ijf / sum_ij a_ijf   (per channel; tf-keras-vis and the authors' code),
    w_fc = sum_ij alpha_ijf relu(g_ijf),     M_c(i, j) = relu(sum_f w_fc A_ijf).

The paper's equation stops at a_ijf; the per-channel normalisation changes each channel's
weight, not only the map's scale.

(Ho & Gwak 2020 cite it among the CAM methods.) The layer default and the handling of nested
backbones and of a final sigmoid/softmax are Grad-CAM's (:mod:`chestkd.saliency.methods.gradcam`):
tf-keras-vis runs on chestkd's flat logits graph, reaching the layer through
:func:`~chestkd.saliency.methods.tfkv.feature_tap`.

tf-keras-vis scores the class by ``exp(z_c)``, which overflows float32 for z_c > 88 and
underflows for z_c < -87 (the map becomes all zeros); the exponential cancels in alpha and
only scales each map by ``exp(z_c)``. The score handed to tf-keras-vis is therefore
``z_c - stop_gradient(z_c)`` (value 0, gradient dz_c/dA): the same maps divided by
``exp(z_c)``. ``raw=True`` returns that map, non-negative (tf-keras-vis applies the relu),
upsampled bilinearly to (N, H, W), or (N, h, w) with ``upsample=False``.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus

from chestkd.saliency.methods.cam import MapMethod
from chestkd.saliency.methods.tfkv import feature_tap


def unit_exp_score(classes):
    """Score ``z_c - stop_gradient(z_c)``: gradient of the logit, ``exp(score) = 1``."""
    classes = tf.constant(classes, tf.int32)

    def score(logits):
        logit = tf.gather(tf.cast(logits, tf.float32), classes, axis=1, batch_dims=1)
        return logit - tf.stop_gradient(logit)
    return score


class GradCAMPlusPlus(MapMethod):
    """Grad-CAM++ of one feature layer.

    Args:
        layer: name or nesting path of the feature layer; None for the pooled feature map.
    """

    name = "gradcam_plus_plus"

    def __init__(self, model, *, layer: str | None = None, **kwargs):
        super().__init__(model, **kwargs)
        self.layer, self.tap = feature_tap(self.graph, layer, "Grad-CAM++")
        self._gradcam = GradcamPlusPlus(self.logits_model, model_modifier=None, clone=False)

    def feature_maps(self, images, classes) -> np.ndarray:
        return np.asarray(self._gradcam(
            unit_exp_score(classes), images, penultimate_layer=self.tap,
            seek_penultimate_conv_layer=False, expand_cam=False, normalize_cam=False))
