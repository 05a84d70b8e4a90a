"""python -m chestkd.predict on a run directory and a .keras file: the run's preprocessing,
one row per image with its probabilities and thresholded findings, unreadable images skipped
and listed, saliency overlays, the two real NIH images in assets/."""
import json
import shutil
from pathlib import Path

import cv2
import keras
import numpy as np
import pandas as pd
import pytest

from chestkd import predict
from chestkd.data.images import read_image
from deploy_run import SIZE, tiny_run

NIH = sorted((Path(__file__).parents[1] / "assets" / "nih").glob("*.png"))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("predict"))[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The NIH radiographs, and one image of each other kind: 16-bit grey (the NIH image's
    values x 257), RGBA, odd-sized RGB JPEG; a corrupt file; a folder holding one of them."""
    folder = tmp_path_factory.mktemp("images")
    grey = cv2.imread(str(NIH[0]), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(folder / "grey16.png"), grey.astype(np.uint16) * 257)
    rgba = np.dstack([np.repeat(grey[..., None], 3, 2), np.full_like(grey, 255)])
    cv2.imwrite(str(folder / "rgba.png"), rgba)
    cv2.imwrite(str(folder / "odd.jpg"), cv2.resize(rgba[..., :3], (77, 41)))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "sub").mkdir()
    shutil.copy(NIH[1], folder / "sub" / "nested.png")
    return folder


def _keras_probabilities(run_dir, paths):
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    x = np.stack([read_image(p, SIZE, "minus_one_one") for p in paths])
    return 1 / (1 + np.exp(-model(x, training=False).numpy().astype(np.float64)))


def test_a_run_directory_and_its_keras_file_predict_every_readable_image(run_dir, images,
                                                                          tmp_path, capsys):
    sources = [*map(str, NIH), str(images), str(images / "missing.png")]
    assert predict.main([str(run_dir), *sources, "--out", str(tmp_path / "a")]) == 0
    frame = pd.read_csv(tmp_path / "a" / "predictions.csv")
    info = json.loads((run_dir / "model_info.json").read_text())
    names = info["class_names"]
    assert len(frame) == 6 and list(frame.columns) == ["image", *[f"p_{n}" for n in names],
                                                       "predicted"]
    assert frame["image"].str.endswith("nested.png").any()  # folders are searched
    expected = _keras_probabilities(run_dir, frame["image"])
    np.testing.assert_allclose(frame[[f"p_{n}" for n in names]].to_numpy(), expected,
                               atol=1e-6)
    by_name = frame.set_index(frame["image"].map(lambda p: Path(p).name))
    # a 16-bit copy (x 257) and an RGBA copy of the same radiograph read the same
    columns = [f"p_{n}" for n in names]
    for copy in ("grey16.png", "rgba.png"):
        np.testing.assert_allclose(by_name.loc[copy, columns].to_numpy(float),
                                   by_name.loc[NIH[0].name, columns].to_numpy(float),
                                   atol=1e-5)
    thresholds = np.asarray(info["thresholds"]["youden"])
    for row, p in zip(frame["predicted"], expected):
        assert row == (";".join(n for n, hit in zip(names, p >= thresholds) if hit) or "none")
    skipped = pd.read_csv(tmp_path / "a" / "skipped.csv")
    assert sorted(Path(p).name for p in skipped["path"]) == ["broken.png", "missing.png"]
    assert "skipped" in capsys.readouterr().err
    # the .keras file with its model_info.json gives the same rows
    assert predict.main([str(run_dir / "model.keras"), *map(str, NIH), "--out",
                         str(tmp_path / "b")]) == 0
    again = pd.read_csv(tmp_path / "b" / "predictions.csv")
    np.testing.assert_allclose(again[columns].to_numpy(),
                               by_name.loc[[p.name for p in NIH], columns].to_numpy(float),
                               atol=1e-6)


def test_the_threshold_rule_is_applied_and_saliency_overlays_are_written(run_dir, tmp_path):
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy(run_dir / "model.keras", copy / "model.keras")
    info = json.loads((run_dir / "model_info.json").read_text())
    count = len(info["class_names"])
    info["thresholds"].update(youden=[0.0] * count, f1=[1.01] * count)
    (copy / "model_info.json").write_text(json.dumps(info))
    result = predict.run([str(copy), *map(str, NIH), "--out", str(tmp_path / "y"),
                          "--saliency", "gradcam"])
    assert set(result["predictions"]["predicted"]) == {";".join(info["class_names"])}
    overlays = sorted((tmp_path / "y" / "saliency").glob("*.png"))
    assert len(overlays) == 2 and all(p.stat().st_size > 1000 for p in overlays)
    result = predict.run([str(copy), *map(str, NIH), "--out", str(tmp_path / "f"),
                          "--threshold", "f1"])
    assert set(result["predictions"]["predicted"]) == {"none"}


def test_user_errors_exit_2_with_one_line(run_dir, images, tmp_path, capsys):
    bare = tmp_path / "bare.keras"
    shutil.copy(run_dir / "model.keras", bare)
    cases = [[str(bare), str(NIH[0])],                     # preprocessing unknown
             [str(run_dir), str(images / "broken.png")],   # nothing readable
             [str(tmp_path / "none.keras"), str(NIH[0])],
             [str(run_dir), str(NIH[0]), "--saliency", "nonsense"]]
    for argv in cases:
        with pytest.raises(SystemExit) as exit_status:
            predict.main([*argv, "--out", str(tmp_path / "e")])
        assert exit_status.value.code == 2, argv
    err = capsys.readouterr().err
    assert "bare_info.json" in err and "no readable image" in err and "nonsense" in err
