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
``method(images, class_index)``. See :mod:`chestkd.saliency.localisation` for the pointing
game, energy and IoU/IoBB scores (:mod:`chestkd.saliency.bootstrap`: with 95 % intervals and a
paired test against the centre baseline), :mod:`chestkd.saliency.display` for turning an
attribution into a readable figure (sign, 99th-percentile scale, display blur, the strided
stem's checkerboard), :mod:`chestkd.saliency.sanity` for the randomisation sanity checks and
:mod:`chestkd.saliency.report` for the report.
"""
from __future__ import annotations

import numpy as np

from chestkd.errors import ConfigError
from chestkd.saliency.base import REDUCTIONS, SaliencyMethod, normalise_maps, reduce_channels
from chestkd.saliency.cam import CAM
from chestkd.saliency.gradcam import GradCAM
from chestkd.saliency.gradcam_plus_plus import GradCAMPlusPlus
from chestkd.saliency.guided_backprop import GuidedBackprop
from chestkd.saliency.integrated_gradients import IntegratedGradients, SmoothGradIG
from chestkd.saliency.scorecam import ScoreCAM
from chestkd.saliency.smoothgrad import SmoothGrad
from chestkd.saliency.vanilla import Vanilla

METHODS: dict[str, type[SaliencyMethod]] = {
    cls.name: cls for cls in (Vanilla, GuidedBackprop, IntegratedGradients, SmoothGrad,
                              SmoothGradIG, CAM, GradCAM, GradCAMPlusPlus, ScoreCAM)
}


def _method_class(method: str) -> type[SaliencyMethod]:
    if method not in METHODS:
        raise ConfigError(f"unknown saliency method {method!r}; choose one of {list(METHODS)}")
    return METHODS[method]


def saliency_method(model, method: str, **options) -> SaliencyMethod:
    """Build ``method`` for ``model`` once (graph surgery and compilation happen here)."""
    cls = _method_class(method)
    valid = cls.build_options()
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for building saliency method {method!r}; "
                          f"valid options: {sorted(valid)}")
    return cls(model, **options)


def saliency_map(model, images, class_index, method: str = "smoothgrad_ig",
                 **options) -> np.ndarray:
    """Saliency maps of ``class_index`` (an int or one per image) for ``images``.

    Args:
        model: keras.Model returning logits (or probabilities; the activation is stripped).
        images: (N, H, W, C) float32, preprocessed like training (chestkd: [-1, 1]).
        class_index: int, or an array with one class per image.
        method: one of :data:`METHODS`.
        **options: ``raw`` (bool), ``reduce`` (channel reduction, see
            :data:`~chestkd.saliency.base.REDUCTIONS`), ``batch_size``, and per method:
            ``samples``, ``noise_level``, ``seed``, ``noise`` (SmoothGrad, SmoothGrad-IG);
            ``steps``, ``baseline`` (IG, SmoothGrad-IG); ``layer`` (Grad-CAM, Grad-CAM++,
            Score-CAM); ``probability``, ``max_maps`` (Score-CAM); ``upsample`` (CAM-like
            methods); ``progress`` (a callback ``fn(images_done)``).

    Returns:
        (N, H, W) float32 maps in [0, 1]; with ``raw=True`` the signed per-channel attribution
        (N, H, W, C), or for the CAM-like methods the unnormalised class activation (N, H, W).
    """
    cls = _method_class(method)
    call_options = {k: v for k, v in options.items() if k in cls.call_options()}
    build_options = {k: v for k, v in options.items() if k not in call_options}
    unknown = sorted(set(build_options) - cls.build_options())
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for saliency method {method!r}; valid "
                          f"options: {sorted(cls.build_options() | cls.call_options())}")
    return saliency_method(model, method, **build_options)(images, class_index, **call_options)


__all__ = ["METHODS", "REDUCTIONS", "SaliencyMethod", "saliency_map", "saliency_method",
           "normalise_maps", "reduce_channels", "Vanilla", "GuidedBackprop",
           "IntegratedGradients", "SmoothGrad", "SmoothGradIG", "CAM", "GradCAM",
           "GradCAMPlusPlus", "ScoreCAM"]
