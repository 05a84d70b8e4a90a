"""Vanilla gradient saliency (Simonyan et al. 2014): ``a(x) = d z_c(x) / d x``.

The gradient is computed by tf-keras-vis's :class:`~tf_keras_vis.saliency.Saliency` on the
logits graph, one call per ``batch_size`` images, with its gradient modifier, channel
reduction and normalisation switched off so the signed per-channel gradient comes back;
:class:`~chestkd.saliency.methods.base.SaliencyMethod` reduces and normalises it.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from tf_keras_vis.saliency import Saliency

from chestkd.saliency.methods.base import SaliencyMethod


def logit_score(classes: np.ndarray):
    """tf-keras-vis score function: the logit of ``classes[i]`` for image ``i``."""
    classes = tf.constant(classes, tf.int32)
    return lambda logits: tf.gather(tf.cast(logits, tf.float32), classes, axis=1, batch_dims=1)


class Vanilla(SaliencyMethod):
    """Input gradient of the class logit."""

    name = "vanilla"

    def __init__(self, model, **kwargs):
        super().__init__(model, **kwargs)
        self._saliency = Saliency(self.logits_model, model_modifier=None, clone=False)

    def attribute(self, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            stop = start + self.batch_size
            chunks.append(np.asarray(self._saliency(
                logit_score(classes[start:stop]), images[start:stop], gradient_modifier=None,
                keepdims=True, normalize_map=False)))
            self.advance(min(stop, len(images)))
        return np.concatenate(chunks)
