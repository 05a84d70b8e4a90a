"""The single-label phantom: normal / pneumonia / COVID-19-like films, one class per film.

``write_pneumonia_phantom(out, images, size, seed, classes)`` writes class folders (the
layout of the pediatric pneumonia set, which :func:`chestkd.data.folder.load_folder` reads)
and a table in the layout of the COVID-19 image data collection's ``metadata.csv`` (which
:func:`chestkd.data.csv_table.load_csv` reads)::

    train/<class>/P00001_000.png ...   8-bit gray films, patient id + follow-up number
    test/<class>/...                   a patient-wise ~80/20 split (no patient in both)
    metadata.csv     patientid, offset, sex, age, finding, view, filename, folder
                     (finding spelled as in the collection: "No Finding",
                     "Pneumonia/Bacterial", "Pneumonia/Viral/COVID-19")
    boxes.csv        filename, folder, label, x, y, w, h: one box per lesion, file pixels
    phantom.json     the parameters (written last: marks the phantom complete)

The patterns are those of :mod:`chestkd.data.phantom.pneumonia_patterns` on the anatomy of
the 14-finding phantom (:mod:`chestkd.data.phantom.anatomy`), exposed the same way. Class
shares follow the COVID-19 case study's data (1,717 normal, 4,273 pneumonia, 301 COVID-19
films), renormalised over the chosen ``classes``: ``["normal", "pneumonia"]`` gives
29 % / 71 %, close to the pediatric set's 27 % / 73 %. Patients have follow-up films like
the 14-finding phantom's (a follow-up keeps the previous film's class half the time, and
a lesion stays in place), so splits must be patient-wise.

``load_pneumonia_phantom()`` with no folder writes it into ``$CHESTKD_HOME`` once and loads
it with the folder loader: the test folder as written, validation carved patient-wise and
stratified from train by the run's ``seed`` (the share ``fractions[1] / (fractions[0] +
fractions[1])``, 1/8 by default), ``balance`` on the training split.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from chestkd.data.balance import balance_dataset, check_balance
from chestkd.data.dataset import Dataset
from chestkd.data.images import resolve_dir
from chestkd.data.phantom.multilabel import (expose, films_per_patient, render_all,
                                             stored_parameters, test_patients, write_once)
from chestkd.data.phantom.anatomy import Scene, adjust_for_view, sample_anatomy
from chestkd.data.phantom.pneumonia_patterns import PATTERN_EDITS, PATTERNS
from chestkd.errors import ConfigError, DataError

VERSION = 2  # bumped whenever the same parameters would give other files
DEFAULT_CLASSES = PATTERNS
# Films per class in the COVID-19 case study's data set (6,291 films).
CLASS_COUNTS = {"normal": 1717, "pneumonia": 4273, "covid19": 301}
FINDING_NAMES = {"normal": "No Finding", "pneumonia": "Pneumonia/Bacterial",
                 "covid19": "Pneumonia/Viral/COVID-19"}
PATIENT_REGEX = r"^P(\d+)_\d+\.png$"
# Each written split holds every class at least min(3, max(1, films in split // 10)) times.
MIN_PER_SPLIT = 3
PERSISTENCE = 0.5


def check_classes(classes) -> list[str]:
    """The phantom's classes in label order; a ConfigError names a bad choice."""
    names = list(DEFAULT_CLASSES) if classes is None else (
        [classes] if isinstance(classes, str) else [str(c) for c in classes])
    unknown = [c for c in names if c not in PATTERNS]
    if unknown or len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"pneumonia_phantom: classes must be two or three distinct names "
                          f"among {list(PATTERNS)}; got {names}")
    return names


