"""The studies of RoS-KD's paper, each a list of settings of one
:class:`chestkd.experiments.ros_settings.RosSettings` and a table built from the finished ones.

* ``table1``: Table I, precision / recall / F1 (macro; thresholds chosen on the validation
  split for multi-label data) and mean AUC of every setting, the raw student beside RoS-KD;
* ``overlap``: Fig. 3, RoS-KD at each overlap ratio (Baseline III as the reference);
* ``students``: Fig. 2, Baseline III and RoS-KD for each student architecture;
* ``folds``: Table III, RoS-KD's per-class AUC, mean +- std over ``fold_seeds``;
* ``robustness``: Table II, every Table I setting before and after FGSM and PGD;
* ``noise``: every setting at each phantom label-noise level, scored on the clean labels;
* ``landscape``: Fig. 4, the loss surface of RoS-KD and (when chosen) Baseline III.

Each table is written by :func:`write_table` (``<name>.csv`` and ``.md``, also printed);
:func:`table_writer` ends every caption with a note, :func:`landscape_writer` draws Fig. 4.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from chestkd.evaluation import markdown_table
from chestkd.experiments.ros import choices_note, per_class_frame, setting_model_path
from chestkd.io import atomic_write_text
from chestkd.robustness.landscape import write_landscape
from chestkd.robustness.tables import robustness_table, run_thresholds, split_arrays
from chestkd.training.classifier import image_options
from chestkd.training.run import Stages, load_model


def write_table(run_dir, name, frame: pd.DataFrame, title: str) -> pd.DataFrame:
    """``<name>.csv`` (every column) and ``<name>.md`` (without the folder and key), printed."""
    frame.to_csv(run_dir / f"{name}.csv", index=False)
    shown = frame.drop(columns=[c for c in ("folder", "key") if c in frame])
    atomic_write_text(run_dir / f"{name}.md", f"# {title}\n\n{markdown_table(shown)}\n")
    print(f"\n{title}\n{markdown_table(shown)}")
    return frame


def table_writer(note: str = ""):
    """:func:`write_table` with ``note`` (e.g. the demo's caveat) ending every title."""
    def write(run_dir, name, frame, title):
        return write_table(run_dir, name, frame, title + note)
    return write


def landscape_writer(resolution: int):
    """Fig. 4 of one setting at ``resolution`` x ``resolution`` points
    (:func:`chestkd.robustness.landscape.write_landscape`)."""
    def draw(model, images, labels, folder, multi_label, title):
        write_landscape(model, images, labels, folder, multi_label=multi_label,
                        resolution=int(resolution), title=title)
    return draw


def _settings(experiment) -> list[str]:
    """The chosen baselines (``none``: no baseline), then RoS-KD."""
    return list(experiment.ros.baselines) + ["ros_kd"]


def robustness_rows(experiment, rows) -> pd.DataFrame:
    """Table II: each setting's scores before and after each attack (kept per folder)."""
    ros, frames = experiment.ros, []
    for row in rows:
        folder = Path(row["folder"])
        stages, path = Stages(folder), folder / "robustness.csv"
        if not stages.done("robustness"):
            data = experiment.data(row["noise"], row["seed"])
            variant = experiment.variant(row["noise"], row["seed"])
            options = image_options(data, variant)
            images, labels = split_arrays(data, max_images=ros.robustness_images, **options)
            thresholds = run_thresholds(folder, data.class_names, multi_label=data.multi_label)
            table = robustness_table(load_model(setting_model_path(folder)), images, labels,
                                     data.class_names, multi_label=data.multi_label,
                                     normalization=options["normalization"],
                                     mean_std=options["mean_std"],
                                     epsilon=ros.epsilon, norm=ros.attack_norm,
                                     steps=ros.pgd_steps,
                                     thresholds=thresholds, seed=int(row["seed"]))
            table.to_csv(path, index=False)
            stages.mark("robustness")
        table = pd.read_csv(path)
        table.insert(0, "setting", row["setting"])
        table.insert(1, "student", row["student"])
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def run_studies(experiment, studies, write_table, landscape=None) -> dict:
    """Run the chosen ``studies``; ``write_table(run_dir, name, frame, title)`` writes each
    table, ``landscape(model, images, labels, folder, multi_label)`` draws Fig. 4."""
    ros, run_dir, results = experiment.ros, experiment.run_dir, {}
    note = choices_note(ros)
    table1 = []
    if "table1" in studies or "robustness" in studies:
        table1 = [experiment.setting(name) for name in _settings(experiment)]
        results["table1"] = write_table(run_dir, "table1", pd.DataFrame(table1),
                                        f"Table I: RoS-KD and its baselines\n\n{note}"
                                        ).to_dict("records")
    if "overlap" in studies:
        rows = [experiment.setting("ros_kd", overlap=p) for p in ros.overlap_study]
        rows.append(experiment.setting("III"))
        results["overlap"] = write_table(run_dir, "overlap", pd.DataFrame(rows),
                                         "Overlap ratio of the teachers' subsets (Fig. 3)"
                                         f"\n\n{note}").to_dict("records")
    if "students" in studies:
        rows = [experiment.setting(name, student=student)
                for student in ros.student_study for name in ("III", "ros_kd")]
        results["students"] = write_table(run_dir, "students", pd.DataFrame(rows),
                                          f"Student architectures (Fig. 2)\n\n{note}"
                                          ).to_dict("records")
    if "folds" in studies:
        seeds = list(ros.fold_seeds)
        rows = [experiment.setting("ros_kd", seed=seed) for seed in seeds]
        per_run = [json.loads((Path(r["folder"]) / "metrics.json").read_text())
                   for r in rows]
        names = list(per_run[0]["per_class_auc"])
        stats = per_class_frame(per_run, names)
        means = [r["mean_auc"] for r in per_run]
        frame = pd.DataFrame([{"class": c, "mean": m, "std": s, "runs": len(seeds)}
                              for c, (m, s) in stats.items()] +
                             [{"class": "Mean", "mean": float(np.mean(means)),
                               "std": float(np.std(means, ddof=1)) if len(means) > 1 else 0.0,
                               "runs": len(seeds)}])
        results["table3"] = write_table(run_dir, "table3", frame,
                                        f"Table III: RoS-KD per-class AUC over seeds {seeds}"
                                        " (the paper's 3-fold cross-validation read as one "
                                        "seeded patient-wise random split per seed: test sets "
                                        "may overlap, they do not partition the data)"
                                        ).to_dict("records")
    if "robustness" in studies:
        frame = robustness_rows(experiment, table1)
        results["table2"] = write_table(run_dir, "table2", frame,
                                        "Table II: scores before and after FGSM / PGD "
                                        f"({ros.attack_norm}, epsilon "
                                        f"{ros.epsilon:.5f} in intensity units; "
                                        "multi-label decisions at each setting's validation "
                                        f"thresholds)\n\n{note}").to_dict("records")
    if "noise" in studies:
        if experiment.options.config["dataset"] != "phantom":
            print("noise study skipped: only the phantom can add label noise")
        else:
            rows = [experiment.setting(name, noise=noise)
                    for noise in ros.noise_levels for name in _settings(experiment)]
            results["noise"] = write_table(run_dir, "noise", pd.DataFrame(rows),
                                           "Label noise (scored on the clean labels)"
                                           ).to_dict("records")
    if "landscape" in studies and landscape is not None:
        summaries = []
        for name in [n for n in ("III", "ros_kd") if n in _settings(experiment)]:
            row = experiment.setting(name)
            folder = Path(row["folder"])
            if not Stages(folder).done("landscape"):
                data = experiment.data(row["noise"], row["seed"])
                images, labels = split_arrays(
                    data, max_images=ros.landscape_images,
                    **image_options(data, experiment.variant(row["noise"], row["seed"])))
                landscape(load_model(setting_model_path(folder)), images, labels,
                          folder / "landscape", data.multi_label, row["setting"])
                Stages(folder).mark("landscape")
            summary = json.loads((folder / "landscape" / "landscape.json").read_text())
            summaries.append({"setting": row["setting"], **summary})
        results["landscape"] = write_table(run_dir, "landscape", pd.DataFrame(summaries),
                                           "Loss landscape (Fig. 4)").to_dict("records")
    return results
