"""What is computed from saliency maps: localisation scores, their intervals, sanity checks and
the display scaling.

* :mod:`~chestkd.saliency.analysis.localisation` — pointing game, energy in box, IoU / IoBB
  against ground-truth boxes, and the centre-Gaussian baseline;
* :mod:`~chestkd.saliency.analysis.bootstrap` — their 95 % cluster-bootstrap intervals and the
  paired test against the centre baseline;
* :mod:`~chestkd.saliency.analysis.sanity` — cascading parameter and label randomisation
  (Adebayo et al. 2018);
* :mod:`~chestkd.saliency.analysis.display` — sign, percentile scale and display blur of an
  attribution.

These build on :mod:`chestkd.saliency.methods` and never read the report
(:mod:`chestkd.saliency.report`), which composes them.
"""
from chestkd.saliency.analysis.bootstrap import (compare_with_baseline,
                                                 summarise_with_intervals)
from chestkd.saliency.analysis.display import display_maps, display_sigma, signed_to_display
from chestkd.saliency.analysis.localisation import (centre_baseline_maps, localisation_scores,
                                                    summarise_localisation)
from chestkd.saliency.analysis.sanity import (failing_methods, label_randomisation,
                                              parameter_randomisation)

__all__ = ["localisation_scores", "centre_baseline_maps", "summarise_localisation",
           "summarise_with_intervals", "compare_with_baseline", "parameter_randomisation",
           "label_randomisation", "failing_methods", "display_maps", "display_sigma",
           "signed_to_display"]
