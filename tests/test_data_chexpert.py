"""CheXpert loader: uncertainty policies, splits, path resolution, bad input.

Fixture: tests/data/chexpert/CheXpert-v1.0-small/{train,valid}.csv, synthetic rows in the
real file format (1.0 / 0.0 / -1.0 / blank cells, lateral views with a blank AP/PA).
"""
import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from chestkd.data import load_dataset
from chestkd.data.chexpert import load_chexpert
from chestkd.data.describe import describe
from chestkd.data.presence import ABSENT_REASON
from chestkd.errors import ConfigError, DataError

FIXTURE = Path(__file__).parent / "data" / "chexpert" / "CheXpert-v1.0-small"


def reference(name, frontal_only=True):
    """(header, rows, values) from the csv module; values float64 with blank = 0."""
    with open(FIXTURE / name, newline="") as handle:
        header, *rows = list(csv.reader(handle))
    if frontal_only:
        rows = [row for row in rows if row[3] == "Frontal"]
    values = np.array([[float(cell) if cell else 0.0 for cell in row[5:]] for row in rows])
    return header, rows, values


@pytest.fixture
def copy_dir(tmp_path):
    target = tmp_path / "CheXpert-v1.0-small"
    shutil.copytree(FIXTURE, target)
    return target


def rewrite(path, edit):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    edit(rows)
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)


@pytest.mark.parametrize("policy", ["ones", "zeros", "ignore"])
def test_uncertainty_policies_match_the_reference(policy):
    header, train_rows, train_values = reference("train.csv")
    _, test_rows, test_values = reference("valid.csv")
    values = np.concatenate([train_values, test_values])
    data = load_chexpert(FIXTURE, uncertainty=policy)
    assert data.class_names == header[5:] and len(data.class_names) == 14
    assert data.multi_label and len(data) == len(train_rows) + len(test_rows)
    uncertain = values == -1
    assert uncertain.any() and (values == 0).any()
    expected = np.where(uncertain, {"ones": 1.0, "zeros": 0.0, "ignore": 0.0}[policy], values)
    np.testing.assert_array_equal(data.labels, expected)
    expected_mask = np.where(uncertain, 0.0, 1.0) if policy == "ignore" else np.ones_like(values)
    np.testing.assert_array_equal(data.mask, expected_mask)
    positives = describe(data)["labels"]["Cardiomegaly"]["total"]
    column = header[5:].index("Cardiomegaly")
    assert positives == int((expected[:, column] * expected_mask[:, column]).sum())


def test_blank_cells_are_negative_and_known():
    _, rows, _ = reference("train.csv")
    data = load_chexpert(FIXTURE, uncertainty="ignore")
    blank_row, blank_col = next((i, j) for i, row in enumerate(rows)
                                for j, cell in enumerate(row[5:]) if cell == "")
    assert data.labels[blank_row, blank_col] == 0 and data.mask[blank_row, blank_col] == 1


def test_frontal_only_drops_laterals():
    _, all_rows, _ = reference("train.csv", frontal_only=False)
    _, test_rows, _ = reference("valid.csv", frontal_only=False)
    everything = load_chexpert(FIXTURE, frontal_only=False)
    frontal = load_chexpert(FIXTURE)
    laterals = sum(row[3] == "Lateral" for row in all_rows + test_rows)
    assert laterals > 0 and len(everything) - len(frontal) == laterals
    assert set(frontal.meta["frontal_lateral"]) == {"Frontal"}


def test_valid_csv_is_the_test_split_and_val_is_carved_by_patient():
    data = load_chexpert(FIXTURE, val_fraction=0.3, seed=2)
    _, test_rows, _ = reference("valid.csv")
    csv_test = sorted(row[0] for row in test_rows)
    assert sorted(data.meta.loc[data.split == "test", "path_in_csv"]) == csv_test
    assert set(data.patients[data.split == "test"]) == {f"patient6454{i}" for i in range(1, 5)}
    train, val = set(data.patients[data.split == "train"]), set(data.patients[data.split == "val"])
    assert train and val and not train & val
    data.check_patient_leakage()
    same = load_chexpert(FIXTURE, val_fraction=0.3, seed=2)
    np.testing.assert_array_equal(data.split, same.split)


