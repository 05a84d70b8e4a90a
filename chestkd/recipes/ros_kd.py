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

import json
import shutil
from pathlib import Path

import pandas as pd

from chestkd.cli import main_of
from chestkd.data.splits import OVERLAP_MODES
from chestkd.distill.teacher_mixing import (TEACHER_COMBINE, WEIGHT_DRAWS, check_temperature,
                                            check_weight_draw)
from chestkd.errors import ConfigError
from chestkd.evaluation import markdown_table
from chestkd.experiments.kd import evaluate_once
from chestkd.experiments.ros import (distil_setting, logit_tables, macro_scores,
                                     obtain_teachers, ros_store, teacher_names)
from chestkd.experiments.ros_studies import run_studies
from chestkd.experiments.store import MODEL_KEYS, obtain_model
from chestkd.io import atomic_write_text
from chestkd.robustness.landscape import write_landscape
from chestkd.models import get_spec
from chestkd.training.config import (BASE_DEFAULTS, PHANTOM_DATASETS, config_id,
                                     resolve_config, save_config)
from chestkd.training.experiment import load_run_data
from chestkd.training.run import Stages, load_model, start_run, write_json

BASELINES = ("I", "II", "III", "IV", "V")
STUDIES = ("table1", "overlap", "students", "folds", "robustness", "noise", "landscape")
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
LABELS = {"I": "Baseline I (student alone)", "II": "Baseline II (KD, one teacher)",
          "III": "Baseline III (equal fixed weights)",
          "IV": "Baseline IV (confidence weights; not the paper's RL)",
          "V": "Baseline V (RoS-KD without averaging)", "ros_kd": "RoS-KD"}


def _listed(config, key, allowed=None, cast=str, empty=False) -> list:
    value = config[key]
    items = value.split(",") if isinstance(value, str) else list(value or [])
    items = [cast(str(i).strip()) for i in items if str(i).strip() not in ("", "none")]
    if allowed is not None and ((not items and not empty) or set(items) - set(allowed)):
        raise ConfigError(f"--{key.replace('_', '-')} {value!r}: choose from {list(allowed)}")
    return items


def check_ros_config(config: dict) -> None:
    for key in ("teachers", "student_study"):
        for name in _listed(config, key):
            if not name.endswith(".keras"):
                get_spec(name)
    for key in ("student", "kd_teacher"):
        get_spec(config[key]) if not str(config[key]).endswith(".keras") else None
    choices = {"teacher_sampling": ("random", "random_per_example", "confidence"),
               "teacher_combine": TEACHER_COMBINE, "baseline_iii_combine": TEACHER_COMBINE,
               "weight_draw": WEIGHT_DRAWS, "overlap_mode": OVERLAP_MODES,
               "baseline_iii_teachers": ("subsets", "full")}
    for key, allowed in choices.items():
        if config[key] not in allowed:
            raise ConfigError(f"--{key.replace('_', '-')} {config[key]!r}: choose one of "
                              f"{list(allowed)}")
    try:
        check_weight_draw(config["weight_draw"], config["teacher_sampling"],
                          config["teacher_combine"])
        check_temperature(config["confidence_temperature"])
    except ConfigError as error:
        raise ConfigError(f"ros_kd options: {error}") from None
    if not isinstance(config["subsets"], int) or config["subsets"] < 1:
        raise ConfigError(f"--subsets {config['subsets']!r}: a positive integer")
    for p in [config["overlap"], *_listed(config, "overlap_study", cast=float)]:
        if not 0.0 <= float(p) <= 1.0:
            raise ConfigError(f"overlap {p!r}: a ratio in [0, 1]")
    _listed(config, "baselines", BASELINES, empty=True)
    _listed(config, "studies", STUDIES)


