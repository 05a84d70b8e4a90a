"""Base training: train one model on labels alone, then score it on the test split.

    python -m chestkd.recipes.base_training [--config recipes/X.yaml] [--dataset NAME]
        [--data-dir DIR] [--model NAME] [--epochs N] [--batch-size N] [--image-size N]
        [--out DIR] [key=value ...]

With no data given it trains on the built-in phantom. Results (metrics.json, per-class AUC
tables, ROC and training curves) go into a new run directory under ``--out``.
"""
from chestkd.evaluation import evaluate_model, print_results
from chestkd.training.config import BASE_DEFAULTS, resolve_config
from chestkd.training.experiment import cli_errors, load_run_data, train_classifier
from chestkd.training.run import start_run


def main(argv=None) -> dict:
    with cli_errors():
        config = resolve_config(argv, BASE_DEFAULTS, __doc__)
        run_dir = start_run(config, "base_training")
        print(f"run directory: {run_dir}")
        data = load_run_data(config, run_dir)
        model = train_classifier(config, run_dir, data, config["model"])
        results = evaluate_model(model, data, config, run_dir)
        print_results(results)
        return results


if __name__ == "__main__":
    main()
