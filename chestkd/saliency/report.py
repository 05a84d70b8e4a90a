"""The saliency report of a trained model: figures and localisation scores.

:func:`write_saliency_report` picks test images (those with ground-truth boxes first, one
finding after another so every boxed finding is shown), reads them with the training
input pipeline (:func:`chestkd.data.pipeline.make_dataset`, so with the run's own
normalisation: the maps explain the input values the model saw), computes the saliency maps
of each image's finding (one progress bar for all methods x images) and writes

* ``fig4_saliency.png`` — original, guided backprop, SmoothGrad, SmoothGrad-IG, each row
  titled with the finding and the model's predicted probability (Ho & Gwak 2020, Fig. 4);
* ``fig5_cam_vs_smoothgrad_ig.png`` — CAM vs. SmoothGrad-IG with the ground-truth box drawn
  (Fig. 5), when the data has boxes (with neither method requested: the computed ones);
* ``localisation.csv`` / ``.md`` / ``_per_box.csv`` — pointing game, energy in box and
  IoU / IoBB per method and finding, with the centre-Gaussian baseline as method ``centre``.

Defaults keep it to a few minutes on 2 CPU cores: 6 images, SmoothGrad 16 samples, IG
32 steps, SmoothGrad-IG 16 samples x 16 steps.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from chestkd.data.pipeline import NORMALIZATIONS, make_dataset
from chestkd.errors import ChestKDError, ConfigError
from chestkd.saliency import METHODS, saliency_method
from chestkd.saliency.figures import plot_saliency_grid
from chestkd.saliency.graph import logits_graph
from chestkd.saliency.localisation import (centre_baseline_maps, localisation_scores,
                                           scale_boxes, write_localisation_tables)

FIG4_METHODS = ("guided_backprop", "smoothgrad", "smoothgrad_ig")
FIG5_METHODS = ("cam", "gradcam", "smoothgrad_ig")
DEFAULT_METHODS = ("guided_backprop", "smoothgrad", "smoothgrad_ig", "cam")
# Noise of 2 % of the image range, not SmoothGrad's usual 10-20 %: radiographs' findings are
# subtle, and on a trained ResNet-32 of the phantom stronger noise moves the maps off the
# findings (pointing game of SmoothGrad-IG: 0.67 at 2 %, 0.62 at 5 %, 0.49 at 15 %, SmoothGrad
# 0.55 / 0.43 / 0.23; a centre Gaussian scores 0.54 — benchmarks/RESULTS.md, "Saliency
# localisation").
DEFAULT_OPTIONS = {
    "smoothgrad": {"samples": 16, "noise_level": 0.02},
    "integrated_gradients": {"steps": 32},
    "smoothgrad_ig": {"samples": 16, "steps": 16, "noise_level": 0.02},
}
# Maps of the CAM-like methods (feature-map resolution) are not in Fig. 4.
MAP_METHODS = ("cam", "gradcam", "gradcam_plus_plus", "scorecam")


def _round_robin(groups: list[list]) -> list:
    """Interleave lists: first item of each, then second of each, ..."""
    out = []
    for position in range(max((len(g) for g in groups), default=0)):
        out.extend(g[position] for g in groups if position < len(g))
    return out


def select_examples(dataset, class_names, max_images: int, classes=None):
    """Pick (image, finding) pairs to explain.

    With boxes: boxed (image, finding) pairs, alternating between findings in class order.
    Without: each image x each of ``classes`` if given, else each image's first positive
    finding (images without any are used last, explained for their top predicted class,
    marked by ``class_index = -1``).

    Returns:
        (examples DataFrame: path, image, label, class_index; boxes DataFrame of the chosen
        pairs with ``map_index`` = row of examples, in on-disk pixels, or None).
    """
    names = list(class_names)
    wanted = list(classes) if classes else names
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise ConfigError(f"--classes {unknown} not among the model's classes {names}")
    boxes = dataset.boxes
    if boxes is not None and len(boxes):
        boxes = boxes[boxes["label"].isin(wanted) & boxes["path"].isin(set(dataset.paths))]
    if boxes is not None and len(boxes):
        pairs = boxes[["path", "label"]].drop_duplicates()
        by_label = [list(pairs[pairs["label"] == label].itertuples(index=False))
                    for label in names if label in set(pairs["label"])]
        chosen = _round_robin(by_label)[:max_images]
        examples = pd.DataFrame({"path": [p.path for p in chosen],
                                 "label": [p.label for p in chosen]})
        examples["class_index"] = [names.index(label) for label in examples["label"]]
        keys = dict(zip(zip(examples["path"], examples["label"]), examples.index))
        chosen_boxes = boxes[[k in keys for k in zip(boxes["path"], boxes["label"])]].copy()
        chosen_boxes["map_index"] = [keys[k] for k in zip(chosen_boxes["path"],
                                                            chosen_boxes["label"])]
        chosen_boxes = chosen_boxes.sort_values("map_index", kind="stable").reset_index(drop=True)
    else:
        rows = []
        if classes:
            rows = [(p, c, names.index(c)) for p in dataset.paths for c in wanted]
        else:
            known = dataset.labels * dataset.mask
            positive = [(p, names[int(np.flatnonzero(y)[0])], int(np.flatnonzero(y)[0]))
                        for p, y in zip(dataset.paths, known) if y.any()]
            negative = [(p, "", -1) for p, y in zip(dataset.paths, known) if not y.any()]
            rows = positive + negative
        examples = pd.DataFrame(rows[:max_images], columns=["path", "label", "class_index"])
        chosen_boxes = None
    examples["image"] = [Path(p).name for p in examples["path"]]
    return examples[["path", "image", "label", "class_index"]], chosen_boxes


def check_normalization(normalization: str, mean_std=None) -> None:
    """ConfigError unless ``normalization`` (and for ``mean_std`` its values) can be applied."""
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {normalization!r}; choose one of "
                          f"{NORMALIZATIONS}")
    if normalization != "mean_std":
        return
    if mean_std is None:
        raise ConfigError(
            "normalization='mean_std' needs mean_std=(mean, std), the pixel mean and std the "
            "model was trained with (a run's config.yaml 'mean_std', or "
            "chestkd.data.pipeline.estimate_mean_std on its training split)")
    try:
        values = np.asarray(mean_std, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        values = np.array([])
    if values.size != 2 or not np.all(np.isfinite(values)) or values[1] <= 0:
        raise ConfigError(f"mean_std must be two numbers (mean, std) with std > 0, "
                          f"got {mean_std!r}")


def read_inputs(dataset, paths, image_size: int, normalization: str = "minus_one_one",
                mean_std=None, batch_size: int = 32) -> np.ndarray:
    """The model inputs ``(N, S, S, 3)`` of ``paths`` (images of ``dataset``, repeats allowed).

    Read by the evaluation pipeline itself (:func:`chestkd.data.pipeline.make_dataset`,
    no shuffle, no flip), so decoding, resizing and normalisation are exactly the model's.
    """
    check_normalization(normalization, mean_std)
    first_row = {}
    for row, path in enumerate(dataset.paths):
        first_row.setdefault(path, row)
    rows = [first_row[str(path)] for path in paths]
    batches = make_dataset(dataset.select(rows), image_size=int(image_size),
                           batch_size=int(batch_size), training=False,
                           normalization=normalization, mean_std=mean_std)
    return np.concatenate([np.asarray(x) for x, _ in batches])


def compute_maps(model, images, classes, methods, options: dict, *, batch_size: int = 32,
                 verbose: int = 1):
    """``(maps, skipped)``: method -> (N, H, W) maps in [0, 1], and method -> why it failed.

    One ``keras.utils.Progbar`` counts (method, image) maps; ``verbose=0`` keeps it quiet.
    """
    maps, skipped = {}, {}
    n = len(images)
    bar = keras.utils.Progbar(len(methods) * n, verbose=verbose, unit_name="map")
    shown = [0]

    def advance(count):
        # Progbar prints its final line on every update at the target: advance only.
        if count > shown[0]:
            shown[0] = count
            bar.update(count)

    for position, name in enumerate(methods):
        def progress(done, offset=position * n):
            advance(offset + done)
        try:
            method = saliency_method(model, name, batch_size=batch_size, **options.get(name, {}))
            maps[name] = method(images, classes, progress=progress)
        except Exception as error:  # noqa: BLE001  a figure must not end a finished run
            # e.g. ConfigError for CAM on a model without a pooled head: listed, not raised.
            skipped[name] = (str(error) if isinstance(error, ChestKDError)
                             else f"{type(error).__name__}: {error}")
        advance((position + 1) * n)
    return maps, skipped


def predict_probabilities(model, images: np.ndarray, multi_label: bool) -> np.ndarray:
    """Class probabilities: sigmoid (multi-label) or softmax of the model's logits."""
    graph = logits_graph(model)
    logits = np.asarray(graph.model(graph.output).predict([images], verbose=0), np.float64)
    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (np.floating,)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_saliency_report(model, dataset, out_dir, *, image_size, class_names=None,
                          methods=DEFAULT_METHODS, max_images: int = 6, classes=None,
                          method_options: dict | None = None, batch_size: int = 32,
                          normalization: str = "minus_one_one", mean_std=None,
                          multi_label: bool | None = None, map_threshold: float = 0.5,
                          verbose: int = 1) -> dict:
    """Write saliency figures (and localisation scores when boxes exist) into ``out_dir``.

    Args:
        model: the trained keras.Model (logits or probabilities).
        dataset: a chestkd Dataset (normally the test split); its ``boxes`` are used if any.
        out_dir: output folder (created).
        image_size: model input size S; images and boxes are scaled to S x S.
        class_names: label names of the model outputs (default: the dataset's).
        methods: saliency methods to compute (see :data:`chestkd.saliency.METHODS`).
        max_images: number of (image, finding) pairs shown and scored.
        classes: restrict to these findings (names).
        method_options: per-method options overriding :data:`DEFAULT_OPTIONS`.
        batch_size: gradient batch size.
        normalization: the training normalisation, one of
            :data:`chestkd.data.pipeline.NORMALIZATIONS` (chestkd default ``minus_one_one``).
        mean_std: ``(mean, std)`` of the ``mean_std`` normalisation (required with it).
        multi_label: sigmoid (True) or softmax (False) probabilities in the titles
            (default: the dataset's ``multi_label``).
        map_threshold: region threshold for IoU / IoBB (fraction of the map maximum).
        verbose: 1 shows a progress bar over methods x images, 0 is quiet (Keras' meaning).

    Returns:
        JSON-ready dict: ``figures`` (name -> path), ``localisation`` (paths), ``scores``
        (summary rows), ``examples`` (image, finding, probability), ``skipped_methods``.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown saliency method(s) {unknown}; choose from {list(METHODS)}")
    check_normalization(normalization, mean_std)   # before any image is read
    class_names = list(class_names or dataset.class_names)
    multi_label = dataset.multi_label if multi_label is None else bool(multi_label)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    examples, boxes = select_examples(dataset, class_names, int(max_images), classes)
    result = {"figures": {}, "localisation": {}, "scores": [], "examples": [],
              "skipped_methods": {}}
    if not len(examples):
        return result
    images = read_inputs(dataset, examples["path"], image_size, normalization, mean_std,
                         batch_size)
    probabilities = predict_probabilities(model, images, multi_label)
    top = probabilities.argmax(axis=1)
    examples["class_index"] = np.where(examples["class_index"] < 0, top, examples["class_index"])
    examples["label"] = [class_names[c] for c in examples["class_index"]]
    examples["probability"] = probabilities[np.arange(len(examples)), examples["class_index"]]
    classes_per_image = examples["class_index"].to_numpy()

    options = copy.deepcopy(DEFAULT_OPTIONS)
    # Score-CAM weighs maps by a class probability: the same kind as the titles'.
    options["scorecam"] = {"probability": "sigmoid" if multi_label else "softmax"}
    for name, extra in (method_options or {}).items():
        options.setdefault(name, {}).update(extra)
    maps, result["skipped_methods"] = compute_maps(
        model, images, classes_per_image, methods, options, batch_size=batch_size,
        verbose=verbose)

    titles = [f"{row.label}, p = {row.probability:.2f}\n{row.image}"
              for row in examples.itertuples()]
    scaled = None
    per_image_boxes = None
    if boxes is not None and len(boxes):
        scaled = scale_boxes(boxes, image_size)
        per_image_boxes = [[tuple(b) for b in scaled.loc[scaled["map_index"] == i,
                                                          ["x", "y", "w", "h"]].to_numpy()]
                           for i in range(len(examples))]
    fig4 = [m for m in methods if m in maps and m not in MAP_METHODS] or list(maps)
    if fig4:
        result["figures"]["fig4"] = plot_saliency_grid(
            images, {m: maps[m] for m in fig4}, out_dir / "fig4_saliency.png",
            row_titles=titles, title="Saliency of the predicted findings")
    fig5 = [m for m in FIG5_METHODS if m in maps] or list(maps)
    if scaled is not None and fig5:
        result["figures"]["fig5"] = plot_saliency_grid(
            images, {m: maps[m] for m in fig5}, out_dir / "fig5_cam_vs_smoothgrad_ig.png",
            row_titles=titles, boxes=per_image_boxes, title="Saliency vs. ground-truth boxes")

    if scaled is not None:
        per_box = pd.concat(
            [localisation_scores(m, scaled, method=name, map_threshold=map_threshold)
             for name, m in {**maps, "centre": centre_baseline_maps(len(images),
                                                                    images.shape[1:3])}.items()],
            ignore_index=True)
        summary, paths = write_localisation_tables(per_box, out_dir, map_threshold=map_threshold)
        result["localisation"] = paths
        result["scores"] = [{k: _json_safe(v) for k, v in row.items()}
                            for row in summary.to_dict("records")]
    result["examples"] = [{"image": row.path, "finding": row.label,
                           "probability": float(row.probability)}
                          for row in examples.itertuples()]
    return result
