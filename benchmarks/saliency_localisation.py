"""Do the saliency maps point at the findings? Localisation on the phantom's boxes.

    python benchmarks/saliency_localisation.py --run RUN_DIR [--per-class 5]

RUN_DIR is a finished run on the phantom (e.g. the base model the main job keeps in
runs/teachers/). For up to ``--per-class`` boxed test images per finding, each method's map of
that finding is scored with the pointing game and the energy inside the box, against a fixed
centre Gaussian. SmoothGrad and SmoothGrad-IG are run at several noise levels. Results go to
benchmarks/RESULTS.md ("Saliency localisation").
"""
import argparse
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from chestkd.data import load_dataset  # noqa: E402
from chestkd.data.images import read_image  # noqa: E402
from chestkd.saliency import saliency_map  # noqa: E402
from chestkd.saliency.localisation import (centre_baseline_maps, localisation_scores,  # noqa: E402
                                           scale_boxes)
from chestkd.training.config import dataset_options  # noqa: E402

SETTINGS = [("vanilla", {}), ("integrated_gradients", {"steps": 32}),
            *[("smoothgrad", {"samples": 16, "noise_level": n}) for n in (0.02, 0.05, 0.15)],
            *[("smoothgrad_ig", {"samples": 16, "steps": 16, "noise_level": n})
              for n in (0.02, 0.05, 0.15)],
            ("cam", {}), ("gradcam", {})]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--per-class", type=int, default=5)
    args = parser.parse_args()
    run = Path(args.run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    size = int(config["image_size"])
    data = load_dataset(config["dataset"], config.get("data_dir"),
                        **dataset_options(config)).subset("test")
    model = keras.models.load_model(run / "model.keras", compile=False)
    boxes = (data.boxes.drop_duplicates(["path", "label"]).groupby("label")
             .head(args.per_class).reset_index(drop=True))
    images = np.stack([read_image(p, size) for p in boxes.path])
    classes = np.array([data.class_names.index(label) for label in boxes.label])
    scaled = scale_boxes(boxes.assign(map_index=range(len(boxes))), size)
    rows = []
    for method, options in [*SETTINGS, ("centre", None)]:
        maps = (centre_baseline_maps(len(images), size) if options is None
                else saliency_map(model, images, classes, method, **options))
        scores = localisation_scores(maps, scaled, method=method)
        label = method + ("" if not options or "noise_level" not in options
                          else f" (noise {options['noise_level']:.0%})")
        rows.append(f"| {label} | {scores.pointing_hit.mean():.3f} | {scores.energy.mean():.3f} |")
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU.",
        f"Command: `python benchmarks/saliency_localisation.py --run {run} --per-class "
        f"{args.per_class}`",
        "",
        f"Model: {config['model']} from `{run.name}` ({config['dataset']}, {size} px, "
        f"{config['epochs']} epochs). {len(boxes)} boxes of the test split, up to "
        f"{args.per_class} per finding; the map of each box's finding is scored. Pointing "
        "game tolerance 15 px at 224 (scaled); energy = share of the map's positive mass in the box.",
        "",
        "| method | pointing game | energy in box |",
        "|---|---|---|",
        *rows,
    ]
    print("\n".join(lines))
    write_section("Saliency localisation", "\n".join(lines))


if __name__ == "__main__":
    main()
