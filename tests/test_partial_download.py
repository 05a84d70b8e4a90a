"""Part of a dataset on disk: the full ChestX-ray14 metadata beside some of its images.

The metadata is the 123-row fixture (tests/data/chestxray14, 60 whole patients, official-style
lists); tiny PNGs are written for the images of some patients, in the archives' own layout
(``images_001/images``, ``images_002/images``). Nothing here opens an absent file, and nothing
is decoded before the absent images are counted.
"""
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from chestkd.data import images as image_module
from chestkd.data.__main__ import main as data_main
from chestkd.data.chestxray14 import load_chestxray14, read_list
from chestkd.data.describe import describe, format_report, run_summary
from chestkd.data.presence import ABSENT_EXCLUDED, ABSENT_REASON, files_present
from chestkd.errors import DataError
from chestkd.training.config import BASE_DEFAULTS, resolve_config
from chestkd.training.classifier import load_run_data

FIXTURE = Path(__file__).parent / "data" / "chestxray14"
META = pd.read_csv(FIXTURE / "Data_Entry_2017_v2020.csv", dtype=str)
BOXED = set(pd.read_csv(FIXTURE / "BBox_List_2017.csv", dtype=str)["Image Index"])


def present_names():
    """The images of every other patient (sorted ids), plus every boxed image's patient."""
    patients = sorted(META["Patient ID"].unique(), key=int)
    chosen = set(patients[::2])
    chosen |= set(META.loc[META["Image Index"].isin(BOXED), "Patient ID"])
    return sorted(META.loc[META["Patient ID"].isin(chosen), "Image Index"])


PRESENT = present_names()


