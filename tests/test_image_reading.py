"""Real images as they come, read the same way by every consumer.

Each kind of file a user meets -- smaller than ``image_size`` (the 64 px NIH images), larger
(256 and 512 px exports), shrunk on one axis and enlarged on the other, RGB, RGBA and palette
PNGs, 16-bit PNGs, JPEGs with an EXIF orientation -- is read by the training/evaluation pipeline
on the files, by the pipeline on the prepared cache, and by ``chestkd.predict``, and each must
give the float64 reference of the one reading rule (``chestkd.data.images``): grey by BT.601
luma, area-averaged on an axis that shrinks, linearly interpolated on an axis that grows. The
upsampling report counts the enlarged images and their factors."""
import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from chestkd.data.cache import PreparedCache, prepare
from chestkd.data.dataset import Dataset
from chestkd.data.images import (read_image, read_unit_grey, source_sizes, upsampling_factor,
                                 upsampling_summary)
from chestkd.data.pipeline import make_dataset
from chestkd.predict import preprocess_file

SIZE = 32
NIH64 = sorted((Path(__file__).parent / "data" / "nih64").glob("*.png"))
# The cache stores 8-bit grey: half a grey level in [0, 1] is one 255th in [-1, 1].
CACHE_ATOL = 1.0 / 255.0 + 1e-6


def luma(bgr):
    """float64 BT.601 luma of an OpenCV (BGR) array in [0, 1]."""
    bgr = np.asarray(bgr, np.float64)
    return 0.114 * bgr[..., 0] + 0.587 * bgr[..., 1] + 0.299 * bgr[..., 2]


