"""Label model of the phantom: which findings an image has.

The targets are ChestX-ray14's own statistics, measured on ``Data_Entry_2017_v2020.csv``
(112,120 images): the prevalence ``m_i`` of each finding, the share of images with
``No Finding`` (53.8 %) and the co-occurrence matrix ``P[j, i] = P(finding i | finding j)``.

Generative model of one image:

1. with probability ``1 - a`` (``a = 0.462``) the image is normal (``No Finding``);
2. otherwise a *primary* finding ``j`` is drawn with probability ``w_j``;
3. every other finding ``i`` is added independently with probability ``s * P[j, i]``.

Ignoring the rare case where two routes add the same finding, the prevalence of ``i`` is
``a * (w_i + s * sum_j w_j P[j, i])``, i.e. ``m / a = (I + s P_off^T) w``.  The weights
``w`` are solved from that linear system, and the scale ``s`` is the one for which ``w`` sums
to one (bisection; the sum decreases monotonically in ``s``).  Hence the sampled
prevalences, the No-Finding share and the co-occurrence pattern all follow the real data.

A small phantom would miss the rare findings entirely (Hernia is 0.2 %), so prevalences
are raised by a *soft floor* ``m' = sqrt(m^2 + f^2)``, which keeps the prevalence order
strict (Hernia stays the rarest, Infiltration the most common).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from chestkd.data import CHESTXRAY14_FINDINGS
from chestkd.errors import ConfigError

# Prevalence (fraction of all images) of each finding, CHESTXRAY14_FINDINGS order.
CHESTXRAY14_PREVALENCE = np.array([
    0.1031, 0.0248, 0.1188, 0.1774, 0.0516, 0.0565, 0.0128,
    0.0473, 0.0416, 0.0205, 0.0224, 0.0150, 0.0302, 0.0020,
])
# Share of images with at least one finding.
ABNORMAL_FRACTION = 0.462
# Co-occurrence in percent: row j, column i holds P(finding i | finding j).
CHESTXRAY14_COOCCURRENCE = np.array([
    [100, 3, 28, 28, 6, 5, 2, 7, 11, 2, 4, 2, 4, 0],
    [13, 100, 38, 21, 4, 4, 1, 2, 6, 5, 2, 2, 4, 0],
    [25, 8, 100, 30, 9, 7, 2, 7, 10, 4, 3, 1, 6, 0],
    [16, 3, 20, 100, 6, 8, 3, 5, 6, 5, 2, 2, 4, 0],
    [13, 2, 22, 20, 100, 16, 1, 7, 11, 2, 4, 2, 8, 0],
    [9, 2, 14, 24, 14, 100, 1, 5, 7, 2, 2, 3, 6, 0],
    [18, 3, 19, 42, 5, 5, 100, 3, 9, 24, 2, 1, 3, 0],
    [15, 1, 19, 18, 8, 6, 1, 100, 4, 1, 14, 2, 5, 0],
    [26, 4, 28, 26, 13, 9, 3, 5, 100, 3, 2, 2, 5, 0],
    [10, 6, 26, 43, 6, 6, 15, 1, 7, 100, 1, 0, 3, 0],
    [17, 2, 14, 18, 9, 5, 1, 30, 4, 1, 100, 1, 6, 0],
    [13, 3, 11, 20, 7, 10, 1, 5, 5, 1, 2, 100, 10, 0],
    [15, 3, 25, 22, 13, 12, 1, 9, 7, 2, 4, 5, 100, 0],
    [18, 3, 9, 15, 11, 4, 1, 4, 2, 1, 2, 4, 4, 100],
]) / 100.0
# Default soft floor on prevalence: every finding in >= ~2.5 % of the images.
DEFAULT_MIN_PREVALENCE = 0.025


def target_prevalence(min_prevalence: float = DEFAULT_MIN_PREVALENCE) -> np.ndarray:
    """Prevalences after the soft floor ``sqrt(m^2 + f^2)`` (CHESTXRAY14_FINDINGS order)."""
    if not 0.0 <= min_prevalence <= 0.1:
        raise ConfigError(f"min_prevalence must lie in [0, 0.1], got {min_prevalence!r}")
    return np.sqrt(CHESTXRAY14_PREVALENCE ** 2 + min_prevalence ** 2)


@lru_cache(maxsize=8)
def _label_model(min_prevalence: float) -> tuple[np.ndarray, np.ndarray]:
    """Primary weights ``w`` (sum 1) and secondary-addition probabilities ``s * P_off``."""
    per_abnormal = target_prevalence(min_prevalence) / ABNORMAL_FRACTION
    off_diagonal = CHESTXRAY14_COOCCURRENCE - np.eye(len(CHESTXRAY14_FINDINGS))
    identity = np.eye(len(CHESTXRAY14_FINDINGS))

    def weights(scale):
        return np.linalg.solve(identity + scale * off_diagonal.T, per_abnormal)

    low, high = 0.0, 4.0
    if weights(low).sum() < 1.0:
        raise ConfigError(f"min_prevalence={min_prevalence} leaves no room for co-occurrences")
    for _ in range(60):
        mid = 0.5 * (low + high)
        if weights(mid).sum() > 1.0:
            low = mid
        else:
            high = mid
    primary = np.clip(weights(low), 0.0, None)
    return primary / primary.sum(), np.clip(low * off_diagonal, 0.0, 1.0)


def sample_findings(rng: np.random.Generator, *,
                    min_prevalence: float = DEFAULT_MIN_PREVALENCE) -> set[str]:
    """Draw the findings of one image (an empty set means ``No Finding``).

    Always consumes the same number of random draws, so a caller's stream stays aligned.
    """
    primary_weights, secondary = _label_model(float(min_prevalence))
    abnormal = rng.random() < ABNORMAL_FRACTION
    primary = rng.choice(len(primary_weights), p=primary_weights)
    added = rng.random(len(primary_weights)) < secondary[primary]
    if not abnormal:
        return set()
    added[primary] = True
    return {CHESTXRAY14_FINDINGS[i] for i in np.flatnonzero(added)}
