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

This module is the one place that knows that layout: it makes run directories
(:func:`open_run`), records their finished stages (:class:`Stages`) and the wall time of each
(:class:`StageTimer`), and reads finished runs back (:func:`finished_run`, :func:`load_model`,
:func:`best_model`, :func:`history`). A stage is marked only after everything it writes is on
disk, so a crash inside a stage re-runs that stage alone (training itself resumes from Keras'
``BackupAndRestore`` state, epoch by epoch).
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import json
import random
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from chestkd.cli import output_folder
from chestkd.errors import ChestKDError, ConfigError
from chestkd.io import atomic_write_json
from chestkd.training.config import (ADDED_OPTION_DEFAULTS, check_config, config_id,
                                     load_yaml, save_config)
from chestkd.training.options import RunOptions, run_options


def new_run_dir(out, name: str) -> Path:
    """Create ``out/name-YYYYmmdd-HHMMSS`` (with a numeric suffix if that exists)."""
    out = output_folder(out)
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


def open_run(options: RunOptions, recipe: str) -> tuple[Path, RunOptions]:
    """A fresh run directory for ``options`` (or the one named by ``resume``), configuration
    saved; returns it and the run's options (with ``recipe``, ``config_id`` and ``run_dir``,
    or, resumed, the run's saved ones).

    ``--resume RUN_DIR`` continues that run with its saved configuration: a run of another
    recipe is refused, and options given beside ``--resume`` are named as ignored.
    ``config_id`` identifies the experiment (:func:`~chestkd.training.config.config_id`): a
    finished run with the same id is the same result.
    """
    config = options.to_config()
    recipe_profiles = config.get("_recipe_profiles")
    if config.get("distribute") == "multi_worker":
        # MultiWorkerMirroredStrategy must exist before TensorFlow runs any operation.
        from chestkd.training.distribute import distribution_strategy
        distribution_strategy(config["distribute"])
    if config.get("resume"):
        run_dir = Path(config["resume"])
        if not (run_dir / "config.yaml").exists():
            raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
        saved = load_yaml(run_dir / "config.yaml")
        if saved.get("role") == "store":
            # Resumed as a run, the entry trained again into a folder inside itself and its
            # metrics.json was rewritten; the command that needs the entry continues it.
            raise ConfigError(f"--resume {run_dir}: a model-store entry, not a run; run again "
                              "the command that trained it (it continues the entry), or "
                              "--resume the run folder")
        if saved.get("recipe") != recipe:
            raise ConfigError(f"--resume {run_dir}: that run is a {saved.get('recipe')!r} run, "
                              f"not {recipe!r}; resume it with python -m "
                              f"chestkd.recipes.{saved.get('recipe')} --resume {run_dir}")
        ignored = sorted(k for k in config.get("_given", ()) if k != "resume")
        if ignored:
            print(f"--resume {run_dir}: the run's saved configuration is used; ignoring "
                  + ", ".join("--" + k.replace("_", "-") for k in ignored))
        # An option added after the run started holds the value that reproduces what the run
        # did (ADDED_OPTION_DEFAULTS; config_id leaves it out, so the id is unchanged), not
        # today's default: a resumed RoS-KD run of 0.1 keeps its circle of overlapping subsets.
        added = {k: ADDED_OPTION_DEFAULTS[k] for k in config
                 if k in ADDED_OPTION_DEFAULTS and k not in saved}
        # The run's folder is where it is now: a run started with --out runs (relative) and
        # resumed from another folder keeps its model store (out/teachers) and its files.
        config = {**saved, **copy.deepcopy(added), "resume": str(run_dir),
                  "out": str(run_dir.parent), "run_dir": str(run_dir)}
        if "explicit_options" in saved:
            # A run stopped before its data was read has no profile yet: the data chooses it
            # as it would have (apply_small_data_profile), keeping what the user set.
            config["_explicit"] = list(saved["explicit_options"] or [])
            config["_recipe_profiles"] = dict(recipe_profiles or {})
    else:
        check_config(config)
        if config.get("recipe") not in (None, recipe):
            raise ConfigError(f"{config.get('config_file', 'the configuration')} is for the "
                              f"recipe {config['recipe']!r}, not {recipe!r}; run "
                              f"python -m chestkd.recipes.{config['recipe']}")
        name = config.get("run_name") or run_label(config, recipe)
        config["recipe"] = recipe
        if config.get("teachers_dir"):  # the same store when the run is resumed elsewhere
            config["teachers_dir"] = str(Path(config["teachers_dir"]).resolve())
        config["config_id"] = config_id({k: v for k, v in config.items() if k != "config_id"})
        if "_explicit" in config:   # kept for a resume before the data chose a profile
            config["explicit_options"] = list(config["_explicit"])
        run_dir = new_run_dir(config["out"], name)
        config["run_dir"] = str(run_dir)
        save_config(config, run_dir / "config.yaml")
    seed_everything(int(config["seed"]))
    return run_dir, run_options(config, check=False)