def plan(images: int, seed: int, classes) -> pd.DataFrame:
    """Who is filmed when: patient, follow-up, age, view, split and class of each film."""
    classes = check_classes(classes)
    if images < 10:
        raise ConfigError(f"pneumonia_phantom: images={images}; at least 10 are needed")
    rng = np.random.default_rng([seed, 11])
    prior = np.array([CLASS_COUNTS[c] for c in classes], np.float64)
    prior /= prior.sum()
    counts = films_per_patient(rng, images, None)
    test = set(test_patients(rng, counts))
    rows = []
    for patient, films in enumerate(counts):
        age = float(np.clip(rng.normal(50, 18), 1, 90))
        label = None
        for follow_up in range(films):
            if label is None or rng.random() >= PERSISTENCE:
                label = int(rng.choice(len(classes), p=prior))
            rows.append({"index": len(rows), "patient": patient + 1, "follow_up": follow_up,
                         "age": int(min(95, age + 0.3 * follow_up)), "label": label,
                         "view_draw": rng.random(),
                         "split": "test" if patient in test else "train"})
    frame = pd.DataFrame(rows)
    _top_up(np.random.default_rng([seed, 12]), frame, len(classes))
    # Sicker patients are more often filmed AP (bedside), as in the 14-finding phantom.
    frame["class"] = np.asarray(classes)[frame.label]
    abnormal = (frame["class"] != "normal").to_numpy()
    frame["view"] = np.where(frame.view_draw < np.where(abnormal, 0.5, 0.3), "AP", "PA")
    frame["filename"] = [f"P{p:05d}_{f:03d}.png" for p, f in zip(frame.patient, frame.follow_up)]
    frame["folder"] = frame.split + "/" + frame["class"]
    return frame.drop(columns="view_draw")


