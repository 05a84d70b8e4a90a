"""Training: configuration, run directories, losses and the fit loop shared by every recipe.

The names in ``__all__`` are imported on first use (``from chestkd.training import fit``), so
importing one submodule does not bring in the others.
"""
from __future__ import annotations

import importlib

# public name -> the submodule defining it
_PUBLIC = {
    "resolve_config": "config", "config_id": "config", "save_config": "config",
    "RunOptions": "options", "run_options": "options", "as_options": "options",
    "open_run": "run", "start_run": "run", "seed_everything": "run", "Stages": "run",
    "StageTimer": "run", "prepare_run_data": "classifier",
    "finished_run": "run", "load_model": "run",
    "fit": "trainer",
    "MaskedBinaryCrossentropy": "losses", "CategoricalCrossentropyFromLogits": "losses",
    "MaskedAUC": "losses", "hard_loss_for": "losses", "exact_mean_auc": "losses",
    "StudentCheckpoint": "callbacks", "ExactValidationAUC": "callbacks",
    "WeightAveraging": "callbacks", "TrainingDiverged": "callbacks",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'chestkd.training' has no attribute {name!r}")
    return getattr(importlib.import_module(f"chestkd.training.{_PUBLIC[name]}"), name)
