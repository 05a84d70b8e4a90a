"""Run a whole table of experiments: every YAML file in a folder, then the report.

    python -m chestkd.recipes.table1 [--recipes recipes/table1] [--only GLOB] [--dry-run]
        [key=value ...]

Each file names its recipe (``recipe: standard_kd``); ``key=value`` pairs apply to every cell
(e.g. ``epochs=2 dataset=phantom data_dir=null`` for a smoke test). A cell whose finished run
already exists under its ``out`` folder is skipped, so an interrupted table resumes, and
teachers are trained once and reused through ``teachers_dir``.
"""
from __future__ import annotations

import argparse
import fnmatch
import importlib
from pathlib import Path

import yaml

from chestkd.errors import ConfigError
from chestkd.report import write_report
from chestkd.training.config import load_yaml
from chestkd.training.experiment import cli_errors

ORDER = ("base_training", "self_training", "standard_kd", "reversed_kd", "defective_kd")


def finished(config_file: Path, out: Path) -> Path | None:
    """The finished run folder already made from ``config_file``, if any."""
    for config_path in sorted(out.glob("*/config.yaml")):
        config = yaml.safe_load(config_path.read_text()) or {}
        if (config.get("config_file") == str(config_file)
                and (config_path.parent / "metrics.json").exists()):
            return config_path.parent
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="recipes/table1")
    parser.add_argument("--only", default="*", help="glob on the file names, e.g. '*resnet32*'")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    with cli_errors():
        folder = Path(args.recipes)
        files = [f for f in sorted(folder.glob("*.yaml")) if fnmatch.fnmatch(f.name, args.only)]
        if not files:
            raise ConfigError(f"--recipes {folder}: no YAML file matches {args.only!r}")
        cells = []
        for path in files:
            recipe = load_yaml(path).get("recipe")
            if recipe not in ORDER:
                raise ConfigError(f"{path}: 'recipe' must be one of {ORDER}, got {recipe!r}")
            cells.append((ORDER.index(recipe), path, recipe))
        outs = set()
        for _, path, recipe in sorted(cells):
            overrides = dict(item.split("=", 1) for item in args.overrides if "=" in item)
            out = Path(yaml.safe_load(overrides["out"]) if "out" in overrides
                       else load_yaml(path).get("out", "runs"))
            outs.add(out)
            done = finished(path, out)
            if done:
                print(f"[done] {path.name}: {done}")
                continue
            print(f"[run ] {path.name} ({recipe})")
            if not args.dry_run:
                module = importlib.import_module(f"chestkd.recipes.{recipe}")
                module.main(["--config", str(path), *args.overrides])
        if not args.dry_run:
            for out in outs:
                write_report(out)
                print(f"report: {out / 'report'}")


if __name__ == "__main__":
    main()
