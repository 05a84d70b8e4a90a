"""The other real layouts, as they come: a class-folder set (normal / pneumonia / COVID-19,
grey and RGB films of several sizes, the patient id in the file name, one broken file) and a
CSV collection (blank and unknown labels, a row whose image is missing). Same messages as a
partial ChestX-ray14 download: counts per split and class, few-positives warnings, absent
images counted and named, errors that name the file, the line and the column."""
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from chestkd.data.csv_table import load_csv
from chestkd.data.folder import load_folder
from chestkd.data.presence import ABSENT_EXCLUDED, ABSENT_REASON
from chestkd.errors import DataError
from chestkd.recipes import base_training
from chestkd.training.config import BASE_DEFAULTS, resolve_config
from chestkd.training.classifier import load_run_data

CLASSES = ["normal", "pneumonia", "COVID-19"]
SIZES = [(20, 24), (32, 32), (40, 28)]
PATIENT_REGEX = r"^(?P<patient>pt\d+)_"
TINY = ["--model", "conv3_student", "--image-size", "32", "--batch-size", "8", "--epochs", "1",
        "--learning-rate", "0.01", "--schedule", "constant", "latency_images=2",
        "bootstrap=40", "jit_compile=false", "--no-saliency"]


def film(rng, index):
    """A small film: grey (H, W) or colour (H, W, 3), one of three sizes."""
    height, width = SIZES[index % 3]
    if index % 2:
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return rng.integers(0, 256, (height, width), dtype=np.uint8)


def write_films(folder: Path, names, rng, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for offset, name in enumerate(names):
        assert cv2.imwrite(str(folder / name), film(rng, start + offset))


@pytest.fixture
def class_folders(tmp_path):
    """18 patients x 2 films per class folder (PNG and JPEG); the last COVID-19 film is cut."""
    root = tmp_path / "covid_set"
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        files = [f"pt{c * 100 + p:03d}_{k}.{'png' if p % 2 else 'jpg'}"
                 for p in range(18) for k in range(2)]
        write_films(root / name, files, rng, start=c)
    broken = sorted((root / "COVID-19").glob("*.png"))[-1]
    broken.write_bytes(broken.read_bytes()[:-30])
    return root, broken


def test_class_folders_mixed_films_broken_file_and_counts(class_folders, tmp_path, capsys):
    root, broken = class_folders
    with pytest.raises(DataError, match=rf"bad image {broken}: truncated PNG .*--skip-bad-images"):
        load_folder(root, patient_regex=PATIENT_REGEX, check_images=True)
    config = resolve_config(["--dataset", "folder", "--data-dir", str(root), "--patient-regex",
                             PATIENT_REGEX, "--skip-bad-images", "--images", "present"],
                            BASE_DEFAULTS)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    data = load_run_data(config, run_dir)
    out = capsys.readouterr().out
    assert "folder: 107 of the 108 images listed (1 unreadable, skipped)" in out
    assert "skipped images: 1 unreadable; listed in" in out
    skipped = pd.read_csv(run_dir / "skipped.csv")
    assert skipped["path"].tolist() == [str(broken)]
    assert skipped["reason"][0].startswith("truncated PNG")
    data.check_patient_leakage()
    # the counts printed are the data's: one line per class with its images per split
    assert data.class_names == sorted(CLASSES)
    for c, name in enumerate(data.class_names):
        per_split = [int(((data.split == s) & (data.labels[:, c] == 1)).sum())
                     for s in ("train", "val", "test")]
        rows = [line.split() for line in out.splitlines() if line.startswith(f"  {name} ")]
        assert rows[0] == [name, *(str(n) for n in [sum(per_split), *per_split])]
    val_counts = data.labels[data.split == "val"].sum(0)
    if (val_counts < 5).any():
        assert "  val: " + ", ".join(f"{n} {int(v)}" for n, v in
                                     zip(data.class_names, val_counts) if v < 5) in out


def test_base_training_on_mixed_class_folders(class_folders, tmp_path):
    root, _ = class_folders
    out = tmp_path / "runs"
    results = base_training.run(["--dataset", "folder", "--data-dir", str(root),
                                 "--patient-regex", PATIENT_REGEX, "--skip-bad-images",
                                 "--out", str(out), *TINY])
    assert 0.0 <= results["mean_auc"] <= 1.0 and results["test_images"] > 0
    card = next(out.rglob("model_card.md")).read_text()
    assert "Images: 107 of the 108 images listed (1 unreadable, skipped)." in card


def write_collection(root: Path):
    """metadata.csv: 60 films of 30 patients, then a blank label, an unknown label and a row
    whose image file is missing (lines 62, 63 and 64)."""
    rng = np.random.default_rng(1)
    rows = [{"filename": f"f{i:02d}.png", "finding": CLASSES[(i // 2) % 3],
             "patientid": str(i // 2)} for i in range(60)]
    write_films(root / "images", [row["filename"] for row in rows], rng)
    write_films(root / "images", ["blank.png", "tb.png"], rng)
    rows += [{"filename": "blank.png", "finding": "", "patientid": "90"},
             {"filename": "tb.png", "finding": "Tuberculosis", "patientid": "91"},
             {"filename": "gone.png", "finding": "COVID-19", "patientid": "92"}]
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return rows


CSV_OPTIONS = dict(csv="metadata.csv", image_dir="images", label_column="finding",
                   patient_column="patientid", classes=CLASSES)


def test_csv_collection_blank_unknown_and_missing_rows(tmp_path, capsys):
    write_collection(tmp_path)
    with pytest.raises(DataError, match=r"metadata\.csv, line 63: column 'finding': unknown "
                                        r"label\(s\) \['Tuberculosis'\]"):
        load_csv(tmp_path, **CSV_OPTIONS)
    options = {**CSV_OPTIONS, "label_map": {"Tuberculosis": None}}
    with pytest.raises(DataError) as error:
        load_csv(tmp_path, **options, check_images=True)
    message = str(error.value)
    assert (f"csv: 60 of the 61 images named in column(s) ['filename'] of "
            f"{tmp_path / 'metadata.csv'} are on disk and 1 is absent (e.g. line 64: "
            f"{tmp_path / 'images' / 'gone.png'}") in message
    assert "images: present" in message and "--skip-bad-images" in message
    data = load_csv(tmp_path, **options, images="present", check_images=True)
    assert len(data) == 60 and data.listed == 63
    assert data.excluded == {"blank label": 1, "label_map to null": 1, ABSENT_EXCLUDED: 1}
    skipped = load_csv(tmp_path, **options, skip_bad_images=True)
    assert skipped.skipped["reason"].tolist() == [ABSENT_REASON]
    # a run: the summary names what was left out and why
    config = resolve_config(["--dataset", "csv", "--data-dir", str(tmp_path), "--csv",
                             "metadata.csv", "--image-dir", "images", "--label-column",
                             "finding", "--patient-column", "patientid", "--images",
                             "present", "label_map={Tuberculosis: null}",
                             "classes=[normal, pneumonia, COVID-19]"], BASE_DEFAULTS)
    capsys.readouterr()
    load_run_data(config, tmp_path)
    out = capsys.readouterr().out
    assert "left out 1 row(s) (blank label), 1 row(s) (label_map to null), 1 row(s) (image " \
           "not on disk, images: present)" in out
    assert "csv: 60 of the 63 images listed (1 not on disk, left out by images: present)" in out
