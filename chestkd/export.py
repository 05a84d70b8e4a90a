"""Export a trained model as a TensorFlow SavedModel or a TFLite file, and measure the copy.

    python -m chestkd.export RUN_DIR|MODEL.keras [--format saved_model|tflite]
        [--quantize none|float16|dynamic|int8 ...] [--out DIR] [--calibration-images N]
        [--latency-repeats N]

The Keras model is written with Keras 3's ``model.export`` (a SavedModel with a ``serve``
endpoint); ``tflite`` converts that SavedModel with ``tf.lite.TFLiteConverter``:

=========  ==================================================================================
none       float32 weights and arithmetic
float16    weights stored as float16 (half the size), computed in float32
dynamic    weights int8, activations quantised on the fly ("dynamic range")
int8       weights and activations int8, calibrated on ``--calibration-images`` training images
           of the run (its own preprocessing); the input and output stay float32
=========  ==================================================================================

Preprocessing stays OUTSIDE the exported model: inputs are the run's normalised (S, S, 3)
images, outputs its logits, exactly as for the Keras model. The export folder (default
``RUN_DIR/export-<format>-<quantize>``) holds the model (``model.tflite`` or ``saved_model/``),
(several ``--quantize`` modes: one subfolder per mode, from one SavedModel)
``model_info.json`` (the preprocessing, classes and thresholds ``python -m chestkd.predict``
applies) and ``export.json``: file size, max and mean |delta probability| against the Keras
model on the test split, test mean AUC before and after, and latency per image (batch 1, median
after warm-up) of the Keras and the exported model. The TFLite interpreter is
``ai_edge_litert``'s when installed, else ``tf.lite.Interpreter``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from chestkd.cli import main_of
from chestkd.errors import ConfigError
from chestkd.io import atomic_write, atomic_write_json
from chestkd.predict import TFLiteModel, probabilities, resolve_model

FORMATS = ("saved_model", "tflite")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")


def folder_size(path) -> int:
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_data(model_path: Path, info: dict, out: Path):
    """(dataset, config) of the run a model belongs to, or (None, None) without config.yaml."""
    from chestkd.training.config import load_yaml
    from chestkd.training.experiment import load_run_data
    config_path = model_path.parent / "config.yaml"
    if not config_path.exists():
        return None, None
    config = {**load_yaml(config_path), "check_images": False,
              "image_size": info["image_size"], "normalization": info["normalization"],
              "mean_std": info.get("mean_std")}
    return load_run_data(config, out), config


def split_images(data, config, split: str, limit: int | None = None):
    """(images (N, S, S, 3) float32, labels (N, C)) of one split, the run's preprocessing;
    the clean labels when the data has them (as the run's own metrics)."""
    from chestkd.data.pipeline import make_dataset
    from chestkd.training.experiment import image_options
    part = data.subset(split)
    if limit is not None and len(part) > limit:
        part = part.select(np.random.default_rng(0).permutation(len(part))[:limit])
    images, labels = [], []
    for x, y in make_dataset(part, batch_size=32, **image_options(part, config)):
        images.append(x.numpy())
        labels.append(y.numpy())
    if part.clean_labels is not None:   # the phantom knows its truth: score against it
        return np.concatenate(images), np.asarray(part.clean_labels, np.float32)
    return np.concatenate(images), np.concatenate(labels)


def convert_tflite(saved_model_dir, quantize: str, calibration=None) -> bytes:
    """The TFLite flatbuffer of a SavedModel, quantised as ``quantize`` says."""
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        def representative():
            for image in calibration:
                yield [image[None].astype(np.float32)]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def median_latency_ms(fn, image, *, repeats: int, warmup: int = 3) -> float:
    """Median wall milliseconds of ``fn(image)`` (batch 1) after ``warmup`` calls."""
    for _ in range(warmup):
        fn(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(image)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def mean_auc(labels, probs) -> float | None:
    from chestkd.evaluation.metrics import mean_auc as table_mean, per_class_auc
    value = table_mean(per_class_auc(labels, probs, [str(c) for c in range(labels.shape[1])]))
    return None if not np.isfinite(value) else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chestkd.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="RUN_DIR|MODEL.keras")
    parser.add_argument("--format", choices=FORMATS, default="tflite")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, nargs="+", default=["none"],
                        help="one or more modes (several: one subfolder each)")
    parser.add_argument("--out", metavar="DIR", help="export folder")
    parser.add_argument("--calibration-images", type=int, default=100,
                        help="training images calibrating int8 (default 100)")
    parser.add_argument("--latency-repeats", type=int, default=50)
    return parser


