"""The phantom: ChestX-ray14 layout, determinism, finding signatures inside their boxes."""
import json

import numpy as np
import pandas as pd
import pytest

from chestkd.data import CHESTXRAY14_FINDINGS
from chestkd.data.phantom.anatomy import sample_anatomy
from chestkd.data.phantom.labels import sample_findings
from chestkd.data.phantom.multilabel import (BOX_HEADER, METADATA_HEADER, ORIGINAL_FORMATS,
                                             VERSION, generate_image, load_phantom, plan,
                                             render, write_phantom)
from chestkd.errors import ConfigError, DataError


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
@pytest.mark.parametrize("patient", [11, 12, 13])  # several patients: variants, both sides
def test_each_signature_lies_in_its_box(finding, patient):
    size = 96
    anatomy = sample_anatomy(np.random.default_rng(patient))
    with_it, boxes = render(anatomy, {finding}, np.random.default_rng(5), size)
    without, none = render(anatomy, set(), np.random.default_rng(5), size)
    assert none == {} and set(boxes) == {finding}
    diff = np.abs(with_it.astype(float) - without.astype(float))
    assert diff.sum() > 0
    x0, y0, x1, y1 = (np.array(boxes[finding]) * size).round().astype(int)
    margin = 3  # pixels: blur and anti-aliasing spill slightly over the box
    inside = diff[max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin].sum()
    share = 0.6 if finding == "Cardiomegaly" else 0.8  # a bigger heart also displaces lung
    assert inside / diff.sum() > share, (finding, inside / diff.sum())
    # ...and the box is no bigger than the signature needs: it holds most of the change
    # while covering a minority of the image (bilateral findings span both lungs).
    assert (x1 - x0) * (y1 - y0) < 0.8 * size * size


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


def test_plan_follow_ups_persist_and_every_split_holds_every_finding():
    frame = plan(500, seed=0)
    assert len(frame) == 500 and frame.name.is_unique
    films = frame.groupby("patient").size()
    assert films.min() >= 1 and (films == 1).mean() == pytest.approx(0.6, abs=0.12)
    # A follow-up repeats the previous film's findings half the time: far more often than
    # two films of different patients agree.
    same_patient = (frame.patient.diff() == 0).to_numpy()
    repeats = (frame.findings == frame.findings.shift()).to_numpy()
    assert repeats[same_patient].mean() > repeats[~same_patient][1:].mean() + 0.2
    assert frame.groupby("patient").split.nunique().max() == 1
    assert (frame.split == "test").mean() == pytest.approx(0.2, abs=0.05)
    for split in ("train_val", "test"):
        cells = frame.findings[frame.split == split]
        counts = {f: sum(f in cell.split("|") for cell in cells) for f in CHESTXRAY14_FINDINGS}
        assert min(counts.values()) >= 3, (split, counts)
    assert (frame.view == "AP").mean() == pytest.approx(0.4, abs=0.07)
    abnormal = frame.findings != ""
    assert (frame.view[abnormal] == "AP").mean() > (frame.view[~abnormal] == "AP").mean()
    assert frame.age.between(1, 95).all() and frame.age.mean() == pytest.approx(47, abs=4)


def test_plan_with_a_patient_count_and_bad_sizes():
    frame = plan(50, seed=1, patients=7)
    assert sorted(frame.patient.unique()) == list(range(1, 8)) and len(frame) == 50
    assert (frame.groupby("patient").follow_up.max() + 1 == frame.groupby("patient").size()).all()
    with pytest.raises(ConfigError, match="patients=1"):
        plan(50, seed=1, patients=1)
    with pytest.raises(ConfigError, match="at least 10"):
        plan(5, seed=1)


def test_metadata_columns_look_like_the_release(phantom):
    meta = pd.read_csv(phantom / "Data_Entry_2017.csv")
    assert set(meta["Patient Gender"]) <= {"M", "F"} and set(meta["View Position"]) <= {"PA", "AP"}
    assert meta["Patient Age"].between(1, 95).all()
    formats = {(w, h, s) for w, h, s in ORIGINAL_FORMATS}
    assert {(w, h, s) for w, h, s in zip(meta["OriginalImage[Width"], meta["Height]"],
                                         meta["OriginalImagePixelSpacing[x"])} <= formats
    assert (meta["OriginalImagePixelSpacing[x"] == meta["y]"]).all()
    # Follow-up numbers count each patient's films from zero.
    assert (meta.groupby("Patient ID")["Follow-up #"].apply(
        lambda s: list(s) == list(range(len(s))))).all()


def test_generate_image_gives_pixel_boxes_and_rejects_unknown_findings():
    image, boxes = generate_image(np.random.default_rng(2), 96, {"Mass", "Effusion"})
    again, same = generate_image(np.random.default_rng(2), 96, {"Mass", "Effusion"})
    assert image.dtype == np.uint8 and image.shape == (96, 96)
    assert np.array_equal(image, again) and boxes == same
    rng = np.random.default_rng(2)  # generate_image: a new patient, then the film
    _, normalised = render(sample_anatomy(rng), {"Mass", "Effusion"}, rng, 96)
    for name, (x, y, w, h) in boxes.items():
        x0, y0, x1, y1 = normalised[name]
        np.testing.assert_allclose([x, y, x + w, y + h], np.array([x0, y0, x1, y1]) * 96)
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 96 and y + h <= 96
    with pytest.raises(ConfigError, match="Pneumonitis"):
        generate_image(np.random.default_rng(0), 64, {"Pneumonitis"})
    with pytest.raises(ConfigError, match="view"):
        generate_image(np.random.default_rng(0), 64, set(), view="LL")


def test_a_patients_lesion_stays_in_place_across_films():
    anatomy = sample_anatomy(np.random.default_rng(4))
    first = render(anatomy, {"Nodule"}, np.random.default_rng(1), 128)[1]["Nodule"]
    second = render(anatomy, {"Nodule"}, np.random.default_rng(2), 128)[1]["Nodule"]
    other = render(sample_anatomy(np.random.default_rng(5)), {"Nodule"},
                   np.random.default_rng(1), 128)[1]["Nodule"]

    def centre(box):
        return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])

    # Films differ in position (shift <= 3 %, rotation <= 4 degrees, scale <= 6 %).
    assert np.abs(centre(first) - centre(second)).max() < 0.08
    assert np.abs(centre(first) - centre(other)).max() > 0.02


def test_load_phantom_replaces_a_cache_of_an_older_version(tmp_path, monkeypatch):
    monkeypatch.setenv("CHESTKD_HOME", str(tmp_path))
    folder = write_phantom(tmp_path / "phantom-20-32-0", images=20, size=32, seed=0)
    stale = json.loads((folder / "phantom.json").read_text())
    (folder / "phantom.json").write_text(json.dumps({**stale, "version": VERSION - 1}))
    data = load_phantom(images=20, size=32, split="patient")
    assert len(data) == 20
    assert json.loads((folder / "phantom.json").read_text())["version"] == VERSION
