"""Reading and checking image files.

One reading rule for every consumer -- the tf.data pipeline (training and evaluation), the
prepared cache, ``python -m chestkd.predict`` and saliency overlays all call
:func:`read_unit_grey` (through :func:`read_image`):

1. decode with OpenCV (``IMREAD_ANYDEPTH | IMREAD_ANYCOLOR``): 16-bit files keep their depth,
   a JPEG's EXIF orientation is applied (the image is read upright, as a viewer shows it),
   palette PNGs are expanded and an alpha channel is dropped (radiographs are opaque: the 11
   RGBA images of the NIH 64 px set all have alpha 255);
2. to ``[0, 1]`` by the dtype's maximum, ``u = x / max`` (255 for 8-bit, 65535 for 16-bit);
3. colour to grey: ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601 luma). Radiographs are grey;
   an RGB copy with equal channels reads as that channel (the weights sum to 1). One channel is
   what the prepared cache stores, so a cached run sees the same image as a run on the files;
4. resize to ``H x W`` per axis: an axis that shrinks is averaged (``INTER_AREA``: each target
   pixel is the mean of the source pixels it covers, so thin structures are not aliased), an
   axis that grows is interpolated (``INTER_LINEAR``). Non-square images are stretched: chest
   radiographs are close to square and all the ImageNet backbones expect a square input.
   :func:`read_unit_grey` also returns the source size, so a caller can report upsampling
   (:func:`upsampling_summary`);
5. repeat the grey image on 3 channels and normalise: ``minus_one_one`` gives ``2u - 1`` in
   ``[-1, 1]``, ``zero_one`` gives ``u``, ``imagenet`` gives ``(u - mean) / std`` per channel.

:func:`verify_images` finds missing, empty, truncated and undecodable files before a run
starts, so a long training does not die on image 80,000. Long steps outside ``fit`` (this
check, ``prepare``, teacher tables) show a ``keras.utils.Progbar`` (:func:`progress_bar`).
"""
from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from chestkd.errors import ConfigError, DataError

NORMALIZATIONS = ("minus_one_one", "zero_one", "imagenet")
# The image files a folder of images holds, by extension (class folders, predict's folders).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END_CHUNK = b"IEND"
JPEG_START = b"\xff\xd8\xff"
JPEG_END_MARKER = b"\xff\xd9"
# An end marker must lie in the last bytes of the file; a few bytes of padding after it are
# tolerated because some encoders write them.
END_MARKER_WINDOW = 64

# Below this many items a step is quick and shows no progress bar.
PROGRESS_MIN_ITEMS = 1000

SKIP_HINT = "use skip_bad_images=True (--skip-bad-images) to leave bad images out and list them"


def read_bytes(path) -> bytes:
    """The file's bytes; DataError naming the file if it is missing, unreadable or empty."""
    reason, data = _read(path)
    if reason is not None:
        raise DataError(f"bad image {path}: {reason}")
    return data


def _read(path) -> tuple[str | None, bytes]:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return "missing file", b""
    except IsADirectoryError:
        return "is a directory, not an image file", b""
    except OSError as error:
        return f"cannot read file ({error.strerror or error})", b""
    if not data:
        return "empty file", b""
    return None, data


# ANYDEPTH keeps 16 bit, ANYCOLOR keeps grey as one channel and drops alpha, and any flag other
# than IMREAD_UNCHANGED makes OpenCV apply a JPEG's EXIF orientation.
DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
# ITU-R BT.601 luma weights of R, G, B (what cv2.COLOR_RGB2GRAY uses); they sum to 1.
LUMA_RGB = (0.299, 0.587, 0.114)


