"""Input-pipeline throughput: images/second from raw PNG files and from the prepared cache.

    python benchmarks/pipeline_throughput.py [--images 2000] [--source-size 1024] [--size 224]
                                             [--augment flip|light|strong]

Writes a phantom at ``--source-size`` (1024 like the real release), prepares a cache at
``--size``, then times full passes of the training pipeline (shuffle, decode, resize,
``--augment`` as in the runs, normalise, batch) over each. Results go to
benchmarks/RESULTS.md ("Input pipeline").
"""
import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import write_section  # noqa: E402

from chestkd.data import load_dataset  # noqa: E402
from chestkd.data.cache import prepare  # noqa: E402
from chestkd.data.phantom import write_phantom  # noqa: E402
from chestkd.data.pipeline import make_dataset  # noqa: E402


def images_per_second(ds, n_images, passes=2):
    for _ in ds.take(2):  # warm-up: tracing and thread pools
        pass
    start = time.perf_counter()
    for _ in range(passes):
        for _ in ds:
            pass
    return passes * n_images / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--source-size", type=int, default=1024)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--augment", default="flip", choices=["flip", "light", "strong"])
    parser.add_argument("--no-write", action="store_true",
                        help="print the section, leave RESULTS.md alone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = write_phantom(Path(tmp) / "phantom", images=args.images, size=args.source_size)
        generate = time.perf_counter() - start
        data = load_dataset("chestxray14", root, split="patient")
        train = data.subset("train")
        start = time.perf_counter()
        cache = prepare(data, Path(tmp) / "cache", size=args.size, progress=False)
        prepare_seconds = time.perf_counter() - start
        rows = []
        # in_memory=False for the files: a split under 1 GiB is otherwise kept decoded after
        # the first pass, and the timed pass would read memory, not PNG files.
        for source, cache_dir, in_memory in (("raw PNG files", None, False),
                                             ("prepared cache", cache, None),
                                             ("decoded once, kept in memory", None, True)):
            ds = make_dataset(train, image_size=args.size, batch_size=args.batch_size,
                              training=True, cache_dir=cache_dir, augment=args.augment,
                              in_memory=in_memory)
            rows.append((source, images_per_second(ds, len(train))))
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, no GPU "
        f"(Python {platform.python_version()}).",
        f"Command: `python benchmarks/pipeline_throughput.py --images {args.images} "
        f"--source-size {args.source_size} --size {args.size} --augment {args.augment}`",
        "",
        f"Training pipeline (shuffle, decode, resize to {args.size}, augment={args.augment}, "
        f"normalise, batch {args.batch_size}) over {len(train)} phantom images of {args.source_size}x"
        f"{args.source_size} 8-bit PNG:",
        "",
        "| source | images/second |",
        "|---|---|",
        *[f"| {source} | {rate:,.0f} |" for source, rate in rows],
        "",
        f"Writing the phantom took {generate:.0f} s; `prepare` (decode + area-downscale + "
        f"verify, {os.cpu_count()} threads) took {prepare_seconds:.0f} s for "
        f"{len(data)} images ({len(data) / prepare_seconds:,.0f} images/s).",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section("Input pipeline", "\n".join(lines))


if __name__ == "__main__":
    main()
