"""The tf.data pipeline: decoding, normalisation, flips, determinism, teacher lookup, cache."""
import cv2
import numpy as np
import pytest

from chestkd.data.cache import PreparedCache, prepare
from chestkd.data.dataset import Dataset
from chestkd.data.pipeline import make_dataset
from chestkd.errors import ConfigError, DataError

SIZE = 16


def _dataset(tmp_path, n=10, size=SIZE, kinds=("gray",)):
    rng = np.random.default_rng(0)
    paths, arrays = [], []
    for i in range(n):
        gray = rng.integers(0, 256, (size, size), dtype=np.uint8)
        kind = kinds[i % len(kinds)]
        if kind == "gray":
            image = gray
        elif kind == "rgb":
            image = np.repeat(gray[..., None], 3, axis=2)
        elif kind == "rgba":
            image = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
        elif kind == "gray16":
            image = gray.astype(np.uint16) * 257
        path = tmp_path / f"img{i:03d}.png"
        cv2.imwrite(str(path), image)
        paths.append(str(path))
        arrays.append(gray)
    labels = (rng.random((n, 3)) < 0.4).astype(np.float32)
    split = np.array(["train"] * (n - 2) + ["test"] * 2)
    data = Dataset("toy", ["a", "b", "c"], True, np.array(paths), labels,
                   np.array([f"p{i}" for i in range(n)]), split, root=tmp_path)
    return data, np.stack(arrays)


def _collect(ds):
    xs, ys = [], []
    for x, y in ds:
        xs.append(x if not isinstance(x, dict) else x)
        ys.append(y.numpy())
    return xs, np.concatenate(ys)


@pytest.mark.parametrize("kinds", [("gray",), ("rgb",), ("rgba",), ("gray16",)])
def test_decoding_any_channel_count_and_depth_to_minus_one_one(tmp_path, kinds):
    data, arrays = _dataset(tmp_path, kinds=kinds)
    ds = make_dataset(data, image_size=SIZE, batch_size=4, training=False)
    images = np.concatenate([x.numpy() for x, _ in ds])
    expected = arrays.astype(np.float64) / 255.0 * 2 - 1
    assert images.shape == (10, SIZE, SIZE, 3)
    for c in range(3):
        np.testing.assert_allclose(images[..., c], expected, atol=1e-5)


