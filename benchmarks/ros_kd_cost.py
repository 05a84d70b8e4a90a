"""What RoS-KD costs: wall seconds per epoch with K cached teachers vs. base training of the
same student.

    python benchmarks/ros_kd_cost.py [--teachers resnet32,baseline_cnn,conv3_student,resnet32,
        baseline_cnn] [--student conv3_student] [--images 800] [--image-size 64] [--epochs 3]
        [--write-results]

Times (1) base training of the student, (2) RoS-KD without weight averaging (Baseline V: K
teachers' cached logits, random teacher weights per step) and (3) RoS-KD with weight averaging
from epoch 1 (the extra cost: the raw student's validation pass and the exact BatchNorm
re-estimation of the average on the training images). The one-off teacher pass (both flips of
every training and validation image, all K teachers) is timed separately. The goal is
(2) <= 1.1x (1). Each epoch is reported in wall seconds (``epoch_seconds``) and in CPU seconds
of the process, the steadier measure when other programs share the cores. Teachers are untrained: the cost does not depend on their weights.
``--write-results`` writes the section "Cost of RoS-KD" of benchmarks/RESULTS.md.
"""
import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from chestkd.data import load_dataset  # noqa: E402
from chestkd.training.teacher_cache import teacher_logits_table  # noqa: E402
from chestkd.experiments.ros import distil_setting  # noqa: E402
from chestkd.recipes.ros_kd import DEFAULTS  # noqa: E402
from chestkd.training.classifier import build_model, train_classifier  # noqa: E402
from chestkd.training.run import new_run_dir  # noqa: E402


def epoch_seconds(run_dir) -> float:
    seconds = pd.read_csv(Path(run_dir) / "history.csv")["epoch_seconds"].to_numpy()
    return float(np.median(seconds[1:] if len(seconds) > 1 else seconds))  # epoch 1 traces


class CPUSeconds(keras.callbacks.Callback):
    """CPU seconds of this process (all threads) per epoch: steadier than wall time when
    other programs share the cores. Measured from one epoch end to the next, so every
    callback of the epoch (validation, averaging, checkpoint) is inside."""

    def on_train_begin(self, logs=None):
        self.seconds, self._last = [], time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        now = time.process_time()
        self.seconds.append(now - self._last)
        self._last = now

    def median(self) -> float:
        return float(np.median(self.seconds[1:] if len(self.seconds) > 1 else self.seconds))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--teachers",
                        default="resnet32,baseline_cnn,conv3_student,resnet32,baseline_cnn")
    parser.add_argument("--student", default="conv3_student")
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args()
    names = args.teachers.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        config = {**DEFAULTS, "dataset": "phantom", "phantom_images": args.images,
                  "phantom_size": args.image_size, "image_size": args.image_size,
                  "epochs": args.epochs, "batch_size": 32, "schedule": "constant",
                  "learning_rate": 0.01, "out": tmp, "latency_images": 4,
                  "jit_compile": False, "averaging_start": 0}
        data = load_dataset("phantom", None, images=args.images, size=args.image_size)
        base_dir, base_cpu = new_run_dir(tmp, "base"), CPUSeconds()
        train_classifier(config, base_dir, data, args.student, extra_callbacks=[base_cpu])
        base = epoch_seconds(base_dir)
        teachers = [build_model(name, data, config) for name in names]
        start = time.perf_counter()
        tables = {split: teacher_logits_table(teachers, data, split, image_size=args.image_size,
                                              verbose=0) for split in ("train", "val")}
        cache_seconds = time.perf_counter() - start
        rows = [("base training", base, 1.0, base_cpu.median(), 1.0)]
        for label, averaging in (("RoS-KD without averaging (Baseline V)", False),
                                 ("RoS-KD with weight averaging", True)):
            run_dir, cpu = new_run_dir(tmp, "ros"), CPUSeconds()
            distil_setting(config, run_dir, data, tables, args.student, sampling="random",
                           averaging_start=config["averaging_start"] if averaging else None,
                           bn_batches=config["bn_batches"], extra_callbacks=[cpu])
            seconds = epoch_seconds(run_dir)
            rows.append((label, seconds, seconds / base, cpu.median(),
                         cpu.median() / base_cpu.median()))
    n_train = int((data.split == "train").sum())
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU.",
        f"Command: `python benchmarks/ros_kd_cost.py --teachers {args.teachers} --student "
        f"{args.student} --images {args.images} --image-size {args.image_size} "
        f"--epochs {args.epochs}`",
        "",
        f"Student {args.student}, {len(names)} cached teachers, {n_train} training images of "
        f"{args.image_size}x{args.image_size}; median epoch after the first (tracing) epoch, "
        "validation included:",
        "",
        "| training | wall s/epoch | x base | CPU s/epoch | x base |",
        "|---|---|---|---|---|",
        *[f"| {name} | {sec:.2f} | {ratio:.2f} | {cpu:.2f} | {cpu_ratio:.2f} |"
          for name, sec, ratio, cpu, cpu_ratio in rows],
        "",
        f"One-off teacher pass (both flips of the training and validation images, "
        f"{len(names)} teachers): {cache_seconds:.1f} s.",
    ]
    print("\n".join(lines))
    if args.write_results:
        from results import write_section
        write_section("Cost of RoS-KD with five cached teachers", "\n".join(lines))


if __name__ == "__main__":
    main()
