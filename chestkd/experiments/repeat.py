"""One experiment over several seeds (``--seeds 0,1,2``): mean +- std per class and overall.

Test AUCs on a few hundred images move by 0.02-0.03 between seeds, so a single run says
little; like RoS-KD's Table III, a repeat reports each per-class and mean AUC as mean +- std
(sample std, ddof=1) over the seeds, beside every seed's own value. The seed changes the
initial weights, the data order and, for ``--split patient``, the split; each seed is a full
run of its own (its own folder), and the summary folder lists them.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.cli import main_of
from chestkd.distill.kd_loss import check_formulation
from chestkd.errors import ConfigError
from chestkd.evaluation import markdown_table
from chestkd.evaluation.classification import check_threshold_rule
from chestkd.training.config import PHANTOM_DATASETS, check_config, resolve_config, seed_list
from chestkd.training.options import run_options
from chestkd.training.run import new_run_dir, write_json

# Scalar results and per-class tables summarised when a run reports them.
SCALARS = ("mean_auc", "noisy_mean_auc", "base_mean_auc", "base_noisy_mean_auc")
PER_CLASS = ("per_class_auc", "noisy_per_class_auc", "base_per_class_auc",
             "base_noisy_per_class_auc")


def summarise(results: list[dict], seeds: list[int]) -> tuple[dict, pd.DataFrame]:
    """(JSON summary, per-class table of mean +- std) of one run per seed."""
    summary = {"seeds": seeds, "runs": [r.get("run_dir") for r in results]}
    for key in SCALARS:
        values = [r[key] for r in results if r.get(key) is not None]
        if len(values) == len(results):
            summary[key] = {"mean": float(np.mean(values)),
                            "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                            "values": values}
    rows = []
    for key in PER_CLASS:
        if not all(isinstance(r.get(key), dict) for r in results):
            continue
        per_seed = pd.DataFrame([r[key] for r in results], index=seeds, dtype=float)
        summary[key] = {name: {"mean": float(per_seed[name].mean()),
                               "std": float(per_seed[name].std(ddof=1)) if len(seeds) > 1
                               else 0.0, "values": per_seed[name].tolist()}
                        for name in per_seed.columns}
        for name in per_seed.columns:
            rows.append({"measure": key, "class": name, "mean": per_seed[name].mean(),
                         "std": per_seed[name].std(ddof=1) if len(seeds) > 1 else 0.0,
                         **{f"seed {s}": v for s, v in per_seed[name].items()}})
    p_values = [r.get("comparison", {}).get("p_value") for r in results]
    if any(p is not None for p in p_values):
        summary["paired_p_values"] = p_values
    return summary, pd.DataFrame(rows)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def summarise_tables(results: list[dict]) -> dict:
    """Each table a recipe reports of its own (a list of rows, e.g. ensemble_kd's ``table1``,
    ros_kd's settings, transfer_learning's setups), over the seeds: ``{key: rows}``.

    A seed's rows match the other seeds' row by row (only the seed changed); a table whose
    rows or row names differ between seeds is left out. A numeric column that varies gets
    ``{"mean", "std", "values"}`` (sample std, as :func:`summarise`); a column equal in
    every seed (the row's name, a parameter count) keeps its value; a text column that varies
    (a run folder) is left out.
    """
    tables = {}
    for key, first in results[0].items():
        if not (isinstance(first, list) and first and all(isinstance(r, dict) for r in first)):
            continue
        per_seed = [r.get(key) for r in results]
        if any(not isinstance(t, list) or len(t) != len(first) for t in per_seed):
            continue
        rows, aligned = [], True
        for index, row in enumerate(first):
            cells = [t[index] for t in per_seed]
            if any(not isinstance(c, dict) or list(c) != list(row) for c in cells):
                aligned = False
                break
            summary_row = {}
            for column in row:
                if column == "seed":   # the repeat's own variable
                    continue
                values = [c[column] for c in cells]
                if all(v == values[0] for v in values):
                    summary_row[column] = values[0]
                elif all(_is_number(v) for v in values):
                    summary_row[column] = {
                        "mean": float(np.mean(values)),
                        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                        "values": [float(v) for v in values]}
                elif column in ("model", "setting", "setup", "key"):
                    aligned = False   # the rows are not the same rows
            if not aligned:
                break
            rows.append(summary_row)
        if aligned:
            tables[key] = rows
    return tables


def table_markdown(rows: list[dict]) -> str:
    """A summarised table (:func:`summarise_tables`) as Markdown: ``mean +- std`` cells."""
    def cell(value):
        if isinstance(value, dict):
            return f"{value['mean']:.4f} +- {value['std']:.4f}"
        return "n/a" if value is None else (f"{value:.4g}" if isinstance(value, float)
                                            else str(value))
    columns = list(dict.fromkeys(c for row in rows for c in row))
    frame = pd.DataFrame([{c: cell(row.get(c)) for c in columns} for row in rows])
    return markdown_table(frame)


def check_options(config: dict) -> None:
    """Every option of ``config`` checked by the code that owns its allowed values, before any
    work: the parser's own and those it imports from below (:func:`~chestkd.training.config.
    check_config`), then those owned above training (the KD formulation, the threshold rule)."""
    check_config(config)
    run_options(config, check=False)  # the typed fields' own checks (numbers, bounds)
    if config.get("kd_loss") is not None:
        check_formulation(config["kd_loss"])
    if config.get("threshold_rule") is not None:
        check_threshold_rule(config["threshold_rule"])


def over_seeds(run_one, config: dict, recipe: str | None = None) -> dict:
    """Run ``run_one(config)`` once per seed of ``config["seeds"]``; write the summary into
    ``NAME-seeds-*``: the run name, else the strategy or recipe a run reports, else
    ``recipe``."""
    seeds = seed_list(config["seeds"])
    check_options(config)  # fail on a bad option before the first seed trains
    results = []
    for seed in seeds:
        print(f"\n=== seed {seed} ({len(results) + 1} of {len(seeds)}) ===")
        one = copy.deepcopy(config)
        one.update(seed=seed, seeds=None)
        results.append(run_one(one))
        results[-1].setdefault("run_dir", one.get("run_dir"))
    summary, table = summarise(results, seeds)
    tables = summarise_tables(results)
    if tables:
        summary["tables"] = tables
    name = (config.get("run_name") or results[0].get("strategy") or results[0].get("recipe")
            or config.get("recipe") or recipe or "repeat")
    folder = new_run_dir(config["out"], f"{name}-seeds")
    write_json(summary, folder / "summary.json")
    table.to_csv(folder / "summary.csv", index=False)
    lines = [f"# {name}: {len(seeds)} seeds ({', '.join(map(str, seeds))})", ""]
    for key in SCALARS:
        if key in summary:
            lines.append(f"- {key}: {summary[key]['mean']:.4f} +- {summary[key]['std']:.4f}")
    if len(table):
        lines += ["", markdown_table(table)]
    for key, rows in tables.items():   # a recipe's own tables (ensemble_kd, ros_kd, ...)
        lines += ["", f"## {key}: mean +- std over the seeds (a cell equal in every seed is "
                      "shown once)", "", table_markdown(rows)]
    if not len(table) and not tables:
        lines += ["", "Nothing to average: each seed's results are in its run folder."]
    lines += ["", "Runs:", "", *(f"- seed {s}: {r}" for s, r in zip(seeds, summary["runs"]))]
    (folder / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:2 + len(SCALARS)]))
    print(f"summary over seeds: {folder / 'summary.md'}")
    return {**summary, "summary_dir": str(Path(folder))}


def recipe_entry(run_once, defaults: dict, doc: str, *, plan=None, **resolve_options):
    """``(run, main)`` of a recipe whose one run is ``run_once(config)``.

    ``run(argv)`` resolves the configuration (:func:`~chestkd.training.config.resolve_config`
    with ``defaults``, the recipe's docstring ``doc`` for ``--help`` and ``resolve_options``
    such as ``recipe_profiles``), prints ``plan(config)`` (what the run will train; it may
    refuse an option first; not for ``--resume``, whose saved configuration differs from the
    command line's), then runs once, or once per seed with ``--seeds``;
    ``main(argv)`` is the console-script entry (exit 0 on success, 2 on a user error).
    """
    def run(argv=None) -> dict:
        config = resolve_config(argv, defaults, doc, **resolve_options)
        if config.get("resume") and config.get("seeds"):
            raise ConfigError(f"--resume {config['resume']} continues one run with its own "
                              f"seed; --seeds {config['seeds']} starts new runs: give one of "
                              "them")
        check_options(config)
        if plan is not None and not config.get("resume"):  # a resumed run keeps its own plan
            print(plan(config), flush=True)
        if not config.get("seeds"):
            return run_once(config)
        # A recipe's module is named after it (chestkd.recipes.base_training): its summary
        # folder says which recipe ran when the runs' results do not (base training's).
        return over_seeds(run_once, config, recipe=run_once.__module__.rsplit(".", 1)[-1])

    return run, main_of(run)


def data_in_plan(config: dict) -> str:
    """A plan's words for the run's data: ``the phantom, 3000 films written at 128 px`` or
    ``chestxray14 from DIR``."""
    if config["dataset"] in PHANTOM_DATASETS and not config.get("data_dir"):
        return (f"the phantom, {config['phantom_images']} films written at "
                f"{config['phantom_size']} px")
    return f"{config['dataset']} from {config.get('data_dir')}"
