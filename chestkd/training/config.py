"""Run configuration: defaults, YAML files, command-line options and ``key=value`` overrides.

Precedence, lowest first: the recipe's defaults, the phantom profile (only when the dataset is
the phantom and the key was not set anywhere), ``--config FILE.yaml``, ``--option value``
flags, trailing ``key=value`` pairs. Every key can be set in each of these places; an unknown key
is an error naming it. The resolved configuration is saved in the run directory.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import yaml

from chestkd.errors import ConfigError

# The papers' base-training settings (Ho & Gwak 2020): SGD, lr 0.1, momentum 0.9, weight decay
# 5e-4, 224x224 inputs in [-1, 1] with horizontal flips, 200 epochs.
BASE_DEFAULTS = {
    "recipe": None,                # set by the recipe; a YAML file may name the one it is for
    # data
    "dataset": "phantom",          # chestxray14 | chexpert | folder | phantom
    "data_dir": None,              # None with the phantom: generated into ~/.cache/chestkd
    "split": None,                 # chestxray14: official | patient (None: the loader's default)
    "views": None,                 # chestxray14: e.g. [PA] or [PA, AP]
    "labels": None,                # a subset of findings, e.g. the 8 ChestX-ray8 ones
    "uncertainty": "ones",         # chexpert: ones | zeros | ignore
    "frontal_only": True,          # chexpert
    "classes": None,               # folder: class folder names
    "patient_regex": None,         # folder: regex reading a patient id from the file name
    "balance": None,               # folder: undersample | oversample
    "skip_bad_images": False,      # skip and report unreadable images instead of stopping
    "check_images": True,          # decode every image once before training
    "phantom_images": 1000,
    "phantom_size": 256,
    "cache_dir": None,             # a folder written by `python -m chestkd.data prepare`
    "image_size": 224,
    "normalization": "minus_one_one",  # minus_one_one | zero_one | imagenet | mean_std
    "mean_std": None,              # mean_std: (mean, std); None: estimated on the train split
    "batch_size": 32,
    "seed": 0,
    # model
    "model": "densenet121",
    "weights": None,               # imagenet | None | path to a weights file
    # optimisation
    "optimizer": "sgd",            # sgd | adam | adamw
    "learning_rate": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,          # Keras applies it decoupled and scaled by the learning rate
    "schedule": "step",            # constant | step | cosine | plateau
    "epochs": 200,
    "mixed_precision": False,
    "distribute": "auto",          # auto (all GPUs) | none | mirrored
    # run bookkeeping
    "out": "runs",
    "run_name": None,
    "resume": None,                # a run directory to continue after an interruption
    "latency_images": 32,
    "saliency": True,              # write saliency figures when the run has boxes
}

# What runs when no data is given: a small phantom and a small model, so the whole job finishes
# in minutes on two CPU cores. Applies only to keys the user did not set.
PHANTOM_PROFILE = {
    "model": "resnet32",
    "image_size": 128,             # the phantom's own size: no resizing
    "phantom_size": 128,
    "phantom_images": 3000,
    "batch_size": 32,
    "epochs": 15,
    "optimizer": "adam",           # SGD 0.1 needs far more steps than a few minutes allow
    "learning_rate": 0.001,
    "schedule": "cosine",
    "teacher": "resnet32",         # KD recipes: a deeper teacher ...
    "student": "conv3_student",    # ... and a small student
}

KD_DEFAULTS = {
    "teacher": "resnet152",        # a model name or a .keras checkpoint
    "student": "mobilenet_v2",
    "kd_loss": "sigmoid",          # hinton | ho2020_eq5 | ho2020_eq8 | sigmoid
    "temperature": 4.0,
    "alpha": 0.9,
    "teacher_outputs": "cached",   # cached | online
    "teacher_epochs": None,        # None: as many as the student (defective KD: a fraction)
    "defective_fraction": 0.25,    # defective KD: 50 of 200 epochs in the paper
    "teachers_dir": None,          # where trained teachers are kept and reused (default: out/teachers)
}


def _parse_value(text: str):
    """Read a command-line value as YAML so numbers, booleans, null and lists work."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_yaml(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--config {path}: file not found")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {path}: not valid YAML ({error})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option: value")
    return loaded


