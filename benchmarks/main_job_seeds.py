"""The main job (self-training on the phantom, defaults) over three seeds: mean +- std and
every seed's paired test, as a Markdown section for RESULTS.md.

    python benchmarks/main_job_seeds.py [--seeds 0,1,2] [--out DIR] [extra options ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import keras
import tensorflow as tf
import yaml

from chestkd.recipes import self_training


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default="runs/main-job-seeds")
    args, extra = parser.parse_known_args()
    start = time.perf_counter()
    summary = self_training.run(["--seeds", args.seeds, "--out", args.out, *extra])
    minutes = (time.perf_counter() - start) / 60
    rows = []
    for seed, run in zip(summary["seeds"], summary["runs"]):
        metrics = json.loads((Path(run) / "metrics.json").read_text())
        c = metrics["comparison"]
        rows.append(f"| {seed} | {metrics['base_mean_auc']:.3f} | {metrics['mean_auc']:.3f} | "
                    f"{c['difference']:+.3f} [{c['difference_ci'][0]:+.3f}, "
                    f"{c['difference_ci'][1]:+.3f}] | {c['p_value']:.3f} | "
                    f"{metrics.get('base_noisy_mean_auc', float('nan')):.3f} | "
                    f"{metrics.get('noisy_mean_auc', float('nan')):.3f} |")

    first = yaml.safe_load((Path(summary["runs"][0]) / "config.yaml").read_text())
    loss = json.loads((Path(summary["runs"][0]) / "metrics.json").read_text())["kd_loss"]
    settings = (f"{first['dataset']}, {first['model']}, {first['image_size']} px, batch "
                f"{first['batch_size']}, {first['epochs']} epochs, label noise "
                f"{first.get('label_noise', 0)}, {loss} KD "
                f"T = {first['temperature']:g}, alpha = {first['alpha']:g}, "
                f"{first.get('student_init', 'fresh')} student")

    def pm(key):
        return f"{summary[key]['mean']:.3f} ± {summary[key]['std']:.3f}" if key in summary else "n/a"

    print("\n".join([
        "## The main job over three seeds",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; TensorFlow "
        f"{tf.__version__}, Keras {keras.__version__}. Wall time {minutes:.1f} min for all seeds.",
        f"Command: `python benchmarks/main_job_seeds.py --seeds {args.seeds} {' '.join(extra)}`"
        f" (= `python -m chestkd.recipes.self_training --seeds ...`: {settings}).",
        "",
        "Test mean AUC against the phantom's clean labels (and against its noisy labels, "
        "what a user of real data sees); change = self-trained - base with its 95 % "
        "patient-wise paired-bootstrap interval and p-value.",
        "",
        "| seed | base | self-trained | change [95% CI] | p | base (noisy) | self-trained (noisy) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Mean ± std over seeds: base {pm('base_mean_auc')}, self-trained {pm('mean_auc')}; "
        f"noisy labels: base {pm('base_noisy_mean_auc')}, self-trained {pm('noisy_mean_auc')}.",
        f"Summary folder: {summary['summary_dir']}",
    ]))


if __name__ == "__main__":
    main()
