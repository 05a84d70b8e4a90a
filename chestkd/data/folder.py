"""Images sorted into one folder per class, single-label (softmax).

Two layouts are read:

* predefined splits, as in the pediatric pneumonia set (Kermany et al. 2018)::

      chest_xray/train/NORMAL/*.jpeg   chest_xray/train/PNEUMONIA/*.jpeg
      chest_xray/val/...               chest_xray/test/...

  (``train``, ``val`` or ``valid``/``validation``, ``test`` are detected; if there is no
  validation folder, validation is carved out of ``train`` by ``fractions``);
* class folders only (``data_dir/<class>/...``): a seeded split by ``fractions``,
  stratified by class; with ``patient_regex`` it is patient-wise (no patient in two
  splits) and stratified by each patient's most frequent class.

Images are found recursively inside each class folder by extension (case-insensitive).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.data.dataset import SPLITS, Dataset
from chestkd.data.images import resolve_dir, screen_images
from chestkd.data.splits import check_fractions, check_no_leakage, patient_split
from chestkd.errors import ConfigError, DataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLIT_FOLDER_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation"),
                      "test": ("test", "testing")}
BALANCE_MODES = (None, "undersample", "oversample")


def load_folder(data_dir, *, classes=None, split_dirs=None, fractions=(0.7, 0.1, 0.2),
                seed: int = 0, patient_regex: str | None = None, balance: str | None = None,
                extensions=EXTENSIONS, skip_bad_images: bool = False,
                check_images: bool = False, workers: int | None = None) -> Dataset:
    """Load class folders as a single-label (one-hot) :class:`Dataset`.

    Args:
        data_dir: the dataset folder.
        classes: class folder names, in label order. Default: sorted subfolder names.
        split_dirs: ``{"train": "train", "val": "val", "test": "test"}``-like mapping from
            split to subfolder; ``"auto"`` or None detects ``train/val/test``
            subfolders; ``False`` ignores them.
        fractions: (train, val, test) shares when there are no split folders.
        seed: seed of the split and of balancing.
        patient_regex: regex applied to each file name; its group ``patient`` (or its only
            group) is the patient id. Without it, every image is its own patient.
        balance: ``"undersample"`` (drop majority-class rows) or ``"oversample"``
            (repeat minority-class rows) in the train split only, seeded.
        extensions: file extensions counted as images.
        skip_bad_images: verify the images, drop bad ones into ``Dataset.skipped``.
        check_images: verify the images; the first bad one is a DataError.
        workers: threads for the image check.
    """
    root = resolve_dir(data_dir, "folder")
    if balance not in BALANCE_MODES:
        raise ConfigError(f"folder: unknown balance {balance!r}; choose one of {BALANCE_MODES}")
    fractions = check_fractions(fractions)
    if len(fractions) != 3:
        raise ConfigError(f"folder: fractions must be (train, val, test), got {tuple(fractions)}")
    pattern = _patient_pattern(patient_regex)
    suffixes = tuple(str(ext).lower() if str(ext).startswith(".") else f".{str(ext).lower()}"
                     for ext in extensions)

    folders = split_folders(root, split_dirs)
    bases = list(folders.values()) if folders else [root]
    class_names = _class_names(classes, bases)
    rows = []
    for split, base in (folders.items() if folders else [("", root)]):
        for index, name in enumerate(class_names):
            class_dir = base / name
            if not class_dir.is_dir():
                if folders:
                    continue        # e.g. a small val folder lacking a class
                raise DataError(f"folder: class {name!r} has no folder {class_dir}")
            rows += [(str(path), index, split) for path in find_images(class_dir, suffixes)]
    if not rows:
        raise DataError(f"folder: no images with extensions {list(suffixes)} in the class "
                        f"folders {class_names} under {root}")
    table = pd.DataFrame(rows, columns=["path", "label", "split"])
    table = table.sort_values(["split", "label", "path"], kind="stable").reset_index(drop=True)
    files = table["path"].map(lambda p: os.path.basename(p))
    if pattern is not None:
        patients = patient_ids(files, table["path"], pattern, patient_regex)
    else:   # each image its own patient: the path relative to the data folder is unique
        patients = table["path"].map(lambda p: os.path.relpath(p, root)).to_numpy(dtype=str)
    label_index = table["label"].to_numpy()

    if folders:
        split = table["split"].to_numpy(dtype="<U5")
        check_no_leakage(patients, split, f"folder: split folders of {root} "
                                          f"(patient_regex={patient_regex!r})")
        if "val" not in folders:
            train = split == "train"
            share = fractions[1] / (fractions[0] + fractions[1])
            split[train] = patient_split(patients[train], (1 - share, share), seed,
                                         stratify=label_index[train], names=("train", "val"))
    else:
        split = patient_split(patients, fractions, seed, stratify=label_index)

    data = Dataset(name="folder", class_names=list(class_names), multi_label=False,
                   paths=table["path"].to_numpy(dtype=str),
                   labels=np.eye(len(class_names), dtype=np.float32)[label_index],
                   patients=patients, split=split,
                   meta=pd.DataFrame({"image": files.to_numpy(dtype=str),
                                      "class": np.asarray(class_names)[label_index],
                                      "on_disk": True}),
                   root=root)
    data = screen_images(data, check_images=check_images, skip_bad_images=skip_bad_images,
                         workers=workers)
    if balance is not None:
        data = data.select(balance_rows(data.labels.argmax(1), data.split == "train",
                                        balance, seed))
    return data


def split_folders(root: Path, split_dirs) -> dict[str, Path]:
    """Split name -> folder, from ``split_dirs`` or detected; {} when there are none."""
    if split_dirs is False:
        return {}
    if split_dirs is None or split_dirs == "auto":
        present = {entry.name.lower(): Path(entry.path) for entry in os.scandir(root)
                   if entry.is_dir()}
        found = {}
        for split, names in SPLIT_FOLDER_NAMES.items():
            match = next((present[name] for name in names if name in present), None)
            if match is not None:
                found[split] = match
        if not found:
            return {}
        if "train" not in found or "test" not in found:
            raise DataError(f"folder: {root} has split folder(s) "
                            f"{sorted(p.name for p in found.values())} but needs both a train "
                            f"and a test folder; pass split_dirs=False to split the class "
                            f"folders instead")
        return found
    if not isinstance(split_dirs, dict):
        raise ConfigError(f"folder: split_dirs must be a mapping like {{'train': 'train', "
                          f"'test': 'test'}}, 'auto' or False; got {split_dirs!r}")
    unknown = [key for key in split_dirs if key not in SPLITS]
    if unknown or "train" not in split_dirs or "test" not in split_dirs:
        raise ConfigError(f"folder: split_dirs keys must include 'train' and 'test' and be "
                          f"among {SPLITS}; got {list(split_dirs)}")
    folders = {}
    for split, name in split_dirs.items():
        folder = Path(name).expanduser()
        folder = folder if folder.is_absolute() else root / folder
        if not folder.is_dir():
            raise DataError(f"folder: split folder {folder} (split_dirs[{split!r}]) does not "
                            f"exist")
        folders[split] = folder
    return folders


def _class_names(classes, bases) -> list[str]:
    present = sorted({entry.name for base in bases for entry in os.scandir(base)
                      if entry.is_dir() and not entry.name.startswith((".", "__"))})
    if classes is None:
        if not present:
            raise DataError(f"folder: no class folders in {', '.join(map(str, bases))}")
        return present
    names = [classes] if isinstance(classes, str) else [str(name) for name in classes]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"folder: classes must be distinct folder names, got {names}")
    for name in names:
        if name not in present:
            where = ", ".join(map(str, bases))
            raise DataError(f"folder: unknown class {name!r}: no folder {name!r} in {where} "
                            f"(class folders found: {present})")
    return names


def find_images(folder: Path, suffixes) -> list[Path]:
    """Image files below ``folder`` (recursively), by extension, sorted."""
    return sorted(path for path in folder.rglob("*")
                  if path.suffix.lower() in suffixes and not path.name.startswith(".")
                  and path.is_file())


def _patient_pattern(patient_regex):
    if patient_regex is None:
        return None
    try:
        pattern = re.compile(patient_regex)
    except re.error as error:
        raise ConfigError(f"folder: patient_regex {patient_regex!r} is not a valid regex "
                          f"({error})") from None
    if "patient" not in pattern.groupindex and pattern.groups != 1:
        raise ConfigError(f"folder: patient_regex {patient_regex!r} needs one group or a "
                          f"group named 'patient' for the patient id; it has {pattern.groups}")
    return pattern


def patient_ids(files: pd.Series, paths: pd.Series, pattern, patient_regex) -> np.ndarray:
    """Patient id per file name from ``pattern``; DataError naming a file that does not match."""
    group = "patient" if "patient" in pattern.groupindex else 1
    ids = []
    for name, path in zip(files, paths):
        match = pattern.search(name)
        if match is None or not match.group(group):
            raise DataError(f"folder: file name of {path} does not match patient_regex "
                            f"{patient_regex!r}")
        ids.append(match.group(group))
    return np.asarray(ids, dtype=str)


def balance_rows(label_index: np.ndarray, train: np.ndarray, mode: str, seed: int) -> np.ndarray:
    """Row indices with the train rows balanced by class; other splits unchanged.

    ``undersample``: every class keeps ``min_c n_c`` random train rows.
    ``oversample``: every class reaches ``max_c n_c`` train rows: all its rows, repeated
    whole as often as they fit, plus a random sample of them for the remainder.
    """
    rng = np.random.default_rng(seed)
    train_rows = np.flatnonzero(train)
    if len(train_rows) == 0:
        return np.arange(len(label_index))
    per_class = [train_rows[label_index[train_rows] == c]
                 for c in np.unique(label_index[train_rows])]
    sizes = [len(rows) for rows in per_class]
    chosen = []
    if mode == "undersample":
        target = min(sizes)
        chosen = [np.sort(rng.choice(rows, size=target, replace=False)) for rows in per_class]
    else:
        target = max(sizes)
        for rows in per_class:
            repeats, remainder = divmod(target, len(rows))
            extra = np.sort(rng.choice(rows, size=remainder, replace=False))
            chosen.append(np.concatenate([np.tile(rows, repeats), extra]))
    return np.sort(np.concatenate(chosen + [np.flatnonzero(~train)]), kind="stable")
