"""Progress reports that read well both in a terminal and in a log file.

``keras.utils.Progbar`` redraws its bar with carriage returns, backspaces and ANSI colour
codes even when standard output is a file or a pipe, so a log of a long stage (the main job's
saliency maps, an image check) becomes hundreds of unreadable fragments. :func:`progress`
keeps Keras' bar for a terminal and otherwise returns a :class:`LineProgress`, which writes one
plain line each time another tenth of the work is done.
"""
from __future__ import annotations

import sys
import time

# A log gets a line at every multiple of this percentage (and at the end).
LOG_EVERY_PERCENT = 10


def is_terminal(stream) -> bool:
    """True when ``stream`` is an interactive terminal."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:          # a closed stream
        return False


class LineProgress:
    """Progress for a log: ``label: 40/400 images (10 %), 3 s`` at every ``every_percent`` %.

    The same ``update(current)`` / ``add(count)`` calls as ``keras.utils.Progbar``; a report
    is written only when the count crosses the next multiple of ``every_percent`` % of
    ``total`` (and once at ``total``), so a log holds at most ``100 / every_percent`` lines
    per stage, whatever the number of updates.
    """

    def __init__(self, total: int, *, unit_name: str = "item", label: str | None = None,
                 every_percent: float = LOG_EVERY_PERCENT, stream=None):
        if every_percent <= 0 or every_percent > 100:
            raise ValueError(f"every_percent must be in (0, 100], got {every_percent}")
        self.total = int(total)
        self.unit_name = unit_name
        self.label = label or "progress"
        self.every_percent = float(every_percent)
        self.stream = stream
        self.seen = 0
        self._next_percent = self.every_percent
        self._finished = False
        self._start = time.monotonic()

    def _percent(self, count: int) -> float:
        return 100.0 * count / self.total if self.total > 0 else 100.0

    def update(self, current, values=None, finalize=None) -> None:
        """Record that ``current`` items are done (``values``/``finalize``: Progbar's, ignored)."""
        self.seen = int(current)
        if self._finished:
            return
        percent = self._percent(self.seen)
        done = self.seen >= self.total
        if not done and percent < self._next_percent:
            return
        while self._next_percent <= percent:
            self._next_percent += self.every_percent
        self._finished = done
        units = self.unit_name if self.total == 1 else f"{self.unit_name}s"
        stream = self.stream if self.stream is not None else sys.stdout
        stream.write(f"{self.label}: {self.seen}/{self.total} {units} ({percent:.0f} %), "
                     f"{time.monotonic() - self._start:.0f} s\n")
        stream.flush()

    def add(self, count, values=None) -> None:
        """Record ``count`` more items done."""
        self.update(self.seen + int(count))


def progress(total: int, verbose: int = 1, *, unit_name: str = "item",
             label: str | None = None, stream=None):
    """A progress reporter over ``total`` items: Keras' bar on a terminal, else a
    :class:`LineProgress` writing one line per :data:`LOG_EVERY_PERCENT` %.

    ``stream`` is where the report goes (default: ``sys.stdout``, checked when called);
    ``verbose`` is passed to ``keras.utils.Progbar`` on a terminal.
    """
    target = stream if stream is not None else sys.stdout
    if not is_terminal(target):
        return LineProgress(total, unit_name=unit_name, label=label, stream=stream)
    import keras    # imported only for a terminal bar: it brings TensorFlow in
    return keras.utils.Progbar(total, verbose=1 if verbose is True else int(verbose),
                               unit_name=unit_name)
