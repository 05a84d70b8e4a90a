"""The settings of a RoS-KD run and their checks: which baselines and studies exist, what
each setting is called, the run's printed :func:`plan` and :func:`demo_note`, and
:class:`RosSettings`, which trains and scores each setting once.

The recipe (:mod:`chestkd.recipes.ros_kd`) builds one from its configuration;
:func:`chestkd.experiments.ros_studies.run_studies` turns its rows into tables.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from chestkd.cli import config_number, list_option
from chestkd.data.splits import OVERLAP_MODES
from chestkd.distill.teacher_mixing import (RANDOM_SAMPLING, TEACHER_COMBINE, TEACHER_SAMPLING,
                                            WEIGHT_DRAWS, check_temperature, check_weight_draw)
from chestkd.errors import ConfigError
from chestkd.experiments.kd import evaluate_once
from chestkd.experiments.repeat import data_in_plan
from chestkd.experiments.ros import (distil_setting, logit_tables, macro_scores,
                                     obtain_teachers, ros_store, teacher_names)
from chestkd.experiments.store import MODEL_KEYS, obtain_model
from chestkd.io import atomic_copy
from chestkd.models import get_spec
from chestkd.training.config import config_id, save_config
from chestkd.training.classifier import prepare_run_data
from chestkd.training.options import RunOptions, as_options
from chestkd.training.run import Stages, load_model, write_json

__all__ = ["BASELINES", "LABELS", "STUDIES", "RosOptions", "RosSettings", "baselines",
           "check_ros_config", "demo_note", "plan", "ros_options", "studies"]

BASELINES = ("I", "II", "III", "IV", "V")
STUDIES = ("table1", "overlap", "students", "folds", "robustness", "noise", "landscape")
LABELS = {"I": "Baseline I (student alone)", "II": "Baseline II (KD, one teacher)",
          "III": "Baseline III (equal fixed weights)",
          "IV": "Baseline IV (confidence weights; not the paper's RL)",
          "V": "Baseline V (RoS-KD without averaging)", "ros_kd": "RoS-KD"}


def option_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def baselines(config: dict) -> list[str]:
    """The run's baselines (``none``: no baseline)."""
    return list_option(config["baselines"], "--baselines", allowed=BASELINES, empty=True)


def studies(config: dict) -> list[str]:
    return list_option(config["studies"], "--studies", allowed=STUDIES)


def check_ros_config(config: dict) -> None:
    for key in ("teachers", "student_study"):
        for name in list_option(config[key], option_name(key), empty=True):
            if not name.endswith(".keras"):
                get_spec(name)
    for key in ("student", "kd_teacher"):
        get_spec(config[key]) if not str(config[key]).endswith(".keras") else None
    # Every sampling but Baseline III's fixed weights (its own options choose those).
    choices = {"teacher_sampling": tuple(s for s in TEACHER_SAMPLING if s != "fixed"),
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
        check_temperature(config_number(config, "confidence_temperature"))
    except ConfigError as error:
        raise ConfigError(f"ros_kd options: {error}") from None
    config_number(config, "subsets", cast=int, low=1)
    config_number(config, "overlap", low=0.0, high=1.0)
    for p in list_option(config["overlap_study"], option_name("overlap_study"), cast=float,
                         empty=True):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"--overlap-study: overlap {p!r}: a ratio in [0, 1]")
    baselines(config)
    studies(config)


@dataclass(frozen=True)
class RosOptions:
    """What the RoS-KD recipe adds to a run's options, parsed and checked once
    (:func:`ros_options`): list options as tuples, numbers as numbers."""
    teachers: tuple
    student: str
    kd_teacher: str
    subsets: int
    overlap: float
    overlap_mode: str
    baselines: tuple
    studies: tuple
    teacher_sampling: str
    weight_draw: str
    confidence_temperature: float
    teacher_combine: str
    baseline_iii_combine: str
    baseline_iii_teachers: str
    averaging_start: int
    bn_batches: int | None
    overlap_study: tuple
    student_study: tuple
    fold_seeds: tuple
    noise_levels: tuple
    epsilon: float
    attack_norm: str
    pgd_steps: int
    robustness_images: int | None
    landscape_images: int
    landscape_resolution: int


