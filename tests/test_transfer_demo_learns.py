"""The transfer-learning recipe's no-data demo learns (issue 15, defect 14).

Its old default wrote a Table 4.1 whose baseline, extractor, fine-tuned model and teacher sat at
chance. This runs the demo as a new user gets it (the no-data profile: its architectures,
source task, stages and checkpoint rule), only smaller, from a fresh home and model store, and
asserts that every setup's test AUC interval lies above 0.5: the table's own verdict.

It costs about 6 CPU-minutes (4.7 min of one CI worker on the VM of 2026-12-06), which would
take the suite past CI's 10 minutes on two cores, so it runs when CHESTKD_SLOW_TESTS=1
(`CHESTKD_SLOW_TESTS=1 python -m pytest tests/test_transfer_demo_learns.py`). It was seen
failing on the code before the fix (extractor 0.563 [0.500, 0.646], ResNet-50 teacher 0.527
[0.462, 0.604]) and passing after it.
"""
import json
import os

import pandas as pd
import pytest

from chestkd.experiments import transfer
from chestkd.recipes import transfer_learning

# What the test reduces, and nothing else: fewer epochs per ResNet stage (pretraining 5 of 6,
# head 2 of 4, fine-tuning 2 of 4, so the student 4 of 8), a 200-resample bootstrap, two
# latency images, no saliency figures. The films, their 64 px and the baseline's 30 epochs stay
# the demo's: read at 32 px, or from 2,000 films at 48 px, the phantom-pretrained ResNet-18 is at
# chance after a few epochs (so is its fixed extractor); with 15 baseline epochs the baseline's
# test interval starts near 0.5 for some seeds.
REDUCED = {"phantom_images": 1000, "phantom_size": 64, "image_size": 64,
           "pretrain_images": 1000, "pretrain_epochs": 5, "epochs": 2, "finetune_epochs": 2,
           "baseline_epochs": 30, "bootstrap": 200, "latency_images": 2, "saliency": False}
# the profile's choices the reduced run must keep, so it is the demo's table that learns
DEMO = {"baseline_model": "baseline_cnn", "transfer_model": "resnet18"}


@pytest.mark.skipif(os.environ.get("CHESTKD_SLOW_TESTS") != "1",
                    reason="~6 CPU-minutes; set CHESTKD_SLOW_TESTS=1")
def test_every_setup_of_the_reduced_demo_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("CHESTKD_HOME", str(tmp_path / "home"))   # phantoms and pretraining anew
    argv = ["--out", str(tmp_path / "runs"), *(f"{k}={v}" for k, v in REDUCED.items())]
    summary = transfer_learning.run(argv)
    run_dir = next((tmp_path / "runs").glob("transfer_learning-*"))
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["table"] == json.loads(json.dumps(summary["table"]))
    table = pd.read_csv(run_dir / "table4_1.csv")
    assert len(table) == len(written["table"]) == len(transfer.SETUPS)
    assert {k: transfer_learning.resolve(argv)[k] for k in DEMO} == DEMO
    models = [row["model"] for row in written["table"]]
    assert models[0] == DEMO["baseline_model"]
    assert models[1] == models[2] == models[4] == DEMO["transfer_model"]
    lower = {row["setup"]: row["auc_ci"][0] for row in written["table"]}
    assert all(row["auc_ci"] and row["auc_ci"][0] <= row["auc"] <= row["auc_ci"][1]
               for row in written["table"])
    assert all(bound > 0.5 for bound in lower.values()), lower
    assert "Every setup learnt" in (run_dir / "table4_1.md").read_text()
