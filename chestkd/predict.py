"""Apply a trained model to new images.

    python -m chestkd.predict MODEL IMAGE_OR_FOLDER [...] --out DIR
        [--threshold youden|f1] [--saliency METHOD] [--batch-size N]

MODEL is a run directory (its ``model.keras``), a ``.keras`` file or a ``.tflite`` file
written by ``python -m chestkd.export``. Its preprocessing comes from the metadata file
recorded with it, ``<stem>_info.json`` beside the model (``model_info.json`` for
``model.keras`` and ``model.tflite``; written by every evaluation and every export): image
size, normalisation (and mean/std), class names, sigmoid or softmax, and the thresholds chosen
on the validation split. A run directory without it falls back to its ``config.yaml`` and
``test_predictions.npz``; a bare model file without it is refused (the preprocessing cannot
be guessed).

IMAGES are files or folders (searched recursively for .png, .jpg, .jpeg): grey, RGB, RGBA or
palette, 8 or 16 bit, any size, EXIF-oriented JPEGs, read by
:func:`chestkd.data.images.read_unit_grey` -- the reading rule of training and evaluation, so an
image of the run's test split gets the logits its evaluation recorded. A closing line says how
many images were smaller than the model's input size and upsampled, and by how much. Writes

* ``predictions.csv``: one row per image: ``image``, ``p_<class>`` per class and ``predicted``:
  for independent findings (sigmoid) the findings whose probability reaches their threshold,
  ``;``-separated, ``none`` if none; for exclusive classes (softmax) the most probable class --
  the decision, exactly one per image -- and beside it ``per_class_flags``, the classes whose
  probability reaches their one-vs-rest threshold (zero, one or several: flags for a reader
  who wants a class's own operating point, not a decision);
* ``skipped.csv``: images that could not be read, with the reason (they are named on stderr
  and skipped; nothing else stops);
* with ``--saliency METHOD`` (a Keras model only): ``saliency/<image>.png``, the image and the
  map of its most probable class overlaid.

Exit status 0 when at least one image was predicted, 2 on a user error (unknown model file,
no readable image, a bad option).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.cli import main_of, number_option, output_folder
from chestkd.data.images import (IMAGE_EXTENSIONS, describe_upsampling, normalize_unit,
                                 read_unit_grey, upsampling_summary)
from chestkd.errors import ChestKDError, ConfigError, DataError
from chestkd.io import atomic_write, atomic_write_text
from chestkd.scores import probabilities_from_logits

# The keys of a model's recorded thresholds that are not a rule's values.
_THRESHOLD_RECORD_KEYS = ("rule", "split", "values", "class_names")
# What predict reads from model_info.json (and mean_std under normalization mean_std).
INFO_KEYS = ("class_names", "multi_label", "probability", "image_size", "normalization",
             "thresholds")


def info_path(model_path) -> Path:
    """The metadata file recorded with a model file: ``<stem>_info.json`` beside it."""
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}_info.json")


def _info_from_run(run_dir: Path) -> dict:
    """The metadata of a run that predates ``model_info.json`` (config + test predictions)."""
    import yaml
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    npz_path = run_dir / "test_predictions.npz"
    if not npz_path.exists():
        raise ConfigError(f"{run_dir}: no model_info.json and no test_predictions.npz, so the "
                          "class names are unknown; evaluate the run first")
    with np.load(npz_path, allow_pickle=False) as npz:
        names, multi = [str(n) for n in npz["class_names"]], bool(npz["multi_label"])
    from chestkd.evaluation.classification import THRESHOLD_RULES
    half = [0.5] * len(names)
    return {"class_names": names, "multi_label": multi,
            "probability": "sigmoid" if multi else "softmax",
            "image_size": int(config["image_size"]), "normalization": config["normalization"],
            "mean_std": config.get("mean_std"),
            "thresholds": {"rule": "youden",
                           "split": "none recorded: 0.5", **{r: half for r in THRESHOLD_RULES},
                           "values": half, "class_names": names}}


def threshold_rule(info: dict, asked: str | None) -> str:
    """The rule whose thresholds decide: ``asked`` (``--threshold``), or the one the run chose;
    a rule the model's metadata holds no thresholds for is refused, naming those it holds."""
    recorded = [k for k in info["thresholds"] if k not in _THRESHOLD_RECORD_KEYS]
    rule = asked or info["thresholds"]["rule"]
    if rule not in recorded:
        raise ConfigError(f"--threshold {rule!r}: this model's metadata holds thresholds for "
                          f"{', '.join(recorded)}")
    return rule


