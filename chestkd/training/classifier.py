"""The steps every recipe shares: load the run's data, build, compile and train a classifier.

Recipes compose these; each step is a plain function so a notebook can call them one by one.
"""
from __future__ import annotations

from pathlib import Path

import keras

from chestkd import models
from chestkd.data import load_dataset, loader_options
from chestkd.data.dataset import Dataset
from chestkd.data.cache import upsampling_of
from chestkd.data.describe import run_summary
from chestkd.data.images import describe_upsampling
from chestkd.data.presence import require_on_disk, skipped_kinds
from chestkd.data.pipeline import estimate_mean_std, make_dataset, steps_per_epoch
from chestkd.training.config import PHANTOM_DATASETS, apply_small_data_profile, resolve_augment
from chestkd.training.losses import MaskedAUC, hard_loss_for
from chestkd.training.options import RunOptions, as_options, as_training
from chestkd.training.optimizers import loss_scaled
from chestkd.training.run import (best_model, load_model, record_options, seed_everything,
                                  write_json)
from chestkd.training.trainer import distribution_strategy, fit, make_optimizer


def prepare_run_data(options: RunOptions, run_dir, *, record: bool = True
                     ) -> tuple[Dataset, RunOptions]:
    """Load the run's dataset, report skipped images into the run directory, and settle what
    the data decides: returns the data and the options with it (the small-real profile on
    little real data, a ``mean_std`` normalisation estimated on the training split), both
    recorded in the run's ``config.yaml`` (``record=False``: not, for options that are a
    variant of the run's, e.g. a RoS-KD study's other seed or label noise).

    With ``cache_dir`` the run reads the prepared cache only: no original image is opened
    (``prepare`` verified them all when it decoded them, and on Colab a check would read
    112,120 PNGs from Drive before every run). Instead every image must be in the cache, and
    the images ``prepare`` skipped are an error or, with ``skip_bad_images``, skipped here.
    """
    options = as_options(options)
    config = options.config
    keywords = loader_options(config["dataset"], config)
    cache_dir = config.get("cache_dir")
    phantom = config["dataset"] in PHANTOM_DATASETS and not config.get("data_dir")
    if cache_dir:
        from chestkd.data.cache import CACHE_AWARE_LOADERS, PreparedCache
        cache = PreparedCache(cache_dir)
        skip_bad = bool(keywords.pop("skip_bad_images", False))
        if config["dataset"] in CACHE_AWARE_LOADERS:
            keywords["cache_dir"] = cache_dir
        data = cache.screen(load_dataset(config["dataset"], config.get("data_dir"),
                                         **keywords), skip_bad_images=skip_bad)
    else:
        if not phantom:
            keywords["check_images"] = bool(config.get("check_images", True))
        data = load_dataset(config["dataset"], config.get("data_dir"), **keywords)
        require_on_disk(data)     # absent images: counted, even with check_images: false
    if config["dataset"] not in PHANTOM_DATASETS:
        print(run_summary(data))
    for split in ("train", "val", "test"):
        data.subset(split)  # an empty split is an error naming it, before any training
    data.check_patient_leakage()
    data.check_classes()
    profiled = options.to_config()
    if apply_small_data_profile(profiled, int((data.split == "train").sum())):
        options = as_options(profiled)
        if record:
            record_options(options, run_dir)  # the run records what it uses
    if not phantom:
        record_upsampling(data, options.image.image_size, cache_dir, run_dir)
    if len(data.skipped):
        data.skipped.to_csv(Path(run_dir) / "skipped.csv", index=False)
        counts = [f"{n:,} {kind}" for kind, n in skipped_kinds(data.skipped).items()]
        print(f"skipped images: {' and '.join(counts)}; listed in "
              f"{Path(run_dir) / 'skipped.csv'}")
    if options.image.normalization == "mean_std" and options.image.mean_std is None:
        # estimated once, on the training split, and recorded with the run
        options = options.replace(mean_std=list(_estimated_mean_std(data, options)))
        if record:
            record_options(options, run_dir)
    return data, options


def load_run_data(config: dict, run_dir) -> Dataset:
    """:func:`prepare_run_data` for code that still carries the configuration as a dict:
    what the data settled is written into ``config``."""
    data, options = prepare_run_data(as_options(config), run_dir)
    config.update(options.to_config())
    return data


