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


def load_dataset(name: str, data_dir=None, **options) -> Dataset:
    """Load dataset ``name`` from ``data_dir`` (see each loader for its options)."""
    if name not in LOADERS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {sorted(LOADERS)}")
    module, func = LOADERS[name].split(":")
    loader = getattr(importlib.import_module(module), func)
    if "balance" in options and "balance" not in inspect.signature(loader).parameters:
        # A loader without its own balancing: balance its result (single-label data only).
        from chestkd.data.balance import balance_dataset
        balance = options.pop("balance")
        return balance_dataset(loader(data_dir, **options), balance, options.get("seed", 0))
    return loader(data_dir, **options)


__all__ = ["Dataset", "SPLITS", "DataError", "load_dataset", "CHESTXRAY14_FINDINGS",
           "CHESTXRAY8_FINDINGS", "LOADERS"]
