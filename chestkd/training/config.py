"""Run configuration: defaults, YAML files, command-line options and ``key=value`` overrides.

Precedence, lowest first: the recipe's defaults, a profile (:data:`PROFILES`, for the keys not
set anywhere: ``--profile NAME``; by default ``phantom`` on the phantoms and ``small-real`` on
real data with fewer than :data:`SMALL_REAL_MAX_TRAIN_IMAGES` training images, the latter
chosen once the data is loaded, with a printed line), ``--config FILE.yaml``, ``--option value``
flags, trailing ``key=value`` pairs. Every key can be set in each of these places; an unknown key
is an error naming it. The resolved configuration is saved in the run directory.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
from pathlib import Path

import yaml

from chestkd.cli import list_option, number_option
from chestkd.data import LOADERS
from chestkd.data.balance import BALANCE_MODES
from chestkd.errors import ConfigError

# The papers' base-training settings (Ho & Gwak 2020): SGD, lr 0.1, momentum 0.9, weight decay
# 5e-4, 224x224 inputs in [-1, 1] with horizontal flips, 200 epochs.
BASE_DEFAULTS = {
    "recipe": None,                # set by the recipe; a YAML file may name the one it is for
    # data
    # chestxray14 | chexpert | folder | csv | phantom | pneumonia_phantom
    "dataset": "phantom",
    "data_dir": None,              # None with a phantom: generated into ~/.cache/chestkd
    "split": None,                 # chestxray14: official | patient (None: the loader's default)
    "views": None,                 # chestxray14: e.g. [PA] or [PA, AP]
    "labels": None,                # a subset of findings, e.g. the 8 ChestX-ray8 ones
    "uncertainty": "ones",         # chexpert: ones | zeros | ignore
    "frontal_only": True,          # chexpert
    # folder: class folder names; csv: class names; pneumonia_phantom: [normal, pneumonia,
    # covid19] (default) or two of them, e.g. [normal, pneumonia]
    "classes": None,
    "patient_regex": None,         # folder: regex reading a patient id from the file name (kermany)
    # folder with a val folder: auto (carve from train when val holds < 5% of the images,
    # as the pediatric set's 16) | official | carve
    "val_split": "auto",
    "balance": None,               # single-label: undersample | oversample | both (train split)
    # csv: a table of images (e.g. the COVID-19 image data collection's metadata.csv)
    "csv": None,                   # the CSV file, relative to data_dir
    "image_dir": None,             # folder of the images, relative to data_dir (None: data_dir)
    "image_column": "filename",    # column with the image file name or relative path
    "label_column": None,          # column with a class name or a |-separated list of them
    "label_columns": None,         # or: one 0/1 column per class, e.g. [NORMAL, PNEUMONIA]
    "patient_column": None,        # column with the patient id (None: each image its own)
    "label_map": None,             # e.g. {Pneumonia/Viral/COVID-19: COVID-19}; map to null to drop
    "filters": None,               # keep rows by column values, e.g. {view: [PA, AP]}
    "split_column": None,          # column with train/val/test (None: a seeded patient split)
    "skip_bad_images": False,      # skip and report unreadable images (and bad csv rows)
    # all: every image the metadata lists must be on disk (absent ones: an error saying how
    # many, or skipped with skip_bad_images) | present: use the images on disk (a partial
    # download); the split lists, the patient split and the boxes are restricted to them
    "images": "all",
    "check_images": True,          # decode every image once before training (not with cache_dir)
    "label_noise": 0.0,            # phantom: fraction of wrong labels (clean labels kept)
    "phantom_images": 1000,        # phantom and pneumonia_phantom: images written
    "phantom_size": 256,
    "cache_dir": None,             # a folder written by `python -m chestkd.data prepare`
    "image_size": 224,
    "normalization": "minus_one_one",  # minus_one_one | zero_one | imagenet | mean_std
    # training-split augmentation: flip | light | strong (ranges in chestkd.data.augment);
    # None: light for folder and csv data, flip (the papers') otherwise; resolved in the run
    "augment": None,
    "mean_std": None,              # mean_std: (mean, std); None: estimated on the train split
    "batch_size": 32,
    "seed": 0,
    # model
    "model": "densenet121",
    "weights": None,               # imagenet | None | path to a weights file
    # a named set of defaults for the keys not set anywhere (PROFILES): phantom | small-real |
    # papers (none: the papers' defaults); None: phantom on the phantoms, small-real on real
    # data with fewer than SMALL_REAL_MAX_TRAIN_IMAGES training images, else the papers'
    "profile": None,
    # which weights a run keeps as model.keras: best_val (the epoch of the best exact
    # validation mean AUC) | last (the fixed schedule's final epoch) | average (the mean of the
    # last third of the epochs' weights, BatchNorm re-estimated: SWA)
    "checkpoint": "best_val",
    # optimisation
    "optimizer": "sgd",            # sgd | adam | adamw
    "learning_rate": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    # coupled: PyTorch's L2 added to the gradient before momentum (the papers' 5e-4);
    # decoupled: Keras' own weight_decay, scaled by the learning rate (~10x weaker at 0.9)
    "weight_decay_mode": "coupled",
    "schedule": "step",            # constant | step | cosine | plateau
    "step_epochs": None,           # step: epochs after which lr x0.1, e.g. [25, 40]; None: 50 %, 75 %
    "epochs": 200,
    "mixed_precision": False,
    "jit_compile": "auto",         # auto (XLA on a GPU when the model allows it) | true | false
    "distribute": "auto",          # auto (all GPUs) | none | mirrored | multi_worker (TF_CONFIG)
    # run bookkeeping
    "out": "runs",
    "run_name": None,
    "resume": None,                # a run directory to continue after an interruption
    "seeds": None,                 # e.g. 0,1,2: run once per seed, then mean +- std
    "teachers_dir": None,          # the model store: trained models kept and reused (out/teachers)
    "threshold_rule": "youden",    # youden | f1: per-class decision thresholds, chosen on val
    "bootstrap": 1000,             # patient-wise bootstrap resamples for the 95% CIs (0: none)
    "latency_images": 32,
    "saliency": True,              # write saliency figures when the run has boxes
}

# What runs when no data is given: a small phantom and a small model, so the whole job finishes
# in minutes on two CPU cores. Applies only to keys the user did not set, to both phantoms
# (label noise to the 14-finding one only: the single-label phantom has none).
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
    "weight_decay_mode": "decoupled",  # as measured with this profile (Adam, Keras' decay)
    "label_noise": 0.1,            # like ChestX-ray14's NLP-mined labels (>90 % accurate)
}

# Real data with few training images (issue 16): measured on 469 real ChestX-ray14 images of
# 158 patients (benchmarks/real_data.py, patient-grouped 5-fold cross-validation; RESULTS.md):
# a small network at 32 px (what a CPU shared by many jobs could afford; the set is 64 px),
# Adam 1e-3 cosine (best on the tuning folds of the settings chestkd can express; class
# weighting did a little better there), light augmentation, and a FIXED schedule: a
# validation split of a few dozen images picks checkpoints on noise, so the run keeps the
# average of the last third of its epochs' weights (SWA). It matched, and did NOT beat,
# logistic regression on 32x32 pixels there; with internet prefer weights: imagenet.
SMALL_REAL_PROFILE = {
    "model": "conv3_student",
    "image_size": 32,
    "batch_size": 32,
    "epochs": 10,
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "weight_decay": 1e-4,
    "weight_decay_mode": "decoupled",
    "schedule": "cosine",
    "augment": "light",
    "checkpoint": "average",
    "teacher": "conv3_student",    # KD recipes: networks of the size that learns here
    "student": "conv3_student",
    "teacher_outputs": "online",   # a cached teacher table cannot follow light augmentation
}
# ... and with ``weights: imagenet`` (the setting to prefer online; not measurable offline):
# the ImageNet DenseNet-121 fine-tuned at its own input size with a 10x lower rate. Its own
# preprocessing is the model's ``input_adapter`` (chestkd.models.zoo).
SMALL_REAL_IMAGENET = {"model": "densenet121", "image_size": 224, "learning_rate": 3e-5,
                       "epochs": 15}
# Below this many training images a real-data run takes the small-real profile by itself
# (with a printed line); --profile papers keeps the papers' defaults.
SMALL_REAL_MAX_TRAIN_IMAGES = 2000
PROFILES = {"phantom": PHANTOM_PROFILE, "small-real": SMALL_REAL_PROFILE, "papers": {}}

PHANTOM_DATASETS = ("phantom", "pneumonia_phantom")
MULTI_LABEL_PHANTOM_ONLY = frozenset({"label_noise"})
# Datasets of real images with no augmentation of their own in the papers: they overfit, so
# `augment: None` means light augmentation for them (issue 10) and the papers' flip otherwise.
LIGHT_AUGMENT_DATASETS = ("folder", "csv")

KD_DEFAULTS = {
    "strategy": "standard",        # standard | reversed | defective (the KD recipe)
    "teacher": "resnet152",        # a model name or a .keras checkpoint
    "student": "mobilenet_v2",
    # hinton | ho2020_eq5 | ho2020_eq8 | sigmoid; None: follows the data (sigmoid for
    # multi-label findings, hinton for exclusive classes)
    "kd_loss": None,
    "temperature": 4.0,
    "alpha": 0.9,
    "teacher_outputs": "cached",   # cached | online
    "teacher_epochs": None,        # None: the student's schedule
    # defective KD: the teacher's checkpoint at this fraction of its full schedule (the
    # paper's "first 50 epochs" of 200 is 0.25)
    "defective_fraction": 0.25,
}

STRATEGIES = ("standard", "reversed", "defective")


class _OptionLoader(yaml.SafeLoader):
    """YAML as options are written: ``1e-3`` is a number (YAML 1.2), where PyYAML's YAML 1.1
    wants a dot (``1.0e-3``) and reads ``1e-3`` as text."""


_OptionLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _yaml(text: str):
    return yaml.load(text, Loader=_OptionLoader)  # a SafeLoader: no Python objects


def _parse_value(text: str):
    """Read a command-line value as YAML so numbers, booleans, null and lists work."""
    try:
        return _yaml(text)
    except yaml.YAMLError:
        return text


def _parse_bool(text: str) -> bool:
    value = _parse_value(text)
    if not isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def _read_yaml_mapping(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"--config {path}: file not found")
    if not path.is_file():
        raise ConfigError(f"--config {path}: not a file")
    try:
        loaded = _yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"--config {path}: not valid YAML ({error})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--config {path}: cannot be read as UTF-8 text ({error})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option: value")
    return loaded


def load_yaml(path, _seen=()) -> dict:
    """A YAML file of options; ``defaults: BASE.yaml`` (relative to the file, or a list of
    files) is read first and the file's own keys override it, so shared settings live once."""
    path = Path(path)
    loaded = _read_yaml_mapping(path)
    bases = loaded.pop("defaults", None)
    if bases is None:
        return loaded
    if not (isinstance(bases, str) or isinstance(bases, list)
            and all(isinstance(base, str) for base in bases)):
        raise ConfigError(f"--config {path}: 'defaults' must be a file name or a list of file "
                          f"names, got {bases!r}")
    merged = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        base_path = (path.parent / base).resolve()
        if base_path in _seen:
            raise ConfigError(f"--config {path}: 'defaults: {base}' includes itself")
        merged.update(load_yaml(base_path, (*_seen, path.resolve())))
    merged.update(loaded)
    return merged


