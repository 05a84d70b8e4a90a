"""Runnable experiments: ``python -m chestkd.recipes.<name> [--config recipes/X.yaml] ...``.

Each recipe is a short script that composes library parts; every option can come from the
command line, a YAML file in ``recipes/`` or ``key=value`` pairs.
"""

# The public surface of the recipes is their commands: one module per recipe, each run as
# ``python -m chestkd.recipes.<name>`` (or its console script) and exposing ``main``.
__all__ = ["assistant_kd", "base_training", "defective_kd", "ensemble_kd", "kd", "reversed_kd",
           "ros_kd", "self_training", "standard_kd", "table1", "transfer_learning"]
