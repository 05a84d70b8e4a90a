"""Image reading and checking: chestkd.data.images."""

import cv2
import numpy as np
import pandas as pd
import pytest

from chestkd.data.dataset import Dataset
from chestkd.data.images import (check_image_file, image_size_of, preprocess, read_image,
                                 screen_images, to_unit_grey, verify_images)
from chestkd.errors import ConfigError, DataError


def block_mean(image, factor):
    """float64 reference of INTER_AREA for an integer shrink factor: the mean of each block."""
    h, w = image.shape[:2]
    blocks = image.reshape(h // factor, factor, w // factor, factor, *image.shape[2:])
    return blocks.astype(np.float64).mean(axis=(1, 3))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def write(path, array):
    assert cv2.imwrite(str(path), array)
    return str(path)


def test_gray_8bit_is_scaled_by_255_and_block_averaged(tmp_path, rng):
    gray = rng.integers(0, 256, size=(16, 24), dtype=np.uint8)
    path = write(tmp_path / "gray.png", gray)
    image = read_image(path, (8, 12))
    expected = block_mean(gray / 255.0, 2) * 2.0 - 1.0
    assert image.dtype == np.float32 and image.shape == (8, 12, 3)
    for channel in range(3):           # gray repeated on all three channels
        np.testing.assert_allclose(image[:, :, channel], expected, atol=1e-5)


def test_gray_16bit_is_scaled_by_65535(tmp_path, rng):
    gray = rng.integers(0, 65536, size=(8, 8), dtype=np.uint16)
    path = write(tmp_path / "gray16.png", gray)
    assert cv2.imread(path, cv2.IMREAD_UNCHANGED).dtype == np.uint16
    image = read_image(path, 8)
    np.testing.assert_allclose(image[:, :, 0], gray / 65535.0 * 2 - 1, atol=1e-6)
    zero_one = read_image(path, 8, normalization="zero_one")
    np.testing.assert_allclose(zero_one[:, :, 1], gray / 65535.0, atol=1e-6)


def luma(rgb):
    """float64 reference of the colour rule: ITU-R BT.601 luma of R, G, B in [0, 1]."""
    rgb = np.asarray(rgb, np.float64)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def test_colour_png_is_read_as_its_luma_on_three_channels(tmp_path, rng):
    rgb = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    path = write(tmp_path / "rgb.png", rgb[:, :, ::-1])     # OpenCV writes BGR
    image = read_image(path, 8)
    for channel in range(3):
        np.testing.assert_allclose(image[:, :, channel], luma(rgb / 255.0) * 2 - 1, atol=1e-5)
    # an RGB copy of a grey radiograph (equal channels) reads exactly as the grey file
    grey = rgb[:, :, 0]
    copy = write(tmp_path / "copy.png", np.repeat(grey[:, :, None], 3, axis=2))
    np.testing.assert_allclose(read_image(copy, 8)[:, :, 0], grey / 255.0 * 2 - 1, atol=1e-6)


def test_rgba_drops_alpha_and_keeps_the_colour_luma(tmp_path, rng):
    rgb = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    alpha = np.full((8, 8, 1), 7, dtype=np.uint8)
    path = write(tmp_path / "rgba.png", np.concatenate([rgb[:, :, ::-1], alpha], axis=2))
    image = read_image(path, (4, 4))
    np.testing.assert_allclose(image[:, :, 1], block_mean(luma(rgb / 255.0), 2) * 2 - 1,
                               atol=1e-5)


def test_gray_alpha_and_single_channel_arrays_give_gray():
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    with_alpha = np.stack([gray, np.full_like(gray, 255)], axis=2)
    np.testing.assert_allclose(to_unit_grey(with_alpha), gray / 255.0, atol=1e-7)
    np.testing.assert_allclose(to_unit_grey(gray[:, :, None]), gray / 255.0, atol=1e-7)
    out = preprocess(with_alpha, 4)
    assert np.array_equal(out[:, :, 0], out[:, :, 2])


def test_enlarging_stays_in_range_and_imagenet_normalisation_matches_formula(rng):
    gray = rng.integers(0, 256, size=(4, 4), dtype=np.uint8)
    big = preprocess(gray, 9)
    assert big.shape == (9, 9, 3) and big.min() >= -1.0 and big.max() <= 1.0
    rgb = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (luma(rgb[:, :, ::-1] / 255.0)[..., None] - mean) / std   # the array is BGR
    np.testing.assert_allclose(preprocess(rgb, 4, "imagenet"), expected, atol=1e-5)
    with pytest.raises(ConfigError, match="normalization 'bogus'"):
        preprocess(rgb, 4, "bogus")


def test_image_size_of_reads_png_header_and_decodes_other_formats(tmp_path, rng):
    png = write(tmp_path / "a.png", rng.integers(0, 256, size=(30, 50), dtype=np.uint8))
    jpg = write(tmp_path / "a.jpg", rng.integers(0, 256, size=(21, 13, 3), dtype=np.uint8))
    assert image_size_of(png) == (50, 30)
    assert image_size_of(jpg) == (13, 21)
    with pytest.raises(DataError, match="nothere.png: missing file"):
        image_size_of(tmp_path / "nothere.png")


@pytest.fixture
def bad_images(tmp_path, rng):
    """One good image of each kind and one bad image of each kind of defect."""
    gray = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
    good_png = write(tmp_path / "good.png", gray)
    good_jpg = write(tmp_path / "good.jpg", np.stack([gray] * 3, axis=2))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    data = open(good_png, "rb").read()
    truncated_png = tmp_path / "truncated.png"
    truncated_png.write_bytes(data[: len(data) - 20])          # cuts off the IEND chunk
    data = open(good_jpg, "rb").read()
    truncated_jpg = tmp_path / "truncated.jpg"
    truncated_jpg.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all")
    return {"good_png": good_png, "good_jpg": good_jpg, "missing": str(tmp_path / "missing.png"),
            "empty": str(empty), "truncated_png": str(truncated_png),
            "truncated_jpg": str(truncated_jpg), "garbage": str(garbage)}


@pytest.mark.parametrize("kind, reason", [
    ("missing", "missing file"), ("empty", "empty file"),
    ("truncated_png", "truncated PNG"), ("truncated_jpg", "truncated JPEG"),
    ("garbage", "cannot decode image")])
def test_each_defect_raises_naming_the_file_and_reason(bad_images, kind, reason):
    assert check_image_file(bad_images[kind]).startswith(reason)
    paths = [bad_images["good_png"], bad_images[kind], bad_images["good_jpg"]]
    with pytest.raises(DataError) as error:
        verify_images(paths, workers=2)
    assert bad_images[kind] in str(error.value) and reason in str(error.value)


def test_skip_returns_the_mask_and_the_reasons_in_path_order(bad_images):
    order = ["good_png", "missing", "empty", "good_jpg", "truncated_png", "truncated_jpg",
             "garbage"]
    ok, bad = verify_images([bad_images[k] for k in order], skip=True, workers=3)
    assert ok.tolist() == [True, False, False, True, False, False, False]
    assert bad["path"].tolist() == [bad_images[k] for k in order if not k.startswith("good")]
    assert bad["reason"].str.startswith("missing file").sum() == 1
    assert bad["reason"].iloc[-1].startswith("cannot decode image")


def test_read_image_names_missing_and_undecodable_files(bad_images):
    with pytest.raises(DataError, match="missing.png: missing file"):
        read_image(bad_images["missing"], 8)
    with pytest.raises(DataError, match="garbage.png: cannot decode"):
        read_image(bad_images["garbage"], 8)


def test_screen_images_drops_bad_rows_into_skipped(bad_images):
    paths = [bad_images[k] for k in ("good_png", "garbage", "good_jpg", "missing")]
    data = Dataset(name="t", class_names=["a", "b"], multi_label=False, paths=paths,
                   labels=np.eye(2)[[0, 1, 1, 0]], patients=["p1", "p2", "p3", "p4"],
                   split=["train", "train", "val", "test"])
    assert screen_images(data) is data                       # no check asked: untouched
    with pytest.raises(DataError, match="garbage.png"):
        screen_images(data, check_images=True)
    kept = screen_images(data, skip_bad_images=True)
    assert kept.paths.tolist() == [paths[0], paths[2]]
    np.testing.assert_array_equal(kept.labels, np.eye(2)[[0, 1]])
    assert kept.split.tolist() == ["train", "val"]           # splits of kept rows unchanged
    assert kept.skipped["path"].tolist() == [paths[1], paths[3]]
    assert list(kept.skipped.columns) == ["path", "reason"]


def test_thread_pool_gives_same_answer_as_one_worker(bad_images):
    paths = list(bad_images.values()) * 3
    ok1, bad1 = verify_images(paths, skip=True, workers=1)
    ok4, bad4 = verify_images(paths, skip=True, workers=4)
    np.testing.assert_array_equal(ok1, ok4)
    pd.testing.assert_frame_equal(bad1, bad4)
    with pytest.raises(ConfigError, match="workers"):
        verify_images(paths, workers=0)


def test_progress_bar_only_for_more_than_a_trivial_amount_of_work(monkeypatch):
    import chestkd.data.images as images
    assert images.progress_bar(10 ** 6, verbose=0) is None
    assert images.progress_bar(images.PROGRESS_MIN_ITEMS - 1) is None
    assert images.progress_bar(images.PROGRESS_MIN_ITEMS) is not None
    monkeypatch.setattr(images, "PROGRESS_MIN_ITEMS", 5)
    assert images.progress_bar(5) is not None


def test_verify_images_shows_progress_unless_quiet(tmp_path, capsys):
    from chestkd.data.images import PROGRESS_MIN_ITEMS
    paths = [tmp_path / f"missing{i}.png" for i in range(PROGRESS_MIN_ITEMS)]
    ok, bad = verify_images(paths, skip=True, workers=2, verbose=0)
    assert not ok.any() and len(bad) == len(paths) and capsys.readouterr().out == ""
    verify_images(paths, skip=True, workers=2)
    assert f"{PROGRESS_MIN_ITEMS}/{PROGRESS_MIN_ITEMS}" in capsys.readouterr().out
    verify_images(paths[:10], skip=True, workers=2)          # a trivial amount: no bar
    assert capsys.readouterr().out == ""
