"""Runnable experiments: ``python -m chestkd.recipes.<name> [--config recipes/X.yaml] ...``.

Each recipe is a short script that composes library parts; every option can come from the
command line, a YAML file in ``recipes/`` or ``key=value`` pairs.
"""
