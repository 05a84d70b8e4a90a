"""Sanity checks for saliency maps (Adebayo et al. 2018, "Sanity checks for saliency maps").

A map that explains a model must change when the model does. Two checks:

* **Model-parameter randomisation, cascading** (their Fig. 2):
  :func:`parameter_randomisation` re-initialises the weighted layers from the top (the
  classifier) down, one more layer per step, and compares each step's map with the trained
  model's: Spearman rank correlation of ``|map|`` and SSIM of the ``|map|`` scaled to [0, 1]
  (99th percentile). Re-initialisation uses each layer's own initialisers (a fresh
  ``keras.models.clone_model``, drawn from a seed stream of its own: see
  :func:`reinitialised_clone`), and everything happens on a copy: the caller's model keeps
  its weights. A method whose maps stay similar when the weights are random is not explaining
  the model; guided backpropagation is the known failure (it reconstructs edges whatever the
  weights are).
* **Label randomisation**: :func:`label_randomisation` trains the same small model on the real
  and on shuffled labels and compares their maps; a map that explains what was learnt differs.

:func:`failing_methods` flags a method whose maps barely change while the top half of the
network is re-initialised: mean Spearman over the cascade steps that randomise at most half of
the weighted layers >= :data:`FAIL_SPEARMAN` (0.9). The top half is where what the model learnt
about the *findings* lives; the lowest layers also shape the image's edges, so re-initialising
them changes even an edge detector's output — which is why the full cascade alone does not
separate guided backprop (which stays at ~0.98 through the top half of a trained ResNet-32)
from the gradient. The threshold is a judgement call; the tables give the values.
"""
from __future__ import annotations

import keras
import numpy as np

from chestkd.errors import ConfigError
from chestkd.saliency.analysis.display import (gaussian_kernel, percentile_normalise,
                                               signed_to_display)
from chestkd.saliency.methods import METHODS, saliency_method

FAIL_SPEARMAN = 0.9
SSIM_SIGMA, SSIM_K1, SSIM_K2 = 1.5, 0.01, 0.03     # Wang et al. 2004


def _rank(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), as scipy.stats.rankdata."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(len(values))
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = 0.5 * (start + end - 1)
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation of two maps (flattened); NaN if either is constant."""
    ra, rb = _rank(np.ravel(a).astype(np.float64)), _rank(np.ravel(b).astype(np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def _gaussian_filter_valid(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    n = len(kernel)
    rows = sum(w * image[k:image.shape[0] - n + 1 + k] for k, w in enumerate(kernel))
    return sum(w * rows[:, k:rows.shape[1] - n + 1 + k] for k, w in enumerate(kernel))


def ssim(a, b, data_range: float = 1.0) -> float:
    """Mean structural similarity of two (H, W) images (Wang et al. 2004).

    Gaussian window sigma 1.5 truncated at 3.5 sigma (11 x 11), K1 = 0.01, K2 = 0.03,
    population (co)variances, mean over the window positions fully inside the image — the
    settings of ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=...)``.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ConfigError(f"ssim needs two (H, W) images of one shape, got {a.shape}, {b.shape}")
    kernel = gaussian_kernel(SSIM_SIGMA, truncate=3.5)
    if len(kernel) > min(a.shape):
        raise ConfigError(f"ssim needs images of at least {len(kernel)} px, got {a.shape}")
    mu_a, mu_b = _gaussian_filter_valid(a, kernel), _gaussian_filter_valid(b, kernel)
    var_a = _gaussian_filter_valid(a * a, kernel) - mu_a ** 2
    var_b = _gaussian_filter_valid(b * b, kernel) - mu_b ** 2
    cov = _gaussian_filter_valid(a * b, kernel) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1)
                                                          * (var_a + var_b + c2))
    return float(index.mean())


def model_copy(model):
    """A new model of the same architecture with the same weights (the original is untouched)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


# Mixed into the cascade's seed: see reinitialised_clone.
REINITIALISATION_STREAM = 0x5A4E17


def reinitialisation_seed(seed: int) -> int:
    """The global seed the cascade's re-initialisation is drawn with, derived from ``seed``."""
    return int(np.random.SeedSequence([int(seed), REINITIALISATION_STREAM]).generate_state(1)[0])


