"""Images sorted into one folder per class, single-label (softmax).

Two layouts are read:

* predefined splits, as in the pediatric pneumonia set (Kermany et al. 2018)::

      chest_xray/train/NORMAL/*.jpeg   chest_xray/train/PNEUMONIA/*.jpeg
      chest_xray/val/...               chest_xray/test/...

  (``train``, ``val`` or ``valid``/``validation``, ``test`` are detected; if there is no
  validation folder, validation is carved out of ``train`` by ``fractions``). A validation
  folder is used as given unless ``val_split`` says otherwise: ``"carve"`` puts its images
  into ``train`` and carves validation from ``train`` patient-wise (stratified, seeded,
  the share ``fractions[1] / (fractions[0] + fractions[1])``); ``"auto"`` (the default)
  does so when the folder holds fewer than 5 % of the train and val images -- the
  pediatric set's ``val`` has 16 images beside 5,216 in ``train``, too few to choose a
  checkpoint or a threshold on; ``"official"`` always keeps it;
* class folders only (``data_dir/<class>/...``): a seeded split by ``fractions``,
  stratified by class; with ``patient_regex`` it is patient-wise (no patient in two
  splits) and stratified by each patient's most frequent class.

Images are found recursively inside each class folder by extension (case-insensitive).

Patient ids: ``patient_regex`` (its group ``patient``, or its only group, of each file
name). ``patient_regex="kermany"`` is :data:`KERMANY_PATIENT_REGEX`, which reads the
pediatric set's names: ``person1_bacteria_1.jpeg`` and ``person1_virus_6.jpeg`` ->
``person1``; ``IM-0115-0001.jpeg`` -> ``IM-0115``; ``NORMAL2-IM-1427-0001.jpeg`` ->
``NORMAL2-IM-1427`` (the second batch of normal films numbers its patients anew, so its
prefix is kept). With no ``patient_regex``, a folder whose every file name matches it is
read with it (and says so); otherwise every image is its own patient.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.data.balance import BALANCE_MODES, balance_dataset, balance_rows, check_balance
from chestkd.data.dataset import SPLITS, Dataset
from chestkd.data.images import IMAGE_EXTENSIONS, resolve_dir, screen_images
from chestkd.data.presence import check_images_option
from chestkd.data.splits import check_fractions, check_no_leakage, patient_split
from chestkd.errors import ConfigError, DataError

__all__ = ["load_folder", "split_folders", "find_images", "patient_ids", "balance_rows",
           "BALANCE_MODES"]

EXTENSIONS = IMAGE_EXTENSIONS
# The pediatric pneumonia set's file names (Kermany et al. 2018; module doc).
KERMANY_PATIENT_REGEX = r"^(?P<patient>person\d+|(?:NORMAL2-)?IM-\d+)[_-]"
VAL_SPLITS = ("auto", "official", "carve")
AUTO_CARVE_SHARE = 0.05     # "auto": a val folder below 5 % of train + val is carved instead
SPLIT_FOLDER_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation"),
                      "test": ("test", "testing")}


def load_folder(data_dir, *, classes=None, split_dirs=None, fractions=(0.7, 0.1, 0.2),
                seed: int = 0, patient_regex: str | None = None, balance: str | None = None,
                val_split: str = "auto", extensions=EXTENSIONS, skip_bad_images: bool = False,
                check_images: bool = False, workers: int | None = None,
                images: str = "all") -> Dataset:
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
            group) is the patient id; ``"kermany"`` for the pediatric set's names (module doc).
            Without it, every image is its own patient (unless all names are Kermany's).
        val_split: ``"auto"``, ``"official"`` or ``"carve"``: what a validation folder is
            used for (module doc).
        balance: ``"undersample"`` (drop majority-class rows) or ``"oversample"``
            (repeat minority-class rows) in the train split only, seeded.
        extensions: file extensions counted as images.
        skip_bad_images: verify the images, drop bad ones into ``Dataset.skipped``.
        check_images: verify the images; the first bad one is a DataError.
        workers: threads for the image check.
        images: ``"all"`` or ``"present"``, the option every loader takes; the same here,
            since the images are found by listing the folders (none can be absent).
    """
    root = resolve_dir(data_dir, "folder")
    check_images_option(images, "folder")
    check_balance(balance, "folder")
    fractions = check_fractions(fractions)
    if len(fractions) != 3:
        raise ConfigError(f"folder: fractions must be (train, val, test), got {tuple(fractions)}")
    if val_split not in VAL_SPLITS:
        raise ConfigError(f"folder: unknown val_split {val_split!r}; choose one of {VAL_SPLITS}")
    if patient_regex == "kermany":
        patient_regex = KERMANY_PATIENT_REGEX
    pattern = _patient_pattern(patient_regex)
    if isinstance(extensions, str):  # extensions=png: one extension, not p, n, g
        extensions = [extensions]
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
    if pattern is None and files.str.match(KERMANY_PATIENT_REGEX).all():
        print(f"folder: the file names in {root} are the pediatric set's: patient ids read with "
              f"patient_regex=kermany ({KERMANY_PATIENT_REGEX})")
        patient_regex = KERMANY_PATIENT_REGEX
        pattern = _patient_pattern(patient_regex)
    if pattern is not None:
        patients = patient_ids(files, table["path"], pattern, patient_regex)
    else:   # each image its own patient: the path relative to the data folder is unique
        print(f"folder: no patient_regex, so each image in {root} is taken for a patient of its "
              f"own; give patient_regex if a patient has several images, or splits may share "
              f"patients")
        patients = table["path"].map(lambda p: os.path.relpath(p, root)).to_numpy(dtype=str)
    label_index = table["label"].to_numpy()

    if folders:
        split = table["split"].to_numpy(dtype="<U5")
        if "val" in folders and _carve_validation(val_split, split):
            split[split == "val"] = "train"
            folders = {name: folder for name, folder in folders.items() if name != "val"}
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
                                      "split_folder": table["split"].to_numpy(dtype=str),
                                      "on_disk": True}),
                   root=root, listed=len(table), patient_ids=pattern is not None)
    data = screen_images(data, check_images=check_images, skip_bad_images=skip_bad_images,
                         workers=workers)
    return balance_dataset(data, balance, seed)


def _carve_validation(val_split: str, split: np.ndarray) -> bool:
    """Whether the images of the validation folder go to train and validation is carved."""
    if val_split != "auto":
        return val_split == "carve"
    in_val = int((split == "val").sum())
    return in_val < AUTO_CARVE_SHARE * (in_val + int((split == "train").sum()))


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
    if not isinstance(classes, (str, list, tuple)):
        raise ConfigError(f"folder: classes {classes!r}: expected folder names, e.g. "
                          "classes=[NORMAL, PNEUMONIA]")
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
    if not isinstance(patient_regex, str):
        raise ConfigError(f"folder: patient_regex {patient_regex!r}: expected a regular "
                          "expression, in quotes where YAML would read a number")
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