@pytest.fixture
def partial(tmp_path):
    """The fixture's metadata, lists and boxes; PNGs for PRESENT only, in two archives."""
    root = tmp_path / "nih"
    shutil.copytree(FIXTURE, root)
    (root / "Data_Entry_2017.csv").unlink()
    rng = np.random.default_rng(0)
    for i, name in enumerate(PRESENT):
        folder = root / f"images_00{1 + i % 2}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (24, 24), dtype=np.uint8))
    return root


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail on any image check: the absent images must be counted before one is opened."""
    def refuse(path):
        raise AssertionError(f"image {path} opened before the absent images were counted")
    monkeypatch.setattr(image_module, "check_image_file", refuse)


def test_absent_images_are_counted_without_opening_any(partial, no_decoding):
    absent = sorted(set(META["Image Index"]) - set(PRESENT))
    with pytest.raises(DataError) as error:
        load_chestxray14(partial, split="patient", check_images=True)
    message = str(error.value)
    assert (f"{len(PRESENT)} of the 123 images listed in {partial / 'Data_Entry_2017_v2020.csv'}"
            f" are on disk and {len(absent)} are absent (e.g. {', '.join(absent[:5])}, ...; "
            f"looked in {partial / 'images_001' / 'images'}, "
            f"{partial / 'images_002' / 'images'})") in message
    assert "images: present (--images present)" in message and "--skip-bad-images" in message
    assert "bad image" not in message


def test_describe_counts_the_same_images_the_run_uses(partial):
    data = load_chestxray14(partial, split="patient")
    report = describe(data)
    absent = sorted(set(META["Image Index"]) - set(PRESENT))
    assert report["images"] == {"listed": 123, "on_disk": len(PRESENT),
                                "missing": len(absent)}
    assert report["missing_examples"] == [n for n in data.meta["image"] if n in absent][:5]
    text = format_report(report)
    assert f"{len(absent)} missing (e.g. {report['missing_examples'][0]}" in text
    assert f"a run on the {len(PRESENT)} images on disk: images: present" in text
    # describe with images=present sees exactly the run's dataset
    present = load_chestxray14(partial, split="patient", images="present")
    assert describe(present)["images"] == {"listed": len(PRESENT), "on_disk": len(PRESENT),
                                           "missing": 0}
    assert data_main(["describe", "--dataset", "chestxray14", "--data-dir", str(partial),
                      "--option", "images=present"]) == 0


def test_images_present_restricts_lists_boxes_and_patient_split(partial, no_decoding):
    full = load_chestxray14(partial, split="official")
    data = load_chestxray14(partial, split="official", images="present")
    assert sorted(data.meta["image"]) == PRESENT
    assert data.listed == 123 and data.excluded == {ABSENT_EXCLUDED: 123 - len(PRESENT)}
    assert data.meta["on_disk"].all()
    # the official lists, intersected with the images on disk
    test_list = set(read_list(partial / "test_list.txt"))
    assert set(data.meta["image"][data.split == "test"]) == test_list & set(PRESENT)
    assert set(data.meta["image"][data.split != "test"]) == set(PRESENT) - test_list
    data.check_patient_leakage()
    # boxes: those of the present images, every one of them
    assert set(data.boxes["image"]) == BOXED & set(PRESENT)
    assert len(data.boxes) == len(full.boxes[full.boxes["image"].isin(PRESENT)])
    # the patient split is drawn over the present images: every split gets some
    patient = load_chestxray14(partial, split="patient", images="present")
    shares = [np.mean(patient.split == s) for s in ("train", "val", "test")]
    np.testing.assert_allclose(shares, [0.7, 0.1, 0.2], atol=0.1)
    # none on disk: an error that says where it looked
    for path in partial.glob("images_*/images/*.png"):
        path.unlink()
    with pytest.raises(DataError, match=r"none of the 123 images .* is on disk \(looked in"):
        load_chestxray14(partial, split="patient", images="present")


def test_skip_bad_images_skips_absent_images_as_absent(partial):
    reference = load_chestxray14(partial, split="patient")
    # one present file is broken: it is the one unreadable image
    broken = partial / "images_001" / "images" / PRESENT[0]
    broken.write_bytes(broken.read_bytes()[:-20])
    data = load_chestxray14(partial, split="patient", skip_bad_images=True, workers=2)
    reasons = data.skipped.set_index(data.skipped["path"].map(lambda p: Path(p).name))["reason"]
    assert len(data) == len(PRESENT) - 1
    assert (reasons.drop(PRESENT[0]) == ABSENT_REASON).all()
    assert len(reasons) == 123 - len(PRESENT) + 1
    assert reasons[PRESENT[0]].startswith("truncated PNG")
    # the split is that of all listed images
    split_of = dict(zip(reference.meta["image"], reference.split))
    assert all(split_of[n] == s for n, s in zip(data.meta["image"], data.split))


def test_run_stops_before_training_or_uses_the_present_images(partial, tmp_path, capsys,
                                                               no_decoding):
    base = ["--dataset", "chestxray14", "--data-dir", str(partial), "--split", "patient"]
    config = resolve_config(base, BASE_DEFAULTS)
    with pytest.raises(DataError, match=f"{len(PRESENT)} of the 123 images"):
        load_run_data(config, tmp_path)
    # check_images: false still counts them (the same message, never a read error later)
    config = resolve_config([*base, "check_images=false"], BASE_DEFAULTS)
    with pytest.raises(DataError, match=f"{len(PRESENT)} of the 123 images"):
        load_run_data(config, tmp_path)
    config = resolve_config([*base, "--images", "present", "check_images=false"],
                            BASE_DEFAULTS)
    data = load_run_data(config, tmp_path)
    out = capsys.readouterr().out
    assert f"chestxray14: {len(PRESENT)} of the 123 images listed ({123 - len(PRESENT)} not " \
           f"on disk, left out by images: present)" in out
    assert out.count("\n  ") >= 15 + 3             # 14 findings + No Finding, 3 splits
    few = [line for line in out.splitlines() if line.startswith("  test: ")]
    counts = (data.labels[data.split == "test"]).sum(0)
    expected = [f"{n} {int(c)}" for n, c in zip(data.class_names, counts) if c < 5]
    assert few == ["  test: " + ", ".join(expected)]
    assert run_summary(data).splitlines()[0] in out


def test_skipped_csv_lists_absent_images_with_one_console_line(partial, tmp_path, capsys):
    config = resolve_config(["--dataset", "chestxray14", "--data-dir", str(partial),
                             "--split", "patient", "--skip-bad-images"], BASE_DEFAULTS)
    data = load_run_data(config, tmp_path)
    skipped = pd.read_csv(tmp_path / "skipped.csv")
    assert len(skipped) == 123 - len(PRESENT) and (skipped["reason"] == ABSENT_REASON).all()
    out = capsys.readouterr().out
    assert f"skipped images: {123 - len(PRESENT)} absent from disk; listed in " in out
    assert sum(Path(p).name in out for p in skipped["path"]) == 0   # a summary, not a list
    assert len(data) == len(PRESENT)


def test_files_present_lists_each_folder_once(tmp_path, monkeypatch):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for i in range(3):
            (tmp_path / folder / f"{i}.png").write_bytes(b"x")
    (tmp_path / "a" / "link.png").symlink_to(tmp_path / "b" / "0.png")
    (tmp_path / "a" / "sub").mkdir()
    paths = [tmp_path / "a" / "0.png", tmp_path / "a" / "9.png", tmp_path / "b" / "2.png",
             tmp_path / "a" / "link.png", tmp_path / "a" / "sub", tmp_path / "nowhere" / "1.png",
             str(tmp_path / "b" / ".." / "a" / "1.png")]
    listed = []
    real_scandir = __import__("os").scandir

    def counting_scandir(path):
        listed.append(path)
        return real_scandir(path)
    monkeypatch.setattr("chestkd.data.presence.os.scandir", counting_scandir)
    np.testing.assert_array_equal(files_present(paths),
                                  [True, False, True, True, False, False, True])
    assert sorted(listed) == sorted(str(tmp_path / f) for f in ("a", "b", "nowhere"))


def test_run_summary_says_where_the_boxes_are_or_that_there_are_none(partial):
    data = load_chestxray14(partial, split="official", images="present")
    test_boxes = data.boxes[data.boxes["path"].isin(data.paths[data.split == "test"])]
    assert run_summary(data).splitlines()[-1] == (
        f"boxes: {len(data.boxes)} on {data.boxes['image'].nunique()} image(s), "
        f"{len(test_boxes)} on {test_boxes['image'].nunique()} test image(s)")
    for path in data.boxes["path"].unique():
        Path(path).unlink()
    bare = load_chestxray14(partial, split="official", images="present")
    assert len(bare.boxes) == 0
    assert run_summary(bare).splitlines()[-1].startswith("boxes: none of these images has a box")


def test_main_job_exits_2_with_the_message_before_any_model(partial, tmp_path, capsys,
                                                            monkeypatch, no_decoding):
    from chestkd.experiments import store
    from chestkd.recipes import self_training

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the absent images were reported")
    monkeypatch.setattr(store, "obtain_model", no_model)
    monkeypatch.setattr(self_training, "obtain_model", no_model)
    with pytest.raises(SystemExit) as exit_status:
        self_training.main(["--dataset", "chestxray14", "--data-dir", str(partial),
                            "--out", str(tmp_path / "runs")])
    assert exit_status.value.code == 2
    err = capsys.readouterr().err
    assert f"error: chestxray14: {len(PRESENT)} of the 123 images listed in " in err
    assert "Traceback" not in err


def test_images_option_values_are_checked(partial):
    from chestkd.errors import ConfigError
    from chestkd.training.config import check_config
    with pytest.raises(ConfigError, match=r"--images 'some': choose one of all, present"):
        check_config(resolve_config(["--dataset", "chestxray14", "--images", "some"],
                                    BASE_DEFAULTS))
    with pytest.raises(ConfigError, match=r"images='some': choose one of all, present"):
        load_chestxray14(partial, images="some")
