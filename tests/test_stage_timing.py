"""Where the main job's time goes: wall seconds per stage in its log and metrics.json."""
import json
from pathlib import Path

import pytest

from chestkd.training.run import StageTimer


class ScriptedClock:
    def __init__(self, times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def test_stage_timer_adds_up_each_stage_and_counts_the_gaps_in_the_total():
    # made at 0; a: 1-3; b: 4-8; a again: 8-9.5 (adds up); started/stopped: 10-10.25; total 12
    timer = StageTimer(clock=ScriptedClock([0, 1, 3, 4, 8, 8, 9.5, 10, 10.25, 12, 12, 13]))
    with timer.stage("a"):
        pass
    with timer.stage("b"):
        pass
    with timer.stage("a"):
        pass
    timer.start("c_d")
    timer.stop("c_d")
    assert timer.seconds() == {"a": 3.5, "b": 4.0, "c_d": 0.25, "total": 12.0}
    assert timer.line() == "stage seconds: a 3.5, b 4.0, c d 0.2, total 12.0"
    with pytest.raises(RuntimeError, match="already"):
        timer.start("a")
        timer.start("a")


def test_the_main_job_logs_and_records_the_seconds_of_each_stage(tmp_path, capsys):
    from chestkd.recipes import self_training
    out = tmp_path / "runs"
    results = self_training.run([
        "--model", "conv3_student", "--epochs", "2", "--batch-size", "16", "--image-size", "32",
        "phantom_images=120", "phantom_size=32", "--out", str(out), "latency_images=2",
        "bootstrap=40", "jit_compile=false", "--no-saliency"])
    stages = ("data", "base_training", "evaluation", "teacher_pass", "distillation",
              "saliency")
    seconds = results["stage_seconds"]
    assert list(seconds) == [*stages, "total"]
    assert all(value >= 0 for value in seconds.values())
    assert sum(seconds[name] for name in stages) <= seconds["total"]
    # the three stages that train or run a model take time; the saliency stage is off here
    assert min(seconds["base_training"], seconds["teacher_pass"], seconds["distillation"]) > 0
    run_dir = next(Path(out).glob("self_training-*"))
    assert json.loads((run_dir / "metrics.json").read_text())["stage_seconds"] == seconds
    printed = capsys.readouterr().out
    assert "stage seconds: data " in printed and ", saliency " in printed
    # the base training's first epoch also estimates the distillation that follows it
    assert "then distillation: 2 epoch(s), about " in printed
    # the teacher pass wrote the tables the distillation read
    assert (run_dir / "teacher_logits_train.npy").exists()