# What a run adds to its config.yaml beside the options (open_run, resolve_config): given
# back with --config, they are not options and are recomputed.
RECORDED_KEYS = ("config_id", "run_dir", "config_file", "explicit_options")


def _check_keys(values: dict, known: dict, where: str) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; known options: "
                          f"{', '.join(sorted(known))}")


def build_parser(defaults: dict, description: str,
                 no_data: dict | None = None) -> argparse.ArgumentParser:
    """The command's parser; ``no_data``: the values the phantom profile gives when no data is
    named, shown beside the defaults they replace."""
    # No abbreviations: --epoch 3 read as --epochs 3, while epoch=3 is refused as unknown.
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of options (any option below)")
    for key, default in defaults.items():
        flag = "--" + key.replace("_", "-")
        shown = f"(default: {default!r}"
        if key in (no_data or {}) and no_data[key] != default:
            shown += f"; with no data, the phantom profile's {no_data[key]!r}"
        if isinstance(default, bool):
            # A boolean works bare (--skip-bad-images), negated (--no-saliency) or with a
            # value (--saliency false); key=value works too.
            parser.add_argument(flag, dest=key, nargs="?", const=True, type=_parse_bool,
                                default=argparse.SUPPRESS, help=shown + ")")
            parser.add_argument("--no-" + key.replace("_", "-"), dest=key,
                                action="store_false", default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS)
        else:
            parser.add_argument(flag, dest=key, type=_parse_value, default=argparse.SUPPRESS,
                                help=shown + ")")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="further options as key=value")
    return parser