def _top_up(rng, frame: pd.DataFrame, n_classes: int) -> None:
    """Relabel random films of a split's largest class until every class is present."""
    for split in ("train", "test"):
        rows = np.flatnonzero((frame.split == split).to_numpy())
        need = min(MIN_PER_SPLIT, max(1, len(rows) // 10))
        for label in range(n_classes):
            labels = frame.label.to_numpy()[rows]
            missing = need - int((labels == label).sum())
            if missing <= 0:
                continue
            largest = np.bincount(labels, minlength=n_classes).argmax()
            donors = rng.permutation(rows[labels == largest])[:missing]
            frame.loc[donors, "label"] = label


def _render_row(args):
    row, size, seed, folder = args
    cv2.setNumThreads(1)
    anatomy = sample_anatomy(np.random.default_rng([seed, 3, row["patient"]]))
    rng = np.random.default_rng([seed, 4, row["index"]])
    # The lesion's generator belongs to the patient: a follow-up of the same class shows it
    # in the same place.
    lesion_rng = np.random.default_rng([anatomy.seed, 100 + PATTERNS.index(row["class"])])
    anatomy = adjust_for_view(anatomy, row["view"], rng.uniform(-0.02, 0.02))
    scene = Scene(anatomy, size, row["view"])
    lesions = PATTERN_EDITS[row["class"]](scene, lesion_rng)
    image, moved = expose(scene, dict(enumerate(lesions)), rng)
    path = os.path.join(folder, row["folder"], row["filename"])
    if not cv2.imwrite(path, image):
        raise DataError(f"could not write {path}")
    return anatomy.female, [moved[i] for i in range(len(lesions))]


def _parameters(images, size, seed, classes):
    return {"kind": "pneumonia_phantom", "version": VERSION, "images": int(images),
            "size": int(size), "seed": int(seed), "classes": list(classes)}


def write_pneumonia_phantom(out, images: int = 1000, size: int = 256, seed: int = 0,
                            classes=None, workers: int | None = None) -> Path:
    """Write the single-label phantom into ``out`` (see the module docstring); returns ``out``.

    Written in a temporary sibling folder and renamed into place; a complete phantom with
    the same parameters is reused, any other non-empty ``out`` refused.
    """
    classes = check_classes(classes)
    if size < 32:
        raise ConfigError(f"pneumonia_phantom: size={size}; at least 32 pixels are needed")
    parameters = _parameters(images, size, seed, classes)

    def build(staging: Path) -> None:
        rows = plan(images, seed, classes)
        for folder in rows.folder.unique():
            (staging / folder).mkdir(parents=True)
        jobs = [(row, size, seed, str(staging)) for row in rows.to_dict("records")]
        results = render_all(_render_row, jobs, workers)
        table = pd.DataFrame({
            "patientid": rows.patient, "offset": rows.follow_up,
            "sex": ["F" if female else "M" for female, _ in results], "age": rows.age,
            "finding": rows["class"].map(FINDING_NAMES), "view": rows.view,
            "filename": rows.filename, "folder": rows.folder})
        table.to_csv(staging / "metadata.csv", index=False)
        _write_boxes(staging / "boxes.csv", rows, results, size)

    return write_once(out, parameters, build)


def _write_boxes(path: Path, rows: pd.DataFrame, results, size: int) -> None:
    lines = []
    for filename, folder, label, (_, lesions) in zip(rows.filename, rows.folder, rows["class"],
                                                      results):
        for x0, y0, x1, y1 in lesions:
            if x1 - x0 <= 0 or y1 - y0 <= 0:
                continue      # a lesion pushed out of the film by the patient's position
            lines.append((filename, folder, label, x0 * size, y0 * size,
                          (x1 - x0) * size, (y1 - y0) * size))
    pd.DataFrame(lines, columns=["filename", "folder", "label", "x", "y", "w", "h"]).to_csv(
        path, index=False, float_format="%.3f")


def default_folder(images: int, size: int, seed: int, classes) -> Path:
    home = Path(os.environ.get("CHESTKD_HOME", Path.home() / ".cache" / "chestkd"))
    return home / f"pneumonia-phantom-{images}-{size}-{seed}-{'-'.join(classes)}"


def load_pneumonia_phantom(data_dir=None, *, images: int = 1000, size: int = 256,
                           phantom_seed: int = 0, classes=None, seed: int = 0,
                           fractions=(0.7, 0.1, 0.2), balance: str | None = None,
                           skip_bad_images: bool = False, check_images: bool = False,
                           workers: int | None = None) -> Dataset:
    """The single-label phantom as a Dataset named ``"pneumonia_phantom"`` (one-hot labels).

    With no ``data_dir`` it is written once into ``$CHESTKD_HOME``; a given folder must hold
    one (its ``phantom.json`` says which classes). ``classes`` picks the classes in label
    order (default normal, pneumonia, covid19); ``seed`` carves validation from train and
    drives ``balance`` (``undersample`` | ``oversample``, training split only).
    """
    from chestkd.data.folder import load_folder
    check_balance(balance, "pneumonia_phantom")
    if data_dir is None:
        classes = check_classes(classes)
        data_dir = default_folder(images, size, phantom_seed, classes)
        stored = stored_parameters(Path(data_dir))
        if stored is not None and stored.get("version") != VERSION:
            # Our own cache, written by an older chestkd: regenerate it.
            print(f"replacing the pneumonia phantom in {data_dir} (written by an older version)")
            shutil.rmtree(data_dir)
            stored = None
        if stored is None:
            print(f"writing the pneumonia phantom ({images} images, {size} px, classes "
                  f"{classes}) to {data_dir}")
        write_pneumonia_phantom(data_dir, images=images, size=size, seed=phantom_seed,
                                classes=classes)
    # Absolute, as load_folder's paths are: metadata.csv and boxes.csv are matched to them.
    root = resolve_dir(data_dir, "pneumonia_phantom")
    stored = stored_parameters(root)
    if not stored or stored.get("kind") != "pneumonia_phantom":
        raise DataError(f"pneumonia_phantom: {root} holds no pneumonia phantom (no phantom.json "
                        f"of kind pneumonia_phantom)")
    classes = stored["classes"] if classes is None else check_classes(classes)
    data = load_folder(root, classes=classes, split_dirs={"train": "train", "test": "test"},
                       fractions=fractions, seed=seed, patient_regex=PATIENT_REGEX,
                       skip_bad_images=skip_bad_images, check_images=check_images,
                       workers=workers)
    data.name = "pneumonia_phantom"
    data.meta, data.boxes = _meta_and_boxes(root, data)
    return balance_dataset(data, balance, seed)


def _meta_and_boxes(root: Path, data: Dataset):
    table = pd.read_csv(root / "metadata.csv", dtype={"folder": str, "filename": str})
    table["path"] = [str(root / folder / name) for folder, name in
                     zip(table.folder, table.filename)]
    by_path = table.set_index("path")
    meta = data.meta.copy()
    for column in ("patientid", "offset", "sex", "age", "view", "finding"):
        meta[column] = by_path.loc[data.paths, column].to_numpy()
    boxes = pd.read_csv(root / "boxes.csv", dtype={"folder": str, "filename": str})
    boxes["path"] = [str(root / folder / name) for folder, name in
                     zip(boxes.folder, boxes.filename)]
    boxes = boxes[boxes.path.isin(set(data.paths)) & boxes.label.isin(data.class_names)]
    size = stored_parameters(root)["size"]
    boxes = boxes.assign(image=boxes.filename, width=size, height=size)
    return meta, boxes[["image", "path", "label", "x", "y", "w", "h", "width", "height"]
                       ].reset_index(drop=True)
