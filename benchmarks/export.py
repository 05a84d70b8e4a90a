"""Teacher vs. student, Keras vs. TFLite float32 / float16 / dynamic / int8: size, latency, AUC.

    python benchmarks/export.py --model teacher=RUN_DIR --model student=RUN_DIR \
        [--quantize none float16 dynamic int8] [--out DIR] [--latency-repeats N]

Each ``NAME=RUN_DIR`` is a finished run (or model-store entry) with ``model.keras`` and
``config.yaml``; every model is exported once per mode by ``chestkd.export.export_model``
(one SavedModel, converted per mode; int8 calibrated on 100 training images) and measured on
the run's test split: file size, test mean AUC of the Keras model and of the export, max
|delta probability|, and latency per image (batch 1, median after 3 warm-up calls) of both.
Writes ``export_benchmark.csv`` and ``.md`` into ``--out`` and prints the table.
"""
from __future__ import annotations

import argparse
import platform
from pathlib import Path

import pandas as pd

from chestkd.evaluation import markdown_table
from chestkd.export import QUANTIZATIONS, export_model


def benchmark(models: dict, quantize, out: Path, latency_repeats: int) -> pd.DataFrame:
    rows = []
    for name, run_dir in models.items():
        reports = export_model(run_dir, quantize=quantize, out=out / name,
                               latency_repeats=latency_repeats)
        first = next(iter(reports.values()))
        rows.append({"model": name, "format": "Keras (.keras)",
                     "size_mb": first["keras_file_bytes"] / 1e6,
                     "latency_ms": first["latency_ms"]["keras"],
                     "test_auc": first.get("test_mean_auc_keras"), "max_abs_dp": 0.0})
        for mode, report in reports.items():
            rows.append({"model": name,
                         "format": f"TFLite {'float32' if mode == 'none' else mode}",
                         "size_mb": report["file_bytes"] / 1e6,
                         "latency_ms": report["latency_ms"]["exported"],
                         "test_auc": report.get("test_mean_auc_exported"),
                         "max_abs_dp": report.get("max_abs_delta_probability")})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=RUN_DIR")
    parser.add_argument("--quantize", nargs="+", choices=QUANTIZATIONS,
                        default=["none", "float16", "int8"])
    parser.add_argument("--out", default="export_benchmark")
    parser.add_argument("--latency-repeats", type=int, default=100)
    args = parser.parse_args(argv)
    models = dict(item.split("=", 1) for item in args.model)
    out = Path(args.out)
    table = benchmark(models, args.quantize, out, args.latency_repeats)
    table.to_csv(out / "export_benchmark.csv", index=False)
    text = (markdown_table(table, ".4g") + f"\n\nMachine: {platform.machine()}, "
            f"{platform.processor() or 'CPU'}; latency: batch 1, median of "
            f"{args.latency_repeats} calls after 3 warm-up calls.\n")
    (out / "export_benchmark.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
