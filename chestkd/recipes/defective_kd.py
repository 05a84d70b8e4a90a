"""Defective KD: ``python -m chestkd.recipes.kd --strategy defective`` (same options; see that recipe)."""
from chestkd.recipes import kd

DEFAULTS = {**kd.DEFAULTS, "strategy": "defective"}
run, main = kd.entry("defective")

if __name__ == "__main__":
    raise SystemExit(main())
