"""The phantom: a procedural ChestX-ray14 look-alike, so everything runs with no download.

``write_phantom(out, images, size, seed)`` writes exactly the ChestX-ray14 layout::

    images/00000001_000.png ...   8-bit gray radiographs (patient id + follow-up number)
    Data_Entry_2017.csv           the 2020 revision's columns, labels |-separated
    BBox_List_2017.csv            the box of every finding present, in 1024x1024 space,
                                  Infiltration spelled "Infiltrate" as in the real file
    train_val_list.txt, test_list.txt   a patient-wise 80/20 split
    phantom.json                  the parameters (written last: marks the phantom complete)

so the real loader reads it unchanged. Anatomy (:mod:`chestkd.data.phantom_anatomy`) is
drawn once per patient and shared by the patient's follow-up films; labels follow
ChestX-ray14's prevalences and co-occurrences (:mod:`chestkd.data.phantom_labels`); each
finding has its own signature (:mod:`chestkd.data.phantom_findings`). Films vary in view
(PA/AP), inspiration, exposure, contrast, position, rotation and noise.

``load_phantom()`` with no folder writes the phantom into ``$CHESTKD_HOME`` (default
``~/.cache/chestkd``) once and loads it with the ChestX-ray14 loader.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from chestkd.data import CHESTXRAY14_FINDINGS
from chestkd.data.phantom_anatomy import Scene, adjust_for_view, sample_anatomy
from chestkd.data.phantom_findings import ANATOMY_EDITS, SCENE_EDITS, transform_box, warp
from chestkd.data.phantom_labels import sample_findings
from chestkd.errors import ConfigError, DataError

BOX_SPACE = 1024
VERSION = 1
METADATA_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
                   "Patient Gender,View Position,OriginalImage[Width,Height],"
                   "OriginalImagePixelSpacing[x,y]")
BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


def render(anatomy, findings, rng: np.random.Generator, size: int, view: str = "PA"):
    """One film: uint8 (size, size) image and {finding: normalised (x0, y0, x1, y1)}."""
    # Every finding gets its own generator, drawn whether it is present or not, so a film
    # with and one without a finding differ in that finding's signature alone.
    finding_rngs = {name: np.random.default_rng(seed)
                    for name, seed in zip(CHESTXRAY14_FINDINGS, rng.integers(2 ** 32, size=14))}
    for name in CHESTXRAY14_FINDINGS:  # anatomy-level findings first
        if name in findings and name in ANATOMY_EDITS:
            anatomy = ANATOMY_EDITS[name](anatomy, finding_rngs[name])
    anatomy = adjust_for_view(anatomy, view, rng.uniform(-0.02, 0.02))
    scene = Scene(anatomy, size, view)
    boxes = {}
    unknown = set(findings) - set(CHESTXRAY14_FINDINGS)
    if unknown:
        raise ConfigError(f"unknown phantom finding(s) {sorted(unknown)}")
    for name in CHESTXRAY14_FINDINGS:
        if name in findings:
            boxes[name] = SCENE_EDITS[name](scene, finding_rngs[name])
    density = scene.density()
    # Beer-Lambert: transmitted fraction exp(-k D); the film shows attenuation as brightness.
    k = rng.uniform(1.4, 2.2)
    image = 1.0 - np.exp(-k * np.clip(density, 0.0, None))
    image = image / (1.0 - math.exp(-k * 1.4))  # a fixed scale: a finding changes only itself
    # Patient position: small rotation, shift and scale about the image centre.
    angle = math.radians(rng.uniform(-4, 4))
    scale = rng.uniform(0.94, 1.06)
    shift = rng.uniform(-0.03, 0.03, 2)
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    matrix = np.array([[c, -s, 0.5 - 0.5 * c + 0.5 * s + shift[0]],
                       [s, c, 0.5 - 0.5 * s - 0.5 * c + shift[1]]])
    image = warp(image.astype(np.float32), matrix)
    boxes = {name: transform_box(box, matrix) for name, box in boxes.items()}
    # Exposure and contrast, detector noise.
    gamma = rng.uniform(0.7, 1.4)
    image = np.clip(image, 0, 1) ** gamma
    image = rng.uniform(0.0, 0.08) + rng.uniform(0.8, 1.0) * image
    image = image + rng.normal(0, rng.uniform(0.01, 0.03), image.shape)
    image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.5)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8), boxes


def generate_image(rng: np.random.Generator, size: int, findings):
    """A film of a new random patient with ``findings``: (uint8 image, boxes)."""
    return render(sample_anatomy(rng), set(findings), rng, size)


def plan(images: int, seed: int, patients: int | None = None) -> pd.DataFrame:
    """Who is filmed when: patient, follow-up, age, sex, view and findings of each image."""
    if images < 10:
        raise ConfigError(f"--images {images}: the phantom needs at least 10 images")
    rng = np.random.default_rng([seed, 1])
    patients = patients or max(3, images // 3)
    # Each patient has at least one film; the rest go to random patients (follow-ups).
    owner = np.concatenate([np.arange(patients),
                            rng.integers(0, patients, max(0, images - patients))])[:images]
    owner = np.sort(owner)
    rows = []
    for index, patient in enumerate(owner):
        follow_up = int((owner[:index] == patient).sum())
        image_rng = np.random.default_rng([seed, 2, index])
        findings = sample_findings(image_rng)
        rows.append({"index": index, "patient": int(patient) + 1, "follow_up": follow_up,
                     "view": "AP" if image_rng.random() < 0.4 else "PA",
                     "findings": "|".join(f for f in CHESTXRAY14_FINDINGS if f in findings)})
    frame = pd.DataFrame(rows)
    frame["name"] = [f"{p:08d}_{f:03d}.png" for p, f in zip(frame.patient, frame.follow_up)]
    return frame


def _render_row(args):
    row, size, seed, folder = args
    cv2.setNumThreads(1)
    anatomy = sample_anatomy(np.random.default_rng([seed, 3, row["patient"]]))
    rng = np.random.default_rng([seed, 4, row["index"]])
    findings = set(filter(None, row["findings"].split("|")))
    image, boxes = render(anatomy, findings, rng, size, row["view"])
    if not cv2.imwrite(os.path.join(folder, row["name"]), image):
        raise DataError(f"could not write {os.path.join(folder, row['name'])}")
    return row["name"], anatomy.female, boxes


def _parameters(images, size, seed, patients):
    return {"version": VERSION, "images": int(images), "size": int(size), "seed": int(seed),
            "patients": patients}


def write_phantom(out, images: int = 1000, size: int = 256, seed: int = 0,
                  patients: int | None = None, workers: int | None = None) -> Path:
    """Write a phantom into ``out`` (see the module docstring); returns ``out``.

    The phantom is built in a temporary sibling folder and renamed into place, so ``out``
    is either complete or absent. A complete phantom with the same parameters is reused;
    any other non-empty ``out`` is refused, never overwritten.
    """
    out = Path(out)
    parameters = _parameters(images, size, seed, patients)
    if size < 32:
        raise ConfigError(f"--size {size}: the phantom needs at least 32 pixels")
    if out.exists() and any(out.iterdir()):
        marker = out / "phantom.json"
        if marker.exists() and json.loads(marker.read_text()) == parameters:
            return out
        raise DataError(f"{out}: the folder is not empty and holds no phantom with these "
                        f"parameters ({parameters}); choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (staging / "images").mkdir()
        rows = plan(images, seed, patients)
        jobs = [(row, size, seed, str(staging / "images")) for row in rows.to_dict("records")]
        workers = workers or os.cpu_count() or 1
        # Threads, not processes: OpenCV and NumPy's large-array operations release the GIL,
        # and threads work the same from a script, a notebook or a process that already runs
        # TensorFlow (forking one is unsafe; spawning needs an importable __main__).
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(_render_row, jobs))
        _write_tables(staging, rows, results, seed)
        (staging / "phantom.json").write_text(json.dumps(parameters))
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _write_tables(folder: Path, rows: pd.DataFrame, results, seed: int) -> None:
    rng = np.random.default_rng([seed, 5])
    ages = {p: int(rng.integers(18, 86)) for p in rows.patient.unique()}
    lines = [METADATA_HEADER]
    boxes = [BOX_HEADER]
    for row, (name, female, finding_boxes) in zip(rows.itertuples(), results):
        labels = row.findings or "No Finding"
        age = min(ages[row.patient] + row.follow_up // 4, 95)
        lines.append(f"{name},{labels},{row.follow_up},{row.patient},{age},"
                     f"{'F' if female else 'M'},{row.view},{BOX_SPACE},{BOX_SPACE},0.168,0.168")
        for finding, (x0, y0, x1, y1) in finding_boxes.items():
            label = "Infiltrate" if finding == "Infiltration" else finding
            boxes.append(f"{name},{label},{x0 * BOX_SPACE:.3f},{y0 * BOX_SPACE:.3f},"
                         f"{(x1 - x0) * BOX_SPACE:.3f},{(y1 - y0) * BOX_SPACE:.3f}")
    (folder / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (folder / "BBox_List_2017.csv").write_text("\n".join(boxes) + "\n")
    patients = rows.patient.unique()
    test = set(np.random.default_rng([seed, 6]).permutation(patients)[:max(1, len(patients) // 5)])
    in_test = rows.patient.isin(test)
    (folder / "test_list.txt").write_text("\n".join(rows.name[in_test]) + "\n")
    (folder / "train_val_list.txt").write_text("\n".join(rows.name[~in_test]) + "\n")


def default_folder(images: int, size: int, seed: int) -> Path:
    home = Path(os.environ.get("CHESTKD_HOME", Path.home() / ".cache" / "chestkd"))
    return home / f"phantom-{images}-{size}-{seed}"


def load_phantom(data_dir=None, *, images: int = 1000, size: int = 256, phantom_seed: int = 0,
                 split: str = "official", **options):
    """The phantom as a :class:`~chestkd.data.dataset.Dataset` named ``"phantom"``.

    With no ``data_dir`` it is written (once) into the default cache folder; ``options`` go
    to :func:`chestkd.data.chestxray14.load_chestxray14` (``seed``, ``views``, ``labels``...).
    """
    from chestkd.data.chestxray14 import load_chestxray14
    if data_dir is None:
        data_dir = default_folder(images, size, phantom_seed)
        if not (data_dir / "phantom.json").exists():
            print(f"writing the phantom dataset ({images} images, {size} px) to {data_dir}")
        write_phantom(data_dir, images=images, size=size, seed=phantom_seed)
    data = load_chestxray14(data_dir, split=split, **options)
    data.name = "phantom"
    return data
