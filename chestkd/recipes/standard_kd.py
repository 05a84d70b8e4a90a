"""Standard KD: ``python -m chestkd.recipes.kd --strategy standard`` (same options; see that recipe)."""
from chestkd.recipes import kd

DEFAULTS = {**kd.DEFAULTS, "strategy": "standard"}
run, main = kd.entry("standard")

if __name__ == "__main__":
    raise SystemExit(main())