def ros_options(config) -> RosOptions:
    """The RoS-KD options of a resolved configuration, after :func:`check_ros_config`."""
    check_ros_config(config)

    def listed(key, cast=str):
        return tuple(list_option(config[key], option_name(key), cast=cast, empty=True))
    optional = {k: None if config.get(k) is None else config_number(config, k, cast=int, low=1)
                for k in ("bn_batches", "robustness_images")}
    return RosOptions(
        teachers=tuple(list_option(config["teachers"], "--teachers")),
        student=str(config["student"]), kd_teacher=str(config["kd_teacher"]),
        subsets=config_number(config, "subsets", cast=int, low=1),
        overlap=float(config_number(config, "overlap", low=0.0, high=1.0)),
        overlap_mode=config["overlap_mode"], baselines=tuple(baselines(config)),
        studies=tuple(studies(config)), teacher_sampling=config["teacher_sampling"],
        weight_draw=config["weight_draw"],
        confidence_temperature=float(config_number(config, "confidence_temperature", low=0.0,
                                                   low_open=True)),
        teacher_combine=config["teacher_combine"],
        baseline_iii_combine=config["baseline_iii_combine"],
        baseline_iii_teachers=config["baseline_iii_teachers"],
        averaging_start=config_number(config, "averaging_start", cast=int, low=0), **optional,
        overlap_study=listed("overlap_study", float), student_study=listed("student_study"),
        fold_seeds=listed("fold_seeds", int), noise_levels=listed("noise_levels", float),
        epsilon=float(config_number(config, "epsilon", low=0.0)),
        attack_norm=config["attack_norm"],
        pgd_steps=config_number(config, "pgd_steps", cast=int, low=1),
        landscape_images=config_number(config, "landscape_images", cast=int, low=1),
        landscape_resolution=config_number(config, "landscape_resolution", cast=int, low=2))


def plan(config: dict) -> str:
    """What the run will train, printed before anything is read or trained."""
    images = data_in_plan(config)
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
        f"  1. K = {k} teachers ({', '.join(teacher_names(config['teachers'], k))}), each "
        f"base-trained on "
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


