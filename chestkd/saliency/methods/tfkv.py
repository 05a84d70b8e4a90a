"""Glue between chestkd's flat logits graph and tf-keras-vis's CAM classes.

tf-keras-vis finds its CAM layer with ``layer.output``. Under Keras 3 that tensor belongs to
the graph the layer was first called in (for a nested backbone: the backbone's own graph),
and a layer that the flat graph re-calls has several outputs. :func:`feature_tap` therefore
hands tf-keras-vis a fresh ``Identity`` layer called once, on the flat graph's feature map:
its ``.output`` is unambiguous and connected to the flat model's input, nested or not.
"""
from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from chestkd.saliency.methods.graph import FlatGraph, feature_map


def feature_tap(graph: FlatGraph, layer: str | None, method: str):
    """``(path, tap)``: the CAM layer's path and an Identity layer whose output is its map."""
    path, features = feature_map(graph, layer, method)
    tap = keras.layers.Identity(name=f"{method.lower().replace('-', '_')}_feature_tap")
    tap(features)
    return path, tap


def class_score(classes):
    """tf-keras-vis score function: output column ``classes[i]`` for row ``i``."""
    classes = tf.constant(classes, tf.int32)
    return lambda outputs: tf.gather(tf.cast(outputs, tf.float32), classes, axis=1,
                                     batch_dims=1)


@contextlib.contextmanager
def quiet_keras():
    """Silence Keras' own progress bars (tf-keras-vis calls ``model.predict`` verbosely)."""
    was_enabled = keras.utils.is_interactive_logging_enabled()
    keras.utils.disable_interactive_logging()
    try:
        yield
    finally:
        if was_enabled:
            keras.utils.enable_interactive_logging()
