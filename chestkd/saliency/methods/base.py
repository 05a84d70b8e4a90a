"""The base class of every saliency method, and the batched gradient engine.

A method maps images ``(N, H, W, C)`` and a class per image to an attribution. Gradient
methods produce a signed per-channel attribution ``(N, H, W, C)``; :class:`SaliencyMethod`
then either returns it as is (``raw=True``) or reduces it over channels and rescales each
map to [0, 1] for display. CAM-like methods produce one map per image directly.

Scores are always the class *logit* ``z_c(x)`` (see
:func:`chestkd.saliency.methods.graph.logits_graph`).
"""
from __future__ import annotations

import abc
import inspect

import numpy as np
import tensorflow as tf

from chestkd.errors import ConfigError, DataError
from chestkd.saliency.methods.graph import FlatGraph, logits_graph

# Channel reductions of a signed attribution a (..., C) into one map (...).
REDUCTIONS = {
    "max_abs": lambda a: np.max(np.abs(a), axis=-1),     # Simonyan et al. 2014
    "abs_sum": lambda a: np.sum(np.abs(a), axis=-1),     # IG papers' usual display
    "abs_mean": lambda a: np.mean(np.abs(a), axis=-1),
    "sum": lambda a: np.sum(a, axis=-1),                 # signed; for IG sums to z(x)-z(x')
    "mean": lambda a: np.mean(a, axis=-1),
    "positive_sum": lambda a: np.sum(np.maximum(a, 0), axis=-1),
    "l2": lambda a: np.sqrt(np.sum(np.square(a), axis=-1)),
}


def reduce_channels(attribution: np.ndarray, how: str = "max_abs") -> np.ndarray:
    """Reduce ``(..., C)`` attributions over the channel axis with one of :data:`REDUCTIONS`."""
    if how not in REDUCTIONS:
        raise ConfigError(f"unknown channel reduction {how!r}; choose one of {sorted(REDUCTIONS)}")
    return REDUCTIONS[how](np.asarray(attribution))


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """Rescale each map to [0, 1]: ``(m - min m) / (max m - min m)``; a constant map -> 0."""
    maps = np.asarray(maps, dtype=np.float64)
    axes = tuple(range(1, maps.ndim))
    low = maps.min(axis=axes, keepdims=True)
    span = maps.max(axis=axes, keepdims=True) - low
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (maps - low) / safe, 0.0).astype(np.float32)


def as_class_indices(class_index, n_images: int, num_classes: int) -> np.ndarray:
    """``class_index`` (an int or one per image) as an int32 array of length ``n_images``."""
    indices = np.asarray(class_index)
    if indices.ndim == 0:
        indices = np.full(n_images, int(indices))
    if indices.ndim != 1 or len(indices) != n_images:
        raise ConfigError(
            f"class_index must be an int or one index per image ({n_images}), "
            f"got shape {indices.shape}")
    if not np.issubdtype(indices.dtype, np.integer):
        if not np.all(np.mod(indices, 1) == 0):
            raise ConfigError(f"class_index must hold integers, got {indices.tolist()}")
    indices = indices.astype(np.int64)
    bad = indices[(indices < 0) | (indices >= num_classes)]
    if len(bad):
        raise ConfigError(
            f"class_index {int(bad[0])} is out of range for a model with {num_classes} outputs")
    return indices.astype(np.int32)


