"""``describe``: what a dataset folder holds, before any training.

Reports the images listed and found on disk, positives per label (and, for multi-label data,
the all-negative rows, i.e. ChestX-ray14's "No Finding"), images and patients per split, and
a PASS/FAIL check that no patient lies in two splits. It needs only the metadata. The
images on disk are counted from ``meta["on_disk"]``, which every loader fills by listing its
image folders once (:mod:`chestkd.data.presence`): the same count a run acts on.

:func:`run_summary` is the part a run prints before it trains: images used of those listed,
positives per split and label, and the splits with fewer than :data:`FEW_POSITIVES` positives
of a label (their AUC there rests on a handful of images, or is not defined at all).

For ChestX-ray14 the split defaults to ``official`` when ``train_val_list.txt`` and
``test_list.txt`` exist and to ``patient`` otherwise; asking for ``official`` without the
lists is an error that says so (no silent fallback, so the numbers printed are always those
of the split asked for).
"""
from __future__ import annotations

import inspect
import importlib
import json
import os
from pathlib import Path

import numpy as np

from chestkd.data import CHESTXRAY14_FINDINGS, LOADERS, load_dataset
from chestkd.data.dataset import SPLITS, Dataset
from chestkd.data.presence import absent_counts, skipped_kinds
from chestkd.data.splits import leaked_patients
from chestkd.errors import ConfigError

NO_FINDING = "No Finding"
FEW_POSITIVES = 5      # below this many positives a split's AUC for a label is not worth much
MISSING_EXAMPLES = 5
# The row of images positive for none of the classes: ChestX-ray14's "No Finding" only when the
# classes are its 14 findings (with labels=[Mass] an Effusion film is negative for all of them).
ALL_NEGATIVE = "(all negative)"


def loader_options(name: str) -> list[str]:
    """Keyword options accepted by the loader of dataset ``name``."""
    if name not in LOADERS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {sorted(LOADERS)}")
    module, func = LOADERS[name].split(":")
    signature = inspect.signature(getattr(importlib.import_module(module), func))
    return [p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY]


def default_chestxray14_split(data_dir) -> str:
    """``official`` when both official lists exist in ``data_dir``, else ``patient`` (the
    loader's own default, :func:`chestkd.data.chestxray14.default_split`)."""
    from chestkd.data.chestxray14 import default_split
    return default_split(Path(data_dir) if data_dir is not None else Path("."))


def load_for_describe(name: str, data_dir, split: str | None = None, options=None):
    """Load a dataset with the options given on the command line; returns (data, options)."""
    options = dict(options or {})
    accepted = loader_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"{name}: unknown option(s) {unknown}; this loader accepts {accepted}")
    if name == "chestxray14":
        options["split"] = split or options.get("split") or default_chestxray14_split(data_dir)
    elif split is not None:
        raise ConfigError(f"--split applies to chestxray14 only; {name} has its own split "
                          f"(see its loader's options)")
    return load_dataset(name, data_dir, **options), options


def images_on_disk(data: Dataset) -> np.ndarray:
    """Per row: is the image file there? From ``meta["on_disk"]`` when the loader set it."""
    if data.meta is not None and "on_disk" in data.meta:
        return data.meta["on_disk"].to_numpy(dtype=bool)
    return np.array([os.path.isfile(path) for path in data.paths], dtype=bool)


