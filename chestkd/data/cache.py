"""The prepared image cache: every image downscaled once, stored as a few large uint8 shards.

``python -m chestkd.data prepare --dataset chestxray14 --data-dir DIR --size 224 --out CACHE``
writes::

    CACHE/cache.json          size, shard size, image count, dataset name
    CACHE/index.csv           key (path relative to the dataset root), shard, row, ok
    CACHE/shard-00000.npy     uint8 (n, size, size) grey images, read by the one reading rule
    CACHE/shard-00000.json    written after its shard: row count, checksum and each image's
                              source size (marks it done)
    CACHE/skipped.csv         images that could not be read (with --skip-bad-images)

Why this layout: 112,120 PNGs are slow to list and read on Google Drive; 110 files of ~50 MB are
fast, and ``numpy.load(mmap_mode="r")`` reads only the rows a batch needs. Chest radiographs are
single-channel, so one channel is stored: the grey image of
:func:`chestkd.data.images.read_unit_grey` (the rule training on the files, evaluation and
``chestkd.predict`` use), scaled to 8 bit. The source sizes let a run report how many images it
upsampled (:meth:`PreparedCache.upsampling`). A shard is written to a temporary name and renamed, then its
``.json`` marker is written, so an interrupted run resumes at the first shard without a marker and
never leaves a half-written shard that looks complete.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.cli import output_folder
from chestkd.data.dataset import Dataset
from chestkd.data.images import (check_image_file, progress_bar, read_unit_grey, source_sizes,
                                 upsampling_summary)
from chestkd.errors import DataError
from chestkd.io import atomic_save_npy, atomic_write, atomic_write_json

SHARD_SIZE = 1024
# Loaders that take ``cache_dir=`` and then list or open no image file (the folder loader must
# list its class folders: the files are its dataset).
CACHE_AWARE_LOADERS = frozenset({"chestxray14", "phantom", "chexpert"})


def cache_key(data: Dataset, path: str) -> str:
    """The key of an image in the cache: its path relative to the dataset root."""
    if data.root is None:
        return os.path.basename(path)
    return os.path.relpath(path, data.root)


def load_gray_uint8(path: str, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """``(uint8 (size, size) grey image, (source height, source width))`` of an image file.

    The checks of ``chestkd.data.images`` (missing, empty, truncated or undecodable files raise
    DataError naming the file), then :func:`chestkd.data.images.read_unit_grey`, the reading
    rule of every other consumer, rounded to 8 bit.
    """
    reason = check_image_file(path)
    if reason is not None:
        raise DataError(f"bad image {path}: {reason}")
    unit, source = read_unit_grey(path, size)
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8), source


def upsampling_of(data: Dataset, image_size: int, cache_dir=None) -> dict | None:
    """How many of ``data``'s images a run at ``image_size`` upsamples, and by how much
    (:func:`chestkd.data.images.upsampling_summary`), for the run to print
    (:func:`chestkd.data.images.describe_upsampling`) and record.

    A run on the files reads each image's size from its header (PNG, JPEG: no decoding); a run
    on a prepared cache takes the source sizes ``prepare`` recorded, capped at the cache's size
    (the detail the cache holds), and opens no original file: None for a cache prepared before
    the sizes were recorded (a report, not a reason to stop a run).
    """
    if cache_dir is not None:
        return PreparedCache(cache_dir).upsampling(image_size, data)
    return upsampling_summary(source_sizes(data.paths), image_size)


def _checksum(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def prepare(data: Dataset, out, *, size: int = 224, workers: int | None = None,
            skip_bad_images: bool = False, shard_size: int = SHARD_SIZE,
            verbose: int = 1, progress: bool | None = None) -> Path:
    """Write (or finish writing) the cache of every image in ``data`` into ``out``.

    Resumable: shards already complete are kept. Verified: each shard is read back and its
    checksum compared before it is marked done. Returns the cache folder.

    ``verbose=1`` shows a progress bar (images) when more than ``images.PROGRESS_MIN_ITEMS`` images
    are left to write; ``verbose=0`` is quiet. ``progress`` is the older spelling
    (``progress=False`` is ``verbose=0``).
    """
    if progress is not None:
        verbose = int(bool(progress))
    out = output_folder(out)
    keys = [cache_key(data, p) for p in data.paths]
    n_shards = -(-len(keys) // shard_size)
    meta = {"dataset": data.name, "size": int(size), "shard_size": int(shard_size),
            "images": len(keys), "shards": n_shards}
    index = pd.DataFrame({"key": keys, "shard": np.arange(len(keys)) // shard_size,
                          "row": np.arange(len(keys)) % shard_size, "ok": 1})
    meta_path = out / "cache.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        old_keys = pd.read_csv(out / "index.csv", keep_default_na=False)["key"].tolist()
        if {k: old.get(k) for k in meta} != meta or old_keys != keys:
            raise DataError(f"{out}: holds a cache of other images or settings ({old}); "
                            "choose a new --out folder")
    else:
        atomic_write(out / "index.csv", lambda tmp: index.to_csv(tmp, index=False))
        atomic_write_json(meta_path, meta)

    workers = workers or os.cpu_count() or 1
    skipped = []
    todo = [s for s in range(n_shards) if not (out / f"shard-{s:05d}.json").exists()]
    left = sum(min(shard_size, len(keys) - s * shard_size) for s in todo)
    bar = progress_bar(left, verbose, unit_name="image")

    def load(path):
        try:
            return *load_gray_uint8(path, size), None
        except DataError as error:
            if not skip_bad_images:
                raise
            return np.zeros((size, size), np.uint8), None, str(error)

    with ThreadPoolExecutor(workers) as pool:  # cv2 releases the GIL while decoding
        for s in todo:
            paths = data.paths[s * shard_size:(s + 1) * shard_size]
            results = list(pool.map(load, paths))
            shard = np.stack([image for image, _, _ in results])
            bad_rows = [i for i, (_, _, error) in enumerate(results) if error]
            skipped += [(paths[i], results[i][2]) for i in bad_rows]
            sources = [list(source) if source else None for _, source, _ in results]
            atomic_save_npy(out / f"shard-{s:05d}.npy", shard)
            if _checksum(np.load(out / f"shard-{s:05d}.npy")) != _checksum(shard):
                raise DataError(f"{out / f'shard-{s:05d}.npy'}: verification failed after write")
            atomic_write_json(out / f"shard-{s:05d}.json", {
                "rows": len(shard), "sha1": _checksum(shard), "bad_rows": bad_rows,
                "source_sizes": sources}, indent=None)
            if bar is not None:
                bar.add(len(shard))
    if skipped:
        previous = (pd.read_csv(out / "skipped.csv") if (out / "skipped.csv").exists()
                    else pd.DataFrame(columns=["path", "reason"]))
        table = pd.concat([previous, pd.DataFrame(skipped, columns=["path", "reason"])])
        atomic_write(out / "skipped.csv", lambda tmp: table.to_csv(tmp, index=False))
    PreparedCache(out).verify()
    return out


class PreparedCache:
    """Reads a cache written by :func:`prepare`."""

    def __init__(self, folder):
        self.folder = Path(folder)
        meta_path = self.folder / "cache.json"
        if not meta_path.exists():
            raise DataError(f"{self.folder}: not a prepared cache (no cache.json); run "
                            f"`python -m chestkd.data prepare ... --out {self.folder}` first")
        self.meta = self._json(meta_path)
        self.size = int(self.meta["size"])
        self.index = pd.read_csv(self.folder / "index.csv", keep_default_na=False)
        self._shards: dict[int, np.ndarray] = {}
        bad = []
        for s in range(self.meta["shards"]):
            # Every shard complete and of its marker's shape (its header only; the checksum
            # is prepare's): a cache from an interrupted prepare, or a partial copy, fails
            # here, not inside the input pipeline.
            marker = self.folder / f"shard-{s:05d}.json"
            if not marker.exists():
                raise DataError(f"{self.folder}: shard {s} is incomplete; run prepare again "
                                "to resume")
            info = self._json(marker)
            shard = self._shard(s)
            if shard.shape[1:] != (self.size, self.size) or len(shard) != info["rows"]:
                raise DataError(f"{self.folder}/shard-{s:05d}.npy: shape {shard.shape} does not "
                                "match its marker; run prepare again")
            bad += [s * self.meta["shard_size"] + r for r in info["bad_rows"]]
        self.bad_rows = set(bad)

    @staticmethod
    def _json(path: Path) -> dict:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise DataError(f"{path}: not readable ({error}); run prepare again") from None

    def source_sizes(self) -> list:
        """(height, width) of each cached image's source file, in cache row order (None for
        images prepare could not read and for caches written before sizes were recorded)."""
        sizes = []
        for s in range(self.meta["shards"]):
            info = json.loads((self.folder / f"shard-{s:05d}.json").read_text())
            sizes += info.get("source_sizes") or [None] * info["rows"]
        return sizes

    def upsampling(self, image_size: int, data: Dataset | None = None) -> dict | None:
        """:func:`chestkd.data.images.upsampling_summary` of the cached images (``data``'s
        rows only, if given) read at ``image_size``: the detail an image has is the smaller
        of its source size and the cache's size per axis. None if the sizes were not
        recorded."""
        sizes = self.source_sizes()
        rows = range(len(sizes)) if data is None else self.rows_for(data)
        chosen = [sizes[r] for r in rows if int(r) not in self.bad_rows]
        if any(size is None for size in chosen):
            return None
        return upsampling_summary([(min(h, self.size), min(w, self.size)) for h, w in chosen],
                                  image_size)

    def verify(self) -> None:
        """Check that every shard is complete, with the right shape and checksum."""
        for s in range(self.meta["shards"]):
            marker = self.folder / f"shard-{s:05d}.json"
            if not marker.exists():
                raise DataError(f"{self.folder}: shard {s} is incomplete; run prepare again "
                                "to resume")
            info = json.loads(marker.read_text())
            shard = np.load(self.folder / f"shard-{s:05d}.npy", mmap_mode="r")
            if shard.shape[1:] != (self.size, self.size) or len(shard) != info["rows"]:
                raise DataError(f"{self.folder}/shard-{s:05d}.npy: shape {shard.shape} does not "
                                "match its marker")
            if _checksum(np.asarray(shard)) != info["sha1"]:
                raise DataError(f"{self.folder}/shard-{s:05d}.npy: checksum mismatch (corrupt)")

    def rows_for(self, data: Dataset) -> np.ndarray:
        """Global cache rows of ``data``'s images, in order. Missing ones are an error."""
        rows = self._rows_or_missing(data)
        keys = [cache_key(data, p) for p in data.paths]
        bad = [keys[i] for i, r in enumerate(rows) if r in self.bad_rows]
        if bad:
            raise DataError(f"{self.folder}: image {bad[0]!r} was skipped when the cache was "
                            "prepared (unreadable); load the dataset with skip_bad_images")
        return rows

    def _rows_or_missing(self, data: Dataset) -> np.ndarray:
        position = dict(zip(self.index["key"].astype(str), range(len(self.index))))
        keys = [cache_key(data, p) for p in data.paths]
        missing = [k for k in keys if k not in position]
        if missing:
            raise DataError(f"{self.folder}: {len(missing)} of the {len(keys)} image(s) of "
                            f"{data.name} are not in the cache, e.g. {missing[0]!r}; prepare "
                            f"the cache from the same dataset (python -m chestkd.data prepare)")
        return np.array([position[k] for k in keys], np.int64)

    def screen(self, data: Dataset, *, skip_bad_images: bool = False) -> Dataset:
        """The cache's image check of ``data``, in place of decoding the original files.

        ``prepare`` decoded and verified every image, so a run on the cache opens none: every
        image of ``data`` must be in the cache (a DataError naming this folder and an example
        image otherwise), and images ``prepare`` could not read (``--skip-bad-images``) are an
        error, or with ``skip_bad_images`` are dropped into ``Dataset.skipped`` with the reason
        recorded then.
        """
        rows = self._rows_or_missing(data)
        bad = np.isin(rows, list(self.bad_rows))
        if not bad.any():
            return data
        if not skip_bad_images:
            self.rows_for(data)   # raises, naming the first skipped image
        reasons = self.skipped_reasons()
        dropped = pd.DataFrame({"path": data.paths[bad], "reason": [
            reasons.get(path, "unreadable when the cache was prepared")
            for path in data.paths[bad]]})
        kept = data.select(~bad)
        kept.skipped = pd.concat([frame for frame in (data.skipped, dropped) if len(frame)],
                                 ignore_index=True)[["path", "reason"]]
        return kept

    def skipped_reasons(self) -> dict[str, str]:
        """{image path: reason} of the images ``prepare`` skipped (``skipped.csv``)."""
        path = self.folder / "skipped.csv"
        if not path.exists():
            return {}
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        return dict(zip(table["path"], table["reason"]))

    def _shard(self, s: int) -> np.ndarray:
        if s not in self._shards:
            path = self.folder / f"shard-{s:05d}.npy"
            try:
                self._shards[s] = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise DataError(f"{path}: not readable ({error}); run prepare again") from None
        return self._shards[s]

    def read_rows(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (len(rows), size, size) images for global cache rows."""
        shard_size = self.meta["shard_size"]
        out = np.empty((len(rows), self.size, self.size), np.uint8)
        for i in np.argsort(rows, kind="stable"):  # sorted reads are sequential on disk
            out[i] = self._shard(int(rows[i]) // shard_size)[int(rows[i]) % shard_size]
        return out
