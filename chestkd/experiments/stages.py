"""The completed stages of a run, so a resumed run never repeats a finished one, and the wall
time each stage took (:class:`StageTimer`).

A run directory's ``stages.json`` maps each finished stage (``training``, ``evaluation``,
``figures``, ...) to what it left behind. A stage is marked only after everything it writes
is on disk, so a crash inside a stage re-runs that stage alone (training itself resumes from
Keras' ``BackupAndRestore`` state, epoch by epoch).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import time
from pathlib import Path

from chestkd.io import atomic_write_json


class Stages:
    """``stages.json`` of ``run_dir``: ``done(name)``, ``mark(name, **info)``, ``info(name)``."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / "stages.json"

    def _read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def done(self, name: str) -> bool:
        return name in self._read()

    def info(self, name: str) -> dict | None:
        return self._read().get(name)

    def mark(self, name: str, **info) -> None:
        stages = self._read()
        stages[name] = {"finished": datetime.datetime.now().isoformat(timespec="seconds"),
                        **info}
        atomic_write_json(self.path, stages)

    def __repr__(self):
        return f"Stages({sorted(self._read())})"


class StageTimer:
    """Wall seconds per named stage of one process's run, and in total since it was made.

    ``with timer.stage("distillation"): ...`` adds the block's wall time to that stage (a
    stage entered twice adds up); :meth:`seconds` gives every stage and ``total``, which
    includes the time between stages, so the stages never sum to more than the total.
    :meth:`line` is the one line a log shows. A resumed run times only what it re-does.
    """

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self._start = clock()
        self._stages: dict[str, float] = {}
        self._running: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def start(self, name: str) -> None:
        """Start timing ``name`` (for a stage that spans code a ``with`` block cannot)."""
        if name in self._running:
            raise RuntimeError(f"stage {name!r} is already being timed")
        self._stages.setdefault(name, 0.0)
        self._running[name] = self.clock()

    def stop(self, name: str) -> None:
        self._stages[name] += self.clock() - self._running.pop(name)

    def seconds(self) -> dict:
        """``{stage: seconds, ..., "total": seconds}``."""
        return {**self._stages, "total": self.clock() - self._start}

    def line(self, labels: dict | None = None) -> str:
        """``stage seconds: phantom 12.3, base training 216.0, ..., total 500.1``."""
        labels = labels or {}
        return "stage seconds: " + ", ".join(
            f"{labels.get(name, name.replace('_', ' '))} {value:.1f}"
            for name, value in self.seconds().items())
