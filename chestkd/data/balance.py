"""Class balancing of a single-label dataset's training split.

The COVID-19 case study under-samples its majority class (pneumonia) and over-samples its
rarest (COVID-19). Balancing acts on the *training rows only*, after the split, so validation
and test keep the real class mix, and whole rows are dropped or repeated, so no patient moves
to another split. Every single-label loader gets it through ``load_dataset(..., balance=...)``.
"""
from __future__ import annotations

import numpy as np

from chestkd.data.dataset import Dataset
from chestkd.errors import ConfigError

BALANCE_MODES = (None, "undersample", "oversample", "both")


def check_balance(mode, where: str = "balance") -> str | None:
    """``mode`` if it is one of :data:`BALANCE_MODES`, else a ConfigError naming it."""
    if mode not in BALANCE_MODES:
        raise ConfigError(f"{where}: unknown balance {mode!r}; choose one of {BALANCE_MODES}")
    return mode


def balance_rows(label_index: np.ndarray, train: np.ndarray, mode: str, seed: int) -> np.ndarray:
    """Row indices with the train rows balanced by class; other splits unchanged.

    ``undersample``: every class keeps ``min_c n_c`` random train rows.
    ``oversample``: every class reaches ``max_c n_c`` train rows: all its rows, repeated
    whole as often as they fit, plus a random sample of them for the remainder.
    ``both``: every class reaches the median class count, the larger classes under-sampled
    and the smaller over-sampled (the COVID-19 case study's "majority under-sampled,
    COVID-19 over-sampled"; with three classes the middle one is unchanged).
    Seeded by ``seed`` (``numpy.random.default_rng``); the result is sorted, so repeated
    rows sit next to their original.
    """
    check_balance(mode)
    label_index = np.asarray(label_index)
    train = np.asarray(train, dtype=bool)
    if mode is None:
        return np.arange(len(label_index))
    rng = np.random.default_rng(seed)
    train_rows = np.flatnonzero(train)
    if len(train_rows) == 0:
        return np.arange(len(label_index))
    per_class = [train_rows[label_index[train_rows] == c]
                 for c in np.unique(label_index[train_rows])]
    sizes = [len(rows) for rows in per_class]
    target = {"undersample": min(sizes), "oversample": max(sizes),
              "both": int(np.median(sizes))}[mode]
    chosen = []
    for rows in per_class:
        if len(rows) >= target:
            chosen.append(np.sort(rng.choice(rows, size=target, replace=False)))
        else:
            repeats, remainder = divmod(target, len(rows))
            extra = np.sort(rng.choice(rows, size=remainder, replace=False))
            chosen.append(np.concatenate([np.tile(rows, repeats), extra]))
    return np.sort(np.concatenate(chosen + [np.flatnonzero(~train)]), kind="stable")


def balance_dataset(data: Dataset, mode, seed: int = 0) -> Dataset:
    """``data`` with its train split balanced by ``mode`` (None: unchanged).

    Only single-label data can be balanced (a multi-label image belongs to several classes
    at once); anything else is a ConfigError naming the dataset.
    """
    check_balance(mode, data.name)
    if mode is None:
        return data
    if data.multi_label:
        raise ConfigError(f"{data.name}: balance={mode!r} needs single-label classes; this "
                          f"dataset is multi-label (an image can hold several findings)")
    return data.select(balance_rows(data.labels.argmax(1), data.split == "train", mode, seed))