def _bare_booleans(argv: list, defaults: dict) -> list:
    """``--flag`` not followed by a true/false value becomes ``--flag=true``, so a bare boolean
    never swallows the next argument (``--skip-bad-images epochs=3``)."""
    flags = {"--" + k.replace("_", "-") for k, v in defaults.items() if isinstance(v, bool)}
    out = []
    for i, token in enumerate(argv):
        following = argv[i + 1] if i + 1 < len(argv) else None
        if token in flags and not isinstance(
                _parse_value(following) if following is not None else None, bool):
            token += "=true"
        out.append(token)
    return out


def resolve_config(argv, defaults: dict, description: str = "",
                   recipe_profiles: dict | None = None) -> dict:
    """Merge defaults, the phantom profile, a YAML file, flags and key=value pairs.

    ``recipe_profiles`` (profile name -> values): a recipe's own values for a profile, laid
    over :data:`PROFILES` (e.g. the ensemble recipe's smaller phantom: its branches, image size,
    epochs); they apply exactly when and where that profile does.

    ``config["_given"]`` lists the keys set on the command line (keys starting with ``_``
    are runtime-only and never saved).
    """
    argv = _bare_booleans(list(sys.argv[1:] if argv is None else argv), defaults)
    # What a run with no data takes instead of the defaults (resolved below), for --help.
    no_data = ({**PROFILES["phantom"], **(recipe_profiles or {}).get("phantom", {})}
               if defaults.get("dataset") in PHANTOM_DATASETS else {})
    args = vars(build_parser(defaults, description, no_data).parse_intermixed_args(argv))
    config_file = args.pop("config", None)
    overrides = args.pop("overrides", [])
    given, on_command_line = {}, dict(args)
    if config_file:
        from_file = load_yaml(config_file)
        for key in RECORDED_KEYS:   # a run's saved config.yaml works as a --config file
            from_file.pop(key, None)
        _check_keys(from_file, defaults, f"--config {config_file}")
        given.update(from_file)
    given.update(args)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item!r}: expected key=value")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        _check_keys({key: None}, defaults, f"override {item!r}")
        given[key] = on_command_line[key] = _parse_value(value)
    for key, value in given.items():  # skip_bad_images=flase is text, and text is true
        if isinstance(defaults.get(key), bool) and not isinstance(value, bool):
            raise ConfigError(f"--{key.replace('_', '-')} {value!r}: expected true or false")
    config = copy.deepcopy(defaults)
    dataset = given.get("dataset", config["dataset"])
    profile = given.get("profile", config.get("profile"))
    if profile is None and dataset in PHANTOM_DATASETS:
        profile = "phantom"
    if profile is not None:
        apply_profile(config, profile, dataset=dataset, explicit=given,
                      recipe_values=(recipe_profiles or {}).get(profile))
    config.update(given)
    _numbers_as_their_defaults(config, defaults)
    if config.get("seeds") is not None:   # --seeds 0 is a repeat over [0], not a falsy 0
        config["seeds"] = seed_list(config["seeds"])
    if config_file:
        config["config_file"] = str(config_file)
    config["_given"] = sorted(on_command_line)
    config["_explicit"] = sorted(given)   # set anywhere: an automatic profile keeps them
    config["_recipe_profiles"] = dict(recipe_profiles or {})
    if "augment" in config and "dataset" in config:
        resolve_augment(config)   # recorded resolved, so the saved run says what ran
    return config


