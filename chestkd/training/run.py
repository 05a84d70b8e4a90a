"""Run directories: one new folder per run, never overwritten, resumable after an interruption.

A run directory holds::

    config.yaml        the resolved configuration
    model.keras        the best model by validation mean AUC (written atomically)
    history.csv        per-epoch losses, metrics and wall seconds
    logs/              TensorBoard
    backup/            BackupAndRestore state while training
    stages.json        the finished stages (training, evaluation, figures): a resumed run
                       continues after the last one
    metrics.json       test-split results; per_class_auc.csv; plots (*.png)
    skipped.csv        images skipped with --skip-bad-images, if any
"""
from __future__ import annotations

import datetime
import random
from pathlib import Path

import numpy as np

from chestkd.errors import ConfigError
from chestkd.io import atomic_write_json
from chestkd.training.config import check_config, config_id, load_yaml, save_config


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
    """A fresh run directory for ``config`` (or the one named by ``resume``), config saved.

    ``--resume RUN_DIR`` continues that run with its saved configuration: a run of another
    recipe is refused, and options given beside ``--resume`` are named as ignored.
    ``config["config_id"]`` identifies the experiment (:func:`config_id`): a finished run
    with the same id is the same result.
    """
    if config.get("distribute") == "multi_worker":
        # MultiWorkerMirroredStrategy must exist before TensorFlow runs any operation.
        from chestkd.training.distribute import distribution_strategy
        distribution_strategy(config)
    if config.get("resume"):
        run_dir = Path(config["resume"])
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
        saved = load_yaml(run_dir / "config.yaml")
        if saved.get("recipe") != recipe:
            raise ConfigError(f"--resume {run_dir}: that run is a {saved.get('recipe')!r} run, "
                              f"not {recipe!r}; resume it with python -m "
                              f"chestkd.recipes.{saved.get('recipe')} --resume {run_dir}")
        ignored = sorted(k for k in config.get("_given", ()) if k != "resume")
        if ignored:
            print(f"--resume {run_dir}: the run's saved configuration is used; ignoring "
                  + ", ".join("--" + k.replace("_", "-") for k in ignored))
        saved["resume"] = str(run_dir)
        config.clear()
        config.update(saved)
    else:
        check_config(config)
        if config.get("recipe") not in (None, recipe):
            raise ConfigError(f"{config.get('config_file', 'the configuration')} is for the "
                              f"recipe {config['recipe']!r}, not {recipe!r}; run "
                              f"python -m chestkd.recipes.{config['recipe']}")
        name = config.get("run_name") or run_label(config, recipe)
        config["recipe"] = recipe
        config["config_id"] = config_id({k: v for k, v in config.items() if k != "config_id"})
        run_dir = new_run_dir(config["out"], name)
        config["run_dir"] = str(run_dir)
        save_config(config, run_dir / "config.yaml")
    seed_everything(int(config["seed"]))
    return run_dir


def run_label(config: dict, recipe: str) -> str:
    """The default name of a run folder: what ran, on which model."""
    if recipe == "kd":
        return f"{config['strategy']}_kd-{config['student']}"
    return f"{recipe}-{config['model']}"


def seed_everything(seed: int) -> None:
    import keras
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def write_json(payload: dict, path) -> None:
    atomic_write_json(path, payload)
