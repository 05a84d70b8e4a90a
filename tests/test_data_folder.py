"""Class-folder loader and the shared patient-wise split (chestkd.data.folder, .splits)."""
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from chestkd.data import load_dataset
from chestkd.data.folder import balance_rows, load_folder
from chestkd.data.splits import check_no_leakage, leaked_patients, patient_split
from chestkd.errors import ConfigError, DataError

PIXELS = np.zeros((8, 8), dtype=np.uint8)


def make_tree(root, layout):
    """layout: {relative folder: [file names]}; writes tiny PNG/JPEG files."""
    for folder, names in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            assert cv2.imwrite(str(root / folder / name), PIXELS)
    return root


def pediatric_layout():
    """The pediatric pneumonia set's layout: split/class/person<k>_... and IM-<k>-... names."""
    layout = {}
    for split, start, count in (("train", 0, 12), ("val", 100, 2), ("test", 200, 4)):
        layout[f"{split}/NORMAL"] = [f"IM-{start + i:04d}-0001.jpeg" for i in range(count)]
        layout[f"{split}/PNEUMONIA"] = [f"person{start + i}_bacteria_{j}.jpeg"
                                        for i in range(count) for j in (1, 2)]
    return layout


# ------------------------------------------------------------------ patient_split

def test_patient_split_image_fractions_no_leakage_and_determinism():
    rng = np.random.default_rng(0)
    patients = np.repeat([f"p{i}" for i in range(300)], rng.integers(1, 6, size=300))
    split = patient_split(patients, (0.7, 0.1, 0.2), seed=4)
    shares = [(split == s).mean() for s in ("train", "val", "test")]
    np.testing.assert_allclose(shares, [0.7, 0.1, 0.2], atol=0.03)
    assert leaked_patients(patients, split) == {}
    np.testing.assert_array_equal(split, patient_split(patients, (0.7, 0.1, 0.2), seed=4))
    assert (split != patient_split(patients, (0.7, 0.1, 0.2), seed=5)).any()
    # the row order does not matter: same patient -> same split
    order = rng.permutation(len(patients))
    shuffled = patient_split(patients[order], (0.7, 0.1, 0.2), seed=4)
    np.testing.assert_array_equal(shuffled, split[order])


def test_patient_split_one_image_per_patient_is_exact_per_stratum():
    patients = np.array([f"p{i}" for i in range(30)])
    classes = np.array([0] * 10 + [1] * 20)
    split = patient_split(patients, (0.7, 0.1, 0.2), seed=0, stratify=classes)
    for c, n in ((0, 10), (1, 20)):
        counts = Counter(split[classes == c])
        assert (counts["train"], counts["val"], counts["test"]) == (0.7 * n, 0.1 * n, 0.2 * n)


def test_patient_split_zero_fraction_and_bad_fractions():
    split = patient_split([f"p{i}" for i in range(20)], (0.5, 0.0, 0.5), seed=1)
    assert "val" not in set(split) and (split == "train").sum() == 10
    with pytest.raises(ConfigError, match="sum to 1"):
        patient_split(["a", "b"], (0.5, 0.6, 0.1))
    with pytest.raises(ConfigError, match="fractions: 2 given for 3 splits"):
        patient_split(["a", "b"], (0.5, 0.5))


def test_leakage_check_names_the_patient():
    assert leaked_patients(["a", "a", "b"], ["train", "test", "val"]) == {"a": ["test", "train"]}
    with pytest.raises(DataError, match=r"lists.txt: patient 'a' appears in splits"):
        check_no_leakage(["a", "a", "b"], ["train", "test", "val"], "lists.txt")
    check_no_leakage(["a", "a", "b"], ["train", "train", "val"], "lists.txt")


# ------------------------------------------------------------------ predefined split folders

def test_predefined_split_folders_are_used_as_given(tmp_path):
    root = make_tree(tmp_path / "chest_xray", pediatric_layout())
    data = load_folder(root)
    assert data.class_names == ["NORMAL", "PNEUMONIA"] and not data.multi_label
    for split, (normal, pneumonia) in {"train": (12, 24), "val": (2, 4), "test": (4, 8)}.items():
        part = data.subset(split)
        assert part.labels.sum(0).tolist() == [normal, pneumonia]
        assert all(f"/{split}/" in path for path in part.paths)
    np.testing.assert_array_equal(data.labels.sum(1), 1.0)            # one-hot
    pneumonia = data.labels[:, 1] == 1
    assert all("/PNEUMONIA/" in p for p in data.paths[pneumonia])


