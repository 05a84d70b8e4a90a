"""Training augmentation: the affine and intensity maps against NumPy, seeding, train only."""
import math

import cv2
import numpy as np
import pytest
import tensorflow as tf

from chestkd.data.augment import (RANGES, affine_transforms, augment_batch, draw_parameters,
                                  identity_parameters)
from chestkd.data.cache import prepare
from chestkd.data.dataset import Dataset
from chestkd.data.pipeline import make_dataset
from chestkd.errors import ConfigError
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS, check_config, resolve_config

SIZE = 16


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("augment")
    rng = np.random.default_rng(0)
    paths, arrays = [], []
    for i in range(8):
        # Smooth structure (a blurred blob field) so an affine map visibly moves content.
        image = cv2.GaussianBlur(rng.integers(0, 256, (SIZE, SIZE)).astype(np.float32), (0, 0), 2)
        image = np.clip((image - image.min()) / (np.ptp(image) + 1e-6) * 255, 0, 255)
        arrays.append(image.astype(np.uint8))
        paths.append(str(folder / f"{i}.png"))
        cv2.imwrite(paths[-1], arrays[-1])
    labels = np.eye(2, dtype=np.float32)[np.arange(8) % 2]
    data = Dataset("toy", ["a", "b"], False, np.array(paths), labels,
                   np.array([f"p{i}" for i in range(8)]), np.array(["train"] * 8), root=folder)
    return data, np.stack(arrays).astype(np.float64) / 255.0


def _epochs(ds, epochs=2):
    return [np.concatenate([x.numpy() for x, _ in ds]) for _ in range(epochs)]


def _params(angle=0.0, scale=1.0, dx=0.0, dy=0.0, brightness=0.0, contrast=1.0):
    return tf.constant([[angle, scale, dx, dy, brightness, contrast]], tf.float32)


def _apply(image, params):
    return augment_batch(tf.constant(image[None, ..., None], tf.float32), params).numpy()[0, ..., 0]


def test_affine_map_matches_numpy_rotation_shift_and_zoom():
    rng = np.random.default_rng(1)
    image = rng.random((SIZE, SIZE))
    np.testing.assert_allclose(_apply(image, identity_parameters()[None]), image, atol=1e-6)
    # A quarter turn is np.rot90 clockwise (y points down): out[r, c] = in[N - 1 - c, r].
    np.testing.assert_allclose(_apply(image, _params(angle=math.pi / 2)), np.rot90(image, -1),
                               atol=1e-5)
    # A shift of 2 pixels right and 1 down; the uncovered border repeats the edge pixel.
    shifted = _apply(image, _params(dx=2 / SIZE, dy=1 / SIZE))
    np.testing.assert_allclose(shifted[1:, 2:], image[:-1, :-2], atol=1e-5)
    np.testing.assert_allclose(shifted[0, 2:], image[0, :-2], atol=1e-5)
    # Zoom x2 about the centre: on a linear ramp bilinear sampling is exact.
    ramp = np.tile(np.arange(SIZE, dtype=np.float64) / (SIZE - 1), (SIZE, 1))
    centre = (SIZE - 1) / 2
    expected = (centre + (np.arange(SIZE) - centre) / 2) / (SIZE - 1)
    np.testing.assert_allclose(_apply(ramp, _params(scale=2.0))[5], expected, atol=1e-5)
    assert affine_transforms(_params(scale=2.0), SIZE, SIZE).shape == (1, 8)


def test_brightness_and_contrast_match_numpy_and_stay_in_range():
    image = np.random.default_rng(2).random((SIZE, SIZE))
    out = _apply(image, _params(brightness=0.15, contrast=1.2))
    np.testing.assert_allclose(out, np.clip((image - image.mean()) * 1.2 + image.mean() + 0.15,
                                            0, 1), atol=1e-5)
    assert out.max() == 1.0 and out.min() >= 0.0                   # clipped, not wrapped


