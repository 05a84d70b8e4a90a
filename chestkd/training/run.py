"""Run directories: one new folder per run, never overwritten, resumable after an interruption.

A run directory holds::

    config.yaml        the resolved configuration
    model.keras        the best model by validation mean AUC (written atomically)
    history.csv        per-epoch losses, metrics and wall seconds
    logs/              TensorBoard
    backup/            BackupAndRestore state while training (removed when training ends)
    metrics.json       test-split results; per_class_auc.csv; plots (*.png)
    skipped.csv        images skipped with --skip-bad-images, if any
"""
from __future__ import annotations

import datetime
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np

from chestkd.errors import ConfigError
from chestkd.training.config import check_config, load_yaml, save_config


def new_run_dir(out, name: str) -> Path:
    """Create ``out/name-YYYYmmdd-HHMMSS`` (with a numeric suffix if that exists)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = out / f"{name}-{stamp}"
    candidate, k = base, 1
    while True:
        try:
            candidate.mkdir()  # atomic: two runs starting together get different folders
            return candidate
        except FileExistsError:
            k += 1
            candidate = Path(f"{base}-{k}")


def start_run(config: dict, recipe: str) -> Path:
    """A fresh run directory for ``config`` (or the one named by ``resume``), config saved."""
    if config.get("resume"):
        run_dir = Path(config["resume"])
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
        saved = load_yaml(run_dir / "config.yaml")
        saved["resume"] = str(run_dir)
        config.clear()
        config.update(saved)
    else:
        check_config(config)
        if config.get("recipe") not in (None, recipe):
            raise ConfigError(f"{config.get('config_file', 'the configuration')} is for the "
                              f"recipe {config['recipe']!r}, not {recipe!r}; run "
                              f"python -m chestkd.recipes.{config['recipe']}")
        name = config.get("run_name") or f"{recipe}-{config.get('student') or config['model']}"
        run_dir = new_run_dir(config["out"], name)
        config["recipe"] = recipe
        config["run_dir"] = str(run_dir)
        save_config(config, run_dir / "config.yaml")
    seed_everything(int(config["seed"]))
    return run_dir


def seed_everything(seed: int) -> None:
    import keras
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def save_model_atomically(model, path):
    """``model.save(path)`` through a temporary file in the same folder and ``os.replace``.

    A crash mid-save leaves the previous file intact, never a truncated one.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ConfigError(f"model path {str(path)!r} must end in '.keras'")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".keras",
                                         dir=path.parent)
    os.close(handle)
    try:
        model.save(temporary, overwrite=True)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise



def write_json(payload: dict, path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")