def record_upsampling(data: Dataset, image_size: int, cache_dir, run_dir) -> None:
    """Say how many images the run enlarges to ``image_size`` (64 px NIH exports at 128 px:
    all of them, by 2), keep it on ``data`` for the model card and in ``upsampling.json``."""
    data.upsampling = upsampling_of(data, image_size, cache_dir)
    if data.upsampling is not None:
        print(describe_upsampling(data.upsampling))
        write_json(data.upsampling, Path(run_dir) / "upsampling.json")


def _estimated_mean_std(data: Dataset, options: RunOptions) -> tuple:
    image = options.image
    return estimate_mean_std(data, image_size=image.image_size, seed=options.seed,
                             cache_dir=image.cache_dir)


def image_options(data: Dataset, options: RunOptions) -> dict:
    """The pipeline's image options of a run (``options.image.pipeline()``); a ``mean_std``
    normalisation not settled yet (:func:`prepare_run_data` settles it) is estimated here."""
    options = as_options(options)
    if options.image.normalization == "mean_std" and options.image.mean_std is None:
        options = options.replace(mean_std=list(_estimated_mean_std(data, options)))
    return options.image.pipeline()


def pipelines(data: Dataset, options: RunOptions, teacher_logits=None, val_teacher_logits=None,
              *, seed: int | None = None):
    """Training (shuffled with ``seed``, default the run's, and augmented by
    ``training.augment``) and validation datasets for a run (with cached teacher tables for
    distillation)."""
    options = as_options(options)
    common = dict(batch_size=options.training.batch_size, **image_options(data, options))
    # resolve_config resolved the augmentation; a notebook's dict may leave it to the data
    augment = options.training.augment or resolve_augment(dict(options.config))
    train = make_dataset(data, "train", training=True,
                         seed=options.seed if seed is None else int(seed),
                         teacher_logits=teacher_logits, augment=augment, **common)
    val = make_dataset(data, "val", training=False, teacher_logits=val_teacher_logits, **common)
    return train, val


def set_precision(options: RunOptions) -> None:
    keras.mixed_precision.set_global_policy(
        "mixed_float16" if as_training(options).mixed_precision else "float32")


def build_model(name: str, data: Dataset, options: RunOptions, weights=None):
    """A chestkd model, or a saved ``.keras`` model when ``name`` is a file."""
    options = as_options(options)
    if str(name).endswith(".keras"):
        return load_model(name, image_size=options.image.image_size, classes=data.num_classes)
    size = options.image.image_size
    return models.build(name, data.num_classes, (size, size, 3),
                        weights=options.training.weights if weights is None else weights)


def compile_classifier(model, data: Dataset, options: RunOptions):
    """Compile ``model`` for base training: the run's optimizer, the hard-label loss, the
    approximate ``auc`` metric, and XLA as :func:`~chestkd.training.trainer.resolve_jit_compile`
    decides (``training.jit_compile``; Keras may still turn it off for a model with a layer
    that does not support it, and ``model.jit_compile`` then says what runs)."""
    from chestkd.training.trainer import resolve_jit_compile

    training = as_training(options)
    steps = steps_per_epoch(data, "train", training.batch_size)
    # Loss scaling as the layers compute, not as Keras reads the outer model's policy: a
    # .keras model keeps the precision it was saved with.
    model.compile(optimizer=loss_scaled(make_optimizer(training, steps), model),
                  loss=hard_loss_for(data.multi_label), auto_scale_loss=False,
                  metrics=[MaskedAUC(num_labels=data.num_classes,
                                     softmax=not data.multi_label, name="auc")],
                  jit_compile=resolve_jit_compile(training, model))
    return model


def train_classifier(options: RunOptions, run_dir, data: Dataset, model_name: str, *,
                     stop_epoch=None, **fit_options):
    """Base training of ``model_name`` on the schedule of ``training.epochs`` (stopping after
    ``stop_epoch`` when given); returns the best model (by validation mean AUC).
    ``fit_options`` go to :func:`chestkd.training.trainer.fit`."""
    options = as_options(options)
    set_precision(options)
    seed_everything(options.seed)  # the same initial weights whatever ran before
    with distribution_strategy(options.training.distribute).scope():
        model = compile_classifier(build_model(model_name, data, options), data, options)
    train, val = pipelines(data, options)
    fit(model, train, val, options.training, run_dir, epochs=stop_epoch,
        multi_label=data.multi_label, **fit_options)
    return best_model(run_dir, model)