def describe(data: Dataset, options=None) -> dict:
    """The report as a JSON-ready dict (counts are ints, names are str)."""
    on_disk = images_on_disk(data)
    positives = data.labels * data.mask
    splits_present = [s for s in SPLITS if (data.split == s).any()]
    labels = {}
    for column, name in enumerate(data.class_names):
        counts = {"total": int(positives[:, column].sum())}
        for split in splits_present:
            counts[split] = int(positives[data.split == split, column].sum())
        labels[name] = counts
    if data.multi_label:
        negative = positives.sum(1) == 0
        key = NO_FINDING if set(data.class_names) == set(CHESTXRAY14_FINDINGS) else ALL_NEGATIVE
        labels[key] = {"total": int(negative.sum()),
                       **{s: int(negative[data.split == s].sum()) for s in splits_present}}
    splits = {split: {"images": int((data.split == split).sum()),
                      "patients": int(len(np.unique(data.patients[data.split == split])))}
              for split in SPLITS}
    leaked = leaked_patients(data.patients, data.split)
    report = {
        "dataset": data.name,
        "root": None if data.root is None else str(data.root),
        "options": {k: _jsonable(v) for k, v in (options or {}).items()},
        "multi_label": bool(data.multi_label),
        "classes": list(data.class_names),
        "images": {"listed": int(len(data)), "on_disk": int(on_disk.sum()),
                   "missing": int((~on_disk).sum())},
        "patients": int(len(np.unique(data.patients))),
        "labels": labels,
        "splits": splits,
        "patient_leakage": {
            "status": "FAIL" if leaked else "PASS",
            "patients_in_two_splits": len(leaked),
            "example": ({"patient": next(iter(leaked)), "splits": next(iter(leaked.values()))}
                        if leaked else None)},
        "skipped": int(len(data.skipped)),
        "few_positives": few_positives(data),
    }
    if (~on_disk).any():
        report["missing_examples"] = [os.path.basename(path) for path in
                                      data.paths[~on_disk][:MISSING_EXAMPLES]]
    if data.excluded:
        report["excluded"] = {str(k): int(v) for k, v in data.excluded.items()}
    unknown = (data.mask == 0).sum(0)
    if unknown.any():
        report["unknown_labels"] = {name: int(n) for name, n in zip(data.class_names, unknown)}
    if data.clean_labels is not None:
        report["label_noise"] = label_noise_summary(data)
    if data.boxes is not None:
        report["boxes"] = {"total": int(len(data.boxes)),
                           **{str(k): int(v) for k, v in
                              data.boxes["label"].value_counts().items()}}
    return report


def few_positives(data: Dataset, minimum: int = FEW_POSITIVES) -> dict:
    """{split: {label: positives}} for the labels with fewer than ``minimum`` positive
    images in a split (splits that hold images only)."""
    positives = data.labels * data.mask
    found = {}
    for split in SPLITS:
        rows = data.split == split
        if not rows.any():
            continue
        counts = positives[rows].sum(0).astype(int)
        few = {name: int(n) for name, n in zip(data.class_names, counts) if n < minimum}
        if few:
            found[split] = few
    return found


def few_positives_lines(few: dict, minimum: int = FEW_POSITIVES) -> list[str]:
    """The warning lines for :func:`few_positives` (none when every split has enough)."""
    if not few:
        return []
    lines = [f"fewer than {minimum} positive images (an AUC there rests on these few images; "
             f"with 0 it is not defined):"]
    lines += [f"  {split}: " + ", ".join(f"{name} {n}" for name, n in labels.items())
              for split, labels in few.items()]
    return lines


def images_used(data: Dataset) -> str:
    """``N of the M images listed``, and why the others are not there."""
    listed = data.listed if data.listed is not None else len(data)
    left_out, skipped = absent_counts(data)
    reasons = []
    if left_out:
        reasons.append(f"{left_out:,} not on disk, left out by images: present")
    if skipped:
        reasons.append(f"{skipped:,} not on disk, skipped by --skip-bad-images")
    kinds = skipped_kinds(data.skipped)
    for kind in ("on a bad table row", "unreadable"):
        if kinds.get(kind):
            reasons.append(f"{kinds[kind]:,} {kind}, skipped")
    return (f"{len(data):,} of the {listed:,} images listed"
            + (f" ({'; '.join(reasons)})" if reasons else ""))


def run_summary(data: Dataset) -> str:
    """What a run prints before it trains: the images used of those listed, positives per
    split and label (and images and patients per split), and the few-positives warnings."""
    report = describe(data)
    return "\n".join([f"{data.name}: {images_used(data)}", *_label_lines(report),
                      *_split_lines(report), *few_positives_lines(report["few_positives"]),
                      *boxes_lines(data)])


def boxes_lines(data: Dataset) -> list[str]:
    """Where the localisation boxes are (saliency is scored on the test split's), or that
    none of the images used has one; nothing for data without a box list."""
    if data.boxes is None:
        return []
    if not len(data.boxes):
        return ["boxes: none of these images has a box: saliency figures will show no boxes "
                "and no localisation scores"]
    test = set(data.paths[data.split == "test"])
    in_test = data.boxes[data.boxes["path"].isin(test)]
    line = (f"boxes: {len(data.boxes):,} on {data.boxes['path'].nunique():,} image(s), "
            f"{len(in_test):,} on {in_test['path'].nunique():,} test image(s)")
    if not len(in_test):
        line += ": saliency figures (test split) will show no boxes and no localisation scores"
    return [line]


