"""Self-training KD (the main job): a model trained normally teaches a fresh copy of itself.

    python -m chestkd.recipes.self_training [--config recipes/X.yaml] [--model NAME]
        [--kd-loss sigmoid|ho2020_eq8|hinton|ho2020_eq5] [--temperature T] [--alpha A]
        [--student-init fresh|teacher] [--seeds 0,1,2] [base-training options] [key=value ...]

1. base training of ``--model`` (kept in the model store and reused by later runs);
2. distillation into a copy of itself (``--student-init fresh``: another initialisation and
   data order, seed + 1; ``teacher``: the teacher's weights);
3. both models' test AUCs with 95 % patient-bootstrap intervals, their paired comparison and
   calibration (:func:`chestkd.evaluation.statistics.write_comparison`), clean and noisy labels;
4. saliency figures of both models on the same boxed test images, localisation, a sanity check.

KD loss: ``sigmoid`` (T = 4, alpha = 0.5), the sound form for 14 non-exclusive findings; the
paper's Eq. 8 is ``--kd-loss ho2020_eq8``. No data: the phantom (docs/ho_gwak_2020.md)."""
import json

import tensorflow as tf

from chestkd.distill.kd_loss import FORMULATION_TITLES
from chestkd.evaluation.statistics import write_comparison
from chestkd.experiments.kd import (cache_teacher_logits, distil, evaluate_once,
                                    obtained_model_results, record_teacher, resolve_kd_loss,
                                    write_final_metrics)
from chestkd.experiments.repeat import recipe_entry
from chestkd.experiments.store import obtain_model
from chestkd.saliency.report import write_saliency_report
from chestkd.training.classifier import prepare_run_data
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS
from chestkd.training.options import RunOptions, run_options
from chestkd.training.run import Stages, StageTimer, open_run, write_json

# The model teaches itself: no teacher/student names, strategy or defective options.
DEFAULTS = {**BASE_DEFAULTS,
            **{k: v for k, v in KD_DEFAULTS.items() if k in ("kd_loss", "teacher_outputs")},
            "temperature": 4.0, "alpha": 0.5, "student_init": "fresh"}
# No data (over PHANTOM_PROFILE; keys you set win): ResNet-20, batch 16, 10 epochs matched
# ResNet-32, batch 32, 15 epochs over three seeds in half the time (RESULTS.md, "three seeds").
RECIPE_PROFILES = {"phantom": {"model": "resnet20", "batch_size": 16, "epochs": 10}}
# The saliency stage on a CPU: fewer images and samples (captions name the settings used).
CPU_SALIENCY = {"max_images": 12, "figure_images": 4, "sanity_images": 1, "sanity_steps": 5,
                "method_options": {"smoothgrad_ig": {"samples": 8, "steps": 8}}}
GPU_SALIENCY = {"max_images": 1_000_000}      # every boxed test image (984 on ChestX-ray14)


def saliency_stage(options: RunOptions, data, run_dir, stages, base, student) -> dict:
    """Saliency report of the self-trained model next to its base (same images, findings),
    written once (stage ``figures``); returns ``saliency/report.json``."""
    if not stages.done("figures"):
        settings = GPU_SALIENCY if tf.config.list_physical_devices("GPU") else CPU_SALIENCY
        image = options.image.pipeline()
        report = write_saliency_report(
            student, data.subset("test"), run_dir / "saliency", model_name="self-trained",
            image_size=image["image_size"], class_names=data.class_names,
            normalization=image["normalization"], mean_std=image["mean_std"],
            compare_models={"base": base}, seed=options.seed, **settings)
        write_json(report, run_dir / "saliency" / "report.json")
        stages.mark("figures")
    print(f"saliency figures: {run_dir / 'saliency'}")
    return json.loads((run_dir / "saliency" / "report.json").read_text())


def run_once(config: dict) -> dict:
    # Wall time per stage (log, metrics.json); base_training includes the store's first scoring.
    timer = StageTimer()
    run_dir, options = open_run(run_options(config), "self_training")  # no dict goes further
    stages = Stages(run_dir)
    print(f"run directory: {run_dir}")
    with timer.stage("data"):  # generating the phantom, or reading a dataset, and its set-up
        data, options = prepare_run_data(options, run_dir)
    model, kd, seed = options.training.model, options.kd, options.seed
    loss = resolve_kd_loss(options, data)
    with timer.stage("base_training"):  # its first epoch also estimates the distillation's
        base, base_dir = obtain_model(options, data, model, later_stages=[
            {"name": "distillation", "epochs": options.training.epochs}])
    record_teacher(run_dir, base_dir)
    with timer.stage("evaluation"):
        base_metrics = obtained_model_results(options, data, run_dir, base, base_dir,
                                              prefix="base_")
    fresh = kd.student_init == "fresh"
    with timer.stage("teacher_pass"):  # cached teacher logits, timed apart from distillation
        if kd.teacher_outputs != "online" and not stages.done("training"):
            cache_teacher_logits(options, run_dir, data, base)
    with timer.stage("distillation"):
        student = distil(options, run_dir, data, base, model, kd_loss=loss,
                         seed=seed + 1 if fresh else None, init_from=None if fresh else base)
    timer.start("evaluation")  # the self-trained model's scores, the comparison, its tables
    results = evaluate_once(student, data, options, run_dir,
                            title="ROC curves, self-trained (test split)")
    title = (f"{model} on {data.name} ({results['test_images']} test images): base "
             f"vs. self-trained ({FORMULATION_TITLES.get(loss, loss)}, "
             f"T={kd.temperature:g}, alpha={kd.alpha:g}, student_init={kd.student_init})")
    summary = write_comparison(run_dir / "base_test_predictions.npz",
                               run_dir / "test_predictions.npz", run_dir,
                               names=("base", "self-trained"), title=title,
                               n_boot=options.evaluation.bootstrap, seed=seed)
    results.update(strategy="self_training", kd_loss=loss, run_dir=str(run_dir),
                   teacher_source=str(base_dir),
                   student_seed=seed + (1 if fresh else 0),
                   base_mean_auc=base_metrics["mean_auc"],
                   base_per_class_auc=base_metrics["per_class_auc"],
                   comparison={k: summary["comparison"][k] for k in
                               ("mean_auc_a", "mean_auc_b", "difference", "difference_ci",
                                "p_value")},
                   **{f"base_{k}": base_metrics[k] for k in
                      ("noisy_mean_auc", "noisy_per_class_auc") if k in base_metrics})
    timer.stop("evaluation")
    with timer.stage("saliency"):
        if options.evaluation.saliency and data.boxes is not None and len(data.boxes):
            results["saliency"] = saliency_stage(options, data, run_dir, stages, base, student)
    results["stage_seconds"] = timer.seconds()
    print(timer.line())
    write_final_metrics(results, run_dir, "self_training")
    return results


run, main = recipe_entry(run_once, DEFAULTS, __doc__, recipe_profiles=RECIPE_PROFILES)

if __name__ == "__main__":
    raise SystemExit(main())
