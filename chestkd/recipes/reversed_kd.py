"""Reversed KD: ``python -m chestkd.recipes.kd --strategy reversed`` (same options; see that recipe)."""
from functools import partial

from chestkd.cli import main_of
from chestkd.recipes import kd

DEFAULTS = {**kd.DEFAULTS, "strategy": "reversed"}
run = partial(kd.run, strategy="reversed")
main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
