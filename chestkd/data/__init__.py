"""Datasets: one :class:`Dataset` interface for every source, and the tf.data pipeline.

``load_dataset(name, data_dir, **options)`` returns a :class:`Dataset` for
``chestxray14``, ``chexpert``, ``folder``, ``csv``, ``phantom`` or ``pneumonia_phantom``
(the phantoms are generated on demand when no ``data_dir`` is given). ``balance=
"undersample" | "oversample"`` balances the training split of any single-label dataset
(:mod:`chestkd.data.balance`).
"""
from __future__ import annotations

import importlib
import inspect

from chestkd.data.dataset import SPLITS, Dataset
from chestkd.errors import ConfigError, DataError

CHESTXRAY14_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia",
)
CHESTXRAY8_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax",
)

# name -> "module:function"; each function takes (data_dir, **options) and returns a Dataset.
LOADERS = {
    "chestxray14": "chestkd.data.chestxray14:load_chestxray14",
    "chexpert": "chestkd.data.chexpert:load_chexpert",
    "folder": "chestkd.data.folder:load_folder",
    "csv": "chestkd.data.csv_table:load_csv",
    "phantom": "chestkd.data.phantom:load_phantom",
    "pneumonia_phantom": "chestkd.data.phantom:load_pneumonia_phantom",
}


# A loader's keyword that a run configuration holds under another name: the phantoms' film
# count and size (the configuration's own ``images`` is all | present, for real images).
CONFIG_NAMES = {"phantom": {"images": "phantom_images", "size": "phantom_size"},
                "pneumonia_phantom": {"images": "phantom_images", "size": "phantom_size"}}
# Keywords that the run, not the configuration, decides (it reads a prepared cache or checks
# the original images); and CheXpert's seed: its validation carve has always been seed 0's,
# so --seeds repeats select on the same images and stored CheXpert models stay valid.
NOT_FROM_CONFIG = {"*": {"cache_dir", "check_images"}, "chexpert": {"seed"}}
# The phantom hands its other keywords to the ChestX-ray14 loader that reads what it wrote.
FORWARDS_TO = {"phantom": "chestxray14"}


def loader(name: str):
    """The loading function of dataset ``name`` (:data:`LOADERS`)."""
    if name not in LOADERS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {sorted(LOADERS)}")
    module, func = LOADERS[name].split(":")
    return getattr(importlib.import_module(module), func)


def _keywords(name: str) -> list[str]:
    parameters = inspect.signature(loader(name)).parameters
    names = [p.name for p in parameters.values() if p.kind is p.KEYWORD_ONLY]
    if name in FORWARDS_TO:
        names += [k for k in _keywords(FORWARDS_TO[name]) if k not in names]
    return names


def loader_options(name: str, config) -> dict:
    """Keyword arguments of loader ``name`` from a run's configuration: every keyword of the
    loader (and of the loader it forwards to) that ``config`` sets to something other than
    None, read under the configuration's name for it (:data:`CONFIG_NAMES`); None leaves the
    loader's default. Keywords in :data:`NOT_FROM_CONFIG` are left to the caller."""
    renamed = CONFIG_NAMES.get(name, {})
    skipped = NOT_FROM_CONFIG["*"] | NOT_FROM_CONFIG.get(name, set())
    options = {}
    for keyword in _keywords(name):
        key = renamed.get(keyword, keyword)
        if keyword not in skipped and config.get(key) is not None:
            options[keyword] = config[key]
    return options


def load_dataset(name: str, data_dir=None, **options) -> Dataset:
    """Load dataset ``name`` from ``data_dir`` (see each loader for its options)."""
    load = loader(name)
    if "balance" in options and "balance" not in inspect.signature(load).parameters:
        # A loader without its own balancing: balance its result (single-label data only).
        from chestkd.data.balance import balance_dataset
        balance = options.pop("balance")
        return balance_dataset(load(data_dir, **options), balance, options.get("seed", 0))
    return load(data_dir, **options)


__all__ = ["Dataset", "SPLITS", "DataError", "load_dataset", "loader", "loader_options",
           "CHESTXRAY14_FINDINGS", "CHESTXRAY8_FINDINGS", "LOADERS"]
