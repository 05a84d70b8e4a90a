"""Run a whole table of experiments: every YAML file in a folder, then the report.

    python -m chestkd.recipes.table1 [--recipes recipes/table1] [--only GLOB] [--dry-run]
        [key=value ...]

Each file names its recipe (``recipe: kd`` with ``strategy: standard``, ``base_training``,
``self_training``) and inherits the paper's shared settings (``defaults: ../paper.yaml``);
``key=value`` pairs apply to every cell (e.g. ``epochs=2 dataset=phantom data_dir=null`` for a
smoke test). A cell is done only when a finished run with the same resolved configuration
(file, overrides and defaults; :func:`chestkd.training.config.config_id`) exists under its
``out`` folder — a smoke run with ``epochs=2`` never marks the real cell done — so an
interrupted table resumes, and every model is trained once through the model store.
"""
from __future__ import annotations

import argparse
import fnmatch
import importlib
from pathlib import Path

import yaml

from chestkd.cli import main_of
from chestkd.errors import ConfigError
from chestkd.report import write_report
from chestkd.training.config import config_id, load_yaml, resolve_config

ORDER = ("base_training", "self_training", "standard", "reversed", "defective")


def resolved_cell(path: Path, overrides) -> tuple[str, dict]:
    """(recipe, the configuration its run would resolve and record) of one YAML cell."""
    recipe = load_yaml(path).get("recipe")
    if recipe not in ("base_training", "self_training", "kd"):
        raise ConfigError(f"{path}: 'recipe' must be base_training, self_training or kd, "
                          f"got {recipe!r}")
    module = importlib.import_module(f"chestkd.recipes.{recipe}")
    config = resolve_config(["--config", str(path), *overrides], module.DEFAULTS)
    config["recipe"] = recipe
    return recipe, config


def finished(config: dict) -> Path | None:
    """The finished run folder under ``config["out"]`` with this configuration, if any."""
    wanted = config_id(config)
    for config_path in sorted(Path(config["out"]).glob("*/config.yaml")):
        saved = yaml.safe_load(config_path.read_text()) or {}
        folder = config_path.parent
        stages = folder / "stages.json"
        done = (folder / "metrics.json").exists() and (
            not stages.exists() or '"evaluation"' in stages.read_text())
        if saved.get("config_id") == wanted and done:
            return folder
    return None


def run(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="recipes/table1")
    parser.add_argument("--only", default="*", help="glob on the file names, e.g. '*resnet32*'")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    folder = Path(args.recipes)
    files = [f for f in sorted(folder.glob("*.yaml")) if fnmatch.fnmatch(f.name, args.only)]
    if not files:
        raise ConfigError(f"--recipes {folder}: no YAML file matches {args.only!r}")
    cells = []
    for path in files:
        recipe, config = resolved_cell(path, args.overrides)
        step = config.get("strategy") if recipe == "kd" else recipe
        cells.append((ORDER.index(step), path.name, path, recipe, config))
    outs = []
    for _, _, path, recipe, config in sorted(cells):
        out = Path(config["out"])
        if out not in outs:
            outs.append(out)
        done = finished(config)
        if done:
            print(f"[done] {path.name}: {done}")
            continue
        print(f"[run ] {path.name} ({recipe})")
        if not args.dry_run:
            module = importlib.import_module(f"chestkd.recipes.{recipe}")
            module.run(["--config", str(path), *args.overrides])
    if not args.dry_run:
        for out in outs:
            write_report(out)
            print(f"report: {out / 'report'}")


main = main_of(run)

if __name__ == "__main__":
    raise SystemExit(main())
