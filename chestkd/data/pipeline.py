"""The tf.data input pipeline: one function, ``make_dataset``, for training and evaluation.

Every image goes through the same steps, whether it comes from a raw PNG/JPEG file or from the
prepared cache (``chestkd.data.cache``):

1. read with :func:`chestkd.data.images.read_unit_grey`, the one reading rule that the cache and
   ``chestkd.predict`` use too (any channel count and bit depth, EXIF orientation, grey by luma,
   area-averaged on an axis that shrinks, linear on one that grows); the prepared cache holds
   that grey image at its own size, resized to ``image_size`` by the same rule
   (:func:`chestkd.data.images.resize_unit`),
2. repeat the grey image on 3 channels,
3. normalise: ``minus_one_one`` maps [0, 1] to [-1, 1] (the papers' convention, and what every
   chestkd model expects); ``zero_one`` keeps [0, 1]; ``imagenet`` uses ImageNet's channel
   mean and std; ``mean_std`` subtracts a dataset mean and divides by its std
   (``mean_std=(mean, std)``, e.g. from ``estimate_mean_std``),
4. when training: ``augment`` -- ``flip``, a random horizontal flip (the papers' only
   augmentation, the default), or ``light`` / ``strong``, the flip plus a random affine map and
   brightness/contrast change on the batch (:mod:`chestkd.data.augment` gives the ranges),
5. batch and prefetch with AUTOTUNE.

Training order, flips and augmentation come from ``seed``: two pipelines built with the same seed
yield the same images in the same order with the same flips and affine maps, every epoch. That is
what lets a cached teacher (logits precomputed for the original and the flipped view of every
training image) give exactly the losses an online teacher gives -- with ``augment="flip"`` only,
so a cached table with ``light`` or ``strong`` is refused.

Labels: ``y`` is float32 (B, C). Unknown labels (``Dataset.mask == 0``, CheXpert U-Ignore) are
encoded as -1, which the losses and metrics in ``chestkd.training.losses`` leave out.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from chestkd.data.augment import (RANGES, augment_batch, check_augment, draw_parameters,
                                  identity_parameters)
from chestkd.data.dataset import Dataset
from chestkd.errors import ConfigError, DataError

AUTOTUNE = tf.data.AUTOTUNE
NORMALIZATIONS = ("minus_one_one", "zero_one", "imagenet", "mean_std")
# A split whose decoded images fit in this many bytes is read once and kept in memory
# (``make_dataset(in_memory=None)``): the phantom's 3,000 images at 128 px take 197 MB.
IN_MEMORY_BYTES = 1 << 30


def encode_labels(data: Dataset) -> np.ndarray:
    """Labels with unknown entries (mask == 0) set to -1."""
    return np.where(data.mask > 0, data.labels, -1.0).astype(np.float32)


def normalize(images01: tf.Tensor, normalization: str = "minus_one_one", mean_std=None):
    """Map images in [0, 1] to the model's input range."""
    if normalization == "minus_one_one":
        return images01 * 2.0 - 1.0
    if normalization == "zero_one":
        return images01
    if normalization == "imagenet":
        from chestkd.data.images import IMAGENET_MEAN, IMAGENET_STD
        return (images01 - IMAGENET_MEAN) / IMAGENET_STD
    if normalization == "mean_std":
        if mean_std is None:
            raise ConfigError("normalization='mean_std' needs mean_std=(mean, std)")
        mean, std = mean_std
        return (images01 - mean) / std
    raise ConfigError(f"unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}")


def read_files(paths: np.ndarray, image_size: int) -> np.ndarray:
    """Byte-string paths -> float32 (B, S, S) grey in [0, 1], by
    :func:`chestkd.data.images.read_unit_grey`."""
    from chestkd.data.images import read_unit_grey
    out = np.empty((len(paths), image_size, image_size), np.float32)
    for k, path in enumerate(paths):
        out[k] = read_unit_grey(path.decode(), image_size)[0]
    return out


