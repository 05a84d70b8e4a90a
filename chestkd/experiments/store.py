"""The model store: every trained model of the base-training kind, kept once and reused.

Base-training cells, KD teachers, the base model of self-training and defective teachers all
come from here, so no model of a table is trained twice. An entry is a folder
``teachers_dir/<model>-e<epochs>-<digest>`` keyed by everything that shapes a base-trained
model (the model name and every base-training option except bookkeeping: dataset and its
options, label noise, image size, normalisation, optimiser, weight decay and its mode,
schedule, epochs, seed, ...). It is a complete base-training run (config.yaml, history.csv,
model.keras, metrics.json, stages.json).

Defective KD's teacher is the entry's checkpoint at a fraction of its schedule
(``snapshots/epoch-NNNN.keras``, the weights at the end of that epoch of the full schedule,
learning-rate schedule included). Every entry keeps the snapshot at ``defective_fraction``
(0.25 by default: 50 of 200 epochs); a defective teacher asked before the full teacher is
trained up to that epoch in a copy of its own (``<entry>-until<epoch>``, the same schedule),
so the full teacher is always trained straight through and does not depend on which run came
first.
"""
from __future__ import annotations

import json
from pathlib import Path

from chestkd.data.dataset import Dataset
from chestkd.errors import ConfigError
from chestkd.evaluation import evaluate_model
from chestkd.io import atomic_copy
from chestkd.training.config import BASE_DEFAULTS, config_id, save_config
from chestkd.training.classifier import train_classifier
from chestkd.training.options import RunOptions, as_options
from chestkd.training.trainer import resolve_jit_compile
from chestkd.training.run import Stages, load_model

# The options of a base-trained model; KD options (teacher, alpha, ...) never shape one.
MODEL_KEYS = frozenset(BASE_DEFAULTS) - {"recipe", "resume", "seeds", "model"}
DEFAULT_SNAPSHOT_FRACTION = 0.25


def store_root(options: RunOptions) -> Path:
    config = as_options(options).config
    return Path(config.get("teachers_dir") or Path(config["out"]) / "teachers")


def model_config(options: RunOptions, name: str, epochs: int) -> dict:
    """The base-training configuration of model ``name`` inside the run's configuration."""
    shaping = {k: v for k, v in as_options(options).config.items() if k in MODEL_KEYS}
    return {**shaping, "recipe": "base_training", "model": name, "epochs": int(epochs),
            "role": "store"}


def model_key(options: RunOptions, name: str, epochs: int) -> str:
    entry = model_config(options, name, epochs)
    # The entry is keyed after the data chose its profile, so the values say it all (and the
    # papers profile's place in a run's config_id would only move the store's keys).
    entry.pop("profile", None)
    return f"{Path(str(name)).stem}-e{int(epochs)}-{config_id(entry)[:10]}"


def snapshot_epoch(epochs: int, fraction: float) -> int:
    if not 0.0 < float(fraction) <= 1.0:
        raise ConfigError(f"--defective-fraction {fraction!r}: a fraction in (0, 1]")
    return max(1, round(int(epochs) * float(fraction)))


def snapshot_path(folder, epoch: int) -> Path:
    return Path(folder) / "snapshots" / f"epoch-{int(epoch):04d}.keras"


