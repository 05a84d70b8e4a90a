"""Self-training KD (the main job): a model trained normally teaches a fresh copy of itself.

    python -m chestkd.recipes.self_training [--config recipes/X.yaml] [--model NAME]
        [--kd-loss sigmoid|ho2020_eq8|hinton|ho2020_eq5] [--temperature T] [--alpha A]
        [--student-init fresh|teacher] [--seeds 0,1,2] [base-training options] [key=value ...]

1. base training of ``--model`` (kept in the model store and reused by later runs);
2. distillation of that model into a copy of itself: ``fresh`` (default) starts from another
   random initialisation and sees the data in another order than its teacher (seed + 1);
   ``teacher`` starts from the teacher's weights;
3. per-class and mean test AUC of both, with 95 % patient-bootstrap intervals, a paired test
   of the two models on the same test images (paired patient bootstrap of each finding's and
   of the mean-AUC difference, Holm-adjusted across findings, and the clustered DeLong test
   with the patient as the unit; the table is
   :func:`chestkd.evaluation.statistics.comparison_table`) and both models' calibration (ECE,
   Brier), on clean and noisy labels when the data has both (the phantom with
   ``label_noise``);
4. saliency figures of the base and the self-trained model side by side for the same images,
   with the findings' boxes, localisation scores with 95 % intervals against a centre
   baseline, and a parameter-randomisation sanity check, when the data has boxes. On a CPU
   the saliency stage explains :data:`CPU_SALIENCY` (12 scored boxes, SmoothGrad-IG 8 x 8)
   to stay under a minute on 2 cores; with a GPU every test box at the GPU defaults of
   :mod:`chestkd.saliency.report`. The figure captions say which.

The KD loss defaults to ``sigmoid`` (T = 4, alpha = 0.5), the sound form for 14 non-exclusive
findings; the paper's Eq. 8 (softmax KL at temperature tau) is ``--kd-loss ho2020_eq8``.
With no data given it runs on the built-in phantom in a few minutes on two CPU cores.
"""
import json
from pathlib import Path

from chestkd.cli import main_of
from chestkd.evaluation.statistics import (compare_predictions, comparison_markdown,
                                           comparison_table)
from chestkd.experiments.kd import distil, evaluate_once, record_teacher, resolve_kd_loss
from chestkd.experiments.repeat import over_seeds
from chestkd.experiments.store import copy_results, obtain_model
from chestkd.saliency.report import write_saliency_report
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS, resolve_config
from chestkd.training.experiment import image_options, load_run_data
from chestkd.training.run import Stages, StageTimer, start_run, write_json
from chestkd.training.teacher_cache import load_or_compute

# The model teaches itself: no teacher/student names, strategy or defective options.
DEFAULTS = {**BASE_DEFAULTS,
            **{k: v for k, v in KD_DEFAULTS.items() if k in ("kd_loss", "teacher_outputs")},
            "temperature": 4.0, "alpha": 0.5, "student_init": "fresh"}
# The saliency stage on a CPU: fewer images and samples (captions name the settings used).
CPU_SALIENCY = {"max_images": 12, "figure_images": 4, "sanity_images": 1, "sanity_steps": 5,
                "method_options": {"smoothgrad_ig": {"samples": 8, "steps": 8}}}
GPU_SALIENCY = {"max_images": 1_000_000}      # every boxed test image (984 on ChestX-ray14)
LOSS_NAMES = {"sigmoid": "sigmoid KD", "ho2020_eq8": "Eq. 8", "ho2020_eq5": "Eq. 5",
              "hinton": "Hinton KD"}


def base_results(config, data, run_dir, base, base_dir) -> dict:
    """The base model's results inside this run (``base_*`` files)."""
    if Path(base_dir).is_dir():
        return copy_results(base_dir, run_dir, prefix="base_")
    return evaluate_once(base, data, config, run_dir, prefix="base_", stage="base_evaluation")


def saliency_stage(config, data, run_dir, base, student) -> dict:
    """Saliency report of the self-trained model next to its base (same images, findings)."""
    import tensorflow as tf

    settings = GPU_SALIENCY if tf.config.list_physical_devices("GPU") else CPU_SALIENCY
    return write_saliency_report(student, data.subset("test"), run_dir / "saliency",
                                 image_size=int(config["image_size"]),
                                 class_names=data.class_names,
                                 normalization=config["normalization"],
                                 mean_std=config.get("mean_std"), model_name="self-trained",
                                 compare_models={"base": base}, seed=int(config["seed"]),
                                 **settings)


