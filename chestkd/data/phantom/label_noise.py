"""Label noise of the phantom: what an NLP labeller reading the reports would have written.

ChestX-ray14's labels were mined from the radiology reports by NLP; the release quotes an
accuracy above 90 %. That noise is what knowledge distillation is said to tolerate, and on real
data nobody can measure it. The phantom knows every image's true findings, so it can hand out
corrupted labels for training and keep the truth for scoring (``Dataset.clean_labels``).

Noise model, per finding ``c`` with prevalence ``pi_c`` (the share of the phantom's images that
truly have it) and noise level ``p``:

* a true positive becomes negative with probability ``p``
  (false negative: the report's mention was missed);
* a true negative becomes positive with probability ``q_c = p * pi_c / (1 - pi_c)``
  (false positive: a mention read where there is none).

Then the expected number of reported positives is unchanged,
``n pi (1 - p) + n (1 - pi) q = n pi``, and the expected share of reported positives that are
wrong is ``n (1 - pi) q / (n pi) = p``: the labeller's precision and recall are both about
``1 - p``, the way the NIH release quotes its NLP accuracy. ``p`` must lie in ``[0, 0.5)``:
at ``p = 0.5`` half of every finding's positives are wrong, and the rate ``q_c`` would reach
1 for a finding present in half the images. (``q_c`` is capped at 1 for such label tables.)

Flips are independent per image and finding, so the "No Finding" share moves: an image loses
its only finding with probability ``p`` and a normal image gains one with probability
``1 - prod_c (1 - q_c)``. Loaders keep no "No Finding" column of their own (all-negative rows
*are* No Finding), so nothing else needs updating.

The draws are seeded by the phantom's own seed only, ``numpy.random.default_rng([seed,
NOISE_STREAM])``: like a real dataset's, the noise is a fixed property of the data (every
training seed sees the same wrong labels). The same uniform draw ``u`` of an entry is compared
with ``p`` (or ``q_c``) at every noise level, so the labels are a fixed function of
``(seed, p)`` and the wrong labels at a lower ``p`` are a subset of those at a higher ``p``
(common random numbers: a noise sweep compares like with like).
"""
from __future__ import annotations

import numbers

import numpy as np

from chestkd.errors import ConfigError

NOISE_STREAM = 11       # spawn key of the noise draws, apart from the phantom's other streams
MAX_LABEL_NOISE = 0.5   # exclusive


def check_label_noise(p) -> float:
    """``p`` as a float in ``[0, 0.5)``, else a ConfigError naming the option."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not (
            0.0 <= float(p) < MAX_LABEL_NOISE):
        raise ConfigError(f"label_noise={p!r}: must be a number in [0, {MAX_LABEL_NOISE}) "
                          f"(the share of wrong labels; 0.1 is like ChestX-ray14's NLP labels)")
    return float(p)


def flip_rates(prevalence, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Per finding: (P(positive -> negative), P(negative -> positive)) = (p, q_c).

    ``q_c = p * pi_c / (1 - pi_c)``, capped at 1; 0 for a finding that is never (or always)
    present, where it has no negatives (or no positives) to keep in balance.
    """
    p = check_label_noise(p)
    pi = np.clip(np.asarray(prevalence, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(pi < 1.0, p * pi / (1.0 - pi), 0.0)
    return np.full(pi.shape, p), np.clip(q, 0.0, 1.0)


def corrupt_labels(labels, p: float, seed: int, prevalence=None) -> np.ndarray:
    """A noisy copy of the multi-hot ``labels`` (N, C) at noise level ``p`` (module doc).

    ``prevalence`` (C,) defaults to the column means of ``labels``; pass the whole dataset's
    labels (not a split's) so every split gets the same rates. ``p = 0`` returns an exact copy.
    """
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (N, C), got shape {labels.shape}")
    positive = labels > 0.5
    if prevalence is None:
        prevalence = positive.mean(0) if len(labels) else np.zeros(labels.shape[1])
    false_negative, false_positive = flip_rates(prevalence, p)
    draws = np.random.default_rng([int(seed), NOISE_STREAM]).random(labels.shape)
    flip = np.where(positive, draws < false_negative, draws < false_positive)
    return np.where(flip, 1.0 - positive, positive).astype(np.float32)
