"""GPU acceptance run: is chestkd fast and numerically sound on this accelerator?

    python benchmarks/gpu_acceptance.py [--out gpu_acceptance.json] [--smoke]

One command, one table (printed, and written to ``--out`` as JSON):

* the device (GPU name and memory, or the CPU);
* training images/s of DenseNet-121 at 224 px and of ResNet-32 at 128 px (the main
  job's model before issue 18; ResNet-20 since) under float32, ``mixed_float16`` and ``mixed_bfloat16``, each with XLA off and on,
  fed from a prepared uint8 cache of a phantom written at 224 px, so the input pipeline is part
  of what is measured; beside each, the input pipeline's own rate on the same batches (it must
  never be below the model's) and the peak GPU memory;
* the Distiller (cached teacher logits, the main job's sigmoid KD) for a few steps under every
  precision: its losses must be finite and agree with float32 within ``--loss-tolerance``;
* the teacher-cache pass (both flips of every training image) in images/s;
* the main job end to end at its GPU settings (``python -m chestkd.recipes.self_training``
  with ``mixed_precision`` and XLA auto): wall time and both models' test mean AUC.

``--smoke`` runs every case at toy size (32 px, a handful of steps, a 1-epoch main job) so the
test suite can check on a CPU that the script itself works (tests/test_gpu_acceptance.py);
its numbers mean nothing. The goal on one H100 (issue 18): DenseNet-121 >= 1,500 training
images/s with mixed precision and XLA, the pipeline never below the model. Results go to
benchmarks/RESULTS.md ("GPU acceptance") by hand, with the GPU's name.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from chestkd import models  # noqa: E402
from chestkd.data import load_dataset  # noqa: E402
from chestkd.data.cache import prepare  # noqa: E402
from chestkd.data.phantom import write_phantom  # noqa: E402
from chestkd.data.pipeline import encode_labels, make_dataset  # noqa: E402
from chestkd.distill import Distiller, KDLoss  # noqa: E402
from chestkd.training.teacher_cache import teacher_logits_table  # noqa: E402
from chestkd.training.losses import masked_binary_crossentropy  # noqa: E402

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
FULL = {"phantom_images": 1200, "phantom_size": 224, "steps": 40, "warmup_steps": 8,
        "kd_steps": 5, "cases": [("densenet121", 224, 64), ("resnet32", 128, 32)],
        "main_job": []}
SMOKE = {"phantom_images": 40, "phantom_size": 32, "steps": 1, "warmup_steps": 1,
         "kd_steps": 2, "cases": [("conv3_student", 32, 8)],
         "main_job": ["phantom_images=60", "phantom_size=64", "--model", "conv3_student",
                      "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                      "--bootstrap", "40", "--latency-images", "2", "--no-saliency"]}


def device_info() -> dict:
    gpus = tf.config.list_physical_devices("GPU")
    info = {"tensorflow": tf.__version__, "keras": keras.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
            "gpus": []}
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        info["gpus"].append({"name": details.get("device_name", gpu.name),
                             "compute_capability": details.get("compute_capability")})
    try:  # total memory: TF does not report it before allocation; nvidia-smi does
        text = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20).stdout.strip()
        info["nvidia_smi"] = text.splitlines()
    except (OSError, subprocess.SubprocessError):
        info["nvidia_smi"] = []
    return info


def peak_memory_gib() -> float | None:
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**30


def reset_peak_memory() -> None:
    if tf.config.list_physical_devices("GPU"):
        tf.config.experimental.reset_memory_stats("GPU:0")


def training_batches(data, size: int, batch: int, cache):
    """The training pipeline of the runs (shuffle, flip, normalise), read from the cache."""
    return make_dataset(data, "train", image_size=size, batch_size=batch, training=True,
                        cache_dir=cache, drop_remainder=True).repeat()


def pipeline_rate(ds, steps: int, batch: int) -> float:
    iterator = iter(ds)
    next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch / (time.perf_counter() - start)


class StepTimer(keras.callbacks.Callback):
    """Wall time of the steps after the warm-up (tracing, XLA compilation, autotuning)."""

    def __init__(self, warmup: int):
        super().__init__()
        self.warmup, self.start, self.seconds, self.step = warmup, None, None, 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, logs=None):
        self.seconds = time.perf_counter() - self.start


def training_rate(name: str, size: int, batch: int, data, cache, precision: str, xla: bool,
                  settings: dict) -> dict:
    """Images/s of ``fit`` on the cached pipeline after a warm-up, and the pipeline's rate."""
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(0)
    reset_peak_memory()
    model = models.build(name, data.num_classes, (size, size, 3))
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=masked_binary_crossentropy,
                  jit_compile=xla)
    ds = training_batches(data, size, batch, cache)
    timer = StepTimer(settings["warmup_steps"])
    steps = settings["warmup_steps"] + settings["steps"]
    row = {"model": name, "image_size": size, "batch_size": batch, "precision": precision,
           "xla": xla}
    try:
        history = model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[timer])
        row["images_per_s"] = settings["steps"] * batch / timer.seconds
        row["final_loss"] = float(history.history["loss"][-1])
    except Exception as error:  # an XLA or dtype failure is a result of the acceptance run
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    row["pipeline_images_per_s"] = pipeline_rate(ds, settings["steps"], batch)
    row["peak_gib"] = peak_memory_gib()
    keras.mixed_precision.set_global_policy("float32")
    return row