def resolve_model(source) -> tuple[Path, dict]:
    """(model file, metadata) of a run directory, ``.keras`` or ``.tflite`` file."""
    source = Path(source)
    if source.is_dir():
        model_path = source / "model.keras"
        if not model_path.exists():
            raise ConfigError(f"{source}: a run directory needs model.keras")
        if not info_path(model_path).exists():
            return model_path, _info_from_run(source)
    elif source.suffix in (".keras", ".tflite"):
        model_path = source
        if not model_path.exists():
            raise ConfigError(f"{model_path}: model file not found")
    else:
        raise ConfigError(f"{source}: expected a run directory, a .keras or a .tflite file")
    meta = info_path(model_path)
    if not meta.exists():
        raise ConfigError(f"{model_path}: no {meta.name} beside it, so its preprocessing "
                          "(image size, normalisation, classes) is unknown; use the run "
                          "directory or a file written by python -m chestkd.export")
    try:
        info = json.loads(meta.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"{meta}: not valid JSON ({error})") from None
    lacking = [key for key in INFO_KEYS if not isinstance(info, dict) or key not in info] or \
        [f"thresholds.{key}" for key in ("rule",) if key not in (info["thresholds"] or {})]
    if lacking:
        raise ConfigError(f"{meta}: no {', '.join(lacking)}; the file that the run or python -m "
                          f"chestkd.export wrote holds them")
    return model_path, info


def quantize_input(x: np.ndarray, details: dict) -> np.ndarray:
    """Float inputs -> the input tensor's dtype. An integer input ``q = round(x / scale + zero)``
    saturates at the dtype's range (a value past it would wrap around, e.g. int8 128 -> -128,
    turning the brightest pixel into the darkest); a float input is cast."""
    dtype = np.dtype(details["dtype"])
    x = np.asarray(x, np.float32)
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    scale, zero = details["quantization"]
    if scale:
        x = np.round(x / np.float32(scale) + np.float32(zero))
    limits = np.iinfo(dtype)
    return np.clip(x, limits.min, limits.max).astype(dtype)


class TFLiteModel:
    """A ``.tflite`` classifier called like a Keras model on float32 image batches.

    The interpreter is ``ai_edge_litert``'s when installed, else ``tf.lite.Interpreter``.
    Quantised inputs/outputs (int8 / uint8) are (de)quantised with their scale and zero point.
    """

    def __init__(self, path):
        try:
            from ai_edge_litert.interpreter import Interpreter
            self.runtime = "ai_edge_litert"
        except ImportError:
            import tensorflow as tf
            Interpreter = tf.lite.Interpreter
            self.runtime = "tf.lite"
        self.interpreter = Interpreter(model_path=str(path))
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(v) for v in self.input["shape"])

    def _one(self, image: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"],
                                    quantize_input(image[None], self.input))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"])
        scale, zero = self.output["quantization"]
        if np.issubdtype(self.output["dtype"], np.integer) and scale:
            y = (y.astype(np.float32) - zero) * scale
        return np.asarray(y, np.float64)[0]

    def __call__(self, images) -> np.ndarray:
        """(N, H, W, C) float32 -> (N, C) float64 logits (one image per invocation)."""
        return np.stack([self._one(image) for image in np.asarray(images, np.float32)])


def load_classifier(model_path, *, image_size: int | None = None, classes: int | None = None):
    """``(fn, keras_model_or_None)``: ``fn(images) -> logits`` for a .keras or .tflite file
    (a Keras model checked against ``image_size`` and ``classes`` where given)."""
    model_path = Path(model_path)
    if model_path.suffix == ".tflite":
        try:
            return TFLiteModel(model_path), None
        except (ValueError, RuntimeError) as error:
            raise ConfigError(f"{model_path}: not a readable TFLite model ({error})") from None
    from chestkd.training.run import load_model
    try:
        model = load_model(model_path, image_size=image_size, classes=classes)
    except ChestKDError:
        raise
    except Exception as error:  # Keras raises many kinds for an unreadable archive
        raise ConfigError(f"{model_path}: not a readable Keras model ({error})") from None
    import tensorflow as tf
    infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return (lambda images: np.asarray(infer(np.asarray(images, np.float32)), np.float64)), model


