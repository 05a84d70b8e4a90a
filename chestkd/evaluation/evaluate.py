"""Evaluate a trained model on the test split and write the run's results.

Writes ``metrics.json`` (mean and per-class AUC, single-label scores, parameters, latency,
training time), ``per_class_auc.csv``, ``per_class_auc.md``, and the plots, and prints the table.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.data.dataset import Dataset
from chestkd.data.pipeline import make_dataset
from chestkd.evaluation import plots
from chestkd.evaluation.metrics import (count_params, latency_per_image, mean_auc, per_class_auc,
                                        predict_logits, sigmoid, single_label_metrics, softmax)
from chestkd.training.experiment import image_options
from chestkd.training.run import write_json


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency such as tabulate)."""
    def cell(value):
        if isinstance(value, (float, np.floating)):
            return "n/a" if np.isnan(value) else format(value, floatfmt)
        return str(value)
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join([header, rule, *rows])


def evaluate_model(model, data: Dataset, config: dict, run_dir, *, prefix: str = "",
                   title: str | None = None, model_name: str | None = None) -> dict:
    """Score ``model`` on ``data``'s test split; results go to ``run_dir`` (names ``prefix``-ed)."""
    run_dir = Path(run_dir)
    test = make_dataset(data, "test", batch_size=int(config["batch_size"]),
                        **image_options(data, config))
    logits, y = predict_logits(model, test)
    scores = sigmoid(logits) if data.multi_label else softmax(logits)
    table = per_class_auc(y, scores, data.class_names)
    results = {
        "dataset": data.name, "model": model_name or config.get("model"),
        "test_images": int(len(y)), "mean_auc": mean_auc(table),
        "per_class_auc": dict(zip(table["class"], table["auc"])),
        "params": count_params(model),
        "latency": latency_per_image(model, model.input_shape[1:],
                                     repeats=int(config.get("latency_images", 32))),
    }
    table.to_csv(run_dir / f"{prefix}per_class_auc.csv", index=False)
    (run_dir / f"{prefix}per_class_auc.md").write_text(markdown_table(table) + "\n")
    plots.plot_roc_curves(y, scores, data.class_names, run_dir / f"{prefix}roc_curves.png",
                          title=title or "ROC curves (test split)")
    if not data.multi_label:
        single = single_label_metrics(y, scores, data.class_names)
        results.update({k: single[k] for k in ("accuracy", "precision", "recall", "f1")})
        results["confusion_matrix"] = single["confusion_matrix"]
        single["per_class"].to_csv(run_dir / f"{prefix}per_class_scores.csv", index=False)
        plots.plot_confusion_matrix(single["confusion_matrix"], data.class_names,
                                    run_dir / f"{prefix}confusion_matrix.png")
    if len(data.skipped):  # --skip-bad-images: the report says what was left out, and why
        results["skipped_images"] = data.skipped.to_dict("records")
    history_path = run_dir / "history.csv"
    if history_path.exists():
        history = pd.read_csv(history_path)
        if "epoch_seconds" in history:
            results["train_seconds"] = float(history["epoch_seconds"].sum())
            results["epoch_seconds_mean"] = float(history["epoch_seconds"].mean())
        results["epochs_trained"] = int(len(history))
        plots.plot_training_curves(history, run_dir / f"{prefix}training_curves.png")
    write_json(results, run_dir / f"{prefix}metrics.json")
    return results


def print_results(results: dict, title: str = "Test split") -> None:
    table = pd.DataFrame({"class": list(results["per_class_auc"]),
                          "auc": list(results["per_class_auc"].values())})
    print(f"\n{title}: {results['model']} on {results['dataset']} "
          f"({results['test_images']} images)")
    print(markdown_table(table))
    print(f"mean AUC {results['mean_auc']:.4f} | parameters {results['params']['total']:,} | "
          f"latency {results['latency']['median_ms']:.2f} ms/image")
    for key in ("accuracy", "precision", "recall", "f1"):
        if key in results:
            print(f"{key} {results[key]:.4f}")
