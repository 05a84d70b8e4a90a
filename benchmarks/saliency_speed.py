"""SmoothGrad speed: chestkd's batched SmoothGrad vs. tf-keras-vis's Saliency (SmoothGrad mode).

    python benchmarks/saliency_speed.py [--images 8] [--samples 16] [--size 224] [--repeats 3]
    python benchmarks/saliency_speed.py --report-models densenet121,resnet32 [--images 2]

Both compute the mean input gradient of the class logit over ``samples`` noisy copies of
each image. tf-keras-vis runs the model eagerly once per noise sample (on all images);
chestkd evaluates all image x sample rows in compiled batches of ``--batch-size``. Maps per
second are steady-state (after one warm-up call, which includes chestkd's tracing; the
tracing time is listed separately). Both are also fed the same noise once and the largest
difference of their maps is reported, so the comparison is of equal work.

A second table lists chestkd's maps per second for every method at the report's defaults.
Results go to ``benchmarks/RESULTS.md`` under "Saliency speed".

``--report-models`` instead times the saliency report's methods at its CPU defaults on the
named chestkd models (``chestkd.models.build``, random weights, 14 outputs) at ``--size`` and
writes "Saliency speed at the report's defaults": maps per second (steady state, median of
``--repeats``) and the first call's seconds (graph surgery and tracing).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tf_keras_vis.saliency import Saliency  # noqa: E402

from benchmarks.results import write_section  # noqa: E402
from chestkd.saliency import SmoothGrad, saliency_method  # noqa: E402
from chestkd.saliency.report import DEFAULT_OPTIONS  # noqa: E402

NOISE_LEVEL = 0.15
# tf-keras-vis calls one-input models with a list of one tensor; Keras warns each time.
warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")


def build_models(size: int) -> dict:
    from chestkd.models import build

    keras.utils.set_random_seed(0)
    return {
        "conv3_student": build("conv3_student", 14, (size, size, 3)),
        "mobilenet_v2": keras.applications.MobileNetV2(
            weights=None, input_shape=(size, size, 3), classes=14, classifier_activation=None),
    }


def timed(function, repeats: int) -> float:
    """Median seconds of ``repeats`` calls."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def compare(model, images, classes, samples, batch_size, repeats) -> dict:
    score = lambda out: tf.gather(out, classes, axis=1, batch_dims=1)  # noqa: E731
    theirs = Saliency(model)

    def run_theirs(**kwargs):
        return theirs(score, images, smooth_samples=samples, smooth_noise=NOISE_LEVEL,
                      gradient_modifier=None, keepdims=True, normalize_map=False, **kwargs)

    start = time.perf_counter()
    ours = SmoothGrad(model, samples=samples, noise_level=NOISE_LEVEL, batch_size=batch_size)
    ours(images, classes, raw=True)                       # warm-up: graph surgery + tracing
    first_call = time.perf_counter() - start
    run_theirs()                                          # warm-up
    ours_s = timed(lambda: ours(images, classes, raw=True), repeats)
    theirs_s = timed(run_theirs, repeats)
    # Same noise for both: tf-keras-vis draws np.random.normal(0, sigma, (samples, N, ...)).
    sigma = NOISE_LEVEL * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))
    np.random.seed(1)
    noise = np.random.normal(0.0, sigma[None, :, None, None, None], (samples,) + images.shape)
    np.random.seed(1)
    reference = np.asarray(run_theirs())
    mine = ours(images, classes, raw=True, noise=noise.transpose(1, 0, 2, 3, 4))
    n = len(images)
    return {"theirs": n / theirs_s, "ours": n / ours_s, "setup": first_call,
            "diff": float(np.abs(mine - reference).max() / (np.abs(reference).max() + 1e-12))}


def method_speeds(model, images, classes, batch_size, repeats) -> dict:
    speeds = {}
    for name in ("vanilla", "guided_backprop", "smoothgrad", "integrated_gradients",
                 "smoothgrad_ig", "cam", "gradcam"):
        method = saliency_method(model, name, batch_size=batch_size,
                                 **DEFAULT_OPTIONS.get(name, {}))
        method(images, classes)
        speeds[name] = len(images) / timed(lambda: method(images, classes), repeats)
    return speeds


REPORT_METHODS = ("vanilla", "guided_backprop", "smoothgrad", "integrated_gradients",
                  "smoothgrad_ig", "cam", "gradcam")


