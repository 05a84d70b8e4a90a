"""Experiments: the orchestration above ``distill`` and ``evaluation``, below the recipes.

* :mod:`~chestkd.experiments.store`: the model store (every base-trained model, teachers
  included, trained once and reused; defective teachers as checkpoints of a full schedule);
* :mod:`~chestkd.experiments.kd`: obtain a teacher, distil, evaluate, record;
* :mod:`~chestkd.experiments.repeat`: one experiment over several seeds.

The names in ``__all__`` are imported on first use.
"""
from __future__ import annotations

import importlib

# public name -> the submodule defining it
_PUBLIC = {
    "obtain_model": "store", "copy_results": "store",
    "kd_experiment": "kd", "distil": "kd", "resolve_kd_loss": "kd",
    "over_seeds": "repeat",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'chestkd.experiments' has no attribute {name!r}")
    return getattr(importlib.import_module(f"chestkd.experiments.{_PUBLIC[name]}"), name)