def test_resize_uses_area_interpolation(tmp_path):
    data, arrays = _dataset(tmp_path, size=32)
    images = np.concatenate([x.numpy() for x, _ in make_dataset(data, image_size=16,
                                                                  batch_size=10)])
    # Area downscaling by 2 is the mean of each 2x2 block.
    blocks = arrays.astype(np.float64).reshape(10, 16, 2, 16, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(images[..., 0], blocks / 255.0 * 2 - 1, atol=1e-5)


def test_training_order_and_flips_are_seeded_and_flips_are_left_right(tmp_path):
    data, arrays = _dataset(tmp_path)
    first = make_dataset(data, "train", image_size=SIZE, batch_size=3, training=True, seed=7)
    second = make_dataset(data, "train", image_size=SIZE, batch_size=3, training=True, seed=7)
    run_a = [x.numpy() for x, _ in first]
    run_b = [x.numpy() for x, _ in second]
    for a, b in zip(run_a, run_b):
        np.testing.assert_array_equal(a, b)
    # each image is one of the originals, flipped or not; both happen
    originals = arrays[:8].astype(np.float64) / 255.0 * 2 - 1
    flipped = 0
    for image in np.concatenate(run_a)[..., 0]:
        same = [np.allclose(image, o, atol=1e-5) for o in originals]
        mirrored = [np.allclose(image, o[:, ::-1], atol=1e-5) for o in originals]
        assert any(same) or any(mirrored)
        flipped += any(mirrored)
    assert 0 < flipped < 8
    # a second epoch reshuffles
    epoch2 = np.concatenate([x.numpy() for x, _ in first])
    assert not np.array_equal(epoch2, np.concatenate(run_a))
    different_seed = np.concatenate([x.numpy() for x, _ in make_dataset(
        data, "train", image_size=SIZE, batch_size=3, training=True, seed=8)])
    assert not np.array_equal(different_seed, np.concatenate(run_a))


def test_cached_teacher_logits_follow_each_image_and_its_flip(tmp_path):
    data, arrays = _dataset(tmp_path)
    train = data.subset("train")
    originals = arrays[:8].astype(np.float64) / 255.0 * 2 - 1
    table = np.zeros((8, 2, 3), np.float32)
    table[:, 0, 0] = np.arange(8)          # original view: logit 0 = index
    table[:, 1, 0] = np.arange(8) + 100    # flipped view
    ds = make_dataset(train, image_size=SIZE, batch_size=4, training=True, seed=3,
                      teacher_logits=table)
    for x, y in ds:
        for image, t, label in zip(x["image"].numpy(), x["teacher_logits"].numpy(), y.numpy()):
            index = int(t[0]) % 100
            view = originals[index] if t[0] < 100 else originals[index][:, ::-1]
            np.testing.assert_allclose(image[..., 0], view, atol=1e-5)
            np.testing.assert_array_equal(label, train.labels[index])


def test_unknown_labels_become_minus_one(tmp_path):
    data, _ = _dataset(tmp_path)
    data.mask[0, 1] = 0
    _, y = _collect(make_dataset(data, image_size=SIZE, batch_size=4))
    assert y[0, 1] == -1
    np.testing.assert_array_equal(np.delete(y[0], 1), np.delete(data.labels[0], 1))


def test_prepared_cache_matches_raw_files_and_resumes(tmp_path):
    (tmp_path / "imgs").mkdir()
    data, arrays = _dataset(tmp_path / "imgs", kinds=("gray", "rgb", "rgba", "gray16"))
    out = prepare(data, tmp_path / "cache", size=SIZE, shard_size=4, progress=False)
    cache = PreparedCache(out)
    np.testing.assert_array_equal(cache.read_rows(cache.rows_for(data)), arrays)
    raw = make_dataset(data, "train", image_size=SIZE, batch_size=3, training=True, seed=1)
    cached = make_dataset(data, "train", image_size=SIZE, batch_size=3, training=True, seed=1,
                          cache_dir=out)
    for (a, ya), (b, yb) in zip(raw, cached):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    # interrupted run: drop the last shard's marker; prepare again rewrites only that shard
    (out / "shard-00002.json").unlink()
    before = (out / "shard-00000.npy").stat().st_mtime_ns
    prepare(data, out, size=SIZE, shard_size=4, progress=False)
    assert (out / "shard-00002.json").exists()
    assert (out / "shard-00000.npy").stat().st_mtime_ns == before
    # a cache of other settings is refused, not overwritten
    with pytest.raises(DataError, match="other images or settings"):
        prepare(data, out, size=SIZE * 2, shard_size=4, progress=False)


def test_prepare_reports_or_skips_bad_images(tmp_path):
    data, _ = _dataset(tmp_path)
    (tmp_path / "img003.png").write_bytes(b"")
    with pytest.raises(DataError, match="img003.png.*empty"):
        prepare(data, tmp_path / "cache1", size=SIZE, progress=False)
    out = prepare(data, tmp_path / "cache2", size=SIZE, progress=False, skip_bad_images=True)
    skipped = (out / "skipped.csv").read_text()
    assert "img003.png" in skipped and "empty" in skipped
    with pytest.raises(DataError, match="img003.png"):
        PreparedCache(out).rows_for(data)


def test_bad_options_are_named(tmp_path):
    data, _ = _dataset(tmp_path)
    with pytest.raises(ConfigError, match="normalization"):
        make_dataset(data, normalization="zscore")
    with pytest.raises(ConfigError, match="teacher_logits"):
        make_dataset(data, "train", teacher_logits=np.zeros((3, 2, 3)))
    with pytest.raises(DataError, match="'val' split is empty"):
        make_dataset(data, "val")


def test_mean_std_normalization_standardises_pixels(tmp_path):
    from chestkd.data.pipeline import estimate_mean_std
    data, arrays = _dataset(tmp_path)
    mean, std = estimate_mean_std(data, image_size=SIZE)
    pixels = arrays[:8].astype(np.float64) / 255.0
    assert mean == pytest.approx(pixels.mean(), abs=1e-5)
    assert std == pytest.approx(pixels.std(), abs=1e-5)
    images = np.concatenate([x.numpy() for x, _ in make_dataset(
        data, "train", image_size=SIZE, batch_size=8, normalization="mean_std",
        mean_std=(mean, std))])
    assert images.mean() == pytest.approx(0.0, abs=1e-4)
    assert images.std() == pytest.approx(1.0, abs=1e-4)


def test_prepare_and_teacher_tables_show_progress_only_when_asked(tmp_path, capsys,
                                                                 monkeypatch):
    import keras

    import chestkd.data.images as images
    from chestkd.training.teacher_cache import load_or_compute, teacher_logits_table
    data, _ = _dataset(tmp_path)
    monkeypatch.setattr(images, "PROGRESS_MIN_ITEMS", 4)   # 8 training images count as "long"
    prepare(data, tmp_path / "quiet", size=SIZE, verbose=0)
    assert capsys.readouterr().out == ""
    prepare(data, tmp_path / "loud", size=SIZE, shard_size=4)
    assert "10/10" in capsys.readouterr().out              # images written, not 3 full shards
    teacher = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(),
                                keras.layers.Dense(3)])
    table = teacher_logits_table(teacher, data, image_size=SIZE, batch_size=4, verbose=0)
    assert table.shape == (8, 2, 3) and capsys.readouterr().out == ""
    path = tmp_path / "teacher_logits_train.npy"
    np.testing.assert_allclose(load_or_compute(path, teacher, data, image_size=SIZE,
                                               batch_size=4), table, atol=1e-5)
    assert "8/8" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".npy") == [path.name]
    np.testing.assert_allclose(np.load(path), table, atol=1e-5)