def test_parameters_are_drawn_uniformly_in_the_documented_ranges():
    for name, ranges in RANGES.items():
        draws = np.stack([draw_parameters(tf.constant(7, tf.int64), i, ranges).numpy()
                          for i in range(300)])
        lows = [-math.radians(ranges.rotation_degrees), ranges.scale[0], -ranges.shift,
                -ranges.shift, -ranges.brightness, ranges.contrast[0]]
        highs = [math.radians(ranges.rotation_degrees), ranges.scale[1], ranges.shift,
                 ranges.shift, ranges.brightness, ranges.contrast[1]]
        assert (draws >= np.array(lows) - 1e-6).all() and (draws <= np.array(highs) + 1e-6).all()
        # Uniform: the mean within 4 standard errors of the midpoint.
        lows, highs = np.array(lows), np.array(highs)
        error = (highs - lows) / math.sqrt(12 * len(draws))
        assert (np.abs(draws.mean(0) - (lows + highs) / 2) < 4 * error).all()
        assert (draws.std(0) > 0.8 * (highs - lows) / math.sqrt(12)).all()
    assert RANGES["light"].rotation_degrees == 10 and RANGES["strong"].rotation_degrees == 45


def test_pipeline_augmentation_is_seeded_per_epoch_and_train_only(toy, tmp_path):
    data, originals = toy
    make = dict(image_size=SIZE, batch_size=4, normalization="zero_one")
    first = _epochs(make_dataset(data, training=True, seed=3, augment="light", **make))
    again = _epochs(make_dataset(data, training=True, seed=3, augment="light", **make))
    other = _epochs(make_dataset(data, training=True, seed=4, augment="light", **make))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)                         # same seed, same epochs
    assert not np.array_equal(first[0], first[1])                   # new draws every epoch
    assert not np.array_equal(first[0], other[0])
    assert all(0.0 <= e.min() and e.max() <= 1.0 for e in first)    # range preserved
    # Flip only: every image is an original or its mirror; light moves them off both.
    flipped = _epochs(make_dataset(data, training=True, seed=3, augment="flip", **make), 1)[0]

    views = [view for original in originals for view in (original, original[:, ::-1])]

    def nearest(images):
        return np.array([min(np.abs(x[..., 0] - view).max() for view in views) for x in images])
    assert nearest(flipped).max() < 1e-6
    assert (nearest(first[0]) > 0.02).mean() >= 0.75
    # Validation/test pipelines are the images as they are, whatever augment says.
    plain = np.concatenate([x.numpy() for x, _ in make_dataset(data, **make)])
    for augment in ("light", "strong"):
        evaluation = make_dataset(data, training=False, augment=augment, **make)
        np.testing.assert_array_equal(np.concatenate([x.numpy() for x, _ in evaluation]), plain)
    # The prepared cache path augments the same way as the files.
    cache = prepare(data, tmp_path / "cache", size=SIZE, progress=False)
    cached = _epochs(make_dataset(data, training=True, seed=3, augment="light",
                                  cache_dir=cache, **make), 1)[0]
    np.testing.assert_allclose(cached, first[0], atol=2 / 255)


def test_cached_teacher_logits_refuse_affine_augmentation_and_the_run_default(toy):
    data, _ = toy
    table = np.zeros((8, 2, 2), np.float32)
    with pytest.raises(ConfigError, match="original and the flipped view only"):
        make_dataset(data, image_size=SIZE, training=True, augment="light", teacher_logits=table)
    make_dataset(data, image_size=SIZE, training=True, augment="flip", teacher_logits=table)
    assert resolve_config(["--dataset", "folder"], BASE_DEFAULTS)["augment"] == "light"
    assert resolve_config(["--dataset", "csv"], BASE_DEFAULTS)["augment"] == "light"
    assert resolve_config([], BASE_DEFAULTS)["augment"] == "flip"
    assert resolve_config(["--dataset", "chexpert"], BASE_DEFAULTS)["augment"] == "flip"
    kd = {**BASE_DEFAULTS, **KD_DEFAULTS}
    assert resolve_config(["--dataset", "folder"], kd)["augment"] == "flip"     # cached teacher
    assert resolve_config(["--dataset", "folder", "teacher_outputs=online"], kd)["augment"] == \
        "light"
    explicit = resolve_config(["--dataset", "phantom", "--augment", "light"], kd)
    with pytest.raises(ConfigError, match="--teacher-outputs online or --augment flip"):
        check_config(explicit)
    with pytest.raises(ConfigError, match="--augment 'heavy'"):
        resolve_config(["--augment", "heavy"], BASE_DEFAULTS)
