"""Export a trained model as a LiteRT (``.tflite``) file or a TensorFlow SavedModel, and measure
the copy.

    python -m chestkd.export RUN_DIR|MODEL.keras [--format tflite|saved_model]
        [--quantize none|float16|dynamic|int8 ...] [--out DIR] [--calibration-images N]
        [--latency-repeats N]

``tflite`` (the default) is written by Keras' own LiteRT exporter,
``model.export(path, format="litert")`` (Keras >= 3.13; ``tf.lite`` is leaving the TensorFlow
wheels). Every quantisation mode goes through it -- it hands the options below to the LiteRT
converter -- so no mode needs the older path; that path (the Keras SavedModel converted with
``tf.lite.TFLiteConverter``) is kept only for Keras < 3.13:

=========  ==================================================================================
none       float32 weights and arithmetic
float16    weights stored as float16 (half the size), computed in float32
dynamic    weights int8, activations quantised on the fly ("dynamic range")
int8       weights and activations int8, calibrated on ``--calibration-images`` training images
           of the run (its own preprocessing); the input and output stay float32
=========  ==================================================================================

The file holds LiteRT's built-in ops only: a model that would need TensorFlow ops ("Flex" ops,
which the LiteRT runtime cannot execute) is refused with the op named, and ``export.json``
lists the ops of every file written. ``saved_model`` writes Keras 3's ``model.export`` (a
SavedModel with a ``serve`` endpoint).

Preprocessing stays OUTSIDE the exported model: inputs are the run's normalised (S, S, 3)
images, outputs its logits, exactly as for the Keras model. The export folder (default
``RUN_DIR/export-<format>-<quantize>``) holds the model (``model.tflite`` or ``saved_model/``),
(several ``--quantize`` modes: one subfolder per mode)
``model_info.json`` (the preprocessing, classes and thresholds ``python -m chestkd.predict``
applies) and ``export.json``: exporter, runtime and ops, file size, max and mean |delta
probability| against the Keras model on the test split, test mean AUC before and after, and
latency per image (batch 1, median after warm-up) of the Keras and the exported model. Exported
files are run with ``ai_edge_litert``'s interpreter (``pip install ai-edge-litert``), or with
``tf.lite.Interpreter`` where it is not installed.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from chestkd.cli import main_of, number_option, output_folder
from chestkd.errors import ConfigError
from chestkd.io import atomic_write, atomic_write_json
from chestkd.predict import TFLiteModel, resolve_model
from chestkd.scores import probabilities_from_logits, ranking_scores

FORMATS = ("saved_model", "tflite")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")


def folder_size(path) -> int:
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_data(model_path: Path, info: dict, out: Path):
    """(dataset, config) of the run a model belongs to, or (None, None) without config.yaml."""
    from chestkd.training.config import load_yaml
    from chestkd.training.classifier import load_run_data
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
    from chestkd.training.classifier import image_options
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


def litert_export_available() -> bool:
    """Whether this Keras exports LiteRT itself (``model.export(..., format="litert")``,
    Keras >= 3.13)."""
    import keras
    try:
        major, minor = (int(part) for part in keras.__version__.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (3, 13)


def converter_options(quantize: str, calibration=None) -> dict:
    """LiteRT converter settings of a quantisation mode (the names are the converter's
    attributes; ``target_spec`` entries are set on its target spec). Built-in ops only: no
    TensorFlow ("Flex") fallback, which the LiteRT runtime cannot execute."""
    import tensorflow as tf
    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"--quantize {quantize!r}: choose one of {', '.join(QUANTIZATIONS)}")
    options = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantize != "none":
        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        options["target_spec"]["supported_types"] = [tf.float16]
    elif quantize == "int8":
        if calibration is None or not len(calibration):
            raise ConfigError("--quantize int8 needs calibration images")

        def representative():
            for image in calibration:
                yield [image[None].astype(np.float32)]
        options["representative_dataset"] = representative
        options["target_spec"]["supported_ops"] = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return options


def _flex_refusal(error: Exception, path) -> ConfigError | None:
    """A ConfigError naming the TensorFlow ops of a conversion that failed for want of
    built-in kernels, or None if ``error`` is about something else."""
    message = str(error)
    if "not supported by the native TFLite runtime" not in message \
            and "Select TF" not in message and "Flex" not in message:
        return None
    ops = sorted(set(re.findall(r"\btf\.([A-Z][A-Za-z0-9]+)", message)))
    return ConfigError(f"{path}: the model uses TensorFlow ops that LiteRT has no built-in "
                       f"kernel for ({', '.join(ops) or 'see the converter message above'}), "
                       "so the LiteRT runtime could not run it; export --format saved_model, "
                       "or replace the layers that use them")


def export_litert(model, path, quantize: str = "none", calibration=None) -> str:
    """Write ``model`` as a LiteRT file at ``path``; returns the exporter used.

    Keras' LiteRT exporter where this Keras has it, else the SavedModel + ``TFLiteConverter``
    path (same converter, same options). Built-in ops only (:func:`converter_options`).
    """
    options = converter_options(quantize, calibration)
    path = Path(path)
    try:
        if litert_export_available():
            model.export(str(path), format="litert", verbose=False, **options)
            return "keras litert"
        import tensorflow as tf
        with tempfile.TemporaryDirectory() as staging:
            model.export(staging, format="tf_saved_model", verbose=False)
            converter = tf.lite.TFLiteConverter.from_saved_model(staging)
            for name, value in options.items():
                if name == "target_spec":
                    for key, item in value.items():
                        setattr(converter.target_spec, key, item)
                else:
                    setattr(converter, name, value)
            path.write_bytes(converter.convert())
        return "tf.lite converter (Keras < 3.13)"
    except ConfigError:
        raise
    except Exception as error:  # the converter raises its own ConverterError
        refused = _flex_refusal(error, path)
        if refused is not None:
            raise refused from None
        raise


def interpreter_class():
    """(Interpreter class, runtime name): ``ai_edge_litert``'s, else ``tf.lite``'s."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai_edge_litert"
    except ImportError:
        import tensorflow as tf
        return tf.lite.Interpreter, "tf.lite"


