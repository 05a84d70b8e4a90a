"""Datasets: one :class:`Dataset` interface for every source, and the tf.data pipeline.

``load_dataset(name, data_dir, **options)`` returns a :class:`Dataset` for
``chestxray14``, ``chexpert``, ``folder`` or ``phantom`` (the phantom is generated on demand
when no ``data_dir`` is given).
"""
from __future__ import annotations

import importlib

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
    "phantom": "chestkd.data.phantom:load_phantom",
}


def load_dataset(name: str, data_dir=None, **options) -> Dataset:
    """Load dataset ``name`` from ``data_dir`` (see each loader for its options)."""
    if name not in LOADERS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {sorted(LOADERS)}")
    module, func = LOADERS[name].split(":")
    return getattr(importlib.import_module(module), func)(data_dir, **options)


__all__ = ["Dataset", "SPLITS", "DataError", "load_dataset", "CHESTXRAY14_FINDINGS",
           "CHESTXRAY8_FINDINGS", "LOADERS"]
