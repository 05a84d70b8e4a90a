"""Experiments: the orchestration above ``distill`` and ``evaluation``, below the recipes.

* :mod:`~chestkd.experiments.store`: the model store (every base-trained model, teachers
  included, trained once and reused; defective teachers as checkpoints of a full schedule);
* :mod:`~chestkd.experiments.kd`: obtain a teacher, distil, evaluate, record;
* :mod:`~chestkd.experiments.stages`: the finished stages of a run, for resuming;
* :mod:`~chestkd.experiments.repeat`: one experiment over several seeds.
"""
