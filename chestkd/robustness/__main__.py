"""The robustness table of a trained run: scores before and after FGSM and PGD.

    python -m chestkd.robustness RUN_DIR [--epsilon 0.00502] [--norm l2|linf] [--steps 10]
        [--attacks fgsm,pgd] [--max-images N] [--out DIR]

Reads ``RUN_DIR/config.yaml`` and ``RUN_DIR/model.keras``, attacks the run's test images
(``epsilon`` in intensity units, 1.0 = the full 0-255 range, whatever the run's input
normalisation; default RoS-KD's L2 radius 1.28/255), scores multi-label decisions at the
run's own validation thresholds (``model_info.json``) and writes ``robustness.csv``,
``robustness.md`` and ``robustness.json`` (default into RUN_DIR).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from chestkd.cli import list_option, main_of, number_option, output_folder
from chestkd.evaluation import markdown_table
from chestkd.io import atomic_write_json, atomic_write_text
from chestkd.robustness.attacks import NORMS, check_attack
from chestkd.robustness.tables import (ATTACKS, PAPER_EPSILON, robustness_table,
                                      run_thresholds, split_arrays)
from chestkd.training.classifier import image_options, load_run_data
from chestkd.training.run import finished_run, load_model


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m chestkd.robustness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--epsilon", type=float, default=PAPER_EPSILON)
    parser.add_argument("--norm", choices=NORMS, default="l2")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    return parser


def run(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    run_dir = args.run_dir
    attacks = list_option(args.attacks, "--attacks", allowed=ATTACKS)
    check_attack(args.epsilon, args.norm, args.steps)   # before the run's data is read
    if args.max_images is not None:
        number_option(args.max_images, "--max-images", cast=int, low=1)
    config = finished_run(run_dir)
    out = output_folder(args.out or run_dir)
    data = load_run_data(config, out)
    thresholds = run_thresholds(run_dir, data.class_names, multi_label=data.multi_label)
    options = image_options(data, config)
    images, labels = split_arrays(data, max_images=args.max_images, **options)
    table = robustness_table(load_model(run_dir / "model.keras"), images, labels,
                             data.class_names, multi_label=data.multi_label,
                             normalization=options["normalization"],
                             mean_std=options["mean_std"], epsilon=args.epsilon,
                             norm=args.norm, steps=args.steps, attacks=attacks,
                             thresholds=thresholds, seed=int(config.get("seed", 0)))
    table.to_csv(out / "robustness.csv", index=False)
    text = f"# Robustness of {run_dir}\n\n{markdown_table(table)}\n"
    atomic_write_text(out / "robustness.md", text)
    result = {"run_dir": str(run_dir), "thresholds": thresholds,
              "rows": table.to_dict(orient="records")}
    atomic_write_json(out / "robustness.json", result)
    print(text)
    return result


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