def start_run(config: dict, recipe: str) -> Path:
    """:func:`open_run` for code that still carries the configuration as a dict: ``config``
    becomes the run's (``recipe``, ``config_id``, ``run_dir``; a resumed run's saved one)."""
    run_dir, options = open_run(run_options(config, check=False), recipe)
    config.clear()
    config.update(options.to_config())
    return run_dir


def record_options(options, run_dir) -> None:
    """Save what a run settled after it started (``options.config``: the resolved
    configuration with, e.g., an estimated ``mean_std``) as its ``config.yaml``."""
    save_config(options.config, Path(run_dir) / "config.yaml")


def run_label(config: dict, recipe: str) -> str:
    """The default name of a run folder: what ran, on which model (a ``.keras`` model by its
    file's stem: ``--model runs/x/model.keras`` names no folders)."""
    model = config["student"] if recipe == "kd" else config["model"]
    model = re.sub(r"[^\w.+-]", "_", Path(str(model)).stem if str(model).endswith(".keras")
                   else str(model))
    if recipe == "kd":
        return f"{config['strategy']}_kd-{model}"
    return f"{recipe}-{model}"


def seed_everything(seed: int) -> None:
    import keras
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)


def write_json(payload: dict, path) -> None:
    atomic_write_json(path, payload)


# ----------------------------------------------------------------------------- stages

# The stage a KD or self-training run marks once its final metrics.json is written: its
# evaluation stage writes an earlier metrics.json (the scores alone), and the teacher
# agreement, the paired comparison or the saliency figures still follow it.
RESULTS_STAGE = "results"
RESULTS_RECIPES = ("kd", "self_training")


def run_finished(folder, recipe, metrics: dict | None = None) -> bool:
    """Whether the run in ``folder`` (of ``recipe``) finished: ``metrics.json`` written and,
    where the run records its stages, its evaluation stage done and, for a KD or
    self-training run, its :data:`RESULTS_STAGE`. ``metrics``: the parsed metrics.json, if
    the caller has read it."""
    folder = Path(folder)
    if not (folder / "metrics.json").exists():
        return False
    if not (folder / "stages.json").exists():
        return True
    try:
        stages = json.loads((folder / "stages.json").read_text())
        if metrics is None and recipe in RESULTS_RECIPES:
            metrics = json.loads((folder / "metrics.json").read_text())
    except ValueError:  # half written or damaged: running (resuming) the run writes it anew
        return False
    if not isinstance(stages, dict) or "evaluation" not in stages:
        return False
    if recipe not in RESULTS_RECIPES or RESULTS_STAGE in stages:
        return True
    # A run written before the results stage existed: only its final metrics.json names the
    # strategy (evaluation's own metrics.json has the scores alone).
    return isinstance(metrics, dict) and "strategy" in metrics


