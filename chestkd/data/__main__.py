"""Command line for the data steps: ``python -m chestkd.data <command>`` (or ``chestkd-data``).

Commands:

* ``describe --dataset NAME --data-dir DIR [--split official|patient] [--json]
  [--option KEY=VALUE ...]``: images, labels, splits and the patient-leakage check;
* ``phantom --out DIR [--images N] [--size S] [--seed K] [--kind chestxray14|pneumonia]
  [--classes normal pneumonia covid19]``: write a synthetic phantom set (the 14-finding one
  in the ChestX-ray14 layout, or the single-label one in class folders);
* ``prepare --dataset NAME --data-dir DIR --size 224 --out CACHE [--workers N]
  [--skip-bad-images] [--option KEY=VALUE ...]``: decode and resize all images once into a cache.

``--option`` passes a loader option, its value read as YAML: ``--option views=[PA]``,
``--option uncertainty=ignore``. User errors print ``error: <message>`` and exit with 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from chestkd.cli import output_folder, user_error_message
from chestkd.data import LOADERS
from chestkd.errors import ConfigError


def parse_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (key, YAML value)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--option {text!r}: expected KEY=VALUE, e.g. views=[PA]")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"--option {text!r}: value is not valid YAML ({error})") from None


def options_of(args) -> dict:
    return dict(parse_option(text) for text in args.option)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chestkd.data",
                                     description="chestkd dataset tools")
    commands = parser.add_subparsers(dest="command", required=True)

    describe = commands.add_parser("describe", help="images, labels, splits, leakage check")
    describe.add_argument("--dataset", required=True, choices=sorted(LOADERS))
    describe.add_argument("--data-dir", default=None,
                          help="dataset folder (optional for phantom)")
    describe.add_argument("--split", choices=["official", "patient"], default=None,
                          help="chestxray14 split; default official if the lists exist")
    describe.add_argument("--json", action="store_true", help="print one JSON object")
    describe.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                          help="loader option, value as YAML (repeatable)")

    phantom = commands.add_parser("phantom", help="write the synthetic phantom dataset")
    phantom.add_argument("--out", required=True)
    phantom.add_argument("--images", type=int, default=None,
                         help="number of films (default: the writer's, 1000)")
    phantom.add_argument("--size", type=int, default=None,
                         help="film side in pixels (default: the writer's, 256)")
    phantom.add_argument("--seed", type=int, default=None, help="default 0")
    phantom.add_argument("--kind", choices=["chestxray14", "pneumonia"], default="chestxray14",
                         help="the 14-finding phantom or the single-label pneumonia one")
    phantom.add_argument("--classes", nargs="+", default=None,
                         help="pneumonia kind: two or three of normal, pneumonia, covid19")

    prepare = commands.add_parser("prepare", help="decode and resize images into a cache")
    prepare.add_argument("--dataset", required=True, choices=sorted(LOADERS))
    prepare.add_argument("--data-dir", default=None)
    prepare.add_argument("--size", type=int, default=224)
    prepare.add_argument("--out", required=True)
    prepare.add_argument("--workers", type=int, default=None)
    prepare.add_argument("--skip-bad-images", action="store_true")
    prepare.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                         help="loader option, value as YAML (repeatable)")
    return parser


def run_describe(args) -> None:
    from chestkd.data.describe import run
    print(run(args.dataset, args.data_dir, split=args.split, options=options_of(args),
              as_json=args.json))


def run_phantom(args) -> None:
    given = {key: getattr(args, key) for key in ("images", "size", "seed")
             if getattr(args, key) is not None}
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out}: a file, not a folder")
    output_folder(Path(args.out).parent)
    if args.kind == "pneumonia":
        from chestkd.data.phantom import write_pneumonia_phantom
        result = write_pneumonia_phantom(args.out, classes=args.classes, **given)
    else:
        if args.classes is not None:
            raise ConfigError("--classes: only for --kind pneumonia (the 14-finding phantom "
                              "always has its 14 findings)")
        from chestkd.data.phantom import write_phantom    # lazy: describe must not depend on it
        result = write_phantom(args.out, **given)
    print(f"phantom dataset written to {args.out if result is None else result}")


def run_prepare(args) -> None:
    from chestkd.data import load_dataset
    from chestkd.data.cache import prepare             # lazy: describe must not depend on it
    data = load_dataset(args.dataset, args.data_dir, **options_of(args))
    if not args.skip_bad_images:
        from chestkd.data.presence import require_on_disk
        require_on_disk(data)      # absent images: counted at once, not found one by one
    given = {"workers": args.workers} if args.workers is not None else {}
    result = prepare(data, args.out, size=args.size, skip_bad_images=args.skip_bad_images,
                     **given)
    print(f"cache written to {args.out if result is None else result}")
    skipped = Path(args.out) / "skipped.csv"
    if args.skip_bad_images and skipped.exists():
        count = len(skipped.read_text().splitlines()) - 1
        print(f"{count} image(s) skipped (--skip-bad-images), listed in {skipped}")


COMMANDS = {"describe": run_describe, "phantom": run_phantom, "prepare": run_prepare}


def main(argv=None) -> int:
    """Run one command; returns the exit status (2 for user errors)."""
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except Exception as error:
        if user_error_message(error) is None:
            raise
        print(f"error: {user_error_message(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
