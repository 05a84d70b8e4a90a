"""Adversarial robustness: FGSM and PGD attacks (:mod:`~chestkd.robustness.attacks`) and the
scores of a model before and after them (:mod:`~chestkd.robustness.tables`;
``python -m chestkd.robustness RUN_DIR``)."""
from chestkd.robustness.attacks import NORMS, attack_loss, fgsm, input_range, pgd

__all__ = ["NORMS", "attack_loss", "fgsm", "input_range", "pgd"]