def distiller_losses(data, cache, size: int, batch: int, steps: int) -> dict:
    """The main job's Distiller step (cached logits) under each precision: soft and hard
    losses after ``steps`` steps from the same weights on the same batches."""
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.set_random_seed(0)
    teacher = models.build("conv3_student", data.num_classes, (size, size, 3))
    logits = teacher_logits_table(teacher, data, "train", image_size=size,
                                  cache_dir=cache, verbose=0)
    start_weights = None
    result = {}
    for precision in PRECISIONS:
        keras.mixed_precision.set_global_policy(precision)
        keras.utils.set_random_seed(0)
        student = models.build("conv3_student", data.num_classes, (size, size, 3))
        if start_weights is None:
            start_weights = student.get_weights()
        student.set_weights(start_weights)
        distiller = Distiller(student, None, loss=KDLoss("sigmoid", 4.0, 0.5), multi_label=True)
        distiller.compile(optimizer=keras.optimizers.SGD(0.01))
        ds = make_dataset(data, "train", image_size=size, batch_size=batch, training=True,
                          cache_dir=cache, teacher_logits=logits, drop_remainder=True,
                          seed=0)
        try:
            history = distiller.fit(ds.take(steps), epochs=1, verbose=0)
            result[precision] = {k: float(v[-1]) for k, v in history.history.items()
                                 if k in ("loss", "hard_loss", "soft_loss")}
        except Exception as error:
            result[precision] = {"error": f"{type(error).__name__}: "
                                          f"{str(error).splitlines()[0][:200]}"}
    keras.mixed_precision.set_global_policy("float32")
    return result


def teacher_cache_rate(data, cache, size: int) -> float:
    keras.mixed_precision.set_global_policy("float32")
    teacher = models.build("resnet32", data.num_classes, (size, size, 3))
    images = int((data.split == "train").sum())
    teacher_logits_table(teacher, data, "train", image_size=size, cache_dir=cache, verbose=0)
    start = time.perf_counter()  # second pass: traced, caches warm
    teacher_logits_table(teacher, data, "train", image_size=size, cache_dir=cache, verbose=0)
    return 2 * images / (time.perf_counter() - start)