def label_noise_summary(data: Dataset) -> dict:
    """Wrong labels of a dataset that knows its truth (the phantom with ``label_noise``).

    False negatives: true positives reported negative; false positives: true negatives
    reported positive; ``wrong_share_of_positives`` = false positives / reported positives
    (~``label_noise``: the labeller's 1 - precision).
    """
    known = data.mask > 0
    truth, reported = data.clean_labels > 0.5, data.labels > 0.5
    false_negatives = int((truth & ~reported & known).sum())
    false_positives = int((~truth & reported & known).sum())
    positives = int((reported & known).sum())
    return {"false_negatives": false_negatives, "false_positives": false_positives,
            "true_positives": int((truth & known).sum()), "reported_positives": positives,
            "wrong_share_of_positives": round(false_positives / positives, 4) if positives
            else 0.0}


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def format_report(report: dict) -> str:
    """The report as aligned plain text."""
    images = report["images"]
    options = ", ".join(f"{k}={v}" for k, v in report["options"].items())
    header = f"dataset: {report['dataset']}  ({report['root']})"
    missing = (f" (e.g. {', '.join(report['missing_examples'])}"
               f"{', ...' if images['missing'] > len(report['missing_examples']) else ''})"
               if report.get("missing_examples") else "")
    lines = [header + (f"  [{options}]" if options else ""),
             f"images: {images['listed']:,} listed, {images['on_disk']:,} found on disk, "
             f"{images['missing']:,} missing" + missing,
             f"patients: {report['patients']:,}", *_label_lines(report)]
    if images["missing"] and images["on_disk"]:
        lines.insert(2, f"  a run on the {images['on_disk']:,} images on disk: images: present "
                        f"(--images present; here --option images=present), or "
                        f"--skip-bad-images to keep the split of all {images['listed']:,}")
    if "unknown_labels" in report:
        unknown = ", ".join(f"{k} {v:,}" for k, v in report["unknown_labels"].items() if v)
        lines.append(f"labels left out of the loss (uncertain, U-Ignore): {unknown}")
    lines += _split_lines(report)
    lines += few_positives_lines(report.get("few_positives") or {})
    leakage = report["patient_leakage"]
    if leakage["status"] == "PASS":
        lines.append("patient leakage check: PASS (no patient in two splits)")
    else:
        example = leakage["example"]
        lines.append(f"patient leakage check: FAIL ({leakage['patients_in_two_splits']:,} "
                     f"patient(s) in two splits, e.g. {example['patient']!r} in "
                     f"{example['splits']})")
    if "boxes" in report:
        boxes = dict(report["boxes"])
        total = boxes.pop("total")
        lines.append(f"boxes: {total:,}" + (" (" + ", ".join(f"{k} {v:,}" for k, v in
                                                            boxes.items()) + ")" if boxes else ""))
    if "label_noise" in report and (report["label_noise"]["false_negatives"]
                                    or report["label_noise"]["false_positives"]):
        noise = report["label_noise"]
        lines.append(f"label noise (true labels known): {noise['false_negatives']:,} false "
                     f"negatives, {noise['false_positives']:,} false positives; "
                     f"{noise['wrong_share_of_positives']:.1%} of the reported positives "
                     f"are wrong")
    if "excluded" in report:
        lines.append("rows left out on purpose: " + ", ".join(
            f"{n:,} ({why})" for why, n in report["excluded"].items()))
    lines.append(f"skipped bad images: {report['skipped']:,}")
    return "\n".join(lines)


def _label_lines(report: dict) -> list[str]:
    lines = [f"labels ({'multi-label' if report['multi_label'] else 'single-label'}, "
             f"{len(report['classes'])} classes), positive images:"]
    columns = ["total"] + [s for s in SPLITS if report["splits"][s]["images"]]
    width = max(len(name) for name in report["labels"]) + 2
    lines.append("  " + "label".ljust(width) + "".join(c.rjust(10) for c in columns))
    for name, counts in report["labels"].items():
        lines.append("  " + name.ljust(width)
                     + "".join(f"{counts.get(c, 0):,}".rjust(10) for c in columns))
    return lines


def _split_lines(report: dict) -> list[str]:
    lines = ["splits:", "  " + "split".ljust(8) + "images".rjust(10) + "patients".rjust(10)]
    for split, counts in report["splits"].items():
        lines.append("  " + split.ljust(8) + f"{counts['images']:,}".rjust(10)
                     + f"{counts['patients']:,}".rjust(10))
    return lines


def run(name: str, data_dir=None, *, split: str | None = None, options=None,
        as_json: bool = False) -> str:
    """Load, describe and format (text or one JSON object)."""
    data, used = load_for_describe(name, data_dir, split, options)
    report = describe(data, used)
    return json.dumps(report) if as_json else format_report(report)