def obtain_model(options: RunOptions, data: Dataset, name: str, *, epochs: int | None = None,
                 snapshot: int | None = None, later_stages=()):
    """A trained model ``name``: a ``.keras`` file as given, or the store's entry.

    Args:
        options: the run's :class:`~chestkd.training.options.RunOptions` (or its dict).
        epochs: the full schedule (default the run's ``epochs``).
        snapshot: an epoch of that schedule: return the checkpoint at that epoch instead of
            the best model (defective KD).
        later_stages: the fits after this one, for the time estimate after its first epoch
            (:func:`chestkd.training.trainer.fit`)

    Returns:
        (model, source): source is the ``.keras`` file, or the entry folder.
    """
    options = as_options(options)
    if str(name).endswith(".keras"):
        return load_model(name, image_size=options.image.image_size,
                          classes=data.num_classes), Path(name)
    epochs = int(epochs or options.training.epochs)
    entry = model_config(options, name, epochs)
    folder = store_root(options) / model_key(options, name, epochs)
    # the entry's own options: the run's, with the entry's model and schedule
    entry_options = as_options({**options.config, **entry})
    if snapshot is not None:
        for place in (folder, folder.with_name(f"{folder.name}-until{snapshot}")):
            checkpoint = snapshot_path(place, snapshot)
            if checkpoint.exists():
                print(f"reusing the epoch-{snapshot} checkpoint of {place}")
                return load_model(checkpoint), checkpoint
        # The entry never stops part-way: continued later it would not hold the model that
        # training straight through gives (the data order starts again, `checkpoint: last`
        # would keep the stop epoch). A copy trains up to the checkpoint on its own.
        folder = folder.with_name(f"{folder.name}-until{snapshot}")
    stages = Stages(folder)
    snapshots = {snapshot_epoch(epochs, options.config.get("defective_fraction",
                                                            DEFAULT_SNAPSHOT_FRACTION))}
    if snapshot is not None:
        snapshots.add(int(snapshot))
    if not stages.done("training"):
        folder.mkdir(parents=True, exist_ok=True)  # an interrupted entry resumes here
        if not (folder / "config.yaml").exists():
            save_config({**entry, "run_dir": str(folder),
                         "config_id": config_id(entry)}, folder / "config.yaml")
        stop = snapshot if snapshot is not None else epochs
        print(f"training {name} ({'epochs 1-' + str(stop) + ' of ' if stop < epochs else ''}"
              f"{epochs} epoch(s)) in {folder}")
        train_classifier(entry_options, folder, data, name, stop_epoch=stop,
                         snapshot_epochs=sorted(e for e in snapshots if e <= stop),
                         later_stages=later_stages)
        if stop < epochs:
            return load_model(snapshot_path(folder, snapshot)), snapshot_path(folder, snapshot)
        stages.mark("training", epochs=epochs)
    if snapshot is not None:
        return load_model(snapshot_path(folder, snapshot)), snapshot_path(folder, snapshot)
    model = load_model(folder / "model.keras")
    if not stages.done("evaluation"):
        evaluate_model(model, data, entry_options, folder, model_name=name,
                       jit_compile=resolve_jit_compile(entry_options.training, model,
                                                       quiet=True))
        stages.mark("evaluation")
    else:
        print(f"reusing {name} trained in {folder}")
    return model, folder


# What a store entry's evaluation leaves; copied into the runs that use the entry so each run
# folder is complete on its own.
RESULT_FILES = ("metrics.json", "per_class_auc.csv", "per_class_auc.md", "roc_curves.png",
                "training_curves.png", "reliability.png", "test_predictions.npz",
                "history.csv", "model.keras", "model_info.json", "model_card.md",
                "classification_report.csv")


# What a store entry's training leaves (a run that scores the entry's model anew copies these).
TRAINING_FILES = ("history.csv", "training_curves.png", "model.keras")


def scored_alike(source, options: RunOptions) -> bool:
    """Whether the store entry ``source`` was scored as this run scores: with its number of
    bootstrap resamples (the entry's key leaves the bootstrap out, so runs asking for other
    intervals share its model, never its intervals)."""
    metrics = json.loads((Path(source) / "metrics.json").read_text())
    resamples = int((metrics.get("bootstrap") or {}).get("resamples", 0))
    return resamples == int(as_options(options).evaluation.bootstrap)


def copy_results(source, run_dir, *, prefix: str = "", names=RESULT_FILES) -> dict:
    """Copy a store entry's results (``names``) into ``run_dir`` (``prefix``-ed); returns its
    metrics. Nothing already in ``run_dir`` is overwritten."""
    source, run_dir = Path(source), Path(run_dir)
    for name in names:
        target = run_dir / f"{prefix}{name}"
        if (source / name).exists() and not target.exists():
            atomic_copy(source / name, target)
    return json.loads((source / "metrics.json").read_text())