def test_patient_regex_groups_images_and_named_group_works(tmp_path):
    root = make_tree(tmp_path / "chest_xray", pediatric_layout())
    regex = r"^(person\d+|IM-\d+)"
    data = load_folder(root, patient_regex=regex)
    assert len(set(data.patients)) == 18 + 18                 # persons + IM- ids
    assert (data.patients == "person3").sum() == 2
    named = load_folder(root, patient_regex=r"(?P<prefix>x)?(?P<patient>person\d+|IM-\d+)")
    np.testing.assert_array_equal(named.patients, data.patients)
    with pytest.raises(DataError, match=r"NORMAL/IM-\d+-0001.jpeg does not match patient_regex"):
        load_folder(root, patient_regex=r"(person\d+)")
    with pytest.raises(ConfigError, match="one group"):
        load_folder(root, patient_regex=r"(a)(b)")
    with pytest.raises(ConfigError, match="not a valid regex"):
        load_folder(root, patient_regex=r"(unclosed")


def test_patient_in_two_split_folders_is_named(tmp_path):
    layout = pediatric_layout()
    layout["test/PNEUMONIA"].append("person3_virus_9.jpeg")           # person3 is in train
    root = make_tree(tmp_path / "chest_xray", layout)
    with pytest.raises(DataError, match=r"patient 'person3' appears in splits \['test', 'train'\]"):
        load_folder(root, patient_regex=r"^(person\d+|IM-\d+)")


def test_val_is_carved_from_train_when_there_is_no_val_folder(tmp_path):
    layout = {k: v for k, v in pediatric_layout().items() if not k.startswith("val")}
    root = make_tree(tmp_path / "data", layout)
    data = load_folder(root, patient_regex=r"^(person\d+|IM-\d+)", fractions=(0.5, 0.25, 0.25))
    assert (data.split == "test").sum() == 12
    assert {p for p in data.paths[data.split == "val"]} <= {p for p in data.paths if "/train/" in p}
    val_share = (data.split == "val").sum() / (data.split != "test").sum()
    assert abs(val_share - 1 / 3) < 0.1
    data.check_patient_leakage()


def test_explicit_split_dirs_and_their_errors(tmp_path):
    root = make_tree(tmp_path / "d", {"training/a": ["1.png", "2.png"],
                                      "testing/a": ["3.png"], "testing/b": ["4.png"],
                                      "training/b": ["5.png"]})
    data = load_folder(root, split_dirs={"train": "training", "test": "testing"},
                       fractions=(0.5, 0.5, 0.0))
    assert Counter(data.split) == {"train": 2, "val": 1, "test": 2}
    with pytest.raises(DataError, match=r"split_dirs\['test'\]"):
        load_folder(root, split_dirs={"train": "training", "test": "nope"})
    with pytest.raises(ConfigError, match="split_dirs keys"):
        load_folder(root, split_dirs={"train": "training", "holdout": "testing"})


# ------------------------------------------------------------------ class folders only

def test_stratified_random_split_without_split_folders(tmp_path):
    root = make_tree(tmp_path / "d", {"covid": [f"c{i}.png" for i in range(10)],
                                      "normal": [f"n{i}.JPG" for i in range(20)],
                                      "notes": []})
    (root / "normal" / "readme.txt").write_text("not an image")
    data = load_folder(root, classes=["normal", "covid"], seed=3)
    assert data.class_names == ["normal", "covid"] and len(data) == 30
    for column, n in ((0, 20), (1, 10)):
        counts = Counter(data.split[data.labels[:, column] == 1])
        assert (counts["train"], counts["val"], counts["test"]) == (0.7 * n, 0.1 * n, 0.2 * n)
    again = load_dataset("folder", root, classes=["normal", "covid"], seed=3)
    np.testing.assert_array_equal(again.split, data.split)
    np.testing.assert_array_equal(again.paths, data.paths)


def test_unknown_class_names_the_class_and_the_folder(tmp_path):
    root = make_tree(tmp_path / "d", {"a": ["1.png"], "b": ["2.png"]})
    with pytest.raises(DataError, match=f"unknown class 'c': no folder 'c' in {root}"):
        load_folder(root, classes=["a", "c"])
    with pytest.raises(DataError, match="no images with extensions"):
        load_folder(root, extensions=(".dcm",))


def test_balancing_changes_only_the_train_split(tmp_path):
    root = make_tree(tmp_path / "d", {"a": [f"a{i}.png" for i in range(40)],
                                      "b": [f"b{i}.png" for i in range(10)]})
    plain = load_folder(root, seed=1)
    train_counts = plain.subset("train").labels.sum(0)            # 28 and 7
    under = load_folder(root, seed=1, balance="undersample")
    over = load_folder(root, seed=1, balance="oversample")
    np.testing.assert_array_equal(under.subset("train").labels.sum(0), [train_counts.min()] * 2)
    np.testing.assert_array_equal(over.subset("train").labels.sum(0), [train_counts.max()] * 2)
    for balanced in (under, over):
        for split in ("val", "test"):
            np.testing.assert_array_equal(balanced.subset(split).paths, plain.subset(split).paths)
    minority = over.subset("train").paths[over.subset("train").labels[:, 1] == 1]
    repeats = Counter(minority)
    assert set(repeats.values()) == {4} and len(repeats) == 7     # 28 = 4 x 7 rows of b
    with pytest.raises(ConfigError, match="unknown balance 'smote'"):
        load_folder(root, balance="smote")


