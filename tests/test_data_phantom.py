"""The phantom: ChestX-ray14 layout, determinism, finding signatures inside their boxes."""
import json

import numpy as np
import pandas as pd
import pytest

from chestkd.data import CHESTXRAY14_FINDINGS
from chestkd.data.phantom import (BOX_HEADER, METADATA_HEADER, load_phantom, render,
                                  write_phantom)
from chestkd.data.phantom_anatomy import sample_anatomy
from chestkd.data.phantom_labels import sample_findings
from chestkd.errors import DataError


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("p") / "phantom", images=60, size=64, seed=3,
                         workers=1)


def test_writes_the_chestxray14_layout(phantom):
    assert (phantom / "Data_Entry_2017.csv").read_text().splitlines()[0] == METADATA_HEADER
    assert (phantom / "BBox_List_2017.csv").read_text().splitlines()[0] == BOX_HEADER
    meta = pd.read_csv(phantom / "Data_Entry_2017.csv")
    assert len(meta) == 60 and len(list((phantom / "images").glob("*.png"))) == 60
    labels = {f for cell in meta["Finding Labels"] for f in cell.split("|")}
    assert labels <= set(CHESTXRAY14_FINDINGS) | {"No Finding"}
    assert meta["Image Index"].str.match(r"^\d{8}_\d{3}\.png$").all()
    assert meta.groupby("Patient ID").size().max() > 1  # follow-ups
    train_val = set((phantom / "train_val_list.txt").read_text().split())
    test = set((phantom / "test_list.txt").read_text().split())
    assert train_val.isdisjoint(test) and train_val | test == set(meta["Image Index"])
    by_image = dict(zip(meta["Image Index"], meta["Patient ID"]))
    assert {by_image[i] for i in train_val}.isdisjoint({by_image[i] for i in test})


def test_every_finding_present_has_a_box_in_1024_space(phantom):
    meta = pd.read_csv(phantom / "Data_Entry_2017.csv")
    boxes = pd.read_csv(phantom / "BBox_List_2017.csv", header=None, skiprows=1,
                        usecols=range(6), names=["image", "label", "x", "y", "w", "h"])
    assert "Infiltration" not in set(boxes.label)  # spelled "Infiltrate" as in the release
    boxes["label"] = boxes.label.replace({"Infiltrate": "Infiltration"})
    expected = {(i, f) for i, cell in zip(meta["Image Index"], meta["Finding Labels"])
                for f in cell.split("|") if f != "No Finding"}
    assert set(zip(boxes.image, boxes.label)) == expected
    assert (boxes[["x", "y"]] >= 0).all().all() and (boxes.w > 0).all() and (boxes.h > 0).all()
    assert ((boxes.x + boxes.w) <= 1024 + 1e-6).all() and ((boxes.y + boxes.h) <= 1024 + 1e-6).all()


def test_same_seed_same_bytes_other_seed_differs(phantom, tmp_path):
    again = write_phantom(tmp_path / "again", images=60, size=64, seed=3, workers=2)
    for name in ("Data_Entry_2017.csv", "BBox_List_2017.csv", "images/00000001_000.png"):
        assert (again / name).read_bytes() == (phantom / name).read_bytes()
    other = write_phantom(tmp_path / "other", images=60, size=64, seed=4, workers=1)
    assert (other / "images/00000001_000.png").read_bytes() != \
        (phantom / "images/00000001_000.png").read_bytes()


def test_existing_folders_are_reused_or_refused_never_overwritten(phantom, tmp_path):
    stamp = (phantom / "phantom.json").stat().st_mtime_ns
    assert write_phantom(phantom, images=60, size=64, seed=3) == phantom
    assert (phantom / "phantom.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="not empty"):
        write_phantom(phantom, images=61, size=64, seed=3)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="mine"):
        write_phantom(tmp_path / "mine", images=20, size=64)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("finding", CHESTXRAY14_FINDINGS)
def test_each_signature_lies_in_its_box(finding):
    size = 128
    anatomy = sample_anatomy(np.random.default_rng(11))
    with_it, boxes = render(anatomy, {finding}, np.random.default_rng(5), size)
    without, none = render(anatomy, set(), np.random.default_rng(5), size)
    assert none == {} and set(boxes) == {finding}
    diff = np.abs(with_it.astype(float) - without.astype(float))
    assert diff.sum() > 0
    x0, y0, x1, y1 = (np.array(boxes[finding]) * size).round().astype(int)
    margin = 4  # pixels: blur and anti-aliasing spill slightly over the box
    inside = diff[max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin].sum()
    share = 0.6 if finding == "Cardiomegaly" else 0.8  # a bigger heart also displaces lung
    assert inside / diff.sum() > share, (finding, inside / diff.sum())


def test_label_statistics_follow_chestxray14():
    rng = np.random.default_rng(0)
    draws = [sample_findings(rng) for _ in range(6000)]
    counts = pd.Series({f: sum(f in d for d in draws) for f in CHESTXRAY14_FINDINGS})
    assert counts.idxmax() == "Infiltration" and counts.idxmin() == "Hernia"
    assert counts.min() > 0.01 * 6000  # the soft floor: rare findings still appear
    assert np.mean([not d for d in draws]) == pytest.approx(0.538, abs=0.02)
    with_effusion = [d for d in draws if "Effusion" in d]
    assert np.mean(["Atelectasis" in d for d in with_effusion]) > counts["Atelectasis"] / 6000


def test_load_phantom_writes_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CHESTKD_HOME", str(tmp_path))
    data = load_phantom(images=40, size=64, split="patient")
    assert data.name == "phantom" and len(data) == 40 and data.num_classes == 14
    folder = tmp_path / "phantom-40-64-0"
    assert json.loads((folder / "phantom.json").read_text())["images"] == 40
    data.check_patient_leakage()
    assert data.boxes is not None and len(data.boxes) > 0
