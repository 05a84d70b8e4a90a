"""RoS-KD experiments (Jaiswal et al. 2022): teachers on overlapping subsets, their cached
logits, and one distillation per setting (Baselines II-V and RoS-KD itself).

* Teachers come from the model store (:func:`chestkd.experiments.store.obtain_model`). A
  teacher trained on a subset lives under
  ``<store>/ros_kd<schedule>/k<k>-p<p>-core-s<seed>-<i>/`` (``-core`` left out for ``circle``)
  so its entry is keyed by its subset too (the store's own key holds every base-training
  option; the folder adds the subset and the step epochs); full-data teachers (``p = 1``,
  Baseline II's teacher, Baseline I's student, III's teachers with
  ``baseline_iii_teachers: full``) share ``<store>/ros_kd<schedule>/full/``.
* The K teachers' logits of both views of every training (and validation) image are cached
  once per teacher set as one (images x 2 x K x C) table
  (:func:`chestkd.training.teacher_cache.load_or_compute`): a step with five teachers then costs
  what base training costs.
* :func:`distil_setting` trains one student with the Distiller's ``teacher_sampling``
  (``fixed``: equal weights 1/K; ``random``: exponential weights per step, normalised
  (Dirichlet(1)) or as drawn (``weight_draw``); ``random_per_example``; ``confidence``:
  Baseline IV) and, for RoS-KD, weight averaging
  (:class:`chestkd.training.callbacks.WeightAveraging`).
* :func:`setting_model_path`: where a finished setting's model is, the one way every study
  finds it.

The soft term follows the paper's Eq. 4, ``sum_k w_k KL(q_k, p)`` (the Distiller's
``teacher_combine="losses"``; ``teacher_combine: logits`` instead takes one divergence to the
weighted mean of the logits), for Baseline III too (fixed weights 1/K, the mean of the
normalised draw); II has one teacher, where the two forms agree.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np

from chestkd.data.dataset import Dataset
from chestkd.data.pipeline import make_dataset
from chestkd.data.splits import teacher_training_sets
from chestkd.cli import list_option
from chestkd.errors import ChestKDError
from chestkd.experiments.kd import distil
from chestkd.experiments.store import obtain_model, store_root
from chestkd.training.callbacks import WeightAveraging
from chestkd.training.classifier import image_options
from chestkd.training.options import RunOptions, as_options
from chestkd.training.run import Stages, best_model
from chestkd.training.teacher_cache import load_or_compute


def schedule_tag(options: RunOptions) -> str:
    training = as_options(options).training
    if training.schedule == "step" and training.step_epochs:
        return "-steps" + "-".join(str(int(s)) for s in training.step_epochs)
    return ""


def ros_store(options: RunOptions, subset: str) -> Path:
    """The store folder of RoS-KD's teachers on ``subset`` (``full`` or ``k5-p0.4-s0-2``)."""
    return store_root(options) / f"ros_kd{schedule_tag(options)}" / subset


def subset_tag(k: int, overlap: float, seed: int, index: int, mode: str = "core") -> str:
    """``full``, or the subset's store folder: ``k5-p0.4-core-s0-2`` (shared core) or
    ``k5-p0.4-s0-2`` (circle, the name from before the shared core existed)."""
    if float(overlap) >= 1.0:
        return "full"
    reading = "" if mode == "circle" else f"-{mode}"
    return f"k{k}-p{float(overlap):g}{reading}-s{seed}-{index}"


def trained_on_subset(teachers_dir) -> bool:
    """Whether a store entry whose ``teachers_dir`` is this folder was trained on one
    overlapping subset of the training split (a :func:`subset_tag` folder), not on all of it."""
    if not teachers_dir:
        return False
    return re.fullmatch(r"k\d+-p[0-9.e+-]+?(-[a-z]+)?-s\d+-\d+",
                        Path(str(teachers_dir)).name) is not None


def teacher_names(teachers, k: int) -> list[str]:
    """``k`` teacher architectures: ``--teachers`` (its value) in order, repeated if shorter
    than k."""
    names = list_option(teachers, "--teachers")
    return [names[i % len(names)] for i in range(int(k))]


def obtain_teachers(options: RunOptions, data: Dataset, names, *, overlap: float,
                    seed: int, overlap_mode: str) -> list:
    """Teacher ``i`` (``names[i]``) trained on overlapping patient subset ``i`` of the
    training split (``overlap_mode``; all on the full split when ``overlap = 1``);
    ``.keras`` files as given. Returns ``[(model, source)]``."""
    options = as_options(options)
    k = len(names)
    subsets = None if float(overlap) >= 1.0 else teacher_training_sets(data, k, overlap, seed,
                                                                        overlap_mode)
    epochs = int(options.kd.teacher_epochs or options.training.epochs)
    teachers = []
    for index, name in enumerate(names):
        store = ros_store(options, subset_tag(k, overlap, seed, index, overlap_mode))
        part = data if subsets is None else subsets[index]
        teachers.append(obtain_model(options.replace(teachers_dir=str(store)), part, name,
                                     epochs=epochs))
    return teachers


