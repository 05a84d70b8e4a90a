"""The saliency methods behind one small base class, and their registry.

Each method is a :class:`~chestkd.saliency.methods.base.SaliencyMethod` built once for a model
(graph surgery in :mod:`~chestkd.saliency.methods.graph`, tf-keras-vis adapters in
:mod:`~chestkd.saliency.methods.tfkv`) and called on images; :data:`METHODS` names them,
:func:`saliency_method` builds one and :func:`saliency_map` builds and calls one. Nothing here
reads or writes the report (:mod:`chestkd.saliency.report`) or the analyses
(:mod:`chestkd.saliency.analysis`).
"""
from __future__ import annotations

import numpy as np

from chestkd.errors import ConfigError
from chestkd.saliency.methods.base import (REDUCTIONS, SaliencyMethod, normalise_maps,
                                           reduce_channels)
from chestkd.saliency.methods.cam import CAM
from chestkd.saliency.methods.gradcam import GradCAM
from chestkd.saliency.methods.gradcam_plus_plus import GradCAMPlusPlus
from chestkd.saliency.methods.guided_backprop import GuidedBackprop
from chestkd.saliency.methods.integrated_gradients import IntegratedGradients, SmoothGradIG
from chestkd.saliency.methods.scorecam import ScoreCAM
from chestkd.saliency.methods.smoothgrad import SmoothGrad
from chestkd.saliency.methods.vanilla import Vanilla

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
            :data:`~chestkd.saliency.methods.base.REDUCTIONS`), ``batch_size``, and per method:
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
