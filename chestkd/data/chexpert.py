"""CheXpert (Irvin et al. 2019): 224,316 radiographs of 65,240 patients, 14 observations
labelled from the reports as positive (1), negative (0), uncertain (-1) or not mentioned
(blank). Multi-label.

Files read from ``data_dir`` (e.g. ``CheXpert-v1.0-small/``): ``train.csv`` and
``valid.csv`` with columns ``Path, Sex, Age, Frontal/Lateral, AP/PA`` followed by the
observations. ``Path`` is like ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``
and is resolved against ``data_dir`` or its parent.

Uncertain labels follow one of the policies of the CheXpert paper:

* ``ones`` (U-Ones): -1 -> 1;
* ``zeros`` (U-Zeros): -1 -> 0;
* ``ignore`` (U-Ignore): -1 -> mask 0, so the label is left out of the loss and metrics.

Blank cells are read as 0 (negative): the CheXpert labeller leaves an observation blank when
the report does not mention it, and an unmentioned finding is, clinically, an absent one.

Images absent from disk: counted in ``meta["on_disk"]`` (each image folder listed once), an
error saying how many when the images are read, unless ``images="present"`` (only the images
on disk, before the split) or ``skip_bad_images`` (see :mod:`chestkd.data.presence`).

Split: ``valid.csv`` is the test split (it is the only one labelled by radiologists, from the
images); the validation split is carved out of ``train.csv`` by patient (``patientNNNNN`` in
the path), seeded.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.data.chestxray14 import read_csv_text
from chestkd.data.dataset import Dataset, choose_labels
from chestkd.data.images import resolve_dir, screen_images
from chestkd.data.presence import (check_images_option, files_present, keep_present,
                                   settle_absent)
from chestkd.data.splits import check_no_leakage, patient_split
from chestkd.errors import ConfigError, DataError

TRAIN_FILE = "train.csv"
TEST_FILE = "valid.csv"
INFO_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
UNCERTAINTY_POLICIES = ("ones", "zeros", "ignore")
PATIENT_PATTERN = re.compile(r"(patient\d+)")
# Cell text -> value; -1 marks "uncertain" until the policy is applied.
CELL_VALUES = {"": 0.0, "1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0}


def load_chexpert(data_dir, *, uncertainty: str = "ones", frontal_only: bool = True,
                  labels=None, seed: int = 0, val_fraction: float = 0.1,
                  skip_bad_images: bool = False, check_images: bool = False,
                  workers: int | None = None, cache_dir=None,
                  images: str = "all") -> Dataset:
    """Load CheXpert as a multi-label :class:`Dataset`.

    Args:
        data_dir: folder holding ``train.csv`` and ``valid.csv``.
        uncertainty: ``"ones"``, ``"zeros"`` or ``"ignore"`` (see the module doc).
        frontal_only: keep only frontal views (``Frontal/Lateral == "Frontal"``).
        labels: observations to classify, in this order. Default: the 14 observation
            columns of ``train.csv`` in file order.
        seed, val_fraction: the seeded patient-wise validation split of ``train.csv``.
        skip_bad_images: verify the images, drop bad ones into ``Dataset.skipped``.
        check_images: verify the images; the first bad one is a DataError.
        workers: threads for the image check.
        cache_dir: a prepared cache of this dataset: ``meta["on_disk"]`` then says whether
            the cache holds each image, and no image file is looked at (223,414 of them).
        images: ``"all"`` or ``"present"`` (only the images on disk; module doc).
    """
    root = resolve_dir(data_dir, "chexpert")
    check_images_option(images, "chexpert")
    if uncertainty not in UNCERTAINTY_POLICIES:
        raise ConfigError(f"chexpert: unknown uncertainty policy {uncertainty!r} (option "
                          f"uncertainty); choose one of {UNCERTAINTY_POLICIES}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"chexpert: val_fraction must be in [0, 1), got {val_fraction}")
    train = read_chexpert_csv(root / TRAIN_FILE)
    test = read_chexpert_csv(root / TEST_FILE)
    observations = [c for c in train.columns if c not in INFO_COLUMNS and c != "line"]
    class_names = _class_names(labels, observations, root / TRAIN_FILE)
    missing = [name for name in class_names if name not in test.columns]
    if missing:
        raise DataError(f"{root / TEST_FILE}: missing column(s) {missing} present in "
                        f"{root / TRAIN_FILE}")

    parts = []
    for frame, path, split in ((train, root / TRAIN_FILE, "train"),
                               (test, root / TEST_FILE, "test")):
        if frontal_only:
            frame = frame[frame["Frontal/Lateral"].str.strip().str.lower() == "frontal"]
        values = parse_observations(frame, class_names, path)
        parts.append((frame.reset_index(drop=True), values, split, path))
    frame = pd.concat([part[0] for part in parts], ignore_index=True)
    values = np.concatenate([part[1] for part in parts])
    source = np.concatenate([np.full(len(part[0]), part[2]) for part in parts])
    if len(frame) == 0:
        raise DataError(f"chexpert: no images in {root / TRAIN_FILE} and {root / TEST_FILE}"
                        + (" with Frontal/Lateral == 'Frontal'" if frontal_only else ""))

    patients = np.concatenate([patient_ids(part[0], part[3]) for part in parts])
    check_no_leakage(patients, source, f"{root / TRAIN_FILE} and {root / TEST_FILE}")
    listed = len(frame)
    paths = resolve_paths(root, frame["Path"])
    on_disk = (_in_cache(root, paths, cache_dir) if cache_dir is not None
               else files_present(paths))
    where = (f"the prepared cache {cache_dir}" if cache_dir is not None
             else f"the folders of the Path column under {root}")
    excluded = {}
    if images == "present":
        keep = keep_present(np.ones(len(frame), bool), on_disk, excluded, dataset="chexpert",
                            where=where, listed=f"listed in {TRAIN_FILE} and {TEST_FILE}")
        frame, values, source = frame[keep].reset_index(drop=True), values[keep], source[keep]
        patients, paths, on_disk = patients[keep], paths[keep], on_disk[keep]
    split = source.astype("<U5")
    in_train = source == "train"
    if in_train.any():
        split[in_train] = patient_split(patients[in_train], (1 - val_fraction, val_fraction),
                                        seed, names=("train", "val"))

    labels_out, mask = apply_uncertainty(values, uncertainty)
    meta = pd.DataFrame({
        "path_in_csv": frame["Path"].to_numpy(dtype=str),
        "sex": frame["Sex"].to_numpy(dtype=str),
        "age": pd.to_numeric(frame["Age"], errors="coerce").to_numpy(),
        "frontal_lateral": frame["Frontal/Lateral"].to_numpy(dtype=str),
        "view": frame["AP/PA"].to_numpy(dtype=str),
        "uncertain": (values == -1).sum(1),
        "on_disk": on_disk,
    })
    data = Dataset(name="chexpert", class_names=list(class_names), multi_label=True,
                   paths=paths, labels=labels_out, mask=mask, patients=patients, split=split,
                   meta=meta, root=root, excluded=excluded, listed=listed)
    data = settle_absent(data, required=check_images, skip=skip_bad_images,
                         listed=f"listed in {TRAIN_FILE} and {TEST_FILE}", where=where)
    return screen_images(data, check_images=check_images, skip_bad_images=skip_bad_images,
                         workers=workers)


def _in_cache(root: Path, paths, cache_dir) -> np.ndarray:
    """Per path: does the prepared cache hold it (keys are paths relative to ``root``)?"""
    from chestkd.data.cache import PreparedCache   # cache imports the dataset layer
    keys = set(PreparedCache(cache_dir).index["key"].astype(str))
    return np.array([os.path.relpath(p, root) in keys for p in paths], dtype=bool)


def read_chexpert_csv(path: Path) -> pd.DataFrame:
    """``train.csv`` / ``valid.csv`` as strings, with ``line`` (1-based line numbers)."""
    if not path.is_file():
        raise DataError(f"chexpert: {path} is missing (expected train.csv and valid.csv in "
                        f"the data folder)")
    frame = read_csv_text(path, "CheXpert label")
    missing = [column for column in INFO_COLUMNS if column not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the columns found are "
                        f"{list(frame.columns)}")
    if len(frame.columns) == len(INFO_COLUMNS):
        raise DataError(f"{path}: no observation columns after {list(INFO_COLUMNS)}")
    return frame


def _class_names(labels, observations, path) -> list[str]:
    return choose_labels(labels, observations, dataset="chexpert", kind="observation",
                         where=f"{path} has")


def parse_observations(frame: pd.DataFrame, class_names, path: Path) -> np.ndarray:
    """Observation cells -> float32 (N, C) in {1, 0, -1}; blank is 0 (see module doc)."""
    values = np.zeros((len(frame), len(class_names)), dtype=np.float32)
    for column, name in enumerate(class_names):
        cells = frame[name].str.strip()
        mapped = cells.map(CELL_VALUES)
        bad = mapped.isna()
        if bad.any():
            row = frame[bad].iloc[0]
            raise DataError(f"{path}, line {row['line']}: column {name!r} has "
                            f"{row[name]!r}; expected 1, 0, -1 or blank")
        values[:, column] = mapped.to_numpy(dtype=np.float32)
    return values


def apply_uncertainty(values: np.ndarray, policy: str):
    """(labels, mask) from values in {1, 0, -1} under U-Ones, U-Zeros or U-Ignore."""
    uncertain = values == -1
    labels = np.where(uncertain, 1.0 if policy == "ones" else 0.0, values).astype(np.float32)
    mask = np.ones_like(labels)
    if policy == "ignore":
        mask[uncertain] = 0.0
    return labels, mask


def patient_ids(frame: pd.DataFrame, path: Path) -> np.ndarray:
    """``patientNNNNN`` from each Path; DataError naming the line if a path has none."""
    ids = frame["Path"].str.extract(PATIENT_PATTERN, expand=False)
    missing = ids.isna()
    if missing.any():
        row = frame[missing].iloc[0]
        raise DataError(f"{path}, line {row['line']}: no patient id ('patientNNNNN') in "
                        f"Path {row['Path']!r}")
    return ids.to_numpy(dtype=str)


def resolve_paths(root: Path, csv_paths: pd.Series) -> np.ndarray:
    """CSV paths -> absolute paths, relative to ``root`` or its parent.

    The CSVs start paths with the dataset folder's own name (``CheXpert-v1.0-small/...``), so
    they are relative to the parent of ``data_dir``; a copy whose CSVs start inside the folder
    resolves against ``data_dir``. The base where more of the first rows exist wins; with no
    image on disk, a path starting with the folder's name picks the parent.
    """
    relative = csv_paths.str.strip().str.lstrip("/")
    sample = relative.iloc[:50]
    hits = {base: sum((base / p).is_file() for p in sample) for base in (root, root.parent)}
    if hits[root] != hits[root.parent]:
        base = max(hits, key=hits.get)
    else:
        first = Path(sample.iloc[0]).parts[0] if len(sample) else ""
        base = root.parent if first == root.name else root
    return (str(base) + "/" + relative).to_numpy(dtype=str)
