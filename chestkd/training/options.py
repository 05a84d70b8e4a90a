"""A run's options as frozen, typed objects, made once from the resolved configuration.

:func:`~chestkd.training.config.resolve_config` stays the parser (defaults, profiles, YAML,
flags, ``key=value``) and the run directory keeps its output, the dict, as ``config.yaml``.
A recipe turns that dict into a :class:`RunOptions` at its edge (:func:`run_options`), before
its run directory is made (:func:`chestkd.training.run.open_run`); the library then reads typed
fields (``options.training.epochs``, ``options.image.normalization``) and never writes into a
configuration. What a step derives
from the data (the small-real profile, a ``mean_std`` estimate, the KD formulation, the XLA
decision) it returns; :meth:`RunOptions.replace` gives the options with such a value set, and
the run directory records them (:func:`chestkd.training.run.record_options`).

``RunOptions.config`` is the resolved configuration itself, read-only: what ``config.yaml``
holds, what ``config_id`` and the model store's key are computed from, and what a model card
quotes. Keys a run did not give take :data:`~chestkd.training.config.BASE_DEFAULTS` and
:data:`~chestkd.training.config.KD_DEFAULTS` in the typed fields (so a notebook may pass a
partial dict to a library function: :func:`as_options`), never in ``config``.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from chestkd.cli import list_option, number_option
from chestkd.errors import ConfigError
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS, MAX_SEED, check_config

__all__ = ["EvaluationOptions", "ImageOptions", "KDOptions", "RunOptions", "TrainingOptions",
           "as_options", "as_training", "run_options", "step_milestones"]


def _integer(owner, name: str, **bounds) -> None:
    """Set ``owner.name`` to its value as an int, or a ConfigError naming the option."""
    object.__setattr__(owner, name, number_option(
        getattr(owner, name), f"--{name.replace('_', '-')}", cast=int, **bounds))


def step_milestones(value) -> list[int]:
    """``--step-epochs`` as increasing positive epochs, else a ConfigError naming it."""
    milestones = list_option(value, "--step-epochs", cast=int)
    if milestones != sorted(set(milestones)) or milestones[0] < 1:
        raise ConfigError(f"--step-epochs {value!r}: expected increasing positive epochs")
    return milestones


def _number(owner, name: str, **bounds) -> None:
    """Check ``owner.name``, a number (``'1e-3'`` read as 0.001), or a ConfigError naming it;
    an int or float given stays as it is (what config.yaml and metrics.json hold)."""
    object.__setattr__(owner, name, number_option(
        getattr(owner, name), f"--{name.replace('_', '-')}", **bounds))


# The defaults of the typed fields: the recipes' own (one home), and self-training's
# student_init, the one field no shared default names.
_DEFAULTS = {**BASE_DEFAULTS, **KD_DEFAULTS, "student_init": "fresh"}


def _part(cls, config: Mapping):
    """A ``cls`` of ``config``'s values, a missing key taking its default."""
    return cls(**{f.name: config.get(f.name, _DEFAULTS[f.name])
                  for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class ImageOptions:
    """How images enter a model: what :func:`chestkd.data.pipeline.make_dataset` and the
    saliency and export readers need besides the data."""
    image_size: int
    normalization: str
    mean_std: tuple | None  # normalization mean_std: (mean, std) of the train split
    cache_dir: str | None  # a prepared cache (``python -m chestkd.data prepare``)

    def __post_init__(self):
        _integer(self, "image_size")
        if self.mean_std is not None:
            values = self.mean_std if isinstance(self.mean_std, (list, tuple)) else [None]
            if len(values) != 2:
                raise ConfigError(f"--mean-std {self.mean_std!r}: expected [mean, std]")
            object.__setattr__(self, "mean_std", tuple(
                float(number_option(v, "--mean-std")) for v in values))

    def pipeline(self) -> dict:
        """The keyword arguments of ``make_dataset`` (and ``load_or_compute``)."""
        return {"image_size": self.image_size, "normalization": self.normalization,
                "mean_std": None if self.mean_std is None else list(self.mean_std),
                "cache_dir": self.cache_dir}


@dataclass(frozen=True)
class TrainingOptions:
    """What shapes a training run: the model, the optimisation, its schedule and devices."""
    model: str
    weights: str | None
    batch_size: int
    epochs: int
    seed: int
    optimizer: str
    learning_rate: float
    momentum: float
    weight_decay: float
    weight_decay_mode: str
    schedule: str
    step_epochs: Any
    checkpoint: str
    augment: str | None
    mixed_precision: bool
    jit_compile: Any
    distribute: str

    def __post_init__(self):
        for name in ("batch_size", "epochs"):
            _integer(self, name)
        _integer(self, "seed", low=0, high=MAX_SEED)   # a NumPy error after the folder, else
        if self.step_epochs is not None:
            step_milestones(self.step_epochs)  # checked here, before any data is read
        _number(self, "learning_rate", low=0.0, low_open=True)
        _number(self, "momentum", low=0.0, high=1.0)
        _number(self, "weight_decay", low=0.0)


@dataclass(frozen=True)
class KDOptions:
    """The distillation: the loss and its formulation, and where the teacher's logits come
    from (``kd_loss`` None: the data decides, :func:`chestkd.experiments.kd.resolve_kd_loss`)."""
    kd_loss: str | None
    temperature: float
    alpha: float
    teacher_outputs: str
    student_init: str
    teacher_epochs: int | None
    defective_fraction: float

    def __post_init__(self):
        _number(self, "temperature", low=0.0, low_open=True)
        _number(self, "alpha", low=0.0, high=1.0)
        _number(self, "defective_fraction", low=0.0, high=1.0, low_open=True)
        if self.teacher_epochs is not None:
            _integer(self, "teacher_epochs", low=1)


# chestkd.evaluation.statistics.min_resamples(0.95), which training may not import; a test holds
# the two equal.
MIN_BOOTSTRAP = 40


@dataclass(frozen=True)
class EvaluationOptions:
    """How a trained model is scored and shown."""
    threshold_rule: str
    bootstrap: int
    latency_images: int
    saliency: bool

    def __post_init__(self):
        object.__setattr__(self, "threshold_rule", self.threshold_rule or "youden")
        object.__setattr__(self, "bootstrap", self.bootstrap or 0)
        _integer(self, "bootstrap", low=0)
        if 0 < self.bootstrap < MIN_BOOTSTRAP:
            raise ConfigError(f"--bootstrap {self.bootstrap}: expected 0 (off) or at least "
                              f"{MIN_BOOTSTRAP} resamples (a 95 % percentile interval needs a "
                              "resample in each 2.5 % tail)")
        _integer(self, "latency_images", low=1)  # the median of no timing is NaN


@dataclass(frozen=True)
class RunOptions:
    """One run's options: the resolved configuration (read-only) and its typed parts."""
    config: Mapping
    image: ImageOptions
    training: TrainingOptions
    kd: KDOptions
    evaluation: EvaluationOptions

    def replace(self, **values) -> "RunOptions":
        """The options with ``values`` set (in ``config`` too, so the run records them)."""
        return run_options({**self.config, **values}, check=False)

    def to_config(self) -> dict:
        """A mutable copy of the resolved configuration (for code that still takes a dict)."""
        return copy.deepcopy(dict(self.config))

    @property
    def seed(self) -> int:
        return self.training.seed

    @property
    def dataset(self) -> str:
        return self.config.get("dataset", BASE_DEFAULTS["dataset"])


def run_options(config: Mapping, *, check: bool = True) -> RunOptions:
    """The options of a resolved configuration (a read-only copy of it is kept).

    ``check``: first fail, naming the option, on a value that cannot work
    (:func:`~chestkd.training.config.check_config`), before any data is read or any folder
    made. A run to resume is not checked again: :func:`chestkd.training.run.open_run` reads
    its saved configuration, checked when that run started.
    """
    if check and not config.get("resume"):
        check_config(config)
    kept = MappingProxyType(copy.deepcopy(dict(config)))
    return RunOptions(kept, _part(ImageOptions, kept), _part(TrainingOptions, kept),
                      _part(KDOptions, kept), _part(EvaluationOptions, kept))


def as_options(value: "RunOptions | Mapping") -> RunOptions:
    """``value`` itself, or the options of a configuration dict (a notebook's, or a recipe's
    that still carries one), unchecked: a library function takes either."""
    return value if isinstance(value, RunOptions) else run_options(value, check=False)


def as_training(value) -> TrainingOptions:
    """The :class:`TrainingOptions` of ``value``: themselves, or those of :func:`as_options`."""
    return value if isinstance(value, TrainingOptions) else as_options(value).training