class RosSettings:
    """The settings of one RoS-KD run (Baselines I-V, RoS-KD; each at a student, overlap,
    label noise and seed), each trained at most once, in folders under ``run_dir/settings``.
    :func:`chestkd.experiments.ros_studies.run_studies` asks it for the rows of every study."""

    def __init__(self, options: RunOptions, run_dir: Path):
        self.options = as_options(options)
        self.ros = ros_options(self.options.config)
        self.run_dir, self._data = run_dir, {}

    def data(self, noise, seed):
        """The data at label noise ``noise`` and seed ``seed`` (read once)."""
        key = (float(noise), int(seed))
        if key not in self._data:
            own = key == (float(self.options.config.get("label_noise") or 0.0),
                          self.options.seed)
            # Only the run's own setting goes into its config.yaml: a study's other noise or
            # seed recorded there would make --resume continue another experiment.
            self._data[key], _ = prepare_run_data(self.variant(*key), self.run_dir,
                                                  record=own)
        return self._data[key]

    def variant(self, noise, seed) -> RunOptions:
        """The run's options at label noise ``noise`` and seed ``seed``."""
        return self.options.replace(label_noise=float(noise), seed=int(seed))

    def folder(self, name, student, overlap, noise, seed) -> Path:
        k = self.ros.subsets
        subset = "" if float(overlap) >= 1.0 and name in ("I", "II", "III") else \
            f"-k{k}-p{float(overlap):g}"
        return (self.run_dir / "settings" /
                f"{name}-{Path(str(student)).stem}{subset}-noise{float(noise):g}-seed{seed}")

    def setting(self, name, *, student=None, overlap=None, noise=None, seed=None) -> dict:
        """The finished setting's row (training and evaluating it first if needed)."""
        ros = self.ros
        student = student or ros.student
        overlap = float(ros.overlap if overlap is None else overlap)
        noise = float(self.options.config.get("label_noise") or 0.0) if noise is None \
            else float(noise)
        seed = int(self.options.seed if seed is None else seed)
        if name in ("I", "II") or (name == "III" and ros.baseline_iii_teachers == "full"):
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
        options, data = self.variant(noise, seed), self.data(noise, seed)
        model, source = obtain_model(options.replace(teachers_dir=str(ros_store(options, "full"))),
                                     data, student)
        source_model = Path(source) / "model.keras" if Path(source).is_dir() else Path(source)
        if not (folder / "model.keras").exists():
            atomic_copy(source_model, folder / "model.keras")
        write_json({"setting": "I", "model": str(source_model), "source": str(source)},
                   folder / "setting.json")
        return model

    def _train_and_evaluate(self, name, folder, student, overlap, noise, seed):
        options, data, ros = self.variant(noise, seed), self.data(noise, seed), self.ros
        folder.mkdir(parents=True, exist_ok=True)
        # Its own configuration: `python -m chestkd.robustness FOLDER` (and landscape) work on
        # a setting as on any run.
        save_config({**options.config, "run_dir": str(folder), "setting": name,
                     "student": student, "model": student}, folder / "config.yaml")
        print(f"\n=== {LABELS[name]}: {student}, p={overlap:g}, noise={noise:g}, seed={seed} ===")
        if name == "I":
            model = self._baseline_student(folder, student, noise, seed)
        else:
            names = [ros.kd_teacher] if name == "II" else teacher_names(ros.teachers,
                                                                        ros.subsets)
            p = 1.0 if name == "II" else overlap
            teachers = obtain_teachers(options, data, names, overlap=p, seed=seed,
                                       overlap_mode=ros.overlap_mode)
            # A table belongs to its teachers (store entries name their subset) and the data.
            tag = {"teachers": [str(source) for _, source in teachers],
                   "data": config_id(options.config, keys=MODEL_KEYS)}
            tables = logit_tables(options, data, teachers,
                                  self.run_dir / "teacher_tables" / config_id(tag))
            sampling = {"II": "fixed", "III": "fixed", "IV": "confidence"}.get(
                name, ros.teacher_sampling)
            combine = {"II": "logits", "III": ros.baseline_iii_combine}.get(
                name, ros.teacher_combine)
            draw = ros.weight_draw if sampling in RANDOM_SAMPLING else "normalised"
            model = distil_setting(
                options, folder, data, tables, student, sampling=sampling, combine=combine,
                weight_draw=draw, confidence_temperature=ros.confidence_temperature,
                averaging_start=ros.averaging_start if name == "ros_kd" else None,
                bn_batches=ros.bn_batches, seed=seed)
            write_json({"setting": name, "teachers": [str(s) for _, s in teachers],
                        "overlap": p, "overlap_mode": ros.overlap_mode,
                        "sampling": sampling, "combine": combine, "weight_draw": draw,
                        "model": str(folder / "model.keras")}, folder / "setting.json")
            if name == "ros_kd" and (folder / "raw_model.keras").exists():
                evaluate_once(load_model(folder / "raw_model.keras"), data, options, folder,
                              prefix="raw_", stage="raw_evaluation", model_name=student)
        evaluate_once(model, data, options, folder, model_name=student)

    def row(self, name, folder, **info) -> dict:
        metrics = json.loads((folder / "metrics.json").read_text())
        row = {"setting": LABELS[name], "key": name, **info, **macro_scores(folder),
               "mean_auc": metrics["mean_auc"], "folder": str(folder)}
        if (folder / "raw_metrics.json").exists():
            raw = json.loads((folder / "raw_metrics.json").read_text())
            row.update({f"raw_{k}": v for k, v in macro_scores(folder, "raw_").items()},
                       raw_mean_auc=raw["mean_auc"])
        return row

