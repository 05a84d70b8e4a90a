"""Feature-map distillation terms of the Distiller: which layers, which distance, what weight.

A :class:`FeatureTerm` (like ``keras.distillation.FeatureDistillation``, one object per term)
names a student layer, a layer of teacher ``teacher`` (its index in the Distiller's teachers),
a distance of :mod:`chestkd.distill.feature_distances` and a weight; the Distiller adds
``weight * mean_b distance_b`` to its loss and reports the unweighted batch mean under the
term's ``name``.

Shapes rarely match, so each term gets a :class:`FeatureAlignment`:

* spatial size: both maps are brought to the smaller grid, ``(min(Hs, Ht), min(Ws, Wt))``,
  by area averaging, so no value is invented: each output cell is the overlap-weighted mean
  of the input cells it covers (``tf.image.resize(method="area")``'s result, and plain
  average pooling when the ratio is an integer: a 56x56 map meets a 7x7 one as 8x8 means).
  It is computed as two small averaging matrices (an einsum), so unlike TF's ``ResizeArea``
  it has gradients and compiles under XLA;
* channels: a trainable 1x1 convolution (a Dense layer for pooled (B, D) features) maps the
  student's channels to the teacher's. It is trained with the student but belongs to the
  Distiller, so ``distiller.student`` (what is saved and exported) does not contain it.
  ``adapter="auto"`` adds it when the channel counts differ, except for attention transfer
  and attention KL, which compare channel means and need no match; ``"always"`` /
  ``"never"`` force it.

The teacher side is constant (frozen teachers, outside the gradient tape); the student side
is pooled first, then adapted (pooling and a 1x1 convolution commute, pooling first is
cheaper).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import keras
import numpy as np
from keras import ops

from chestkd.distill.feature_distances import DISTANCES
from chestkd.errors import ConfigError

ADAPTER_MODES = ("auto", "always", "never")


@dataclass(frozen=True, eq=False)
class FeatureTerm:
    """One feature-distillation term (see the module docstring).

    Args:
        student_layer: name of a student layer with a (B, H, W, C) or (B, D) output.
        teacher_layer: name of a layer of teacher number ``teacher``.
        distance: ``"wasserstein"``, ``"feature_kl"``, ``"attention_transfer"`` or ``"mse"``.
        weight: the term's weight (lambda) in the loss, >= 0.
        teacher: index of the teacher in the Distiller's ``teachers``.
        options: keyword options of the distance (``p``, ``per_channel``; ``temperature``,
            ``mode``; ``p``, ``squared``).
        name: the metric name; default ``"<distance>_<student_layer>"`` (+ ``_t<teacher>``
            for teachers after the first).
        adapter: ``"auto"``, ``"always"`` or ``"never"``.
    """

    student_layer: str
    teacher_layer: str
    distance: str = "mse"
    weight: float = 1.0
    teacher: int = 0
    options: dict = field(default_factory=dict)
    name: str | None = None
    adapter: str = "auto"

    def __post_init__(self):
        if self.distance not in DISTANCES:
            raise ConfigError(f"FeatureTerm: unknown option 'distance'={self.distance!r}; "
                              f"choose one of {sorted(DISTANCES)}")
        allowed = DISTANCES[self.distance][1]
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise ConfigError(f"FeatureTerm({self.student_layer!r}): distance "
                              f"{self.distance!r} has no option(s) {unknown}; it accepts "
                              f"{list(allowed)}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) \
                or not self.weight >= 0:
            raise ConfigError(f"FeatureTerm({self.student_layer!r}): 'weight' must be a "
                              f"number >= 0, got {self.weight!r}")
        if self.adapter not in ADAPTER_MODES:
            raise ConfigError(f"FeatureTerm: unknown option 'adapter'={self.adapter!r}; choose "
                              f"one of {list(ADAPTER_MODES)}")
        if not isinstance(self.teacher, int) or self.teacher < 0:
            raise ConfigError(f"FeatureTerm: 'teacher' must be a teacher index >= 0, got "
                              f"{self.teacher!r}")
        object.__setattr__(self, "weight", float(self.weight))
        object.__setattr__(self, "options", dict(self.options))

    @property
    def default_name(self) -> str:
        suffix = f"_t{self.teacher}" if self.teacher else ""
        return f"{self.distance}_{self.student_layer}{suffix}"

    @property
    def needs_matching_channels(self) -> bool:
        # Attention maps are channel means: any channel counts compare.
        return not (self.distance == "attention_transfer"
                    or (self.distance == "feature_kl" and self.options.get("mode") == "attention"))

    def distance_per_sample(self, student_maps, teacher_maps):
        """(B,) distance of aligned maps."""
        function = DISTANCES[self.distance][0]
        return function(student_maps, teacher_maps, **self.options)

    def get_config(self) -> dict:
        return {"student_layer": self.student_layer, "teacher_layer": self.teacher_layer,
                "distance": self.distance, "weight": self.weight, "teacher": self.teacher,
                "options": dict(self.options), "name": self.name, "adapter": self.adapter}


def unique_names(terms):
    """Metric names of the terms: their ``name`` or default name, made unique with _<index>."""
    names = []
    for index, term in enumerate(terms):
        name = term.name or term.default_name
        if name in names or name in ("loss", "hard_loss", "soft_loss", "auc"):
            name = f"{name}_{index}"
        names.append(name)
    return names


def area_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of area averaging: row i averages the input cells overlapping
    output cell i, [i in/out, (i+1) in/out), each by its overlap (rows sum to 1)."""
    scale = in_size / out_size
    starts = np.arange(out_size)[:, None] * scale
    cells = np.arange(in_size)[None, :]
    overlap = np.clip(np.minimum(starts + scale, cells + 1) - np.maximum(starts, cells), 0, None)
    return (overlap / scale).astype(np.float32)


