"""Is the phantom a real task? Logistic regression on pixels vs. a small CNN.

    python benchmarks/phantom_difficulty.py [--images N] [--model resnet32] [--epochs E]
        (default: the phantom profile's images and epochs)

Logistic regression (one-vs-rest, standardised 32x32 area-downscaled pixels) and the CNN
(base training with the phantom profile: the same settings `python -m chestkd.recipes.
base_training` uses with no data given) are trained on the train split and scored on the
test split: per-class and mean AUC. Results go to benchmarks/RESULTS.md ("Phantom difficulty").
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

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from chestkd.training.options import as_options
from chestkd.data import load_dataset  # noqa: E402
from chestkd.evaluation import evaluate_model  # noqa: E402
from chestkd.evaluation.metrics import mean_auc, per_class_auc  # noqa: E402
from chestkd.training.config import BASE_DEFAULTS, PHANTOM_PROFILE  # noqa: E402
from chestkd.training.classifier import train_classifier  # noqa: E402
from chestkd.training.run import new_run_dir  # noqa: E402


def pixels(data, split):
    part = data.subset(split)
    x = np.stack([cv2.resize(cv2.imread(p, cv2.IMREAD_GRAYSCALE), (32, 32),
                             interpolation=cv2.INTER_AREA).ravel() for p in part.paths])
    return x.astype(np.float64) / 255.0, part.labels


def logistic_regression(data):
    x_train, y_train = pixels(data, "train")
    x_test, y_test = pixels(data, "test")
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    scores = np.zeros_like(y_test)
    for c in range(y_train.shape[1]):
        if y_train[:, c].min() == y_train[:, c].max():
            continue
        model = LogisticRegression(C=0.1, max_iter=2000).fit(x_train, y_train[:, c])
        scores[:, c] = model.decision_function(x_test)
    return per_class_auc(y_test, scores, data.class_names)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=PHANTOM_PROFILE["phantom_images"])
    parser.add_argument("--model", default=PHANTOM_PROFILE["model"])
    parser.add_argument("--epochs", type=int, default=PHANTOM_PROFILE["epochs"])
    parser.add_argument("--no-write", action="store_true",
                        help="print the section, leave RESULTS.md alone")
    args = parser.parse_args()
    config = {**BASE_DEFAULTS, **PHANTOM_PROFILE, "phantom_images": args.images,
              "epochs": args.epochs, "latency_images": 4}
    data = load_dataset("phantom", None, images=args.images, size=config["phantom_size"])
    logreg = logistic_regression(data)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_dir = new_run_dir(tmp, "cnn")
        model = train_classifier(config, run_dir, data, args.model)
        cnn = evaluate_model(model, data, as_options(config), run_dir)
        minutes = (time.perf_counter() - start) / 60
    rows = [f"| {name} | {lr:.3f} | {cnn['per_class_auc'][name]:.3f} |"
            for name, lr in zip(logreg["class"], logreg["auc"])]
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU.",
        f"Command: `python benchmarks/phantom_difficulty.py --images {args.images} --model "
        f"{args.model} --epochs {args.epochs}`",
        "",
        f"Phantom of {args.images} images ({config['phantom_size']} px), official split "
        f"(train {int((data.split == 'train').sum())}, test {int((data.split == 'test').sum())} "
        f"images). CNN: {args.model} at {config['image_size']} px, {args.epochs} epochs of base "
        f"training ({minutes:.1f} min).",
        "",
        "| finding | logistic regression (32x32 pixels) | CNN |",
        "|---|---|---|",
        *rows,
        f"| **mean** | **{mean_auc(logreg):.3f}** | **{cnn['mean_auc']:.3f}** |",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section("Phantom difficulty", "\n".join(lines))


if __name__ == "__main__":
    main()
