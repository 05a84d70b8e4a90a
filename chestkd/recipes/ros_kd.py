"""RoS-KD (Jaiswal et al. 2022) and its baselines on the same teachers, student and data.

    python -m chestkd.recipes.ros_kd [--config recipes/ros_kd.yaml] [--teachers A,B,...]
        [--student NAME] [--subsets K] [--overlap P] [--baselines I,II,III,IV,V|none]
        [--studies table1,overlap,students,folds,robustness,noise,landscape]
        [--temperature 0.5] [--alpha 0.9] [--averaging-start 10] [base-training options]

Settings (each a folder under ``RUN_DIR/settings``, trained once, reused by every study):
I the student alone (its model comes from the model store and is copied into the folder);
II standard KD from one ``kd_teacher`` (DenseNet-121); III equal fixed weights 1/K in Eq. 4
(``baseline_iii_combine: losses``; ``logits``: one KL to the mean of the teachers' logits)
on the same K teacher models as RoS-KD, trained on the overlapping subsets
(``baseline_iii_teachers: subsets``, the paper's Table II caption; ``full``: the K
architectures trained on the full split); IV the K teachers on the subsets, weighted per
example by each teacher's confidence (``confidence_temperature``; a simple, documented
substitute for the paper's RL-learned weights, NOT that method); V RoS-KD without weight
averaging (teacher weights drawn per step, ``teacher_sampling: random``, or per example,
``random_per_example``, or by confidence, ``confidence``; ``weight_draw: normalised``
(Dirichlet(1)) or ``exponential`` (Eq. 4's Exp(1) draws as drawn)); ``ros_kd``: V with smooth
weight averaging from epoch ``averaging_start`` (the averaged student, BatchNorm
re-estimated, is the one selected and reported; the raw student's scores stand beside it as
``raw_*``). Subsets (``overlap_mode``): ``core`` (default), one core of patients common to
every subset, a fraction p of each, the rest split disjointly; ``circle``, each subset shares
p with its neighbours on a circle.

Studies (``--studies``): ``table1`` (precision, recall, F1, mean AUC per setting),
``overlap`` (RoS-KD at each ``overlap_study`` ratio, Fig. 3), ``students`` (III and RoS-KD
per ``student_study`` architecture, Fig. 2), ``folds`` (Table III: per-class AUC mean +- std
of RoS-KD over ``fold_seeds``, each seed its own patient-wise split, subsets and student),
``robustness`` (Table II: scores before/after FGSM and PGD of every Table I setting),
``noise`` (the settings at each ``noise_levels`` label noise of the phantom, scored on the
clean labels) and ``landscape`` (Fig. 4 for III and RoS-KD). Tables are built from finished
settings only; ``--resume RUN_DIR`` continues a run. tau = 0.5 < 1 SHARPENS the teachers'
distributions rather than softening them (the paper's choice). Multi-label data use the
sigmoid form of the loss, single-label data the softmax form of Eq. 4.

With no data given it runs on the phantom with :data:`PHANTOM_ROS` laid over the phantom
profile (Table I only: three small teachers on overlapping subsets, the 3-conv student,
3,000 films at 32 px, 6 epochs: minutes on two CPU cores); the paper's settings are
``--config recipes/ros_kd.yaml``. The run prints its plan first.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from chestkd.cli import main_of
from chestkd.evaluation import markdown_table
from chestkd.experiments.ros import teacher_names
from chestkd.experiments.ros_settings import (BASELINES, STUDIES, RosSettings, baselines,
                                              check_ros_config, studies)
from chestkd.experiments.ros_studies import run_studies
from chestkd.io import atomic_write_text
from chestkd.robustness.landscape import write_landscape
from chestkd.training.config import BASE_DEFAULTS, PHANTOM_DATASETS, resolve_config
from chestkd.training.run import start_run, write_json

PAPER_TEACHERS = ["resnet18", "resnet34", "resnet50", "mobilenet_v2", "densenet121"]
DEFAULTS = {
    **BASE_DEFAULTS, "model": None,
    "teachers": PAPER_TEACHERS, "student": "resnet18", "kd_teacher": "densenet121",
    "subsets": 5, "overlap": 0.4, "baselines": list(BASELINES), "studies": list(STUDIES),
    "teacher_sampling": "random",       # random (per step) | random_per_example | confidence
    # normalised: Dirichlet(1), alpha keeps its meaning and III's 1/K is the draw's mean;
    # exponential: Eq. 4's Exp(1) draws as drawn (the soft term ~K times larger on average)
    "weight_draw": "normalised",
    "confidence_temperature": 0.1,      # Baseline IV (and teacher_sampling: confidence)
    # losses: sum_k w_k KL(q_k, p), the paper's Eq. 4 (IV, V, RoS-KD); logits: one KL to the
    # weighted mean of the teachers' logits.
    "teacher_combine": "losses",
    "baseline_iii_combine": "losses",   # III: Eq. 4 with fixed weights 1/K | logits (mean)
    "baseline_iii_teachers": "subsets",  # III: RoS-KD's own teachers (Table II) | full
    "overlap_mode": "core",             # core: shared by all subsets | circle: neighbours
    "temperature": 0.5, "alpha": 0.9, "averaging_start": 10,
    "bn_batches": 50,                   # BatchNorm re-estimation of the average (None: all)
    "teacher_epochs": None, "step_epochs": [25, 40],
    "overlap_study": [0.0, 0.2, 0.4, 0.6, 1.0], "student_study": PAPER_TEACHERS,
    "fold_seeds": [0, 1, 2], "noise_levels": [0.0, 0.1, 0.2],
    "epsilon": 1.28 / 255, "attack_norm": "l2", "pgd_steps": 10, "robustness_images": 256,
    "landscape_images": 128, "landscape_resolution": 11,
}
# The recipe's phantom profile (laid over chestkd.training.config.PHANTOM_PROFILE, keys you
# set win): Table I only, K = 3 small teachers of different families, the 3-conv student, a
# phantom of 3,000 films at 32 px and 6 epochs (averaging after epoch 3), so the five baselines
# and RoS-KD finish in minutes on two CPU cores (benchmarks/RESULTS.md, "Every recipe's
# no-data default"). Not the paper's numbers: --config recipes/ros_kd.yaml has its settings.
PHANTOM_ROS = {"teachers": ["resnet32", "baseline_cnn", "conv3_student"], "subsets": 3,
               "kd_teacher": "resnet32", "student": "conv3_student",
               "image_size": 32, "phantom_size": 32, "phantom_images": 3000,
               "epochs": 6, "averaging_start": 3, "studies": ["table1"],
               "student_study": ["conv3_student", "baseline_cnn", "resnet32"]}
RECIPE_PROFILES = {"phantom": PHANTOM_ROS}
def write_table(run_dir, name, frame: pd.DataFrame, title: str) -> pd.DataFrame:
    frame.to_csv(run_dir / f"{name}.csv", index=False)
    shown = frame.drop(columns=[c for c in ("folder", "key") if c in frame])
    atomic_write_text(run_dir / f"{name}.md", f"# {title}\n\n{markdown_table(shown)}\n")
    print(f"\n{title}\n{markdown_table(shown)}")
    return frame


def plan(config: dict) -> str:
    """What the run will train, printed before anything is read or trained."""
    images = (f"the phantom, {config['phantom_images']} films written at "
              f"{config['phantom_size']} px" if config["dataset"] in PHANTOM_DATASETS
              and not config.get("data_dir") else f"{config['dataset']} from "
              f"{config.get('data_dir')}")
    k = int(config["subsets"])
    settings = {"I": "I the student alone (model store)",
                "II": f"II standard KD from {config['kd_teacher']} (full split)",
                "III": "III fixed weights 1/K", "IV": "IV confidence weights",
                "V": f"V random weights ({config['teacher_sampling']})"}
    chosen = [settings[b] for b in baselines(config)]
    return "\n".join([
        f"ros_kd plan ({config.get('profile') or 'no'} profile): {images}; "
        f"{config['image_size']} px, {config['epochs']} epochs per training, batch "
        f"{config['batch_size']}, {config['optimizer']} lr {config['learning_rate']:g}",
        f"  1. K = {k} teachers ({', '.join(teacher_names(config, k))}), each base-trained on "
        f"one of {k} overlapping patient subsets (overlap {float(config['overlap']):g}, "
        f"{config['overlap_mode']}; model store)",
        f"  2. student {config['student']}: " + "; ".join(chosen + [
            f"RoS-KD (V + weight averaging after epoch {config['averaging_start']})"]),
        f"  studies: {', '.join(studies(config))} (of {', '.join(STUDIES)})",
        "  the paper's settings: --config recipes/ros_kd.yaml"])


def demo_note(config: dict) -> str:
    """The tables' last caption line on the phantom profile: these are not the paper's
    numbers."""
    if config.get("profile") != "phantom":
        return ""
    return (f"\n\nA demo on the phantom ({config['phantom_images']} films at "
            f"{config['image_size']} px, {config['epochs']} epochs, small teachers and "
            f"student): it shows the recipe run, NOT the paper's numbers (those need "
            f"ChestX-ray14 and --config recipes/ros_kd.yaml).")


def run_once(config: dict) -> dict:
    check_ros_config(config)
    print(plan(config), flush=True)
    config["run_name"] = config.get("run_name") or f"ros_kd-{Path(str(config['student'])).stem}"
    run_dir = start_run(config, "ros_kd")
    print(f"run directory: {run_dir}")
    note = demo_note(config)

    def table(run_dir, name, frame, title):
        return write_table(run_dir, name, frame, title + note)

    def landscape(model, images, labels, folder, multi_label, title):
        write_landscape(model, images, labels, folder, multi_label=multi_label,
                        resolution=int(config["landscape_resolution"]), title=title)

    results = run_studies(RosSettings(config, run_dir), studies(config), table,
                          landscape=landscape)
    write_json(results, run_dir / "metrics.json")
    return results


def run(argv=None) -> dict:
    config = resolve_config(argv, DEFAULTS, __doc__, recipe_profiles=RECIPE_PROFILES)
    return run_once(config)


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
