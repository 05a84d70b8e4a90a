"""RoS-KD's overlapping subsets, both readings (a shared core; neighbours on a circle): sizes,
shared fractions, coverage, patients kept together."""
import numpy as np
import pytest

from chestkd.data.dataset import Dataset
from chestkd.data.splits import (circle_subsets, overlapping_patient_subsets,
                                 overlapping_subsets, teacher_training_sets)
from chestkd.errors import ConfigError


def membership(subsets, n):
    counts = np.zeros(n, dtype=int)
    for members in subsets:
        counts[members] += 1
    return counts


def test_circle_the_papers_setting_gives_333_items_and_133_shared_by_neighbours():
    subsets = overlapping_subsets(1000, 5, 0.4, seed=3, mode="circle")
    assert [len(s) for s in subsets] == [333] * 5
    shared = [len(np.intersect1d(subsets[i], subsets[(i + 1) % 5])) for i in range(5)]
    assert shared == [133] * 5
    counts = membership(subsets, 1000)
    assert counts.min() == 1 and counts.max() == 2      # union is everything, p <= 0.5
    assert counts.sum() == 5 * 333


@pytest.mark.parametrize("n,k,p", [(997, 3, 0.2), (500, 4, 0.5), (250, 7, 0.33), (64, 3, 0.1)])
def test_circle_invariants_hold_for_other_sizes(n, k, p):
    subsets = overlapping_subsets(n, k, p, seed=1, mode="circle")
    expected = n / (k * (1 - p))
    for members in subsets:
        assert abs(len(members) - expected) <= 1
        assert len(np.unique(members)) == len(members)
    for i in range(k):
        shared = len(np.intersect1d(subsets[i], subsets[(i + 1) % k]))
        assert shared / len(subsets[i]) == pytest.approx(p, abs=2.0 / len(subsets[i]))
    counts = membership(subsets, n)
    assert counts.min() >= 1 and counts.max() <= 2


@pytest.mark.parametrize("mode", ["core", "circle"])
def test_overlap_zero_is_disjoint_and_one_is_the_full_set(mode):
    disjoint = overlapping_subsets(103, 4, 0.0, mode=mode)
    assert sorted(len(s) for s in disjoint) == [25, 26, 26, 26]
    assert np.array_equal(np.sort(np.concatenate(disjoint)), np.arange(103))
    full = overlapping_subsets(103, 4, 1.0, mode=mode)
    assert all(np.array_equal(s, np.arange(103)) for s in full)


def test_two_subsets_are_neighbours_on_both_sides_of_the_circle():
    first, second = circle_subsets(100, 2, 0.2)
    assert len(first) == len(second) == 62
    assert len(np.intersect1d(first, second)) == 24     # 12 at each end: 2p of each


@pytest.mark.parametrize("mode", ["core", "circle"])
def test_seed_reshuffles_and_repeats(mode):
    a = overlapping_subsets(200, 3, 0.4, seed=0, mode=mode)
    b = overlapping_subsets(200, 3, 0.4, seed=0, mode=mode)
    c = overlapping_subsets(200, 3, 0.4, seed=1, mode=mode)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("k,p", [(0, 0.4), (2, -0.1), (2, 1.5), (2, "x"), (50, 0.2)])
@pytest.mark.parametrize("mode", ["core", "circle"])
def test_bad_options_are_config_errors(k, p, mode):
    with pytest.raises(ConfigError):
        overlapping_subsets(20, k, p, mode=mode)


def test_an_unknown_mode_is_a_config_error_naming_the_option():
    with pytest.raises(ConfigError, match="overlap-mode"):
        overlapping_subsets(20, 2, 0.4, mode="ring")


def test_core_the_papers_setting_shares_one_core_of_117_between_every_pair():
    subsets = overlapping_subsets(1000, 5, 0.4, seed=3, mode="core")
    assert [len(s) for s in subsets] == [294, 294, 294, 293, 293]
    core = set(subsets[0]).intersection(*map(set, subsets[1:]))
    assert len(core) == 117                      # floor(1000 * 0.4 / (0.4 + 5 * 0.6))
    for i in range(5):
        for j in range(i + 1, 5):
            assert set(subsets[i]) & set(subsets[j]) == core    # every pair: the core only
    counts = membership(subsets, 1000)
    assert set(np.unique(counts)) == {1, 5}      # an item is in one subset or in all
    assert (counts == 5).sum() == 117 and (counts == 1).sum() == 883


@pytest.mark.parametrize("n,k,p,core,sizes", [
    (997, 3, 0.2, 76, [383, 383, 383]),        # core floor(997 / 13), blocks 307 each
    (500, 4, 0.5, 100, [200, 200, 200, 200]),
    (64, 2, 0.5, 21, [43, 42]),                # circle would give both the full set here
    (60, 3, 0.6, 20, [34, 33, 33]),            # 36 / 1.8 = 20 exactly (no float drift)
])
def test_core_sizes_and_shared_fraction_are_exact(n, k, p, core, sizes):
    subsets = overlapping_subsets(n, k, p, seed=1, mode="core")
    assert [len(s) for s in subsets] == sizes
    shared = set(subsets[0]).intersection(*map(set, subsets[1:]))
    assert len(shared) == core
    for members in subsets:
        assert len(np.unique(members)) == len(members)
        assert core / len(members) == pytest.approx(p, abs=1.0 / len(members))
    assert membership(subsets, n).min() == 1                    # the union is everything


def test_patient_subsets_keep_every_patients_images_together():
    rng = np.random.default_rng(0)
    patients = np.repeat([f"p{i}" for i in range(60)], rng.integers(1, 5, 60))
    for mode, expected in (("circle", [33, 33, 33]),     # floor(60 / (3 * 0.6)) patients
                           ("core", [27, 27, 26])):      # core 10 + blocks of 17, 17, 16
        subsets = overlapping_patient_subsets(patients, 3, 0.4, seed=2, mode=mode)
        for rows, size in zip(subsets, expected):
            inside = set(patients[rows])
            assert set(np.flatnonzero(np.isin(patients, list(inside)))) == set(rows)
            assert len(inside) == size
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
