"""Label-randomisation sanity check on a run's data (Adebayo et al. 2018, Sec. 4).

    python -m chestkd.saliency.label_check --run RUN_DIR [--images 1500] [--size 64]
        [--epochs 12] [--learning-rate 0.003] [--methods vanilla,guided_backprop,...] [--out DIR]

Trains a small model (``conv3_student``, random initialisation) twice on the first ``--images``
training images of the run's dataset, read at ``--size`` px with the run's normalisation: once
on the real labels and once on the same labels shuffled across images, then explains the boxed
test images' findings with both models. A method whose maps are about the same for the two
models does not reflect what was learnt. Writes ``label_randomisation.md`` / ``.csv`` /
``.png`` into ``--out`` (default ``RUN_DIR/saliency``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from chestkd.cli import list_option, main_of, number_option
from chestkd.errors import ConfigError, DataError
from chestkd.saliency.methods import METHODS as SALIENCY_METHODS
from chestkd.saliency.analysis.display import percentile_normalise
from chestkd.saliency.analysis.sanity import label_randomisation
from chestkd.saliency.report.figures import METHOD_TITLES, display_image
from chestkd.saliency.report.inputs import read_inputs
from chestkd.training.run import finished_run

METHODS = ("vanilla", "guided_backprop", "integrated_gradients", "gradcam")
OPTIONS = {"integrated_gradients": {"steps": 16}}


def plot_label_check(images, maps: dict, path, caption: str) -> str:
    """Rows = methods; columns = (real, shuffled) for each of the first two images."""
    rows, shown = len(maps), min(2, len(images))
    figure = Figure(figsize=(2.2 * 2 * shown, 2.2 * rows + 0.5), layout="constrained")
    axes = figure.subplots(rows, 2 * shown, squeeze=False)
    for r, (method, pair) in enumerate(maps.items()):
        for i in range(shown):
            for j, name in enumerate(("real", "shuffled")):
                ax = axes[r, 2 * i + j]
                ax.imshow(display_image(images[i]), cmap="gray")
                ax.imshow(percentile_normalise(pair[name][i][None])[0], cmap="inferno",
                          alpha=0.7, vmin=0, vmax=1)
                ax.set_title(f"{METHOD_TITLES.get(method, method)}: {name} labels", fontsize=6)
                ax.set_xticks([])
                ax.set_yticks([])
    figure.supxlabel(caption, fontsize=6.5, wrap=True)
    figure.savefig(path, dpi=100)
    return str(path)


def run(argv=None) -> dict:
    from chestkd.data import load_dataset, loader_options
    from chestkd.models import build

    parser = argparse.ArgumentParser(prog="python -m chestkd.saliency.label_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, metavar="RUN_DIR")
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--explain", type=int, default=8, help="boxed test images explained")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    # Checked before the run's data is read and a model is trained.
    for option, value in (("--images", args.images), ("--size", args.size),
                          ("--epochs", args.epochs), ("--explain", args.explain)):
        number_option(value, option, cast=int, low=1)
    number_option(args.learning_rate, "--learning-rate", low=0, low_open=True)
    methods = list_option(args.methods, "--methods")
    unknown = [method for method in methods if method not in SALIENCY_METHODS]
    if unknown or not methods:
        raise ConfigError(f"--methods {args.methods}: choose among {', '.join(SALIENCY_METHODS)}")
    run_dir = Path(args.run)
    config = finished_run(run_dir, option="--run", model=False)
    data = load_dataset(config["dataset"], config.get("data_dir"), **loader_options(config["dataset"], config))
    train, test = data.subset("train"), data.subset("test")
    if test.boxes is None or not len(test.boxes):
        raise DataError(f"{config['dataset']}: the test split has no boxes to explain")
    normalization = config.get("normalization", "minus_one_one")
    rows = np.arange(min(args.images, len(train.paths)))
    x = read_inputs(train, train.paths[rows], args.size, normalization, config.get("mean_std"))
    y = (train.labels * train.mask)[rows]
    pairs = test.boxes.drop_duplicates(["path", "label"]).head(args.explain)
    explain = read_inputs(test, pairs["path"], args.size, normalization, config.get("mean_std"))
    classes = np.array([data.class_names.index(label) for label in pairs["label"]])
    out = Path(args.out) if args.out else run_dir / "saliency"
    out.mkdir(parents=True, exist_ok=True)
    outcomes = label_randomisation(
        lambda: build("conv3_student", len(data.class_names), x.shape[1:]), x, y, explain,
        classes, methods, epochs=args.epochs, seed=args.seed, keep_maps=True,
        learning_rate=args.learning_rate,
        method_options=OPTIONS)
    maps = {method: outcomes[method].pop("maps") for method in methods}
    results = [{"method": method, **{k: outcomes[method][k] for k in
                                     ("spearman", "ssim", "loss_real", "loss_shuffled")}}
               for method in methods]
    table = pd.DataFrame(results)
    table.to_csv(out / "label_randomisation.csv", index=False)
    setting = (f"conv3_student trained {args.epochs} epochs (Adam {args.learning_rate:g}) on "
               f"{len(x)} training images of "
               f"{config['dataset']} at {args.size} px, real vs. shuffled labels; "
               f"{len(explain)} boxed test images explained for their finding")
    lines = ["# Sanity check: label randomisation", "", setting + ". Spearman of |map| and "
             "SSIM between the two models' maps (low = the maps reflect the labels). The check "
             "means something only when the real-label model learnt more than the shuffled one "
             "(lower final loss).", "",
             "| method | Spearman | SSIM | final loss, real labels | shuffled labels |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['spearman']:.3f} | {r['ssim']:.3f} | {r['loss_real']:.3f} "
              f"| {r['loss_shuffled']:.3f} |" for r in results]
    (out / "label_randomisation.md").write_text("\n".join(lines) + "\n")
    figure = plot_label_check(explain, maps, out / "label_randomisation.png", setting + ".")
    print("\n".join(lines))
    return {"table": str(out / "label_randomisation.csv"), "figure": figure,
            "results": results}


main = main_of(run)


if __name__ == "__main__":
    sys.exit(main())
