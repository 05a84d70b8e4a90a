"""The single-label phantom: layout, determinism, patterns where they belong, loading, balance."""
import json

import numpy as np
import pandas as pd
import pytest

from chestkd.data import load_dataset
from chestkd.data.phantom.anatomy import Scene, sample_anatomy
from chestkd.data.phantom.pneumonia import (FINDING_NAMES, load_pneumonia_phantom, plan,
                                            write_pneumonia_phantom)
from chestkd.data.phantom.pneumonia_patterns import covid_ground_glass, focal_pneumonia
from chestkd.errors import ConfigError, DataError
from chestkd.data import loader_options
from chestkd.training.config import BASE_DEFAULTS, PHANTOM_PROFILE, resolve_config


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_pneumonia_phantom(tmp_path_factory.mktemp("pp") / "phantom", images=60, size=48,
                                   seed=5, workers=1)


def test_writes_class_folders_and_a_covid_collection_table(phantom):
    meta = pd.read_csv(phantom / "metadata.csv")
    assert list(meta.columns) == ["patientid", "offset", "sex", "age", "finding", "view",
                                  "filename", "folder"]
    assert len(meta) == 60 and len(list(phantom.glob("*/*/*.png"))) == 60
    assert set(meta.finding) <= set(FINDING_NAMES.values())
    assert all((phantom / f / n).is_file() for f, n in zip(meta.folder, meta.filename))
    assert {f.split("/")[0] for f in meta.folder} == {"train", "test"}
    split = meta.folder.str.split("/").str[0]
    assert set(meta.patientid[split == "train"]).isdisjoint(meta.patientid[split == "test"])
    assert meta.groupby("patientid").size().max() > 1          # follow-up films
    stored = json.loads((phantom / "phantom.json").read_text())
    assert stored["kind"] == "pneumonia_phantom" and stored["classes"] == [
        "normal", "pneumonia", "covid19"]


def test_same_seed_same_bytes_other_seed_differs(phantom, tmp_path):
    again = write_pneumonia_phantom(tmp_path / "again", images=60, size=48, seed=5, workers=2)
    first = sorted(p.relative_to(phantom) for p in phantom.glob("*/*/*.png"))[0]
    for name in ("metadata.csv", "boxes.csv", first):
        assert (again / name).read_bytes() == (phantom / name).read_bytes()
    assert not plan(60, 6, None).equals(plan(60, 5, None))
    with pytest.raises(DataError, match="not empty"):
        write_pneumonia_phantom(again, images=60, size=48, seed=6)


def test_loads_single_label_with_patient_wise_splits_and_boxes(phantom):
    data = load_pneumonia_phantom(phantom, seed=1)
    assert data.name == "pneumonia_phantom" and not data.multi_label
    assert data.class_names == ["normal", "pneumonia", "covid19"]
    np.testing.assert_array_equal(data.labels.sum(1), 1.0)      # one-hot
    assert set(data.split) == {"train", "val", "test"}
    data.check_patient_leakage()
    for split in ("train", "test"):                              # every class in both
        assert (data.subset(split).labels.sum(0) > 0).all()
    # The class folder and the table agree, and every abnormal film has a box of its class.
    cls = np.asarray(data.class_names)[data.labels.argmax(1)]
    assert (data.meta["class"].to_numpy() == cls).all()
    assert (data.meta["finding"].to_numpy() == [FINDING_NAMES[c] for c in cls]).all()
    boxed = set(zip(data.boxes.path, data.boxes.label))
    assert boxed == {(p, c) for p, c in zip(data.paths, cls) if c != "normal"}
    assert (data.boxes[["w", "h"]] > 0).all().all()
    assert ((data.boxes.x + data.boxes.w) <= 48 + 1e-3).all() and (data.boxes.x >= 0).all()
    # Another training seed carves another validation split; the test split stays.
    other = load_pneumonia_phantom(phantom, seed=2)
    np.testing.assert_array_equal(other.subset("test").paths, data.subset("test").paths)
    assert set(other.subset("val").paths) != set(data.subset("val").paths)


def test_two_classes_and_bad_classes(tmp_path):
    two = write_pneumonia_phantom(tmp_path / "two", images=40, size=32, seed=0,
                                  classes=["normal", "pneumonia"], workers=1)
    data = load_pneumonia_phantom(two)
    assert data.class_names == ["normal", "pneumonia"] and data.labels.shape == (40, 2)
    # The COVID-19 study's shares over these two classes: 1717 : 4273, ~29 % normal.
    shares = plan(3000, 0, ["normal", "pneumonia"])["class"].value_counts(normalize=True)
    assert shares["normal"] == pytest.approx(1717 / (1717 + 4273), abs=0.04)
    for bad in (["normal"], ["normal", "flu"], ["normal", "normal"]):
        with pytest.raises(ConfigError, match="classes must be"):
            plan(40, 0, bad)
    with pytest.raises(DataError, match="no pneumonia phantom"):
        load_pneumonia_phantom(tmp_path)


def _lesion(edit, seed):
    """The density a pattern adds to one chest, and that chest's scene."""
    anatomy = sample_anatomy(np.random.default_rng(seed))
    scene = Scene(anatomy, 96)
    plain = Scene(anatomy, 96).density()
    boxes = edit(scene, np.random.default_rng([seed, 1]))
    return np.abs(scene.density() - plain), scene, boxes