def tflite_ops(path) -> list[str]:
    """The op names of a LiteRT file (no delegate applied), sorted; TensorFlow fallback ops
    are named ``Flex<Op>``."""
    Interpreter, runtime = interpreter_class()
    try:
        if runtime == "ai_edge_litert":
            from ai_edge_litert.interpreter import OpResolverType
        else:
            import tensorflow as tf
            OpResolverType = tf.lite.experimental.OpResolverType
        interpreter = Interpreter(
            model_path=str(path),
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except (ImportError, AttributeError):
        interpreter = Interpreter(model_path=str(path))
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


def flex_ops(path) -> list[str]:
    """The TensorFlow-fallback ("Flex") ops of a LiteRT file, which the LiteRT runtime cannot
    execute (empty for a file chestkd exports)."""
    return [name for name in tflite_ops(path) if name.startswith("Flex")]


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


def mean_auc(labels, scores) -> float | None:
    from chestkd.evaluation.metrics import mean_auc as table_mean, per_class_auc
    value = table_mean(per_class_auc(labels, scores, [str(c) for c in range(labels.shape[1])]))
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
        images, labels, logits_keras = test
        multi_label = info["probability"] == "sigmoid"
        logits_export = exported(images)
        p_keras, p_export = (probabilities_from_logits(z, multi_label)
                             for z in (logits_keras, logits_export))
        delta = np.abs(p_keras - p_export)
        report.update(test_images=int(len(images)), max_abs_delta_probability=float(delta.max()),
                      mean_abs_delta_probability=float(delta.mean()),
                      test_mean_auc_keras=mean_auc(labels, ranking_scores(logits_keras,
                                                                          multi_label)),
                      test_mean_auc_exported=mean_auc(labels, ranking_scores(logits_export,
                                                                             multi_label)),
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
    out = output_folder(out or model_path.parent / f"export-{fmt}-{'-'.join(quantize)}")
    import keras
    import tensorflow as tf
    try:  # before the run's data is read
        model = keras.models.load_model(model_path, compile=False)
    except Exception as error:  # a damaged or foreign file: zip, HDF5 or Keras errors
        raise ConfigError(f"{model_path}: not a readable Keras model ({error})") from None
    data, config = run_data(model_path, info, out)
    if "int8" in quantize and data is None:
        raise ConfigError(f"--quantize int8 calibrates on the run's training images, but "
                          f"{model_path.parent} has no config.yaml; give the run directory")
    keras_fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    keras_logits = lambda x: np.asarray(keras_fn(tf.constant(x, tf.float32)), np.float64)
    test = None
    if data is not None:
        images, labels = split_images(data, config, "test")
        test = (images, labels, keras_logits(images))
    calibration = (split_images(data, config, "train", calibration_images)[0]
                   if "int8" in quantize else None)
    reports = {}
    for mode in quantize:
        folder = out if len(quantize) == 1 else out / mode
        folder.mkdir(parents=True, exist_ok=True)
        if fmt == "saved_model":
            target = folder / "saved_model"
            with tempfile.TemporaryDirectory(dir=folder) as staging:
                model.export(str(Path(staging) / "saved_model"), format="tf_saved_model",
                             verbose=False)
                if target.exists():
                    shutil.rmtree(target)
                shutil.move(str(Path(staging) / "saved_model"), target)
            exporter, ops = "keras tf_saved_model", None
        else:
            target = folder / "model.tflite"
            used = []
            atomic_write(target, lambda tmp, mode=mode: used.append(
                export_litert(model, tmp, mode, calibration)))
            exporter = used[0]
            ops = tflite_ops(target)
            flex = [name for name in ops if name.startswith("Flex")]
            if flex:   # built-in ops were asked for; a converter that ignores it is caught
                raise ConfigError(f"{target}: holds TensorFlow-fallback ops {', '.join(flex)} "
                                  "that the LiteRT runtime cannot execute")
        atomic_write_json(folder / "model_info.json", info)  # what predict applies
        exported, runtime = _exported_fn(target, fmt)
        report = {"source": str(model_path), "format": fmt, "quantize": mode,
                  "file": str(target), "exporter": exporter, "runtime": runtime,
                  "file_bytes": folder_size(target),
                  "keras_file_bytes": folder_size(model_path),
                  "calibration_images": len(calibration) if mode == "int8" else 0}
        if ops is not None:
            report["ops"] = ops
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
    for option in ("calibration_images", "latency_repeats"):
        number_option(getattr(args, option), "--" + option.replace("_", "-"), cast=int, low=1)
    reports = export_model(args.model, fmt=args.format, quantize=args.quantize, out=args.out,
                           calibration_images=args.calibration_images,
                           latency_repeats=args.latency_repeats)
    print(json.dumps(reports, indent=1))
    return reports


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
