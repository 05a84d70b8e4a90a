"""Do the saliency maps point at the findings? Localisation on the phantom's boxes, with CIs.

    python benchmarks/saliency_localisation.py --run RUN_DIR [--per-class N] [--bootstrap 2000]
        [--methods vanilla,smoothgrad_ig,...] [--no-write]

RUN_DIR is a finished run on the phantom (e.g. the base model the main job keeps in
runs/teachers/). Every boxed test image (or up to ``--per-class`` per finding) is read through
the run's input pipeline, each method's map of the box's finding is scored (pointing game,
energy in box, IoU) and summarised with 95 % cluster-bootstrap intervals over images; a paired
bootstrap of method - centre Gaussian says whether a method beats the centre beyond its
interval. Results go to benchmarks/RESULTS.md ("Saliency localisation") unless --no-write.
"""
import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from chestkd.data import load_dataset, loader_options  # noqa: E402
from chestkd.saliency import saliency_method  # noqa: E402
from chestkd.saliency.analysis.bootstrap import (compare_with_baseline,  # noqa: E402
                                                 summarise_with_intervals)
from chestkd.saliency.analysis.display import signed_to_display  # noqa: E402
from chestkd.saliency.analysis.localisation import (centre_baseline_maps,  # noqa: E402
                                                    localisation_scores, scale_boxes)
from chestkd.saliency.report import DEFAULT_OPTIONS  # noqa: E402
from chestkd.saliency.report.inputs import read_inputs  # noqa: E402
from chestkd.saliency.report.localisation_tables import (summary_markdown,  # noqa: E402
                                                         verdict_lines)

METHODS = ("vanilla", "guided_backprop", "integrated_gradients", "smoothgrad", "smoothgrad_ig",
           "cam", "gradcam")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--per-class", type=int, default=None, help="default: every box")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    run = Path(args.run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    size = int(config["image_size"])
    data = load_dataset(config["dataset"], config.get("data_dir"),
                        **loader_options(config["dataset"], config)).subset("test")
    model = keras.models.load_model(run / "model.keras", compile=False)
    pairs = data.boxes.drop_duplicates(["path", "label"])
    if args.per_class:
        pairs = pairs.groupby("label").head(args.per_class)
    pairs = pairs.reset_index(drop=True)
    keys = {(p, label): k for k, (p, label) in enumerate(zip(pairs.path, pairs.label))}
    boxes = data.boxes[[k in keys for k in zip(data.boxes.path, data.boxes.label)]].copy()
    boxes["map_index"] = [keys[k] for k in zip(boxes.path, boxes.label)]
    boxes["image"] = [Path(p).name for p in boxes.path]
    scaled = scale_boxes(boxes, size)
    scaled["box_index"] = np.arange(len(scaled))
    images = read_inputs(data, pairs.path, size, config.get("normalization", "minus_one_one"),
                         config.get("mean_std"))
    classes = np.array([data.class_names.index(label) for label in pairs.label])
    frames, seconds = [], {}
    for method in [*args.methods.split(","), "centre"]:
        start = time.perf_counter()
        if method == "centre":
            maps = centre_baseline_maps(len(images), size)
        else:
            built = saliency_method(model, method, **DEFAULT_OPTIONS.get(method, {}))
            maps = signed_to_display(built(images, classes, raw=True), method)
        seconds[method] = time.perf_counter() - start
        frames.append(localisation_scores(maps, scaled, method=method).assign(
            box_index=scaled["box_index"].to_numpy()))
        print(f"{method}: {seconds[method]:.0f} s", flush=True)
    per_box = pd.concat(frames, ignore_index=True)
    summary = summarise_with_intervals(per_box, n_boot=args.bootstrap)
    comparison = compare_with_baseline(per_box, n_boot=args.bootstrap)
    overall = summary[summary.label == "all"]
    command = (f"python benchmarks/saliency_localisation.py --run {run}"
               + (f" --per-class {args.per_class}" if args.per_class else "")
               + f" --bootstrap {args.bootstrap}")
    options = ", ".join(f"{k}: {v}" for k, v in DEFAULT_OPTIONS.items())
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU (shared with other "
        "jobs).",
        f"Command: `{command}`", "",
        f"Model: {config['model']} from `{run.name}` ({config['dataset']}, {size} px, "
        f"{config['epochs']} epochs). {len(scaled)} boxes on {len(pairs)} (image, finding) "
        f"pairs of the test split; settings {options}. Maps: |gradient| for the gradient "
        "methods, positive part for IG and the CAMs, unblurred. 95 % intervals: bootstrap over "
        f"images ({args.bootstrap} resamplings, seed 0).", "",
        summary_markdown(overall), "",
        "Paired bootstrap of method - centre (all findings):", "",
        *verdict_lines(comparison), "",
        "Per finding: `localisation.csv` of the saliency report has the same columns.",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section('Saliency localisation with intervals (new code; supersedes "Saliency localisation" above)', "\n".join(lines))


if __name__ == "__main__":
    main()
