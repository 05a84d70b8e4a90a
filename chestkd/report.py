"""Gather finished runs into the paper's tables and figures.

    python -m chestkd.report RUNS_DIR [--out DIR]

Writes Markdown, CSV and PNG into ``--out`` (default ``RUNS_DIR/report``):

* ``table1``: mean test AUC per model x strategy (x teacher, KD loss), Ho & Gwak (2020)
  Table 1 — one table per *setting* (dataset and everything that shaped the training: data
  options, label noise, image size, optimiser, schedule, epochs, ...), so runs of different
  datasets or schedules are never averaged together. Runs that differ only in the seed are
  averaged (mean +- std, n). The base column holds full-schedule base-training runs of that
  setting only (a defective teacher is a checkpoint, never a base run, and a RoS-KD teacher
  of a subset no base model), each counted once however many recipes used it. A cell is one
  experiment: runs that differ in an option shaping a distilled model (teacher epochs,
  student init, ...) are cells of their own, named by that option; ``n`` counts seeds;
* ``table2``: training minutes per setting, dataset, model and strategy (each trained
  model counted once);
* ``table3``: per-class AUC laid out like the paper's Table 3 — its published columns
  (``published_auc.csv``, from the paper's own Table 3) beside this report's runs;
* ``comparisons``: every KD or self-trained model against the base model of the same
  setting, model and seed, on the same test images: mean-AUC difference with its 95 %
  paired-bootstrap interval and p-value;
* ``fig6-*.png``: training / validation loss and AUC per epoch, self-training vs. base.

A run counts when it finished: ``metrics.json`` is written and, where the run records its
stages, its evaluation stage is done (and, for KD and self-training, its results stage:
:func:`chestkd.training.run.run_finished`). A ``mean_std`` that a run estimated on
its own training split (``normalization: mean_std`` without a ``mean_std`` of the user's) is
no option: each seed estimates its own, and its runs stay one setting.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import yaml

from chestkd.cli import main_of, output_folder
from chestkd.errors import ChestKDError
from chestkd.evaluation.evaluate import markdown_table
from chestkd.evaluation.plots import plot_training_curves
from chestkd.experiments.ros import trained_on_subset
from chestkd.experiments.store import MODEL_KEYS
from chestkd.training.config import BOOKKEEPING_KEYS, config_id
from chestkd.training.run import history, run_finished

PUBLISHED = Path(__file__).with_name("evaluation") / "published_auc.csv"
# What makes two runs comparable cells of one table: all model-shaping options but the
# model and the seed.
SETTING_KEYS = MODEL_KEYS - {"model", "seed"}
# Options that choose how a result is computed, not which result: runs that differ only in
# these are repeats of one experiment (online teachers give the cached teachers' losses).
HOW_KEYS = frozenset({"seed", "teacher_outputs"})
# The recipes these tables describe; the others (ensemble_kd, ros_kd, ...) write their own.
STRATEGY_ORDER = ("base_training", "self_training", "standard_kd", "reversed_kd",
                  "defective_kd")


def _strategy(config: dict) -> str:
    recipe = config.get("recipe") or "base_training"
    return f"{config.get('strategy', 'standard')}_kd" if recipe == "kd" else recipe


def _shaping(config: dict, metrics: dict) -> dict:
    """The run's configuration as the options that shaped its result: a ``mean_std`` the run
    estimated (not among its ``explicit_options``; a run saved before they were recorded
    estimated it too) left out, since each seed estimates its own; the KD formulation as the
    run resolved it (``kd_loss`` unset is the data's choice, recorded in metrics.json)."""
    shaping = dict(config)
    if "mean_std" not in (config.get("explicit_options") or ()):
        shaping.pop("mean_std", None)
    if config.get("recipe") in ("kd", "self_training") and metrics.get("kd_loss"):
        shaping["kd_loss"] = metrics["kd_loss"]
    return shaping


def _setting(config: dict) -> str:
    return config_id(config, keys=SETTING_KEYS)[:8]


def _experiment(config: dict, strategy: str) -> str:
    """What makes runs seeds of one cell: a base model's setting; for a distilled model, every
    option that shapes its result (teacher epochs, student init, ...) but :data:`HOW_KEYS`."""
    if strategy == "base_training":
        return _setting(config)
    return config_id({k: v for k, v in config.items() if k not in HOW_KEYS})[:8]


def _store_place(path) -> tuple[str, str]:
    """A store entry named by its store folder and its own: the same entry whether the run
    that recorded it was given ``--out runs`` or an absolute path, from any folder."""
    path = Path(str(path))
    return path.parent.name, path.name


def _read(path: Path, parse):
    """A run's file parsed (a mapping; an empty config.yaml is an empty one), or a
    ChestKDError naming it (a hand-edited file, say)."""
    try:
        value = parse(path.read_text())
        if value is None and path.suffix == ".yaml":
            return {}
        if not isinstance(value, dict):
            raise ValueError(f"a mapping of keys to values expected, got {type(value).__name__}")
        return value
    except (ValueError, yaml.YAMLError) as error:
        raise ChestKDError(f"{path}: not readable ({error}); mend it or move that run folder "
                           "out of the runs directory") from None


def find_runs(root) -> pd.DataFrame:
    """One row per finished run under ``root``; a base-training cell whose model lives in the
    model store (``trained_in``) is the store entry's row, counted once. A RoS-KD teacher
    trained on a subset of the training split is no base model, and is left out."""
    rows = []
    for metrics_path in sorted(Path(root).rglob("metrics.json")):
        folder = metrics_path.parent
        if not (folder / "config.yaml").exists():
            continue
        config = _read(folder / "config.yaml", yaml.safe_load)
        if config.get("role") == "store" and trained_on_subset(config.get("teachers_dir")):
            continue
        metrics = _read(metrics_path, json.loads)
        if not run_finished(folder, config.get("recipe"), metrics):
            continue
        config = _shaping(config, metrics)
        strategy = _strategy(config)
        model = metrics.get("model") or config.get("model")
        teacher = None
        if strategy.endswith("_kd"):
            teacher = metrics.get("teacher")
            if strategy == "defective_kd" and metrics.get("teacher_epochs"):
                teacher = f"{teacher} @ epoch {metrics['teacher_epochs']}"
        kd = ""
        if strategy != "base_training":
            kd = (f"{metrics.get('kd_loss') or config.get('kd_loss')}, "
                  f"T={config.get('temperature')}, alpha={config.get('alpha')}")
        rows.append({
            "run": str(folder), "trained_in": metrics.get("trained_in"),
            "strategy": strategy, "model": model, "teacher": teacher, "kd": kd,
            "dataset": metrics.get("dataset"), "setting": _setting(config),
            "experiment": _experiment(config, strategy), "config": config,
            "seed": config.get("seed"), "epochs": config.get("epochs"),
            "label_noise": config.get("label_noise") or 0.0,
            "mean_auc": metrics.get("mean_auc"), "mean_auc_ci": metrics.get("mean_auc_ci"),
            "labels": metrics.get("labels", "as given"),
            "train_minutes": (metrics.get("train_seconds") or 0) / 60.0,
            "per_class_auc": metrics.get("per_class_auc", {}),
            "base_history": folder / "base_history.csv"})
    runs = pd.DataFrame(rows)
    if runs.empty:
        return runs
    # A base cell that only points at a store entry found here is that entry.
    found = {_store_place(run) for run in runs["run"]}
    duplicate = runs["trained_in"].apply(lambda t: isinstance(t, str)
                                         and _store_place(t) in found)
    return runs[~duplicate].reset_index(drop=True)


def describe_setting(runs: pd.DataFrame, setting: str, root) -> str:
    run = runs[runs.setting == setting].iloc[0]
    config = yaml.safe_load((Path(run.run) / "config.yaml").read_text()) or {}
    parts = [f"dataset {config.get('dataset')}"]
    if config.get("data_dir"):
        parts.append(f"data_dir {config['data_dir']}")
    for key in ("label_noise", "image_size", "optimizer", "learning_rate", "weight_decay",
                "weight_decay_mode", "schedule", "epochs", "batch_size"):
        if key in config:
            parts.append(f"{key} {config[key]}")
    return f"setting {setting}: " + ", ".join(parts)


def _column(strategy: str, teacher, kd: str) -> str:
    if strategy == "base_training":
        return "base_training"
    if strategy == "self_training":
        return f"self_training ({kd})"
    return f"{strategy} (teacher {teacher}; {kd})"


def _told_apart(frame: pd.DataFrame) -> list[str]:
    """Each row's column name, with the options that tell its experiment apart from another
    experiment of the same name, setting and model (e.g. ``[teacher_epochs=5]``)."""
    columns = list(frame["column"])
    for _, same in frame.groupby(["setting", "model", "column"], dropna=False):
        experiments = same.drop_duplicates("experiment")
        if len(experiments) < 2:
            continue
        configs = [{k: v for k, v in config.items() if not k.startswith("_")
                    and k not in HOW_KEYS and k not in BOOKKEEPING_KEYS}
                   for config in experiments["config"]]
        keys = sorted(k for k in set().union(*configs) if len(
            {json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1)
        told = {e: ", ".join(f"{k}={c.get(k)}" for k in keys)
                for e, c in zip(experiments["experiment"], configs)}
        for index, experiment in zip(same.index, same["experiment"]):
            columns[frame.index.get_loc(index)] += f" [{told[experiment]}]"
    return columns


def table1(runs: pd.DataFrame) -> pd.DataFrame:
    """Long table: setting, model, column, mean AUC over seeds, std, n (seeds), runs, labels.

    A cell is one experiment (:func:`_experiment`); runs of it with the same seed are one
    seed's result (their mean), so ``n`` counts seeds, never repeats."""
    frame = runs.assign(column=[_column(s, t, k) for s, t, k in
                                zip(runs.strategy, runs.teacher, runs.kd)],
                        order=[STRATEGY_ORDER.index(s) for s in runs.strategy])
    frame = frame.assign(column=_told_apart(frame))
    cell = ["setting", "dataset", "model", "order", "column", "labels"]
    seeds = (frame.groupby([*cell, "seed"], dropna=False)["mean_auc"]
             .agg(["mean", "count"]).reset_index())
    table = seeds.groupby(cell, dropna=False).agg(
        mean_auc=("mean", "mean"), std=("mean", "std"), n=("mean", "count"),
        runs=("count", "sum")).reset_index()
    return table.sort_values(["setting", "model", "order", "column"]).drop(columns="order")


def _cell(row) -> str:
    text = f"{row.mean_auc:.3f}"
    if row.n > 1:
        text += f" ± {row.std:.3f} (n={int(row.n)})"
    if row.runs > row.n:
        text += f" ({int(row.runs)} runs)"
    return text


def table1_markdown(table: pd.DataFrame, runs: pd.DataFrame, root) -> str:
    parts = []
    for setting, part in table.groupby("setting", sort=False):
        wide = part.assign(cell=[_cell(r) for r in part.itertuples()]).pivot_table(
            index="model", columns="column", values="cell", aggfunc="first", sort=False)
        wide = wide.reset_index().fillna("")
        labels = ", ".join(sorted(set(part["labels"])))
        parts += [f"### {describe_setting(runs, setting, root)}", "",
                  f"Mean test AUC against {labels} labels; mean ± std over n seeds where "
                  "n > 1 (runs of one seed, e.g. cached and online teachers, are averaged "
                  "first).",
                  "", markdown_table(wide), ""]
    return "\n".join(parts)


def table2(runs: pd.DataFrame) -> pd.DataFrame:
    """Training minutes per setting, dataset, model and strategy, as Table 1's cells: minutes
    of other epochs, schedules or models are never averaged together."""
    keys = ["setting", "dataset", "model", "strategy"]
    return (runs.groupby(keys, dropna=False)["train_minutes"].agg(["mean", "count"])
            .rename(columns={"mean": "minutes (mean)", "count": "runs"}).reset_index())


def table3(runs: pd.DataFrame, published=PUBLISHED) -> pd.DataFrame:
    findings = list(dict.fromkeys(k for d in runs.per_class_auc for k in d))
    table = pd.DataFrame({"finding": findings})
    if Path(published).exists():
        pub = pd.read_csv(published, comment="#")
        table = table.merge(pub, on="finding", how="left")
    for _, run in runs.iterrows():
        teacher = f", teacher {run.teacher}" if isinstance(run.teacher, str) else ""
        label = (f"{run.model} {run.strategy}{teacher} [{run.dataset}, setting {run.setting}, "
                 f"seed {run.seed}]")
        table[f"this report: {label}"] = [run.per_class_auc.get(f) for f in findings]
    mean = {c: (table[c].mean() if c != "finding" else "**mean**") for c in table.columns}
    return pd.concat([table, pd.DataFrame([mean])], ignore_index=True)


def comparisons(runs: pd.DataFrame, n_boot: int = 1000) -> pd.DataFrame:
    """Each distilled model against the base run of its setting, model and seed."""
    from chestkd.evaluation.statistics import compare_predictions
    rows = []
    base = runs[runs.strategy == "base_training"]
    for _, run in runs[runs.strategy != "base_training"].iterrows():
        match = base[(base.setting == run.setting) & (base.model == run.model)
                     & (base.seed == run.seed)]
        if match.empty:
            continue
        a, b = (Path(folder) / "test_predictions.npz" for folder in (match.iloc[0].run, run.run))
        if not (a.exists() and b.exists()):
            continue
        summary, _ = compare_predictions(a, b, n_boot=n_boot, seed=int(run.seed or 0))
        values = summary["comparison"]
        rows.append({"setting": run.setting, "model": run.model, "seed": run.seed,
                     "strategy": _column(run.strategy, run.teacher, run.kd),
                     "labels": summary["labels"],
                     "base": values["mean_auc_a"], "distilled": values["mean_auc_b"],
                     "difference": values["difference"],
                     "difference_ci": values["difference_ci"], "p_value": values["p_value"],
                     "run": run.run})
    return pd.DataFrame(rows)


def write_report(root, out=None) -> dict:
    root = Path(root)
    if not root.exists():
        raise ChestKDError(f"{root}: no such runs directory")
    runs = find_runs(root)
    if not runs.empty:
        other = runs[~runs.strategy.isin(STRATEGY_ORDER)]
        if len(other):
            print("not in these tables (their recipes write their own): " + ", ".join(
                f"{count} {name} run(s)" for name, count in other.strategy.value_counts()
                .sort_index().items()))
        runs = runs[runs.strategy.isin(STRATEGY_ORDER)].reset_index(drop=True)
    if runs.empty:
        raise ChestKDError(f"{root}: no finished run of {', '.join(STRATEGY_ORDER)} (a "
                           "folder with config.yaml and metrics.json) found")
    out = output_folder(out or root / "report")
    written = {}
    t1 = table1(runs)
    t1.to_csv(out / "table1.csv", index=False)
    (out / "table1.md").write_text(table1_markdown(t1, runs, root) + "\n")
    written["table1"] = out / "table1.md"
    for name, table in (("table2", table2(runs)), ("table3", table3(runs)),
                        ("comparisons", comparisons(runs))):
        if table.empty:
            continue
        table.to_csv(out / f"{name}.csv", index=False)
        (out / f"{name}.md").write_text(markdown_table(table, ".3f") + "\n")
        written[name] = out / f"{name}.md"
    for _, run in runs[runs.strategy == "self_training"].iterrows():
        curves = history(run.run)
        if curves is not None and run.base_history.exists():
            path = out / f"fig6-{Path(run.run).name}.png"
            plot_training_curves(curves, path, label="self-training",
                                 other=pd.read_csv(run.base_history), other_label="base",
                                 title=f"{run.model}: self-training vs. base (Fig. 6)")
            written[path.stem] = path
    return written


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    written = write_report(args.runs_dir, args.out)
    for name, path in written.items():
        print(f"{name}: {path}")
        if path.suffix == ".md":
            print(path.read_text())
    return written


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