def _shrink(maps, height, width):
    """Area-average ``maps`` (B, H, W, C) down to (B, height, width, C) (module docstring)."""
    in_height, in_width = int(maps.shape[1]), int(maps.shape[2])
    if (in_height, in_width) == (height, width):
        return maps
    rows = ops.convert_to_tensor(area_matrix(in_height, height))
    columns = ops.convert_to_tensor(area_matrix(in_width, width))
    return ops.einsum("ih,bhwc,jw->bijc", rows, maps, columns)


class FeatureAlignment(keras.layers.Layer):
    """Brings one term's student and teacher maps to the same shape (module docstring)."""

    def __init__(self, term: FeatureTerm, student_shape, teacher_shape, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        student_shape, teacher_shape = tuple(student_shape), tuple(teacher_shape)
        rank = len(student_shape)
        if rank not in (2, 4) or len(teacher_shape) != rank:
            raise ConfigError(f"FeatureTerm {term.student_layer!r} -> {term.teacher_layer!r}: "
                              f"both outputs must be (B, H, W, C) maps or (B, D) features, "
                              f"got {student_shape} and {teacher_shape}")
        if rank == 2 and term.distance in ("feature_kl", "attention_transfer"):
            raise ConfigError(f"FeatureTerm {term.student_layer!r}: {term.distance} needs "
                              f"(B, H, W, C) maps, the layers give pooled features")
        self.rank = rank
        self.grid = None if rank == 2 else (min(student_shape[1], teacher_shape[1]),
                                            min(student_shape[2], teacher_shape[2]))
        channels_differ = student_shape[-1] != teacher_shape[-1]
        wanted = (term.adapter == "always"
                  or (term.adapter == "auto" and channels_differ and term.needs_matching_channels))
        if term.adapter == "never" and channels_differ and term.needs_matching_channels:
            raise ConfigError(f"FeatureTerm {term.student_layer!r}: adapter='never' but the "
                              f"student has {student_shape[-1]} channels, the teacher "
                              f"{teacher_shape[-1]}")
        self.projection = None
        if wanted:
            channels = int(teacher_shape[-1])
            self.projection = (keras.layers.Dense(channels, dtype="float32")
                               if rank == 2 else
                               keras.layers.Conv2D(channels, 1, dtype="float32"))
            self.projection.build((None,) + student_shape[1:])

    def call(self, student_maps, teacher_maps):
        student = ops.cast(student_maps, "float32")
        teacher = ops.cast(teacher_maps, "float32")
        if self.grid is not None:
            student = _shrink(student, *self.grid)
            teacher = _shrink(teacher, *self.grid)
        if self.projection is not None:
            student = self.projection(student)
        return student, teacher


class FeatureTermSet:
    """The feature models and alignments of a Distiller's terms (built once, in its constructor).

    ``student_model`` / ``teacher_models[k]`` are :func:`chestkd.models.feature_model` views
    (same layers and weights) returning ``[maps of each named layer..., logits]``, so one
    forward pass gives both the logits and the maps.
    """

    def __init__(self, terms, student, teachers):
        from chestkd.models.feature_layers import feature_model

        self.terms = tuple(terms)
        if not self.terms:
            raise ConfigError("FeatureTermSet: no terms")
        for term in self.terms:
            if not isinstance(term, FeatureTerm):
                raise ConfigError(f"Distiller: 'feature_terms' must be FeatureTerm objects, got "
                                  f"{term!r}")
        if not teachers:
            raise ConfigError("Distiller: feature terms need live teachers (cached "
                              "'teacher_logits' carry logits only, not feature maps); pass "
                              "teachers=...")
        for term in self.terms:
            if term.teacher >= len(teachers):
                raise ConfigError(f"FeatureTerm {term.student_layer!r}: 'teacher'={term.teacher}"
                                  f" but the Distiller has {len(teachers)} teacher(s)")
        self.names = unique_names(self.terms)
        self.student_layers = list(dict.fromkeys(term.student_layer for term in self.terms))
        self.student_model = feature_model(student, self.student_layers)
        self.teacher_layers, self.teacher_models = {}, {}
        for term in self.terms:
            self.teacher_layers.setdefault(term.teacher, [])
            if term.teacher_layer not in self.teacher_layers[term.teacher]:
                self.teacher_layers[term.teacher].append(term.teacher_layer)
        for index, layers in self.teacher_layers.items():
            self.teacher_models[index] = feature_model(teachers[index], layers)
        student_shapes = dict(zip(self.student_layers,
                                  (tuple(o.shape) for o in self.student_model.outputs)))
        self.alignments = []
        for term, name in zip(self.terms, self.names):
            model = self.teacher_models[term.teacher]
            layer_index = self.teacher_layers[term.teacher].index(term.teacher_layer)
            self.alignments.append(FeatureAlignment(
                term, student_shapes[term.student_layer],
                tuple(model.outputs[layer_index].shape), name=f"align_{name}"))

    def run_teachers(self, teachers, images):
        """(list of (B, C) logits per teacher, {(teacher, layer): maps}), gradient-free."""
        logits, maps = [], {}
        for index, teacher in enumerate(teachers):
            if index in self.teacher_models:
                outputs = self.teacher_models[index](images, training=False)
                for layer, value in zip(self.teacher_layers[index], outputs[:-1]):
                    maps[(index, layer)] = ops.stop_gradient(value)
                logits.append(outputs[-1])
            else:
                logits.append(teacher(images, training=False))
        return logits, maps

    def run_student(self, images, training):
        """((B, C) logits, {layer: maps}) of the student in one forward pass."""
        outputs = self.student_model(images, training=training)
        return outputs[-1], dict(zip(self.student_layers, outputs[:-1]))

    def distances(self, student_maps, teacher_maps):
        """{metric name: (B,) unweighted distance} of every term."""
        result = {}
        for term, name, alignment in zip(self.terms, self.names, self.alignments):
            student, teacher = alignment(student_maps[term.student_layer],
                                         teacher_maps[(term.teacher, term.teacher_layer)])
            result[name] = term.distance_per_sample(student, teacher)
        return result
