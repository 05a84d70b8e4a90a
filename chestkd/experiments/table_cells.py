"""A table of experiments, one YAML file (a cell) per run: resolve every cell, skip the ones a
finished run already answers, run the others (a failing cell does not stop the table), and
record each cell's status.

The recipes that run the cells are given by the caller as ``recipes`` (recipe name -> module
with ``DEFAULTS`` and ``run(argv)``), so this layer never imports the recipes above it.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path

import yaml

from chestkd.errors import ChestKDError, ConfigError
from chestkd.io import atomic_write_json
from chestkd.training.config import config_id, load_yaml, resolve_config, seed_list
from chestkd.training.run import run_finished

# The order the cells run in: every teacher is base-trained before a cell distils from it.
ORDER = ("base_training", "self_training", "standard", "reversed", "defective")
# Options that would make every cell the same run, or another one: refused.
PER_CELL_OPTIONS = ("--config", "--resume", "--run-name")


class TableIncomplete(ChestKDError):
    """Some cells of the table failed; the others finished."""


def cell_options(options: list) -> list:
    """The options given for every cell, with those that cannot apply to all refused."""
    for token in options:
        flag = token.split("=", 1)[0]
        if flag in PER_CELL_OPTIONS or flag.replace("_", "-") in (
                o.lstrip("-") for o in PER_CELL_OPTIONS):
            raise ConfigError(f"{flag}: each cell of the table is its own YAML file and run; "
                              f"{', '.join(PER_CELL_OPTIONS)} cannot apply to all of them "
                              f"(use --recipes DIR for your own cells)")
    return options


def cell_files(folder: Path, only: str) -> list:
    """The YAML cells of ``folder`` whose file names match the glob ``only``, sorted."""
    if not folder.is_dir():
        raise ConfigError(f"--recipes {folder}: no such folder")
    files = [f for f in sorted(folder.glob("*.yaml")) if fnmatch.fnmatch(f.name, only)]
    if not files:
        raise ConfigError(f"--recipes {folder}: no YAML file matches {only!r}")
    return files


def resolved_cell(path: Path, overrides, recipes: dict) -> tuple[str, dict]:
    """(recipe, the configuration its run would resolve and record) of one YAML cell."""
    recipe = load_yaml(path).get("recipe")
    if recipe not in tuple(recipes):  # (a YAML list is no key, but no recipe either)
        raise ConfigError(f"{path}: 'recipe' must be {', '.join(list(recipes)[:-1])} or "
                          f"{list(recipes)[-1]}, got {recipe!r}")
    # The recipe's own profile values, as its command resolves them (recipe_entry): without
    # them a phantom cell leaving batch_size or epochs to the profile gets another config_id
    # than the run it starts, and is never found done.
    config = resolve_config(["--config", str(path), *overrides], recipes[recipe].DEFAULTS,
                            recipe_profiles=getattr(recipes[recipe], "RECIPE_PROFILES", None))
    config["recipe"] = recipe
    return recipe, config


def _runs_of(config: dict) -> list:
    """(folder, finished) of each run under ``config["out"]`` with this configuration,
    oldest first (the folders' names end in their start time)."""
    wanted, runs = config_id(config), []
    for config_path in sorted(Path(config["out"]).glob("*/config.yaml")):
        try:
            saved = yaml.safe_load(config_path.read_text())
        except yaml.YAMLError:
            continue  # no run this table can tell as its own
        if isinstance(saved, dict) and saved.get("config_id") == wanted:
            folder = config_path.parent
            runs.append((folder, run_finished(folder, saved.get("recipe"))))
    return runs


def finished(config: dict) -> Path | None:
    """The finished run folder under ``config["out"]`` with this configuration, if any."""
    return next((folder for folder, done in _runs_of(config) if done), None)


def interrupted(config: dict) -> Path | None:
    """The newest unfinished run folder under ``config["out"]`` with this configuration (a
    table stopped while it ran), to be resumed rather than started again; None if none."""
    return next((folder for folder, done in reversed(_runs_of(config)) if not done), None)


def table_cells(files: list, options: list, recipes: dict) -> tuple[list, list]:
    """(cells in :data:`ORDER`, the options for every cell): each cell ``(path, recipe,
    config, own options)`` resolved, so a bad option fails before anything runs; with
    ``--seeds`` a file is one cell per seed (own options ``seed=S seeds=null``). Another
    ``out`` than the cells' own takes the model store with it unless ``teachers_dir`` is
    given."""
    _, probe = resolved_cell(files[0], options, recipes)
    if "out" in probe["_given"] and "teachers_dir" not in probe["_given"]:
        # The paper's cells keep their model store in runs/table1/teachers: with another
        # --out (a smoke test) the store goes there too, not into the real table's.
        options = [*options, f"teachers_dir={Path(probe['out']) / 'teachers'}"]
    cells = []
    for path in files:
        recipe, config = resolved_cell(path, options, recipes)
        step = config.get("strategy") if recipe == "kd" else recipe
        # config_id leaves ``seeds`` out, so one cell for all seeds would be found done by
        # its first seed's run: each seed is a cell of its own, found and run alone.
        for seed in seed_list(config.get("seeds")) or [None]:
            own = [] if seed is None else [f"seed={seed}", "seeds=null"]
            seed_config = resolved_cell(path, [*options, *own], recipes)[1] if own else config
            cells.append((ORDER.index(step), path.name, -1 if seed is None else seed, path,
                          recipe, seed_config, own))
    return [cell[3:] for cell in sorted(cells, key=lambda cell: cell[:3])], options


def run_cells(cells: list, options: list, recipes: dict, *, dry_run: bool) -> list:
    """Run each cell of :func:`table_cells` not finished before (``dry_run``: only list
    them); returns one dict per cell: its name, recipe, configuration, ``out`` and status
    (``done`` before, ``ran``, ``failed`` with its ``error``, or ``to run``)."""
    summary = []
    for path, recipe, config, own in cells:
        name = f"{path.name} seed {config['seed']}" if own else path.name
        cell = {"cell": name, "recipe": recipe, "config": config,
                "out": str(Path(config["out"]))}
        summary.append(cell)
        done = finished(config)
        if done:
            print(f"[done] {name}: {done}")
            cell.update(status="done", run=str(done))
            continue
        stopped = interrupted(config)
        if stopped:
            # Continue the stopped run in its own folder (its finished stages kept), rather
            # than training the cell again beside it.
            print(f"[run ] {name} ({recipe}): resuming {stopped}")
        else:
            print(f"[run ] {name} ({recipe})")
        if dry_run:
            cell["status"] = "to run"
            continue
        try:
            recipes[recipe].run(["--resume", str(stopped)] if stopped else
                                ["--config", str(path), *options, *own])
        except ChestKDError as error:
            # One cell's problem (most often a diverging fit) must not cost the others.
            print(f"[fail] {name}: {error}")
            cell.update(status="failed", error=str(error))
            continue
        cell["status"] = "ran"
        cell["run"] = str(finished(config) or "")
    return summary


def outs_of(summary: list) -> list:
    """The ``out`` folders of the cells, in the order they first appear."""
    return list(dict.fromkeys(Path(cell["out"]) for cell in summary))


def write_status(out: Path, cells: list) -> None:
    """``OUT/table1_status.json``: each cell's status (and error) of the last table run."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "table1_status.json",
                      [{k: v for k, v in cell.items() if k != "config"} for cell in cells])


def close_table(summary: list) -> None:
    """Print how many cells were done before, run now and failed; raise
    :class:`TableIncomplete` (exit status 2) if any failed."""
    failed = [cell for cell in summary if cell["status"] == "failed"]
    counts = {status: sum(c["status"] == status for c in summary)
              for status in ("done", "ran", "failed")}
    print(f"table: {len(summary)} cell(s): {counts['done']} done before, "
          f"{counts['ran']} run now, {counts['failed']} failed"
          + "".join(f"\n  failed: {c['cell']}: {c['error']}" for c in failed))
    if failed:
        raise TableIncomplete(
            f"{len(failed)} of {len(summary)} cells failed: "
            f"{', '.join(c['cell'] for c in failed)} (the others finished; status in "
            f"{', '.join(str(out / 'table1_status.json') for out in outs_of(summary))})")
