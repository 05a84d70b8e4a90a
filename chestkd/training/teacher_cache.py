"""Cached teacher outputs: the teachers run once per training image, not once per step.

The papers' only augmentation is a horizontal flip, so every training image has exactly two
views. ``teacher_logits_table`` computes the teachers' logits for both views of every image of
the training split, in the split's order; the pipeline (``make_dataset(teacher_logits=...)``)
looks up the row of each image and the column of the flip it drew. Because the pipeline's order
and flips are seeded, a cached run sees exactly the teacher outputs an online run computes, and
distillation then costs about what base training costs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from chestkd.data.dataset import Dataset
from chestkd.data.images import progress_bar
from chestkd.data.pipeline import make_dataset
from chestkd.errors import ChestKDError
from chestkd.io import atomic_save_npy


def teacher_logits_table(teachers, data: Dataset, split: str = "train", *, image_size: int,
                         batch_size: int = 64,
                         normalization: str = "minus_one_one", mean_std=None,
                         cache_dir=None, verbose: int = 1) -> np.ndarray:
    """Logits of each teacher for the original and flipped view of every image of ``split``.

    The validation split gets a table too, so validation losses of a cached run are the
    ones an online run reports. ``verbose=1`` shows a progress bar (images) when the split
    has more than ``chestkd.data.images.PROGRESS_MIN_ITEMS`` images; 0: quiet.

    Returns float32 (N, 2, C) for one teacher, (N, 2, K, C) for a list of K teachers.
    """
    single = not isinstance(teachers, (list, tuple))
    teachers = [teachers] if single else list(teachers)
    images = make_dataset(data, split, image_size=image_size, batch_size=batch_size,
                          training=False, normalization=normalization, mean_std=mean_std,
                          cache_dir=cache_dir)

    @tf.function(reduce_retracing=True)
    def both_views(x):
        views = tf.concat([x, tf.reverse(x, axis=[2])], axis=0)  # width axis of (B, H, W, C)
        logits = tf.stack([tf.cast(t(views, training=False), tf.float32) for t in teachers], 1)
        original, flipped = tf.split(logits, 2, axis=0)
        return tf.stack([original, flipped], axis=1)  # (B, 2, K, C)

    bar = progress_bar(int((data.split == split).sum()), verbose)
    parts = []
    for x, _ in images:
        parts.append(both_views(x).numpy())
        if bar is not None:
            bar.add(len(parts[-1]))
    table = np.concatenate(parts)
    return table[:, :, 0] if single else table


def load_or_compute(path, teachers, data: Dataset, split: str = "train",
                    **options) -> np.ndarray:
    """Read the table from ``path`` if present (a resumed run), else compute and save it."""
    path = Path(path)
    if path.exists():
        try:
            return np.load(path)
        except (OSError, ValueError, EOFError) as error:   # written atomically: disk damage
            raise ChestKDError(f"{path}: unreadable cached teacher logits ({error}); delete "
                               "the file and run again to compute them anew") from None
    table = teacher_logits_table(teachers, data, split, **options)
    atomic_save_npy(path, table)
    return table
