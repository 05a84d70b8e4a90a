"""Where a training step's time goes on this machine, and how far it is from the CPU's peak.

    python benchmarks/train_step_cost.py [--model resnet32] [--image-size 128]
        [--batch-size 32] [--steps 20] [--phantom-images 3000]

For the main job's settings before issue 18 (ResNet-32, 128 px, batch 32, Adam; ResNet-20 at
batch 16 since) it times, per training step,
wall and process CPU seconds (CPU seconds count every thread; on an idle 2-core machine the
ideal wall time is CPU / 2):

1. the model alone: ``model.fit`` on random tensors held in memory, float32 and Keras'
   ``mixed_bfloat16`` policy (this CPU's AVX-512 BF16 / AMX units, where present);
2. the main job's input pipeline in front of it: ``make_dataset`` over the phantom's training
   split, images decoded every epoch (``in_memory=False``, before 2026-12-06) and kept in
   memory (``in_memory=True``, the default for a split that fits in 1 GiB);
3. the FLOPs of one training image (forward convolutions and dense layers, counted from the
   layer shapes, times 3 for the backward pass), so achieved FLOP/s = FLOPs per step / wall
   time per step;
4. the reachable peak of the same cores: the FLOP/s of a large float32 (and bfloat16) matrix
   product in TensorFlow (oneDNN), the best this software gets from the hardware.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from chestkd.data import load_dataset
from chestkd.data.pipeline import make_dataset
from chestkd.models import build


def training_flops_per_image(model) -> float:
    """3 x the forward multiply-adds (x2) of every Conv2D/DepthwiseConv2D/Dense layer."""
    forward = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(
                layer, keras.layers.DepthwiseConv2D):
            h, w, c_out = layer.output.shape[1:]
            c_in = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            forward += 2.0 * h * w * c_out * c_in * kh * kw / layer.groups
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            h, w, c_out = layer.output.shape[1:]
            kh, kw = layer.kernel_size
            forward += 2.0 * h * w * c_out * kh * kw
        elif isinstance(layer, keras.layers.Dense):
            forward += 2.0 * layer.input.shape[-1] * layer.units
    return 3.0 * forward


def time_fit(model, dataset, steps: int) -> tuple[float, float]:
    """(wall, CPU) seconds per step of ``model.fit`` after a warm-up epoch."""
    model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def compiled(name, classes, size, policy):
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    model = build(name, classes, (size, size, 3))
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))
    keras.mixed_precision.set_global_policy("float32")
    return model


def matmul_flops(dtype, n=2048, repeats=10) -> float:
    a = tf.random.normal((n, n), dtype=tf.float32)
    a = tf.cast(a, dtype)
    product = tf.function(lambda x: tf.matmul(x, x))
    product(a).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        product(a).numpy()
    return 2.0 * n ** 3 * repeats / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--phantom-images", type=int, default=3000)
    args = parser.parse_args()
    size, batch = args.image_size, args.batch_size
    load_before = os.getloadavg()

    rows = []
    x = np.random.default_rng(0).random((batch * 8, size, size, 3), np.float32) * 2 - 1
    y = (np.random.default_rng(1).random((batch * 8, 14)) < 0.1).astype(np.float32)
    in_memory = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()
    flops = None
    for policy in ("float32", "mixed_bfloat16"):
        model = compiled(args.model, 14, size, policy)
        flops = flops or training_flops_per_image(model) * batch
        rows.append((f"model alone, random tensors in memory, {policy}",
                     *time_fit(model, in_memory, args.steps)))

    home = os.environ.get("CHESTKD_HOME") or tempfile.mkdtemp()
    os.environ["CHESTKD_HOME"] = home
    data = load_dataset("phantom", images=args.phantom_images, size=size)
    for kept in (False, True):
        model = compiled(args.model, data.num_classes, size, "float32")
        train = make_dataset(data, "train", image_size=size, batch_size=batch, training=True,
                             in_memory=kept)
        for _ in train:  # one epoch first: what the kept images cost is paid once per run
            pass
        train = train.repeat()
        label = "kept in memory" if kept else "decoded every epoch"
        rows.append((f"main job's pipeline (phantom, flips), images {label}, float32",
                     *time_fit(model, train, args.steps)))

    peak32 = matmul_flops(tf.float32)
    peak16 = matmul_flops(tf.bfloat16)
    cores = os.cpu_count()
    print(f"Machine: {platform.machine()}, {cores} CPU cores, {platform.processor() or 'CPU'}; "
          f"TensorFlow {tf.__version__}, Keras {keras.__version__}; load average before "
          f"{load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}.")
    print(f"Command: `python benchmarks/train_step_cost.py --model {args.model} --image-size "
          f"{size} --batch-size {batch} --steps {args.steps}`")
    print(f"\nTraining FLOPs per step ({args.model}, {size} px, batch {batch}; 3 x forward "
          f"conv/dense): {flops / 1e9:.1f} GFLOP.")
    print(f"Reachable peak of the {cores} cores (2048 x 2048 matmul in TensorFlow): float32 "
          f"{peak32 / 1e9:.0f} GFLOP/s, bfloat16 {peak16 / 1e9:.0f} GFLOP/s.\n")
    print("| what | wall ms/step | CPU ms/step | achieved GFLOP/s | share of fp32 matmul peak |")
    print("|---|---|---|---|---|")
    for what, wall, cpu in rows:
        print(f"| {what} | {wall * 1e3:.0f} | {cpu * 1e3:.0f} | {flops / wall / 1e9:.0f} | "
              f"{flops / wall / peak32:.0%} |")


if __name__ == "__main__":
    main()
