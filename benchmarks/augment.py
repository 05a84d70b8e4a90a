"""Does light augmentation narrow the train/test gap on a small set, and does the pipeline keep up?

    python benchmarks/augment.py [--images 480] [--size 64] [--model resnet32] [--epochs 10]
                                 [--augments flip,light] [--results benchmarks/RESULTS.md]

On a small single-label phantom (normal / pneumonia / COVID-19-like, ``--images`` films, of
which ~64 % train after the patient-wise split) the same model is base-trained once per
``--augments`` entry with the phantom profile (Adam 1e-3, cosine) and scored on the training
split (read as it is, no augmentation) and on the test split: macro AUC of each and the gap.
Then the training pipeline alone (decode, flip/affine, normalise, batch) is timed against
training steps of the model on batches already in memory: if the pipeline delivers more
images per second than a training step consumes, augmentation costs no training time.
Results go to the "Augmentation" section of ``--results``.
"""
import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import RESULTS, write_section  # noqa: E402


from chestkd.data import load_dataset  # noqa: E402
from chestkd.data.pipeline import make_dataset  # noqa: E402
from chestkd.evaluation.metrics import mean_auc, per_class_auc, predict_logits  # noqa: E402
from chestkd.training.config import BASE_DEFAULTS, PHANTOM_PROFILE  # noqa: E402
from chestkd.training.classifier import build_model, compile_classifier, train_classifier  # noqa: E402
from chestkd.training.run import new_run_dir  # noqa: E402


def split_auc(model, data, split, size):
    logits, labels = predict_logits(model, make_dataset(data, split, image_size=size,
                                                        batch_size=64))
    return mean_auc(per_class_auc(labels, logits, data.class_names))


def pipeline_rate(data, size, batch_size, augment, passes=3):
    """Images per second of the training pipeline alone (after one warm-up pass)."""
    ds = make_dataset(data, "train", image_size=size, batch_size=batch_size, training=True,
                      augment=augment)
    for _ in ds:
        pass
    start = time.perf_counter()
    for _ in range(passes):
        for _ in ds:
            pass
    return passes * int((data.split == "train").sum()) / (time.perf_counter() - start)


def train_step_rate(model_name, data, config, steps=20):
    """Images per second of training steps on one batch held in memory (after warm-up)."""
    model = compile_classifier(build_model(model_name, data, config), data, config)
    x, y = next(iter(make_dataset(data, "train", image_size=config["image_size"],
                                  batch_size=config["batch_size"], training=True)))
    for _ in range(3):
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps * int(x.shape[0]) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="resnet32")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--augments", default="flip,light")
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--no-write", action="store_true",
                        help="print the section, leave RESULTS.md alone")
    args = parser.parse_args()
    augments = [a.strip() for a in args.augments.split(",") if a.strip()]
    config = {**BASE_DEFAULTS, **{k: v for k, v in PHANTOM_PROFILE.items() if k != "label_noise"},
              "dataset": "pneumonia_phantom", "phantom_images": args.images,
              "phantom_size": args.size, "image_size": args.size, "epochs": args.epochs,
              "jit_compile": False}
    data = load_dataset("pneumonia_phantom", None, images=args.images, size=args.size)
    counts = {s: int((data.split == s).sum()) for s in ("train", "val", "test")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for augment in augments:
            run_config = {**config, "augment": augment}
            start = time.perf_counter()
            model = train_classifier(run_config, new_run_dir(tmp, augment), data, args.model,
                                     verbose=0)
            minutes = (time.perf_counter() - start) / 60
            train, test = (split_auc(model, data, s, args.size) for s in ("train", "test"))
            rows.append((augment, train, test, minutes))
    rates = {augment: pipeline_rate(data, args.size, config["batch_size"], augment)
             for augment in augments}
    step = train_step_rate(args.model, data, config)
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU "
        f"(Python {platform.python_version()}). Timings taken while other jobs shared the CPU.",
        f"Command: `python benchmarks/augment.py --images {args.images} --size {args.size} "
        f"--model {args.model} --epochs {args.epochs} --augments {','.join(augments)}`",
        "",
        f"Single-label phantom (normal / pneumonia / COVID-19-like), {args.images} films at "
        f"{args.size} px: train {counts['train']}, val {counts['val']}, test {counts['test']} "
        f"(patient-wise). {args.model}, {args.epochs} epochs, Adam 1e-3 cosine, batch "
        f"{config['batch_size']}; the checkpoint with the best validation AUC is scored.",
        "",
        "| augment | train macro AUC | test macro AUC | gap | training time |",
        "|---|---|---|---|---|",
        *[f"| {a} | {tr:.3f} | {te:.3f} | {tr - te:+.3f} | {m:.1f} min |"
          for a, tr, te, m in rows],
        "",
        "| throughput | images/second |",
        "|---|---|",
        *[f"| training pipeline alone, augment={a} | {r:,.0f} |" for a, r in rates.items()],
        f"| {args.model} training steps (batches in memory) | {step:,.0f} |",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section("Augmentation on a small single-label set", "\n".join(lines),
                      Path(args.results))


if __name__ == "__main__":
    main()
