"""Test-split metrics: per-class AUC, single-label scores, parameters and latency.

AUCs are exact (:func:`chestkd.scores.exact_auc`) on the full test split (not the
batch-averaged Keras metric); their bootstrap intervals, paired tests and calibration are in
``chestkd.evaluation.statistics``. A class whose test labels are all one value has no AUC; it is reported as missing (NaN) and left
out of the mean, and the table says how many positives each class had so the reader can judge.
"""
from __future__ import annotations

import time
import weakref

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from chestkd.evaluation.classification import classification_report, report_summary
from chestkd.scores import exact_auc


# model -> {(jit_compile, per-image shape, dtype): inference tf.function}. Weak keys, and the
# functions reach their model through a weak reference, so a cached entry never keeps a model
# alive.
_INFERENCE_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def inference_function(model, image_shape, dtype, jit_compile: bool = False):
    """The one ``tf.function`` running ``model(x, training=False)`` on batches of
    ``image_shape`` images of ``dtype``, made once per model, signature and ``jit_compile``.

    Its input signature has a free batch dimension, so it is traced once, whatever the batch
    sizes and however many times it is called: a new ``tf.function`` per call (or per batch
    shape) made TensorFlow retrace at every evaluation and warn about it.
    """
    import tensorflow as tf

    dtype = tf.as_dtype(dtype)
    key = (bool(jit_compile), tuple(image_shape), dtype.name)
    functions = _INFERENCE_FUNCTIONS.setdefault(model, {})
    if key not in functions:
        model_ref = weakref.ref(model)

        def infer(images):
            return model_ref()(images, training=False)

        functions[key] = tf.function(
            infer, jit_compile=bool(jit_compile),
            input_signature=[tf.TensorSpec((None, *image_shape), dtype)])
    return functions[key]


def predict_logits(model, dataset, jit_compile: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels for every batch of ``dataset`` (images, y), in order.

    The model runs through one ``tf.function`` (:func:`inference_function`: traced once per
    model and image shape, for every batch size and every call) instead of eagerly per batch,
    optionally XLA-compiled with ``jit_compile``.
    """
    logits, labels = [], []
    for x, y in dataset:
        images = x["image"] if isinstance(x, dict) else x
        infer = inference_function(model, tuple(images.shape[1:]), images.dtype, jit_compile)
        logits.append(np.asarray(infer(images), np.float64))
        labels.append(np.asarray(y))
    return np.concatenate(logits), np.concatenate(labels)


def per_class_auc(y_true: np.ndarray, scores: np.ndarray, class_names) -> pd.DataFrame:
    """The table of :func:`chestkd.scores.exact_auc` per class with each class's known
    positives and negatives; labels of -1 (unknown) are left out of that class."""
    y_true = np.asarray(y_true)
    aucs = exact_auc(y_true, scores)
    return pd.DataFrame([{"class": name, "auc": float(aucs[c]),
                          "positives": int((y_true[:, c] == 1).sum()),
                          "negatives": int((y_true[:, c] == 0).sum())}
                         for c, name in enumerate(class_names)])


def mean_auc(table: pd.DataFrame) -> float:
    return float(table["auc"].mean(skipna=True))


def single_label_metrics(y_true: np.ndarray, probabilities: np.ndarray, class_names) -> dict:
    """Accuracy, macro precision / recall / F1 (over the classes with test images), the
    per-class scores (:func:`~chestkd.evaluation.classification.classification_report`) and
    the confusion matrix of the arg-max decision."""
    report = classification_report(y_true, probabilities, class_names, multi_label=False)
    summary = report_summary(report, multi_label=False)
    labels = list(range(len(class_names)))
    return {
        **{key: summary[key] for key in ("accuracy", "precision", "recall", "f1",
                                         "classes_without_positives")},
        "per_class": report.iloc[:len(class_names)].reset_index(drop=True),
        "confusion_matrix": skm.confusion_matrix(y_true.argmax(1), probabilities.argmax(1),
                                                 labels=labels),
    }


def count_params(model) -> dict:
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(sum(np.prod(w.shape) for w in model.weights))
    return {"total": total, "trainable": trainable}


def latency_per_image(model, image_shape, *, repeats: int = 32, warmup: int = 3) -> dict:
    """Median and mean wall milliseconds of one-image inference (batch size 1).

    Runs through a compiled ``tf.function`` so the number reflects the graph, not Python
    overhead of eager mode; the first calls (tracing) are excluded.
    """
    import tensorflow as tf

    infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    image = tf.random.stateless_uniform((1, *image_shape), seed=(0, 0), minval=-1, maxval=1)
    for _ in range(warmup):
        infer(image).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        infer(image).numpy()
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median_ms": float(np.median(times)), "mean_ms": float(np.mean(times)),
            "repeats": repeats}
