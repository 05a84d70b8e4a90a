"""The saliency report of a trained model (optionally next to another): figures and scores.

:func:`write_saliency_report` picks test images (those with ground-truth boxes first, one
finding after another so every boxed finding is shown), reads them with the training
input pipeline (:func:`chestkd.data.pipeline.make_dataset`, so with the run's own
normalisation: the maps explain the input values the model saw), computes the saliency maps
of each image's finding (one progress bar for all methods x images) and writes

* ``fig4_saliency.png`` — original, guided backprop, SmoothGrad, SmoothGrad-IG, each panel
  titled with the method and the model's predicted probability (Ho & Gwak 2020, Fig. 4);
* ``fig5_cam_vs_smoothgrad_ig.png`` — CAM vs. SmoothGrad-IG with the ground-truth box drawn
  (Fig. 5), when the data has boxes (with neither method requested: the computed ones);
* ``fig_models_side_by_side.png`` — with ``compare_models``: the same images and methods for
  each model next to each other (e.g. base vs. self-trained);
* ``fig_checkerboard.png`` — the strided stem's checkerboard before and after reduction;
* ``localisation.csv`` / ``.md`` / ``_per_box.csv`` / ``_vs_centre.csv`` — pointing game,
  energy in box and IoU / IoBB per model, method and finding with 95 % bootstrap intervals,
  the centre-Gaussian baseline as method ``centre`` and a paired test against it
  (:mod:`chestkd.saliency.report.localisation_tables`);
* ``sanity.csv`` / ``.md`` / ``sanity_cascade.png`` — cascading parameter randomisation
  (:mod:`chestkd.saliency.report.sanity_section`).

Figures show display maps (:mod:`chestkd.saliency.analysis.display`: |.| or positive part per
method, 99th-percentile scale, a Gaussian blur of half the stem stride); the scores use the
same maps unblurred and unscaled. On a CPU the defaults (:data:`DEFAULT_OPTIONS`: SmoothGrad 16
samples, IG 32 steps, SmoothGrad-IG 16 x 16) keep a ResNet-32 report at 128 px under a minute
on 2 cores; with a GPU :data:`GPU_OPTIONS` (SmoothGrad's 50 samples) are used. Captions say
which.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import tensorflow as tf

from chestkd.cli import output_folder
from chestkd.data.images import progress_bar
from chestkd.errors import ChestKDError, ConfigError
from chestkd.saliency.analysis.display import (DEFAULT_PERCENTILE, display_maps, display_sigma,
                                               signed_to_display, stem_stride)
from chestkd.saliency.analysis.localisation import (centre_baseline_maps, localisation_scores,
                                                    scale_boxes)
from chestkd.saliency.methods import METHODS, saliency_method
from chestkd.saliency.report.checkerboard import settings_caption, write_checkerboard_figure
from chestkd.saliency.report.figures import (CONTOUR_SHARE, plot_model_comparison,
                                             plot_saliency_grid)
from chestkd.saliency.report.inputs import (check_normalization, predict_probabilities,
                                            read_inputs, select_examples)
from chestkd.saliency.report.localisation_tables import write_localisation_report
from chestkd.saliency.report.sanity_section import write_sanity_section

FIG4_METHODS = ("guided_backprop", "smoothgrad", "smoothgrad_ig")
FIG5_METHODS = ("cam", "gradcam", "smoothgrad_ig")
DEFAULT_METHODS = ("guided_backprop", "smoothgrad", "smoothgrad_ig", "cam")
# Noise of 2 % of the image range, not SmoothGrad's usual 10-20 %: radiographs' findings are
# subtle, and on a trained ResNet-32 of the phantom stronger noise moves the maps off the
# findings (pointing game of SmoothGrad-IG: 0.67 at 2 %, 0.62 at 5 %, 0.49 at 15 %, SmoothGrad
# 0.55 / 0.43 / 0.23; a centre Gaussian scores 0.54 — benchmarks/RESULTS.md, "Saliency
# localisation").
DEFAULT_OPTIONS = {
    "smoothgrad": {"samples": 16, "noise_level": 0.02},
    "integrated_gradients": {"steps": 32},
    "smoothgrad_ig": {"samples": 16, "steps": 16, "noise_level": 0.02},
}
# With a GPU: SmoothGrad's own 50 samples (Smilkov et al. 2017; Ho & Gwak do not state theirs),
# 50 IG steps, and SmoothGrad-IG 50 samples x 25 steps.
GPU_OPTIONS = {
    "smoothgrad": {"samples": 50, "noise_level": 0.02},
    "integrated_gradients": {"steps": 50},
    "smoothgrad_ig": {"samples": 50, "steps": 25, "noise_level": 0.02},
}
# The cascade of the sanity section: cheap methods (each step rebuilds the method), few images.
SANITY_OPTIONS = {"integrated_gradients": {"steps": 8}}
SANITY_REPORT_METHODS = ("vanilla", "guided_backprop", "integrated_gradients", "gradcam")
COMPARE_METHODS = ("guided_backprop", "smoothgrad_ig", "cam")
# Maps of the CAM-like methods (feature-map resolution) are not in Fig. 4.
MAP_METHODS = ("cam", "gradcam", "gradcam_plus_plus", "scorecam")


def compute_maps(model, images, classes, methods, options: dict, *, batch_size: int = 32,
                 verbose: int = 1):
    """``(maps, skipped)``: method -> (N, H, W) non-negative score maps, and method -> why it
    failed. The maps are the raw attributions with the method's display sign
    (:func:`chestkd.saliency.analysis.display.signed_to_display`), unscaled and unblurred.

    One progress report counts (method, image) maps (a bar on a terminal, a line per 10 % in
    a log: :func:`chestkd.data.images.progress_bar`); ``verbose=0`` keeps it quiet.
    """
    maps, skipped = {}, {}
    n = len(images)
    bar = progress_bar(len(methods) * n, verbose, unit_name="map", minimum=0,
                       label="saliency maps")
    shown = [0]

    def advance(count):
        # Progbar prints its final line on every update at the target: advance only.
        if bar is not None and count > shown[0]:
            shown[0] = count
            bar.update(count)

    for position, name in enumerate(methods):
        def progress(done, offset=position * n):
            advance(offset + done)
        try:
            method = saliency_method(model, name, batch_size=batch_size, **options.get(name, {}))
            maps[name] = signed_to_display(method(images, classes, raw=True, progress=progress),
                                           name).astype(np.float32)
        except Exception as error:  # noqa: BLE001  a figure must not end a finished run
            # e.g. ConfigError for CAM on a model without a pooled head: listed, not raised.
            skipped[name] = (str(error) if isinstance(error, ChestKDError)
                             else f"{type(error).__name__}: {error}")
        advance((position + 1) * n)
    return maps, skipped


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (np.floating,)):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def default_method_options() -> tuple[dict, str]:
    """``(options, "GPU"|"CPU")``: :data:`GPU_OPTIONS` when TensorFlow sees a GPU."""
    if tf.config.list_physical_devices("GPU"):
        return copy.deepcopy(GPU_OPTIONS), "GPU"
    return copy.deepcopy(DEFAULT_OPTIONS), "CPU"


def _box_lists(scaled, n: int):
    return [[tuple(b) for b in scaled.loc[scaled["map_index"] == i, ["x", "y", "w", "h"]]
             .to_numpy()] for i in range(n)]


def _score(maps_by_model: dict, scaled, size, map_threshold: float) -> pd.DataFrame:
    """Per-box scores of every model's methods and of the centre baseline (model "")."""
    scaled = scaled.assign(box_index=np.arange(len(scaled)))
    frames = []
    named = len(maps_by_model) > 1
    for model_name, maps in maps_by_model.items():
        for method, m in maps.items():
            frame = localisation_scores(m, scaled, method=method, map_threshold=map_threshold)
            frames.append(frame.assign(box_index=scaled["box_index"].to_numpy(),
                                       **({"model": model_name} if named else {})))
    n = max(len(m) for maps in maps_by_model.values() for m in maps.values()) if frames else 0
    centre = localisation_scores(centre_baseline_maps(n or 1, size), scaled, method="centre",
                                 map_threshold=map_threshold)
    frames.append(centre.assign(box_index=scaled["box_index"].to_numpy(),
                                **({"model": ""} if named else {})))
    per_box = pd.concat(frames, ignore_index=True)
    if named:
        per_box = per_box[["model"] + [c for c in per_box.columns if c != "model"]]
    return per_box


