"""The sanity-check section of the saliency report: a table, a figure, a verdict per method.

:func:`write_sanity_section` runs
:func:`chestkd.saliency.analysis.sanity.parameter_randomisation` for each method on a few
images and writes

* ``sanity.csv`` / ``sanity.md`` — Spearman (of ``|map|``) and SSIM per cascade step and method,
  and per method ``passes`` / ``FAILS`` (:func:`chestkd.saliency.analysis.sanity.failing_methods`);
* ``sanity_cascade.png`` — Spearman and SSIM against the number of re-initialised layers
  (Adebayo et al. 2018, Fig. 2), and the first image's maps at a few steps.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from chestkd.errors import ChestKDError
from chestkd.saliency.analysis.display import percentile_normalise
from chestkd.saliency.analysis.sanity import (FAIL_SPEARMAN, failing_methods,
                                              parameter_randomisation, top_half_spearman)
from chestkd.saliency.report.figures import METHOD_TITLES, display_image

SANITY_METHODS = ("vanilla", "guided_backprop", "integrated_gradients", "smoothgrad", "gradcam")


def plot_cascade(results: dict, image, path, caption: str = "") -> str:
    """Curves of Spearman and SSIM per method, then one row of maps per method."""
    methods = list(results)
    shown_steps = sorted({0, *[len(e) // 2 for e in results.values()],
                          *[len(e) for e in results.values()]})[:4]
    cols = max(2, 1 + len(shown_steps))
    figure = Figure(figsize=(2.2 * cols + 1, 2.6 + 1.9 * len(methods)), layout="constrained")
    grid = figure.add_gridspec(1 + len(methods), cols, height_ratios=[1.4] + [1] * len(methods))
    for k, metric in enumerate(("spearman", "ssim")):
        ax = figure.add_subplot(grid[0, k * cols // 2:(k + 1) * cols // 2])
        for method, entries in results.items():
            ax.plot([0] + [e["layers_randomised"] for e in entries],
                    [1.0] + [e[metric] for e in entries], marker="o", markersize=3,
                    label=METHOD_TITLES.get(method, method))
        ax.set_xlabel("layers re-initialised (from the top)", fontsize=7)
        ax.set_ylabel("Spearman of |map|" if metric == "spearman" else "SSIM", fontsize=7)
        ax.set_ylim(-0.5, 1.05)
        ax.tick_params(labelsize=6)
        if metric == "spearman":
            ax.axhline(FAIL_SPEARMAN, color="grey", linestyle=":", linewidth=0.8)
            ax.legend(fontsize=6)
    grey = display_image(image)
    for row, (method, entries) in enumerate(results.items(), start=1):
        maps = [entries[0]["reference"][0]] + [entries[s - 1]["maps"][0]
                                              for s in shown_steps if s > 0]
        labels = ["trained"] + [f"top {entries[s - 1]['layers_randomised']} random"
                                for s in shown_steps if s > 0]
        for col, (m, label) in enumerate(zip(maps, labels)):
            ax = figure.add_subplot(grid[row, col])
            ax.imshow(grey, cmap="gray")
            ax.imshow(percentile_normalise(m[None])[0], cmap="inferno", alpha=0.7, vmin=0,
                      vmax=1)
            ax.set_title(f"{METHOD_TITLES.get(method, method)}: {label}", fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
    if caption:
        figure.supxlabel(caption, fontsize=6.5, wrap=True)
    path = Path(path)
    figure.savefig(path, dpi=100)
    return str(path)


def write_sanity_section(model, images, classes, out_dir, *, methods=SANITY_METHODS,
                         options: dict | None = None, max_steps: int = 6, seed: int = 0,
                         caption: str = "") -> dict:
    """Run the cascade for ``methods`` and write the table and figure into ``out_dir``.

    Returns:
        ``{"table": csv path, "markdown": md path, "figure": png path, "verdicts":
        {method: "passes"|"FAILS"}, "skipped": {method: reason}}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    options = options or {}
    results, skipped = {}, {}
    for method in methods:
        try:
            results[method] = parameter_randomisation(model, images, classes, method, seed=seed,
                                                      max_steps=max_steps, keep_maps=True,
                                                      **options.get(method, {}))
        except ChestKDError as error:        # e.g. Grad-CAM on a model without conv features
            skipped[method] = str(error)
    fails = failing_methods(results)
    verdicts = {m: "FAILS" if failed else "passes" for m, failed in fails.items()}
    rows = [{"method": method, "step": e["step"], "layers_randomised": e["layers_randomised"],
             "lowest_layer": e["layer"], "spearman": e["spearman"], "ssim": e["ssim"]}
            for method, entries in results.items() for e in entries]
    table = pd.DataFrame(rows)
    paths = {"table": out_dir / "sanity.csv", "markdown": out_dir / "sanity.md"}
    table.to_csv(paths["table"], index=False)
    lines = ["# Sanity check: cascading model-parameter randomisation", "",
             f"{len(images)} image(s); layers re-initialised from the top with their own "
             "initialisers (Adebayo et al. 2018), drawn from a seed stream of the check's own "
             "(never the training's initial weights). A method FAILS when the mean Spearman "
             "correlation of |map| over the steps that re-initialise the top half of the layers "
             f"is still >= {FAIL_SPEARMAN}: its maps barely depend on what the model learnt.", "",
             "| method | top layer random: Spearman | SSIM | top half random: mean Spearman | "
             "all layers random: Spearman | SSIM | verdict |", "|---|---|---|---|---|---|---|"]
    for method, entries in results.items():
        first, last = entries[0], entries[-1]
        lines.append(f"| {method} | {first['spearman']:.3f} | {first['ssim']:.3f} | "
                     f"{top_half_spearman(entries):.3f} | {last['spearman']:.3f} | "
                     f"{last['ssim']:.3f} | {verdicts[method]} |")
    for method, reason in skipped.items():
        lines.append(f"| {method} | skipped: {reason} | | | | | |")
    lines += ["", "Per step:", "", "| method | layers random | lowest layer | Spearman | SSIM |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['layers_randomised']} | {r['lowest_layer']} | "
              f"{r['spearman']:.3f} | {r['ssim']:.3f} |" for r in rows]
    paths["markdown"].write_text("\n".join(lines) + "\n")
    result = {k: str(v) for k, v in paths.items()}
    if results:
        result["figure"] = plot_cascade(results, np.asarray(images)[0],
                                        out_dir / "sanity_cascade.png", caption)
    result.update(verdicts=verdicts, skipped=skipped)
    return result
