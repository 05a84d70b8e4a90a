"""The 14-finding (multi-label) phantom: a procedural ChestX-ray14 look-alike.

``write_phantom(out, images, size, seed)`` writes exactly the ChestX-ray14 layout::

    images/00000001_000.png ...   8-bit gray radiographs (patient id + follow-up number)
    Data_Entry_2017.csv           the 2020 revision's columns, labels |-separated
    BBox_List_2017.csv            the box of every finding present, in 1024x1024 space,
                                  Infiltration spelled "Infiltrate" as in the real file
    train_val_list.txt, test_list.txt   a patient-wise 80/20 split
    phantom.json                  the parameters (written last: marks the phantom complete)

so the real loader reads it unchanged. Anatomy (:mod:`chestkd.data.phantom.anatomy`) and
the placement of each lesion are drawn once per patient and shared by the patient's
follow-up films, and a follow-up repeats the previous film's findings half the time, so a
patient's films look alike and splits must be patient-wise. Labels follow ChestX-ray14's
prevalences and co-occurrences (:mod:`chestkd.data.phantom.labels`), with each official
list holding every finding at least ``min(3, films // 30)`` times; each finding has its own
signature (:mod:`chestkd.data.phantom.findings`). Films vary in view (PA/AP, AP more often
for abnormal films), inspiration, exposure, contrast, position, rotation and noise; ages,
sexes and original film formats resemble the release's.

``load_phantom()`` with no folder writes the phantom into ``$CHESTKD_HOME`` (default
``~/.cache/chestkd``) once and loads it with the ChestX-ray14 loader.

Label noise (``load_phantom(label_noise=p)``, :mod:`chestkd.data.phantom.label_noise`): the
files always hold the true findings (one phantom serves every noise level); the loaded Dataset's
``labels`` are corrupted the way an NLP labeller reading the reports would, and
``clean_labels`` keeps the truth, for every split. For each finding ``c`` with prevalence
``pi_c`` in the phantom:

* false negatives: a true positive is reported negative with probability ``p``;
* false positives: a true negative is reported positive with probability
  ``q_c = p * pi_c / (1 - pi_c)``;

so the expected positive count is unchanged and about a share ``p`` of the reported positives
are wrong (precision and recall both ~``1 - p``; ChestX-ray14 quotes > 90 %, i.e. ``p`` ~0.1).
``p`` lies in ``[0, 0.5)``. The noise is seeded by the phantom's seed, not the training seed: a
fixed property of the data. It is drawn on the whole phantom (all images, all 14 findings) and
then restricted to the loaded rows and labels, so an image's reported labels do not depend on
the loader's filters (``views``, ``labels``, ``drop_other_findings``, which select on the true
findings).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from chestkd.data import CHESTXRAY14_FINDINGS
from chestkd.data.phantom.anatomy import Scene, adjust_for_view, sample_anatomy
from chestkd.data.phantom.findings import ANATOMY_EDITS, SCENE_EDITS, transform_box, warp
from chestkd.data.phantom.labels import sample_findings
from chestkd.data.phantom.label_noise import check_label_noise, corrupt_labels
from chestkd.errors import ConfigError, DataError

BOX_SPACE = 1024
VERSION = 2  # bumped whenever the same parameters would give other files
METADATA_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
                   "Patient Gender,View Position,OriginalImage[Width,Height],"
                   "OriginalImagePixelSpacing[x,y]")
BOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


def render(anatomy, findings, rng: np.random.Generator, size: int, view: str = "PA"):
    """One film: uint8 (size, size) image and {finding: normalised (x0, y0, x1, y1)}."""
    if view not in ("PA", "AP"):
        raise ConfigError(f"view {view!r}: expected 'PA' or 'AP'")
    unknown = set(findings) - set(CHESTXRAY14_FINDINGS)
    if unknown:
        raise ConfigError(f"unknown phantom finding(s) {sorted(unknown)}; expected some of "
                          f"{list(CHESTXRAY14_FINDINGS)} (no finding: an empty set)")
    # Every finding has its own generator, seeded by the patient: a patient's nodule stays in
    # place from film to film, and a film with and one without a finding differ in that
    # finding's signature alone.
    finding_rngs = {name: np.random.default_rng([anatomy.seed, i])
                    for i, name in enumerate(CHESTXRAY14_FINDINGS)}
    for name in CHESTXRAY14_FINDINGS:  # anatomy-level findings first
        if name in findings and name in ANATOMY_EDITS:
            anatomy = ANATOMY_EDITS[name](anatomy, finding_rngs[name])
    anatomy = adjust_for_view(anatomy, view, rng.uniform(-0.02, 0.02))
    scene = Scene(anatomy, size, view)
    boxes = {}
    for name in CHESTXRAY14_FINDINGS:
        if name in findings:
            boxes[name] = SCENE_EDITS[name](scene, finding_rngs[name])
    return expose(scene, boxes, rng)


def expose(scene: Scene, boxes: dict, rng: np.random.Generator):
    """The film of an edited ``scene``: uint8 image and its boxes moved with the patient.

    Beer-Lambert exposure, patient position (rotation, shift, scale), gamma, contrast,
    detector noise and blur, drawn from ``rng``; ``boxes`` are normalised (x0, y0, x1, y1).
    Shared by every phantom, so all of them look like the same radiographs.
    """
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


def generate_image(rng: np.random.Generator, size: int, findings, view: str = "PA"):
    """A film of a new random patient with ``findings`` (an empty set: no finding).

    Returns the uint8 (size, size) image and ``{finding: (x, y, w, h)}``, the box of each
    finding in the image's pixel coordinates.
    """
    image, boxes = render(sample_anatomy(rng), set(findings), rng, size, view)
    return image, {name: (x0 * size, y0 * size, (x1 - x0) * size, (y1 - y0) * size)
                   for name, (x0, y0, x1, y1) in boxes.items()}


# Follow-up films per patient: P(k) ~ k^-1.9 (ChestX-ray14: 57 % of patients have one film,
# a long tail has dozens; this gives ~63 % and a mean of ~3).
FOLLOW_UP_EXPONENT = 1.9
# A follow-up film repeats the previous film's findings with this probability, else its
# findings are drawn afresh: a stationary chain, so prevalences are unchanged, but a patient's
# films are alike - which is why splits must be patient-wise.
PERSISTENCE = 0.5
TEST_FRACTION = 0.2
# Each official split holds every finding at least min(3, images in split // 30) times.
MIN_PER_SPLIT, IMAGES_PER_REQUIRED = 3, 30
# (width, height, pixel spacing) of the original films, the release's most common ones.
ORIGINAL_FORMATS = ((2500, 2048, 0.168), (2992, 2991, 0.143), (3056, 2544, 0.139),
                    (2048, 2500, 0.171), (2021, 2021, 0.194311))
ORIGINAL_FORMAT_WEIGHTS = (0.40, 0.26, 0.17, 0.10, 0.07)


def films_per_patient(rng, images: int, patients: int | None) -> np.ndarray:
    if patients is not None:
        if not 2 <= patients <= images:
            raise ConfigError(f"patients={patients}: must lie between 2 and images={images}")
        # One film each; the rest go to patients with heavy-tailed (Pareto) propensities.
        weights = rng.pareto(1.2, patients) + 1e-3
        return 1 + rng.multinomial(images - patients, weights / weights.sum())
    longest = max(2, min(40, images // 20))
    k = np.arange(1, longest + 1)
    p = k ** -FOLLOW_UP_EXPONENT
    counts = []
    while sum(counts) < images or len(counts) < 2:
        counts.append(int(rng.choice(k, p=p / p.sum())))
    counts = np.array(counts)
    counts[-1] -= counts.sum() - images
    if counts[-1] <= 0:                      # the last patient was one film too many
        counts = counts[:-1]
        counts[-1] += images - counts.sum()
    return counts


def test_patients(rng, counts: np.ndarray) -> np.ndarray:
    """Patients (0-based) in the test list: shuffled, added until ~20 % of the films."""
    order = rng.permutation(len(counts))
    taken, chosen = 0, []
    for patient in order[:-1]:               # leave at least one patient for train_val
        if taken >= TEST_FRACTION * counts.sum():
            break
        chosen.append(patient)
        taken += counts[patient]
    return np.array(sorted(chosen))


def _top_up(rng, findings: list[set], in_split: np.ndarray) -> None:
    """Add rare findings to random films of a split until each appears often enough."""
    rows = np.flatnonzero(in_split)
    need = min(MIN_PER_SPLIT, len(rows) // IMAGES_PER_REQUIRED)
    for name in CHESTXRAY14_FINDINGS:
        have = sum(name in findings[i] for i in rows)
        candidates = [i for i in rows if name not in findings[i]]
        # Prefer abnormal films, so the share of "No Finding" barely moves.
        candidates.sort(key=lambda i: (not findings[i], rng.random()))
        for i in candidates[:max(0, need - have)]:
            findings[i].add(name)


def plan(images: int, seed: int, patients: int | None = None) -> pd.DataFrame:
    """Who is filmed when: patient, follow-up, age, view, split and findings of each image."""
    if images < 10:
        raise ConfigError(f"--images {images}: the phantom needs at least 10 images")
    rng = np.random.default_rng([seed, 1])
    counts = films_per_patient(rng, images, patients)
    test = set(test_patients(rng, counts))
    findings, rows = [], []
    for patient, films in enumerate(counts):
        # Ages like the release's (mean 47, sd 17); follow-ups span a few years.
        age = float(np.clip(rng.normal(47, 16.6), 1, 90))
        years_per_film = rng.uniform(0.0, 0.6)
        for follow_up in range(films):
            if follow_up and rng.random() < PERSISTENCE:
                findings.append(set(findings[-1]))
            else:
                findings.append(sample_findings(rng))
            original = ORIGINAL_FORMATS[rng.choice(len(ORIGINAL_FORMATS),
                                                   p=ORIGINAL_FORMAT_WEIGHTS)]
            rows.append({"index": len(rows), "patient": patient + 1, "follow_up": follow_up,
                         "age": int(min(95, age + follow_up * years_per_film)),
                         "view_draw": rng.random(),
                         "width": original[0], "height": original[1], "spacing": original[2],
                         "split": "test" if patient in test else "train_val"})
    frame = pd.DataFrame(rows)
    top_up_rng = np.random.default_rng([seed, 7])
    for split in ("train_val", "test"):
        _top_up(top_up_rng, findings, (frame.split == split).to_numpy())
    # Sicker patients are more often filmed AP (bedside): 30 % of normal, 50 % of abnormal
    # films, ~40 % overall as in the release.
    frame["view"] = np.where(frame.view_draw < np.where([bool(f) for f in findings], 0.5, 0.3),
                             "AP", "PA")
    frame["findings"] = ["|".join(f for f in CHESTXRAY14_FINDINGS if f in found)
                         for found in findings]
    frame["name"] = [f"{p:08d}_{f:03d}.png" for p, f in zip(frame.patient, frame.follow_up)]
    return frame.drop(columns="view_draw")


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
    parameters = _parameters(images, size, seed, patients)
    if size < 32:
        raise ConfigError(f"--size {size}: the phantom needs at least 32 pixels")

    def build(staging: Path) -> None:
        (staging / "images").mkdir()
        rows = plan(images, seed, patients)
        jobs = [(row, size, seed, str(staging / "images")) for row in rows.to_dict("records")]
        _write_tables(staging, rows, render_all(_render_row, jobs, workers))

    return write_once(out, parameters, build)


def render_all(function, jobs, workers: int | None = None) -> list:
    """``[function(job) for job in jobs]`` on a thread pool of ``workers`` (default: all cores).

    Threads, not processes: OpenCV and NumPy's large-array operations release the GIL, and
    threads work the same from a script, a notebook or a process that already runs TensorFlow
    (forking one is unsafe; spawning needs an importable __main__).
    """
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        return list(pool.map(function, jobs))


def write_once(out, parameters: dict, build) -> Path:
    """Make ``out`` by ``build(staging)`` in a temporary sibling folder, then ``phantom.json``
    (``parameters``, written last: it marks the folder complete) and a rename into place.

    A complete folder with the same ``parameters`` is reused; any other non-empty ``out`` is
    refused, never overwritten. Shared by every phantom.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if stored_parameters(out) == parameters:
            return out
        raise DataError(f"{out}: the folder is not empty and holds no phantom with these "
                        f"parameters ({parameters}); choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        build(staging)
        (staging / "phantom.json").write_text(json.dumps(parameters))
        try:
            os.replace(staging, out)  # replaces an empty folder, fails on a non-empty one
        except OSError:
            # Another process finished the same phantom first: use theirs.
            if stored_parameters(out) != parameters:
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def stored_parameters(folder: Path) -> dict | None:
    """The parameters in ``folder/phantom.json`` (written last: the phantom is complete)."""
    try:
        return json.loads((folder / "phantom.json").read_text())
    except (OSError, ValueError):
        return None


def _write_tables(folder: Path, rows: pd.DataFrame, results) -> None:
    lines = [METADATA_HEADER]
    boxes = [BOX_HEADER]
    for row, (name, female, finding_boxes) in zip(rows.itertuples(), results):
        labels = row.findings or "No Finding"
        lines.append(f"{name},{labels},{row.follow_up},{row.patient},{row.age},"
                     f"{'F' if female else 'M'},{row.view},{row.width},{row.height},"
                     f"{row.spacing},{row.spacing}")
        for finding, (x0, y0, x1, y1) in finding_boxes.items():
            label = "Infiltrate" if finding == "Infiltration" else finding
            boxes.append(f"{name},{label},{x0 * BOX_SPACE:.3f},{y0 * BOX_SPACE:.3f},"
                         f"{(x1 - x0) * BOX_SPACE:.3f},{(y1 - y0) * BOX_SPACE:.3f}")
    _write_text(folder / "Data_Entry_2017.csv", lines)
    _write_text(folder / "BBox_List_2017.csv", boxes)
    _write_text(folder / "test_list.txt", rows.name[rows.split == "test"])
    _write_text(folder / "train_val_list.txt", rows.name[rows.split == "train_val"])


def _write_text(path: Path, lines) -> None:
    path.write_text("\n".join(lines) + "\n")


def default_folder(images: int, size: int, seed: int) -> Path:
    home = Path(os.environ.get("CHESTKD_HOME", Path.home() / ".cache" / "chestkd"))
    return home / f"phantom-{images}-{size}-{seed}"


def load_phantom(data_dir=None, *, images: int = 1000, size: int = 256, phantom_seed: int = 0,
                 split: str = "official", label_noise: float = 0.0, **options):
    """The phantom as a :class:`~chestkd.data.dataset.Dataset` named ``"phantom"``.

    With no ``data_dir`` it is written (once) into the default cache folder; ``options`` go
    to :func:`chestkd.data.chestxray14.load_chestxray14` (``seed``, ``views``, ``labels``,
    ``cache_dir``...). ``label_noise=p`` in ``[0, 0.5)`` corrupts the loaded ``labels`` (the
    module doc gives the rates); ``clean_labels`` always holds the true labels (equal to
    ``labels`` when ``p = 0``: the phantom knows its truth at every noise level).
    """
    from chestkd.data.chestxray14 import load_chestxray14
    label_noise = check_label_noise(label_noise)
    if data_dir is None:
        data_dir = default_folder(images, size, phantom_seed)
        stored = stored_parameters(data_dir)
        if stored is not None and stored.get("version") != VERSION:
            # Our own cache, written by an older chestkd: regenerate it.
            print(f"replacing the phantom in {data_dir} (written by an older version)")
            shutil.rmtree(data_dir)
            stored = None
        if stored is None:
            print(f"writing the phantom dataset ({images} images, {size} px) to {data_dir}")
        write_phantom(data_dir, images=images, size=size, seed=phantom_seed)
    data = load_chestxray14(data_dir, split=split, **options)
    data.name = "phantom"
    # The phantom's own seed (phantom.json) when a folder is given, so the noise belongs to it.
    seed = (stored_parameters(Path(data.root)) or {}).get("seed", phantom_seed)
    return with_label_noise(data, label_noise, int(seed),
                            options.get("metadata", "Data_Entry_2017.csv"))


def with_label_noise(data, p: float, seed: int, metadata: str = "Data_Entry_2017.csv"):
    """``data`` with noisy ``labels`` at level ``p`` and the truth in ``clean_labels``.

    The noise is drawn on the full table of ``data.root``'s metadata file (every image, all
    14 findings, the prevalences ``pi_c`` measured there) and then picked out by image name
    and label column, so it does not depend on which rows or labels were loaded.
    """
    from chestkd.data.chestxray14 import find_metadata, parse_findings, read_metadata
    clean = data.labels.copy()
    if p == 0.0:
        return replace(data, clean_labels=clean)
    path = find_metadata(Path(data.root), metadata)
    frame = read_metadata(path)
    noisy = corrupt_labels(parse_findings(frame, path), p, seed)
    position = pd.Series(np.arange(len(frame)), index=frame["image"].to_numpy())
    rows = position.loc[data.meta["image"].to_numpy()].to_numpy()
    columns = [CHESTXRAY14_FINDINGS.index(name) for name in data.class_names]
    return replace(data, labels=noisy[np.ix_(rows, columns)], clean_labels=clean)
