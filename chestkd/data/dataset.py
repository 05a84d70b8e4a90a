"""The one dataset interface every loader returns.

A :class:`Dataset` is a table of images with labels, patients and a split. Loaders for
ChestX-ray14, CheXpert, class folders and the phantom all return it, so the input pipeline,
training, evaluation and saliency code never care where the images came from.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")


def choose_labels(labels, available, *, dataset: str, kind: str = "finding",
                  where: str = "", aliases=None) -> list[str]:
    """The label subset a user asked for (all of ``available`` when ``labels`` is None).

    An unknown, repeated or empty choice is a ConfigError naming the dataset and the option.
    """
    if labels is None:
        return list(available)
    names = [labels] if isinstance(labels, str) else list(labels)
    names = [(aliases or {}).get(name, name) for name in names]
    unknown = [name for name in names if name not in available]
    if unknown or not names:
        raise ConfigError(f"{dataset}: labels option has unknown {kind}(s) {unknown}; "
                          f"{where or 'choose from'} {list(available)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{dataset}: labels option repeats a {kind}: {names}")
    return names


@dataclass
class Dataset:
    """Images, labels and splits of one dataset.

    Attributes:
        name: dataset name, e.g. ``"chestxray14"``.
        class_names: the label names, in the order of the label columns.
        multi_label: True for independent findings (sigmoid, binary cross-entropy); False
            for mutually exclusive classes (softmax, categorical cross-entropy).
        paths: (N,) absolute image paths as str.
        labels: (N, C) float32; multi-hot, or one-hot for single-label data.
        mask: (N, C) float32; 1 where the label is known, 0 where it must not enter the loss
            (CheXpert U-Ignore). All ones for most datasets.
        patients: (N,) patient id as str (the file name when a dataset has none).
        split: (N,) one of ``"train"``, ``"val"``, ``"test"``.
        meta: per-image metadata table (N rows, same order), e.g. age, sex, view position.
        boxes: optional table of localisation boxes with columns
            ``image`` (file name), ``path``, ``label``, ``x``, ``y``, ``w``, ``h``
            in the pixel space of the image file on disk.
        root: dataset folder.
        skipped: rows dropped because of bad input (with an explicit skip option), as a table
            with columns ``path`` and ``reason``; reported by every run.
        excluded: rows a loader left out on purpose, reason -> count (the csv loader's
            filters and blank labels, the absent images of ``images="present"``); unlike
            ``skipped`` these are not errors.
        listed: how many images the source lists before any row is left out (the 112,120
            rows of ChestX-ray14's metadata when only some archives are unpacked); None when
            not known. The model card reports "N of ``listed``" images.
        clean_labels: (N, C) float32 true labels when the dataset knows them and ``labels``
            may be wrong (the phantom with ``label_noise``, see :mod:`chestkd.data.phantom`);
            None for real data, whose truth nobody knows. ``labels`` is always what training
            sees; ``clean_labels`` is for measuring what the noise did.
        upsampling: how many images a run enlarges to its input size, and by how much
            (:func:`chestkd.data.images.upsampling_summary`), set by the run that reads the
            data at a known size; None until then. The model card reports it.
        patient_ids: False when the source gave no patient id and each image stands for a
            patient of its own (a folder without ``patient_regex``, a CSV without
            ``patient_column``): the splits cannot keep a patient's images together, and the
            model card says so.
    """

    name: str
    class_names: list[str]
    multi_label: bool
    paths: np.ndarray
    labels: np.ndarray
    patients: np.ndarray
    split: np.ndarray
    mask: np.ndarray | None = None
    meta: pd.DataFrame | None = None
    boxes: pd.DataFrame | None = None
    root: Path | None = None
    skipped: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))
    clean_labels: np.ndarray | None = None
    excluded: dict = field(default_factory=dict)
    listed: int | None = None
    upsampling: dict | None = None
    patient_ids: bool = True

    def __post_init__(self):
        n = len(self.paths)
        self.paths = np.asarray(self.paths, dtype=str)
        self.labels = np.asarray(self.labels, dtype=np.float32).reshape(n, len(self.class_names))
        self.patients = np.asarray(self.patients, dtype=str)
        self.split = np.asarray(self.split, dtype=str)
        if self.mask is None:
            self.mask = np.ones_like(self.labels)
        self.mask = np.asarray(self.mask, dtype=np.float32)
        for name in ("patients", "split", "mask"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Dataset.{name} has {len(getattr(self, name))} rows, paths has {n}")
        if self.clean_labels is not None:
            self.clean_labels = np.asarray(self.clean_labels, dtype=np.float32)
            if self.clean_labels.shape != self.labels.shape:
                raise ValueError(f"Dataset.clean_labels has shape {self.clean_labels.shape}, "
                                 f"labels has {self.labels.shape}")
        if self.meta is not None:
            self.meta = self.meta.reset_index(drop=True)
        bad = sorted(set(self.split) - set(SPLITS))
        if bad:
            raise DataError(f"{self.name}: unknown split name(s) {bad}; expected {SPLITS}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, rows) -> "Dataset":
        """A new Dataset holding only ``rows`` (boolean mask or integer indices)."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        boxes = self.boxes
        if boxes is not None:
            boxes = boxes[boxes["path"].isin(set(self.paths[rows]))].reset_index(drop=True)
        return replace(
            self,
            paths=self.paths[rows], labels=self.labels[rows], mask=self.mask[rows],
            patients=self.patients[rows], split=self.split[rows],
            meta=None if self.meta is None else self.meta.iloc[rows].reset_index(drop=True),
            boxes=boxes,
            clean_labels=None if self.clean_labels is None else self.clean_labels[rows])

    def subset(self, split: str) -> "Dataset":
        """The images of one split. An empty split is an error naming the split."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
        part = self.select(self.split == split)
        if len(part) == 0:
            raise DataError(f"{self.name}: the {split!r} split is empty")
        return part

    def label_counts(self) -> pd.Series:
        """Images per label (known, positive labels only)."""
        return pd.Series((self.labels * self.mask).sum(0).astype(int), index=self.class_names)

    def check_classes(self) -> None:
        """Raise DataError where exclusive classes cannot train a classifier: fewer than two,
        or a class with no training image (an empty class folder, a ``--classes`` name that
        no row has)."""
        if self.multi_label:
            return
        if self.num_classes < 2:
            raise DataError(f"{self.name}: one class only ({', '.join(self.class_names)}); "
                            "a classifier of exclusive classes needs two or more")
        counts = self.labels[self.split == "train"].sum(axis=0)
        empty = [name for name, count in zip(self.class_names, counts) if count == 0]
        if empty:
            raise DataError(f"{self.name}: no training image of class(es) {empty} (a class "
                            "folder that is empty, or a --classes name no row has)")

    def check_patient_leakage(self) -> None:
        """Raise DataError if a patient appears in more than one split."""
        frame = pd.DataFrame({"patient": self.patients, "split": self.split})
        per_patient = frame.groupby("patient")["split"].nunique()
        leaked = per_patient[per_patient > 1]
        if len(leaked):
            example = leaked.index[0]
            splits = sorted(frame.loc[frame.patient == example, "split"].unique())
            raise DataError(
                f"{self.name}: {len(leaked)} patient(s) appear in more than one split, "
                f"e.g. patient {example!r} in {splits}")
