"""Which student layer meets which teacher layer: the automatic layer pairs of feature KD.

Two architectures rarely share layer names, so the recipes pair layers by position:

* :func:`stage_ends` — a model's stages are its runs of layers at one spatial resolution;
  a stage's end is its last layer in graph order (the block output the next stage
  downsamples). Layers before the first convolution (input adapters), padding layers and
  1x1 maps (squeeze-and-excitation vectors) are never ends. ``conv3_student`` gives exactly
  its three conv block outputs ``conv1_relu``, ``conv2_relu``, ``conv3_relu``; DenseNet-121
  at 224 px gives the ends at 112, 56, 28, 14 and 7 pixels (``relu`` last).
* :func:`depth_matched_pairs` — "feature maps at matching depth" (the teacher-assistant
  paper's student): the k-th of the student's n stage ends meets the teacher's stage end at
  the same relative depth, index ``ceil(k * S / n) - 1`` of the teacher's S ends, so the last
  meets the last and the first the deepest of the teacher's first S/n ends (S = 5, n = 3:
  the teacher's ends 2, 4 and 5, 1-based). Spatial sizes
  and channels are then matched by :class:`chestkd.distill.feature_terms.FeatureAlignment`.
* :func:`last_map_pair` — the two models' last feature maps (the input of ``features_pool``),
  the high-level features (the assistant's feature-KL term).
"""
from __future__ import annotations

import math
from typing import List, Tuple

import keras

from chestkd.errors import ConfigError
from chestkd.models.feature_layers import default_feature_layer


CONVOLUTIONS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                keras.layers.SeparableConv2D)


def stage_ends(model: keras.Model) -> List[str]:
    """Names of the last layer of each spatial resolution, in graph order (module doc)."""
    ends, sizes, convolved = {}, [], False
    for layer in model.layers:
        convolved = convolved or isinstance(layer, CONVOLUTIONS)
        if not convolved or isinstance(layer, keras.layers.ZeroPadding2D):
            continue  # input adapters before the first convolution; padding
        shape = layer.output.shape
        if len(shape) != 4 or tuple(shape[1:3]) == (1, 1):
            continue  # not a map, or a squeeze-and-excitation vector
        size = tuple(shape[1:3])
        if size not in ends:
            sizes.append(size)
        ends[size] = layer.name
    if not sizes:
        raise ConfigError(f"Model '{model.name}' has no convolutional feature map: no stage "
                          f"ends to pair")
    return [ends[size] for size in sizes]


def depth_matched_pairs(student: keras.Model, teacher: keras.Model) -> List[Tuple[str, str]]:
    """(student layer, teacher layer) for each of the student's stage ends (module doc)."""
    student_ends, teacher_ends = stage_ends(student), stage_ends(teacher)
    n, s = len(student_ends), len(teacher_ends)
    return [(name, teacher_ends[math.ceil(k * s / n) - 1])
            for k, name in enumerate(student_ends, start=1)]


def last_map_pair(student: keras.Model, teacher: keras.Model) -> List[Tuple[str, str]]:
    """[(student's last feature map, teacher's last feature map)]."""
    return [(default_feature_layer(student), default_feature_layer(teacher))]
