"""Every recipe's no-data default, timed as a new user meets it (issue 18).

    python benchmarks/recipe_demos.py [--only ensemble_kd,kd] [--extra "--epochs 1 ..."]
        [--timeout 1200] [--keep DIR] [--write FILE.md]

Runs ``python -m chestkd.recipes.<name>`` for each recipe (ensemble_kd, assistant_kd, ros_kd,
transfer_learning, kd, self_training) as a subprocess with no arguments (plus ``--extra``, for a
quick smoke run), each in a fresh working folder (where its ``runs/`` land) with a fresh
``CHESTKD_HOME`` (so the phantoms are written inside the run, as on a first use). Prints a
Markdown table: wall time, CPU time of the recipe's process tree, exit code, the first
expected-time line the run printed (after its first epoch), and where its table landed (the
Markdown files of its last ``run directory:``), plus the machine: cores, TensorFlow and Keras
versions, load average before and after each recipe. Exit code 1 when any recipe failed.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("ensemble_kd", "assistant_kd", "ros_kd", "transfer_learning", "kd", "self_training")
ESTIMATE = re.compile(r"^epoch 1 of \d+ took .*expected:.*$", re.MULTILINE)
RUN_DIRECTORY = re.compile(r"^run directory: (.+)$", re.MULTILINE)


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tables_of(stdout: str, work: Path) -> list:
    """The Markdown files in the run directory the recipe named last (relative to ``work``)."""
    found = RUN_DIRECTORY.findall(stdout)
    if not found:
        return []
    run_dir = Path(found[-1].strip())
    run_dir = run_dir if run_dir.is_absolute() else work / run_dir
    return sorted(str(p.relative_to(work)) if p.is_relative_to(work) else str(p)
                  for p in run_dir.glob("*.md"))


def run_recipe(name: str, extra: list, keep: Path, timeout: float) -> dict:
    work = keep / name
    home = keep / f"{name}-home"
    for folder in (work, home):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    env = {**os.environ, "CHESTKD_HOME": str(home),
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get(
               "PYTHONPATH")])])}
    command = [sys.executable, "-m", f"chestkd.recipes.{name}", *extra]
    print(f"== {name}: {shlex.join(command)} (in {work}, CHESTKD_HOME={home})", flush=True)
    load_before, cpu_before = load(), children_cpu_seconds()
    start = time.perf_counter()
    log = work / "output.log"
    with log.open("w") as out:
        try:
            code = subprocess.run(command, cwd=work, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    wall = time.perf_counter() - start
    stdout = log.read_text(errors="replace")
    estimate = ESTIMATE.search(stdout)
    row = {"recipe": name, "wall_s": wall, "cpu_s": children_cpu_seconds() - cpu_before,
           "exit": code, "first_estimate": estimate.group(0) if estimate else "--",
           "tables": tables_of(stdout, work) or ["--"], "log": str(log),
           "load_before": load_before, "load_after": load()}
    print(f"   exit {code} after {wall:.0f} s; tables: {', '.join(row['tables'])}; "
          f"log: {log}", flush=True)
    return row


def minutes(seconds: float) -> str:
    whole = int(round(seconds))
    return f"{whole // 60} min {whole % 60:02d} s"


def markdown(rows: list, extra: list, keep: Path) -> str:
    lines = [
        f"Machine: {os.cpu_count()} cores, {platform.machine()} {platform.processor() or ''}"
        f" ({platform.system()}), Python {platform.python_version()}, TensorFlow "
        f"{version('tensorflow')}, Keras {version('keras')}. Each recipe run as "
        f"`python -m chestkd.recipes.NAME{' ' + shlex.join(extra) if extra else ''}` in a "
        f"fresh folder with a fresh CHESTKD_HOME (under {keep}).", "",
        "| recipe | wall | CPU (user + sys) | exit | load before -> after | table | "
        "first expected-time line |",
        "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['recipe']} | {minutes(row['wall_s'])} | {row['cpu_s']:.0f} s | "
                     f"{row['exit']} | {row['load_before']} -> {row['load_after']} | "
                     f"{'<br>'.join(row['tables'])} | {row['first_estimate']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(RECIPES[:-1]),
                        help=f"comma-separated recipes among {', '.join(RECIPES)} "
                             "(default: all but self_training, the main job)")
    parser.add_argument("--extra", default="",
                        help="options passed to every recipe, e.g. \"--epochs 1 --image-size "
                             "32 phantom_images=120\" (a smoke run, not the default)")
    parser.add_argument("--timeout", type=float, default=1200.0,
                        help="seconds per recipe before it is stopped")
    parser.add_argument("--keep", default=None,
                        help="folder for the runs, homes and logs (default: a new temporary one)")
    parser.add_argument("--write", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(RECIPES))
    if unknown or not names:
        parser.error(f"--only {args.only!r}: choose from {', '.join(RECIPES)}")
    extra = shlex.split(args.extra)
    keep = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="recipe_demos-"))
    rows = [run_recipe(name, extra, keep.resolve(), args.timeout) for name in names]
    text = markdown(rows, extra, keep.resolve())
    print("\n" + text)
    if args.write:
        Path(args.write).write_text(text)
    return 0 if all(row["exit"] == 0 for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
