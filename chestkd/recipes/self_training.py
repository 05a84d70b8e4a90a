"""Self-training KD (the main job): a model trained normally teaches a fresh copy of itself.

    python -m chestkd.recipes.self_training [--config recipes/X.yaml] [--model NAME]
        [--kd-loss ho2020_eq8|hinton|ho2020_eq5|sigmoid] [--temperature T] [--alpha A]
        [base-training options] [key=value ...]

1. base training of ``--model`` (kept under ``teachers_dir`` and reused by later runs);
2. distillation of that model into a fresh copy of itself with the paper's Eq. 8;
3. per-class and mean AUC of both on the test split, side by side;
4. saliency figures of the self-trained model with the findings' boxes, when the data has boxes.

With no data given it runs on the built-in phantom in a few minutes on two CPU cores.
"""
import json
import shutil
from pathlib import Path

import pandas as pd

from chestkd.distill.strategies import distil, obtain_teacher, record_teacher
from chestkd.evaluation import evaluate_model, markdown_table
from chestkd.saliency.report import write_saliency_report
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS, resolve_config
from chestkd.training.experiment import cli_errors, load_run_data
from chestkd.training.run import start_run, write_json

DEFAULTS = {**BASE_DEFAULTS, **KD_DEFAULTS, "kd_loss": "ho2020_eq8", "temperature": 2.0,
            "alpha": 0.5}


def comparison_table(base: dict, self_trained: dict) -> pd.DataFrame:
    table = pd.DataFrame({"finding": list(base["per_class_auc"]),
                          "base": list(base["per_class_auc"].values()),
                          "self-trained": [self_trained["per_class_auc"][k]
                                           for k in base["per_class_auc"]]})
    table["change"] = table["self-trained"] - table["base"]
    mean = {"finding": "**mean**", "base": base["mean_auc"],
            "self-trained": self_trained["mean_auc"],
            "change": self_trained["mean_auc"] - base["mean_auc"]}
    return pd.concat([table, pd.DataFrame([mean])], ignore_index=True)


def main(argv=None) -> dict:
    with cli_errors():
        config = resolve_config(argv, DEFAULTS, __doc__)
        config["student"] = config["teacher"] = config["model"]
        run_dir = start_run(config, "self_training")
        print(f"run directory: {run_dir}")
        data = load_run_data(config, run_dir)
        base, base_dir = obtain_teacher(config, data, config["model"], int(config["epochs"]))
        record_teacher(run_dir, base_dir)
        base_results = json.loads((Path(base_dir) / "metrics.json").read_text()) \
            if Path(base_dir).is_dir() else evaluate_model(base, data, config, run_dir,
                                                           prefix="base_")
        if Path(base_dir).is_dir():  # the base run's curves sit beside the self-trained ones
            shutil.copy(Path(base_dir) / "history.csv", Path(run_dir) / "base_history.csv")
            write_json(base_results, Path(run_dir) / "base_metrics.json")
        student = distil(config, run_dir, data, base, config["model"])
        results = evaluate_model(student, data, config, run_dir,
                                 title="ROC curves, self-trained (test split)")
        results["strategy"] = "self_training"
        results["base_mean_auc"] = base_results["mean_auc"]
        table = comparison_table(base_results, results)
        (Path(run_dir) / "comparison.md").write_text(markdown_table(table) + "\n")
        table.to_csv(Path(run_dir) / "comparison.csv", index=False)
        print(f"\nPer-class test AUC, {config['model']} on {data.name} "
              f"({results['test_images']} images): base vs. self-trained (Eq. 8)")
        print(markdown_table(table))
        if config.get("saliency") and data.boxes is not None and len(data.boxes):
            report = write_saliency_report(student, data.subset("test"),
                                           Path(run_dir) / "saliency",
                                           image_size=int(config["image_size"]),
                                           class_names=data.class_names)
            results["saliency"] = report
            print(f"saliency figures: {Path(run_dir) / 'saliency'}")
        write_json(results, Path(run_dir) / "metrics.json")
        return results


if __name__ == "__main__":
    main()
