"""Which listed images are on disk: one check for ``describe`` and for every run.

A metadata table often lists more images than the folder holds: a user unpacked two of
ChestX-ray14's twelve archives beside the full 112,120-row CSV, or a hospital export lost a
few files. Loaders find out which images are there by *listing* the image folders once
(:func:`files_present`, or the ChestX-ray14 loader's own listing of ``images*/``) and
intersecting with the table, never by opening or stat-ing each listed row, so the answer comes
in seconds even for 112,120 rows. They record it in ``meta["on_disk"]``; ``describe`` counts
that column and a run acts on it through :func:`settle_absent`:

* ``images="all"`` (the default): every listed image must be there. A run (``check_images``
  or ``skip_bad_images``) with absent images stops with :func:`absent_message` -- how many
  are on disk, how many are absent, a few of their names -- before any image is decoded,
  unless ``skip_bad_images`` is given: then the absent rows are left out and listed in
  ``Dataset.skipped`` with the reason :data:`ABSENT_REASON` (a run writes them to
  ``skipped.csv``). The split is that of all listed images.
* ``images="present"``: the dataset *is* the images on disk. Loaders drop the absent rows
  before they split, so the official lists, the patient split and the boxes are those of the
  present images; the count is kept in ``Dataset.excluded[ABSENT_EXCLUDED]``.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from chestkd.errors import ConfigError, DataError

IMAGES_OPTIONS = ("all", "present")
ABSENT_REASON = "absent: the file is not on disk"
ABSENT_EXCLUDED = "image not on disk, images: present"
EXAMPLES = 5


def check_images_option(images, dataset: str) -> str:
    """``images`` as given, or a ConfigError naming the option and its values."""
    if images not in IMAGES_OPTIONS:
        raise ConfigError(f"{dataset}: images={images!r}: choose one of "
                          f"{', '.join(IMAGES_OPTIONS)} (all: every listed image must be on "
                          f"disk; present: use the images on disk)")
    return images


def files_present(paths) -> np.ndarray:
    """Per path: is it a file on disk? Each distinct folder is listed once with
    :func:`os.scandir` (symlinks to files count) instead of one ``stat`` per path."""
    normalised = [os.path.normpath(str(path)) for path in paths]
    found: set[str] = set()
    for folder in sorted({os.path.dirname(path) for path in normalised}):
        try:
            with os.scandir(folder or ".") as entries:
                found.update(os.path.normpath(entry.path) for entry in entries
                             if entry.is_file())
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
    return np.fromiter((path in found for path in normalised), dtype=bool,
                       count=len(normalised))


def keep_present(keep: np.ndarray, on_disk: np.ndarray, excluded: dict, *, dataset: str,
                 where: str, listed: str) -> np.ndarray:
    """``images="present"``: ``keep`` restricted to the images on disk; the count of absent
    ones goes to ``excluded``. DataError when none of the kept rows' images is there."""
    absent = keep & ~on_disk
    if absent.any():
        excluded[ABSENT_EXCLUDED] = int(absent.sum())
    if keep.any() and not (keep & on_disk).any():
        raise DataError(f"{dataset}: none of the {int(keep.sum()):,} images {listed} is on "
                        f"disk (looked in {where}); images=present needs at least one")
    return keep & on_disk


def _examples(data, rows: np.ndarray) -> str:
    meta = data.meta
    shown = []
    for row in rows[:EXAMPLES]:
        name = (str(meta["image"].iloc[row]) if meta is not None and "image" in meta
                else os.path.basename(data.paths[row]))
        if meta is not None and "line" in meta:
            name = f"line {int(meta['line'].iloc[row])}: {data.paths[row]}"
        shown.append(name)
    more = ", ..." if len(rows) > EXAMPLES else ""
    return ", ".join(shown) + more


def absent_message(data, on_disk: np.ndarray, *, listed: str, where: str) -> str:
    """How many listed images are on disk and absent, a few absent names, and the two ways on."""
    absent = np.flatnonzero(~on_disk)
    present = int(on_disk.sum())
    total = len(on_disk)
    ways = (f"To train on the images you have, choose one:\n"
            f"  images: present (--images present): use the {present:,} image(s) on disk; "
            f"the split lists, the patient split and the boxes are restricted to them;\n"
            f"  --skip-bad-images: keep the split drawn over all {total:,} listed images (the "
            f"present ones may fall unevenly into it) and leave out the absent ones, listed "
            f"in skipped.csv in the run folder.")
    if not present:
        ways = ("None is there: check --data-dir and where the image archives were unpacked "
                "(images/ or images_*/images/ for ChestX-ray14).")
    verb = "is" if len(absent) == 1 else "are"
    return (f"{data.name}: {present:,} of the {total:,} images {listed} are on disk and "
            f"{len(absent):,} {verb} absent (e.g. {_examples(data, absent)}; looked in "
            f"{where}).\n{ways}")


def settle_absent(data, *, required: bool, skip: bool, listed: str, where: str):
    """Act on ``data.meta["on_disk"]`` (module doc): unchanged when every image is there or
    nothing will be read (``required`` and ``skip`` False, as for ``describe``); the absent
    rows moved into ``Dataset.skipped`` with ``skip``; else DataError(:func:`absent_message`)."""
    on_disk = data.meta["on_disk"].to_numpy(dtype=bool)
    if on_disk.all() or not (required or skip):
        return data
    if skip and on_disk.any():
        absent = pd.DataFrame({"path": data.paths[~on_disk], "reason": ABSENT_REASON})
        kept = data.select(on_disk)
        kept.skipped = pd.concat([frame for frame in (data.skipped, absent) if len(frame)],
                                 ignore_index=True)[["path", "reason"]]
        return kept
    raise DataError(absent_message(data, on_disk, listed=listed, where=where))


def require_on_disk(data) -> None:
    """A run that will read ``data``'s images: DataError(:func:`absent_message`) when a loader
    marked some as absent (the check a run makes even with ``check_images: false``)."""
    if data.meta is None or "on_disk" not in data.meta:
        return
    on_disk = data.meta["on_disk"].to_numpy(dtype=bool)
    if not on_disk.all():
        raise DataError(absent_message(data, on_disk, listed="of the dataset",
                                       where=str(data.root)))


def skipped_kinds(skipped) -> dict[str, int]:
    """How many of the skipped images (``Dataset.skipped``) were absent from disk, on a bad
    row of a table (a reason naming its ``line``), or unreadable; kinds with none left out."""
    reasons = skipped["reason"].astype(str) if len(skipped) else pd.Series([], dtype=str)
    absent = reasons == ABSENT_REASON
    rows = ~absent & reasons.str.contains(r", line \d+: ", regex=True)
    counts = {"absent from disk": int(absent.sum()), "on a bad table row": int(rows.sum()),
              "unreadable": int((~absent & ~rows).sum())}
    return {kind: n for kind, n in counts.items() if n}


def absent_counts(data) -> tuple[int, int]:
    """(left out by ``images: present``, skipped as absent with ``--skip-bad-images``)."""
    left_out = int((data.excluded or {}).get(ABSENT_EXCLUDED, 0))
    skipped = int((data.skipped["reason"] == ABSENT_REASON).sum()) if len(data.skipped) else 0
    return left_out, skipped
