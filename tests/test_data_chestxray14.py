"""ChestX-ray14 loader, the describe command and the data CLI.

Fixture: tests/data/chestxray14 holds 123 rows (60 whole patients, all 14 findings) of the
2020 metadata, the same rows in the 2017 form, their 11 boxes and small official-style lists.
"""
import csv
import gzip
import json
import shutil
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from chestkd.data import CHESTXRAY8_FINDINGS, CHESTXRAY14_FINDINGS, load_dataset
from chestkd.data.__main__ import main
from chestkd.data.chestxray14 import load_chestxray14
from chestkd.data.dataset import Dataset
from chestkd.data.describe import describe
from chestkd.data.presence import ABSENT_REASON
from chestkd.errors import ConfigError, DataError

FIXTURE = Path(__file__).parent / "data" / "chestxray14"
V2020 = "Data_Entry_2017_v2020.csv"


def reference_rows(name=V2020):
    """The fixture metadata read with the csv module: independent of the loader."""
    with open(FIXTURE / name, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def reference_multi_hot(rows):
    table = np.zeros((len(rows), 14), dtype=np.float64)
    for i, row in enumerate(rows):
        for label in row[1].split("|"):
            if label != "No Finding":
                table[i, CHESTXRAY14_FINDINGS.index(label)] = 1.0
    return table


@pytest.fixture
def copy_dir(tmp_path):
    """A writable copy of the fixture folder, without the 2017-form metadata."""
    target = tmp_path / "nih"
    shutil.copytree(FIXTURE, target)
    (target / "Data_Entry_2017.csv").unlink()
    return target


# ------------------------------------------------------------------ labels and metadata

def test_labels_match_an_independent_csv_reading():
    data = load_chestxray14(FIXTURE, metadata=V2020, split="patient")
    _, rows = reference_rows()
    order = {row[0]: i for i, row in enumerate(rows)}
    index = [order[name] for name in data.meta["image"]]
    np.testing.assert_array_equal(data.labels, reference_multi_hot(rows)[index])
    assert data.class_names == list(CHESTXRAY14_FINDINGS) and data.multi_label
    assert len(data) == 123 and len(set(data.patients)) == 60
    assert data.patients.tolist() == [str(int(rows[i][3])) for i in index]
    assert (data.labels.sum(1) == 0).sum() == sum(row[1] == "No Finding" for row in rows)
    assert (data.mask == 1).all()


def test_2017_and_2020_forms_give_identical_labels_patients_and_splits():
    old = load_chestxray14(FIXTURE)                      # default name: the 2017 form
    new = load_chestxray14(FIXTURE, metadata=V2020)
    assert old.meta["image"].tolist() == new.meta["image"].tolist()
    np.testing.assert_array_equal(old.labels, new.labels)
    np.testing.assert_array_equal(old.patients, new.patients)
    np.testing.assert_array_equal(old.split, new.split)
    for column in ("follow_up", "age", "sex", "view", "original_width", "spacing_y"):
        assert old.meta[column].tolist() == new.meta[column].tolist()
    assert "Unnamed: 11" not in old.meta.columns


def test_meta_keeps_age_sex_view_follow_up_and_the_bracketed_columns():
    data = load_chestxray14(FIXTURE, metadata=V2020, split="patient")
    _, rows = reference_rows()
    first = {row[0]: row for row in rows}[data.meta["image"].iloc[0]]
    meta = data.meta.iloc[0]
    assert (meta["follow_up"], meta["age"], meta["sex"], meta["view"]) == (
        int(first[2]), int(first[4]), first[5], first[6])
    assert (meta["original_width"], meta["original_height"]) == (int(first[7]), int(first[8]))
    assert meta["spacing_x"] == pytest.approx(float(first[9]))
    assert not data.meta["on_disk"].any()       # metadata only: nothing on disk, no error


def test_gzip_and_v2020_fallback_and_ages_with_units(copy_dir):
    (copy_dir / V2020).unlink()
    header, rows = reference_rows()
    rows = [row[:4] + [f"{int(row[4]):03d}Y"] + row[5:] for row in rows]  # "058Y" style ages
    with gzip.open(copy_dir / "Data_Entry_2017_v2020.csv.gz", "wt", newline="") as handle:
        csv.writer(handle).writerows([header] + rows)
    data = load_chestxray14(copy_dir)     # default name missing: finds the .csv.gz revision
    reference = load_chestxray14(FIXTURE, metadata=V2020)
    np.testing.assert_array_equal(data.labels, reference.labels)
    assert data.meta["age"].tolist() == reference.meta["age"].tolist()


def test_missing_metadata_names_the_folder(tmp_path):
    with pytest.raises(DataError, match="no metadata file in .*Data_Entry_2017"):
        load_chestxray14(tmp_path)


def test_csv_without_expected_columns_names_file_and_columns(copy_dir):
    header, rows = reference_rows()
    keep = [i for i, name in enumerate(header) if name not in ("Patient ID", "Finding Labels")]
    with open(copy_dir / "bad.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([[r[i] for i in keep] for r in [header] + rows])
    with pytest.raises(DataError) as error:
        load_chestxray14(copy_dir, metadata="bad.csv")
    message = str(error.value)
    assert "bad.csv" in message and "Finding Labels" in message and "Patient ID" in message


def test_unknown_label_names_file_line_and_label(copy_dir):
    text = (copy_dir / V2020).read_text().splitlines()
    fields = text[5].split(",")
    fields[1] = "Effusion|Pneumonitis"
    text[5] = ",".join(fields)
    (copy_dir / V2020).write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"Data_Entry_2017_v2020.csv, line 6: unknown label "
                                        r"'Pneumonitis'"):
        load_chestxray14(copy_dir)


def test_duplicate_image_row_is_an_error(copy_dir):
    text = (copy_dir / V2020).read_text().splitlines()
    (copy_dir / V2020).write_text("\n".join(text + [text[3]]) + "\n")
    name = text[3].split(",")[0]
    with pytest.raises(DataError, match=f"{name}' is listed more than once \\(lines \\[4, 125\\]"):
        load_chestxray14(copy_dir)


# ------------------------------------------------------------------ splits and filters

def read_list(name):
    return [line.strip() for line in open(FIXTURE / name) if line.strip()]


def test_official_split_follows_the_lists_and_carves_val_by_patient():
    data = load_chestxray14(FIXTURE, seed=3, val_fraction=0.2)
    images = data.meta["image"].to_numpy()
    assert sorted(images[data.split == "test"]) == sorted(read_list("test_list.txt"))
    assert sorted(images[data.split != "test"]) == sorted(read_list("train_val_list.txt"))
    train, val = set(data.patients[data.split == "train"]), set(data.patients[data.split == "val"])
    assert train and val and not train & val
    share = (data.split == "val").sum() / (data.split != "test").sum()
    assert abs(share - 0.2) < 0.1
    data.check_patient_leakage()
    again = load_chestxray14(FIXTURE, seed=3, val_fraction=0.2)
    other = load_chestxray14(FIXTURE, seed=4, val_fraction=0.2)
    np.testing.assert_array_equal(data.split, again.split)
    assert (data.split != other.split).any()
    np.testing.assert_array_equal(data.split == "test", other.split == "test")


def test_patient_split_fractions_and_no_leakage():
    data = load_chestxray14(FIXTURE, split="patient", fractions=(0.6, 0.2, 0.2), seed=1)
    shares = [(data.split == s).mean() for s in ("train", "val", "test")]
    np.testing.assert_allclose(shares, [0.6, 0.2, 0.2], atol=0.06)
    data.check_patient_leakage()


def test_zero_validation_makes_an_empty_split_that_subset_rejects():
    data = load_chestxray14(FIXTURE, val_fraction=0.0)
    assert (data.split == "val").sum() == 0
    with pytest.raises(DataError, match="'val' split is empty"):
        data.subset("val")
    with pytest.raises(ConfigError, match="val_fraction"):
        load_chestxray14(FIXTURE, val_fraction=1.0)


def test_official_split_without_lists_suggests_the_patient_split(copy_dir, capsys):
    (copy_dir / "test_list.txt").unlink()
    with pytest.raises(DataError, match="test_list.txt.*missing.*split='patient'"):
        load_chestxray14(copy_dir, split="official")
    patient = load_chestxray14(copy_dir, split="patient")
    assert len(patient) == 123
    # no split asked for: the patient split, said in one line (the official one with lists)
    default = load_chestxray14(copy_dir)
    assert "test_list.txt" in capsys.readouterr().out
    np.testing.assert_array_equal(default.split, patient.split)
    np.testing.assert_array_equal(load_chestxray14(FIXTURE).split,
                                  load_chestxray14(FIXTURE, split="official").split)


def test_patient_in_both_lists_is_named(copy_dir):
    _, rows = reference_rows()
    patient_of = {row[0]: str(int(row[3])) for row in rows}
    train_val = read_list("train_val_list.txt")
    per_patient = {}
    for name in train_val:
        per_patient.setdefault(patient_of[name], []).append(name)
    # move one image of a patient with several: the patient is then in both lists
    patient = next(p for p, names in per_patient.items() if len(names) > 1)
    moved = per_patient[patient][0]
    (copy_dir / "train_val_list.txt").write_text(
        "\n".join(n for n in train_val if n != moved) + "\n")
    test = read_list("test_list.txt") + [moved]
    (copy_dir / "test_list.txt").write_text("\n".join(test) + "\n")
    with pytest.raises(DataError, match=f"patient '{patient}' appears in splits "
                                        r"\['test', 'train_val'\]"):
        load_chestxray14(copy_dir)


def test_image_in_both_lists_is_named(copy_dir):
    name = read_list("train_val_list.txt")[0]
    with open(copy_dir / "test_list.txt", "a") as handle:
        handle.write(name + "\n")
    with pytest.raises(DataError, match=f"image '{name}' is in both"):
        load_chestxray14(copy_dir)


def test_view_filter_keeps_only_those_views():
    _, rows = reference_rows()
    data = load_chestxray14(FIXTURE, split="patient", views=["pa"])
    assert len(data) == sum(row[6] == "PA" for row in rows)
    assert set(data.meta["view"]) == {"PA"}
    both = load_chestxray14(FIXTURE, split="patient", views=["PA", "AP"])
    assert len(both) == len(rows)
    with pytest.raises(DataError, match=r"no image has a View Position in \['LL'\]"):
        load_chestxray14(FIXTURE, split="patient", views="LL")


def test_label_subset_selects_columns_and_can_drop_other_findings():
    full = load_chestxray14(FIXTURE, split="patient")
    eight = load_chestxray14(FIXTURE, split="patient", labels=CHESTXRAY8_FINDINGS)
    assert eight.class_names == list(CHESTXRAY8_FINDINGS)
    np.testing.assert_array_equal(eight.labels, full.labels[:, :8])
    dropped = load_chestxray14(FIXTURE, split="patient", labels=CHESTXRAY8_FINDINGS,
                               drop_other_findings=True)
    only_other = (full.labels[:, :8].sum(1) == 0) & (full.labels.sum(1) > 0)
    assert only_other.any() and len(dropped) == len(full) - only_other.sum()
    reordered = load_chestxray14(FIXTURE, split="patient", labels=["Hernia", "Infiltrate"])
    np.testing.assert_array_equal(reordered.labels, full.labels[:, [13, 3]])
    with pytest.raises(ConfigError, match="unknown finding.*'Flu'"):
        load_chestxray14(FIXTURE, labels=["Flu"])


# ------------------------------------------------------------------ images and boxes

def make_images(root, names, size=(48, 64), folder="images_001/images"):
    target = root / folder
    target.mkdir(parents=True, exist_ok=True)
    image = np.zeros(size, dtype=np.uint8)
    for name in names:
        cv2.imwrite(str(target / name), image)
    return target


def test_boxes_are_scaled_to_the_image_size_on_disk(copy_dir):
    with open(FIXTURE / "BBox_List_2017.csv", newline="") as handle:
        raw = list(csv.reader(handle))[1:]
    on_disk = sorted({row[0] for row in raw})[:-1]           # one boxed image stays missing
    make_images(copy_dir, on_disk, size=(48, 64))            # height 48, width 64
    data = load_chestxray14(copy_dir, split="patient")
    assert len(data.boxes) == len(raw)
    for row in raw:
        box = data.boxes[(data.boxes["image"] == row[0])
                         & (data.boxes["label"] == row[1].replace("Infiltrate", "Infiltration"))]
        assert len(box) == 1
        x, y, w, h = (float(v) for v in row[2:6])
        sx, sy = (64 / 1024, 48 / 1024) if row[0] in on_disk else (1.0, 1.0)
        np.testing.assert_allclose(box[["x", "y", "w", "h"]].to_numpy()[0],
                                   [x * sx, y * sy, w * sx, h * sy], rtol=1e-12)
        assert box["path"].iloc[0] == data.paths[data.meta["image"] == row[0]][0]
    assert "Infiltrate" not in set(data.boxes["label"])
    eight = load_chestxray14(copy_dir, split="patient", labels=["Mass", "Nodule"])
    assert set(eight.boxes["label"]) == {"Mass", "Nodule"}


def test_images_found_in_the_tarball_folders_and_missing_ones_counted(copy_dir):
    _, rows = reference_rows()
    names = [row[0] for row in rows]
    make_images(copy_dir, names[:10], folder="images_001/images")
    make_images(copy_dir, names[10:20], folder="images_002/images")
    extra = make_images(copy_dir, names[20:25], folder="elsewhere")
    data = load_chestxray14(copy_dir, split="patient", image_dirs=["elsewhere"])
    assert int(data.meta["on_disk"].sum()) == 25
    where = dict(zip(data.meta["image"], data.paths))
    assert where[names[12]] == str(copy_dir / "images_002" / "images" / names[12])
    assert where[names[22]] == str(extra / names[22])
    with pytest.raises(DataError, match="image folder .*nowhere"):
        load_chestxray14(copy_dir, split="patient", image_dirs=["nowhere"])


def test_check_and_skip_bad_images(copy_dir):
    _, rows = reference_rows()
    names = [row[0] for row in rows]
    folder = make_images(copy_dir, names, folder="images")
    (folder / names[7]).write_bytes(b"")                                   # empty file
    data = open(folder / names[8], "rb").read()
    (folder / names[8]).write_bytes(data[:-12])                            # truncated PNG
    (folder / names[9]).unlink()                                           # missing
    # the absent file first, counted and named, before any image is opened
    with pytest.raises(DataError, match=f"122 of the 123 images listed in .* are on disk and 1 "
                                        f"is absent \\(e.g. {names[9]};"):
        load_chestxray14(copy_dir, check_images=True, workers=2)
    with pytest.raises(DataError, match=f"{names[7]}: empty file"):
        load_chestxray14(copy_dir, check_images=True, workers=2, images="present")
    reference = load_chestxray14(copy_dir)
    kept = load_chestxray14(copy_dir, skip_bad_images=True, workers=2)
    assert len(kept) == len(rows) - 3
    assert sorted(Path(p).name for p in kept.skipped["path"]) == sorted(names[7:10])
    reasons = dict(zip((Path(p).name for p in kept.skipped["path"]), kept.skipped["reason"]))
    assert reasons[names[7]] == "empty file" and reasons[names[9]] == ABSENT_REASON
    assert reasons[names[8]].startswith("truncated PNG")
    # skipping never moves a kept image to another split
    split_of = dict(zip(reference.meta["image"], reference.split))
    assert all(split_of[n] == s for n, s in zip(kept.meta["image"], kept.split))


# ------------------------------------------------------------------ describe and CLI

def test_describe_counts_match_the_dataset():
    data = load_chestxray14(FIXTURE, metadata=V2020)
    report = describe(data)
    _, rows = reference_rows()
    expected = reference_multi_hot(rows).sum(0)
    for i, name in enumerate(CHESTXRAY14_FINDINGS):
        assert report["labels"][name]["total"] == expected[i]
        assert report["labels"][name]["total"] == sum(
            report["labels"][name][s] for s in ("train", "val", "test"))
    assert report["labels"]["No Finding"]["total"] == sum(r[1] == "No Finding" for r in rows)
    assert report["images"] == {"listed": 123, "on_disk": 0, "missing": 123}
    assert report["splits"]["test"]["images"] == len(read_list("test_list.txt"))
    assert report["patient_leakage"]["status"] == "PASS"
    assert report["boxes"]["total"] == 11 and report["boxes"]["Infiltration"] == 1


def test_describe_reports_leakage_as_fail():
    data = Dataset(name="t", class_names=["a"], multi_label=True, paths=["1", "2", "3"],
                   labels=[[1], [0], [1]], patients=["p", "p", "q"],
                   split=["train", "test", "train"])
    leakage = describe(data)["patient_leakage"]
    assert leakage == {"status": "FAIL", "patients_in_two_splits": 1,
                       "example": {"patient": "p", "splits": ["test", "train"]}}


def test_cli_describe_json_and_text(capsys, copy_dir):
    assert main(["describe", "--dataset", "chestxray14", "--data-dir", str(FIXTURE),
                 "--json", "--option", "views=[PA]"]) == 0
    report = json.loads(capsys.readouterr().out)
    _, rows = reference_rows()
    assert report["images"]["listed"] == sum(row[6] == "PA" for row in rows)
    assert report["options"] == {"views": ["PA"], "split": "official"}
    for name in ("test_list.txt", "train_val_list.txt"):
        (copy_dir / name).unlink()
    assert main(["describe", "--dataset", "chestxray14", "--data-dir", str(copy_dir)]) == 0
    text = capsys.readouterr().out
    assert "split=patient" in text and "patient leakage check: PASS" in text
    assert "123 listed, 0 found on disk, 123 missing" in text
    assert f"Hernia{'':14}{3:>10}" in text     # Hernia: 3 positive images in the fixture


def test_cli_errors_exit_2_with_a_message(capsys, copy_dir):
    (copy_dir / "test_list.txt").unlink()
    code = main(["describe", "--dataset", "chestxray14", "--data-dir", str(copy_dir),
                 "--split", "official"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "--split patient" in err
    assert "Traceback" not in err
    assert main(["describe", "--dataset", "chestxray14", "--data-dir", str(copy_dir),
                 "--option", "colour=red"]) == 2
    assert "unknown option(s) ['colour']" in capsys.readouterr().err
    assert main(["describe", "--dataset", "folder", "--data-dir", str(copy_dir),
                 "--split", "patient"]) == 2
    assert "--split applies to chestxray14 only" in capsys.readouterr().err


def test_cli_phantom_and_prepare_pass_only_given_options(monkeypatch, capsys, tmp_path):
    calls = {}
    phantom = types.ModuleType("chestkd.data.phantom")
    phantom.write_phantom = lambda out, **kw: calls.setdefault("phantom", (out, kw))
    cache = types.ModuleType("chestkd.data.cache")
    cache.prepare = lambda data, out, **kw: calls.setdefault("prepare", (data, out, kw))
    monkeypatch.setitem(sys.modules, "chestkd.data.phantom", phantom)
    monkeypatch.setitem(sys.modules, "chestkd.data.cache", cache)
    assert main(["phantom", "--out", str(tmp_path), "--images", "12"]) == 0
    assert calls["phantom"] == (str(tmp_path), {"images": 12})
    assert main(["prepare", "--dataset", "chestxray14", "--data-dir", str(FIXTURE),
                 "--out", str(tmp_path / "cache"), "--size", "64", "--skip-bad-images",
                 "--option", "split=patient"]) == 0
    data, out, options = calls["prepare"]
    assert out == str(tmp_path / "cache") and len(data) == 123
    assert options == {"size": 64, "skip_bad_images": True}
    monkeypatch.setattr(cache, "prepare", lambda *a, **k: (_ for _ in ()).throw(
        DataError("cache folder is read-only")))
    assert main(["prepare", "--dataset", "chestxray14", "--data-dir", str(FIXTURE),
                 "--out", "x", "--workers", "3", "--skip-bad-images"]) == 2
    assert "error: cache folder is read-only" in capsys.readouterr().err
    # without --skip-bad-images the absent images are counted before prepare starts
    assert main(["prepare", "--dataset", "chestxray14", "--data-dir", str(FIXTURE),
                 "--out", "x"]) == 2
    assert "error: chestxray14: 0 of the 123 images of the dataset are on disk and 123 are " \
           "absent" in capsys.readouterr().err


def test_registry_loads_chestxray14():
    data = load_dataset("chestxray14", FIXTURE, split="patient", seed=5)
    reference = load_chestxray14(FIXTURE, split="patient", seed=5)
    np.testing.assert_array_equal(data.split, reference.split)


def test_describe_names_the_all_negative_row_no_finding_only_for_all_14_findings():
    # Regression: with labels=[Mass] the row of films negative for Mass was called "No
    # Finding", so Effusion or Infiltration films were counted as normal ones.
    data = load_chestxray14(FIXTURE, metadata=V2020, labels=["Mass"])
    _, rows = reference_rows()
    report = describe(data)
    assert "No Finding" not in report["labels"]
    assert report["labels"]["(all negative)"]["total"] == sum(
        "Mass" not in r[1].split("|") for r in rows)