def _check_keys(values: dict, known: dict, where: str) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; known options: "
                          f"{', '.join(sorted(known))}")


def build_parser(defaults: dict, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML file of options (any option below)")
    for key in defaults:
        parser.add_argument("--" + key.replace("_", "-"), dest=key, type=_parse_value,
                            default=argparse.SUPPRESS,
                            help=f"(default: {defaults[key]!r})")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="further options as key=value")
    return parser


def resolve_config(argv, defaults: dict, description: str = "") -> dict:
    """Merge defaults, the phantom profile, a YAML file, flags and key=value pairs."""
    args = vars(build_parser(defaults, description).parse_intermixed_args(argv))
    config_file = args.pop("config", None)
    overrides = args.pop("overrides", [])
    given = {}
    if config_file:
        from_file = load_yaml(config_file)
        _check_keys(from_file, defaults, f"--config {config_file}")
        given.update(from_file)
    given.update(args)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        _check_keys({key: None}, defaults, f"override {item!r}")
        given[key] = _parse_value(value)
    config = copy.deepcopy(defaults)
    if given.get("dataset", config["dataset"]) == "phantom":
        config.update({k: v for k, v in PHANTOM_PROFILE.items() if k in config})
    config.update(given)
    if config_file:
        config["config_file"] = str(config_file)
    return config


def dataset_options(config: dict) -> dict:
    """Keyword arguments for ``chestkd.data.load_dataset`` from a run configuration."""
    name = config["dataset"]
    common = {"skip_bad_images": config["skip_bad_images"]}
    if name in ("chestxray14", "phantom"):
        options = {"views": config["views"], "labels": config["labels"], "seed": config["seed"]}
        if config["split"]:
            options["split"] = config["split"]
        if name == "phantom":
            options.update(images=config["phantom_images"], size=config["phantom_size"])
        return {**common, **options}
    if name == "chexpert":
        return {**common, "uncertainty": config["uncertainty"],
                "frontal_only": config["frontal_only"], "labels": config["labels"]}
    if name == "folder":
        return {**common, "classes": config["classes"], "patient_regex": config["patient_regex"],
                "balance": config["balance"], "seed": config["seed"]}
    raise ConfigError(f"--dataset {name!r}: unknown; choose chestxray14, chexpert, folder or phantom")


_CHOICES = {
    "dataset": ("chestxray14", "chexpert", "folder", "phantom"),
    "normalization": ("minus_one_one", "zero_one", "imagenet", "mean_std"),
    "optimizer": ("sgd", "adam", "adamw"),
    "schedule": ("constant", "step", "cosine", "plateau"),
    "distribute": ("auto", "none", "mirrored"),
    "teacher_outputs": ("cached", "online"),
    "kd_loss": ("hinton", "ho2020_eq5", "ho2020_eq8", "sigmoid"),
    "uncertainty": ("ones", "zeros", "ignore"),
}


def check_config(config: dict) -> None:
    """Fail fast, before any data is read or any folder made, on a value that cannot work."""
    for key, choices in _CHOICES.items():
        if key in config and config[key] not in choices:
            raise ConfigError(f"--{key.replace('_', '-')} {config[key]!r}: choose one of "
                              f"{', '.join(choices)}")
    for key in ("epochs", "batch_size", "image_size"):
        if not isinstance(config.get(key), int) or config[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} {config.get(key)!r}: must be a "
                              "positive integer")
    from chestkd.models import get_spec
    for key in ("model", "teacher", "student"):
        name = config.get(key)
        if name is None:
            continue
        if str(name).endswith(".keras"):
            if not Path(name).exists():
                raise ConfigError(f"--{key} {name}: model file not found")
        else:
            try:
                get_spec(name)
            except ConfigError as error:
                raise ConfigError(f"--{key} {name!r}: {error}") from None
    if config.get("data_dir") is not None and not Path(config["data_dir"]).is_dir():
        raise ConfigError(f"--data-dir {config['data_dir']}: no such folder")


def save_config(config: dict, path) -> None:
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
