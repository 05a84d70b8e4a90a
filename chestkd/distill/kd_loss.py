"""Knowledge-distillation losses: a hard term on the labels plus a soft term on the teacher.

Every formulation has the form

.. math:: L = (1-\\alpha)\\,L_{hard}(y, z_s) + \\alpha\\,L_{soft}(z_s, z_t)

with student logits :math:`z_s`, (combined) teacher logits :math:`z_t`, temperature
:math:`T` and weight :math:`\\alpha \\in [0, 1]`. ``alpha = 0`` is plain supervised training,
``alpha = 1`` pure imitation of the teacher. With :math:`p^T = \\mathrm{softmax}(z/T)`:

``hinton`` (Hinton et al. 2015)
    :math:`L_{hard} = CE(y, p_s^1)`, :math:`L_{soft} = T^2\\,KL(p_t^T \\| p_s^T)`.
    The :math:`T^2` keeps the soft gradients the same size as :math:`T` changes.
``ho2020_eq5`` (Ho & Gwak 2020, Eq. 5, its factor 2T^2 and cross-entropy kept; the printed arguments put the student's softened outputs first, read here as the teacher's being the target)
    :math:`L_{hard} = CE(y, p_s^1)`, :math:`L_{soft} = 2T^2\\,H(p_t^T, p_s^T)` with the
    cross-entropy :math:`H(p, q) = -\\sum_c p_c \\log q_c`. It differs from ``hinton`` by the
    factor 2 and by the teacher's entropy :math:`H(p_t^T)`, a constant in the student's weights:
    same gradients up to the factor 2, but the reported value never reaches 0.
``ho2020_eq8`` (Ho & Gwak 2020, Eq. 8, self-training)
    :math:`L_{hard} = CE(y, p_s^1)`, :math:`L_{soft} = KL(p_t^\\tau \\| p_s^\\tau)` with the
    temperature :math:`\\tau` and NO :math:`\\tau^2` factor.
``sigmoid`` (multi-label KD)
    :math:`L_{hard} = \\mathrm{BCE}(y, \\sigma(z_s))` over the known findings (mean over classes),
    :math:`L_{soft} = T^2\\,\\frac{1}{C}\\sum_c
    \\mathrm{BCE}(\\sigma(z_{t,c}/T), \\sigma(z_{s,c}/T))`.

Why ``sigmoid`` is the sound choice for the 14 ChestX-ray14 findings: they are not mutually
exclusive (an image can show effusion AND cardiomegaly, or nothing). A softmax across findings
makes them compete for one unit of probability mass, so raising one finding lowers the others,
a multi-hot label is an impossible target and "no finding" (an all-zero row) has no term at all.
``sigmoid`` treats each finding as its own binary problem, for the labels and for the teacher's
soft targets alike. The softmax formulations are kept to reproduce the papers as printed and for
single-label data.

For multi-hot ``y``, :math:`CE(y, p) = -\\sum_c y_c \\log p_c`. Unknown labels (-1, CheXpert
U-Ignore) are left out of the hard term; the soft term uses the teacher on every class.

All terms are computed from logits with ``log_softmax`` / the stable sigmoid cross-entropy, in
float32 (also under mixed precision), so logits of +-1e3 give finite values and gradients.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from keras import ops

from chestkd.errors import ConfigError
from chestkd.training.losses import (
    categorical_crossentropy_from_logits,
    masked_binary_crossentropy,
    sigmoid_cross_entropy,
)

FORMULATIONS = ("hinton", "ho2020_eq5", "ho2020_eq8", "sigmoid")
# How tables and titles name each formulation.
FORMULATION_TITLES = {"sigmoid": "sigmoid KD", "ho2020_eq8": "Eq. 8", "ho2020_eq5": "Eq. 5",
                      "hinton": "Hinton KD"}


def check_formulation(name) -> str:
    """``name`` if it is one of :data:`FORMULATIONS`, else a ConfigError naming them (the
    ``--kd-loss`` option's check, made before any training)."""
    if name not in FORMULATIONS:
        raise ConfigError(f"--kd-loss {name!r}: choose one of {', '.join(FORMULATIONS)}")
    return name


# formulation -> (soft-term kind, multiplier of the soft term as a function of T)
_SOFT_TERMS = {
    "hinton": ("softmax_kl", lambda t: t * t),
    "ho2020_eq5": ("softmax_ce", lambda t: 2.0 * t * t),
    "ho2020_eq8": ("softmax_kl", lambda t: 1.0),
    "sigmoid": ("sigmoid_bce", lambda t: t * t),
}
# The formulations that treat the classes as exclusive (a softmax over them).
SOFTMAX_FORMULATIONS = tuple(f for f in FORMULATIONS if _SOFT_TERMS[f][0].startswith("softmax"))


def softmax_kl(student_logits, teacher_logits, temperature):
    """Per-sample :math:`KL(\\mathrm{softmax}(z_t/T) \\| \\mathrm{softmax}(z_s/T))`, (B,).

    :math:`\\sum_c p_{t,c}(\\log p_{t,c} - \\log p_{s,c})` with both logs from ``log_softmax``
    (finite for finite logits), so a teacher probability that underflows to 0 adds exactly 0.
    """
    log_p_teacher = ops.log_softmax(ops.cast(teacher_logits, "float32") / temperature, axis=-1)
    log_p_student = ops.log_softmax(ops.cast(student_logits, "float32") / temperature, axis=-1)
    return ops.sum(ops.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)


def softmax_cross_entropy(student_logits, teacher_logits, temperature):
    """Per-sample :math:`H(\\mathrm{softmax}(z_t/T), \\mathrm{softmax}(z_s/T))
    = -\\sum_c p_{t,c} \\log p_{s,c}`, (B,)."""
    p_teacher = ops.softmax(ops.cast(teacher_logits, "float32") / temperature, axis=-1)
    log_p_student = ops.log_softmax(ops.cast(student_logits, "float32") / temperature, axis=-1)
    return -ops.sum(p_teacher * log_p_student, axis=-1)


def sigmoid_soft_bce(student_logits, teacher_logits, temperature):
    """Per-sample mean over classes of :math:`BCE(\\sigma(z_t/T), \\sigma(z_s/T))`, (B,)."""
    p_teacher = ops.sigmoid(ops.cast(teacher_logits, "float32") / temperature)
    student = ops.cast(student_logits, "float32") / temperature
    return ops.mean(sigmoid_cross_entropy(p_teacher, student), axis=-1)


_SOFT_FUNCTIONS = {
    "softmax_kl": softmax_kl,
    "softmax_ce": softmax_cross_entropy,
    "sigmoid_bce": sigmoid_soft_bce,
}


def _check_number(option, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"distillation option {option!r} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"distillation option {option!r} must be finite, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class KDLoss:
    """One distillation formulation with its temperature and weight.

    ``hard(y, z_s)`` and ``soft(z_s, z_t)`` return per-sample (B,) terms, UNWEIGHTED by alpha
    (``soft`` includes the formulation's temperature factor); ``per_sample`` combines them;
    calling the object returns the batch-mean total. See the module docstring for the equations.

    Raises:
        ConfigError: unknown ``formulation``, ``alpha`` outside [0, 1], ``temperature <= 0``.
    """

    formulation: str = "hinton"
    temperature: float = 4.0
    alpha: float = 0.5

    def __post_init__(self):
        if self.formulation not in FORMULATIONS:
            raise ConfigError(f"unknown distillation option 'formulation'={self.formulation!r}; "
                              f"choose one of {list(FORMULATIONS)}")
        temperature = _check_number("temperature", self.temperature)
        if temperature <= 0:
            raise ConfigError(f"distillation option 'temperature' must be > 0, got {temperature}")
        alpha = _check_number("alpha", self.alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"distillation option 'alpha' must be in [0, 1], got {alpha}")
        object.__setattr__(self, "temperature", temperature)
        object.__setattr__(self, "alpha", alpha)

    @property
    def soft_factor(self) -> float:
        """The constant in front of the soft divergence: T^2, 2T^2 or 1."""
        return float(_SOFT_TERMS[self.formulation][1](self.temperature))

    def hard(self, y_true, student_logits):
        """Per-sample hard-label term (B,): masked BCE for ``sigmoid``, softmax CE otherwise."""
        if self.formulation == "sigmoid":
            return masked_binary_crossentropy(y_true, student_logits)
        return categorical_crossentropy_from_logits(y_true, student_logits)

    def soft(self, student_logits, teacher_logits):
        """Per-sample soft term (B,) including the temperature factor of the formulation."""
        kind = _SOFT_TERMS[self.formulation][0]
        divergence = _SOFT_FUNCTIONS[kind](student_logits, teacher_logits, self.temperature)
        return self.soft_factor * divergence

    def per_sample(self, y_true, student_logits, teacher_logits):
        """(hard, soft, total) per-sample terms, each (B,); total = (1-a) hard + a soft.

        Both terms are always computed, so the hard loss is reported (and comparable across
        runs) even when ``alpha = 1`` gives it no weight.
        """
        hard = self.hard(y_true, student_logits)
        soft = self.soft(student_logits, teacher_logits)
        return hard, soft, (1.0 - self.alpha) * hard + self.alpha * soft

    def __call__(self, y_true, student_logits, teacher_logits):
        """Batch-mean total loss (scalar)."""
        return ops.mean(self.per_sample(y_true, student_logits, teacher_logits)[2])

    def get_config(self) -> dict:
        return {"formulation": self.formulation, "temperature": self.temperature,
                "alpha": self.alpha}


def distillation_loss(y_true, student_logits, teacher_logits, *, formulation, temperature,
                      alpha):
    """Batch-mean distillation loss of ``formulation`` (see the module docstring)."""
    return KDLoss(formulation, temperature, alpha)(y_true, student_logits, teacher_logits)
