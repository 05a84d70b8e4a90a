"""Knowledge distillation: the losses of Hinton et al. and Ho & Gwak 2020, and the Distiller.

Like ``keras.distillation``, the package's face is a handful of names:

* ``Distiller(student, teachers, loss=KDLoss(...))``: the ``keras.Model`` that trains the
  student against frozen (or cached) teachers. Save ``distiller.student``, never the wrapper.
* ``KDLoss(formulation, temperature, alpha)``: one logit-distillation objective
  (``FORMULATIONS``: ``hinton``, ``ho2020_eq5``, ``ho2020_eq8``, ``sigmoid``).
* ``FeatureTerm``: a feature-map distance (``wasserstein``, ``feature_kl``, ``mse``,
  ``attention_transfer`` of :mod:`chestkd.distill.feature_distances`) between a student and a
  teacher layer.

The rest (the distances, teacher sampling and weighting, layer pairing) is imported from its
submodule. Distillation reads no data set and no run directory: teachers' cached logits come
from :mod:`chestkd.training.teacher_cache`.
"""
from chestkd.distill.distiller import Distiller
from chestkd.distill.feature_terms import FeatureTerm
from chestkd.distill.kd_loss import FORMULATIONS, KDLoss

__all__ = ["Distiller", "FORMULATIONS", "FeatureTerm", "KDLoss"]