def _numbers_as_their_defaults(config: dict, defaults: dict) -> None:
    """A number given as ``0``, ``'1e-3'`` or ``'3'`` takes its default's type (float or
    int), so one setting has one config_id and one model-store key however it was written
    (``label_noise=0`` and ``0.0`` trained the same model twice). Text that is no number is
    left for the option's own check to name."""
    for key, default in defaults.items():
        value = config.get(key)
        if isinstance(default, bool) or isinstance(value, bool) or value is None:
            continue
        try:
            if isinstance(default, float) and isinstance(value, (int, str)):
                config[key] = float(value)
            elif isinstance(default, int) and isinstance(value, str):
                config[key] = int(value)
        except ValueError:
            pass


def apply_profile(config: dict, name, *, dataset: str, explicit: dict,
                  recipe_values: dict | None = None) -> dict:
    """Give the keys of profile ``name`` (:data:`PROFILES`) that ``config`` has and that are
    not in ``explicit`` (the options set in a file, a flag or key=value, with their values)
    the profile's values; records ``config["profile"]``. The phantom's label noise goes to
    the 14-finding phantom only; with ``weights: imagenet`` small-real fine-tunes the ImageNet
    DenseNet-121 (:data:`SMALL_REAL_IMAGENET`); a cached teacher table the user asked for
    keeps the flip (it holds the flipped view only)."""
    if name not in PROFILES:
        raise ConfigError(f"--profile {name!r}: choose one of {', '.join(PROFILES)}")
    values = {**PROFILES[name], **(recipe_values or {})}   # the recipe's own values win
    if name == "phantom" and dataset != "phantom":
        values = {k: v for k, v in values.items() if k not in MULTI_LABEL_PHANTOM_ONLY}
    if name == "small-real":
        if str(explicit.get("weights", config.get("weights"))).lower() == "imagenet":
            values.update(SMALL_REAL_IMAGENET)
        if explicit.get("teacher_outputs") == "cached":
            values.pop("augment", None)
    config.update({k: v for k, v in values.items() if k in config and k not in explicit})
    config["profile"] = name
    return config


