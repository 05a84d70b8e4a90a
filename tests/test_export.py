"""python -m chestkd.export: SavedModel and TFLite in every quantisation mode round-trip,
export.json holds the measured numbers, and predict on the .tflite file agrees with the
Keras model (float export within 1e-4 in probability)."""
import json
from pathlib import Path

import numpy as np
import pytest

from chestkd import export, predict
from deploy_run import tiny_run

NIH = sorted((Path(__file__).parents[1] / "assets" / "nih").glob("*.png"))
FAST = ["--latency-repeats", "3", "--calibration-images", "16"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("export"))[0]


@pytest.fixture(scope="module")
def keras_predictions(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("keras_predictions")
    return predict.run([str(run_dir), *map(str, NIH), "--out", str(out)])["predictions"]


def _probability_columns(frame):
    return frame[[c for c in frame.columns if c.startswith("p_")]].to_numpy(np.float64)


@pytest.fixture(scope="module")
def exports(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite")
    return out, export.run([str(run_dir), "--format", "tflite", "--quantize", "none",
                            "float16", "dynamic", "int8", "--out", str(out), *FAST])


@pytest.mark.parametrize("quantize", ["none", "float16", "dynamic", "int8"])
def test_every_tflite_mode_round_trips_through_predict(exports, keras_predictions, quantize,
                                                        tmp_path):
    out, reports = exports
    report = reports[quantize]
    assert json.loads((out / quantize / "export.json").read_text()) == report
    tflite = out / quantize / "model.tflite"
    assert report["file_bytes"] == tflite.stat().st_size > 0
    assert report["test_images"] > 0 and 0 <= report["mean_abs_delta_probability"] \
        <= report["max_abs_delta_probability"]
    for key in ("test_mean_auc_keras", "test_mean_auc_exported"):
        assert 0 <= report[key] <= 1
    assert report["latency_ms"]["keras"] > 0 and report["latency_ms"]["exported"] > 0
    assert report["calibration_images"] == (16 if quantize == "int8" else 0)
    got = predict.run([str(tflite), *map(str, NIH), "--out", str(tmp_path)])
    difference = np.abs(_probability_columns(got["predictions"])
                        - _probability_columns(keras_predictions)).max()
    if quantize == "none":
        assert report["max_abs_delta_probability"] < 1e-4 and difference < 1e-4
        assert report["test_mean_auc_exported"] == pytest.approx(report["test_mean_auc_keras"])
    else:  # smaller files, close but not equal outputs
        assert report["file_bytes"] < 0.6 * reports["none"]["file_bytes"]
        assert 0 < difference < 0.1
    assert list(got["predictions"]["image"]) == list(keras_predictions["image"])


def test_a_saved_model_serves_the_keras_logits(run_dir, tmp_path):
    report = export.run([str(run_dir), "--format", "saved_model", "--out", str(tmp_path),
                         *FAST])["none"]
    assert (tmp_path / "saved_model" / "saved_model.pb").exists()
    assert report["max_abs_delta_probability"] < 1e-5
    assert json.loads((tmp_path / "model_info.json").read_text())["image_size"] == 32


def test_export_refuses_what_it_cannot_do(run_dir, tmp_path, capsys):
    for argv in ([str(run_dir), "--format", "saved_model", "--quantize", "int8"],
                 [str(tmp_path / "m.tflite")]):
        with pytest.raises(SystemExit) as status:
            export.main([*argv, "--out", str(tmp_path)])
        assert status.value.code == 2
    err = capsys.readouterr().err
    assert "applies to --format tflite" in err and "not a .tflite file" in err
