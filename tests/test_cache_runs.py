"""A run on a prepared cache reads the cache only: no original image is listed or opened."""
import copy

import cv2
import numpy as np
import pytest

import chestkd.data.cache
import chestkd.data.chestxray14
import chestkd.data.images
from chestkd.data import load_dataset
from chestkd.data.cache import PreparedCache, prepare
from chestkd.data.phantom import write_phantom
from chestkd.data.pipeline import make_dataset
from chestkd.errors import DataError
from chestkd.training.config import BASE_DEFAULTS
from chestkd.training.classifier import load_run_data

SIZE = 32


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(phantom folder, its dataset, cache folder, original pixels by path); every original
    PNG is corrupted once the cache is prepared."""
    root = tmp_path_factory.mktemp("cache_runs")
    phantom = write_phantom(root / "phantom", images=40, size=SIZE, seed=6, workers=1)
    data = load_dataset("phantom", phantom)
    cache = prepare(data, root / "cache", size=SIZE, workers=1, verbose=0)
    pixels = {path: cv2.imread(path, cv2.IMREAD_UNCHANGED) for path in data.paths}
    for path in (phantom / "images").glob("*.png"):
        path.write_bytes(b"not an image any more")
    return phantom, data, cache, pixels


def no_raw_images(monkeypatch):
    """Fail on any attempt to check, read, decode, size or list an original image."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"an original image was touched: {args[:1]}")
    for module in (chestkd.data.images, chestkd.data.cache, chestkd.data.chestxray14):
        for name in ("check_image_file", "decode_image", "read_bytes", "image_size_of",
                     "verify_images", "locate_images"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)


def _config(phantom, cache, **changes):
    config = copy.deepcopy(BASE_DEFAULTS)
    config.update(dataset="phantom", data_dir=str(phantom), cache_dir=str(cache),
                  check_images=True, **changes)
    return config


def test_a_cache_run_reads_only_the_cache(prepared, tmp_path, monkeypatch):
    phantom, data, cache, pixels = prepared
    no_raw_images(monkeypatch)
    run_data = load_run_data(_config(phantom, cache), tmp_path)
    np.testing.assert_array_equal(run_data.paths, data.paths)
    np.testing.assert_array_equal(run_data.labels, data.labels)
    assert run_data.meta["on_disk"].all()                # "readable": held by the cache
    assert (run_data.boxes[["width", "height"]] == 1024).all().all()  # release box space
    batches = make_dataset(run_data, "train", image_size=SIZE, batch_size=8,
                           normalization="zero_one", cache_dir=cache)
    images = np.concatenate([x.numpy()[..., 0] for x, _ in batches])
    expected = np.stack([pixels[path] for path in run_data.subset("train").paths]) / 255.0
    np.testing.assert_allclose(images, expected, atol=1e-6)   # the pixels of the originals


def test_the_cache_must_hold_every_image(prepared, tmp_path, monkeypatch):
    phantom, data, cache, _ = prepared
    # A cache of the first 30 images (its shards copied from the full cache: the PNGs are
    # corrupt now, and no raw file may be opened anyway).
    stored = PreparedCache(cache)
    part = data.select(np.arange(30))
    monkeypatch.setattr(chestkd.data.cache, "load_gray_uint8",
                        lambda path, size: (stored.read_rows(stored.rows_for(
                            data.select(np.flatnonzero(data.paths == path))))[0], (size, size)))
    partial = prepare(part, tmp_path / "partial", size=SIZE, workers=1, verbose=0)
    no_raw_images(monkeypatch)
    missing = data.meta["image"].iloc[30]
    with pytest.raises(DataError, match=rf"partial.*10 of the 40.*{missing}"):
        load_run_data(_config(phantom, partial), tmp_path)


def test_images_prepare_skipped_are_an_error_or_skipped_from_the_cache(tmp_path, monkeypatch):
    phantom = write_phantom(tmp_path / "phantom", images=40, size=SIZE, seed=6, workers=1)
    data = load_dataset("phantom", phantom)
    bad = [str(p) for p in data.subset("train").paths[:2]]
    for path in bad:
        open(path, "wb").close()                               # empty: unreadable
    cache = prepare(data, tmp_path / "cache", size=SIZE, workers=1, verbose=0,
                    skip_bad_images=True)
    for path in (phantom / "images").glob("*.png"):
        path.write_bytes(b"")                                  # the originals are gone now
    with pytest.raises(DataError, match=r"cache.*skipped when the cache was prepared"):
        load_run_data(_config(phantom, cache), tmp_path)
    no_raw_images(monkeypatch)
    run_data = load_run_data(_config(phantom, cache, skip_bad_images=True), tmp_path)
    assert len(run_data) == 38 and not set(bad) & set(run_data.paths)
    skipped = (tmp_path / "skipped.csv").read_text()
    assert all(path in skipped for path in bad) and "empty" in skipped


def test_an_incomplete_or_damaged_cache_is_refused_on_opening(prepared, tmp_path):
    # Regression: a cache that prepare left unfinished (stopped on a bad image, or copied in
    # part to Drive) was accepted, and the run failed with a FileNotFoundError or inside
    # tf.data ("EOF: reading array header").
    import shutil
    _, _, cache, _ = prepared
    for damage, message in (("marker", "shard 0 is incomplete"),
                            ("shard", "shard-00000.npy: not readable"),
                            ("meta", "cache.json: not readable")):
        copy = tmp_path / damage
        shutil.copytree(cache, copy)
        if damage == "marker":
            (copy / "shard-00000.json").unlink()
        elif damage == "shard":
            data = (copy / "shard-00000.npy").read_bytes()
            (copy / "shard-00000.npy").write_bytes(data[:90])
        else:
            (copy / "cache.json").write_text('{"size": 32,')
        with pytest.raises(DataError, match=message):
            PreparedCache(copy)
    PreparedCache(cache)  # the complete one opens
