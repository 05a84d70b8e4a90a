"""Run a whole table of experiments: every YAML file in a folder, then the report.

    python -m chestkd.recipes.table1 [--recipes DIR] [--only GLOB] [--dry-run]
        [--out DIR] [--epochs N] [--batch-size N] [--image-size N] [--dataset NAME]
        [--data-dir DIR] [any option of the cells' recipes] [key=value ...]

The paper's cells (Ho & Gwak 2020, Table 1: one YAML per cell) ship with the package, so the
default ``--recipes`` works from any folder; ``--recipes DIR`` runs your own cells instead.
Each file names its recipe (``recipe: kd`` with ``strategy: standard``, ``base_training``,
``self_training``) and inherits the paper's shared settings (``defaults: ../paper.yaml``).
Every other option, as a flag (``--out DIR``, ``--epochs 2``) or ``key=value``, applies to
every cell (e.g. ``--epochs 2 --dataset phantom data_dir=null --out runs/smoke`` for a smoke
test; the model store follows ``--out`` unless ``teachers_dir`` is given). A cell is
done only when a finished run with the same resolved configuration (file, overrides and
defaults; :func:`chestkd.training.config.config_id`) exists under its ``out`` folder — a smoke
run with ``--epochs 2`` never marks the real cell done — so an interrupted table resumes, and
every model is trained once through the model store.

A cell that fails (a diverging fit, a data problem) is marked failed and the table goes on
with the other cells; the summary names the failed ones, ``OUT/table1_status.json`` records
every cell's status, and the command then exits with status 2.
"""
from __future__ import annotations

import argparse
import fnmatch
import importlib
from pathlib import Path

import yaml

from chestkd.cli import main_of
from chestkd.errors import ChestKDError, ConfigError
from chestkd.io import atomic_write_json
from chestkd.report import write_report
from chestkd.training.config import config_id, load_yaml, resolve_config

ORDER = ("base_training", "self_training", "standard", "reversed", "defective")
# The paper's cells, installed with the package (setup.cfg package_data); the repository's
# recipes/table1 links here.
PAPER_CELLS = Path(__file__).resolve().parent / "configs" / "table1"
# Options that would make every cell the same run, or another one: refused.
PER_CELL_OPTIONS = ("--config", "--resume", "--run-name")


class TableIncomplete(ChestKDError):
    """Some cells of the table failed; the others finished."""


def resolved_cell(path: Path, overrides) -> tuple[str, dict]:
    """(recipe, the configuration its run would resolve and record) of one YAML cell."""
    recipe = load_yaml(path).get("recipe")
    if recipe not in ("base_training", "self_training", "kd"):
        raise ConfigError(f"{path}: 'recipe' must be base_training, self_training or kd, "
                          f"got {recipe!r}")
    module = importlib.import_module(f"chestkd.recipes.{recipe}")
    config = resolve_config(["--config", str(path), *overrides], module.DEFAULTS)
    config["recipe"] = recipe
    return recipe, config


def finished(config: dict) -> Path | None:
    """The finished run folder under ``config["out"]`` with this configuration, if any."""
    wanted = config_id(config)
    for config_path in sorted(Path(config["out"]).glob("*/config.yaml")):
        saved = yaml.safe_load(config_path.read_text()) or {}
        folder = config_path.parent
        stages = folder / "stages.json"
        done = (folder / "metrics.json").exists() and (
            not stages.exists() or '"evaluation"' in stages.read_text())
        if saved.get("config_id") == wanted and done:
            return folder
    return None


def _cell_options(options: list) -> list:
    """The options given for every cell, with those that cannot apply to all refused."""
    for token in options:
        flag = token.split("=", 1)[0]
        if flag in PER_CELL_OPTIONS or flag.replace("_", "-") in (
                o.lstrip("-") for o in PER_CELL_OPTIONS):
            raise ConfigError(f"{flag}: each cell of the table is its own YAML file and run; "
                              f"{', '.join(PER_CELL_OPTIONS)} cannot apply to all of them "
                              f"(use --recipes DIR for your own cells)")
    return options


