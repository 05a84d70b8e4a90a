"""Defective KD: ``python -m chestkd.recipes.kd --strategy defective`` (same options; see that recipe)."""
from functools import partial

from chestkd.cli import main_of
from chestkd.recipes import kd

DEFAULTS = {**kd.DEFAULTS, "strategy": "defective"}
run = partial(kd.run, strategy="defective")
main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