def read_file(path, info: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """(the model's (S, S, 3) float32 input, the file's (height, width)) of one image file,
    read by the run's reading rule (:func:`chestkd.data.images.read_unit_grey`)."""
    size, normalization = int(info["image_size"]), info["normalization"]
    grey, source = read_unit_grey(path, size)
    if normalization == "mean_std":
        mean, std = info["mean_std"]
        image = (normalize_unit(grey, "zero_one") - np.float32(mean)) / np.float32(std)
        return image, source
    return normalize_unit(grey, normalization), source


def preprocess_file(path, info: dict) -> np.ndarray:
    """One image file as the model's (S, S, 3) float32 input, the run's way."""
    return read_file(path, info)[0]


def collect_images(sources) -> tuple[list[Path], list[dict]]:
    """Image files named or found (recursively) in folders, and the names that do not exist."""
    files, missing = [], []
    for source in map(Path, sources):
        if source.is_dir():
            files += sorted(p for p in source.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif source.exists():
            files.append(source)
        else:
            missing.append({"path": str(source), "reason": "missing file"})
    return files, missing


def flags(probs: np.ndarray, names, thresholds) -> list[str]:
    """The classes whose probability reaches their threshold, per image (``;``-separated,
    ``none`` if none): the decision for independent findings."""
    above = probs >= np.asarray(thresholds, np.float64)[None, :]
    return [";".join(n for n, hit in zip(names, row) if hit) or "none" for row in above]


def decisions(probs: np.ndarray, names, thresholds, multi_label: bool = True) -> list[str]:
    """The decision per image: thresholded findings (:func:`flags`) for independent findings;
    for exclusive classes the most probable class, one per image (one-vs-rest thresholds can
    give an image none or two of classes that exclude each other)."""
    if multi_label:
        return flags(probs, names, thresholds)
    return [names[int(i)] for i in np.argmax(probs, axis=1)]


def write_overlay(model, image, class_index: int, method: str, path, title: str) -> None:
    from chestkd.saliency import saliency_map
    from chestkd.saliency.report.figures import plot_saliency_grid
    heat = saliency_map(model, image[None], class_index, method=method)
    plot_saliency_grid(image[None], {method: heat}, path, row_titles=[title])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chestkd.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="run directory, .keras or .tflite file")
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="image files or folders")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--threshold", metavar="RULE", default=None,
                        help="threshold rule, youden or f1 (default: the one the run chose)")
    parser.add_argument("--saliency", metavar="METHOD", default=None,
                        help="write an overlay per image with this saliency method")
    parser.add_argument("--batch-size", type=int, default=16)
    return parser


def run(argv=None) -> dict:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.saliency is not None:
        from chestkd.saliency import METHODS
        if args.saliency not in METHODS:
            raise ConfigError(f"--saliency {args.saliency!r}: choose one of {', '.join(METHODS)}")
        if str(args.model).endswith(".tflite"):
            raise ConfigError("--saliency needs gradients: give the .keras model or the run "
                              "directory, not a .tflite file")
    number_option(args.batch_size, "--batch-size", cast=int, low=1)
    model_path, info = resolve_model(args.model)
    names = list(info["class_names"])
    rule = threshold_rule(info, args.threshold)
    thresholds = info["thresholds"][rule]
    files, skipped = collect_images(args.images)
    out = output_folder(args.out)
    classify, keras_model = load_classifier(model_path, image_size=int(info["image_size"]),
                                            classes=len(names))
    rows, batch, batch_paths = [], [], []

    def flush():
        if not batch:
            return
        probs = probabilities_from_logits(classify(np.stack(batch)),
                                          multi_label=info["probability"] == "sigmoid")
        multi_label = bool(info["multi_label"])
        decided = decisions(probs, names, thresholds, multi_label)
        flagged = flags(probs, names, thresholds)
        for k, (path, image, p) in enumerate(zip(batch_paths, batch, probs)):
            row = {"image": str(path), **{f"p_{n}": float(v) for n, v in zip(names, p)},
                   "predicted": decided[k]}
            if not multi_label:
                row["per_class_flags"] = flagged[k]
            rows.append(row)
            if keras_model is not None and args.saliency:
                top = int(p.argmax())
                write_overlay(keras_model, image, top, args.saliency,
                              out / "saliency" / f"{len(rows):04d}_{Path(path).stem}.png",
                              f"{names[top]}, p = {p[top]:.2f}")
        batch.clear()
        batch_paths.clear()

    sources = []
    for path in files:
        try:
            image, source = read_file(path, info)
            batch.append(image)
            batch_paths.append(path)
            sources.append(source)
        except DataError as error:
            skipped.append({"path": str(path), "reason": str(error)})
            continue
        if len(batch) >= args.batch_size:
            flush()
    flush()
    for item in skipped:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    if skipped:
        table = pd.DataFrame(skipped, columns=["path", "reason"])
        atomic_write(out / "skipped.csv", lambda tmp: table.to_csv(tmp, index=False))
    if not rows:
        raise DataError(f"no readable image among {', '.join(map(str, args.images))}")
    frame = pd.DataFrame(rows)
    atomic_write_text(out / "predictions.csv", frame.to_csv(index=False))
    print(f"{len(rows)} image(s) predicted with {model_path} ({rule} thresholds, chosen on: "
          f"{info['thresholds'].get('split', 'n/a')}): "
          f"{out / 'predictions.csv'}" + (f"; {len(skipped)} skipped" if skipped else ""))
    upsampling = upsampling_summary(sources, int(info["image_size"]))
    print(describe_upsampling(upsampling))
    return {"predictions": frame, "skipped": skipped, "model": str(model_path),
            "threshold_rule": rule, "out": str(out), "upsampling": upsampling}


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
