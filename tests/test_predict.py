"""python -m chestkd.predict on a run directory and a .keras file: the logits the run's own
evaluation recorded (test_predictions.npz) for its test images, whatever their kind; one row
per image with its probabilities and decision (thresholded findings; the arg-max for exclusive
classes, with the one-vs-rest flags beside it); unreadable images skipped and listed; saliency
overlays; integer-input TFLite models saturate instead of wrapping; the two real NIH images in
assets/."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from chestkd.training.options import as_options
from chestkd import predict
from chestkd.data.phantom import write_phantom
from chestkd.evaluation import evaluate_model
from chestkd.models.weights import save_model_atomically
from chestkd.training.config import BASE_DEFAULTS, resolve_config
from chestkd.training.classifier import build_model, load_run_data
from chestkd.training.run import start_run

NIH = sorted((Path(__file__).parents[1] / "assets" / "nih").glob("*.png"))
SIZE = 32


def rewrite_as_other_kinds(images_dir):
    """Make the phantom's radiographs the kinds real sets hold: every fourth image enlarged
    (16 px), shrunk on one axis and enlarged on the other (24 x 48), a tinted RGB copy and a
    16-bit copy; the rest stay 8-bit grey at the run's size."""
    for k, path in enumerate(sorted(images_dir.glob("*.png"))):
        grey = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        kind = k % 4
        if kind == 0:
            image = cv2.resize(grey, (16, 16), interpolation=cv2.INTER_AREA)
        elif kind == 1:
            image = cv2.resize(grey, (48, 24), interpolation=cv2.INTER_LINEAR)
        elif kind == 2:
            image = np.dstack([grey // 2, grey, np.full_like(grey, 40)])   # BGR, tinted
        else:
            image = grey.astype(np.uint16) * 257 + 100
        assert cv2.imwrite(str(path), image)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished tiny run (untrained conv3_student: these tests check that files agree, not
    fits) on a 60-image phantom whose files are of the kinds above, evaluated by the run's own
    pipeline (test_predictions.npz, model_info.json with validation thresholds)."""
    folder = tmp_path_factory.mktemp("predict")
    phantom = write_phantom(folder / "phantom", images=60, size=SIZE, seed=1)
    rewrite_as_other_kinds(phantom / "images")
    config = resolve_config(["--dataset", "chestxray14", "--data-dir", str(phantom),
                             "--image-size", str(SIZE), "--batch-size", "16",
                             "--model", "conv3_student", "--out", str(folder / "runs"),
                             "split=patient", "bootstrap=0", "latency_images=2",
                             "jit_compile=false"], BASE_DEFAULTS)
    run = start_run(config, "base_training")
    data = load_run_data(config, run)
    network = build_model("conv3_student", data, config)
    save_model_atomically(network, run / "model.keras")
    evaluate_model(network, data, as_options(config), run)
    return run


def _recorded(run_dir):
    """(paths, probabilities) of the run's test split, from its evaluation's own logits."""
    with np.load(run_dir / "test_predictions.npz") as npz:
        logits = npz["logits"].astype(np.float64)
        return [str(p) for p in npz["paths"]], 1 / (1 + np.exp(-logits))


def test_predict_gives_the_logits_the_evaluation_recorded_for_every_kind_of_file(run_dir,
                                                                                 tmp_path):
    paths, expected = _recorded(run_dir)
    kinds = {cv2.imread(p, cv2.IMREAD_UNCHANGED).shape for p in paths}
    assert {(16, 16), (24, 48), (SIZE, SIZE, 3)} <= kinds    # the test split holds each kind
    result = predict.run([str(run_dir), *paths, "--out", str(tmp_path)])
    frame = result["predictions"]
    assert list(frame["image"]) == paths
    columns = [c for c in frame.columns if c.startswith("p_")]
    np.testing.assert_allclose(frame[columns].to_numpy(np.float64), expected, atol=2e-5)
    # the 16 px files are upsampled 2x, the 24 x 48 ones 32/24 on their rows
    enlarged = [max(SIZE / h, SIZE / w) for h, w in (
        cv2.imread(p, cv2.IMREAD_UNCHANGED).shape[:2] for p in paths) if min(h, w) < SIZE]
    assert result["upsampling"]["upsampled"] == len(enlarged) > 0
    assert result["upsampling"]["max_factor"] == 2.0
    assert result["upsampling"]["median_factor"] == pytest.approx(np.median(enlarged))


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
    expected = frame[[f"p_{n}" for n in names]].to_numpy(np.float64)
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
             [str(run_dir), str(NIH[0]), "--saliency", "nonsense"],
             [str(run_dir), str(NIH[0]), "--threshold", "otsu"]]
    for argv in cases:
        with pytest.raises(SystemExit) as exit_status:
            predict.main([*argv, "--out", str(tmp_path / "e")])
        assert exit_status.value.code == 2, argv
    err = capsys.readouterr().err
    assert "bare_info.json" in err and "no readable image" in err and "nonsense" in err
    assert "--threshold 'otsu': this model's metadata holds thresholds for youden, f1" in err


def test_an_incomplete_model_info_and_a_bad_batch_size_exit_2_naming_them(run_dir, tmp_path,
                                                                         capsys):
    # Regression: model_info.json without thresholds (or image_size...) was a KeyError
    # traceback, and --batch-size -3 was accepted.
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy(run_dir / "model.keras", copy / "model.keras")
    info = json.loads((run_dir / "model_info.json").read_text())
    del info["thresholds"], info["image_size"]
    (copy / "model_info.json").write_text(json.dumps(info))
    for argv in ([str(copy), str(NIH[0])], [str(run_dir), str(NIH[0]), "--batch-size", "-3"]):
        with pytest.raises(SystemExit) as exit_status:
            predict.main([*argv, "--out", str(tmp_path / "e")])
        assert exit_status.value.code == 2, argv
    err = capsys.readouterr().err
    assert "model_info.json: no image_size, thresholds;" in err
    assert "--batch-size -3: expected an integer >= 1" in err


def test_exclusive_classes_are_decided_by_the_arg_max_with_the_flags_beside(run_dir, tmp_path):
    """Thresholds that flag every class, or none: the decision is still exactly one class."""
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy(run_dir / "model.keras", copy / "model.keras")
    info = json.loads((run_dir / "model_info.json").read_text())
    names = info["class_names"]
    info.update(multi_label=False, probability="softmax")
    info["thresholds"].update(youden=[0.0] * len(names), f1=[1.01] * len(names))
    (copy / "model_info.json").write_text(json.dumps(info))
    for rule, flagged in (("youden", ";".join(names)), ("f1", "none")):
        frame = predict.run([str(copy), *map(str, NIH), "--out", str(tmp_path / rule),
                             "--threshold", rule])["predictions"]
        assert list(frame.columns) == ["image", *[f"p_{n}" for n in names], "predicted",
                                       "per_class_flags"]
        p = frame[[f"p_{n}" for n in names]].to_numpy()
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)      # softmax
        assert list(frame["predicted"]) == [names[i] for i in p.argmax(axis=1)]
        assert set(frame["per_class_flags"]) == {flagged}


def test_an_integer_input_tflite_model_saturates_instead_of_wrapping(tmp_path,
                                                                      tiny_classifier):
    """An int8-input model calibrated on [-1, 1]: pixels just past the largest input int8 can
    hold must read as that largest input (127), not wrap around to the smallest (-128)."""
    import tensorflow as tf
    model = tiny_classifier((4, 4, 3), 2, seed=0)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)
    converter.representative_dataset = lambda: (
        [rng.uniform(-1, 1, (1, 4, 4, 3)).astype(np.float32)] for _ in range(20))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    path = tmp_path / "int8_input.tflite"
    path.write_bytes(converter.convert())
    tflite = predict.TFLiteModel(path)
    scale, zero = tflite.input["quantization"]
    assert tflite.input["dtype"] == np.int8 and scale > 0
    largest = (127 - zero) * scale                      # the largest input int8 can hold
    image = np.full((1, 4, 4, 3), largest + scale, np.float32)   # q = 128: wraps to -128
    saturated = np.full((1, 4, 4, 3), largest, np.float32)
    darkest = np.full((1, 4, 4, 3), (-128 - zero) * scale, np.float32)
    assert np.abs(tflite(saturated) - tflite(darkest)).max() > 0.1   # the model can tell
    np.testing.assert_array_equal(tflite(image), tflite(saturated))
    assert predict.quantize_input(np.array([3.0, -3.0, 0.0]), tflite.input).tolist() == [
        127, -128, zero]


def test_a_folder_gives_every_image_file_training_reads(tmp_path):
    # Regression: predict looked for .png/.jpg/.jpeg only, and silently left out the .tif
    # and .bmp films that class-folder training reads.
    from chestkd.data.folder import EXTENSIONS
    from chestkd.predict import collect_images
    for suffix in (".png", ".TIF", ".tiff", ".bmp", ".jpeg", ".txt"):
        (tmp_path / f"film{suffix}").write_bytes(b"x")
    files, missing = collect_images([tmp_path])
    assert sorted(p.suffix.lower() for p in files) == sorted(
        s for s in (".png", ".tif", ".tiff", ".bmp", ".jpeg") if s in EXTENSIONS)
    assert len(files) == 5 and not missing


def test_a_model_of_another_input_size_or_class_count_is_named(tmp_path, tiny_classifier):
    # Regression: a Keras traceback ("Input 0 ... is incompatible with the layer") from
    # predict, saliency --model and base_training --model FILE.keras.
    from chestkd.errors import ConfigError
    from chestkd.training.run import load_model
    path = tmp_path / "m.keras"
    tiny_classifier((16, 16, 3), 2).save(path)
    assert load_model(path, image_size=16, classes=2).outputs[0].shape[-1] == 2
    with pytest.raises(ConfigError, match=r"m.keras: the model takes 16 x 16 px images, not "
                                          r"the 32 px"):
        load_model(path, image_size=32)
    with pytest.raises(ConfigError, match=r"m.keras: the model has 2 outputs, the data 3"):
        load_model(path, classes=3)
