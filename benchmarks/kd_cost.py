"""What distillation costs: wall seconds per epoch of KD vs. base training, same student.

    python benchmarks/kd_cost.py [--teacher resnet50] [--student conv3_student] [--images 800]
        [--image-size 128] [--epochs 3]

Times base training of the student, KD with the teacher run online in every step, and KD with
cached teacher outputs (computed once for both flips of every training image; that one-off pass
is timed separately). The paper reports KD at 1.7-2.3x the base epoch; chestkd's goal for the
cached mode is <= 1.1x. Results go to benchmarks/RESULTS.md ("Cost of distillation").
"""
import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

import numpy as np  # noqa: E402

from chestkd.data import load_dataset  # noqa: E402
from chestkd.experiments.kd import distil  # noqa: E402
from chestkd.training.teacher_cache import teacher_logits_table  # noqa: E402
from chestkd.training.config import BASE_DEFAULTS, KD_DEFAULTS  # noqa: E402
from chestkd.training.classifier import build_model, train_classifier  # noqa: E402
from chestkd.training.run import new_run_dir  # noqa: E402


def epoch_seconds(run_dir):
    import pandas as pd
    seconds = pd.read_csv(Path(run_dir) / "history.csv")["epoch_seconds"].to_numpy()
    return float(np.median(seconds[1:] if len(seconds) > 1 else seconds))  # epoch 1 traces


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", default="resnet50")
    parser.add_argument("--student", default="conv3_student")
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true",
                        help="print the section, leave RESULTS.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = {**BASE_DEFAULTS, **KD_DEFAULTS, "dataset": "phantom",
                  "phantom_images": args.images, "phantom_size": 128,
                  "image_size": args.image_size, "epochs": args.epochs, "batch_size": 32,
                  "schedule": "constant", "learning_rate": 0.01, "out": tmp,
                  "latency_images": 4}
        data = load_dataset("phantom", None, images=args.images, size=128)
        teacher = build_model(args.teacher, data, config)  # untrained: cost does not depend on it
        base_dir = new_run_dir(tmp, "base")
        train_classifier(config, base_dir, data, args.student)
        base = epoch_seconds(base_dir)
        rows = [("base training", base, 1.0)]
        for mode in ("online", "cached"):
            run_dir = new_run_dir(tmp, mode)
            start = time.perf_counter()
            if mode == "cached":
                teacher_logits_table(teacher, data, image_size=args.image_size)
                cache_seconds = time.perf_counter() - start
            distil({**config, "teacher_outputs": mode}, run_dir, data, teacher, args.student)
            seconds = epoch_seconds(run_dir)
            rows.append((f"KD, teacher {mode}", seconds, seconds / base))
    n_train = int((data.split == "train").sum())
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU.",
        f"Command: `python benchmarks/kd_cost.py --teacher {args.teacher} --student "
        f"{args.student} --images {args.images} --image-size {args.image_size} "
        f"--epochs {args.epochs}`",
        "",
        f"Student {args.student}, teacher {args.teacher}, {n_train} training images of "
        f"{args.image_size}x{args.image_size}; median epoch after the first (tracing) epoch, "
        "validation included:",
        "",
        "| training | seconds/epoch | x base |",
        "|---|---|---|",
        *[f"| {name} | {sec:.2f} | {ratio:.2f} |" for name, sec, ratio in rows],
        "",
        f"The cached mode's one-off teacher pass (both flips of {n_train} images) took "
        f"{cache_seconds:.1f} s, about {cache_seconds / rows[1][1]:.1f} online-KD epochs.",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section("Cost of distillation", "\n".join(lines))


if __name__ == "__main__":
    main()
