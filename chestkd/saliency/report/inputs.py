"""Inputs of the saliency report: which (image, finding) pairs, read as the model saw them.

* :func:`select_examples` — boxed pairs first, one finding after another;
* :func:`read_inputs` — the images through the training input pipeline (same normalisation);
* :func:`predict_probabilities` — the class probabilities shown in the titles.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.data.pipeline import NORMALIZATIONS, make_dataset
from chestkd.errors import ConfigError
from chestkd.saliency.methods.graph import logits_graph
from chestkd.scores import probabilities_from_logits


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


def predict_probabilities(model, images: np.ndarray, multi_label: bool) -> np.ndarray:
    """Class probabilities: sigmoid (multi-label) or softmax of the model's logits."""
    graph = logits_graph(model)
    logits = graph.model(graph.output).predict([images], verbose=0)
    return probabilities_from_logits(logits, multi_label)