def test_covid_is_peripheral_lower_zone_and_pneumonia_is_focal():
    covid_lower, covid_lateral, covid_boxes, focal_share = [], [], [], []
    for seed in range(8):
        added, scene, boxes = _lesion(covid_ground_glass, seed)
        covid_boxes.append(len(boxes))
        rows, cols = np.indices(added.shape) / 96.0
        for side in ("right", "left"):
            lateral, medial, top, bottom = scene.lung_frame(side)
            inside = scene.lungs[side] > 0.5
            lower = inside & (rows > top + 0.5 * (bottom - top))
            outer = inside & (np.abs(cols - lateral) < 0.5 * abs(medial - lateral))
            if added[inside].sum() > 1e-3 * added.sum():
                covid_lower.append(added[lower].sum() / added[inside].sum())
                covid_lateral.append(added[outer].sum() / added[inside].sum())
        added, scene, boxes = _lesion(focal_pneumonia, seed)
        in_boxes = np.zeros(added.shape, bool)
        for x0, y0, x1, y1 in boxes:
            in_boxes[int(y0 * 96):int(np.ceil(y1 * 96)), int(x0 * 96):int(np.ceil(x1 * 96))] = True
        focal_share.append((added[in_boxes].sum() / added.sum(), in_boxes.mean()))
    assert np.mean(covid_lower) > 0.8 and np.mean(covid_lateral) > 0.8
    assert np.mean(np.array(covid_boxes) == 2) >= 0.5              # mostly bilateral
    share, area = np.array(focal_share).T
    assert (share > 0.8).all() and (area < 0.15).all()              # focal: small boxes hold it


def test_balance_only_touches_train_and_keeps_patients_in_their_split(phantom):
    plain = load_dataset("pneumonia_phantom", phantom, seed=0)
    for mode in ("undersample", "oversample", "both"):
        balanced = load_dataset("pneumonia_phantom", phantom, seed=0, balance=mode)
        counts = balanced.subset("train").labels.sum(0)
        assert len(set(counts)) == 1
        expected = plain.subset("train").labels.sum(0)
        assert counts[0] == {"undersample": expected.min(), "oversample": expected.max(),
                             "both": int(np.median(expected))}[mode]
        if mode == "both":   # the majority lost rows, the rarest class gained repeats
            assert expected.max() > counts[0] > expected.min()
        for split in ("val", "test"):
            np.testing.assert_array_equal(balanced.subset(split).paths,
                                          plain.subset(split).paths)
        balanced.check_patient_leakage()
    with pytest.raises(ConfigError, match="unknown balance"):
        load_dataset("pneumonia_phantom", phantom, balance="smote")


def test_generated_on_demand_with_the_phantom_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("CHESTKD_HOME", str(tmp_path))
    config = resolve_config(["--dataset", "pneumonia_phantom", "phantom_images=40",
                             "phantom_size=32", "classes=[normal, pneumonia]"], BASE_DEFAULTS)
    assert config["model"] == PHANTOM_PROFILE["model"] and config["image_size"] == 128
    assert config["label_noise"] == 0.0       # the 14-finding phantom's noise is not applied
    assert config["augment"] == "flip"
    data = load_dataset("pneumonia_phantom", None, **loader_options(config["dataset"], config))
    assert data.class_names == ["normal", "pneumonia"] and len(data) == 40
    written = list(tmp_path.glob("pneumonia-phantom-40-32-0-normal-pneumonia/phantom.json"))
    assert len(written) == 1


def test_cli_writes_the_pneumonia_kind(tmp_path, capsys):
    from chestkd.data.__main__ import main
    out = tmp_path / "pp"
    assert main(["phantom", "--kind", "pneumonia", "--out", str(out), "--images", "20",
                 "--size", "32", "--classes", "normal", "covid19"]) == 0
    assert json.loads((out / "phantom.json").read_text())["classes"] == ["normal", "covid19"]
    assert main(["phantom", "--out", str(tmp_path / "x"), "--classes", "normal"]) == 2
    assert "only for --kind pneumonia" in capsys.readouterr().err


def test_an_older_cached_phantom_is_regenerated(tmp_path, monkeypatch):
    from chestkd.data.phantom.pneumonia import VERSION, default_folder
    monkeypatch.setenv("CHESTKD_HOME", str(tmp_path))
    folder = default_folder(20, 32, 0, ["normal", "pneumonia"])
    write_pneumonia_phantom(folder, images=20, size=32, classes=["normal", "pneumonia"])
    stored = json.loads((folder / "phantom.json").read_text())
    (folder / "phantom.json").write_text(json.dumps({**stored, "version": VERSION - 1}))
    data = load_pneumonia_phantom(images=20, size=32, classes=["normal", "pneumonia"])
    assert len(data) == 20
    assert json.loads((folder / "phantom.json").read_text())["version"] == VERSION


def test_a_relative_folder_loads_as_an_absolute_one(phantom, monkeypatch, capsys):
    # Regression: metadata.csv was keyed by relative paths while load_folder returns absolute
    # ones: a KeyError traceback for --data-dir rel/phantom (and a relative CHESTKD_HOME).
    monkeypatch.chdir(phantom.parent)
    relative = load_pneumonia_phantom(phantom.name, seed=1)
    absolute = load_pneumonia_phantom(phantom, seed=1)
    np.testing.assert_array_equal(relative.paths, absolute.paths)
    assert relative.meta.equals(absolute.meta) and relative.boxes.equals(absolute.boxes)


def test_the_folder_loader_says_when_each_image_is_its_own_patient(phantom, capsys):
    from chestkd.data.folder import load_folder
    load_folder(phantom, split_dirs={"train": "train", "test": "test"})
    assert "each image in" in capsys.readouterr().out
    data = load_folder(phantom, split_dirs={"train": "train", "test": "test"},
                       patient_regex=r"^P(\d+)_")
    assert "each image in" not in capsys.readouterr().out
    data.check_patient_leakage()
    assert len(np.unique(data.patients)) < len(data)
