"""Knowledge distillation: the losses of Hinton et al. and Ho & Gwak 2020, and the Distiller.

``KDLoss(formulation, temperature, alpha)`` is one distillation objective
(``FORMULATIONS``: ``hinton``, ``ho2020_eq5``, ``ho2020_eq8``, ``sigmoid``);
``Distiller(student, teachers, loss=KDLoss(...))`` is the ``keras.Model`` that trains the
student against frozen (or cached) teachers. Save ``distiller.student``, never the wrapper.
"""
from chestkd.distill.distiller import TEACHER_SAMPLING, Distiller
from chestkd.distill.losses import FORMULATIONS, KDLoss, distillation_loss
from chestkd.training.run import save_model_atomically
from chestkd.training.trainer import StudentCheckpoint

__all__ = ["Distiller", "KDLoss", "FORMULATIONS", "TEACHER_SAMPLING", "StudentCheckpoint",
           "distillation_loss", "save_model_atomically"]