def run(argv=None) -> dict:
    """Run (or with ``--dry-run`` list) the cells; returns ``{"cells": [...], "failed": [...]}``
    with each cell's name, recipe, resolved configuration and status (``done`` before,
    ``ran``, ``failed`` with its ``error``, or ``to run`` in a dry run)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # every other flag belongs to the cells' recipes
        epilog="Any other option (--out DIR, --epochs N, --seed N, key=value ...) is passed "
               "to every cell's recipe; see python -m chestkd.recipes.kd --help.")
    parser.add_argument("--recipes", default=None, metavar="DIR",
                        help="folder of cell YAML files (default: the paper's Table 1, "
                             "installed with chestkd)")
    parser.add_argument("--only", default="*", help="glob on the file names, e.g. '*resnet32*'")
    parser.add_argument("--dry-run", action="store_true",
                        help="list what would run, write nothing")
    args, options = parser.parse_known_args(argv)
    options = _cell_options(options)
    folder = PAPER_CELLS if args.recipes is None else Path(args.recipes)
    if not folder.is_dir():
        raise ConfigError(f"--recipes {folder}: no such folder")
    files = [f for f in sorted(folder.glob("*.yaml")) if fnmatch.fnmatch(f.name, args.only)]
    if not files:
        raise ConfigError(f"--recipes {folder}: no YAML file matches {args.only!r}")
    _, probe = resolved_cell(files[0], options)
    if "out" in probe["_given"] and "teachers_dir" not in probe["_given"]:
        # The paper's cells keep their model store in runs/table1/teachers: with another
        # --out (a smoke test) the store goes there too, not into the real table's.
        options = [*options, f"teachers_dir={Path(probe['out']) / 'teachers'}"]
    cells = []
    for path in files:  # every cell resolves (and its options are checked) before any runs
        recipe, config = resolved_cell(path, options)
        step = config.get("strategy") if recipe == "kd" else recipe
        cells.append((ORDER.index(step), path.name, path, recipe, config))
    outs, summary = [], []
    for _, _, path, recipe, config in sorted(cells):
        out = Path(config["out"])
        if out not in outs:
            outs.append(out)
        cell = {"cell": path.name, "recipe": recipe, "config": config, "out": str(out)}
        summary.append(cell)
        done = finished(config)
        if done:
            print(f"[done] {path.name}: {done}")
            cell.update(status="done", run=str(done))
            continue
        print(f"[run ] {path.name} ({recipe})")
        if args.dry_run:
            cell["status"] = "to run"
            continue
        module = importlib.import_module(f"chestkd.recipes.{recipe}")
        try:
            module.run(["--config", str(path), *options])
        except ChestKDError as error:
            # One cell's problem (most often a diverging fit) must not cost the others.
            print(f"[fail] {path.name}: {error}")
            cell.update(status="failed", error=str(error))
            continue
        cell["status"] = "ran"
        cell["run"] = str(finished(config) or "")
    failed = [cell for cell in summary if cell["status"] == "failed"]
    if not args.dry_run:
        for out in outs:
            _write_status(out, [c for c in summary if c["out"] == str(out)])
            try:
                write_report(out)
                print(f"report: {out / 'report'}")
            except ChestKDError as error:  # e.g. every cell failed: nothing to report
                print(f"no report for {out}: {error}")
        counts = {status: sum(c["status"] == status for c in summary)
                  for status in ("done", "ran", "failed")}
        print(f"table: {len(summary)} cell(s): {counts['done']} done before, "
              f"{counts['ran']} run now, {counts['failed']} failed"
              + "".join(f"\n  failed: {c['cell']}: {c['error']}" for c in failed))
        if failed:
            raise TableIncomplete(
                f"{len(failed)} of {len(summary)} cells failed: "
                f"{', '.join(c['cell'] for c in failed)} (the others finished; status in "
                f"{', '.join(str(out / 'table1_status.json') for out in outs)})")
    return {"cells": summary, "failed": failed}


def _write_status(out: Path, cells: list) -> None:
    """``OUT/table1_status.json``: each cell's status (and error) of the last table run."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "table1_status.json",
                      [{k: v for k, v in cell.items() if k != "config"} for cell in cells])


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