@pytest.mark.parametrize("augment", ["flip", "light"])
def test_images_kept_in_memory_give_the_same_batches_and_are_read_once(tmp_path, monkeypatch,
                                                                       augment):
    from chestkd.data import pipeline
    data, _ = _dataset(tmp_path, size=24)
    reads = []
    real_read_files = pipeline.read_files
    monkeypatch.setattr(pipeline, "read_files",
                        lambda paths, size: reads.extend(paths) or real_read_files(paths, size))
    options = dict(image_size=SIZE, batch_size=3, training=True, seed=3, augment=augment)
    kept = make_dataset(data, "train", in_memory=True, **options)
    read = make_dataset(data, "train", in_memory=False, **options)
    for epoch in range(3):  # the same images, order, flips and affine maps every epoch
        for (a, ya), (b, yb) in zip(kept, read):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
            np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    # 8 training images: read once each by the kept pipeline, every epoch by the other
    assert len(reads) == 8 + 3 * 8
    assert sorted(set(reads)) == sorted(p.encode() for p in data.subset("train").paths)
    monkeypatch.setattr(pipeline, "IN_MEMORY_BYTES", 8 * SIZE * SIZE * 4 - 1)
    reads.clear()
    over_the_limit = make_dataset(data, "train", **options)
    for _ in range(2):
        list(over_the_limit)  # read each epoch
    assert len(reads) == 2 * 8
    monkeypatch.setattr(pipeline, "IN_MEMORY_BYTES", 8 * SIZE * SIZE * 4)
    reads.clear()
    within_the_limit = make_dataset(data, "train", **options)
    for _ in range(2):
        list(within_the_limit)  # read once
    assert len(reads) == 8
