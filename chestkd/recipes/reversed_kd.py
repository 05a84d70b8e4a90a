"""Reversed KD: ``python -m chestkd.recipes.kd --strategy reversed`` (same options; see that recipe)."""
from chestkd.recipes import kd

DEFAULTS = {**kd.DEFAULTS, "strategy": "reversed"}
run, main = kd.entry("reversed")

if __name__ == "__main__":
    raise SystemExit(main())
