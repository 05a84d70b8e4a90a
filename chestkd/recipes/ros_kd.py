"""RoS-KD (Jaiswal et al. 2022) and its baselines on the same teachers, student and data.

    python -m chestkd.recipes.ros_kd [--config recipes/ros_kd.yaml] [--teachers A,B,...]
        [--student NAME] [--subsets K] [--overlap P] [--baselines I,II,III,IV,V|none]
        [--studies table1,overlap,students,folds,robustness,noise,landscape]
        [--temperature 0.5] [--alpha 0.9] [--averaging-start 10] [base-training options]

K teachers, each base-trained on one of K overlapping patient subsets, teach one student with
random per-step teacher weights and weight averaging; Baselines I-V train the same student
from the same teachers. Each setting trains once into ``RUN_DIR/settings``; each study writes a
table from the finished settings (``--resume RUN_DIR`` continues a run). With no data given it
runs a small Table I on the phantom (:data:`PHANTOM_ROS`); the paper's settings are
``--config recipes/ros_kd.yaml``. Settings, studies and fidelity notes: docs/ros_kd.md.
"""
from __future__ import annotations

from pathlib import Path

from chestkd.experiments.ros_settings import (BASELINES, STUDIES, RosSettings, demo_note, plan,
                                              ros_options)
from chestkd.experiments.repeat import recipe_entry
from chestkd.experiments.ros_studies import landscape_writer, run_studies, table_writer
from chestkd.training.config import BASE_DEFAULTS
from chestkd.training.options import run_options
from chestkd.training.run import open_run, write_json

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


def checked_plan(config: dict) -> str:
    ros_options(config)  # every option and model name, before anything is read
    return plan(config)


def run_once(config: dict) -> dict:
    name = config.get("run_name") or f"ros_kd-{Path(str(config['student'])).stem}"
    run_dir, options = open_run(run_options({**config, "run_name": name}), "ros_kd")
    print(f"run directory: {run_dir}")
    # The settings (teachers on their subsets, Baselines I-V, RoS-KD) train as the studies ask
    # for them; each study writes its table (the demo's caveat ending every caption).
    settings = RosSettings(options, run_dir)
    results = run_studies(settings, settings.ros.studies, table_writer(demo_note(options.config)),
                          landscape=landscape_writer(settings.ros.landscape_resolution))
    write_json(results, run_dir / "metrics.json")
    return {**results, "run_dir": str(run_dir)}


run, main = recipe_entry(run_once, DEFAULTS, __doc__, plan=checked_plan,
                         recipe_profiles=RECIPE_PROFILES)

if __name__ == "__main__":
    raise SystemExit(main())
