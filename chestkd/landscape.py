"""``python -m chestkd.landscape RUN_DIR`` and the ``chestkd-landscape`` command: the loss
landscape of a trained run. The code lives in :mod:`chestkd.robustness.landscape`; this module
keeps the public command path."""
from chestkd.robustness.landscape import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
