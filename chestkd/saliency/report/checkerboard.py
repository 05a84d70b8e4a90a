"""The saliency report's figures and their captions (see :mod:`chestkd.saliency.report`).

* :func:`settings_caption` — the line under every figure: how the maps were made (sign, scale,
  display blur, contour, box) and with which settings (CPU or GPU defaults).
* :func:`write_checkerboard_figure` — the stem's checkerboard before and after: the raw
  gradient map, the same map blurred for display, and the map averaged over input shifts.
"""
from __future__ import annotations

import numpy as np

from chestkd.saliency.analysis.display import (DISPLAY_SIGN, display_maps, shift_averaged,
                                               signed_to_display)
from chestkd.saliency.methods import saliency_method
from chestkd.saliency.report.figures import METHOD_TITLES, plot_panels

OPTION_WORDS = {"samples": "samples", "steps": "steps", "noise_level": "noise"}


def settings_caption(methods, options: dict, sigma, stride: int, device: str,
                     percentile: float, contour_share) -> str:
    """One caption line naming the display steps and each method's settings."""
    signs = {"abs": [], "positive": []}
    for method in methods:
        signs[DISPLAY_SIGN.get(method, "abs")].append(METHOD_TITLES.get(method, method))
    parts = []
    if signs["abs"]:
        parts.append(f"|map| for {', '.join(signs['abs'])}")
    if signs["positive"]:
        parts.append(f"positive part for {', '.join(signs['positive'])}")
    settings = []
    for method in methods:
        chosen = {k: v for k, v in options.get(method, {}).items() if k in OPTION_WORDS}
        if chosen:
            words = " x ".join(f"{v:g}" if k != "noise_level" else f"{v:.0%}"
                               for k, v in chosen.items())
            names = " x ".join(OPTION_WORDS[k] for k in chosen)
            settings.append(f"{METHOD_TITLES.get(method, method)} {words} ({names})")
    blur = (f"display blur Gaussian sigma = {sigma:g} px (stem stride {stride}; scores use "
            "the unblurred maps)" if sigma else "no display blur")
    contour = f"white contour: top {contour_share:.0%}; " if contour_share else ""
    return (f"{'; '.join(parts)}; 1 = {percentile:g}th percentile of each map; {blur}; "
            f"{contour}cyan: ground-truth box. {'; '.join(settings)}"
            f"{' - ' if settings else ''}{device} settings.")


def write_checkerboard_figure(model, images, classes, path, *, stride: int, sigma,
                              percentile: float, row_titles=None, batch_size: int = 32):
    """Vanilla gradient: raw, blurred (sigma), and averaged over the stride x stride shifts."""
    method = saliency_method(model, "vanilla", batch_size=batch_size)
    raw = signed_to_display(method(images, classes, raw=True), "vanilla")
    averaged = signed_to_display(shift_averaged(method, images, classes, stride), "vanilla")
    columns = [("Gradient, raw", display_maps(raw, "vanilla", percentile=percentile), None),
               (f"blurred, sigma = {sigma:g} px",
                display_maps(raw, "vanilla", percentile=percentile, sigma=sigma), None),
               (f"mean over {stride} x {stride} shifts",
                display_maps(averaged, "vanilla", percentile=percentile), None)]
    caption = (f"The stem's stride-{stride} checkerboard in |input gradient| (left), reduced "
               f"by a display blur (middle) or by averaging the maps of the image shifted by "
               f"0..{stride - 1} px in x and y ({stride * stride} gradient maps, right).")
    return plot_panels(np.asarray(images), columns, path, row_titles=row_titles,
                       title="Checkerboard from the strided stem: before and after",
                       caption=caption, contour_share=None)
