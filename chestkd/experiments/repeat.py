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
from chestkd.evaluation import markdown_table
from chestkd.evaluation.classification import check_threshold_rule
from chestkd.training.config import PHANTOM_DATASETS, check_config, resolve_config, seed_list
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


def check_options(config: dict) -> None:
    """Every option of ``config`` checked by the code that owns its allowed values, before any
    work: the parser's own and those it imports from below (:func:`~chestkd.training.config.
    check_config`), then those owned above training (the KD formulation, the threshold rule)."""
    check_config(config)
    if config.get("kd_loss") is not None:
        check_formulation(config["kd_loss"])
    if config.get("threshold_rule") is not None:
        check_threshold_rule(config["threshold_rule"])


def over_seeds(run_one, config: dict) -> dict:
    """Run ``run_one(config)`` once per seed of ``config["seeds"]``; write the summary."""
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
    name = (config.get("run_name") or results[0].get("strategy") or results[0].get("recipe")
            or config.get("recipe") or "repeat")
    folder = new_run_dir(config["out"], f"{name}-seeds")
    write_json(summary, folder / "summary.json")
    table.to_csv(folder / "summary.csv", index=False)
    lines = [f"# {name}: {len(seeds)} seeds ({', '.join(map(str, seeds))})", ""]
    for key in SCALARS:
        if key in summary:
            lines.append(f"- {key}: {summary[key]['mean']:.4f} +- {summary[key]['std']:.4f}")
    if len(table):
        lines += ["", markdown_table(table)]
    else:  # a recipe whose result is a table of its own (ensemble_kd, ros_kd, ...)
        lines += ["", "No per-class AUC to average: each seed's tables are in its run folder."]
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
    refuse an option first), then runs once, or once per seed with ``--seeds``;
    ``main(argv)`` is the console-script entry (exit 0 on success, 2 on a user error).
    """
    def run(argv=None) -> dict:
        config = resolve_config(argv, defaults, doc, **resolve_options)
        check_options(config)
        if plan is not None:
            print(plan(config), flush=True)
        return over_seeds(run_once, config) if config.get("seeds") else run_once(config)

    return run, main_of(run)


def data_in_plan(config: dict) -> str:
    """A plan's words for the run's data: ``the phantom, 3000 films written at 128 px`` or
    ``chestxray14 from DIR``."""
    if config["dataset"] in PHANTOM_DATASETS and not config.get("data_dir"):
        return (f"the phantom, {config['phantom_images']} films written at "
                f"{config['phantom_size']} px")
    return f"{config['dataset']} from {config.get('data_dir')}"
