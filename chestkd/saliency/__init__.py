"""Saliency maps of chest X-ray classifiers, localisation scores and figures.

``saliency_map(model, images, class_index, method, **options)`` returns ``(N, H, W)`` maps in
[0, 1] (or the raw signed attribution with ``raw=True``) for ``method`` in :data:`METHODS`:

========================  ==============================================================
``vanilla``               input gradient of the class logit (via tf-keras-vis Saliency)
``guided_backprop``       guided backpropagation through every ReLU / ReLU6 layer
``integrated_gradients``  IG from a baseline (zeros = mid-grey), midpoint rule
``smoothgrad``            gradient averaged over noisy copies (batched)
``smoothgrad_ig``         IG averaged over noisy copies (batched)
``cam``                   final feature maps weighted by the classifier weights
``gradcam``               Grad-CAM, default layer = the feature map the classifier pools
``gradcam_plus_plus``     Grad-CAM++ (via tf-keras-vis GradcamPlusPlus), same layer default
``scorecam``              Score-CAM (via tf-keras-vis Scorecam), same layer default; slow
========================  ==============================================================

Scores are always logits: a final sigmoid/softmax is stripped. For repeated use build the
method once: ``method = saliency_method(model, "smoothgrad", samples=25)``, then
``method(images, class_index)``.

The package has three wings, each importing only the ones before it:

* :mod:`chestkd.saliency.methods` — the methods above (one module each, the base class, the
  graph surgery) and the registry :data:`METHODS`;
* :mod:`chestkd.saliency.analysis` — what is computed from maps:
  :mod:`~chestkd.saliency.analysis.localisation` (pointing game, energy and IoU/IoBB scores),
  :mod:`~chestkd.saliency.analysis.bootstrap` (their 95 % intervals and a paired test against
  the centre baseline), :mod:`~chestkd.saliency.analysis.sanity` (the randomisation sanity
  checks) and :mod:`~chestkd.saliency.analysis.display` (turning an attribution into a
  readable figure: sign, 99th-percentile scale, display blur, the strided stem's checkerboard);
* :mod:`chestkd.saliency.report` — the report: figures, tables, inputs
  (:func:`~chestkd.saliency.report.write_saliency_report`).

The commands ``python -m chestkd.saliency`` and ``python -m chestkd.saliency.label_check`` stand
on top of the report.
"""
from chestkd.saliency.methods import (CAM, METHODS, REDUCTIONS, GradCAM, GradCAMPlusPlus,
                                      GuidedBackprop, IntegratedGradients, SaliencyMethod,
                                      ScoreCAM, SmoothGrad, SmoothGradIG, Vanilla, normalise_maps,
                                      reduce_channels, saliency_map, saliency_method)

__all__ = ["METHODS", "REDUCTIONS", "SaliencyMethod", "saliency_map", "saliency_method",
           "normalise_maps", "reduce_channels", "Vanilla", "GuidedBackprop",
           "IntegratedGradients", "SmoothGrad", "SmoothGradIG", "CAM", "GradCAM",
           "GradCAMPlusPlus", "ScoreCAM"]