def teacher_pass(config, run_dir, data, teacher) -> None:
    """The teacher's logits for both flips of every training and validation image, written
    where :func:`~chestkd.experiments.kd.distil` reads them, so the stage timing shows the
    teacher pass apart from the distillation (online teacher outputs: nothing to do here)."""
    if config.get("teacher_outputs", "cached") == "online" or Stages(run_dir).done("training"):
        return
    for split in ("train", "val"):
        load_or_compute(Path(run_dir) / f"teacher_logits_{split}.npy", teacher, data, split,
                        **image_options(data, config))


def run_once(config: dict) -> dict:
    # Wall time per stage, in the log and metrics.json ("stage_seconds"). base_training
    # includes the base model's first scoring in the model store (0 when the store had it).
    timer = StageTimer()
    run_dir = start_run(config, "self_training")
    stages = Stages(run_dir)
    print(f"run directory: {run_dir}")
    with timer.stage("data"):  # generating the phantom, or reading a dataset, and its set-up
        data = load_run_data(config, run_dir)
    loss = resolve_kd_loss(config, data)
    # The base training's first epoch also estimates the distillation after it.
    config["_later_stages"] = [{"name": "distillation", "epochs": int(config["epochs"])}]
    with timer.stage("base_training"):
        base, base_dir = obtain_model(config, data, config["model"])
    config.pop("_later_stages")
    record_teacher(run_dir, base_dir)
    with timer.stage("evaluation"):
        base_metrics = base_results(config, data, run_dir, base, base_dir)
    fresh = config.get("student_init", "fresh") == "fresh"
    with timer.stage("teacher_pass"):
        teacher_pass(config, run_dir, data, base)
    with timer.stage("distillation"):
        student = distil(config, run_dir, data, base, config["model"],
                         seed=int(config["seed"]) + 1 if fresh else None,
                         init_from=None if fresh else base)
    timer.start("evaluation")  # the self-trained model's scores, the comparison, its tables
    results = evaluate_once(student, data, config, run_dir,
                            title="ROC curves, self-trained (test split)")
    summary, _ = compare_predictions(run_dir / "base_test_predictions.npz",
                                     run_dir / "test_predictions.npz",
                                     n_boot=int(config.get("bootstrap") or 0),
                                     seed=int(config["seed"]))
    title = (f"{config['model']} on {data.name} ({results['test_images']} test images): base "
             f"vs. self-trained ({LOSS_NAMES.get(loss, loss)}, T={config['temperature']:g}, "
             f"alpha={config['alpha']:g}, student_init={config.get('student_init', 'fresh')})")
    lines = [f"# {title}", ""]
    parts = [("", summary["comparison"], summary["labels"])]
    if "noisy_comparison" in summary:
        parts.append(("noisy_", summary["noisy_comparison"], "noisy"))
    for prefix, comparison, labels in parts:
        if not prefix:
            comparison_table(comparison, "base", "self-trained").to_csv(
                run_dir / "comparison.csv", index=False)
        lines += [f"## Test AUC against {labels} labels", "",
                  comparison_markdown(comparison, "base", "self-trained"), ""]
    text = "\n".join(lines)
    (run_dir / "comparison.md").write_text(text + "\n")
    write_json(summary, run_dir / "comparison.json")
    print("\n" + text)
    results.update(strategy="self_training", kd_loss=loss, teacher_source=str(base_dir),
                   student_seed=int(config["seed"]) + (1 if fresh else 0),
                   base_mean_auc=base_metrics["mean_auc"],
                   base_per_class_auc=base_metrics["per_class_auc"],
                   comparison={k: summary["comparison"][k] for k in
                               ("mean_auc_a", "mean_auc_b", "difference", "difference_ci",
                                "p_value")})
    for key in ("noisy_mean_auc", "noisy_per_class_auc"):
        if key in base_metrics:
            results[f"base_{key}"] = base_metrics[key]
    timer.stop("evaluation")
    with timer.stage("saliency"):
        if config.get("saliency") and data.boxes is not None and len(data.boxes):
            if not stages.done("figures"):
                report = saliency_stage(config, data, run_dir, base, student)
                write_json(report, run_dir / "saliency" / "report.json")
                stages.mark("figures")
            results["saliency"] = json.loads((run_dir / "saliency" / "report.json")
                                             .read_text())
            print(f"saliency figures: {run_dir / 'saliency'}")
    results["stage_seconds"] = timer.seconds()
    print(timer.line())
    write_json(results, run_dir / "metrics.json")
    return results


def run(argv=None) -> dict:
    config = resolve_config(argv, DEFAULTS, __doc__)
    return over_seeds(run_once, config) if config.get("seeds") else run_once(config)


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