def _exported_fn(target: Path, fmt: str):
    """(logits function, runtime name) of an exported model."""
    import tensorflow as tf
    if fmt == "saved_model":
        loaded = tf.saved_model.load(str(target))
        return (lambda x: np.asarray(loaded.serve(tf.constant(x, tf.float32)), np.float64),
                "tf.saved_model")
    model = TFLiteModel(target)
    return model, model.runtime


def measure(report: dict, exported, keras_logits, info: dict, test, repeats: int,
            data_has_clean: bool = False) -> dict:
    """Add the test-split agreement, AUCs and batch-1 latencies to ``report``."""
    size = int(info["image_size"])
    probe = np.zeros((1, size, size, 3), np.float32)
    if test is not None:
        images, labels, p_keras = test
        p_export = probabilities(exported(images), info["probability"])
        delta = np.abs(p_keras - p_export)
        report.update(test_images=int(len(images)), max_abs_delta_probability=float(delta.max()),
                      mean_abs_delta_probability=float(delta.mean()),
                      test_mean_auc_keras=mean_auc(labels, p_keras),
                      test_mean_auc_exported=mean_auc(labels, p_export),
                      auc_labels="clean" if data_has_clean else "as given")
        probe = images[:1]
    else:
        report["test_split"] = "none: no config.yaml beside the model"
    report["latency_ms"] = {
        "keras": median_latency_ms(keras_logits, probe, repeats=repeats),
        "exported": median_latency_ms(exported, probe, repeats=repeats),
        "batch": 1, "statistic": f"median of {repeats} after 3 warm-up calls"}
    return report


def export_model(model_path, *, fmt: str = "tflite", quantize=("none",), out=None,
                 calibration_images: int = 100, latency_repeats: int = 50) -> dict:
    """Export the model of a run directory or ``.keras`` file once per quantisation mode.

    Returns {mode: export.json content}. With one mode the files go to ``out``; with several,
    to ``out/<mode>`` (one SavedModel is written and converted once per mode).
    """
    quantize = list(quantize)
    if fmt == "saved_model" and quantize != ["none"]:
        raise ConfigError(f"--quantize {' '.join(quantize)}: quantisation applies to "
                          "--format tflite")
    model_path, info = resolve_model(model_path)
    out = Path(out or model_path.parent / f"export-{fmt}-{'-'.join(quantize)}")
    out.mkdir(parents=True, exist_ok=True)
    data, config = run_data(model_path, info, out)
    if "int8" in quantize and data is None:
        raise ConfigError(f"--quantize int8 calibrates on the run's training images, but "
                          f"{model_path.parent} has no config.yaml; give the run directory")
    import keras
    import tensorflow as tf
    model = keras.models.load_model(model_path, compile=False)
    keras_fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    keras_logits = lambda x: np.asarray(keras_fn(tf.constant(x, tf.float32)), np.float64)
    test = None
    if data is not None:
        images, labels = split_images(data, config, "test")
        test = (images, labels, probabilities(keras_logits(images), info["probability"]))
    calibration = (split_images(data, config, "train", calibration_images)[0]
                   if "int8" in quantize else None)
    reports = {}
    with tempfile.TemporaryDirectory(dir=out) as staging:
        saved = Path(staging) / "saved_model"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        for mode in quantize:
            folder = out if len(quantize) == 1 else out / mode
            folder.mkdir(parents=True, exist_ok=True)
            if fmt == "saved_model":
                target = folder / "saved_model"
                if target.exists():
                    shutil.rmtree(target)
                shutil.copytree(saved, target)
            else:
                flatbuffer = convert_tflite(saved, mode, calibration)
                target = folder / "model.tflite"
                atomic_write(target, lambda tmp: Path(tmp).write_bytes(flatbuffer))
            atomic_write_json(folder / "model_info.json", info)  # what predict applies
            exported, runtime = _exported_fn(target, fmt)
            report = {"source": str(model_path), "format": fmt, "quantize": mode,
                      "file": str(target), "runtime": runtime, "file_bytes": folder_size(target),
                      "keras_file_bytes": folder_size(model_path),
                      "calibration_images": len(calibration) if mode == "int8" else 0}
            reports[mode] = measure(report, exported, keras_logits, info, test,
                                    latency_repeats, data is not None
                                    and data.clean_labels is not None)
            atomic_write_json(folder / "export.json", reports[mode])
    return reports


def run(argv=None) -> dict:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if str(args.model).endswith(".tflite"):
        raise ConfigError(f"{args.model}: export starts from a Keras model (run directory or "
                          ".keras file), not a .tflite file")
    reports = export_model(args.model, fmt=args.format, quantize=args.quantize, out=args.out,
                           calibration_images=args.calibration_images,
                           latency_repeats=args.latency_repeats)
    print(json.dumps(reports, indent=1))
    return reports


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