def report_defaults_speed(model_names, size, n_images, batch_size, repeats) -> str:
    """Markdown table: maps/s and setup seconds per model and method at the report defaults."""
    from chestkd.models import build

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (n_images, size, size, 3)).astype(np.float32)
    classes = rng.integers(0, 14, n_images).astype(np.int32)
    rows = []
    for model_name in model_names:
        keras.utils.set_random_seed(0)
        model = build(model_name, 14, (size, size, 3))
        for name in REPORT_METHODS:
            start = time.perf_counter()
            method = saliency_method(model, name, batch_size=batch_size,
                                     **DEFAULT_OPTIONS.get(name, {}))
            method(images[:1], classes[:1])
            setup = time.perf_counter() - start
            rate = n_images / timed(lambda: method(images, classes), repeats)
            rows.append(f"| {model_name} | {name} | {rate:.3g} | {1 / rate:.3g} | {setup:.1f} |")
            print(rows[-1], flush=True)
    return "\n".join(["| model | method | maps/s | s/map | setup (s) |", "|---|---|---|---|---|",
                      *rows])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--report-models", metavar="A,B",
                        help="time the report's methods at its defaults on these models only")
    args = parser.parse_args(argv)
    if args.report_models:
        names = args.report_models.split(",")
        table = report_defaults_speed(names, args.size, args.images, args.batch_size,
                                      args.repeats)
        options = ", ".join(f"{k}: {v}" for k, v in DEFAULT_OPTIONS.items())
        body = (f"Machine: 2-core CPU (no GPU), {platform.processor() or platform.machine()}, "
                f"TensorFlow {tf.__version__}, Keras {keras.__version__}; the CPU was shared "
                "with other jobs (timings are upper bounds).\n"
                f"Command: `python benchmarks/saliency_speed.py --report-models "
                f"{args.report_models} --images {args.images} --size {args.size} "
                f"--batch-size {args.batch_size} --repeats {args.repeats}`\n\n"
                f"Maps per second of the saliency report's methods at its CPU defaults "
                f"({options}), {args.images} images of {args.size} x {args.size}, random "
                f"weights, 14 outputs. setup: the first call (graph surgery and tracing).\n\n"
                + table + "\n")
        print(body)
        if not args.no_write:
            write_section("Saliency speed at the report's defaults (issue 11)", body)
        return

    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (args.images, args.size, args.size, 3)).astype(np.float32)
    classes = rng.integers(0, 14, args.images).astype(np.int32)
    models = build_models(args.size)
    rows = []
    for name, model in models.items():
        result = compare(model, images, classes, args.samples, args.batch_size, args.repeats)
        rows.append(f"| {name} | {result['theirs']:.2f} | {result['ours']:.2f} | "
                    f"{result['ours'] / result['theirs']:.2f}x | {result['setup']:.1f} | "
                    f"{result['diff']:.1e} |")
        print(rows[-1], flush=True)
    speeds = method_speeds(models["conv3_student"], images, classes, args.batch_size,
                           args.repeats)
    options = ", ".join(f"{k}: {v}" for k, v in DEFAULT_OPTIONS.items())
    command = ("python benchmarks/saliency_speed.py "
               f"--images {args.images} --samples {args.samples} --size {args.size} "
               f"--batch-size {args.batch_size} --repeats {args.repeats}")
    body = f"""Machine: 2-core CPU (no GPU), {platform.processor() or platform.machine()}, \
TensorFlow {tf.__version__}, Keras {keras.__version__}.
Command: `{command}`

SmoothGrad maps per second (higher is better), {args.images} images of {args.size} x \
{args.size}, {args.samples} noise samples each, noise level {NOISE_LEVEL}, random weights \
(speed does not depend on them). tf-keras-vis: `Saliency(model)(score, images, \
smooth_samples={args.samples})`, one eager gradient call per sample. chestkd: \
`SmoothGrad(model, samples={args.samples}, batch_size={args.batch_size})`, all \
image x sample rows in compiled batches. "setup" is chestkd's first call (graph surgery and \
tracing), paid once per model. "max rel. diff" compares the two maps given the same noise.

| model | tf-keras-vis maps/s | chestkd maps/s | speed-up | chestkd setup (s) | max rel. diff |
|---|---|---|---|---|---|
{chr(10).join(rows)}

chestkd maps per second per method on conv3_student at the saliency report's defaults \
({options}):

| method | maps/s |
|---|---|
{chr(10).join(f"| {k} | {v:.2f} |" for k, v in speeds.items())}
"""
    print(body)
    if not args.no_write:
        write_section("Saliency speed", body)


if __name__ == "__main__":
    main()
