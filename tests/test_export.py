"""python -m chestkd.export on a trained tiny model: LiteRT files in every quantisation mode,
written by Keras' LiteRT exporter with built-in ops only (no "Flex" TensorFlow fallback, which
the LiteRT runtime cannot execute) and run with ai_edge_litert; the float32 file within 1e-4
of Keras; each quantised mode's AUC change and largest probability change asserted against
the Keras model; export.json holds the measured numbers; predict on the .tflite file gives the
evaluation's own probabilities; the SavedModel serves the Keras logits."""
import json
import shutil
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from chestkd import export, predict
from chestkd.errors import ConfigError
from trained_run import trained_run

FAST = ["--latency-repeats", "3", "--calibration-images", "32"]
# (largest |delta probability|, largest |delta mean AUC|) each mode may cost on the test split
# (32 images, 16 per class: one pair of images swapped in the ranking moves the AUC by 1/256)
# of the trained model: float16 rounds weights to 11 significant bits, dynamic quantises
# weights to 8 bits, int8 weights and activations. Measured on this model: 1.4e-4, 6.1e-4 and
# 1.2e-3 in probability, no AUC change; the bounds leave room for another machine's training.
TOLERANCE = {"none": (1e-4, 1e-9), "float16": (2e-3, 0.01), "dynamic": (0.01, 0.02),
             "int8": (0.02, 0.02)}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("export"))[0]


@pytest.fixture(scope="module")
def exports(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite")
    return out, export.run([str(run_dir), "--format", "tflite", "--quantize", "none",
                            "float16", "dynamic", "int8", "--out", str(out), *FAST])


def _probability_columns(frame):
    return frame[[c for c in frame.columns if c.startswith("p_")]].to_numpy(np.float64)


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("quantize", ["none", "float16", "dynamic", "int8"])
def test_every_litert_mode_keeps_the_trained_models_scores(run_dir, exports, quantize,
                                                           tmp_path):
    out, reports = exports
    report = reports[quantize]
    assert json.loads((out / quantize / "export.json").read_text()) == report
    tflite = out / quantize / "model.tflite"
    assert report["exporter"] == "keras litert" and report["runtime"] == "ai_edge_litert"
    assert report["ops"] == export.tflite_ops(tflite) and export.flex_ops(tflite) == []
    assert report["file_bytes"] == tflite.stat().st_size > 0
    assert report["calibration_images"] == (32 if quantize == "int8" else 0)
    assert report["latency_ms"]["keras"] > 0 and report["latency_ms"]["exported"] > 0
    # the model learnt its task, so a quantisation that broke it would show in the AUC
    assert report["test_images"] == 32 and report["test_mean_auc_keras"] > 0.85
    max_delta, max_auc_change = TOLERANCE[quantize]
    assert 0 <= report["mean_abs_delta_probability"] <= report["max_abs_delta_probability"] \
        < max_delta
    assert abs(report["test_mean_auc_exported"] - report["test_mean_auc_keras"]) \
        <= max_auc_change
    if quantize != "none":   # smaller files, and the arithmetic really changed
        assert report["file_bytes"] < 0.6 * reports["none"]["file_bytes"]
        assert report["max_abs_delta_probability"] > 1e-6
    # predict on the test images through the file: the evaluation's own probabilities
    with np.load(run_dir / "test_predictions.npz") as npz:
        paths, recorded = [str(p) for p in npz["paths"]], _softmax(npz["logits"])
    got = predict.run([str(tflite), *paths, "--out", str(tmp_path)])["predictions"]
    assert list(got["image"]) == paths
    assert np.abs(_probability_columns(got) - recorded).max() < max_delta


def test_the_float32_litert_file_runs_in_ai_edge_litert_within_1e4_of_keras(run_dir, exports):
    from ai_edge_litert.interpreter import Interpreter
    out, _ = exports
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    interpreter = Interpreter(model_path=str(out / "none" / "model.tflite"))
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    images = np.random.default_rng(0).uniform(-1, 1, (8, 32, 32, 3)).astype(np.float32)
    for image in images:
        interpreter.set_tensor(source["index"], image[None])
        interpreter.invoke()
        np.testing.assert_allclose(interpreter.get_tensor(target["index"])[0],
                                   model(image[None], training=False).numpy()[0], atol=1e-4)


class ExtractPatches(keras.layers.Layer):
    """A layer whose op (ExtractImagePatches) LiteRT has no built-in kernel for."""

    def call(self, x):
        return tf.image.extract_patches(x, [1, 2, 2, 1], [1, 2, 2, 1], [1, 1, 1, 1], "VALID")


def test_tensorflow_fallback_ops_are_found_and_refused(tmp_path):
    model = keras.Sequential([keras.Input((4, 4, 1)), ExtractPatches(), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    # Keras' own default allows TensorFlow ops: the file holds one, and it is found
    model.export(str(tmp_path / "flex.tflite"), format="litert", verbose=False)
    assert export.flex_ops(tmp_path / "flex.tflite") == ["FlexExtractImagePatches"]
    # chestkd's export asks for built-in ops only and names the op it cannot export
    with pytest.raises(ConfigError, match="ExtractImagePatches.*--format saved_model"):
        export.export_litert(model, tmp_path / "refused.tflite")


def test_without_keras_litert_or_ai_edge_litert_the_older_paths_are_used(tmp_path, monkeypatch,
                                                                          tiny_classifier):
    model = tiny_classifier((8, 8, 3), 2, conv={"filters": 4, "kernel_size": 3},
                            pooling="average", seed=None)
    monkeypatch.setattr(export, "litert_export_available", lambda: False)
    path = tmp_path / "old.tflite"
    assert export.export_litert(model, path) == "tf.lite converter (Keras < 3.13)"
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)             # not installed
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    assert export.interpreter_class()[1] == "tf.lite"
    fallback = predict.TFLiteModel(path)
    assert fallback.runtime == "tf.lite" and export.flex_ops(path) == []
    image = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(fallback(image), model(image).numpy(), atol=1e-4)


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
    # Regressions: 0 repeats wrote NaN latencies (exit 0); a damaged model.keras was a
    # traceback after the run's data was read.
    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir, damaged)
    (damaged / "model.keras").write_bytes(b"not a zip file")
    for argv, message in (([str(run_dir), "--latency-repeats", "0"], "--latency-repeats 0"),
                          ([str(run_dir), "--calibration-images", "0"], "--calibration-images"),
                          ([str(damaged)], "model.keras: not a readable Keras model")):
        with pytest.raises(SystemExit) as status:
            export.main([*argv, "--out", str(tmp_path / "x")])
        assert status.value.code == 2 and message in capsys.readouterr().err
