"""The CSV loader on a table in the COVID-19 image data collection's metadata.csv layout."""
import re

import cv2
import numpy as np
import pandas as pd
import pytest

from chestkd.data import load_dataset
from chestkd.data.csv_table import load_csv
from chestkd.data.presence import ABSENT_EXCLUDED, ABSENT_REASON
from chestkd.errors import ConfigError, DataError
from chestkd.data import loader_options
from chestkd.training.config import BASE_DEFAULTS, resolve_config
from chestkd.training.classifier import load_run_data

FINDINGS = ["Pneumonia/Viral/COVID-19", "Pneumonia/Bacterial/Streptococcus", "No Finding"]
LABEL_MAP = {"Pneumonia/Viral/COVID-19": "COVID-19", "No Finding": "normal",
             "Pneumonia/Bacterial/Streptococcus": "pneumonia", "Pneumonia/Viral/SARS": None}
OPTIONS = dict(csv="metadata.csv", image_column=["folder", "filename"], label_column="finding",
               patient_column="patientid", label_map=LABEL_MAP, filters={"view": ["PA", "AP"]},
               classes=["normal", "pneumonia", "COVID-19"])


def write_collection(root, rows=None):
    """metadata.csv in the collection's layout and a tiny PNG per row; returns the table."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    if rows is None:
        rows = []
        for patient in range(1, 19):            # 18 patients, 1-3 films each, PA or AP
            for offset in range(1 + patient % 3):
                rows.append({"patientid": str(patient), "offset": str(offset * 3),
                             "sex": "MF"[patient % 2], "age": str(30 + patient),
                             "finding": FINDINGS[patient % 3], "RT_PCR_positive": "Y",
                             "view": "PA" if offset % 2 == 0 else "AP", "modality": "X-ray",
                             "folder": "images", "filename": f"{patient}-{offset}.png"})
        rows += [  # a lateral film (filtered), a blank finding, a SARS film (mapped to null)
            {**rows[0], "view": "L", "filename": "lateral.png"},
            {**rows[1], "finding": "", "filename": "blank.png"},
            {**rows[2], "finding": "Pneumonia/Viral/SARS", "filename": "sars.png"}]
    table = pd.DataFrame(rows)
    rng = np.random.default_rng(0)
    for name in table.filename:
        cv2.imwrite(str(root / "images" / name), rng.integers(0, 255, (16, 16), dtype=np.uint8))
    table.to_csv(root / "metadata.csv", index=False)
    return table


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("covid")
    write_collection(root)
    return root


def test_reads_the_collection_with_map_filters_and_patient_wise_splits(collection):
    data = load_csv(collection, **OPTIONS, seed=3)
    assert data.class_names == ["normal", "pneumonia", "COVID-19"] and not data.multi_label
    table = pd.read_csv(collection / "metadata.csv").fillna("")
    kept = table[table.view.isin(["PA", "AP"]) & table.finding.isin(FINDINGS)]
    assert len(data) == len(kept) == 36
    assert data.excluded == {"filter view": 1, "blank label": 1, "label_map to null": 1}
    np.testing.assert_array_equal(data.labels.sum(1), 1.0)
    by_file = dict(zip(kept.filename, kept.finding.map(LABEL_MAP)))
    names = np.asarray(data.class_names)[data.labels.argmax(1)]
    assert all(by_file[m] == n for m, n in zip(data.meta["filename"], names))
    assert set(data.split) == {"train", "val", "test"}
    data.check_patient_leakage()
    assert (data.meta["patientid"].to_numpy() == data.patients).all()
    again = load_csv(collection, **OPTIONS, seed=3)
    np.testing.assert_array_equal(again.split, data.split)
    other = load_csv(collection, **OPTIONS, seed=4)
    assert (other.split != data.split).any()
    from chestkd.data.describe import run
    report = run("csv", collection, options=OPTIONS)
    assert "rows left out on purpose: 1 (filter view), 1 (blank label), 1 (label_map to null)" \
        in report and "patient leakage check: PASS" in report


def test_bad_rows_name_file_line_and_column_or_are_skipped(collection, tmp_path):
    table = write_collection(tmp_path)
    (tmp_path / "images" / table.filename[4]).unlink()
    absent = str(tmp_path / "images" / table.filename[4])
    with pytest.raises(DataError, match=r"csv: 35 of the 36 images named in column\(s\) "
                                        r"\['folder', 'filename'\] of .*metadata\.csv are on disk "
                                        r"and 1 is absent \(e\.g\. line 6: " + re.escape(absent)):
        load_csv(tmp_path, **OPTIONS, check_images=True)
    counted = load_csv(tmp_path, **OPTIONS)         # not reading the images: counted only
    assert len(counted) == 36 and int((~counted.meta["on_disk"]).sum()) == 1
    assert counted.meta.loc[~counted.meta["on_disk"], "line"].tolist() == [6]
    data = load_csv(tmp_path, **OPTIONS, skip_bad_images=True)
    assert len(data) == 35 and list(data.skipped.path) == [absent]
    assert data.skipped.reason[0] == ABSENT_REASON
    present = load_csv(tmp_path, **OPTIONS, images="present", check_images=True)
    assert len(present) == 35 and present.listed == 39
    assert present.excluded[ABSENT_EXCLUDED] == 1
    # An unknown label (not in classes, not mapped away), a missing column, a bad option.
    with pytest.raises(DataError, match=r"line 2: column 'finding': unknown label\(s\) "
                                        r"\['Pneumonia/Bacterial/Streptococcus'\]"):
        load_csv(collection, **{**OPTIONS, "label_map": None, "filters": None})
    with pytest.raises(DataError, match=r"column\(s\) \['patient'\] \(option patient_column\)"):
        load_csv(collection, **{**OPTIONS, "patient_column": "patient"})
    with pytest.raises(ConfigError, match="exactly one of label_column"):
        load_csv(collection, csv="metadata.csv")


def test_one_column_per_class_pipe_lists_and_a_split_column(tmp_path):
    rows = [{"image": f"{i}.png", "NORMAL": str(int(i % 2 == 0)), "PNEUMONIA": str(i % 2),
             "patient": str(i // 2), "findings": "a|b" if i % 3 == 0 else "a",
             "fold": ["train", "train", "test", "valid"][(i // 2) % 4]} for i in range(16)]
    (tmp_path / "images").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    for row in rows:
        cv2.imwrite(str(tmp_path / "images" / row["image"]), np.zeros((16, 16), np.uint8))
    data = load_csv(tmp_path, csv="table.csv", image_dir="images", image_column="image",
                    label_columns=["NORMAL", "PNEUMONIA"], patient_column="patient",
                    split_column="fold")
    assert not data.multi_label and data.class_names == ["NORMAL", "PNEUMONIA"]
    np.testing.assert_array_equal(data.labels[:, 1], [i % 2 for i in range(16)])
    np.testing.assert_array_equal(data.split, [{"valid": "val"}.get(r["fold"], r["fold"])
                                               for r in rows])
    multi = load_csv(tmp_path, csv="table.csv", image_dir="images", image_column="image",
                     label_column="findings")
    assert multi.multi_label and multi.class_names == ["a", "b"]
    np.testing.assert_array_equal(multi.labels[:, 1], [i % 3 == 0 for i in range(16)])
    rows[2]["fold"] = "test"       # rows 2 and 3 are patient 1: now in train and test
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    with pytest.raises(DataError, match="patient '1' appears in splits"):
        load_csv(tmp_path, csv="table.csv", image_dir="images", image_column="image",
                 label_columns=["NORMAL", "PNEUMONIA"], patient_column="patient",
                 split_column="fold")


def test_a_run_on_a_csv_lists_skipped_rows_and_augments_lightly(collection, tmp_path):
    (tmp_path / "data").mkdir()
    table = write_collection(tmp_path / "data")
    (tmp_path / "data" / "images" / table.filename[0]).unlink()
    argv = ["--dataset", "csv", "--data-dir", str(tmp_path / "data"), "--skip-bad-images",
            "--balance", "oversample"] + [f"{k}={v}" for k, v in {
                **OPTIONS, "image_column": "[folder, filename]",
                "classes": "[normal, pneumonia, COVID-19]",
                "filters": "{view: [PA, AP]}",
                "label_map": "{Pneumonia/Viral/COVID-19: COVID-19, No Finding: normal, "
                             "Pneumonia/Bacterial/Streptococcus: pneumonia, "
                             "Pneumonia/Viral/SARS: null}"}.items()]
    config = resolve_config(argv, BASE_DEFAULTS)
    assert config["augment"] == "light"
    data = load_run_data(config, tmp_path)
    skipped = pd.read_csv(tmp_path / "skipped.csv")
    assert len(skipped) == 1 and skipped.path[0].endswith(table.filename[0])
    assert len(set(data.subset("train").labels.sum(0))) == 1          # oversampled
    assert loader_options(config["dataset"], config)["label_map"]["Pneumonia/Viral/SARS"] is None
    plain = load_dataset("csv", collection, **OPTIONS)
    assert len(plain) == 36


def test_exclusive_classes_need_two_and_a_training_image_each():
    # Regression: one class folder trained a softmax over one output, and a --classes name
    # no row had trained with no example of it; both exited 0.
    from chestkd.data.dataset import Dataset

    def dataset(class_names, labels):
        n = len(labels)
        return Dataset("folder", class_names, False, [f"/x/{i}.png" for i in range(n)],
                       labels, [f"p{i}" for i in range(n)], ["train"] * (n - 2) + ["val", "test"])

    with pytest.raises(DataError, match=r"folder: one class only \(NORMAL\)"):
        dataset(["NORMAL"], np.ones((6, 1))).check_classes()
    with pytest.raises(DataError, match=r"no training image of class\(es\) \['COVID-19'\]"):
        dataset(["normal", "pneumonia", "COVID-19"],
                np.eye(3)[[0, 1, 0, 1, 2, 2]]).check_classes()
    dataset(["normal", "pneumonia"], np.eye(2)[[0, 1, 0, 1, 0, 1]]).check_classes()
    multi = Dataset("phantom", ["a", "b"], True, ["/x/0.png"] * 3, np.zeros((3, 2)),
                    ["p0", "p1", "p2"], ["train", "val", "test"])
    multi.check_classes()  # a finding with no positive is a NaN AUC, not an error


def test_a_run_on_one_class_folder_stops_before_training(tmp_path):
    for i in range(12):
        (tmp_path / "data" / "NORMAL").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / "data" / "NORMAL" / f"{i}.png"),
                    np.full((16, 16), 10 * i, np.uint8))
    config = resolve_config(["--dataset", "folder", "--data-dir", str(tmp_path / "data")],
                            BASE_DEFAULTS)
    (tmp_path / "run").mkdir()
    with pytest.raises(DataError, match="one class only"):
        load_run_data(config, tmp_path / "run")


@pytest.mark.parametrize("options, message", [
    ({"label_column": ["finding"]}, "option label_column ['finding']: expected one name"),
    ({"label_column": "finding", "label_map": "a=b"}, "option label_map 'a=b': expected a map"),
    ({"label_column": "finding", "filters": "view=PA"}, "option filters 'view=PA'"),
    ({"label_column": "finding", "classes": 5}, "option classes 5: expected class names"),
])
def test_options_of_the_wrong_kind_name_themselves(tmp_path, options, message):
    # Regression: each of these was a Python traceback (unhashable list, str has no items(),
    # int is not iterable) or, for filters, a column per letter of 'view=PA'.
    (tmp_path / "t.csv").write_text("filename,finding\na.png,x\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_csv(tmp_path, csv="t.csv", **options)


def test_a_folder_patient_regex_must_be_text(tmp_path):
    from chestkd.data.folder import load_folder
    (tmp_path / "A").mkdir()
    with pytest.raises(ConfigError, match="patient_regex 123: expected a regular expression"):
        load_folder(tmp_path, patient_regex=123)
    with pytest.raises(ConfigError, match="classes 5: expected folder names"):
        load_folder(tmp_path, classes=5)


def test_an_odd_label_cell_is_a_bad_row_and_lines_count_blank_lines(tmp_path):
    # Regressions: a 0/1 column holding 2 stopped the run even with skip_bad_images (the
    # docs say such a row is skipped and listed); and the line named in an error ignored
    # blank lines, so it pointed above the row.
    (tmp_path / "images").mkdir()
    lines = ["image,NORMAL,PNEUMONIA,patient"]
    for i in range(12):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), np.zeros((16, 16), np.uint8))
        lines.append(f"{i}.png,{i % 2},{(i + 1) % 2},p{i}")
        if i == 3:
            lines += ["", ""]                      # blank lines: rows 4.. move down by two
    lines[1 + 7 + 2] = "7.png,2,0,p7"              # file line 11 (the header is line 1)
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    options = dict(csv="table.csv", image_dir="images", image_column="image",
                   label_columns=["NORMAL", "PNEUMONIA"], patient_column="patient")
    with pytest.raises(DataError, match=r"table.csv, line 11: column 'NORMAL': label value "
                                        r"'2' is not 0 or 1"):
        load_csv(tmp_path, **options)
    data = load_csv(tmp_path, skip_bad_images=True, **options)
    assert len(data) == 11 and list(data.skipped["reason"]) == [
        f"{tmp_path / 'table.csv'}, line 11: column 'NORMAL': label value '2' is not 0 or 1 "
        "(option label_columns)"]


def test_skipped_images_are_counted_by_kind():
    # Regression: a skipped table row (a duplicate, an unknown label) was counted as an
    # "unreadable" image on the console and in the model card.
    from chestkd.data.presence import ABSENT_REASON, skipped_kinds
    skipped = pd.DataFrame({"path": ["a", "b", "c", "d"], "reason": [
        ABSENT_REASON, "/x/t.csv, line 11: column ['filename']: image 'b' listed again",
        "bad image /x/c.png: cannot decode image", "/x/t.csv, line 4: unknown label(s) ['y']"]})
    assert skipped_kinds(skipped) == {"absent from disk": 1, "on a bad table row": 2,
                                      "unreadable": 1}
    assert skipped_kinds(skipped.iloc[:0]) == {}


def test_one_folder_extension_given_as_text_is_one_extension(tmp_path):
    # Regression: extensions=png was read letter by letter, as ['.p', '.n', '.g'].
    from chestkd.data.folder import load_folder
    for name in ("A", "B"):
        (tmp_path / name).mkdir()
        for i in range(5):
            cv2.imwrite(str(tmp_path / name / f"{name}{i}.png"), np.zeros((8, 8), np.uint8))
    assert len(load_folder(tmp_path, extensions="png")) == 10


def test_a_quoted_cell_over_two_lines_moves_the_rows_below_it(tmp_path):
    # Regression: each row was taken to be one line, so below a quoted cell holding a line
    # break every error named the line above the row.
    (tmp_path / "images").mkdir()
    lines = ["image,NORMAL,PNEUMONIA,patient,note"]
    for i in range(12):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), np.zeros((16, 16), np.uint8))
        note = '"two\nlines"' if i == 2 else "x"
        lines.append(f"{i}.png,{i % 2},{(i + 1) % 2},p{i},{note}")
    lines[1 + 7] = "7.png,2,0,p7,x"                # file line 10: row 2's note takes two
    (tmp_path / "table.csv").write_text("\n".join(lines) + "\n")
    options = dict(csv="table.csv", image_dir="images", image_column="image",
                   label_columns=["NORMAL", "PNEUMONIA"], patient_column="patient")
    with pytest.raises(DataError, match=r"table.csv, line 10: column 'NORMAL'"):
        load_csv(tmp_path, **options)