def main_job(out: Path, extra: list[str]) -> dict:
    """``python -m chestkd.recipes.self_training`` at the GPU settings, as a user runs it."""
    command = [sys.executable, "-m", "chestkd.recipes.self_training", "--out", str(out),
               "mixed_precision=true", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    row = {"command": " ".join(command[1:]), "exit": done.returncode,
           "wall_s": time.perf_counter() - start}
    if done.returncode != 0:
        row["error"] = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return row
    run_dir = next(out.glob("self_training-*"), None)
    row["auc"] = {}
    for model, name in (("base", "base_metrics.json"), ("self_trained", "metrics.json")):
        path = run_dir / name if run_dir else None
        if path is not None and path.exists():
            row["auc"][model] = json.loads(path.read_text()).get("mean_auc")
    return row


def agreement(losses: dict, tolerance: float) -> dict:
    reference = losses.get("float32", {})
    verdict = {}
    for precision, values in losses.items():
        if "error" in values or "loss" not in reference:
            verdict[precision] = "error"
            continue
        finite = all(np.isfinite(v) for v in values.values())
        close = abs(values["loss"] - reference["loss"]) <= tolerance * max(1e-8,
                                                                           abs(reference["loss"]))
        verdict[precision] = "ok" if finite and close else "DIFFERS"
    return verdict


def table(result: dict) -> str:
    lines = ["| model | px | batch | precision | XLA | train img/s | pipeline img/s | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["training"]:
        rate = f"{row['images_per_s']:.0f}" if "images_per_s" in row else row["error"][:60]
        peak = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.1f}"
        lines.append(f"| {row['model']} | {row['image_size']} | {row['batch_size']} | "
                     f"{row['precision']} | {'on' if row['xla'] else 'off'} | {rate} | "
                     f"{row['pipeline_images_per_s']:.0f} | {peak} |")
    lines.append("")
    lines.append(f"Teacher-cache pass: {result['teacher_cache_images_per_s']:.0f} images/s.")
    lines.append("Distiller losses vs float32: " + ", ".join(
        f"{k} {v}" for k, v in result["distiller_agreement"].items()))
    job = result.get("main_job")
    if job:
        lines.append(f"Main job: exit {job['exit']}, {job['wall_s']:.0f} s, AUC {job.get('auc')}")
    return "\n".join(lines)


def run(out: Path, smoke: bool, loss_tolerance: float = 0.05) -> dict:
    settings = SMOKE if smoke else FULL
    result = {"smoke": smoke, "device": device_info(), "training": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = write_phantom(tmp / "phantom", images=settings["phantom_images"],
                             size=settings["phantom_size"])
        data = load_dataset("chestxray14", root, split="patient")
        cache = prepare(data, tmp / "cache", size=settings["phantom_size"], progress=False)
        encode_labels(data)  # fail early on a label problem, before minutes of training
        for name, size, batch in settings["cases"]:
            for precision in PRECISIONS:
                for xla in (False, True):
                    row = training_rate(name, size, batch, data, cache, precision, xla,
                                        settings)
                    result["training"].append(row)
                    print(json.dumps(row), flush=True)
        size, batch = settings["cases"][-1][1], settings["cases"][-1][2]
        losses = distiller_losses(data, cache, size, batch, settings["kd_steps"])
        result["distiller_losses"] = losses
        result["distiller_agreement"] = agreement(losses, loss_tolerance)
        result["teacher_cache_images_per_s"] = teacher_cache_rate(data, cache, size)
        result["main_job"] = main_job(tmp / "runs", settings["main_job"])
    out.write_text(json.dumps(result, indent=1, default=str))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_acceptance.json"))
    parser.add_argument("--smoke", action="store_true",
                        help="toy sizes, to check the script on a CPU (numbers mean nothing)")
    parser.add_argument("--loss-tolerance", type=float, default=0.05,
                        help="relative difference of the Distiller's loss vs float32")
    args = parser.parse_args(argv)
    result = run(args.out, args.smoke, args.loss_tolerance)
    print(table(result))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
