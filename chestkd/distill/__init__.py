"""Knowledge distillation: the losses of Hinton et al. and Ho & Gwak 2020, and the Distiller.

``KDLoss(formulation, temperature, alpha)`` is one distillation objective
(``FORMULATIONS``: ``hinton``, ``ho2020_eq5``, ``ho2020_eq8``, ``sigmoid``);
``Distiller(student, teachers, loss=KDLoss(...))`` is the ``keras.Model`` that trains the
student against frozen (or cached) teachers. Save ``distiller.student``, never the wrapper.
``FeatureTerm`` adds a feature-map distance (``wasserstein``, ``feature_kl``, ``mse``, ``attention_transfer`` of
:mod:`chestkd.distill.features`) between a student and a teacher layer.
"""
from chestkd.distill.distiller import Distiller
from chestkd.distill.feature_terms import FeatureTerm
from chestkd.distill.features import attention_transfer, feature_kl, mse, wasserstein
from chestkd.distill.losses import FORMULATIONS, KDLoss, distillation_loss
from chestkd.distill.teacher_mixing import (
    TEACHER_SAMPLING,
    confidence_weights,
    teacher_confidence,
)

__all__ = ["Distiller", "FeatureTerm", "KDLoss", "FORMULATIONS", "TEACHER_SAMPLING",
           "attention_transfer", "confidence_weights", "distillation_loss", "feature_kl", "mse",
           "teacher_confidence", "wasserstein"]
