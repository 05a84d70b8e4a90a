"""A repeat over seeds writes its summary into a folder named after what ran."""
from pathlib import Path

from chestkd.experiments.repeat import recipe_entry
from chestkd.training.config import BASE_DEFAULTS


def test_a_base_training_repeat_is_named_after_its_recipe(tmp_path):
    """Regression: base training reports neither a strategy nor a recipe, so --seeds 0,1
    wrote repeat-seeds-*, not the base_training-seeds-* of docs/statistics.md."""
    def run_once(config):
        return {"mean_auc": 0.5 + config["seed"] / 10, "run_dir": f"runs/seed{config['seed']}"}
    run_once.__module__ = "chestkd.recipes.base_training"   # as the recipe's own run_once
    run, _ = recipe_entry(run_once, BASE_DEFAULTS, "")
    summary = run(["--seeds", "0,1", "--out", str(tmp_path)])
    assert Path(summary["summary_dir"]).name.startswith("base_training-seeds-")
    assert summary["mean_auc"]["values"] == [0.5, 0.6]