def resize_cached(images: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 (B, s, s) cached grey images -> float32 (B, S, S) in [0, 1], resized by the
    reading rule (:func:`chestkd.data.images.resize_unit`) when ``s != S``."""
    from chestkd.data.images import resize_unit
    unit = images.astype(np.float32) / np.float32(255.0)
    if unit.shape[1:] == (image_size, image_size):
        return unit
    out = np.empty((len(unit), image_size, image_size), np.float32)
    for i, image in enumerate(unit):
        out[i] = resize_unit(image, image_size)
    return out


def _flip(images: tf.Tensor, flips: tf.Tensor) -> tf.Tensor:
    """Flip each image left-right where ``flips`` is 1 (works on one image or a batch)."""
    return tf.where(tf.reshape(tf.cast(flips, tf.bool), [-1] + [1] * 3)
                    if images.shape.rank == 4 else tf.cast(flips, tf.bool),
                    tf.reverse(images, axis=[-2]), images)


def make_dataset(data: Dataset, split: str | None = None, *, image_size: int = 224,
                 batch_size: int = 32, training: bool = False, seed: int = 0,
                 normalization: str = "minus_one_one", mean_std=None, cache_dir=None,
                 teacher_logits: np.ndarray | None = None, flip: bool | None = None,
                 drop_remainder: bool = False, shuffle: bool | None = None,
                 augment: str | None = None, in_memory: bool | None = None) -> tf.data.Dataset:
    """Build the tf.data pipeline for ``data`` (or its ``split``).

    Args:
        data: a :class:`Dataset`; ``split`` selects ``"train"``, ``"val"`` or ``"test"`` first.
        image_size: output side length (224; 299 for InceptionV3).
        training: shuffle and augment (unless ``shuffle`` / ``flip`` say otherwise).
        seed: fixes the order, the flips and the augmentation.
        augment: ``"flip"`` (None: the same), ``"light"`` or ``"strong"``; applied when
            ``training`` only (the affine part) -- ``flip`` still switches the flip.
        cache_dir: a folder written by ``python -m chestkd.data prepare``; images are read from
            its uint8 shards instead of decoding the original files.
        teacher_logits: cached teacher outputs, shape (N, 2, C) or (N, 2, K, C) for the N images
            of this split in order; ``[:, 0]`` is the original view, ``[:, 1]`` the flipped one.
            Then each element is ``({"image": x, "teacher_logits": t}, y)``.
        in_memory: read the image files once and keep them decoded (float32, at
            ``image_size``) for every epoch; None: when they take at most
            :data:`IN_MEMORY_BYTES` (not with ``cache_dir``, whose shards are read as needed).

    Returns:
        A dataset of ``(images, y)`` batches (or with the dict above), images float32
        (B, S, S, 3).
    """
    if split is not None:
        data = data.subset(split)
    if len(data) == 0:
        raise DataError(f"{data.name}: no images to read")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}")
    shuffle = training if shuffle is None else shuffle
    flip = training if flip is None else flip
    augment = check_augment("flip" if augment is None else augment)
    ranges = RANGES.get(augment) if training else None
    labels = encode_labels(data)
    n = len(data)
    if teacher_logits is not None:
        teacher_logits = np.asarray(teacher_logits, np.float32)
        if teacher_logits.shape[0] != n or teacher_logits.shape[1] != 2:
            raise ConfigError(f"teacher_logits has shape {teacher_logits.shape}; expected "
                              f"({n}, 2, ...) for the {n} images of this split")
        if ranges is not None:
            raise ConfigError(f"augment={augment!r} cannot use cached teacher_logits: they hold "
                              f"the original and the flipped view only (use the teacher "
                              f"online, or augment='flip')")

    index = tf.data.Dataset.range(n)
    if shuffle:
        index = index.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    coin = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)
    keys = tf.data.Dataset.random(seed=seed + 2, rerandomize_each_iteration=True)

    def element(i, r, key):
        flips = tf.cast(r % 2, tf.int32) if flip else tf.constant(0, tf.int32)
        params = identity_parameters() if ranges is None else draw_parameters(key, i, ranges)
        return i, flips, params

    elements = tf.data.Dataset.zip(index, coin, keys).map(element)

    labels_t = tf.constant(labels)
    teacher_t = None if teacher_logits is None else tf.constant(teacher_logits)

    if cache_dir is not None:
        from chestkd.data.cache import PreparedCache
        cache = PreparedCache(cache_dir)
        rows = tf.constant(cache.rows_for(data))
        batches = elements.batch(batch_size, drop_remainder=drop_remainder)

        def load(i, flips, params):
            images = tf.numpy_function(
                lambda r: resize_cached(cache.read_rows(r), image_size),
                [tf.gather(rows, i)], tf.float32, stateful=False)
            images.set_shape([None, image_size, image_size])
            images = tf.tile(images[..., None], [1, 1, 1, 3])
            return i, flips, params, _flip(images, flips)

        ds = batches.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        batches = elements.batch(batch_size, drop_remainder=drop_remainder)
        paths = np.array([path.encode() for path in data.paths], dtype=object)  # UTF-8, as TF
        if in_memory is None:
            in_memory = n * image_size * image_size * 4 <= IN_MEMORY_BYTES
        if in_memory:
            # Each image is read once, when a batch first needs it (the same reading rule, so
            # the same float32 values), and kept: later epochs gather from memory instead of
            # decoding and resizing again, which on a CPU takes the cores the training step
            # needs. Pages of `decoded` are only allocated as rows are written.
            decoded = np.empty((n, image_size, image_size), np.float32)
            have = np.zeros(n, bool)

            def read(i):
                missing = i[~have[i]]
                if len(missing):
                    decoded[missing] = read_files(paths[missing], image_size)
                    have[missing] = True
                return decoded[i]
        else:
            def read(i):
                # One Python call per batch, not per image: the reading is OpenCV's (GIL
                # released), the per-call cost of numpy_function is paid once per batch.
                return read_files(paths[i], image_size)

        def load(i, flips, params):
            images = tf.numpy_function(read, [i], tf.float32, stateful=False)
            images.set_shape([None, image_size, image_size])
            images = tf.tile(images[..., None], [1, 1, 1, 3])
            return i, flips, params, _flip(images, flips)

        ds = batches.map(load, num_parallel_calls=AUTOTUNE, deterministic=True)

    if ranges is not None:
        ds = ds.map(lambda i, f, p, x: (i, f, p, augment_batch(x, p)),
                    num_parallel_calls=AUTOTUNE, deterministic=True)

    def finish(i, flips, params, images01):
        images = normalize(images01, normalization, mean_std)
        y = tf.gather(labels_t, i)
        if teacher_t is None:
            return images, y
        teacher = tf.gather(tf.gather(teacher_t, i), flips, axis=1, batch_dims=1)
        return {"image": images, "teacher_logits": teacher}, y

    return ds.map(finish, num_parallel_calls=AUTOTUNE, deterministic=True).prefetch(AUTOTUNE)


def estimate_mean_std(data: Dataset, split: str = "train", *, image_size: int = 224,
                      images: int = 512, seed: int = 0, cache_dir=None) -> tuple[float, float]:
    """Mean and std of pixel values in [0, 1] over a seeded sample of ``split``'s images
    (read from the prepared cache when ``cache_dir`` is given)."""
    part = data.subset(split)
    rows = np.random.default_rng(seed).permutation(len(part))[:images]
    ds = make_dataset(part.select(rows), image_size=image_size, batch_size=64,
                      normalization="zero_one", cache_dir=cache_dir)
    pixels = np.concatenate([x.numpy()[..., 0].ravel() for x, _ in ds])
    return float(pixels.mean()), float(pixels.std())


def steps_per_epoch(data: Dataset, split: str, batch_size: int, drop_remainder=False) -> int:
    n = int((data.split == split).sum())
    return n // batch_size if drop_remainder else -(-n // batch_size)