def apply_small_data_profile(config: dict, train_images: int) -> bool:
    """Choose the small-real profile for a run on real data with fewer than
    :data:`SMALL_REAL_MAX_TRAIN_IMAGES` training images and no ``profile`` of its own, and
    print a line saying so, with the values it changed. Keys set anywhere
    (``config["_explicit"]``) keep their values. Only a configuration fresh from
    :func:`resolve_config`, or a run resumed before its data was read (``--resume`` restores
    ``_explicit`` from the saved ``explicit_options``), changes; a finished run's never does.
    Returns True when the profile was applied (the caller saves the configuration again)."""
    if ("_explicit" not in config or config.get("profile") is not None
            or config.get("dataset") in PHANTOM_DATASETS
            or int(train_images) >= SMALL_REAL_MAX_TRAIN_IMAGES):
        return False
    explicit = {k: config.get(k) for k in config["_explicit"]}
    before = dict(config)
    if "augment" not in explicit and "augment" in config:
        config["augment"] = None   # resolved anew below (it was resolved without a profile)
    apply_profile(config, "small-real", dataset=config["dataset"], explicit=explicit,
                  recipe_values=config.get("_recipe_profiles", {}).get("small-real"))
    if "augment" in config:
        resolve_augment(config)
    kept = sorted(set(explicit) & set(SMALL_REAL_PROFILE))
    changed = [f"{k}={config[k]}" for k in config
               if k != "profile" and not k.startswith("_") and config[k] != before.get(k)]
    # The plan printed earlier, and the run folder's name, came from the values before this.
    print(f"profile small-real chosen automatically: {int(train_images)} training images "
          f"(fewer than {SMALL_REAL_MAX_TRAIN_IMAGES}); "
          + (f"kept your {', '.join(kept)}; " if kept else "")
          + (f"the run trains with {', '.join(changed)}; " if changed else "")
          + "--profile papers keeps the papers' defaults", flush=True)
    return True