def as_images(images, input_shape) -> np.ndarray:
    """Images as float32 ``(N, H, W, C)``; one ``(H, W, C)`` image becomes a batch of one."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    expected = tuple(input_shape[1:])
    mismatch = any(e is not None and e != s for e, s in zip(expected, images.shape[1:]))
    if images.ndim != 4 or mismatch:
        raise DataError(
            f"images must have shape (N, {', '.join(str(e) for e in expected)}) to match the "
            f"model input, got {images.shape}")
    if not np.all(np.isfinite(images)):
        raise DataError("images contain NaN or infinite values")
    return images


class GradientEngine:
    """Input gradients of class logits, computed in fixed-size batches.

    One compiled ``tf.function`` evaluates ``d z_c(x_r) / d x_r`` for a batch of rows (each row
    with its own class). Batches are padded to ``batch_size`` so the function is traced once.
    Rows are independent because the model runs in inference mode (batch norm uses its
    moving statistics), so the gradient of the summed scores is each row's own gradient.
    """

    def __init__(self, logits_model, batch_size: int = 32):
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model = logits_model
        self.batch_size = int(batch_size)
        self._function = tf.function(self._gradients, reduce_retracing=True)

    def _gradients(self, inputs, classes):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            logits = tf.cast(self.model([inputs], training=False), tf.float32)
            scores = tf.gather(logits, classes, axis=1, batch_dims=1)
        return tape.gradient(scores, inputs), scores

    def gradients(self, inputs: np.ndarray, classes: np.ndarray):
        """Gradients ``(R, H, W, C)`` and logits ``(R,)`` of ``inputs`` for ``classes``."""
        grads, scores = [], []
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start:start + self.batch_size]
            chunk_classes = classes[start:start + self.batch_size]
            pad = self.batch_size - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
                chunk_classes = np.concatenate([chunk_classes, np.zeros(pad, np.int32)])
            g, s = self._function(tf.constant(chunk), tf.constant(chunk_classes))
            grads.append(g.numpy()[:self.batch_size - pad])
            scores.append(s.numpy()[:self.batch_size - pad])
        return np.concatenate(grads), np.concatenate(scores)

    def accumulate(self, pieces, n_images: int, image_shape, classes: np.ndarray,
                   progress=None) -> np.ndarray:
        """Sum weighted gradients over many points per image, batching across pieces.

        Args:
            pieces: iterable of ``(image_index, points (k, H, W, C), multiplier, weight)``;
                each point contributes ``weight * multiplier * grad z_c(point)`` to its image
                (``multiplier`` is an ``(H, W, C)`` array or None for 1). Points of several
                pieces and images share a batch, so N images x S samples cost N*S/batch_size
                gradient calls.
            n_images: number of images.
            image_shape: ``(H, W, C)``.
            classes: class index per image.
            progress: optional ``fn(images_done)``, called after each gradient batch.

        Returns:
            float64 ``(n_images, H, W, C)`` sums.
        """
        total = np.zeros((n_images,) + tuple(image_shape), np.float64)
        buffer = np.empty((self.batch_size,) + tuple(image_shape), np.float32)
        rows: list[tuple] = []

        def flush():
            grads, _ = self.gradients(buffer[:len(rows)],
                                      np.array([classes[r[0]] for r in rows], np.int32))
            for grad, (image, multiplier, weight) in zip(grads, rows):
                contribution = grad if multiplier is None else multiplier * grad
                total[image] += weight * contribution
            rows.clear()

        for image, points, multiplier, weight in pieces:
            for point in points:
                buffer[len(rows)] = point
                rows.append((image, multiplier, weight))
                if len(rows) == self.batch_size:
                    flush()
                    # Pieces come image by image, so every image before this one is done.
                    if progress is not None:
                        progress(image)
        if rows:
            flush()
        if progress is not None:
            progress(n_images)
        return total


class SaliencyMethod(abc.ABC):
    """Base class: one saliency method bound to one model.

    Subclasses implement :meth:`attribute`, returning either a signed per-channel
    attribution ``(N, H, W, C)`` (``per_channel = True``) or one map per image ``(N, H, W)``.

    Args:
        model: a keras.Model with one image input and one output (logits, or probabilities
            whose final sigmoid/softmax is stripped automatically).
        batch_size: rows per gradient call (noisy samples and IG steps are batched).
        reduce: default channel reduction for display maps (see :data:`REDUCTIONS`).
    """

    name = "base"
    per_channel = True
    _progress = None    # the current call's ``progress`` callback (see :meth:`advance`)

    def __init__(self, model, *, batch_size: int = 32, reduce: str = "max_abs"):
        if reduce not in REDUCTIONS:
            raise ConfigError(f"unknown channel reduction {reduce!r}; "
                              f"choose one of {sorted(REDUCTIONS)}")
        self.reduce = reduce
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.graph: FlatGraph = self._build_graph(model)
        self.logits_model = self.graph.model(self.graph.output)
        self.input_shape = tuple(self.logits_model.inputs[0].shape)
        self.num_classes = int(self.graph.output.shape[-1])

    def _build_graph(self, model) -> FlatGraph:
        return logits_graph(model)

    @classmethod
    def _keyword_options(cls, *function_names: str) -> set[str]:
        names = set()
        for klass in cls.__mro__:
            for function_name in function_names:
                if function_name in vars(klass):
                    params = inspect.signature(vars(klass)[function_name]).parameters
                    names |= {p.name for p in params.values() if p.kind == p.KEYWORD_ONLY}
        return names

    @classmethod
    def build_options(cls) -> set[str]:
        """Keyword options of the constructor (e.g. ``samples``, ``steps``, ``layer``)."""
        return cls._keyword_options("__init__")

    @classmethod
    def call_options(cls) -> set[str]:
        """Keyword options of a call (``raw``, ``reduce``, and e.g. ``noise``, ``upsample``)."""
        return cls._keyword_options("__call__", "attribute")

    @abc.abstractmethod
    def attribute(self, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """The method itself: attribution of ``classes[i]`` for ``images[i]``."""

    def __call__(self, images, class_index, *, raw: bool = False, reduce: str | None = None,
                 progress=None, **options) -> np.ndarray:
        """Saliency of ``class_index`` (int or one per image) for ``images`` (N, H, W, C).

        ``progress``: optional ``fn(images_done)`` called as the images are processed
        (e.g. to advance a ``keras.utils.Progbar``); it ends with ``fn(N)``.

        Returns:
            ``raw=True``: the signed, unnormalised attribution ``(N, H, W, C)`` (CAM-like
            methods: the unnormalised map ``(N, H, W)``); otherwise ``(N, H, W)`` maps reduced
            over channels and rescaled to [0, 1].
        """
        unknown = sorted(set(options) - self.call_options())
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} for calling {self.name!r}; valid "
                              f"options: {sorted(self.call_options())}")
        images = as_images(images, self.input_shape)
        classes = as_class_indices(class_index, len(images), self.num_classes)
        # Subclasses report through self.advance, so attribute() signatures stay unchanged.
        self._progress = progress
        try:
            attribution = np.asarray(self.attribute(images, classes, **options), np.float32)
        finally:
            self._progress = None
        if progress is not None:
            progress(len(images))
        if raw:
            return attribution
        maps = reduce_channels(attribution, reduce or self.reduce) if self.per_channel \
            else self.display(attribution)
        return normalise_maps(maps)

    def advance(self, images_done: int) -> None:
        """Tell the current call's ``progress`` callback (if any) how many images are done."""
        if self._progress is not None:
            self._progress(int(images_done))

    def display(self, maps: np.ndarray) -> np.ndarray:
        """Map-valued methods: the map shown before [0, 1] rescaling."""
        return maps
