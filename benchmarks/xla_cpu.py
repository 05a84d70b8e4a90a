"""XLA on or off for base training on the phantom: seconds per epoch, same data, one process
per setting (run on an otherwise idle machine).

    python benchmarks/xla_cpu.py [--images 3000] [--epochs 3] [--model resnet32]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys

CHILD = """
import sys, tempfile, time
import pandas as pd
from chestkd.data import load_dataset
from chestkd.training.config import BASE_DEFAULTS, PHANTOM_PROFILE
from chestkd.training.classifier import train_classifier
jit, images, epochs, model = sys.argv[1] == "true", int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
config = {**BASE_DEFAULTS, **PHANTOM_PROFILE, "epochs": epochs, "jit_compile": jit,
          "phantom_images": images, "out": tempfile.mkdtemp()}
data = load_dataset("phantom", None, images=images, size=128, label_noise=0.1)
start = time.perf_counter()
train_classifier(config, config["out"] + "/run", data, model)
seconds = pd.read_csv(config["out"] + "/run/history.csv")["epoch_seconds"].tolist()
print("RESULT", jit, " ".join(f"{s:.2f}" for s in seconds), f"{time.perf_counter() - start:.1f}")
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--model", default="resnet32")
    args = parser.parse_args()
    rows = []
    for jit in ("false", "true"):
        out = subprocess.run([sys.executable, "-c", CHILD, jit, str(args.images),
                              str(args.epochs), args.model], capture_output=True, text=True,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, check=True)
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT")][-1].split()
        rows.append((line[1], line[2:-1], line[-1]))
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU.")
    print(f"Command: `python benchmarks/xla_cpu.py --images {args.images} --epochs "
          f"{args.epochs} --model {args.model}` (phantom profile: 128 px, batch 32, Adam; "
          "exact validation AUC each epoch)")
    print("\n| XLA | seconds per epoch (epoch 1 includes compiling) | fit total (s) |")
    print("|---|---|---|")
    for jit, seconds, total in rows:
        print(f"| {jit} | {', '.join(seconds)} | {total} |")


if __name__ == "__main__":
    main()