def write_saliency_report(model, dataset, out_dir, *, image_size, class_names=None,
                          methods=DEFAULT_METHODS, max_images: int = 6, classes=None,
                          method_options: dict | None = None, batch_size: int = 32,
                          normalization: str = "minus_one_one", mean_std=None,
                          multi_label: bool | None = None, map_threshold: float = 0.5,
                          verbose: int = 1, compare_models: dict | None = None,
                          model_name: str = "model", percentile: float = DEFAULT_PERCENTILE,
                          smoothing=True, contour_share: float | None = CONTOUR_SHARE,
                          sanity: bool = True, sanity_images: int = 2, n_boot: int = 2000,
                          seed: int = 0, figure_images: int | None = None,
                          sanity_steps: int = 6) -> dict:
    """Write saliency figures (and localisation scores when boxes exist) into ``out_dir``.

    Args:
        model: the trained keras.Model (logits or probabilities).
        dataset: a chestkd Dataset (normally the test split); its ``boxes`` are used if any.
        out_dir: output folder (created).
        image_size: model input size S; images and boxes are scaled to S x S.
        class_names: label names of the model outputs (default: the dataset's).
        methods: saliency methods to compute (see :data:`chestkd.saliency.METHODS`).
        max_images: number of (image, finding) pairs scored (and shown, up to
            ``figure_images``).
        classes: restrict to these findings (names).
        method_options: per-method options overriding the defaults (:data:`DEFAULT_OPTIONS`
            on a CPU, :data:`GPU_OPTIONS` with a GPU).
        batch_size: gradient batch size.
        normalization: the training normalisation, one of
            :data:`chestkd.data.pipeline.NORMALIZATIONS` (chestkd default ``minus_one_one``).
        mean_std: ``(mean, std)`` of the ``mean_std`` normalisation (required with it).
        multi_label: sigmoid (True) or softmax (False) probabilities in the titles
            (default: the dataset's ``multi_label``).
        map_threshold: region threshold for IoU / IoBB (fraction of the map maximum).
        verbose: 1 shows a progress bar over methods x images, 0 is quiet (Keras' meaning).
        compare_models: other models explained on the same images and findings (name ->
            model), shown next to ``model`` and scored alike.
        model_name: the name of ``model`` in titles and tables.
        percentile: display scale (1 = this percentile of each map's values).
        smoothing: True: display blur sigma from the stem stride
            (:func:`~chestkd.saliency.analysis.display.display_sigma`); a number: that sigma;
            False: none.
        contour_share: share of each map inside the drawn contour (None: no contour).
        sanity: write the parameter-randomisation section (on ``sanity_images`` images, at
            most ``sanity_steps`` cascade steps).
        n_boot, seed: bootstrap resamplings and seed of the localisation intervals.
        figure_images: rows of the figures (default ``min(max_images, 6)``): the first pairs,
            which cover the findings in turn.

    Returns:
        JSON-ready dict: ``figures`` (name -> path), ``localisation`` (paths), ``scores``
        (summary rows), ``vs_centre`` (rows), ``examples`` (image, finding, probability per
        model), ``skipped_methods``, ``sanity``, ``display`` (settings).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown saliency method(s) {unknown}; choose from {list(METHODS)}")
    check_normalization(normalization, mean_std)   # before any image is read
    class_names = list(class_names or dataset.class_names)
    multi_label = dataset.multi_label if multi_label is None else bool(multi_label)
    out_dir = output_folder(out_dir)
    examples, boxes = select_examples(dataset, class_names, int(max_images), classes)
    result = {"figures": {}, "localisation": {}, "scores": [], "vs_centre": [], "examples": [],
              "skipped_methods": {}}
    if not len(examples):
        return result
    images = read_inputs(dataset, examples["path"], image_size, normalization, mean_std,
                         batch_size)
    models = {model_name: model, **(compare_models or {})}
    probabilities = {name: predict_probabilities(m, images, multi_label)
                     for name, m in models.items()}
    top = probabilities[model_name].argmax(axis=1)
    examples["class_index"] = np.where(examples["class_index"] < 0, top, examples["class_index"])
    examples["label"] = [class_names[c] for c in examples["class_index"]]
    rows = np.arange(len(examples))
    explained = {name: p[rows, examples["class_index"]] for name, p in probabilities.items()}
    classes_per_image = examples["class_index"].to_numpy()

    options, device = default_method_options()
    # Score-CAM weighs maps by a class probability: the same kind as the titles'.
    options["scorecam"] = {"probability": "sigmoid" if multi_label else "softmax"}
    for name, extra in (method_options or {}).items():
        options.setdefault(name, {}).update(extra)
    scores, skipped = {}, {}
    for name, m in models.items():
        scores[name], skipped[name] = compute_maps(m, images, classes_per_image, methods,
                                                   options, batch_size=batch_size,
                                                   verbose=verbose)
    result["skipped_methods"] = skipped[model_name]
    stride = stem_stride(model)
    sigma = (display_sigma(stride=stride, image_size=image_size) if smoothing is True
             else float(smoothing) if smoothing else None)
    if sigma and int(4 * sigma + 0.5) >= min(images.shape[1:3]):
        sigma = None                     # a blur wider than the image: none (tiny inputs)
    titles = [f"{row.label}\n{row.image}" for row in examples.itertuples()]
    rows_shown = min(len(examples), int(figure_images or min(int(max_images), 6)))
    first = slice(0, rows_shown)
    shown = {name: {method: display_maps(m[first], method, percentile=percentile, sigma=sigma)
                    for method, m in maps_of.items()} for name, maps_of in scores.items()}
    maps = shown[model_name]
    explained_shown = {name: p[first] for name, p in explained.items()}
    caption = settings_caption(list(maps), options, sigma, stride, device, percentile,
                               contour_share)
    result["display"] = {"percentile": percentile, "sigma": sigma, "stem_stride": stride,
                         "contour_share": contour_share, "device": device, "caption": caption}
    scaled = per_image_boxes = None
    if boxes is not None and len(boxes):
        scaled = scale_boxes(boxes, image_size)
        per_image_boxes = _box_lists(scaled, rows_shown)
    figure_inputs = images[first]
    figure = {"row_titles": titles[first], "boxes": per_image_boxes,
              "contour_share": contour_share}
    scored = (f" Scores: {len(examples)} (image, finding) pairs; the figures show the first "
              f"{rows_shown}.")

    def caption_of(shown_methods):
        return settings_caption(shown_methods, options, sigma, stride, device, percentile,
                                contour_share) + scored
    fig4 = [m for m in methods if m in maps and m not in MAP_METHODS] or list(maps)
    if fig4:
        result["figures"]["fig4"] = plot_saliency_grid(
            figure_inputs, {m: maps[m] for m in fig4}, out_dir / "fig4_saliency.png",
            probabilities=explained_shown[model_name], **figure, caption=caption_of(fig4),
            title=f"Saliency of the findings ({model_name})")
    fig5 = [m for m in FIG5_METHODS if m in maps] or list(maps)
    if scaled is not None and fig5:
        result["figures"]["fig5"] = plot_saliency_grid(
            figure_inputs, {m: maps[m] for m in fig5},
            out_dir / "fig5_cam_vs_smoothgrad_ig.png",
            probabilities=explained_shown[model_name], **figure, caption=caption_of(fig5),
            title=f"Saliency vs. ground-truth boxes ({model_name})")
    if len(models) > 1:
        compared = [m for m in COMPARE_METHODS if m in maps] or list(maps)
        result["figures"]["models"] = plot_model_comparison(
            figure_inputs, {name: {m: shown[name][m] for m in compared if m in shown[name]}
                            for name in models}, out_dir / "fig_models_side_by_side.png",
            probabilities_by_model=explained_shown, **figure, caption=caption_of(compared),
            title=f"Does distillation change where the model looks? {' vs. '.join(models)}")
    if stride > 1 and sigma:
        few = slice(0, min(3, rows_shown))
        result["figures"]["checkerboard"] = write_checkerboard_figure(
            model, images[few], classes_per_image[few], out_dir / "fig_checkerboard.png",
            stride=stride, sigma=sigma, percentile=percentile, row_titles=titles[few],
            batch_size=batch_size)

    if scaled is not None:
        per_box = _score(scores, scaled, images.shape[1:3], map_threshold)
        summary, comparison, paths = write_localisation_report(
            per_box, out_dir, map_threshold=map_threshold, n_boot=n_boot, seed=seed,
            note=f"Settings: {caption}")
        result["localisation"] = paths
        result["scores"] = [{k: _json_safe(v) for k, v in row.items()}
                            for row in summary.to_dict("records")]
        result["vs_centre"] = [{k: _json_safe(v) for k, v in row.items()}
                               for row in comparison.to_dict("records")]
    if sanity:
        k = max(1, min(int(sanity_images), len(images)))
        section = write_sanity_section(
            model, images[:k], classes_per_image[:k], out_dir,
            methods=list(SANITY_REPORT_METHODS), options=SANITY_OPTIONS, seed=seed,
            max_steps=int(sanity_steps),
            caption=f"{model_name}; {k} image(s); maps: |raw attribution| (no blur).")
        result["sanity"] = section
        if "figure" in section:
            result["figures"]["sanity"] = section["figure"]
    result["examples"] = [{"image": row.path, "finding": row.label,
                           "probability": float(explained[model_name][i]),
                           **({f"probability_{name}": float(p[i])
                               for name, p in explained.items()} if len(models) > 1 else {})}
                          for i, row in enumerate(examples.itertuples())]
    return result
