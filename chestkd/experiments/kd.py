"""Distillation experiments: obtain a teacher, distil it into a student, evaluate, record.

Every strategy of Ho & Gwak (2020) is this one sequence; they differ in which teacher and
which student, never in the training loop (the one :class:`chestkd.distill.Distiller`):

* ``standard``: a deeper teacher teaches a smaller student;
* ``reversed``: the roles swap, the smaller model teaches the deeper one;
* ``defective``: the teacher is the checkpoint at ``defective_fraction`` of its full schedule
  (the paper's "first 50 epochs" of 200), not a full schedule squeezed into fewer epochs;
* self-training (``chestkd.recipes.self_training``): a model teaches a fresh copy of itself.

Teachers come from the model store (:mod:`chestkd.experiments.store`).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from chestkd.data.dataset import Dataset
from chestkd.data.pipeline import make_dataset, steps_per_epoch
from chestkd.distill.distiller import Distiller
from chestkd.distill.kd_loss import SOFTMAX_FORMULATIONS, KDLoss, check_formulation
from chestkd.errors import ConfigError
from chestkd.evaluation import evaluate_model, print_results
from chestkd.evaluation.metrics import predict_logits
from chestkd.experiments.store import (TRAINING_FILES, copy_results, obtain_model,
                                      scored_alike, snapshot_epoch)
from chestkd.scores import probabilities_from_logits
from chestkd.training.classifier import (build_model, image_options, pipelines,
                                         prepare_run_data, set_precision)
from chestkd.training.options import RunOptions, as_options, run_options
from chestkd.training.run import (RESULTS_STAGE, Stages, best_model, open_run, run_finished,
                                  seed_everything, write_json)
from chestkd.training.teacher_cache import load_or_compute
from chestkd.training.trainer import (distribution_strategy, fit, make_optimizer,
                                      resolve_jit_compile)

def resolve_kd_loss(options: RunOptions, data: Dataset) -> str:
    """The KD formulation for this data: ``kd_loss`` as given, or the one the labels call for.

    ``sigmoid`` treats every class as an independent finding (multi-label data); the softmax
    forms treat the classes as exclusive. With ``kd_loss`` unset the data decides; ``sigmoid``
    on exclusive classes is refused (a softmax-trained teacher's logits carry no per-class
    probability to match); a softmax form on multi-label data is the papers' setting and is
    allowed with a warning. Returns the formulation (metrics.json records it as ``kd_loss``).
    """
    chosen = as_options(options).kd.kd_loss
    if chosen is not None:
        check_formulation(chosen)
    if chosen is None:
        chosen = "sigmoid" if data.multi_label else "hinton"
    elif chosen == "sigmoid" and not data.multi_label:
        raise ConfigError(
            f"--kd-loss sigmoid: {data.name} has mutually exclusive classes "
            f"({', '.join(data.class_names)}), trained with a softmax; sigmoid KD would apply "
            "sigma to a softmax teacher's logits. Use --kd-loss hinton (or leave it unset)")
    elif chosen in SOFTMAX_FORMULATIONS and data.multi_label:
        warnings.warn(f"--kd-loss {chosen}: a softmax across the {data.num_classes} "
                      f"non-exclusive findings of {data.name} makes them compete for one unit "
                      "of probability; --kd-loss sigmoid is the multi-label form", stacklevel=2)
    return chosen


def distil(options: RunOptions, run_dir, data: Dataset, teacher, student_name: str | None, *,
           seed: int | None = None, init_from=None, build_student=None, terms_for=None,
           teacher_tables: dict | None = None, kd_loss: str | None = None,
           teacher_mixing: dict | None = None, weight_averaging=None, extra_callbacks=(),
           record: dict | None = None):
    """The distillation loop of every strategy: train ``student_name`` from ``teacher`` (one
    model or a list); returns the best student by validation mean AUC (the average with
    ``weight_averaging``). A run whose training stage finished returns its model.

    Args:
        options: the run's :class:`~chestkd.training.options.RunOptions` (or its dict).
        seed: the student's initialisation and data order (default the run's seed).
        init_from: a model whose weights start the student (self-training ``teacher`` init).
        build_student: builds the student instead of the zoo's ``student_name`` (e.g. an
            ensemble student).
        terms_for: ``terms_for(student)`` -> the :class:`FeatureTerm` list of feature
            distillation; feature maps are never cached, so the teachers then run online
            whatever ``teacher_outputs`` says.
        teacher_tables: ``{"train": table, "val": table}`` of cached teacher logits computed
            elsewhere (RoS-KD's K-teacher tables); ``teacher`` is then not used.
        kd_loss: the :class:`KDLoss` formulation (default: the run's, :func:`resolve_kd_loss`).
        teacher_mixing: the Distiller's several-teacher options (``teacher_sampling``,
            ``teacher_combine``, ``weight_draw``, ``confidence_temperature``).
        weight_averaging, extra_callbacks: to :func:`chestkd.training.trainer.fit`.
        record: more facts for the finished stage's record in ``stages.json``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stages = Stages(run_dir)
    if stages.done("training"):
        print(f"training finished earlier in {run_dir}: using its model.keras")
        return best_model(run_dir, None)
    options = as_options(options)
    training, kd = options.training, options.kd
    set_precision(training)
    seed = options.seed if seed is None else int(seed)
    loss = KDLoss(kd_loss or resolve_kd_loss(options, data), float(kd.temperature),
                  float(kd.alpha))
    online = teacher_tables is None and (terms_for is not None or kd.teacher_outputs == "online")
    tables = dict(teacher_tables or {"train": None, "val": None})
    if not online and teacher_tables is None:
        tables = cache_teacher_logits(options, run_dir, data, teacher)
    seed_everything(seed)  # the same initial student whatever ran before
    with distribution_strategy(training.distribute).scope():
        student = build_student() if build_student else build_model(student_name, data, options)
        if init_from is not None:
            student.set_weights(init_from.get_weights())
        terms = terms_for(student) if terms_for else ()
        distiller = Distiller(student, teacher if online else None, loss=loss,
                              multi_label=data.multi_label, seed=seed, feature_terms=terms,
                              **(teacher_mixing or {}))
        distiller.compile(optimizer=make_optimizer(
            training, steps_per_epoch(data, "train", training.batch_size)),
            jit_compile=resolve_jit_compile(training, student))
    train, val = pipelines(data, options, teacher_logits=tables["train"],
                           val_teacher_logits=tables["val"], seed=seed)
    fit(distiller, train, val, training, run_dir, multi_label=data.multi_label,
        weight_averaging=weight_averaging, extra_callbacks=extra_callbacks)
    stages.mark("training", epochs=training.epochs, **(record or {}),
                **({"feature_terms": [term.get_config() for term in terms]} if terms else {}))
    return best_model(run_dir, student)


def agreement(student, teacher, data: Dataset, options: RunOptions) -> float:
    """Mean |p(student) - p(teacher)| on the test split (lower: closer); p is the sigmoid
    for multi-label data, the softmax for exclusive classes."""
    options = as_options(options)
    test = make_dataset(data, "test", batch_size=options.training.batch_size,
                        **image_options(data, options))
    s, _ = predict_logits(student, test)
    t, _ = predict_logits(teacher, test)
    return float(np.mean(np.abs(probabilities_from_logits(s, data.multi_label)
                                - probabilities_from_logits(t, data.multi_label))))


def cache_teacher_logits(options: RunOptions, run_dir, data: Dataset, teacher) -> dict:
    """The teacher's logits for both flips of every training and validation image, computed
    once into ``run_dir/teacher_logits_{split}.npy`` (where :func:`distil` reads them):
    ``{"train": table, "val": table}``."""
    return {split: load_or_compute(Path(run_dir) / f"teacher_logits_{split}.npy", teacher,
                                   data, split, **image_options(data, options))
            for split in ("train", "val")}


def obtained_model_results(options: RunOptions, data: Dataset, run_dir, model, source, *,
                           prefix: str = "") -> dict:
    """The results of a model from :func:`~chestkd.experiments.store.obtain_model` inside
    this run (``{prefix}`` files): a store entry's results copied when it was scored as this
    run scores (:func:`~chestkd.experiments.store.scored_alike`), else its training files
    copied and the model scored here, as a given ``.keras`` file is (once: stage
    ``{prefix}evaluation``)."""
    if Path(source).is_dir() and scored_alike(source, options):
        return copy_results(source, run_dir, prefix=prefix)
    if Path(source).is_dir():
        copy_results(source, run_dir, prefix=prefix, names=TRAINING_FILES)
    return evaluate_once(model, data, options, run_dir, prefix=prefix,
                         stage=f"{prefix}evaluation")


def record_teacher(run_dir, teacher_source) -> None:
    """``teacher.json``: where the teacher came from and, for a store entry, its results."""
    source = Path(teacher_source)
    info = {"teacher": str(source)}
    folder = source if source.is_dir() else source.parent.parent  # snapshots/epoch-N.keras
    metrics = folder / "metrics.json"
    if source.suffix == ".keras" and source.parent.name == "snapshots":
        info["snapshot_of"] = str(folder)
    elif metrics.exists():
        info["teacher_metrics"] = json.loads(metrics.read_text())
    write_json(info, Path(run_dir) / "teacher.json")


def evaluate_once(model, data: Dataset, options: RunOptions, run_dir, *, stage="evaluation",
                  **evaluate_options) -> dict:
    """``evaluate_model`` unless this run's ``stage`` already finished (then its results);
    its predictions under XLA when the run's ``jit_compile`` allows it for ``model``."""
    stages = Stages(run_dir)
    metrics = Path(run_dir) / f"{evaluate_options.get('prefix', '')}metrics.json"
    if stages.done(stage):
        return json.loads(metrics.read_text())
    options = as_options(options)
    results = evaluate_model(model, data, options, run_dir,
                             jit_compile=resolve_jit_compile(options.training, model, quiet=True),
                             **evaluate_options)
    stages.mark(stage)
    return results


def write_final_metrics(results: dict, run_dir, recipe: str) -> None:
    """Write a KD or self-training run's final ``metrics.json`` and mark its
    :data:`~chestkd.training.run.RESULTS_STAGE`: until then the metrics.json of
    its evaluation stage (the scores alone) stands there, and the run is not finished. A
    finished run resumed keeps its stages as they were."""
    finished_before = run_finished(run_dir, recipe)
    write_json(results, Path(run_dir) / "metrics.json")
    if not finished_before:
        Stages(run_dir).mark(RESULTS_STAGE)


def kd_experiment(config: dict) -> dict:
    """Run one KD strategy end to end: teacher, distillation, test-split evaluation.

    ``config["teacher"]`` and ``config["student"]`` name the cell of the paper's Table 1; for
    ``reversed`` the roles swap: the student model is trained first and teaches the teacher
    model, which is the model evaluated.
    """
    run_dir, options = open_run(run_options(config), "kd")  # no dict goes further
    print(f"run directory: {run_dir}")
    data, options = prepare_run_data(options, run_dir)
    strategy = options.config["strategy"]
    kd_loss = resolve_kd_loss(options, data)
    teacher_name, student_name = options.config["teacher"], options.config["student"]
    if strategy == "reversed":
        teacher_name, student_name = student_name, teacher_name
    epochs = int(options.kd.teacher_epochs or options.training.epochs)
    snapshot = (snapshot_epoch(epochs, options.kd.defective_fraction)
                if strategy == "defective" and not str(teacher_name).endswith(".keras")
                else None)
    teacher, source = obtain_model(options, data, teacher_name, epochs=epochs,
                                   snapshot=snapshot)
    record_teacher(run_dir, source)
    student = distil(options, run_dir, data, teacher, student_name, kd_loss=kd_loss)
    results = evaluate_once(student, data, options, run_dir, model_name=student_name)
    results.update(strategy=f"{strategy}_kd", teacher=str(teacher_name),
                   teacher_source=str(source), kd_loss=kd_loss,
                   teacher_agreement=agreement(student, teacher, data, options))
    if snapshot is not None:
        results["teacher_epochs"] = f"{snapshot} of {epochs}"
    write_final_metrics(results, run_dir, "kd")
    print_results(results, title=f"{strategy} KD ({kd_loss}): student")
    return results
