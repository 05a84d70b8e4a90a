"""Label noise of the phantom: the rates of the model, determinism, clean labels kept aligned."""
import numpy as np
import pytest

from chestkd.data import CHESTXRAY14_FINDINGS
from chestkd.data.dataset import Dataset
from chestkd.data.describe import describe, format_report
from chestkd.data.phantom import load_phantom, write_phantom
from chestkd.data.phantom.label_noise import check_label_noise, corrupt_labels, flip_rates
from chestkd.data.phantom.labels import target_prevalence
from chestkd.errors import ConfigError

ROWS = 20000
TOLERANCE = 4.5   # standard errors: 14 findings x a few checks stay far from a false alarm


@pytest.fixture(scope="module")
def truth():
    """A label matrix with the phantom's prevalences (2.5 % .. 18 %)."""
    rng = np.random.default_rng(0)
    return (rng.random((ROWS, 14)) < target_prevalence()).astype(np.float32)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("noise") / "phantom", images=80, size=32,
                         seed=4, workers=1)


def _within(observed, expected, standard_error):
    assert np.all(np.abs(observed - expected) <= TOLERANCE * standard_error + 1e-12), (
        observed, expected)


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_false_negative_and_false_positive_rates_per_finding(truth, p):
    noisy = corrupt_labels(truth, p, seed=1)
    positive = truth > 0.5
    n_pos, n_neg = positive.sum(0), (~positive).sum(0)
    fn, q = flip_rates(positive.mean(0), p)
    np.testing.assert_allclose(fn, p)
    np.testing.assert_allclose(q, p * positive.mean(0) / (1 - positive.mean(0)))
    fn_rate = ((noisy < 0.5) & positive).sum(0) / n_pos
    fp_rate = ((noisy > 0.5) & ~positive).sum(0) / n_neg
    _within(fn_rate, p, np.sqrt(p * (1 - p) / n_pos))
    _within(fp_rate, q, np.sqrt(q * (1 - q) / n_neg))
    # The labeller's precision ~ 1 - p: a share p of the reported positives is wrong.
    wrong = ((noisy > 0.5) & ~positive).sum() / (noisy > 0.5).sum()
    assert abs(wrong - p) < 0.02


def test_positive_counts_are_preserved_in_expectation(truth):
    p = 0.2
    positive = truth > 0.5
    n_pos, n_neg = positive.sum(0), (~positive).sum(0)
    _, q = flip_rates(positive.mean(0), p)
    # Expected count n_pos (1 - p) + n_neg q = n_pos; its variance is the two binomials'.
    sd = np.sqrt(n_pos * p * (1 - p) + n_neg * q * (1 - q))
    counts = np.stack([corrupt_labels(truth, p, seed=s).sum(0) for s in range(5)])
    _within(counts.mean(0), n_pos, sd / np.sqrt(5))


def test_zero_noise_is_an_exact_copy_and_rates_are_capped(truth):
    np.testing.assert_array_equal(corrupt_labels(truth, 0.0, seed=3), truth)
    fn, q = flip_rates([0.0, 0.6, 1.0], 0.4)      # no positives, q would be 0.6, no negatives
    np.testing.assert_allclose(q, [0.0, 0.6, 0.0])
    assert np.all(flip_rates([0.9], 0.45)[1] == 1.0)  # capped


def test_same_seed_same_noise_other_p_or_seed_other_noise(truth):
    a = corrupt_labels(truth, 0.1, seed=7)
    np.testing.assert_array_equal(a, corrupt_labels(truth, 0.1, seed=7))
    assert not np.array_equal(a, corrupt_labels(truth, 0.2, seed=7))
    assert not np.array_equal(a, corrupt_labels(truth, 0.1, seed=8))
    # One draw per entry at every level: the wrong labels at 0.1 are among those at 0.2.
    wrong_low = a != truth
    wrong_high = corrupt_labels(truth, 0.2, seed=7) != truth
    assert wrong_low.any() and not (wrong_low & ~wrong_high).any()


@pytest.mark.parametrize("bad", [-0.1, 0.5, 0.7, "0.1", True, float("nan")])
def test_noise_outside_zero_to_one_half_is_a_config_error(bad, phantom):
    with pytest.raises(ConfigError, match="label_noise"):
        check_label_noise(bad)
    with pytest.raises(ConfigError, match="label_noise"):
        load_phantom(phantom, label_noise=bad)


def _toy(clean=True):
    labels = np.eye(4, 3, dtype=np.float32)
    return Dataset("toy", ["a", "b", "c"], True, [f"/x/{i}.png" for i in range(4)], labels,
                   ["p0", "p1", "p2", "p3"], ["train", "test", "train", "test"],
                   clean_labels=1 - labels if clean else None)


def test_select_and_subset_keep_clean_labels_aligned():
    data = _toy()
    assert data.clean_labels.dtype == np.float32
    for part, rows in ((data.select([3, 0]), [3, 0]), (data.subset("test"), [1, 3]),
                       (data.select(np.array([True, False, True, False])), [0, 2])):
        np.testing.assert_array_equal(part.labels, data.labels[rows])
        np.testing.assert_array_equal(part.clean_labels, data.clean_labels[rows])
    assert _toy(clean=False).select([1]).clean_labels is None
    with pytest.raises(ValueError, match="clean_labels"):
        Dataset("toy", ["a", "b", "c"], True, ["/x/0.png"], np.zeros((1, 3)), ["p"], ["train"],
                clean_labels=np.zeros((1, 2)))


def test_load_phantom_noisy_labels_on_every_split_and_the_truth_kept(phantom):
    clean = load_phantom(phantom)
    np.testing.assert_array_equal(clean.clean_labels, clean.labels)   # p = 0: equal, not None
    noisy = load_phantom(phantom, label_noise=0.3)
    np.testing.assert_array_equal(noisy.paths, clean.paths)
    np.testing.assert_array_equal(noisy.clean_labels, clean.labels)
    for split in ("train", "val", "test"):
        part = noisy.subset(split)
        assert (part.labels != part.clean_labels).any(), split
    # The files stay clean: loading again without noise gives the truth.
    np.testing.assert_array_equal(load_phantom(phantom).labels, clean.labels)
    report = describe(noisy)
    assert report["label_noise"]["false_negatives"] > 0
    assert "label noise" in format_report(report)


def test_phantom_noise_is_a_property_of_the_data_not_of_the_run(phantom):
    """Other training seeds, label subsets and views see the same wrong label per image."""
    full = load_phantom(phantom, label_noise=0.2, seed=0)
    by_image = dict(zip(full.meta["image"], full.labels))
    other_seed = load_phantom(phantom, label_noise=0.2, seed=1)
    assert not np.array_equal(other_seed.split, full.split)   # another val carve ...
    for image, labels in zip(other_seed.meta["image"], other_seed.labels):
        np.testing.assert_array_equal(labels, by_image[image])  # ... the same noisy labels
    names = ["Nodule", "Effusion"]
    columns = [CHESTXRAY14_FINDINGS.index(n) for n in names]
    subset = load_phantom(phantom, label_noise=0.2, labels=names, views=["PA"])
    for image, labels in zip(subset.meta["image"], subset.labels):
        np.testing.assert_array_equal(labels, by_image[image][columns])
    assert not np.array_equal(load_phantom(phantom, label_noise=0.1).labels, full.labels)