def logit_tables(options: RunOptions, data: Dataset, teachers, folder) -> dict:
    """{"train", "val"}: the teachers' cached (N, 2, K, C) logits (computed once, kept)."""
    options = as_options(options)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    models = [model for model, _ in teachers]
    return {split: load_or_compute(folder / f"teacher_logits_{split}.npy", models, data, split,
                                   batch_size=options.training.batch_size,
                                   **image_options(data, options))
            for split in ("train", "val")}


def distil_setting(options: RunOptions, folder, data: Dataset, tables: dict, student_name: str,
                   *, sampling: str = "random", combine: str = "losses",
                   weight_draw: str = "normalised", confidence_temperature: float = 0.1,
                   averaging_start: int | None = None, bn_batches: int | None = None,
                   seed: int = 0, extra_callbacks=()):
    """Train ``student_name`` on the cached teachers of ``tables`` with the one distillation
    loop (:func:`chestkd.experiments.kd.distil`); returns the model selected (the weight
    average from epoch ``averaging_start`` on, when given). A finished folder returns its
    model. ``sampling``, ``combine``, ``weight_draw`` and ``confidence_temperature`` go to the
    Distiller; ``bn_batches`` to the average's BatchNorm re-estimation; ``extra_callbacks`` to
    :func:`chestkd.training.trainer.fit`."""
    options, folder = as_options(options), Path(folder)
    if Stages(folder).done("training"):
        return best_model(folder, None)
    callback = None
    if averaging_start is not None:
        # BatchNorm statistics of the average: the first `bn_batches` batches of a shuffled
        # (own seed: the training pipeline's order is untouched), unflipped training pass.
        bn_images = make_dataset(data, "train", batch_size=options.training.batch_size,
                                 training=False, shuffle=True, flip=False, seed=seed + 1,
                                 **image_options(data, options))
        callback = WeightAveraging(int(averaging_start), bn_data=bn_images,
                                   bn_batches=bn_batches,
                                   state_path=folder / "weight_average.npz",
                                   raw_path=folder / "raw_model.keras")
    mixing = {"teacher_sampling": sampling, "teacher_combine": combine,
              "weight_draw": weight_draw,
              "confidence_temperature": float(confidence_temperature)}
    # The KD formulation is the run's, by the one rule (experiments.kd.resolve_kd_loss): with
    # no --kd-loss, sigmoid for independent findings, Hinton's softmax for exclusive classes.
    return distil(options, folder, data, None, student_name, seed=seed, teacher_tables=tables,
                  teacher_mixing=mixing, weight_averaging=callback,
                  extra_callbacks=extra_callbacks,
                  record={"sampling": sampling, "combine": combine,
                          "averaging": averaging_start is not None})


def choices_note(ros) -> str:
    """One sentence for a table's caption: the readings of the paper this run made (``ros``:
    the run's :class:`~chestkd.experiments.ros_settings.RosOptions`)."""
    combine = ("Eq. 4 with fixed weights 1/K" if ros.baseline_iii_combine == "losses"
               else "one KL to the mean of the teachers' logits")
    teachers = ("RoS-KD's own teachers (overlapping subsets; the paper's Table II caption)"
                if ros.baseline_iii_teachers == "subsets"
                else "the K architectures trained on the full split")
    draw = {"normalised": "exponential draws normalised to sum 1 (Dirichlet(1))",
            "exponential": "Exp(1) draws as drawn (Eq. 4 literally)"}[ros.weight_draw]
    mode = {"core": "a core shared by all subsets", "circle": "neighbours on a circle"}[
        ros.overlap_mode]
    return (f"Baseline III: {combine}, on {teachers}. Random teacher weights: {draw}. "
            f"Overlapping subsets: {mode}.")


def setting_model_path(folder) -> Path:
    """The model of a finished setting: its own ``model.keras``, else the file its
    ``setting.json`` names (``model``; Baseline I's student lives in the model store). Every
    study (robustness, landscape) finds a setting's model here."""
    folder = Path(folder)
    if (folder / "model.keras").is_file():
        return folder / "model.keras"
    info = folder / "setting.json"
    source = json.loads(info.read_text()).get("model") if info.is_file() else None
    if source and Path(source).is_file():
        return Path(source)
    raise ChestKDError(f"{folder}: no model.keras, and no setting.json naming an existing "
                       f"model file (found {source!r})")


def macro_scores(folder, prefix: str = "") -> dict:
    """Macro precision, recall and F1 of a finished evaluation
    (``classification_report.csv``: thresholds chosen on the validation split)."""
    import pandas as pd
    report = pd.read_csv(Path(folder) / f"{prefix}classification_report.csv")
    macro = report.set_index("class").loc["macro avg"]
    return {key: float(macro[key]) for key in ("precision", "recall", "f1")}


def per_class_frame(results: list[dict], class_names) -> dict:
    """{class: (mean, sample std)} of per-class AUCs over runs (Table III)."""
    values = np.array([[r["per_class_auc"].get(c, np.nan) for c in class_names]
                       for r in results], dtype=np.float64)
    values = np.where(np.equal(values, None), np.nan, values).astype(np.float64)
    with warnings.catch_warnings():   # a class undefined in every run stays NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else \
            np.zeros(values.shape[1])
    return {c: (float(m), float(s)) for c, m, s in zip(class_names, mean, std)}
