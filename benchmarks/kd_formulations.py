"""Softmax (the paper's) vs. sigmoid distillation losses on the multi-label phantom.

    python benchmarks/kd_formulations.py [--teacher resnet32] [--student conv3_student]
        [--images 1200] [--image-size 128] [--epochs 8]

Trains the teacher once, then the same student (same seed) on labels alone and with each
formulation (hinton, ho2020_eq5, ho2020_eq8, sigmoid), and reports test mean AUC and the
student's agreement with the teacher. Results go to benchmarks/RESULTS.md ("KD formulations").
"""
import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

from chestkd.training.options import as_options
from chestkd.data import load_dataset  # noqa: E402
from chestkd.distill.kd_loss import FORMULATIONS  # noqa: E402
from chestkd.experiments.kd import agreement, distil  # noqa: E402
from chestkd.evaluation import evaluate_model  # noqa: E402
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS, PHANTOM_PROFILE  # noqa: E402
from chestkd.training.classifier import train_classifier  # noqa: E402
from chestkd.training.run import new_run_dir  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", default="resnet32")
    parser.add_argument("--student", default="conv3_student")
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--image-size", type=int, default=PHANTOM_PROFILE["image_size"])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--no-write", action="store_true",
                        help="print the section, leave RESULTS.md alone")
    args = parser.parse_args()
    config = {**BASE_DEFAULTS, **KD_DEFAULTS, **PHANTOM_PROFILE, "phantom_images": args.images,
              "image_size": args.image_size, "epochs": args.epochs,
              "temperature": args.temperature, "alpha": args.alpha, "latency_images": 4}
    data = load_dataset("phantom", None, images=args.images, size=config["phantom_size"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        teacher_dir = new_run_dir(tmp, "teacher")
        teacher = train_classifier(config, teacher_dir, data, args.teacher)
        teacher_auc = evaluate_model(teacher, data, as_options(config), teacher_dir)["mean_auc"]
        # The students start from seed 1 (train_classifier and distil seed from the
        # configuration): with seed 0 a student of the teacher's architecture WAS the
        # teacher, and the labels-only row read the teacher's AUC, agreement 0.
        student_config = {**config, "seed": 1}
        base_dir = new_run_dir(tmp, "base")
        base = train_classifier(student_config, base_dir, data, args.student)
        rows.append(("labels only (no KD)", evaluate_model(base, data, as_options(config), base_dir)
                     ["mean_auc"], agreement(base, teacher, data, config)))
        for formulation in FORMULATIONS:
            run_dir = new_run_dir(tmp, formulation)
            student = distil({**student_config, "kd_loss": formulation},
                             run_dir, data, teacher, args.student)
            scores = evaluate_model(student, data, as_options(config), run_dir)
            rows.append((formulation, scores["mean_auc"],
                         agreement(student, teacher, data, config)))
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU.",
        f"Command: `python benchmarks/kd_formulations.py --teacher {args.teacher} --student "
        f"{args.student} --images {args.images} --image-size {args.image_size} --epochs "
        f"{args.epochs}` (T = {args.temperature}, alpha = {args.alpha}, cached teacher outputs)",
        "",
        f"Phantom, {args.images} images, 14 findings (multi-label). Teacher {args.teacher}: test "
        f"mean AUC {teacher_auc:.4f}. Student {args.student} from seed 1 in every row (the teacher: "
        f"seed 0).",
        "'teacher gap' is the mean |sigmoid(student) - sigmoid(teacher)| on the test split.",
        "",
        "| student trained with | test mean AUC | teacher gap |",
        "|---|---|---|",
        *[f"| {name} | {auc:.4f} | {gap:.4f} |" for name, auc, gap in rows],
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section("KD formulations", "\n".join(lines))


if __name__ == "__main__":
    main()
