"""Saliency figures and localisation scores from the command line.

    python -m chestkd.saliency --run RUN_DIR [--methods ...] [--classes ...] [--out DIR]
    python -m chestkd.saliency --model FILE.keras --images FILE [FILE ...] [--boxes CSV]
                               [--image-size S] [--class-names A B ...] [--out DIR]

``--run`` reads ``RUN_DIR/config.yaml`` and ``RUN_DIR/model.keras``, loads the run's dataset
and explains test images that have ground-truth boxes (default ``--out RUN_DIR/saliency``),
preprocessed with the run's ``normalization`` (and ``mean_std``; when the run estimated it,
it is estimated again the same way, on the same seeded training images).
``--model`` images are normalised with ``--normalization`` (default ``minus_one_one``).
``--model`` explains the given image files; ``--boxes`` is either ChestX-ray14's
``BBox_List_2017.csv`` (1024 x 1024 coordinates) or a CSV with columns
``image,label,x,y,w,h`` in the pixels of the image files (``image`` = file name).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.data.pipeline import NORMALIZATIONS
from chestkd.cli import number_option, user_error_message
from chestkd.errors import ConfigError, DataError
from chestkd.saliency import METHODS
from chestkd.saliency.report import DEFAULT_METHODS, write_saliency_report
from chestkd.training.classifier import image_options
# The project's one model loader (saliency may import training; training never imports saliency).
from chestkd.training.run import finished_run, load_model

SIMPLE_BOX_COLUMNS = ("image", "label", "x", "y", "w", "h")
CHESTXRAY14_BOX_SPACE = 1024


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chestkd.saliency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", metavar="RUN_DIR", help="a training run directory (config.yaml, model.keras)")
    source.add_argument("--model", metavar="FILE.keras", help="a saved model (.keras)")
    parser.add_argument("--images", nargs="+", metavar="FILE", help="image files (with --model)")
    parser.add_argument("--boxes", metavar="CSV", help="box CSV: BBox_List_2017.csv or image,label,x,y,w,h")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        choices=list(METHODS), metavar="METHOD",
                        help=f"saliency methods, of: {', '.join(METHODS)}")
    parser.add_argument("--classes", nargs="+", metavar="FINDING",
                        help="findings to explain (names or output indices)")
    parser.add_argument("--class-names", nargs="+", metavar="NAME",
                        help="names of the model outputs (with --model; default "
                             "ChestX-ray14's 14 findings for 14 outputs, else class_0 ...)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/saliency or ./saliency)")
    parser.add_argument("--image-size", type=int, metavar="S", help="model input size (default: the run's)")
    parser.add_argument("--max-images", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--single-label", action="store_true",
                        help="with --model: softmax probabilities instead of sigmoid")
    parser.add_argument("--normalization", choices=NORMALIZATIONS, default="minus_one_one",
                        help="with --model: the training normalisation (default minus_one_one)")
    parser.add_argument("--mean-std", nargs=2, type=float, metavar=("MEAN", "STD"),
                        help="with --model --normalization mean_std: the training mean and std")
    parser.add_argument("--figure-images", type=int, metavar="N",
                        help="rows of the figures (default min(--max-images, 6))")
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="B",
                        help="bootstrap resamplings of the localisation intervals (0: none)")
    parser.add_argument("--no-smoothing", action="store_true",
                        help="figures without the display blur (scores never use it)")
    parser.add_argument("--no-sanity", action="store_true",
                        help="skip the parameter-randomisation sanity check")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def read_box_csv(path, image_paths) -> pd.DataFrame:
    """Boxes of ``image_paths`` from a CSV, with on-disk ``width``/``height`` of their space."""
    from chestkd.data.chestxray14 import read_csv_text
    from chestkd.data.images import image_size_of

    path = Path(path)
    if not path.is_file():
        raise DataError(f"--boxes {path}: file not found")
    header = pd.read_csv(path, nrows=0).columns
    if "Image Index" in header:
        from chestkd.data.chestxray14 import read_boxes

        boxes = read_boxes(path)
        boxes["width"] = boxes["height"] = CHESTXRAY14_BOX_SPACE
    else:
        missing = [c for c in SIMPLE_BOX_COLUMNS if c not in header]
        if missing:
            raise DataError(f"--boxes {path}: missing column(s) {missing}; expected "
                            f"{','.join(SIMPLE_BOX_COLUMNS)} or the BBox_List_2017.csv layout")
        # As text with each row's line in the file (blank lines counted), so errors name it.
        boxes = read_csv_text(path, "box")
        for column in "xywh":
            values = pd.to_numeric(boxes[column], errors="coerce")
            bad = values.isna() | ((values <= 0) if column in "wh" else False)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise DataError(f"--boxes {path}, line {boxes['line'].iloc[row]}: {column} must "
                                + ("be a positive number" if column in "wh" else "be a number")
                                + f" (found {boxes[column].iloc[row]!r})")
            boxes[column] = values
        boxes = boxes.drop(columns="line")
    by_name = {Path(p).name: str(p) for p in image_paths}
    boxes = boxes[boxes["image"].isin(by_name)].copy()
    boxes["path"] = boxes["image"].map(by_name)
    if "width" not in boxes.columns:
        sizes = {p: image_size_of(p) for p in boxes["path"].unique()}
        boxes["width"] = [sizes[p][0] for p in boxes["path"]]
        boxes["height"] = [sizes[p][1] for p in boxes["path"]]
    return boxes.reset_index(drop=True)


def default_class_names(num_classes: int) -> list[str]:
    from chestkd.data import CHESTXRAY14_FINDINGS

    if num_classes == len(CHESTXRAY14_FINDINGS):
        return list(CHESTXRAY14_FINDINGS)
    return [f"class_{k}" for k in range(num_classes)]


def class_names_of(classes, class_names):
    """``--classes`` given as names or output indices -> names (None stays None)."""
    if not classes:
        return None
    names = []
    for item in classes:
        if str(item).isdigit():
            if int(item) >= len(class_names):
                raise ConfigError(f"--classes {item}: the model has {len(class_names)} outputs")
            names.append(class_names[int(item)])
        else:
            names.append(item)
    return names


def images_dataset(image_paths, class_names, boxes):
    """A test-split Dataset of loose image files (labels unknown: all zero)."""
    from chestkd.data.dataset import Dataset

    paths = [str(Path(p).resolve()) for p in image_paths]
    for original, path in zip(image_paths, paths):
        if not Path(path).is_file():
            raise DataError(f"--images: {original} not found")
    if boxes is not None:
        boxes = boxes.assign(path=[str(Path(p).resolve()) for p in boxes["path"]])
    return Dataset(name="images", class_names=list(class_names), multi_label=True,
                   paths=np.array(paths), labels=np.zeros((len(paths), len(class_names))),
                   patients=np.array([Path(p).stem for p in paths]),
                   split=np.array(["test"] * len(paths)), boxes=boxes)


def run_normalization(config: dict, data) -> tuple[str, list | None]:
    """``(normalization, mean_std)`` of a run's configuration.

    A ``mean_std`` run whose config.yaml has no values estimated them at training time
    (:func:`chestkd.training.classifier.image_options`); the same call, seed and images
    give the same values again.
    """
    normalization = config.get("normalization", "minus_one_one")
    if normalization == "mean_std" and not config.get("mean_std"):
        options = image_options(data, {"seed": 0, **config})
        print(f"mean_std estimated on the training split as at training time: "
              f"{options['mean_std']}")
        return normalization, options["mean_std"]
    return normalization, config.get("mean_std")


def report_options(args) -> dict:
    """Options of write_saliency_report shared by --run and --model."""
    return {"figure_images": args.figure_images, "n_boot": args.bootstrap,
            "smoothing": not args.no_smoothing, "sanity": not args.no_sanity,
            "verbose": 0 if args.quiet else 1}


def run_from_directory(args) -> dict:
    from chestkd.data import load_dataset, loader_options

    run_dir = Path(args.run)
    config = finished_run(run_dir, option="--run")
    if "image_size" not in config:
        raise ConfigError(f"{run_dir / 'config.yaml'}: missing key 'image_size'")
    model = load_model(run_dir / "model.keras",
                       image_size=args.image_size or int(config["image_size"]))
    data = load_dataset(config["dataset"], config.get("data_dir"), **loader_options(config["dataset"], config))
    test = data.subset("test")
    args.classes = class_names_of(args.classes, data.class_names)
    normalization, mean_std = run_normalization(config, data)
    return write_saliency_report(
        model, test, Path(args.out) if args.out else run_dir / "saliency",
        image_size=args.image_size or int(config["image_size"]), class_names=data.class_names,
        methods=args.methods, max_images=args.max_images, classes=args.classes,
        batch_size=args.batch_size, normalization=normalization, mean_std=mean_std,
        **report_options(args))


def model_multi_label(model, single_label: bool, source) -> bool:
    """Whether ``model``'s classes are independent (sigmoid): a model ending in a softmax or
    a sigmoid says so itself (``--single-label`` may only agree); one ending in logits is
    what ``--single-label`` says (default: independent findings)."""
    from chestkd.saliency.methods.graph import ends_in_probability

    ending = ends_in_probability(model)
    if ending == "sigmoid" and single_label:
        raise ConfigError(f"--single-label: {source} ends in a sigmoid (independent findings)")
    return ending != "softmax" and not single_label


def run_from_model(args) -> dict:
    if not args.images:
        raise ConfigError("--model needs --images FILE [FILE ...]")
    if not args.image_size:
        raise ConfigError("--model needs --image-size S (the size the model was trained at)")
    model = load_model(args.model, image_size=args.image_size)
    num_classes = int(model.outputs[0].shape[-1])
    class_names = args.class_names or default_class_names(num_classes)
    if len(class_names) != num_classes:
        raise ConfigError(f"--class-names gives {len(class_names)} names, the model has "
                          f"{num_classes} outputs")
    args.classes = class_names_of(args.classes, class_names)
    multi_label = model_multi_label(model, args.single_label, args.model)
    boxes = read_box_csv(args.boxes, args.images) if args.boxes else None
    data = images_dataset(args.images, class_names, boxes)
    return write_saliency_report(
        model, data, Path(args.out or "saliency"), image_size=args.image_size,
        class_names=class_names, methods=args.methods, max_images=args.max_images,
        classes=args.classes, batch_size=args.batch_size, multi_label=multi_label,
        normalization=args.normalization, mean_std=args.mean_std, **report_options(args))


def check_numbers(args) -> None:
    """The numeric options, before any model or image is read (ConfigError naming one)."""
    for option, value, low in (("--max-images", args.max_images, 1),
                               ("--batch-size", args.batch_size, 1),
                               ("--bootstrap", args.bootstrap, 0),
                               ("--figure-images", args.figure_images, 1),
                               ("--image-size", args.image_size, 1)):
        if value is not None:
            number_option(value, option, cast=int, low=low)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_numbers(args)
        result = run_from_directory(args) if args.run else run_from_model(args)
    except Exception as error:
        if user_error_message(error) is None:
            raise
        print(f"error: {user_error_message(error)}", file=sys.stderr)
        return 2
    for name, path in {**result["figures"], **result["localisation"]}.items():
        print(f"{name}: {path}")
    for name, reason in result["skipped_methods"].items():
        print(f"skipped {name}: {reason}")
    for name, verdict in (result.get("sanity") or {}).get("verdicts", {}).items():
        print(f"sanity check {name}: {verdict}")
    if result["scores"]:
        summary = pd.DataFrame(result["scores"])
        print(summary[summary["label"] == "all"][["method", "boxes", "pointing", "energy",
                                                  "mean_iou", "mean_iobb"]].to_string(index=False))
    print(json.dumps({"examples": result["examples"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