def resolve_augment(config: dict) -> str:
    """The run's augmentation: ``config["augment"]``, or for None light on folder and csv
    data and the papers' flip otherwise. Stored back into ``config`` (recorded with the run)."""
    value = config.get("augment")
    if value is None:
        # A cached teacher table holds the original and the flipped view only, so KD with
        # cached teacher outputs keeps the flip unless asked otherwise (then check_config
        # names the conflict).
        light = (config.get("dataset") in LIGHT_AUGMENT_DATASETS
                 and config.get("teacher_outputs") != "cached")
        value = "light" if light else "flip"
    # chestkd.data.augment owns the names (and their ranges); it imports TensorFlow, so it is
    # imported when a configuration is resolved, not with this module.
    from chestkd.data.augment import check_augment
    config["augment"] = check_augment(value)
    return value


DATASETS = tuple(LOADERS)

# The allowed values of the training options that this module owns (the trainer imports them).
OPTIMIZERS = ("sgd", "adam", "adamw")
WEIGHT_DECAY_MODES = ("coupled", "decoupled")
SCHEDULES = ("constant", "step", "cosine", "plateau")
CHECKPOINTS = ("best_val", "last", "average")


def _choices() -> dict:
    """Each checked option's allowed values, from the module that owns them: training's own,
    and those of data and training.distribute (imported here: some import TensorFlow or
    pandas, which the parser should not wait for). Owners above training check their own
    options at the command's edge, before any work (chestkd.experiments.repeat.check_options):
    kd_loss (chestkd.distill.kd_loss) and threshold_rule (chestkd.evaluation.classification)."""
    from chestkd.data.chexpert import UNCERTAINTY_POLICIES
    from chestkd.data.folder import VAL_SPLITS
    from chestkd.data.pipeline import NORMALIZATIONS
    from chestkd.data.presence import IMAGES_OPTIONS
    from chestkd.training.distribute import MODES
    return {
        "dataset": DATASETS,
        "val_split": VAL_SPLITS,
        "balance": BALANCE_MODES,
        "optimizer": OPTIMIZERS,
        "weight_decay_mode": WEIGHT_DECAY_MODES,
        "schedule": SCHEDULES,
        "jit_compile": ("auto", True, False),
        "distribute": MODES,
        "strategy": STRATEGIES,
        "student_init": ("fresh", "teacher"),
        "teacher_outputs": ("cached", "online"),
        "uncertainty": UNCERTAINTY_POLICIES,
        "images": IMAGES_OPTIONS,
        "profile": (None, *PROFILES),
        "checkpoint": CHECKPOINTS,
        "normalization": NORMALIZATIONS,
    }


# Keys that say where and how a run is kept or shown, not what it computes: two runs that
# differ only in these are the same experiment (``config_id``).
BOOKKEEPING_KEYS = frozenset({
    "out", "run_name", "resume", "run_dir", "config_file", "seeds", "teachers_dir",
    "latency_images", "saliency", "bootstrap", "check_images", "jit_compile", "distribute",
    "config_id",
    "profile",   # a profile's effect is in the values it set (but see config_id: papers)
    "explicit_options",   # the keys the user set (a resumed run's automatic profile keeps them)
})


# Options added after chestkd 0.1, with the value that reproduces 0.1's behaviour. At that
# value a key is left out of ``config_id``, so runs, table cells and model-store entries
# written before the option existed are still found (tests/test_legacy_runs.py).
ADDED_OPTION_DEFAULTS: dict = {"checkpoint": "best_val", "images": "all",
                               # ensemble_kd (issue 18): the raw hint, both standalone columns
                               "feature_scale": "none", "standalone": ["base", "kd"],
                               # ros_kd (issue 15): 0.1's overlap reading, draw and Baseline III
                               "overlap_mode": "circle", "weight_draw": "normalised",
                               "confidence_temperature": 0.1, "baseline_iii_combine": "logits",
                               "baseline_iii_teachers": "full",
                               # transfer_learning (issue 15): 0.1's fine-tuning
                               "finetune_batchnorm": "frozen", "head_lr_factor": 1.0,
                               "pretrain_dataset": "phantom", "reestimate_batchnorm": False}