def area_rows(image, factor):
    """float64 area shrink of the first axis by an integer factor: block means."""
    return image.reshape(image.shape[0] // factor, factor, *image.shape[1:]).mean(axis=1)


def linear_rows(image, size):
    """float64 linear interpolation of the first axis to ``size`` with half-pixel centres and
    clamped edges (what INTER_LINEAR computes)."""
    source = image.shape[0]
    position = np.clip((np.arange(size) + 0.5) * source / size - 0.5, 0, source - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, source - 1)
    weight = (position - low)[:, None]
    return image[low] * (1 - weight) + image[high] * weight


def resize_reference(unit, size):
    """The one resize rule in float64, one axis at a time (integer shrink factors only)."""
    for axis in (0, 1):
        moved = np.moveaxis(unit, axis, 0)
        if moved.shape[0] > size:
            moved = area_rows(moved, moved.shape[0] // size)
        elif moved.shape[0] < size:
            moved = linear_rows(moved, size)
        unit = np.moveaxis(moved, 0, axis)
    return unit


def _png(folder, name, array):
    path = folder / name
    assert cv2.imwrite(str(path), array)
    return path


def _jpeg_with_orientation(folder, grey, orientation):
    """A JPEG whose stored pixels are ``grey`` and whose EXIF says how to turn them upright."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    path = folder / f"exif{orientation}.jpg"
    path.write_bytes(buffer.getvalue())
    return path


def make_kinds(folder):
    """{kind: (file, float64 expected grey (SIZE, SIZE) in [0, 1], source (h, w))}."""
    rng = np.random.default_rng(0)
    kinds = {}

    def grey(h, w):
        return rng.integers(0, 256, (h, w), dtype=np.uint8)

    def add(kind, path, unit):
        kinds[kind] = (path, resize_reference(unit, SIZE), unit.shape[:2])

    small = grey(16, 16)                                   # enlarged 2x, like 64 px at 128
    add("smaller", _png(folder, "small.png", small), small / 255.0)
    for side in (256, 512):                                # larger exports, area-averaged
        big = grey(side, side)
        add(f"larger{side}", _png(folder, f"big{side}.png", big), big / 255.0)
    mixed = grey(16, 64)                                   # rows enlarged, columns shrunk
    add("mixed_axes", _png(folder, "mixed.png", mixed), mixed / 255.0)
    bgr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    add("rgb", _png(folder, "rgb.png", bgr), luma(bgr / 255.0))
    alpha = rng.integers(0, 256, (64, 64, 1), dtype=np.uint8)   # alpha is dropped, not mixed in
    add("rgba", _png(folder, "rgba.png", np.concatenate([bgr, alpha], axis=2)),
        luma(bgr / 255.0))
    indices = rng.integers(0, 8, (64, 64), dtype=np.uint8)
    palette_rgb = rng.integers(0, 256, (8, 3), dtype=np.uint8)
    palette = Image.fromarray(indices, "P")
    palette.putpalette(palette_rgb.ravel().tolist())
    palette.save(folder / "palette.png")
    add("palette", folder / "palette.png", luma(palette_rgb[indices][..., ::-1] / 255.0))
    deep = rng.integers(0, 65536, (64, 64), dtype=np.uint16)
    add("grey16", _png(folder, "grey16.png", deep), deep / 65535.0)
    stored = np.zeros((64, 128), np.uint8)                 # landscape as stored ...
    stored[:, :32] = 255                                   # ... bright band at the left
    path = _jpeg_with_orientation(folder, stored, 6)       # 6: turn 90 degrees clockwise
    decoded = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
    upright = np.rot90(decoded, k=-1)                      # portrait, band at the top
    assert upright.shape == (128, 64) and upright[:8].mean() > 200 > upright[-8:].mean()
    add("exif_jpeg", path, upright / 255.0)
    for real in NIH64:                                     # real 64 px NIH images (RGB, RGBA)
        decoded = cv2.imread(str(real), cv2.IMREAD_UNCHANGED)
        add(f"nih64_{decoded.shape[2]}ch", real, luma(decoded[..., :3] / 255.0))
    return kinds


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    return make_kinds(tmp_path_factory.mktemp("kinds"))


@pytest.fixture(scope="module")
def consumers(kinds, tmp_path_factory):
    """{consumer: (N, SIZE, SIZE, 3) images in [-1, 1]} for the files of ``kinds`` in order."""
    paths = np.array([str(path) for path, _, _ in kinds.values()])
    n = len(paths)
    data = Dataset("kinds", ["a", "b"], True, paths, np.zeros((n, 2), np.float32),
                   np.array([f"p{i}" for i in range(n)]), np.array(["test"] * n),
                   root=Path(paths[0]).parent.parent)

    def run(**options):
        return np.concatenate([x.numpy() for x, _ in make_dataset(
            data, image_size=SIZE, batch_size=4, **options)])

    cache = prepare(data, tmp_path_factory.mktemp("cache") / "c", size=SIZE, verbose=0)
    # a cache prepared at twice the size, resized by the pipeline to SIZE
    cache64 = prepare(data, tmp_path_factory.mktemp("cache64") / "c", size=2 * SIZE, verbose=0)
    info = {"image_size": SIZE, "normalization": "minus_one_one"}
    return {"read_image": np.stack([read_image(p, SIZE) for p in paths]),
            "pipeline_files": run(),
            "pipeline_cache": run(cache_dir=cache),
            "pipeline_cache64": run(cache_dir=cache64),
            "predict": np.stack([preprocess_file(p, info) for p in paths]),
            "cache_folders": (cache, cache64), "data": data}


KINDS = ["smaller", "larger256", "larger512", "mixed_axes", "rgb", "rgba", "palette", "grey16",
         "exif_jpeg", "nih64_4ch", "nih64_3ch"]


def test_every_kind_is_generated(kinds):
    assert len(NIH64) == 2 and list(kinds) == KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_reads_as_the_reference_through_every_consumer(kinds, consumers, kind):
    row = list(kinds).index(kind)
    expected = kinds[kind][1] * 2.0 - 1.0
    for consumer in ("read_image", "pipeline_files", "predict"):
        image = consumers[consumer][row]
        assert image.shape == (SIZE, SIZE, 3), consumer
        for channel in range(3):
            np.testing.assert_allclose(image[..., channel], expected, atol=2e-5,
                                       err_msg=f"{kind} through {consumer}")
    np.testing.assert_allclose(consumers["pipeline_cache"][row][..., 0], expected,
                               atol=CACHE_ATOL, err_msg=f"{kind} through the cache")
    # a cache at 2x the size holds the image at 64 px; the pipeline shrinks it by the same
    # rule as a file of that size: the 2x2 block mean of the cached grey levels
    cache64 = PreparedCache(consumers["cache_folders"][1])
    stored = cache64.read_rows(cache64.rows_for(consumers["data"]))[row] / 255.0
    np.testing.assert_allclose(consumers["pipeline_cache64"][row][..., 0],
                               area_rows(area_rows(stored, 2).T, 2).T * 2 - 1, atol=2e-5)


def test_the_exif_orientation_is_applied(kinds, consumers):
    row = list(kinds).index("exif_jpeg")
    image = consumers["pipeline_files"][row][..., 0]
    assert image[:4].mean() > 0.8 and image[-4:].mean() < -0.8    # the band is at the top


def test_upsampling_is_counted_with_its_factors(kinds, consumers):
    sizes = [tuple(source) for _, _, source in kinds.values()]
    assert source_sizes([path for path, _, _ in kinds.values()]) == sizes
    report = upsampling_summary(sizes, SIZE)
    # enlarged: the 16 px image (2x) and the 16x64 image's rows (2x); the 64 px NIH images at
    # 32 px are shrunk
    assert report["images"] == len(KINDS) and report["upsampled"] == 2
    assert report["max_factor"] == report["median_factor"] == 2.0
    assert upsampling_factor((64, 64), 128) == 2.0 and upsampling_factor((256, 512), 128) == 1.0
    real = upsampling_summary([read_unit_grey(p, 128)[1] for p in NIH64], 128)
    assert real == {"images": 2, "upsampled": 2, "fraction_upsampled": 1.0, "max_factor": 2.0,
                    "median_factor": 2.0, "image_size": [128, 128]}
    # the cache records the source sizes: at 64 px the two 16-pixel sides are upsampled 4x
    cache = PreparedCache(consumers["cache_folders"][0])
    assert cache.source_sizes() == [list(size) for size in sizes]
    at64 = cache.upsampling(64)
    # each image holds at most the cache's 32 px of detail: read at 64, every one is enlarged
    assert at64["upsampled"] == len(KINDS) and at64["max_factor"] == 4.0
    assert at64["median_factor"] == 2.0
    assert cache.upsampling(SIZE) == report


def test_a_run_reports_its_upsampling_from_the_files_or_the_cache(kinds, consumers,
                                                                    monkeypatch):
    from chestkd.data import cache as cache_module
    from chestkd.data import images
    from chestkd.data.cache import upsampling_of
    from chestkd.data.images import describe_upsampling
    data = consumers["data"]
    on_files = upsampling_of(data, 64)
    # at 64 px: every kind smaller than 64 on an axis is upsampled, the 16 px ones 4x
    expected = upsampling_summary([source for _, _, source in kinds.values()], 64)
    assert on_files == expected and on_files["max_factor"] == 4.0
    assert on_files["upsampled"] == 2     # the 16 px image and the 16x64 one (rows)

    def refuse(*args, **kwargs):
        raise AssertionError("an image was decoded to learn its size")
    monkeypatch.setattr(images, "decode_image", refuse)    # sizes come from the headers
    assert upsampling_of(data, 64) == on_files
    monkeypatch.setattr(cache_module, "source_sizes", refuse)   # the cache opens no file
    from_cache = upsampling_of(data, 64, cache_dir=consumers["cache_folders"][1])
    assert from_cache == on_files
    line = describe_upsampling(on_files)
    assert line.startswith("2 of 11 images are smaller than the input size (64 px)")
    assert "median 4.00, max 4.00" in line
    assert "none upsampled" in describe_upsampling(upsampling_of(data, 16, consumers[
        "cache_folders"][0]))


def test_a_cache_without_recorded_sizes_reports_nothing_rather_than_failing(consumers,
                                                                            tmp_path):
    import json
    import shutil
    from chestkd.data.cache import upsampling_of
    old = tmp_path / "old_cache"
    shutil.copytree(consumers["cache_folders"][0], old)
    for marker in old.glob("shard-*.json"):          # as prepare wrote them before
        info = json.loads(marker.read_text())
        del info["source_sizes"]
        marker.write_text(json.dumps(info))
    assert upsampling_of(consumers["data"], 64, cache_dir=old) is None


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_jpeg_size_is_read_from_its_header_as_the_decoder_turns_it(tmp_path, orientation,
                                                                      mode):
    from chestkd.data.images import image_size_of
    rng = np.random.default_rng(orientation)
    shape = (20, 37) if mode == "L" else (20, 37, 3)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "turned.jpg"
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
        path, "JPEG", exif=exif.tobytes(), progressive=orientation % 2 == 0)
    upright = read_unit_grey(path, 8)[1]
    assert image_size_of(path) == (upright[1], upright[0])
    assert upright == ((37, 20) if orientation >= 5 else (20, 37))


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("after_the_image_data", [False, True])
def test_a_png_size_is_turned_as_its_exif_chunk_turns_the_decoded_image(
        tmp_path, orientation, after_the_image_data):
    # Regression: the size came from the IHDR header alone, but OpenCV turns a PNG by its
    # eXIf chunk, so boxes and the upsampling report used width and height swapped.
    from chestkd.data.images import image_size_of
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((20, 37), np.uint8)).save(buffer, "PNG", exif=exif.tobytes())
    data, chunks, position = buffer.getvalue(), [], 8
    while position < len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        chunks.append(data[position:position + 12 + length])
        position += 12 + length
    if after_the_image_data:                       # eXIf may follow IDAT; OpenCV reads it
        exif_chunk = next(c for c in chunks if c[4:8] == b"eXIf")
        chunks.remove(exif_chunk)
        chunks.insert(len(chunks) - 1, exif_chunk)
    path = tmp_path / "turned.png"
    path.write_bytes(data[:8] + b"".join(chunks))
    upright = read_unit_grey(path, 8)[1]
    assert image_size_of(path) == (upright[1], upright[0])
    assert upright == ((37, 20) if orientation >= 5 else (20, 37))
