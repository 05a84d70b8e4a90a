"""The saliency report of a trained model: figures, localisation tables, sanity section.

:func:`write_saliency_report` (:mod:`~chestkd.saliency.report.writer`) composes the methods
(:mod:`chestkd.saliency.methods`) and the analyses (:mod:`chestkd.saliency.analysis`) into one
folder. Its parts: :mod:`~chestkd.saliency.report.inputs` (which test images, read as in
training), :mod:`~chestkd.saliency.report.figures` (the panels and overlays),
:mod:`~chestkd.saliency.report.checkerboard` (the caption line and the stem's checkerboard
figure), :mod:`~chestkd.saliency.report.localisation_tables` and
:mod:`~chestkd.saliency.report.sanity_section`.
"""
from chestkd.saliency.report.writer import (DEFAULT_METHODS, DEFAULT_OPTIONS, GPU_OPTIONS,
                                            write_saliency_report)

__all__ = ["write_saliency_report", "DEFAULT_METHODS", "DEFAULT_OPTIONS", "GPU_OPTIONS"]
