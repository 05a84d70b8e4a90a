"""Command-line plumbing shared by every ``python -m chestkd...`` command and console script.

A command's work is a ``run(argv) -> result`` function (what tests and notebooks call); its
``main(argv) -> int`` is what ``python -m`` and the console scripts call: 0 on success, 2 with
one line on stderr on a user mistake (a :class:`chestkd.errors.ChestKDError`), never a
traceback from deep inside TensorFlow for a wrong option or a bad file.
"""
from __future__ import annotations

import contextlib
import sys

from chestkd.errors import ChestKDError


@contextlib.contextmanager
def cli_errors():
    """Turn a user mistake (ChestKDError) into one line on stderr and exit status 2."""
    try:
        yield
    except ChestKDError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def main_of(run):
    """``main(argv=None) -> int`` for a ``run(argv)`` function (console-script entry point)."""
    def main(argv=None) -> int:
        with cli_errors():
            run(argv)
        return 0
    main.__doc__ = "Command-line entry: exit 0 on success, 2 on a user error."
    return main
