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
run with ``--epochs 2`` never marks the real cell done — so an interrupted table resumes (a
cell stopped part way continues in its own run folder, ``--resume``), and every model is
trained once through the model store. ``--seeds 0,1,2`` makes each file one cell per seed.

A cell that fails (a diverging fit, a data problem) is marked failed and the table goes on
with the other cells; the summary names the failed ones, ``OUT/table1_status.json`` records
every cell's status, and the command then exits with status 2.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from chestkd.cli import main_of
from chestkd.errors import ChestKDError
from chestkd.experiments.table_cells import (cell_files, cell_options, close_table, outs_of,
                                             run_cells, table_cells, write_status)
from chestkd.recipes import base_training, kd, self_training
from chestkd.report import write_report

# The recipes a cell can name (``recipe:``); kd's ``strategy`` is standard, reversed or
# defective.
RECIPES = {"base_training": base_training, "self_training": self_training, "kd": kd}
# The paper's cells, installed with the package (setup.cfg package_data); the repository's
# recipes/table1 links here.
PAPER_CELLS = Path(__file__).resolve().parent / "configs" / "table1"


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
    options = cell_options(options)
    files = cell_files(PAPER_CELLS if args.recipes is None else Path(args.recipes), args.only)
    # every cell resolves (and its options are checked) before any runs
    cells, options = table_cells(files, options, RECIPES)
    summary = run_cells(cells, options, RECIPES, dry_run=args.dry_run)
    if not args.dry_run:
        for out in outs_of(summary):
            write_status(out, [cell for cell in summary if cell["out"] == str(out)])
            try:
                write_report(out)
                print(f"report: {out / 'report'}")
            except ChestKDError as error:  # e.g. every cell failed: nothing to report
                print(f"no report for {out}: {error}")
        close_table(summary)  # exit status 2 if a cell failed
    return {"cells": summary, "failed": [cell for cell in summary if cell["status"] == "failed"]}


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
