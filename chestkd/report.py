"""Gather finished runs into the paper's tables and figures.

    python -m chestkd.report RUNS_DIR [--out DIR]

Writes Markdown, CSV and PNG into ``--out`` (default ``RUNS_DIR/report``):

* ``table1``: mean test AUC per model x strategy (x teacher), Ho & Gwak (2020) Table 1;
* ``table2``: training minutes per strategy (mean over runs, wall time of the run's epochs;
  for KD the teacher's own training is listed separately since it is trained once and reused);
* ``table3``: per-class AUC laid out like the paper's Table 3 — published columns (where the
  bundled file ``published_auc.csv`` has them) beside this report's runs;
* ``fig6-*.png``: training / validation loss and AUC per epoch, self-training vs. base.

A run is a folder with ``config.yaml`` and ``metrics.json``; teachers kept under
``teachers/`` are base-training runs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import yaml

from chestkd.errors import ChestKDError
from chestkd.evaluation.evaluate import markdown_table
from chestkd.evaluation.plots import plot_training_curves

PUBLISHED = Path(__file__).with_name("evaluation") / "published_auc.csv"


def find_runs(root) -> pd.DataFrame:
    """One row per finished run under ``root``."""
    rows = []
    for metrics_path in sorted(Path(root).rglob("metrics.json")):
        folder = metrics_path.parent
        if not (folder / "config.yaml").exists():
            continue
        config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
        metrics = json.loads(metrics_path.read_text())
        role_teacher = config.get("role") == "teacher"
        strategy = "base_training" if role_teacher else (config.get("recipe") or "base_training")
        model = metrics.get("model") or config.get("model")
        teacher = metrics.get("teacher") if strategy not in ("base_training",) else None
        if strategy == "self_training":
            teacher = model
        rows.append({"run": str(folder), "strategy": strategy, "model": model,
                     "teacher": teacher, "dataset": metrics.get("dataset"),
                     "mean_auc": metrics.get("mean_auc"),
                     "train_minutes": (metrics.get("train_seconds") or 0) / 60.0,
                     "per_class_auc": metrics.get("per_class_auc", {}),
                     "base_history": folder / "base_history.csv"})
    return pd.DataFrame(rows)


def table1(runs: pd.DataFrame) -> pd.DataFrame:
    frame = runs.assign(column=[s if pd.isna(t) or s in ("base_training", "self_training")
                                else f"{s} (teacher {t})"
                                for s, t in zip(runs.strategy, runs.teacher)])
    return frame.pivot_table(index="model", columns="column", values="mean_auc",
                             aggfunc="mean").reset_index()


def table2(runs: pd.DataFrame) -> pd.DataFrame:
    return (runs.groupby("strategy")["train_minutes"].agg(["mean", "count"])
            .rename(columns={"mean": "minutes (mean)", "count": "runs"}).reset_index())


def table3(runs: pd.DataFrame, published=PUBLISHED) -> pd.DataFrame:
    findings = list(dict.fromkeys(k for d in runs.per_class_auc for k in d))
    table = pd.DataFrame({"finding": findings})
    if Path(published).exists():
        pub = pd.read_csv(published, comment="#")
        table = table.merge(pub, on="finding", how="left")
    for _, run in runs.iterrows():
        teacher = (f", teacher {run.teacher}" if pd.notna(run.teacher)
                   and run.strategy != "self_training" else "")
        label = f"{run.model} {run.strategy}{teacher} [{run.dataset}]"
        table[f"this report: {label}"] = [run.per_class_auc.get(f) for f in findings]
    mean = {c: (table[c].mean() if c != "finding" else "**mean**") for c in table.columns}
    return pd.concat([table, pd.DataFrame([mean])], ignore_index=True)


def write_report(root, out=None) -> dict:
    root = Path(root)
    if not root.exists():
        raise ChestKDError(f"{root}: no such runs directory")
    runs = find_runs(root)
    if runs.empty:
        raise ChestKDError(f"{root}: no finished run (a folder with config.yaml and "
                           "metrics.json) found")
    out = Path(out or root / "report")
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, table in (("table1", table1(runs)), ("table2", table2(runs)),
                        ("table3", table3(runs))):
        table.to_csv(out / f"{name}.csv", index=False)
        (out / f"{name}.md").write_text(markdown_table(table, ".3f") + "\n")
        written[name] = out / f"{name}.md"
    for _, run in runs[runs.strategy == "self_training"].iterrows():
        history = Path(run.run) / "history.csv"
        if history.exists() and run.base_history.exists():
            path = out / f"fig6-{Path(run.run).name}.png"
            plot_training_curves(pd.read_csv(history), path, label="self-training",
                                 other=pd.read_csv(run.base_history), other_label="base",
                                 title=f"{run.model}: self-training vs. base (Fig. 6)")
            written[path.stem] = path
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.runs_dir, args.out)
    except ChestKDError as error:
        parser.exit(2, f"error: {error}\n")
    for name, path in written.items():
        print(f"{name}: {path}")
        if path.suffix == ".md":
            print(path.read_text())
    return written


if __name__ == "__main__":
    main()