def test_oversampling_remainder_is_drawn_without_repeats():
    labels = np.array([0] * 5 + [1] * 2)
    rows = balance_rows(labels, np.ones(7, bool), "oversample", seed=0)
    minority = Counter(rows[labels[rows] == 1])
    assert sorted(minority.values()) == [2, 3] and len(rows) == 10


def test_bad_images_in_class_folders_are_checked_or_skipped(tmp_path):
    root = make_tree(tmp_path / "d", {"a": ["1.png", "2.png", "3.png"], "b": ["4.png", "5.png"]})
    (root / "a" / "2.png").write_bytes(b"")
    (root / "b" / "5.png").write_bytes(b"garbage bytes")
    with pytest.raises(DataError, match=r"2.png: empty file"):
        load_folder(root, check_images=True)
    data = load_folder(root, skip_bad_images=True, fractions=(1.0, 0.0, 0.0))
    assert sorted(Path(p).name for p in data.paths) == ["1.png", "3.png", "4.png"]
    reasons = {Path(p).name: r for p, r in zip(data.skipped["path"], data.skipped["reason"])}
    assert reasons == {"2.png": "empty file",
                       "5.png": "cannot decode image (not a valid image file)"}


# ------------------------------------------------------------------ Kermany layout

def kermany_layout():
    """chest_xray/{train,val,test}/{NORMAL,PNEUMONIA} with the set's own file names and a
    validation folder far below 5 % of train + val (as the real 16 beside 5,216)."""
    train_normal = [f"IM-{100 + i:04d}-000{j}.jpeg" for i in range(10) for j in (1, 2)]
    train_normal += [f"NORMAL2-IM-{100 + i:04d}-0001.jpeg" for i in range(10)]
    train_pneumonia = [f"person{i}_{kind}_{i * 10 + j}.jpeg" for i in range(1, 21)
                       for kind, j in (("bacteria", 1), ("bacteria", 2), ("virus", 3))]
    return {"train/NORMAL": train_normal, "train/PNEUMONIA": train_pneumonia,
            "val/NORMAL": ["NORMAL2-IM-1427-0001.jpeg"],
            "val/PNEUMONIA": ["person1946_bacteria_4874.jpeg"],
            "test/NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(1, 7)],
            "test/PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(500, 506)]}


def test_kermany_validation_is_carved_patient_wise_from_train(tmp_path, capsys):
    root = make_tree(tmp_path / "chest_xray", kermany_layout())
    data = load_folder(root, seed=0)
    assert "patient_regex=kermany" in capsys.readouterr().out      # recognised from the names
    # Patient ids from the names: person<k>; IM-<k>; NORMAL2-IM-<k> kept apart from IM-<k>.
    by_file = dict(zip(data.meta["image"], data.patients))
    assert by_file["person3_virus_33.jpeg"] == by_file["person3_bacteria_31.jpeg"] == "person3"
    assert by_file["IM-0105-0002.jpeg"] == "IM-0105"
    assert by_file["NORMAL2-IM-0105-0001.jpeg"] == "NORMAL2-IM-0105"
    # The two official val images went to train; validation is carved (~1/8) by patient.
    official_val = data.meta["split_folder"].to_numpy() == "val"
    assert official_val.sum() == 2 and set(data.split[official_val]) <= {"train", "val"}
    not_test = data.meta["split_folder"].to_numpy() != "test"
    assert set(data.paths[data.split == "val"]) <= set(data.paths[not_test])
    assert 6 <= (data.split == "val").sum() <= 18
    assert (data.subset("val").labels.sum(0) > 0).all()                # stratified
    data.check_patient_leakage()
    np.testing.assert_array_equal(data.split == "test", data.meta["split_folder"] == "test")
    other = load_folder(root, seed=1)
    assert set(other.subset("val").paths) != set(data.subset("val").paths)
    kept = load_folder(root, val_split="official")
    assert sorted(kept.subset("val").meta["image"]) == ["NORMAL2-IM-1427-0001.jpeg",
                                                        "person1946_bacteria_4874.jpeg"]
    with pytest.raises(ConfigError, match="unknown val_split 'small'"):
        load_folder(root, val_split="small")


def test_a_large_val_folder_is_kept_unless_carving_is_asked(tmp_path):
    root = make_tree(tmp_path / "chest_xray", pediatric_layout())       # val: 6 of 42 images
    assert (load_folder(root).meta["split_folder"] == "val").sum() == 6
    np.testing.assert_array_equal(load_folder(root).split, load_folder(root).meta["split_folder"])
    carved = load_folder(root, val_split="carve", patient_regex="kermany")
    assert (carved.split[carved.meta["split_folder"].to_numpy() == "val"] != "val").any()
    carved.check_patient_leakage()