def reinitialised_clone(model, seed: int = 0):
    """A model of ``model``'s architecture whose every layer is freshly drawn from its own
    initialisers (``keras.models.clone_model``).

    The draw is seeded with :func:`reinitialisation_seed` (``seed`` mixed with a constant of
    this module), not with ``seed`` itself: chestkd's training builds its model right after
    ``keras.utils.set_random_seed(seed)``, and a clone drawn after the same call repeats that
    model's initial weights exactly, so the "randomised" layers would be the trained model's
    own starting point — nothing would be randomised in an untrained model, and the maps of a
    trained one would stay close to the trained maps wherever training moved the weights little.
    """
    keras.utils.set_random_seed(reinitialisation_seed(seed))
    return keras.models.clone_model(model)


def weighted_layers(model) -> list:
    """Leaf layers that hold weights, in graph order (nested models are entered)."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.extend(weighted_layers(layer))
        elif layer.weights:
            found.append(layer)
    return found


def cascade_steps(n_layers: int, max_steps: int | None = None) -> list[int]:
    """Numbers of top layers re-initialised per step: 1 ... n, or ``max_steps`` of them spaced
    geometrically (more steps near the top, always 1 and n)."""
    if max_steps is None or n_layers <= max_steps:
        return list(range(1, n_layers + 1))
    if max_steps < 2:
        raise ConfigError(f"max_steps must be >= 2, got {max_steps}")
    return sorted({int(round(k)) for k in np.geomspace(1, n_layers, int(max_steps))})


def _split_options(method: str, options: dict) -> tuple[dict, dict]:
    cls = METHODS[method]
    return ({k: v for k, v in options.items() if k in cls.build_options()},
            {k: v for k, v in options.items() if k in cls.call_options()})


def built_abs_maps(built, method: str, images, class_index, call: dict) -> np.ndarray:
    """``|map|`` (N, H, W) of a built method's raw attribution (channels: max of ``|.|``)."""
    raw = built(images, class_index, raw=True, **call)
    sign = "abs" if np.asarray(raw).ndim == 4 else None
    return np.abs(signed_to_display(raw, method, sign))


def abs_maps(model, images, class_index, method: str, options: dict) -> np.ndarray:
    """``|map|`` (N, H, W) of the raw attribution of ``method`` built for ``model``."""
    build, call = _split_options(method, options)
    return built_abs_maps(saliency_method(model, method, **build), method, images,
                          class_index, call)


def compare_maps(reference: np.ndarray, other: np.ndarray) -> dict:
    """Per-image Spearman of ``|map|`` and SSIM of the [0, 1]-scaled maps, and their means."""
    scaled_a, scaled_b = percentile_normalise(reference), percentile_normalise(other)
    rho = [spearman(a, b) for a, b in zip(reference, other)]
    similarity = [ssim(a, b) for a, b in zip(scaled_a, scaled_b)]
    return {"spearman": float(np.nanmean(rho)), "ssim": float(np.mean(similarity)),
            "spearman_per_image": rho, "ssim_per_image": similarity}