class Experiment:
    """The settings of one RoS-KD run, each trained at most once (folders under the run)."""

    def __init__(self, config: dict, run_dir: Path):
        self.config, self.run_dir, self._data = config, run_dir, {}

    def data(self, noise, seed):
        key = (float(noise), int(seed))
        if key not in self._data:
            self._data[key] = load_run_data(self.variant(noise, seed), self.run_dir)
        return self._data[key]

    def variant(self, noise, seed) -> dict:
        return {**self.config, "label_noise": float(noise), "seed": int(seed)}

    def folder(self, name, student, overlap, noise, seed) -> Path:
        k = int(self.config["subsets"])
        subset = "" if float(overlap) >= 1.0 and name in ("I", "II", "III") else \
            f"-k{k}-p{float(overlap):g}"
        return (self.run_dir / "settings" /
                f"{name}-{Path(str(student)).stem}{subset}-noise{float(noise):g}-seed{seed}")

    def setting(self, name, *, student=None, overlap=None, noise=None, seed=None) -> dict:
        """The finished setting's row (training and evaluating it first if needed)."""
        config = self.config
        student = student or config["student"]
        overlap = float(config["overlap"] if overlap is None else overlap)
        noise = float(config.get("label_noise") or 0.0) if noise is None else float(noise)
        seed = int(config["seed"] if seed is None else seed)
        if name in ("I", "II") or (name == "III" and
                                   config["baseline_iii_teachers"] == "full"):
            overlap = 1.0     # the full training split
        folder = self.folder(name, student, overlap, noise, seed)
        if not Stages(folder).done("evaluation"):
            self._train_and_evaluate(name, folder, student, overlap, noise, seed)
        elif name == "I" and not (folder / "model.keras").exists():
            # A Baseline I folder from before its model was copied in: fetch it from the store.
            self._baseline_student(folder, student, noise, seed)
        return self.row(name, folder, student=student, overlap=overlap, noise=noise, seed=seed)

    def _baseline_student(self, folder, student, noise, seed):
        """Baseline I: the student alone from the model store, its model copied into the
        setting folder (so every study and ``python -m chestkd.robustness FOLDER`` find it)
        and named in ``setting.json``."""
        config, data = self.variant(noise, seed), self.data(noise, seed)
        model, source = obtain_model({**config, "teachers_dir": str(ros_store(config, "full"))},
                                     data, student)
        source_model = Path(source) / "model.keras" if Path(source).is_dir() else Path(source)
        if not (folder / "model.keras").exists():
            shutil.copy2(source_model, folder / "model.keras")
        write_json({"setting": "I", "model": str(source_model), "source": str(source)},
                   folder / "setting.json")
        return model

    def _train_and_evaluate(self, name, folder, student, overlap, noise, seed):
        config, data = self.variant(noise, seed), self.data(noise, seed)
        folder.mkdir(parents=True, exist_ok=True)
        # Its own configuration: `python -m chestkd.robustness FOLDER` (and landscape) work on
        # a setting as on any run.
        save_config({**config, "run_dir": str(folder), "setting": name, "student": student,
                     "model": student}, folder / "config.yaml")
        print(f"\n=== {LABELS[name]}: {student}, p={overlap:g}, noise={noise:g}, seed={seed} ===")
        if name == "I":
            model = self._baseline_student(folder, student, noise, seed)
        else:
            k = int(config["subsets"])
            names = [config["kd_teacher"]] if name == "II" else teacher_names(config, k)
            p = 1.0 if name == "II" else overlap
            teachers = obtain_teachers(config, data, names, overlap=p, seed=seed)
            # A table belongs to its teachers (store entries name their subset) and the data.
            tag = {"teachers": [str(source) for _, source in teachers],
                   "data": config_id(config, keys=MODEL_KEYS)}
            tables = logit_tables(config, data, teachers,
                                  self.run_dir / "teacher_tables" / config_id(tag))
            sampling = {"II": "fixed", "III": "fixed", "IV": "confidence"}.get(
                name, config["teacher_sampling"])
            combine = {"II": "logits", "III": config["baseline_iii_combine"]}.get(
                name, config["teacher_combine"])
            draw = config["weight_draw"] if sampling in ("random", "random_per_example") \
                else "normalised"
            model = distil_setting(config, folder, data, tables, student, sampling=sampling,
                                   combine=combine, weight_draw=draw,
                                   averaging=name == "ros_kd", seed=seed)
            write_json({"setting": name, "teachers": [str(s) for _, s in teachers],
                        "overlap": p, "overlap_mode": config["overlap_mode"],
                        "sampling": sampling, "combine": combine, "weight_draw": draw,
                        "model": str(folder / "model.keras")}, folder / "setting.json")
            if name == "ros_kd" and (folder / "raw_model.keras").exists():
                evaluate_once(load_model(folder / "raw_model.keras"), data, config, folder,
                              prefix="raw_", stage="raw_evaluation", model_name=student)
        evaluate_once(model, data, config, folder, model_name=student)

    def row(self, name, folder, **info) -> dict:
        metrics = json.loads((folder / "metrics.json").read_text())
        row = {"setting": LABELS[name], "key": name, **info, **macro_scores(folder),
               "mean_auc": metrics["mean_auc"], "folder": str(folder)}
        if (folder / "raw_metrics.json").exists():
            raw = json.loads((folder / "raw_metrics.json").read_text())
            row.update({f"raw_{k}": v for k, v in macro_scores(folder, "raw_").items()},
                       raw_mean_auc=raw["mean_auc"])
        return row


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
    chosen = [settings[b] for b in _listed(config, "baselines", BASELINES, empty=True)]
    return "\n".join([
        f"ros_kd plan ({config.get('profile') or 'no'} profile): {images}; "
        f"{config['image_size']} px, {config['epochs']} epochs per training, batch "
        f"{config['batch_size']}, {config['optimizer']} lr {config['learning_rate']:g}",
        f"  1. K = {k} teachers ({', '.join(teacher_names(config, k))}), each base-trained on "
        f"one of {k} overlapping patient subsets (overlap {float(config['overlap']):g}, "
        f"{config['overlap_mode']}; model store)",
        f"  2. student {config['student']}: " + "; ".join(chosen + [
            f"RoS-KD (V + weight averaging after epoch {config['averaging_start']})"]),
        f"  studies: {', '.join(_listed(config, 'studies', STUDIES))} (of {', '.join(STUDIES)})",
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

    results = run_studies(Experiment(config, run_dir), _listed(config, "studies", STUDIES),
                          table, landscape=landscape)
    write_json(results, run_dir / "metrics.json")
    return results


def run(argv=None) -> dict:
    config = resolve_config(argv, DEFAULTS, __doc__, recipe_profiles=RECIPE_PROFILES)
    return run_once(config)


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
