"""chestkd.scores, the one home of logits -> probabilities and of the exact AUC, against
float64 references; and no second definition of either anywhere in the package."""
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from chestkd.scores import exact_auc, probabilities_from_logits, ranking_scores

PACKAGE = Path(__file__).resolve().parents[1] / "chestkd"


def test_sigmoid_matches_a_float64_reference_without_overflow_or_ties():
    z = np.concatenate([np.arange(-745.0, 746.0, 5.0), [-1e4, -710.0, 710.0, 1e4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning fails the test
        p = probabilities_from_logits(z, multi_label=True)
    reference = np.exp(-np.logaddexp(0.0, -z))  # log sigma(z) = -log(1 + e^-z), stable
    assert p.dtype == np.float64
    np.testing.assert_allclose(p[z >= -700], reference[z >= -700], rtol=1e-13, atol=0)
    assert np.all((p >= 0) & (p <= 1)) and p[z == 1e4] == 1.0 and p[z == -1e4] == 0.0
    # Distinct negative logits keep distinct, ordered scores: a clip at -60 or the tanh form
    # (saturating near -37) would tie them and change the AUC's ranking.
    tail = probabilities_from_logits(np.arange(-700.0, -20.0, 0.5), multi_label=True)
    assert np.all(np.diff(tail) > 0)


def test_sigmoid_is_bitwise_the_former_evaluation_formula_on_ordinary_logits():
    # "Same numbers": metrics.json's probabilities (calibration, thresholds) are unchanged.
    z = np.random.default_rng(0).normal(0, 12, 20_000).astype(np.float32)
    former = 1.0 / (1.0 + np.exp(-np.clip(z.astype(np.float64), -60, 60)))
    np.testing.assert_array_equal(probabilities_from_logits(z, multi_label=True), former)


def test_softmax_matches_a_float64_reference_for_large_logits():
    z = np.array([[1000.0, 0.0, -1000.0], [-800.0, -800.0, -801.0], [3.0, 1.0, 0.2],
                  [1e4, 1e4, -1e4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = probabilities_from_logits(z, multi_label=False)
    reference = np.exp(z - logsumexp(z, axis=-1, keepdims=True))
    # rtol: the reference's z - logsumexp(z) near |z| = 800 is only good to an ulp of 800.
    np.testing.assert_allclose(p, reference, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-15)
    assert p[3, 0] == p[3, 1] == 0.5
    # Along the last axis of any rank, float32 logits in, float64 out.
    batch = np.random.default_rng(1).normal(0, 5, (2, 3, 4)).astype(np.float32)
    out = probabilities_from_logits(batch, multi_label=False)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, np.exp(batch - logsumexp(batch.astype(np.float64), -1,
                                                             keepdims=True)), rtol=1e-14)


def _sklearn_per_class(y, s):
    out = []
    for c in range(y.shape[1]):
        known = y[:, c] >= 0
        labels = y[known, c]
        out.append(roc_auc_score(labels, s[known, c]) if 0 < labels.sum() < len(labels)
                   else np.nan)
    return np.array(out)


def test_every_exact_auc_caller_gives_sklearns_value_with_ties_unknowns_and_one_label():
    from chestkd.evaluation import statistics
    from chestkd.evaluation.metrics import per_class_auc
    from chestkd.training.losses import exact_mean_auc

    rng = np.random.default_rng(2)
    y = (rng.random((300, 4)) < 0.3).astype(np.float64)
    y[rng.random((300, 4)) < 0.2] = -1.0    # unknown labels, left out of their class
    y[:, 3] = np.where(y[:, 3] >= 0, 0.0, -1.0)  # class 3: one known label value only
    logits = np.round(rng.normal(y * 1.5, 1.0), 1)  # rounded: many tied scores
    p = probabilities_from_logits(logits, multi_label=True)
    expected = _sklearn_per_class(y, p)
    assert np.isnan(expected[3]) and np.isfinite(expected[:3]).all()

    np.testing.assert_allclose(exact_auc(y, p), expected, rtol=0, atol=1e-15)
    assert statistics.exact_auc is exact_auc
    table = per_class_auc(y, p, ["a", "b", "c", "d"])
    np.testing.assert_allclose(table["auc"], expected, rtol=0, atol=1e-15)
    assert table["positives"].tolist() == [int((y[:, c] == 1).sum()) for c in range(4)]
    assert exact_mean_auc(y, logits, multi_label=True) == pytest.approx(
        np.nanmean(expected), abs=1e-15)

    one_hot = np.eye(3)[rng.integers(0, 3, 200)]
    exclusive = rng.normal(one_hot, 1.0)
    softmax = probabilities_from_logits(exclusive, multi_label=False)
    assert exact_mean_auc(one_hot, exclusive, multi_label=False) == pytest.approx(
        np.mean([roc_auc_score(one_hot[:, c], softmax[:, c]) for c in range(3)]), abs=1e-15)


def test_large_negative_logits_keep_their_ranking_in_every_auc():
    # A badly calibrated model (one epoch: logits of -250) ranked these films perfectly; the
    # former clip at -60 (evaluation) and tanh form (validation AUC) scored the class 0.5.
    from chestkd.evaluation.metrics import per_class_auc
    from chestkd.training.losses import exact_mean_auc

    logits = np.linspace(-250.0, -61.0, 12)[:, None]
    labels = (np.arange(12) >= 6).astype(np.float64)[:, None]
    p = probabilities_from_logits(logits, multi_label=True)
    assert per_class_auc(labels, p, ["finding"])["auc"].tolist() == [1.0]
    assert exact_mean_auc(labels, logits, multi_label=True) == 1.0


def test_ranking_scores_keep_the_probabilities_order_without_their_saturation():
    from scipy.special import log_softmax
    rng = np.random.default_rng(3)
    z = rng.normal(0, 6, (2000, 4))
    np.testing.assert_array_equal(ranking_scores(z, multi_label=True), z)
    exclusive = ranking_scores(z, multi_label=False)
    np.testing.assert_allclose(exclusive, log_softmax(z, axis=-1), rtol=0, atol=1e-13)
    np.testing.assert_allclose(np.exp(exclusive), probabilities_from_logits(z, False),
                               rtol=0, atol=1e-15)
    # The top class of margins 40..60: a probability of exactly 1.0 each, distinct scores.
    margins = np.linspace(40.0, 60.0, 9)
    top = np.stack([margins, np.zeros(9), np.zeros(9)], axis=1)
    assert set(probabilities_from_logits(top, False)[:, 0]) == {1.0}
    assert np.all(np.diff(ranking_scores(top, False)[:, 0]) > 0)


def test_large_positive_logits_keep_their_ranking_in_every_auc():
    # The mirror of the negative case: a sigmoid is exactly 1.0 above a logit of about 37,
    # which scored a perfectly ranked class 0.5 in every AUC.
    from chestkd.evaluation import statistics
    from chestkd.training.losses import exact_mean_auc

    logits = np.linspace(61.0, 250.0, 12)[:, None]
    labels = (np.arange(12) >= 6).astype(np.float64)[:, None]
    assert set(probabilities_from_logits(logits, True).ravel()) == {1.0}
    assert exact_mean_auc(labels, logits, multi_label=True) == 1.0
    margins = np.stack([logits[:, 0], np.zeros(12)], axis=1)  # exclusive classes
    assert exact_mean_auc(np.eye(2)[1 - labels[:, 0].astype(int)], margins, False) == 1.0
    pred = {"labels": labels, "patients": np.array([f"p{i}" for i in range(12)]),
            "paths": np.array([f"/x/{i}.png" for i in range(12)]),
            "class_names": np.array(["finding"]), "multi_label": np.array(True)}
    summary, _ = statistics.compare_predictions({**pred, "logits": logits},
                                                {**pred, "logits": logits[::-1]}, n_boot=50)
    assert (summary["comparison"]["mean_auc_a"], summary["comparison"]["mean_auc_b"]) == (1.0,
                                                                                         0.0)


SIGMOID = re.compile(r"1(\.0)?\s*/\s*\(\s*1(\.0)?\s*\+\s*(np\.)?exp")
SOFTMAX = re.compile(r"exp\(\s*\w+\s*-\s*\w+\.max\(")
AUC = re.compile(r"roc_auc_score\(|reduceat\(")
# Not logits -> probabilities: smooth edges drawn into the phantom images.
IMAGE_EDGES = {"data/phantom/anatomy.py", "data/phantom/findings.py",
               "data/phantom/pneumonia_patterns.py"}


def test_one_definition_of_probabilities_and_of_the_exact_auc():
    offences = []
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).as_posix()
        if name == "scores.py" or name in IMAGE_EDGES:
            continue
        text = path.read_text()
        if SIGMOID.search(text) or "np.tanh(0.5" in text:
            offences.append(f"{name}: a sigmoid of its own")
        if SOFTMAX.search(text):
            offences.append(f"{name}: a softmax of its own")
        if AUC.search(text):
            offences.append(f"{name}: an AUC of its own")
    assert not offences, offences
