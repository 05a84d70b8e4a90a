"""chestkd.io: one atomic write for every file chestkd writes (JSON, text, arrays)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from chestkd.io import (atomic_save_npy, atomic_write, atomic_write_json, atomic_write_text,
                        json_default)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "table.csv"
    atomic_write_text(path, "old\n")

    def crash(tmp):
        Path(tmp).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, crash)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["table.csv"]


def test_json_handles_numpy_nan_and_paths(tmp_path):
    payload = {"n": np.int64(3), "auc": np.float32(0.5), "missing": np.float64("nan"),
               "per_class": np.array([0.25, np.nan]), "ok": np.bool_(True),
               "run": Path("/runs/a")}
    path = atomic_write_json(tmp_path / "sub" / "metrics.json", payload)
    assert json.loads(path.read_text()) == {"n": 3, "auc": 0.5, "missing": None,
                                            "per_class": [0.25, None], "ok": True,
                                            "run": "/runs/a"}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        json_default(object())
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()


def test_npy_keeps_its_name_and_the_usual_permissions(tmp_path):
    path = atomic_save_npy(tmp_path / "logits.npy", np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(np.load(path), np.arange(6).reshape(2, 3))
    assert os.listdir(tmp_path) == ["logits.npy"]
    reference = tmp_path / "plain.txt"
    reference.write_text("x")
    assert path.stat().st_mode == reference.stat().st_mode