def decode_image(data: bytes, path="<bytes>") -> np.ndarray:
    """Decode encoded image bytes with OpenCV: (H, W) grey or (H, W, 3) BGR, EXIF-upright,
    8 or 16 bit, no alpha (step 1 of the module doc)."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), DECODE_FLAGS)
    if image is None or image.size == 0:
        raise DataError(f"bad image {path}: cannot decode image (not a valid image file)")
    return image


def to_unit_grey(image: np.ndarray) -> np.ndarray:
    """Decoded OpenCV image -> float32 (H, W) grey in [0, 1] (steps 2-3 of the module doc).

    Takes (H, W), (H, W, 1), gray+alpha (H, W, 2), BGR (H, W, 3) or BGRA (H, W, 4), so arrays
    decoded elsewhere follow the same rule. Integer images are divided by their dtype's maximum;
    float images are taken as [0, 1].
    """
    if image.ndim == 3 and image.shape[2] in (1, 2):     # grey (+ alpha)
        image = image[:, :, 0]
    elif image.ndim == 3 and image.shape[2] in (3, 4):   # BGR (+ alpha)
        image = image[:, :, :3]
    elif image.ndim != 2:
        raise DataError(f"unsupported image shape {image.shape}")
    if np.issubdtype(image.dtype, np.integer):
        unit = np.asarray(image, dtype=np.float32) / np.float32(np.iinfo(image.dtype).max)
    else:
        unit = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if unit.ndim == 3:
        blue, green, red = (unit[:, :, c] for c in range(3))
        unit = (np.float32(LUMA_RGB[0]) * red + np.float32(LUMA_RGB[1]) * green
                + np.float32(LUMA_RGB[2]) * blue)
        np.clip(unit, 0.0, 1.0, out=unit)   # equal channels may round a hair above 1
    return np.ascontiguousarray(unit, dtype=np.float32)


def _size_pair(image_size) -> tuple[int, int]:
    """``S`` or ``(height, width)`` -> (height, width)."""
    if isinstance(image_size, (int, np.integer)):
        height = width = int(image_size)
    else:
        height, width = (int(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise ConfigError(f"image_size must be positive, got {image_size!r}")
    return height, width


def resize_unit(unit: np.ndarray, image_size) -> np.ndarray:
    """Resize a float image to ``image_size`` (step 4 of the module doc): the one resize rule.

    Axes that shrink are area-averaged first, then axes that grow are linearly interpolated;
    an image shrunk on one axis and enlarged on the other gets each on its own axis.
    """
    height, width = _size_pair(image_size)
    source = unit.shape[:2]
    middle = (min(source[0], height), min(source[1], width))
    if middle != source:
        unit = cv2.resize(unit, (middle[1], middle[0]), interpolation=cv2.INTER_AREA)
    if middle != (height, width):
        unit = cv2.resize(unit, (width, height), interpolation=cv2.INTER_LINEAR)
    # INTER_LINEAR cannot leave the source range and INTER_AREA is an average: the clip only
    # undoes float rounding.
    return np.clip(unit, 0.0, 1.0) if unit.dtype.kind == "f" else unit


def read_unit_grey(path, image_size) -> tuple[np.ndarray, tuple[int, int]]:
    """The one reading function: ``(grey, (source_height, source_width))``.

    ``grey`` is float32 (H, W) in [0, 1] at ``image_size`` (steps 1-4 of the module doc); the
    source size is the upright decoded size, for :func:`upsampling_summary`. DataError names
    the file if it is missing, empty or cannot be decoded.
    """
    unit = to_unit_grey(decode_image(read_bytes(path), path))
    return resize_unit(unit, image_size), (int(unit.shape[0]), int(unit.shape[1]))


def normalize_unit(grey: np.ndarray, normalization: str = "minus_one_one") -> np.ndarray:
    """Grey (H, W) in [0, 1] -> float32 (H, W, 3) model input (step 5 of the module doc)."""
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {normalization!r}; "
                          f"choose one of {NORMALIZATIONS}")
    unit = np.repeat(np.asarray(grey, np.float32)[:, :, None], 3, axis=2)
    if normalization == "minus_one_one":
        return unit * np.float32(2.0) - np.float32(1.0)
    if normalization == "imagenet":
        return (unit - IMAGENET_MEAN) / IMAGENET_STD
    return unit


def preprocess(image: np.ndarray, image_size, normalization: str = "minus_one_one") -> np.ndarray:
    """Decoded OpenCV image -> float32 (H, W, 3) model input (steps 2-5 of the module doc)."""
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {normalization!r}; "
                          f"choose one of {NORMALIZATIONS}")
    return normalize_unit(resize_unit(to_unit_grey(image), image_size), normalization)


def read_image(path, image_size, normalization: str = "minus_one_one") -> np.ndarray:
    """Read an image file as a float32 (H, W, 3) model input, by default in [-1, 1].

    ``image_size`` is ``S`` or ``(height, width)``. DataError names the file if it is missing,
    empty or cannot be decoded. Same pixels as the training pipeline and the cache.
    """
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {normalization!r}; "
                          f"choose one of {NORMALIZATIONS}")
    return normalize_unit(read_unit_grey(path, image_size)[0], normalization)


def upsampling_factor(source_size, image_size) -> float:
    """How much an image of ``source_size`` (height, width) is enlarged to reach
    ``image_size``: the largest per-axis ratio target / source, or 1.0 if no axis grows."""
    height, width = _size_pair(image_size)
    return max(1.0, height / float(source_size[0]), width / float(source_size[1]))


def upsampling_summary(source_sizes, image_size) -> dict:
    """How many images are enlarged to ``image_size``, and by how much.

    ``source_sizes``: (height, width) per image (:func:`read_unit_grey`, :func:`source_sizes`).
    Returns ``{"images", "upsampled", "fraction_upsampled", "max_factor", "median_factor",
    "image_size"}``; the factors are over the upsampled images (1.0 when none is).
    A run on 64 px NIH images at 128 px reports every image upsampled by 2.0.
    """
    factors = np.array([upsampling_factor(size, image_size) for size in source_sizes],
                       np.float64)
    grown = factors[factors > 1.0]
    height, width = _size_pair(image_size)
    return {"images": int(len(factors)), "upsampled": int(len(grown)),
            "fraction_upsampled": float(len(grown) / len(factors)) if len(factors) else 0.0,
            "max_factor": float(grown.max()) if len(grown) else 1.0,
            "median_factor": float(np.median(grown)) if len(grown) else 1.0,
            "image_size": [height, width]}


def describe_upsampling(summary: dict) -> str:
    """One line for a run's log from :func:`upsampling_summary`."""
    height, width = summary["image_size"]
    size = f"{height} px" if height == width else f"{height}x{width} px"
    if not summary["upsampled"]:
        return f"no image is smaller than the input size ({size}): none upsampled"
    return (f"{summary['upsampled']} of {summary['images']} images are smaller than the input "
            f"size ({size}) and are upsampled (factor median {summary['median_factor']:.2f}, "
            f"max {summary['max_factor']:.2f}): they hold less detail than the input shows")


