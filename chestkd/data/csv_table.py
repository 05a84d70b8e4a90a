"""A CSV of images and labels plus an image folder (``--dataset csv``).

Many collections come as one table beside the images: the COVID-19 image data collection's
``metadata.csv`` (``patientid, offset, sex, age, finding, view, filename, folder``, findings
such as ``Pneumonia/Viral/COVID-19``), ISIC 2019's ground truth (one 0/1 column per class),
a hospital export. One call reads them all::

    load_csv(DIR, csv="metadata.csv", image_column=["folder", "filename"],
             label_column="finding", patient_column="patientid",
             label_map={"Pneumonia/Viral/COVID-19": "COVID-19", "No Finding": "normal",
                        "Pneumonia/Bacterial/Streptococcus": "pneumonia"},
             filters={"view": ["PA", "AP"]}, classes=["normal", "pneumonia", "COVID-19"])

Rows pass these steps in order; the ones left out on purpose are counted in
``Dataset.excluded`` (and printed):

1. ``filters``: ``{column: value or [values]}``, a row is kept when every named cell (spaces
   stripped) equals one of the values;
2. blank label: the label cell (or every one of ``label_columns``) is empty;
3. ``label_map``: whole cells are mapped first, then each ``|``-separated part; a class
   mapped to ``null`` drops the row.

Labels: ``label_column`` holds a class name or a ``|``-separated list of them;
``label_columns`` names one 0/1 column per class (blank = 0 when another column of the row is
filled). The classes are ``classes`` (in that order) or the sorted names found. The data are
single-label (softmax, one-hot) when every row has exactly one class, multi-label otherwise.

Images: ``image_column`` is a column with the file name or a path relative to ``image_dir``
(itself relative to ``data_dir``; default ``data_dir``), or a list of columns joined as path
parts (``[folder, filename]``). Patients: ``patient_column`` (default: every image its own).
Splits: ``split_column`` (train/val/test; a table with only train and test gets validation
carved from train) or a seeded patient-wise split by ``fractions``, stratified by class for
single-label data, as for class folders.

Bad rows (unknown label, blank patient, a label value other than 0/1, an image listed twice)
are a DataError naming the CSV file, its line and the column; with ``skip_bad_images`` they
are left out and listed in ``Dataset.skipped`` (which a run writes to ``skipped.csv``). A
missing column is always an error naming the file and the column.

Rows whose image file is absent are counted as every loader counts them (each image folder
listed once, ``meta["on_disk"]``; :mod:`chestkd.data.presence`): when the images are read
(``check_images``, every run) they are one DataError saying how many are absent, naming the
CSV file, the column and the lines of the first few, unless ``images="present"`` (the rows
whose image is on disk, before the split) or ``skip_bad_images`` (skipped, listed).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.data.balance import balance_dataset, check_balance
from chestkd.data.chestxray14 import read_csv_text
from chestkd.data.dataset import Dataset
from chestkd.data.images import SKIP_HINT, resolve_dir, screen_images
from chestkd.data.presence import (check_images_option, files_present, keep_present,
                                   settle_absent)
from chestkd.data.splits import check_fractions, check_no_leakage, patient_split
from chestkd.errors import ConfigError, DataError

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test", "testing": "test"}
TRUE_CELLS, FALSE_CELLS = {"1", "1.0", "true"}, {"0", "0.0", "false", ""}


def load_csv(data_dir, *, csv=None, image_dir=None, image_column="filename", label_column=None,
             label_columns=None, patient_column=None, label_map=None, filters=None,
             split_column=None, classes=None, fractions=(0.7, 0.1, 0.2), seed: int = 0,
             balance: str | None = None, skip_bad_images: bool = False,
             check_images: bool = False, workers: int | None = None,
             images: str = "all") -> Dataset:
    """Load a CSV table of images as a :class:`Dataset` named ``"csv"`` (module doc)."""
    root = resolve_dir(data_dir, "csv")
    check_images_option(images, "csv")
    check_balance(balance, "csv")
    fractions = check_fractions(fractions)
    if csv is None:
        raise ConfigError("csv: option csv (the table, relative to --data-dir) is required")
    for name, value in (("csv", csv), ("label_column", label_column),
                        ("patient_column", patient_column), ("split_column", split_column)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"csv: option {name} {value!r}: expected one name "
                              "(label_columns takes a list)")
    for name, value in (("label_map", label_map), ("filters", filters)):
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"csv: option {name} {value!r}: expected a mapping, e.g. "
                              f"{name}=\"{{{'a: b' if name == 'label_map' else 'view: [PA]'}}}\"")
    if classes is not None and not isinstance(classes, (str, list, tuple)):
        raise ConfigError(f"csv: option classes {classes!r}: expected class names, e.g. "
                          "classes=[normal, pneumonia]")
    if (label_column is None) == (label_columns is None):
        raise ConfigError("csv: give exactly one of label_column (a column of class names) or "
                          "label_columns (one 0/1 column per class)")
    image_columns = [image_column] if isinstance(image_column, str) else list(image_column)
    label_names = [label_column] if label_columns is None else (
        [label_columns] if isinstance(label_columns, str) else list(label_columns))
    path = _within(root, csv)
    table = _read_table(path, {
        "image_column": image_columns,
        "label_column" if label_columns is None else "label_columns": label_names,
        "patient_column": [] if patient_column is None else [patient_column],
        "split_column": [] if split_column is None else [split_column],
        "filters": list(filters or {})})

    excluded = {}
    table = _apply_filters(table, filters, excluded)
    odd = {}   # row -> a label cell that is not 0 or 1 (a bad row, skipped on request)
    if label_columns is None:
        found, blank = _parse_label_cells(table[label_column], label_map)
    else:
        found, blank, odd = _parse_label_columns(table[label_names], label_names, label_map)
    dropped = np.array([parts is None for parts in found], bool) & ~blank
    for reason, rows in (("blank label", blank), ("label_map to null", dropped)):
        if rows.any():
            excluded[reason] = int(rows.sum())
    keep = ~(blank | dropped)
    odd_rows = [(new, odd[old]) for new, old in enumerate(np.flatnonzero(keep)) if old in odd]
    table, found = table[keep].reset_index(drop=True), [f for f, k in zip(found, keep) if k]
    class_names = sorted({c for parts in found for c in parts}) if classes is None else (
        [classes] if isinstance(classes, str) else [str(c) for c in classes])
    if not class_names or not len(table):
        raise DataError(f"{path}: no row with a label is left (left out: {excluded or 'none'}; "
                        f"the table has {len(keep)} row(s))")

    labels, bad = _label_matrix(found, class_names, label_column or "label_columns")
    bad += odd_rows
    image_base = root if image_dir is None else _within(root, image_dir)
    relative, paths, bad_images = _image_paths(table, image_columns, image_base)
    on_disk = files_present(paths)
    listed_rows = len(table) + sum(excluded.values())      # the table's rows
    named = f"named in column(s) {image_columns} of {path}"
    patients = (relative.to_numpy(dtype=str) if patient_column is None
                else table[patient_column].str.strip().to_numpy(dtype=str))
    bad += bad_images + [(row, f"column {patient_column!r}: empty patient id")
                         for row in np.flatnonzero(patients == "")]
    split = None
    if split_column is not None:
        split = table[split_column].str.strip().str.lower().map(SPLIT_NAMES).to_numpy(object)
        bad += [(row, f"column {split_column!r}: split {table[split_column].iloc[row]!r} is "
                      f"not one of train, val, test") for row in np.flatnonzero(pd.isna(split))]

    ok, skipped = _screen_rows(bad, table["line"].to_numpy(), paths, path, skip_bad_images)
    if images == "present":
        ok = keep_present(ok, on_disk, excluded, dataset="csv", where=str(image_base),
                          listed=named)
    table, labels, paths, patients = table[ok], labels[ok], paths[ok], patients[ok]
    split, on_disk = None if split is None else split[ok], on_disk[ok]
    multi_label = bool((labels.sum(1) != 1).any())
    split = _splits(patients, split, fractions, seed, None if multi_label else labels.argmax(1),
                    f"csv: {path}")
    # meta: the table's own columns, the file name as ``image`` (as every loader's) and the line.
    meta = table.drop(columns="line").reset_index(drop=True).assign(
        image=[os.path.basename(p) for p in paths], line=table["line"].to_numpy(),
        on_disk=on_disk)
    data = Dataset(name="csv", class_names=class_names, multi_label=multi_label,
                   paths=np.asarray(paths, dtype=str), labels=labels, patients=patients,
                   split=split, meta=meta, root=root, skipped=skipped, excluded=excluded,
                   listed=listed_rows, patient_ids=patient_column is not None)
    if excluded:
        print(f"csv: {path.name}: left out " + ", ".join(f"{n} row(s) ({why})"
                                                         for why, n in excluded.items()))
    data = settle_absent(data, required=check_images, skip=skip_bad_images, listed=named,
                         where=str(image_base))
    data = screen_images(data, check_images=check_images, skip_bad_images=skip_bad_images,
                         workers=workers)
    return balance_dataset(data, balance, seed)


def _read_table(path: Path, named: dict) -> pd.DataFrame:
    """The CSV as strings with a ``line`` column; DataError for a missing file or column."""
    if not path.is_file():
        raise DataError(f"csv: table {path} (option csv) does not exist")
    table = read_csv_text(path, "csv")                     # with each row's ``line``
    for option, columns in named.items():
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise DataError(f"{path}: column(s) {missing} (option {option}) not in the table; "
                            f"its columns are {[c for c in table.columns if c != 'line']}")
    return table


def _label_matrix(found, class_names, column: str):
    """(rows, classes) 0/1 labels and the (row, reason) of rows with an unknown label."""
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.zeros((len(found), len(class_names)), np.float32)
    bad = []
    for row, parts in enumerate(found):
        unknown = [p for p in parts if p not in index]
        if unknown:
            bad.append((row, f"column {column!r}: unknown label(s) {unknown}; the classes are "
                             f"{class_names}"))
        labels[row, [index[p] for p in parts if p in index]] = 1.0
    return labels, bad


def _image_paths(table: pd.DataFrame, columns, base: Path):
    """Relative names, full paths and the (row, reason) of unnamed or repeated images
    (absent ones are the business of :mod:`chestkd.data.presence`)."""
    relative = pd.Series([os.path.join(*cells) for cells in table[columns].to_numpy()],
                         dtype=object)
    paths = np.array([str(base / name) for name in relative], dtype=object)
    bad = []
    for row, (name, full) in enumerate(zip(relative, paths)):
        if not name.strip():
            bad.append((row, f"column {columns}: empty image name"))
    for row in np.flatnonzero(pd.Series(paths).duplicated().to_numpy()):
        bad.append((row, f"column {columns}: image {relative.iloc[row]!r} listed again"))
    return relative, paths, bad


def _screen_rows(bad, lines, paths, path: Path, skip: bool):
    """Rows to keep and the ``skipped`` table; without ``skip`` the first bad row raises."""
    ok = np.ones(len(paths), bool)
    skipped = pd.DataFrame(columns=["path", "reason"])
    if not bad:
        return ok, skipped
    bad = sorted(bad)
    if not skip:
        row, reason = bad[0]
        raise DataError(f"{path}, line {lines[row]}: {reason} ({len(bad)} bad row(s); "
                        f"{SKIP_HINT})")
    reasons = {}
    for row, reason in bad:
        reasons.setdefault(row, f"{path}, line {lines[row]}: {reason}")
    ok[list(reasons)] = False
    if not ok.any():
        raise DataError(f"{path}: every row is bad ({len(reasons)} skipped)")
    return ok, pd.DataFrame({"path": [paths[r] for r in reasons],
                             "reason": list(reasons.values())})


def _within(root: Path, name) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else root / path


def _apply_filters(table: pd.DataFrame, filters, excluded: dict) -> pd.DataFrame:
    if not filters:
        return table
    if not isinstance(filters, dict):
        raise ConfigError(f"csv: filters must be a mapping like {{view: [PA, AP]}}, got "
                          f"{filters!r}")
    keep = np.ones(len(table), bool)
    for column, values in filters.items():
        allowed = {str(v).strip() for v in (values if isinstance(values, (list, tuple, set))
                                            else [values])}
        passed = table[column].str.strip().isin(allowed).to_numpy()
        if (keep & ~passed).any():
            excluded[f"filter {column}"] = int((keep & ~passed).sum())
        keep &= passed
    return table[keep].reset_index(drop=True)


def _parse_label_cells(cells: pd.Series, label_map):
    """Per row: the list of class names (None: dropped by the map); and the blank rows."""
    mapping = {str(k).strip(): v for k, v in (label_map or {}).items()}
    blank = (cells.str.strip() == "").to_numpy()
    found = []
    for cell in cells.str.strip():
        if not cell:
            found.append(None)
            continue
        parts = []
        whole = mapping.get(cell, cell)
        for part in ([] if whole is None else str(whole).split("|")):
            part = part.strip()
            mapped = mapping.get(part, part)
            if mapped is None:
                parts = None
                break
            parts.append(str(mapped).strip())
        found.append(None if whole is None or parts is None else sorted(set(parts)))
    return found, blank


def _parse_label_columns(cells: pd.DataFrame, columns, label_map):
    """Per row: the classes of its 1 cells (column names, renamed by ``label_map``; None when
    a positive class maps to null); the rows whose cells are all blank; and {row: reason} of
    the rows with a cell that is not 0 or 1 (bad rows: an error, or skipped and listed)."""
    values = cells.apply(lambda column: column.str.strip().str.lower())
    blank = (values == "").all(axis=1).to_numpy()
    odd = {}
    for row, col in np.argwhere(~values.isin(TRUE_CELLS | FALSE_CELLS).to_numpy()):
        odd.setdefault(int(row), f"column {columns[col]!r}: label value "
                                 f"{cells.iloc[row, col]!r} is not 0 or 1 (option label_columns)")
    names = [(label_map or {}).get(column, column) for column in columns]
    positive = values.isin(TRUE_CELLS).to_numpy()
    found = []
    for flags, is_blank in zip(positive, blank):
        classes = [names[c] for c in np.flatnonzero(flags)]
        found.append(None if is_blank or None in classes else sorted(set(map(str, classes))))
    return found, blank, odd


def _splits(patients, given, fractions, seed, stratify, source) -> np.ndarray:
    if given is None:
        return patient_split(patients, fractions, seed, stratify=stratify)
    split = np.asarray(given, dtype="<U5")
    check_no_leakage(patients, split, f"{source} (split_column)")
    if "val" not in set(split):
        train = split == "train"
        share = fractions[1] / (fractions[0] + fractions[1])
        split[train] = patient_split(patients[train], (1 - share, share), seed,
                                     stratify=None if stratify is None else stratify[train],
                                     names=("train", "val"))
    return split
