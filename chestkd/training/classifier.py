"""The steps every recipe shares: load the run's data, build, compile and train a classifier.

Recipes compose these; each step is a plain function so a notebook can call them one by one.
"""
from __future__ import annotations

from pathlib import Path

import keras

from chestkd import models
from chestkd.data import load_dataset
from chestkd.data.dataset import Dataset
from chestkd.data.cache import upsampling_of
from chestkd.data.describe import run_summary
from chestkd.data.images import describe_upsampling
from chestkd.data.presence import ABSENT_REASON, require_on_disk
from chestkd.data.pipeline import estimate_mean_std, make_dataset, steps_per_epoch
from chestkd.training.config import (PHANTOM_DATASETS, apply_small_data_profile,
                                     dataset_options, resolve_augment, save_config)
from chestkd.training.losses import MaskedAUC, hard_loss_for
from chestkd.training.run import best_model, load_model, seed_everything, write_json
from chestkd.training.trainer import distribution_strategy, fit, make_optimizer


def load_run_data(config: dict, run_dir) -> Dataset:
    """Load the configured dataset; report skipped images into the run directory.

    With ``cache_dir`` the run reads the prepared cache only: no original image is opened
    (``prepare`` verified them all when it decoded them, and on Colab a check would read
    112,120 PNGs from Drive before every run). Instead every image must be in the cache, and
    the images ``prepare`` skipped are an error or, with ``skip_bad_images``, skipped here.
    """
    options = dataset_options(config)
    cache_dir = config.get("cache_dir")
    if cache_dir:
        from chestkd.data.cache import CACHE_AWARE_LOADERS, PreparedCache
        cache = PreparedCache(cache_dir)
        skip_bad = bool(options.pop("skip_bad_images", False))
        if config["dataset"] in CACHE_AWARE_LOADERS:
            options["cache_dir"] = cache_dir
        data = cache.screen(load_dataset(config["dataset"], config.get("data_dir"), **options),
                            skip_bad_images=skip_bad)
    else:
        if config["dataset"] not in PHANTOM_DATASETS or config.get("data_dir"):
            options["check_images"] = bool(config.get("check_images", True))
        data = load_dataset(config["dataset"], config.get("data_dir"), **options)
        require_on_disk(data)     # absent images: counted, even with check_images: false
    if config["dataset"] not in PHANTOM_DATASETS:
        print(run_summary(data))
    for split in ("train", "val", "test"):
        data.subset(split)  # an empty split is an error naming it, before any training
    data.check_patient_leakage()
    if apply_small_data_profile(config, int((data.split == "train").sum())):
        save_config(config, Path(run_dir) / "config.yaml")  # the run records what it uses
    if config["dataset"] not in PHANTOM_DATASETS or config.get("data_dir"):
        record_upsampling(data, int(config["image_size"]), config.get("cache_dir"), run_dir)
    if len(data.skipped):
        data.skipped.to_csv(Path(run_dir) / "skipped.csv", index=False)
        absent = int((data.skipped["reason"] == ABSENT_REASON).sum())
        counts = [f"{n:,} {what}" for n, what in ((absent, "absent from disk"),
                                                  (len(data.skipped) - absent, "unreadable"))
                  if n]
        print(f"skipped images: {' and '.join(counts)}; listed in "
              f"{Path(run_dir) / 'skipped.csv'}")
    if config["normalization"] == "mean_std" and not config.get("mean_std"):
        image_options(data, config)  # estimated once, on the training split ...
        save_config(config, Path(run_dir) / "config.yaml")  # ... and recorded with the run
    return data


def record_upsampling(data: Dataset, image_size: int, cache_dir, run_dir) -> None:
    """Say how many images the run enlarges to ``image_size`` (64 px NIH exports at 128 px:
    all of them, by 2), keep it on ``data`` for the model card and in ``upsampling.json``."""
    data.upsampling = upsampling_of(data, image_size, cache_dir)
    if data.upsampling is not None:
        print(describe_upsampling(data.upsampling))
        write_json(data.upsampling, Path(run_dir) / "upsampling.json")


def image_options(data: Dataset, config: dict) -> dict:
    """The pipeline's image options of a run; a ``mean_std`` normalisation is estimated on
    the training split once and recorded in the configuration."""
    if config["normalization"] == "mean_std" and not config.get("mean_std"):
        config["mean_std"] = list(estimate_mean_std(data, image_size=int(config["image_size"]),
                                                    seed=int(config["seed"]),
                                                    cache_dir=config.get("cache_dir")))
    return dict(image_size=int(config["image_size"]), normalization=config["normalization"],
                mean_std=config.get("mean_std"), cache_dir=config.get("cache_dir"))


def pipelines(data: Dataset, config: dict, teacher_logits=None, val_teacher_logits=None):
    """Training (shuffled, augmented by ``config["augment"]``, resolved and recorded by
    :func:`~chestkd.training.config.resolve_augment`) and validation datasets for a run (with
    cached teacher tables for distillation)."""
    common = dict(batch_size=int(config["batch_size"]), **image_options(data, config))
    train = make_dataset(data, "train", training=True, seed=int(config["seed"]),
                         teacher_logits=teacher_logits, augment=resolve_augment(config),
                         **common)
    val = make_dataset(data, "val", training=False, teacher_logits=val_teacher_logits, **common)
    return train, val


def set_precision(config: dict) -> None:
    keras.mixed_precision.set_global_policy(
        "mixed_float16" if config.get("mixed_precision") else "float32")


def build_model(name: str, data: Dataset, config: dict, weights=None):
    """A chestkd model, or a saved ``.keras`` model when ``name`` is a file."""
    if str(name).endswith(".keras"):
        return load_model(name)
    size = int(config["image_size"])
    return models.build(name, data.num_classes, (size, size, 3),
                        weights=config.get("weights") if weights is None else weights)


def compile_classifier(model, data: Dataset, config: dict):
    """Compile ``model`` for base training: the run's optimizer, the hard-label loss, the
    approximate ``auc`` metric, and XLA as :func:`~chestkd.training.trainer.resolve_jit_compile`
    decides (``config["jit_compile"]``)."""
    from chestkd.training.trainer import resolve_jit_compile

    steps = steps_per_epoch(data, "train", int(config["batch_size"]))
    model.compile(optimizer=make_optimizer(config, steps), loss=hard_loss_for(data.multi_label),
                  metrics=[MaskedAUC(num_labels=data.num_classes,
                                     softmax=not data.multi_label, name="auc")],
                  jit_compile=resolve_jit_compile(config, model))
    # Keras still turns XLA off for a model with a layer that does not support it (with a
    # warning): record what will actually run.
    config["_jit_compile_resolved"] = bool(model.jit_compile)
    return model


def train_classifier(config: dict, run_dir, data: Dataset, model_name: str, *,
                     stop_epoch=None, **fit_options):
    """Base training of ``model_name`` on the schedule of ``config["epochs"]`` (stopping after
    ``stop_epoch`` when given); returns the best model (by validation mean AUC).
    ``fit_options`` go to :func:`chestkd.training.trainer.fit`."""
    set_precision(config)
    seed_everything(int(config["seed"]))  # the same initial weights whatever ran before
    with distribution_strategy(config).scope():
        model = compile_classifier(build_model(model_name, data, config), data, config)
    train, val = pipelines(data, config)
    fit(model, train, val, config, run_dir, epochs=stop_epoch, multi_label=data.multi_label,
        **fit_options)
    return best_model(run_dir, model)
