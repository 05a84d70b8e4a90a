"""What feature distillation costs: seconds per epoch, same student, teacher run online.

    python benchmarks/feature_kd_cost.py [--images 512] [--image-size 64] [--epochs 3]
        [--teacher conv3_student] [--results benchmarks/RESULTS.md]

Times one student (``conv3_student``) trained on in-memory images (so the input pipeline is
not what is measured) five ways, each fresh with the same initial weights:

* base training (``model.fit``, BCE on the labels);
* logit-only KD: the chestkd Distiller, ``KDLoss("hinton", T=4, alpha=0.5)``;
* logit + feature KD, one MSE term on the last feature maps (``conv3_relu`` of both: the
  shapes match, no adapter) — the chestkd Distiller, and ``keras.distillation.Distiller``
  with ``LogitsDistillation(T=4)`` + ``FeatureDistillation("mse", ...)``, which is the same
  setup (hard loss weight 0.5, the two distillation terms weighted 0.5 and 1);
* the teacher-assistant student's terms: Wasserstein over the student's three conv block
  outputs against the teacher's maps at matching depth (with 1x1 adapters).

The teacher is built untrained (cost does not depend on its weights); ``--teacher`` must have
a layer ``conv3_relu`` of the student's shape for the keras comparison (the default, another
conv3_student, has). The median epoch after the first (tracing) epoch is reported, and the
ratio to base training. ``--results FILE`` also writes the "Cost of feature distillation"
section of that Markdown file.
"""
import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from chestkd.distill import Distiller, KDLoss  # noqa: E402
from chestkd.distill.feature_terms import FeatureTerm  # noqa: E402
from chestkd.distill.layer_pairs import depth_matched_pairs  # noqa: E402
from chestkd.models import build  # noqa: E402

CLASSES, TEMPERATURE = 14, 4.0


class EpochClock(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def timed_fit(model, x, y, epochs, batch_size):
    clock = EpochClock()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[clock])
    seconds = clock.seconds[1:] if len(clock.seconds) > 1 else clock.seconds
    return float(np.median(seconds))


def fresh_student(shape):
    keras.utils.set_random_seed(1)
    return build("conv3_student", CLASSES, shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--teacher", default="conv3_student")
    parser.add_argument("--results", default=None, help="Markdown file to write the section to")
    args = parser.parse_args()
    shape = (args.image_size, args.image_size, 3)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (args.images, *shape)).astype(np.float32)
    y = (rng.random((args.images, CLASSES)) < 0.2).astype(np.float32)
    keras.utils.set_random_seed(0)
    teacher = build(args.teacher, CLASSES, shape)
    fit = dict(x=x, y=y, epochs=args.epochs, batch_size=args.batch_size)
    loss = KDLoss("hinton", TEMPERATURE, 0.5)
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    rows = []

    student = fresh_student(shape)
    student.compile(keras.optimizers.Adam(1e-3), loss=bce, jit_compile=False)
    rows.append(("base training (model.fit, BCE)", timed_fit(student, **fit)))

    def chestkd(label, terms):
        distiller = Distiller(fresh_student(shape), teacher, loss=loss, feature_terms=terms)
        distiller.compile(keras.optimizers.Adam(1e-3), jit_compile=False)
        rows.append((label, timed_fit(distiller, **fit)))

    chestkd("chestkd Distiller: logit KD", ())
    chestkd("chestkd Distiller: logit + MSE(conv3_relu)",
            [FeatureTerm("conv3_relu", "conv3_relu", "mse", adapter="never")])
    from keras.distillation import Distiller as KerasDistiller
    from keras.distillation import FeatureDistillation, LogitsDistillation
    keras_distiller = KerasDistiller(
        teacher=teacher, student=fresh_student(shape),
        distillation_losses=[LogitsDistillation(temperature=TEMPERATURE),
                             FeatureDistillation("mse", teacher_layer_name="conv3_relu",
                                                 student_layer_name="conv3_relu")],
        distillation_loss_weights=[0.5, 1.0], student_loss_weight=0.5)
    keras_distiller.compile(keras.optimizers.Adam(1e-3), loss=bce, jit_compile=False)
    rows.append(("keras.distillation.Distiller: logit + MSE(conv3_relu)",
                 timed_fit(keras_distiller, **fit)))
    pairs = depth_matched_pairs(fresh_student(shape), teacher)
    chestkd(f"chestkd Distiller: logit + {len(pairs)} x Wasserstein (depth-matched)",
            [FeatureTerm(s, t, "wasserstein", weight=0.1) for s, t in pairs])

    base = rows[0][1]
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU, TF "
        f"{__import__('tensorflow').__version__}, Keras {keras.__version__}.",
        f"Command: `python benchmarks/feature_kd_cost.py --images {args.images} --image-size "
        f"{args.image_size} --epochs {args.epochs} --teacher {args.teacher}`",
        "",
        f"Student conv3_student, teacher {args.teacher} (online, untrained), {args.images} "
        f"in-memory images of {args.image_size} px, batch {args.batch_size}, XLA off; median "
        f"epoch after the first:",
        "",
        "| training | seconds/epoch | x base |",
        "|---|---|---|",
        *[f"| {name} | {seconds:.2f} | {seconds / base:.2f} |" for name, seconds in rows],
    ]
    text = "\n".join(lines)
    print(text)
    if args.results:
        from results import write_section
        write_section("Cost of feature distillation", text, Path(args.results))


if __name__ == "__main__":
    main()
