"""Patient-wise train/val/test splits, shared by every loader.

Images of one patient are strongly correlated (follow-up studies of the same chest), so a
split by image would leak patients from training into evaluation and inflate the scores.
:func:`patient_split` therefore assigns whole patients, and :func:`check_no_leakage` checks
that a split (ours or one supplied with a dataset) keeps every patient in one split.
:func:`overlapping_subsets` divides a training split into RoS-KD's overlapping teacher subsets
(a shared core, or neighbours on a circle).
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pandas as pd

from chestkd.data.dataset import SPLITS, Dataset
from chestkd.errors import ConfigError, DataError


def check_fractions(fractions, option: str = "fractions") -> np.ndarray:
    """Fractions as a float64 array: non-negative and summing to 1, else ConfigError."""
    values = np.asarray(fractions, dtype=np.float64).ravel()
    if values.size == 0 or np.any(values < 0) or not np.isclose(values.sum(), 1.0, atol=1e-6):
        raise ConfigError(f"{option} must be non-negative and sum to 1, got {tuple(fractions)}")
    return values


def patient_split(patients, fractions=(0.7, 0.1, 0.2), seed: int = 0, stratify=None,
                  names=SPLITS) -> np.ndarray:
    """Assign every image a split name so that each patient lies in exactly one split.

    Patients are shuffled with ``numpy.random.default_rng(seed)`` (the order before shuffling
    is the sorted patient ids, so the result does not depend on the row order) and laid end
    to end, each taking as much room as it has images. A patient goes to split ``k`` when the
    midpoint of its stretch falls in ``(F_{k-1}, F_k]`` with ``F_k = f_1 + ... + f_k`` (on
    a boundary it goes to the earlier split: a lone image of a 50/50 split trains). The
    *image* fractions therefore approach ``fractions`` as closely as whole patients allow
    (ChestX-ray14 patients have 1 to 184 images).

    With ``stratify`` (one hashable key per image, e.g. its class) every patient is put in
    the stratum of its most frequent key and each stratum is split separately, so every
    split gets about the same share of each class.

    Args:
        patients: (N,) patient id per image.
        fractions: one fraction per name in ``names``, summing to 1.
        seed: the same seed gives the same split.
        stratify: optional (N,) keys to stratify by.
        names: split names, ``("train", "val", "test")`` by default.

    Returns:
        (N,) array of split names.
    """
    bounds = np.cumsum(check_fractions(fractions))
    names = np.asarray(names, dtype=str)
    if len(names) != len(bounds):
        raise ConfigError(f"fractions: {len(bounds)} given for {len(names)} splits "
                          f"{list(names)}")
    patients = np.asarray(patients, dtype=str)
    unique, inverse, counts = np.unique(patients, return_inverse=True, return_counts=True)
    if stratify is None:
        strata = np.zeros(len(unique), dtype=np.int64)
    else:
        strata = _patient_strata(patients, np.asarray(stratify), unique)
    rng = np.random.default_rng(seed)
    assigned = np.empty(len(unique), dtype=np.int64)
    for stratum in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == stratum))
        sizes = counts[members].astype(np.float64)
        midpoints = (np.cumsum(sizes) - sizes / 2) / sizes.sum()
        assigned[members] = np.searchsorted(bounds, midpoints, side="left")
    assigned = np.minimum(assigned, len(names) - 1)   # guards a cumulative sum of 0.99999
    return names[assigned][inverse]


def _patient_strata(patients, keys, unique) -> np.ndarray:
    """Stratum index per unique patient: its most frequent key (ties: the smallest key)."""
    if len(keys) != len(patients):
        raise ConfigError(f"stratify has {len(keys)} entries for {len(patients)} images")
    key_codes, key_index = np.unique(keys.astype(str), return_inverse=True)
    table = pd.DataFrame({"patient": patients, "key": key_index})
    sizes = table.groupby(["patient", "key"]).size().rename("n").reset_index()
    sizes = sizes.sort_values(["patient", "n", "key"], ascending=[True, False, True])
    mode = sizes.drop_duplicates("patient").set_index("patient")["key"]
    return mode.reindex(unique).to_numpy()


def leaked_patients(patients, split) -> dict[str, list[str]]:
    """Patients found in more than one split -> the sorted split names they appear in."""
    frame = pd.DataFrame({"patient": np.asarray(patients, dtype=str),
                          "split": np.asarray(split, dtype=str)})
    per_patient = frame.drop_duplicates().groupby("patient")["split"].agg(sorted)
    leaked = per_patient[per_patient.map(len) > 1]
    return {str(patient): list(splits) for patient, splits in leaked.items()}


def check_no_leakage(patients, split, source: str) -> None:
    """DataError naming ``source`` and a patient if any patient lies in two splits."""
    leaked = leaked_patients(patients, split)
    if leaked:
        patient, splits = next(iter(leaked.items()))
        raise DataError(
            f"{source}: patient {patient!r} appears in splits {splits} "
            f"({len(leaked)} patient(s) in more than one split); images of one patient must "
            f"stay in one split")


# ------------------------------------------------------------------ overlapping subsets
def _check_overlap_options(n, k, overlap) -> tuple[int, int, Fraction]:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"--subsets {k!r}: the number of subsets must be a positive integer")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float, np.floating)) \
            or not 0.0 <= float(overlap) <= 1.0:
        raise ConfigError(f"--overlap {overlap!r}: the overlap ratio must be in [0, 1]")
    if int(n) < int(k):
        raise ConfigError(f"overlapping subsets: {n} item(s) cannot fill {k} subsets")
    # An exact fraction keeps the p = 0 boundaries at exactly i*n/k (no float drift).
    return int(n), int(k), Fraction(float(overlap)).limit_denominator(10 ** 6)


OVERLAP_MODES = ("core", "circle")


def overlapping_subsets(n: int, k: int, overlap: float, seed: int = 0,
                        mode: str = "core") -> list[np.ndarray]:
    """``k`` index arrays over ``range(n)`` with overlap ratio ``overlap`` (RoS-KD's "k
    overlapping subsets with an overlap ratio of p"), in one of two readings (``mode``):
    :func:`shared_core_subsets` (``"core"``: one core common to every subset, the rest
    disjoint) or :func:`circle_subsets` (``"circle"``: each subset shares ``p`` with its
    neighbours on a circle). Both give disjoint subsets at ``p = 0``, the full set to every
    subset at ``p = 1``, and cover every item. Returns ``k`` sorted int64 arrays."""
    n, k, p = _check_overlap_options(n, k, overlap)
    if mode == "core":
        return shared_core_subsets(n, k, overlap, seed)
    if mode == "circle":
        return circle_subsets(n, k, overlap, seed)
    raise ConfigError(f"--overlap-mode {mode!r}: choose one of {list(OVERLAP_MODES)}")


def shared_core_subsets(n: int, k: int, overlap: float, seed: int = 0) -> list[np.ndarray]:
    """``k`` subsets that share one core and split the rest: every pair of subsets shares
    exactly the core, a fraction ``p`` of each subset.

    The items are shuffled with ``numpy.random.default_rng(seed)``; the first
    ``c = floor(n p / (p + k (1 - p)))`` form the core (so that ``c`` is a fraction ``p`` of a
    subset of ``c + (n - c) / k`` items), and the other ``n - c`` are dealt into ``k`` disjoint
    consecutive blocks whose sizes differ by at most one (the larger blocks first). Subset
    ``i`` is the core plus block ``i``. Hence every item is in one subset or in all of them;
    ``p = 0`` gives ``k`` disjoint subsets, ``p = 1`` the full set to every subset, and the
    ratio means the same for any ``k`` (no saturation).

    Example: ``n=1000, k=5, p=0.4`` gives a core of 117 and subsets of 294, 294, 294, 293,
    293 items; any two share the 117.
    """
    n, k, p = _check_overlap_options(n, k, overlap)
    order = np.random.default_rng(seed).permutation(n)
    core = n if p == 1 else math.floor(Fraction(n) * p / (p + k * (1 - p)))
    rest = order[core:]
    blocks = np.array_split(rest, k)      # sizes differ by at most one, larger first
    return [np.sort(np.concatenate([order[:core], block])).astype(np.int64)
            for block in blocks]


def circle_subsets(n: int, k: int, overlap: float, seed: int = 0) -> list[np.ndarray]:
    """``k`` index arrays over ``range(n)`` whose consecutive members share a fraction
    ``overlap`` of their items.

    The items are shuffled with ``numpy.random.default_rng(seed)`` and laid on a circle;
    subset ``i`` starts at position ``i*n/k`` and holds ``n / (k*(1-p))`` consecutive items
    (positions are floored, so sizes differ by at most one). Hence:

    * consecutive subsets (``i``, ``i+1``, and the last with the first) share
      ``n/(k(1-p)) - n/k`` items, a fraction ``p`` of each (for ``k = 2`` the two subsets
      are neighbours at both ends of the circle and share ``2p``);
    * the union is every item (each subset reaches at least the next one's start);
    * for ``p <= 0.5`` a subset spans at most two start intervals, so each item is in one
      or two subsets;
    * ``overlap=0`` gives ``k`` disjoint subsets of ``n/k`` items; ``overlap=1`` gives the
      full set to every subset (all teachers on the same data);
      sizes are capped at ``n``, so any ``p >= 1 - 1/k`` also gives the full set (for
      ``k = 2``: ``p >= 0.5``).

    Example: ``n=1000, k=5, p=0.4`` gives 333 items per subset, 133 shared by consecutive
    subsets.

    Returns:
        ``k`` sorted int64 arrays.
    """
    n, k, p = _check_overlap_options(n, k, overlap)
    order = np.random.default_rng(seed).permutation(n)
    subsets = []
    for i in range(k):
        start = Fraction(i * n, k)
        size = Fraction(n) if p == 1 else min(Fraction(n), Fraction(n, k) / (1 - p))
        first, stop = math.floor(start), math.floor(start + size)
        if stop - first >= n:
            positions = np.arange(n)
        else:
            positions = np.arange(first, stop) % n
        subsets.append(np.sort(order[positions]).astype(np.int64))
    return subsets


def overlapping_patient_subsets(patients, k: int, overlap: float,
                                seed: int = 0, mode: str = "core") -> list[np.ndarray]:
    """:func:`overlapping_subsets` (``mode``) over patients: ``k`` sorted arrays of image
    rows, each holding every image of its patients (a patient's images always stay
    together).

    The subsets are drawn over the sorted unique patient ids, so sizes and overlap are
    fractions of patients (of images only approximately, as patients have several images).
    """
    patients = np.asarray(patients, dtype=str)
    unique, inverse = np.unique(patients, return_inverse=True)
    chosen = overlapping_subsets(len(unique), k, overlap, seed, mode)
    return [np.flatnonzero(np.isin(inverse, members)) for members in chosen]


def teacher_training_sets(data: Dataset, k: int, overlap: float, seed: int = 0,
                          mode: str = "core") -> list[Dataset]:
    """``k`` copies of ``data`` whose training split is one overlapping patient subset each
    (:func:`overlapping_patient_subsets`, ``mode``; validation and test splits unchanged),
    for RoS-KD's teachers."""
    train_rows = np.flatnonzero(data.split == "train")
    other_rows = np.flatnonzero(data.split != "train")
    subsets = overlapping_patient_subsets(data.patients[train_rows], k, overlap, seed, mode)
    return [data.select(np.sort(np.concatenate([train_rows[rows], other_rows])))
            for rows in subsets]
