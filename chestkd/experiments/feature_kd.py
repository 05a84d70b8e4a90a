"""Feature-distillation experiments: ensemble teachers, automatic feature terms, one stage.

The recipes ``ensemble_kd`` and ``assistant_kd`` are sequences of these steps; a stage is the
one :class:`chestkd.distill.Distiller` with feature terms, its teachers online (feature maps
are never cached), and its results in a folder of its own (resumable through ``Stages``).
"""
from __future__ import annotations


import keras
import numpy as np

from chestkd.data.dataset import Dataset
from chestkd.data.pipeline import make_dataset
from chestkd.distill.feature_terms import FeatureTerm
from chestkd.distill.layer_pairs import depth_matched_pairs, last_map_pair
from chestkd.errors import ConfigError
from chestkd.evaluation.metrics import mean_auc, per_class_auc, predict_logits
from chestkd.experiments.kd import distil
from chestkd.experiments.store import obtain_model
from chestkd.scores import ranking_scores
from chestkd.training.classifier import image_options
from chestkd.training.options import RunOptions, as_options

LAYER_RULES = {"depth": depth_matched_pairs, "last": last_map_pair}


def with_learning_rate(options: RunOptions, learning_rate=None) -> RunOptions:
    """The options with this stage's learning rate (None: the run's ``learning_rate``)."""
    options = as_options(options)
    return options if learning_rate is None else options.replace(
        learning_rate=float(learning_rate))


def member_names(spec) -> list:
    """The model names of one chain entry: a name/file, or a list of them (an ensemble)."""
    names = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"chain entry {spec!r}: a model name or .keras file, or a list of them")
    return names


def obtain_teachers(options: RunOptions, data: Dataset, spec, *, learning_rate=None):
    """(models, sources) of one chain entry, base-trained once in the model store."""
    stage = with_learning_rate(options, learning_rate)
    pairs = [obtain_model(stage, data, name) for name in member_names(spec)]
    return [model for model, _ in pairs], [str(source) for _, source in pairs]


def averaged_model(members, name: str = "ensemble_teacher") -> keras.Model:
    """One model whose logits are the mean of ``members``' logits (an ensemble teacher), for
    evaluation; a single member is returned as it is."""
    if len(members) == 1:
        return members[0]
    names = [member.name for member in members]
    for index, member in enumerate(members):
        if names.count(member.name) > 1 and member is not members[names.index(member.name)]:
            member.name = f"{member.name}_{index}"  # names in one model must be unique
    image = keras.Input(members[0].input_shape[1:], name="image")
    outputs = [member(image, training=False) for member in members]
    return keras.Model(image, keras.layers.Average(dtype="float32", name="logits")(outputs),
                       name=name)


def feature_terms_for(student: keras.Model, teachers, *, distance: str, weight: float,
                      layers="depth", options=None, adapter: str = "auto"):
    """FeatureTerms from ``student`` to every teacher, weight ``weight / len(teachers)`` each.

    ``layers``: ``"depth"`` (:func:`depth_matched_pairs`), ``"last"`` (:func:`last_map_pair`)
    or an explicit list of ``[student layer, teacher layer]`` pairs (used for every teacher).
    A weight of 0 gives no terms.
    """
    if not weight:
        return []
    terms = []
    for index, teacher in enumerate(teachers):
        if isinstance(layers, str):
            if layers not in LAYER_RULES:
                raise ConfigError(f"feature layers {layers!r}: 'depth', 'last' or a list of "
                                  f"[student_layer, teacher_layer] pairs")
            pairs = LAYER_RULES[layers](student, teacher)
        else:
            pairs = [tuple(pair) for pair in layers]
            if not all(len(pair) == 2 for pair in pairs):
                raise ConfigError(f"feature layers {layers!r}: pairs [student, teacher]")
        terms += [FeatureTerm(s, t, distance, weight=float(weight) / len(teachers),
                              teacher=index, options=dict(options or {}), adapter=adapter)
                  for s, t in pairs]
    return terms


def distil_features(options: RunOptions, run_dir, data: Dataset, teachers, build_student, *,
                    terms_for, seed=None):
    """Train the student of ``build_student()`` from ``teachers`` (online) with the KD loss of
    the run and the FeatureTerms ``terms_for(student)``; returns the best student (by exact
    validation mean AUC). The one distillation loop, :func:`chestkd.experiments.kd.distil`."""
    return distil(options, run_dir, data, list(teachers), None, seed=seed,
                  build_student=build_student, terms_for=terms_for)


def mean_test_auc(model, data: Dataset, options: RunOptions) -> float:
    """Mean test AUC of ``model`` (no intervals, no files): for the branches of an ensemble."""
    options = as_options(options)
    test = make_dataset(data, "test", batch_size=options.training.batch_size,
                        **image_options(data, options))
    logits, y = predict_logits(model, test)
    truth = y if getattr(data, "clean_labels", None) is None else \
        np.asarray(data.clean_labels, np.float32)[data.split == "test"]
    return float(mean_auc(per_class_auc(truth, ranking_scores(logits, data.multi_label),
                                        data.class_names)))