class Stages:
    """``stages.json`` of ``run_dir``: ``done(name)``, ``mark(name, **info)``, ``info(name)``."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / "stages.json"

    def _read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def done(self, name: str) -> bool:
        return name in self._read()

    def info(self, name: str) -> dict | None:
        return self._read().get(name)

    def mark(self, name: str, **info) -> None:
        stages = self._read()
        stages[name] = {"finished": datetime.datetime.now().isoformat(timespec="seconds"),
                        **info}
        atomic_write_json(self.path, stages)

    def __repr__(self):
        return f"Stages({sorted(self._read())})"


class StageTimer:
    """Wall seconds per named stage of one process's run, and in total since it was made.

    ``with timer.stage("distillation"): ...`` adds the block's wall time to that stage (a
    stage entered twice adds up); :meth:`seconds` gives every stage and ``total``, which
    includes the time between stages, so the stages never sum to more than the total.
    :meth:`line` is the one line a log shows. A resumed run times only what it re-does.
    """

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self._start = clock()
        self._stages: dict[str, float] = {}
        self._running: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def start(self, name: str) -> None:
        """Start timing ``name`` (for a stage that spans code a ``with`` block cannot)."""
        if name in self._running:
            raise RuntimeError(f"stage {name!r} is already being timed")
        self._stages.setdefault(name, 0.0)
        self._running[name] = self.clock()

    def stop(self, name: str) -> None:
        self._stages[name] += self.clock() - self._running.pop(name)

    def seconds(self) -> dict:
        """``{stage: seconds, ..., "total": seconds}``."""
        return {**self._stages, "total": self.clock() - self._start}

    def line(self, labels: dict | None = None) -> str:
        """``stage seconds: phantom 12.3, base training 216.0, ..., total 500.1``."""
        labels = labels or {}
        return "stage seconds: " + ", ".join(
            f"{labels.get(name, name.replace('_', ' '))} {value:.1f}"
            for name, value in self.seconds().items())


# ------------------------------------------------------------------ reading a finished run

def finished_run(run_dir, *, option: str = "run directory", model: bool = True) -> dict:
    """The saved configuration of a finished run; a ConfigError naming what is missing.

    Commands that work on a run (saliency, robustness, landscape, label checks) read it here,
    so they all refuse a half-written or mistyped folder the same way.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{option} {run_dir}: no config.yaml in the run directory")
    if model and not (run_dir / "model.keras").is_file():
        raise ConfigError(f"{option} {run_dir}: no model.keras (the run has not finished "
                          f"training)")
    config = yaml.safe_load(config_path.read_text()) or {}
    if not isinstance(config, dict) or "dataset" not in config:
        raise ConfigError(f"{config_path}: not a chestkd run configuration (no 'dataset')")
    return config


def load_model(path, *, image_size: int | None = None, classes: int | None = None):
    """A saved ``.keras`` model, uncompiled; a ChestKDError naming a missing file, or a
    model whose input is not ``image_size`` px or whose output is not ``classes`` wide
    (checked where given: a user's ``--model FILE.keras`` meeting the run's data)."""
    import keras
    if not Path(path).exists():
        raise ChestKDError(f"{path}: model file not found")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras says "File not found" of a truncated or foreign file
        raise ChestKDError(f"{path}: not a readable Keras model ({type(error).__name__}); a "
                           "damaged model-store entry is trained again once its folder is "
                           "deleted") from None
    size = tuple(model.inputs[0].shape[1:3])
    if image_size is not None and None not in size and size != (image_size, image_size):
        raise ConfigError(f"{path}: the model takes {size[0]} x {size[1]} px images, not the "
                          f"{image_size} px this run reads (--image-size)")
    width = model.outputs[0].shape[-1]
    if classes is not None and width is not None and int(width) != int(classes):
        raise ConfigError(f"{path}: the model has {int(width)} outputs, the data {classes} "
                          "classes")
    return model


def best_model(run_dir, fallback):
    """The run's ``model.keras`` (the best epoch by validation mean AUC), else ``fallback``."""
    path = Path(run_dir) / "model.keras"
    return load_model(path) if path.exists() else fallback


def history(run_dir) -> pd.DataFrame | None:
    """The run's ``history.csv`` (one row per epoch), or None before the first epoch ends."""
    path = Path(run_dir) / "history.csv"
    return pd.read_csv(path) if path.exists() else None