def config_id(config: dict, keys=None) -> str:
    """A short digest of everything in ``config`` that shapes a result (``keys``: only these).

    Bookkeeping keys (:data:`BOOKKEEPING_KEYS`) and runtime-only ``_`` keys are left out, so
    a run started from another YAML file or into another folder is still the same run; so is
    an option added later while it holds its old behaviour (:data:`ADDED_OPTION_DEFAULTS`).
    """
    unset = object()
    chosen = {k: v for k, v in config.items()
              if not k.startswith("_") and k not in BOOKKEEPING_KEYS
              and ADDED_OPTION_DEFAULTS.get(k, unset) != v
              and (keys is None or k in keys)}
    if (config.get("profile") == "papers" and config.get("dataset") not in PHANTOM_DATASETS
            and (keys is None or "profile" in keys)):
        # papers sets no value, but on real data it keeps away the small-real profile that
        # the data would choose after the run opened: without it the same request trains
        # another model (apply_small_data_profile), so it is part of the experiment.
        chosen["profile"] = "papers"
    text = json.dumps(chosen, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


# NumPy's seeds end at 2**32 - 1; self-training's student takes seed + 1.
MAX_SEED = 2**32 - 2


def seed_list(value) -> list[int] | None:
    """``--seeds 0,1,2`` (or a YAML list) as a list of ints."""
    if value is None:
        return None
    seeds = list_option(value, "--seeds", cast=int)
    if min(seeds) < 0 or max(seeds) > MAX_SEED:
        raise ConfigError(f"--seeds {value!r}: expected seeds from 0 to {MAX_SEED}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {value!r}: expected distinct integers such as 0,1,2")
    return seeds


def check_config(config: dict) -> None:
    """Fail fast, before any data is read or any folder made, on a value that cannot work."""
    for key, choices in _choices().items():
        if key in config and config[key] not in choices:
            shown = ", ".join("null" if c is None else str(c).lower() for c in choices)
            raise ConfigError(f"--{key.replace('_', '-')} {config[key]!r}: choose one of "
                              f"{shown}")
    if config.get("augment") is not None:
        from chestkd.data.augment import check_augment
        check_augment(config["augment"])
    noise = config.get("label_noise") or 0.0
    if not isinstance(noise, (int, float)) or not 0.0 <= noise < 0.5:
        raise ConfigError(f"--label-noise {noise!r}: a fraction in [0, 0.5)")
    if noise and config.get("dataset") != "phantom":
        raise ConfigError(f"--label-noise {noise}: only the phantom can add label noise (a real "
                          f"dataset's labels are as they are); got --dataset {config['dataset']}")
    if config.get("balance") and config.get("dataset") in ("chestxray14", "chexpert", "phantom"):
        raise ConfigError(f"--balance {config['balance']}: balancing needs single-label classes; "
                          f"--dataset {config['dataset']} is multi-label")
    if config.get("augment") in ("light", "strong") and config.get("teacher_outputs") == "cached":
        raise ConfigError(f"--augment {config['augment']} with --teacher-outputs cached: the "
                          f"cached teacher table holds the original and flipped view of each "
                          f"image only; use --teacher-outputs online or --augment flip")
    seed_list(config.get("seeds"))
    for key in ("epochs", "batch_size", "image_size"):
        if not isinstance(config.get(key), int) or config[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} {config.get(key)!r}: must be a "
                              "positive integer")
    if config.get("dataset") in PHANTOM_DATASETS and not config.get("data_dir"):
        # Checked here, named as the run's options: the phantom's writer would name them
        # --images and --size (its own command's flags), after the run folder was made.
        for key, low in (("phantom_images", 10), ("phantom_size", 32)):
            if key in config:
                number_option(config[key], "--" + key.replace("_", "-"), cast=int, low=low)
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
    """Write the resolved configuration (runtime-only ``_`` keys left out), atomically."""
    from chestkd.io import atomic_write_text
    saved = {k: v for k, v in config.items() if not k.startswith("_")}
    atomic_write_text(path, yaml.safe_dump(saved, sort_keys=False))
