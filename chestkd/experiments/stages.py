"""The completed stages of a run, so a resumed run never repeats a finished one.

A run directory's ``stages.json`` maps each finished stage (``training``, ``evaluation``,
``figures``, ...) to what it left behind. A stage is marked only after everything it writes
is on disk, so a crash inside a stage re-runs that stage alone (training itself resumes from
Keras' ``BackupAndRestore`` state, epoch by epoch).
"""
from __future__ import annotations

import datetime
import json
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
