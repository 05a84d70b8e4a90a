"""Base training: train one model on labels alone, then score it on the test split.

    python -m chestkd.recipes.base_training [--config recipes/X.yaml] [--dataset NAME]
        [--data-dir DIR] [--model NAME] [--epochs N] [--batch-size N] [--image-size N]
        [--out DIR] [--seeds 0,1,2] [key=value ...]

With no data given it trains on the built-in phantom. The model comes from the model store
(``teachers_dir``): a model trained before with the same configuration, e.g. as a KD teacher,
is reused, never trained twice. The run directory gets its results (metrics.json with 95 %
confidence intervals, per-class AUC tables, ROC, calibration and training curves) and
``trained_in``, the store entry that holds the model.
"""
from pathlib import Path

from chestkd.evaluation import print_results
from chestkd.experiments.kd import obtained_model_results
from chestkd.experiments.repeat import recipe_entry
from chestkd.experiments.store import obtain_model
from chestkd.training.config import BASE_DEFAULTS
from chestkd.training.classifier import prepare_run_data
from chestkd.training.options import run_options
from chestkd.training.run import open_run, write_json

DEFAULTS = BASE_DEFAULTS


def run_once(config: dict) -> dict:
    run_dir, options = open_run(run_options(config), "base_training")  # no dict goes further
    print(f"run directory: {run_dir}")
    data, options = prepare_run_data(options, run_dir)
    model, source = obtain_model(options, data, options.training.model)
    # a store entry's results (scored anew with another bootstrap), or a given .keras scored
    results = obtained_model_results(options, data, run_dir, model, source)
    if Path(source).is_dir():  # trained (now or before) in the model store
        results["trained_in"] = str(source)
        write_json(results, Path(run_dir) / "metrics.json")
    print_results(results)
    return {**results, "run_dir": str(run_dir)}


run, main = recipe_entry(run_once, DEFAULTS, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