def source_sizes(paths, *, workers: int | None = None) -> list[tuple[int, int]]:
    """(height, width) of each image as read (upright): PNG and JPEG sizes from their headers
    (no decoding), other formats decoded. For :func:`upsampling_summary` on a run that reads
    the files."""
    def size_of(path):
        width, height = image_size_of(path)
        return height, width
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        return list(pool.map(size_of, [str(p) for p in paths]))


def image_size_of(path) -> tuple[int, int]:
    """(width, height) of an image file on disk.

    PNG: read from the IHDR chunk in the first 24 bytes, turned as an ``eXIf`` chunk's
    orientation says (no decoding; this is what makes scaling ~1,000 ChestX-ray14 boxes
    instant). JPEG: from its frame header, turned as its EXIF orientation says. Both are the
    size :func:`read_unit_grey` sees, since OpenCV's decoder turns either. Other formats, or a
    header not found in the first 64 KiB: decoded with OpenCV.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEADER_BYTES)
            # PNG: 8-byte signature, chunk length (4), b"IHDR", width (4), height (4), big-endian.
            if head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR":
                width, height = (int(v) for v in struct.unpack(">II", head[16:24]))
                turned = _png_orientation(handle) in EXIF_TRANSPOSED
                return (height, width) if turned else (width, height)
    except FileNotFoundError:
        raise DataError(f"bad image {path}: missing file") from None
    except OSError as error:
        raise DataError(f"bad image {path}: cannot read file ({error.strerror or error})") from None
    if head.startswith(JPEG_START):
        size = _jpeg_size(head)
        if size is not None:
            return size
    image = decode_image(read_bytes(path), path)
    return int(image.shape[1]), int(image.shape[0])


# Enough for a JPEG's EXIF block (at most 64 KiB) and the frame header after it.
HEADER_BYTES = 1 << 16
# Start-of-frame markers (baseline, progressive, lossless...): 0xC0-0xCF except DHT (C4),
# JPG (C8) and DAC (CC), which are not frame headers.
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# EXIF orientations 5-8 turn the image by 90 degrees: width and height swap.
EXIF_TRANSPOSED = frozenset({5, 6, 7, 8})


def _png_orientation(handle) -> int | None:
    """The EXIF orientation of the PNG open in ``handle``, from its ``eXIf`` chunk, or None.

    The chunk headers are walked to ``IEND`` (a seek and 8 bytes each, the image data skipped):
    the chunk may stand before or after the image data, and OpenCV turns the image either way.
    """
    position = 8
    while True:
        handle.seek(position)
        header = handle.read(8)
        if len(header) < 8:
            return None
        length, kind = struct.unpack(">I4s", header)
        if kind == b"eXIf":
            return _exif_orientation(handle.read(length))
        if kind == b"IEND":
            return None
        position += 12 + length


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG as read upright, from the start of the file; None if the
    frame header is not in ``head`` or the markers do not parse."""
    position, orientation = 2, 1
    while position + 4 <= len(head):
        if head[position] != 0xFF:
            return None
        marker = head[position + 1]
        if marker == 0xFF:                                   # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:         # markers without a length
            position += 2
            continue
        length = struct.unpack(">H", head[position + 2:position + 4])[0]
        segment = head[position + 4:position + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            orientation = _exif_orientation(segment[6:]) or orientation
        elif marker in JPEG_FRAME_MARKERS:
            if len(segment) < 5:
                return None
            height, width = struct.unpack(">HH", segment[1:5])
            return (height, width) if orientation in EXIF_TRANSPOSED else (width, height)
        position += 2 + length
    return None


def _exif_orientation(tiff: bytes) -> int | None:
    """The Orientation tag (0x0112) of an EXIF block's first image directory, or None."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    directory = struct.unpack(order + "I", tiff[4:8])[0]
    if directory + 2 > len(tiff):
        return None
    count = struct.unpack(order + "H", tiff[directory:directory + 2])[0]
    for entry in range(count):
        start = directory + 2 + 12 * entry
        if start + 12 > len(tiff):
            return None
        if struct.unpack(order + "H", tiff[start:start + 2])[0] == 0x0112:
            return struct.unpack(order + "H", tiff[start + 8:start + 10])[0]
    return None


def check_image_file(path) -> str | None:
    """Why ``path`` is not a usable image (a short reason), or None if it is fine.

    A truncated PNG or JPEG may still decode (depending on the OpenCV build and on where
    the file was cut, the missing rows come back grey with only a warning), so the end marker
    is checked first: PNG files end with the ``IEND`` chunk, JPEG files with the ``FF D9``
    end-of-image marker.
    """
    reason, data = _read(path)
    if reason is not None:
        return reason
    tail = data[-END_MARKER_WINDOW:]
    if data.startswith(PNG_SIGNATURE) and PNG_END_CHUNK not in tail:
        return "truncated PNG (no IEND chunk at the end of the file)"
    if data.startswith(JPEG_START) and JPEG_END_MARKER not in tail:
        return "truncated JPEG (no end-of-image marker FF D9 at the end of the file)"
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        return "cannot decode image (not a valid image file)"
    return None


def default_workers() -> int:
    """Threads for image checks: reading is I/O-bound and OpenCV decoding releases the GIL."""
    return min(16, 2 * (os.cpu_count() or 1))


def progress_bar(total: int, verbose: int = 1, *, unit_name: str = "image",
                 minimum: int | None = None, label: str | None = None):
    """A progress reporter over ``total`` items, or None when quiet or quick.

    On a terminal a ``keras.utils.Progbar``; when standard output is a file or a pipe (a log)
    a :class:`chestkd.data.progress.LineProgress`, which writes one plain line per 10 % (led
    by ``label``) instead of a redrawn bar. None when ``verbose`` is 0 or ``total < minimum``
    (default ``PROGRESS_MIN_ITEMS``): a progress bar for a few hundred items is noise. Keras
    is imported only when a bar is shown (it imports TensorFlow).
    """
    if not verbose or total < (PROGRESS_MIN_ITEMS if minimum is None else minimum):
        return None
    from chestkd.data.progress import progress
    return progress(total, verbose, unit_name=unit_name, label=label or f"{unit_name}s")


def verify_images(paths, *, skip: bool = False, workers: int | None = None,
                  verbose: int = 1):
    """Check every image file; returns ``(ok_mask, bad)``.

    ``ok_mask`` is a bool array (one per path) and ``bad`` a DataFrame with columns
    ``path`` and ``reason``. With ``skip=False`` the first bad image (in ``paths`` order)
    raises DataError naming the file and the reason instead. ``verbose=1`` shows a progress
    bar for more than ``PROGRESS_MIN_ITEMS`` images (112,120 on Drive take a while); 0: quiet.
    """
    paths = [str(p) for p in paths]
    ok = np.ones(len(paths), dtype=bool)
    bad_rows = []
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    bar = progress_bar(len(paths), verbose)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for index, reason in enumerate(pool.map(check_image_file, paths)):
            if bar is not None and ((index + 1) % 100 == 0 or index + 1 == len(paths)):
                bar.update(index + 1)   # every 100 images: the bar's own cost stays negligible
            if reason is None:
                continue
            if not skip:
                raise DataError(f"bad image {paths[index]}: {reason} ({SKIP_HINT})")
            ok[index] = False
            bad_rows.append((paths[index], reason))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    bad = pd.DataFrame(bad_rows, columns=["path", "reason"])
    return ok, bad


def screen_images(data, *, check_images: bool = False, skip_bad_images: bool = False,
                  workers: int | None = None, verbose: int = 1):
    """Apply a loader's image options to a :class:`~chestkd.data.dataset.Dataset`.

    ``check_images=True``: every file is verified and the first bad one raises DataError.
    ``skip_bad_images=True`` (implies checking): bad rows are dropped and listed in
    ``Dataset.skipped``. Loaders call this *after* assigning splits, so skipping a bad image
    never moves another image to a different split.
    """
    if not (check_images or skip_bad_images):
        return data
    ok, bad = verify_images(data.paths, skip=skip_bad_images, workers=workers,
                            verbose=verbose)
    if ok.all():
        return data
    kept = data.select(ok)
    previous = [frame for frame in (data.skipped, bad) if len(frame)]
    kept.skipped = pd.concat(previous, ignore_index=True)[["path", "reason"]]
    return kept


def resolve_dir(data_dir, what: str) -> Path:
    """``data_dir`` as an existing folder, or an error naming it."""
    if data_dir is None:
        raise ConfigError(f"{what}: data_dir is required")
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise DataError(f"{what}: data folder {folder} does not exist")
    return folder.resolve()