def parameter_randomisation(model, images, class_index, method: str, *, seed: int = 0,
                            max_steps: int | None = None, keep_maps: bool = False,
                            reinitialised=None, **options) -> list[dict]:
    """Cascading randomisation from the top layer down, on a copy of ``model``.

    Args:
        model: the trained keras.Model (left unchanged).
        images: (N, H, W, C) model inputs; class_index: int or one per image.
        method: a saliency method name; ``**options``: its options (samples, steps, ...).
        seed: seed of the re-initialisation (through :func:`reinitialisation_seed`, so it
            never repeats the initialisation of a model built after
            ``keras.utils.set_random_seed(seed)``; this also seeds Python's, NumPy's and
            TensorFlow's global generators).
        reinitialised: a model of the same architecture whose weights are the re-initialised
            values to use (default: :func:`reinitialised_clone` of ``model`` with ``seed``).
        max_steps: at most this many cascade steps (see :func:`cascade_steps`).
        keep_maps: also return each step's ``|map|`` under ``maps`` (and step 0's in entry 0's
            ``reference``).

    Returns:
        one dict per step, top layer first: ``step``, ``layers_randomised``, ``layer`` (the
        lowest layer re-initialised so far), ``spearman``, ``ssim`` (means over images) and
        their per-image lists.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown saliency method {method!r}; choose one of {list(METHODS)}")
    images = np.asarray(images, np.float32)
    working = model_copy(model)
    fresh = reinitialised if reinitialised is not None else reinitialised_clone(model, seed)
    top_down = weighted_layers(working)[::-1]
    fresh_top_down = weighted_layers(fresh)[::-1]
    build, call = _split_options(method, options)
    built = saliency_method(working, method, **build)
    # The method's graph calls the working model's own layers (fused activations through
    # graph.PreActivation), so new weights reach it without re-tracing. Should a method's graph
    # ever hold a variable of its own (a copied layer), rebuild it at every step instead.
    rebuild = not reads_only_model_variables(built, working)
    reference = built_abs_maps(built, method, images, class_index, call)
    entries = []
    done = 0
    for count in cascade_steps(len(top_down), max_steps):
        for layer, new in zip(top_down[done:count], fresh_top_down[done:count]):
            layer.set_weights(new.get_weights())
        done = count
        if rebuild:
            built = saliency_method(working, method, **build)
        maps = built_abs_maps(built, method, images, class_index, call)
        entry = {"step": len(entries) + 1, "layers_randomised": count,
                 "layer": top_down[count - 1].name, **compare_maps(reference, maps)}
        if keep_maps:
            entry["maps"] = maps
            if not entries:
                entry["reference"] = reference
        entries.append(entry)
    return entries


def reads_only_model_variables(built, model) -> bool:
    """True when every variable of ``built``'s graph is one of ``model``'s own variables."""
    own = {id(v) for v in model.weights}
    return all(id(v) in own for v in built.logits_model.weights)


def top_half_spearman(entries: list[dict]) -> float:
    """Mean Spearman over the steps randomising at most half of the layers (>= 1 step)."""
    total = entries[-1]["layers_randomised"]
    top = [e["spearman"] for e in entries if e["layers_randomised"] <= total / 2] or \
        [entries[0]["spearman"]]
    return float(np.nanmean(top))


def failing_methods(results: dict, threshold: float = FAIL_SPEARMAN) -> dict:
    """method -> True when :func:`top_half_spearman` of its cascade is >= ``threshold``."""
    return {method: bool(top_half_spearman(entries) >= threshold)
            for method, entries in results.items() if entries}


def label_randomisation(build_model, images, labels, explain_images, class_index,
                        method, *, epochs: int = 3, seed: int = 0, batch_size: int = 32,
                        learning_rate: float = 1e-3, keep_maps: bool = False,
                        method_options: dict | None = None, **options) -> dict:
    """Maps of a model trained on real labels vs. the same model trained on shuffled labels.

    Args:
        build_model: ``fn() -> keras.Model`` returning logits (called twice, seeded alike).
        images, labels: training inputs (N, H, W, C) and multi-hot labels (N, K).
        explain_images, class_index: what to explain.
        method: a saliency method name, or a list of names (the two models are trained once).
        options: the method's options; ``method_options``: per-method options for a list.

    Returns:
        ``spearman`` and ``ssim`` between the two models' maps (as :func:`compare_maps`) and
        each model's final training loss (``loss_real``, ``loss_shuffled``); with
        ``keep_maps`` also ``maps`` = {"real": ..., "shuffled": ...} (``|map|``, N x H x W).
        For a list of methods: method -> that dict.
    """
    names = [method] if isinstance(method, str) else list(method)
    per_method = {name: {**(method_options or {}).get(name, {}), **options} for name in names}
    labels = np.asarray(labels, np.float32)
    shuffled = labels[np.random.default_rng(seed).permutation(len(labels))]
    explain_images = np.asarray(explain_images, np.float32)
    maps = {name: {} for name in names}
    losses = {}
    for kind, targets in (("real", labels), ("shuffled", shuffled)):
        keras.utils.set_random_seed(int(seed))
        model = build_model()
        model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                      loss=keras.losses.BinaryCrossentropy(from_logits=True))
        history = model.fit(np.asarray(images, np.float32), targets, epochs=int(epochs),
                            batch_size=int(batch_size), verbose=0, shuffle=True)
        losses[kind] = float(history.history["loss"][-1])
        for name in names:
            maps[name][kind] = abs_maps(model, explain_images, class_index, name,
                                        per_method[name])
    results = {}
    for name in names:
        result = compare_maps(maps[name]["real"], maps[name]["shuffled"])
        result.update(loss_real=losses["real"], loss_shuffled=losses["shuffled"])
        if keep_maps:
            result["maps"] = maps[name]
        results[name] = result
    return results[method] if isinstance(method, str) else results