def test_paths_resolve_against_the_parent_or_the_folder_itself(copy_dir, tmp_path):
    data = load_chexpert(copy_dir)
    first = data.meta["path_in_csv"].iloc[0]
    assert data.paths[0] == str(tmp_path / first)          # CSV path starts with the folder
    assert not data.meta["on_disk"].any()
    image = tmp_path / first
    image.parent.mkdir(parents=True)
    cv2.imwrite(str(image), np.zeros((8, 8), np.uint8))
    assert load_chexpert(copy_dir).meta["on_disk"].sum() == 1
    # a copy whose CSV paths start inside the folder: train/patient.../view1_frontal.jpg
    inner = tmp_path / "renamed"
    shutil.copytree(copy_dir, inner, ignore=shutil.ignore_patterns("*.jpg"))
    for name in ("train.csv", "valid.csv"):
        rewrite(inner / name, lambda rows: [row.__setitem__(0, row[0].split("/", 1)[1])
                                            for row in rows[1:]])
    moved = inner / first.split("/", 1)[1]
    moved.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(moved), np.zeros((8, 8), np.uint8))
    renamed = load_chexpert(inner)
    assert renamed.paths[0] == str(moved) and renamed.meta["on_disk"].sum() == 1


def test_label_subset_keeps_file_columns_in_the_order_given():
    full = load_chexpert(FIXTURE)
    two = load_chexpert(FIXTURE, labels=["Pleural Effusion", "Edema"])
    columns = [full.class_names.index("Pleural Effusion"), full.class_names.index("Edema")]
    np.testing.assert_array_equal(two.labels, full.labels[:, columns])
    with pytest.raises(ConfigError, match="unknown observation.*'Flu'"):
        load_chexpert(FIXTURE, labels=["Edema", "Flu"])


def test_option_errors_name_the_option(tmp_path):
    with pytest.raises(ConfigError, match="uncertainty policy 'maybe'"):
        load_chexpert(FIXTURE, uncertainty="maybe")
    with pytest.raises(DataError, match="train.csv is missing"):
        load_chexpert(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_chexpert(tmp_path / "absent")


def test_bad_cell_names_file_line_and_column(copy_dir):
    rewrite(copy_dir / "train.csv", lambda rows: rows[3].__setitem__(7, "2.0"))
    with pytest.raises(DataError, match=r"train.csv, line 4: column 'Cardiomegaly' has '2.0'"):
        load_chexpert(copy_dir, frontal_only=False)


def test_missing_column_names_file_and_column(copy_dir):
    rewrite(copy_dir / "valid.csv", lambda rows: [row.pop(3) for row in rows])
    with pytest.raises(DataError, match=r"valid.csv: missing column\(s\) \['Frontal/Lateral'\]"):
        load_chexpert(copy_dir)


def test_patient_in_train_and_valid_is_named(copy_dir):
    rewrite(copy_dir / "valid.csv",
            lambda rows: rows[1].__setitem__(0, rows[1][0].replace("patient64541",
                                                                  "patient00003")))
    with pytest.raises(DataError, match=r"patient 'patient00003' appears in splits "
                                        r"\['test', 'train'\]"):
        load_chexpert(copy_dir)


def test_path_without_patient_id_names_the_line(copy_dir):
    rewrite(copy_dir / "train.csv",
            lambda rows: rows[2].__setitem__(0, "CheXpert-v1.0-small/train/x/view1_frontal.jpg"))
    with pytest.raises(DataError, match=r"train.csv, line 3: no patient id"):
        load_chexpert(copy_dir, frontal_only=False)


def test_skip_bad_images_lists_missing_and_broken_files(copy_dir, tmp_path):
    full = load_chexpert(copy_dir)
    for path in full.paths[:-2]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(path, np.zeros((8, 8), np.uint8))
    Path(full.paths[0]).write_bytes(b"\xff\xd8\xff broken")
    kept = load_dataset("chexpert", copy_dir, skip_bad_images=True, workers=2)
    assert len(kept) == len(full) - 3
    reasons = dict(zip(kept.skipped["path"], kept.skipped["reason"]))
    assert set(reasons) == {full.paths[0], full.paths[-2], full.paths[-1]}
    assert reasons[full.paths[-1]] == reasons[full.paths[-2]] == ABSENT_REASON
    assert reasons[full.paths[0]].startswith("truncated JPEG")
    # absent files come first, counted, before any image is decoded
    with pytest.raises(DataError, match=r"chexpert: \d+ of the \d+ images listed in train.csv "
                                        r"and valid.csv are on disk and 2 are absent"):
        load_chexpert(copy_dir, check_images=True)
    present = load_chexpert(copy_dir, images="present")
    assert len(present) == len(full) - 2 and present.meta["on_disk"].all()
    with pytest.raises(DataError, match="truncated JPEG"):
        load_chexpert(copy_dir, check_images=True, images="present")


def test_describe_reports_uncertain_labels_and_all_negative_rows():
    data = load_chexpert(FIXTURE, uncertainty="ignore")
    report = describe(data)
    assert "No Finding" in report["classes"]
    negative = ((data.labels * data.mask).sum(1) == 0).sum()
    assert report["labels"]["(all negative)"]["total"] == negative
    assert report["unknown_labels"]["Edema"] == int((data.mask[:, data.class_names.index(
        "Edema")] == 0).sum())
