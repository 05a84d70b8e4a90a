"""benchmarks/gpu_acceptance.py --smoke runs on a CPU, so the GPU acceptance script never rots."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_acceptance  # noqa: E402


def test_the_smoke_run_measures_every_case_and_the_main_job(tmp_path, monkeypatch):
    monkeypatch.setenv("CHESTKD_HOME", str(tmp_path / "home"))
    out = tmp_path / "acceptance.json"
    assert gpu_acceptance.main(["--smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["training"]
    assert {(r["precision"], r["xla"]) for r in rows} == {
        (p, x) for p in gpu_acceptance.PRECISIONS for x in (False, True)}
    for row in rows:   # every precision and XLA setting trains without a dtype or XLA error
        assert "error" not in row, row
        assert row["images_per_s"] > 0 and row["pipeline_images_per_s"] > 0
    assert set(result["distiller_agreement"].values()) == {"ok"}, result["distiller_losses"]
    assert result["teacher_cache_images_per_s"] > 0
    job = result["main_job"]
    assert job["exit"] == 0, job
    assert 0.0 <= job["auc"]["base"] <= 1.0 and 0.0 <= job["auc"]["self_trained"] <= 1.0


def test_losses_that_differ_from_float32_are_flagged():
    losses = {"float32": {"loss": 1.0, "hard_loss": 0.5, "soft_loss": 0.5},
              "mixed_float16": {"loss": 1.2, "hard_loss": 0.6, "soft_loss": 0.6},
              "mixed_bfloat16": {"loss": float("nan"), "hard_loss": 0.5, "soft_loss": 0.5}}
    verdict = gpu_acceptance.agreement(losses, tolerance=0.05)
    assert verdict == {"float32": "ok", "mixed_float16": "DIFFERS", "mixed_bfloat16": "DIFFERS"}
