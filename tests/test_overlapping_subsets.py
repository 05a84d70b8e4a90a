"""RoS-KD's overlapping subsets: sizes, shared fractions, coverage, patients kept together."""
import numpy as np
import pytest

from chestkd.data.dataset import Dataset
from chestkd.data.splits import (overlapping_patient_subsets, overlapping_subsets,
                                 teacher_training_sets)
from chestkd.errors import ConfigError


def membership(subsets, n):
    counts = np.zeros(n, dtype=int)
    for members in subsets:
        counts[members] += 1
    return counts


def test_the_papers_setting_gives_333_items_and_133_shared_by_neighbours():
    subsets = overlapping_subsets(1000, 5, 0.4, seed=3)
    assert [len(s) for s in subsets] == [333] * 5
    shared = [len(np.intersect1d(subsets[i], subsets[(i + 1) % 5])) for i in range(5)]
    assert shared == [133] * 5
    counts = membership(subsets, 1000)
    assert counts.min() == 1 and counts.max() == 2      # union is everything, p <= 0.5
    assert counts.sum() == 5 * 333


@pytest.mark.parametrize("n,k,p", [(997, 3, 0.2), (500, 4, 0.5), (250, 7, 0.33), (64, 3, 0.1)])
def test_invariants_hold_for_other_sizes(n, k, p):
    subsets = overlapping_subsets(n, k, p, seed=1)
    expected = n / (k * (1 - p))
    for members in subsets:
        assert abs(len(members) - expected) <= 1
        assert len(np.unique(members)) == len(members)
    for i in range(k):
        shared = len(np.intersect1d(subsets[i], subsets[(i + 1) % k]))
        assert shared / len(subsets[i]) == pytest.approx(p, abs=2.0 / len(subsets[i]))
    counts = membership(subsets, n)
    assert counts.min() >= 1 and counts.max() <= 2


def test_overlap_zero_is_disjoint_and_one_is_the_full_set():
    disjoint = overlapping_subsets(103, 4, 0.0)
    assert sorted(len(s) for s in disjoint) == [25, 26, 26, 26]
    assert np.array_equal(np.sort(np.concatenate(disjoint)), np.arange(103))
    full = overlapping_subsets(103, 4, 1.0)
    assert all(np.array_equal(s, np.arange(103)) for s in full)


def test_two_subsets_are_neighbours_on_both_sides_of_the_circle():
    first, second = overlapping_subsets(100, 2, 0.2)
    assert len(first) == len(second) == 62
    assert len(np.intersect1d(first, second)) == 24     # 12 at each end: 2p of each


def test_seed_reshuffles_and_repeats():
    a, b = overlapping_subsets(200, 3, 0.4, seed=0), overlapping_subsets(200, 3, 0.4, seed=0)
    c = overlapping_subsets(200, 3, 0.4, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("k,p", [(0, 0.4), (2, -0.1), (2, 1.5), (2, "x"), (50, 0.2)])
def test_bad_options_are_config_errors(k, p):
    with pytest.raises(ConfigError):
        overlapping_subsets(20, k, p)


def test_patient_subsets_keep_every_patients_images_together():
    rng = np.random.default_rng(0)
    patients = np.repeat([f"p{i}" for i in range(60)], rng.integers(1, 5, 60))
    subsets = overlapping_patient_subsets(patients, 3, 0.4, seed=2)
    for rows in subsets:
        inside = set(patients[rows])
        assert set(np.flatnonzero(np.isin(patients, list(inside)))) == set(rows)
        assert len(inside) == 33      # floor(60 / (3 * 0.6)) patients
    assert membership(subsets, len(patients)).min() == 1


def test_teacher_training_sets_change_only_the_training_split():
    n = 40
    split = np.array(["train"] * 30 + ["val"] * 5 + ["test"] * 5)
    data = Dataset(name="toy", class_names=["a", "b"], multi_label=True,
                   paths=[f"/x/{i}.png" for i in range(n)], labels=np.zeros((n, 2)),
                   patients=[f"p{i // 2}" for i in range(n)], split=split)
    sets = teacher_training_sets(data, 3, 0.0, seed=0)
    train_paths = [set(d.paths[d.split == "train"]) for d in sets]
    assert sum(len(p) for p in train_paths) == 30
    assert set.union(*train_paths) == set(data.paths[:30])
    for d in sets:
        assert list(d.paths[d.split != "train"]) == list(data.paths[30:])
