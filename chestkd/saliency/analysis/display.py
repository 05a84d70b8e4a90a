"""From an attribution array to a map a person can read: sign, scale, smoothing, shifts.

The arrays a method returns (``raw=True``) are the numbers to analyse; what a figure shows goes
through three display steps, each a separate function so analyses can use any of them.

1. **Sign** (:data:`DISPLAY_SIGN`, :func:`signed_to_display`). Gradient methods (vanilla,
   guided backprop, SmoothGrad) show ``|.|`` (the maximum over colour channels): a gradient
   says how sensitive the score is to a pixel, and both signs are equally sensitive (a bright
   or a dark change moves the score), so its sign is not "evidence for". Integrated gradients
   and SmoothGrad-IG show the **positive part** of the channel sum: IG attributions add up to
   ``z(x) - z(baseline)``, so their sign *is* evidence for (+) or against (-) the finding, and
   a figure of "where the finding is" shows the supporting part. CAM, Grad-CAM(++) and
   Score-CAM show the positive part as well (Grad-CAM defines its map with a ReLU; CAM's
   negative values are regions voting against the class).
2. **Scale** (:func:`percentile_normalise`): divide by the 99th percentile of ``|map|`` and clip
   to [0, 1]. Min-max scaling lets a handful of extreme pixels (gradient maps are heavy
   tailed) push everything else to the bottom of the colour map.
3. **Smoothing** (:func:`smooth_maps`, :func:`display_sigma`): an optional Gaussian blur for
   display, off for raw arrays and on in the report's figures (their captions say so).

**The checkerboard.** A network whose stem has stride ``s`` (a stride-2 convolution then a
stride-2 pooling: ``s = 4`` in ResNet, DenseNet and, from 112 px, the 3-conv student) sees the
input only through kernels placed every ``s`` pixels. The input gradient is the sum of the
kernel copies at those places weighted by the back-propagated signal, and pixels covered by
more or heavier kernel taps get systematically larger gradients: a pattern of period ``s``
(Odena et al. 2016 describe the same artefact of transposed convolutions, which is exactly
what a strided convolution's backward pass is). It is a property of the architecture, not of
the image. Two remedies: average the maps over the ``s x s`` input shifts
(:func:`shift_averaged`: every kernel offset once, so the stem's period-``s`` pattern averages
out — later strided stages leave coarser, weaker ones; ``s^2`` times the cost, so for the cheap
methods), or blur with ``sigma = s / 2`` (:func:`display_sigma`), whose
frequency response at period ``s`` is ``exp(-2 pi^2 sigma^2 / s^2) = exp(-pi^2 / 2) < 1 %``
while structure wider than a few strides survives.
"""
from __future__ import annotations

import numpy as np

from chestkd.errors import ConfigError

DEFAULT_PERCENTILE = 99.0
GRADIENT_METHODS = ("vanilla", "guided_backprop", "smoothgrad")
# How a method's attribution becomes a non-negative display map (see the module docs).
DISPLAY_SIGN = {**{m: "abs" for m in GRADIENT_METHODS},
                "integrated_gradients": "positive", "smoothgrad_ig": "positive",
                "cam": "positive", "gradcam": "positive", "gradcam_plus_plus": "positive",
                "scorecam": "positive", "centre": "positive"}
SIGNS = ("abs", "positive")


def signed_to_display(attribution, method: str | None = None, sign: str | None = None):
    """A raw attribution ``(N, H, W, C)`` or map ``(N, H, W)`` as non-negative maps ``(N, H, W)``.

    ``sign`` (default: :data:`DISPLAY_SIGN` of ``method``, else ``abs``): ``abs`` takes
    ``max_c |a_c|``; ``positive`` takes ``max(sum_c a_c, 0)``.
    """
    sign = sign or DISPLAY_SIGN.get(method, "abs")
    if sign not in SIGNS:
        raise ConfigError(f"unknown display sign {sign!r}; choose one of {SIGNS}")
    values = np.asarray(attribution, np.float64)
    if sign == "abs":
        return np.abs(values).max(axis=-1) if values.ndim == 4 else np.abs(values)
    summed = values.sum(axis=-1) if values.ndim == 4 else values
    return np.maximum(summed, 0.0)


def percentile_normalise(maps, percentile: float = DEFAULT_PERCENTILE) -> np.ndarray:
    """Each map divided by the ``percentile`` of its ``|values|``, clipped to [0, 1].

    A map whose percentile is 0 falls back to its maximum ``|value|``; an all-zero map stays 0.
    ``percentile=100`` is the usual divide-by-the-maximum.
    """
    if not 0 < float(percentile) <= 100:
        raise ConfigError(f"percentile must be in (0, 100], got {percentile}")
    maps = np.abs(np.asarray(maps, np.float64))
    flat = maps.reshape(len(maps), -1)
    scale = np.percentile(flat, float(percentile), axis=1)
    scale = np.where(scale > 0, scale, flat.max(axis=1))
    safe = np.where(scale > 0, scale, 1.0)[:, None]
    return np.clip(flat / safe, 0.0, 1.0).reshape(maps.shape).astype(np.float32)


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The sampled, normalised 1-D Gaussian of ``scipy.ndimage.gaussian_filter``.

    Radius ``int(truncate * sigma + 0.5)``; weights ``exp(-k^2 / (2 sigma^2))`` summing to 1.
    """
    if not float(sigma) > 0:
        raise ConfigError(f"smoothing sigma must be > 0, got {sigma}")
    radius = int(float(truncate) * float(sigma) + 0.5)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / float(sigma)) ** 2)
    return kernel / kernel.sum()


def _filter_axis(maps: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    radius = len(kernel) // 2
    pad = [(0, 0)] * maps.ndim
    pad[axis] = (radius, radius)
    # 'symmetric' repeats the edge pixel (d c b a | a b c d): scipy.ndimage's 'reflect' mode.
    padded = np.pad(maps, pad, mode="symmetric")
    out = np.zeros_like(maps)
    length = maps.shape[axis]
    for k, weight in enumerate(kernel):
        out += weight * np.take(padded, np.arange(k, k + length), axis=axis)
    return out


def smooth_maps(maps, sigma: float | None) -> np.ndarray:
    """Gaussian blur of each ``(H, W)`` map (separable; edges reflected); ``None``/0: unchanged."""
    maps = np.asarray(maps, np.float64)
    if not sigma:
        return maps
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    if radius >= min(maps.shape[-2:]):
        raise ConfigError(f"smoothing sigma {sigma} is too large for {maps.shape[-2:]} maps")
    return _filter_axis(_filter_axis(maps, kernel, maps.ndim - 2), kernel, maps.ndim - 1)


def _layer_stride(layer) -> int:
    strides = getattr(layer, "strides", None)
    if strides is None:
        return 1
    strides = (strides,) if np.isscalar(strides) else tuple(strides)
    return int(max(strides)) if strides else 1


def _flat_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _flat_layers(layer)
        else:
            yield layer


def _output_rows(layer) -> int | None:
    try:
        return int(layer.output.shape[1])
    except (AttributeError, TypeError, ValueError, IndexError):
        return None


def stem_stride(model) -> int:
    """Input stride of the model's stem: its first run of strided convolutions / poolings
    (layer order), ending at the next stride-1 convolution.

    The input's rows over the run's output rows; strided layers side by side (a residual
    block's strided convolution and its strided shortcut) stride once, not twice. Without
    shapes: the product of the run's strides."""
    stride, started, last_rows = 1, False, None
    for layer in _flat_layers(model):
        if not hasattr(layer, "strides"):
            continue
        step = _layer_stride(layer)
        if step > 1:
            stride, started = stride * step, True
            last_rows = _output_rows(layer)
        elif started and "Conv" in type(layer).__name__:
            break
    input_rows = model.input_shape[1] if started else None
    if input_rows and last_rows:
        return max(1, int(round(input_rows / last_rows)))
    return stride


def display_sigma(model=None, image_size: int = 224, stride: int | None = None) -> float:
    """Display blur ``sigma = s / 2`` px for stem stride ``s`` (see the module docs), at least
    ``image_size / 224`` px (one pixel at the paper's 224 px)."""
    stride = stem_stride(model) if stride is None else int(stride)
    return float(max(stride / 2.0, float(image_size) / 224.0))


def display_maps(attribution, method: str | None = None, *, percentile=DEFAULT_PERCENTILE,
                 sigma: float | None = None, sign: str | None = None) -> np.ndarray:
    """Sign, optional blur, percentile scale: the maps a figure shows, (N, H, W) in [0, 1]."""
    return percentile_normalise(smooth_maps(signed_to_display(attribution, method, sign), sigma),
                                percentile)


def top_share_mask(saliency, share: float = 0.05) -> np.ndarray:
    """Boolean mask of the ``share`` of pixels with the highest values (ties: row-major order)."""
    if not 0 < float(share) <= 1:
        raise ConfigError(f"contour share must be in (0, 1], got {share}")
    saliency = np.asarray(saliency)
    count = max(1, int(round(float(share) * saliency.size)))
    order = np.argsort(-saliency.ravel(), kind="stable")
    mask = np.zeros(saliency.size, bool)
    mask[order[:count]] = True
    return mask.reshape(saliency.shape)


def shift_averaged(method, images, class_index, shifts: int, **call_options) -> np.ndarray:
    """Raw attribution averaged over the ``shifts x shifts`` input translations.

    Each image is rolled by ``(dy, dx)``, ``0 <= dy, dx < shifts``, explained, and its map rolled
    back; with ``shifts`` = the stem stride the mean no longer has the period-``s`` pattern (the
    kernel grid takes every offset once). The wrap-around strip of width ``< shifts`` at two
    edges is the price. Costs ``shifts^2`` calls of ``method`` (a built SaliencyMethod).
    """
    images = np.asarray(images, np.float32)
    offsets = [(dy, dx) for dy in range(int(shifts)) for dx in range(int(shifts))]
    # One call on all shifted copies: the method batches them (s^2 x N rows, not s^2 calls).
    stacked = np.concatenate([np.roll(images, offset, axis=(1, 2)) for offset in offsets])
    classes = np.asarray(class_index)
    classes = np.tile(np.full(len(images), int(classes)) if classes.ndim == 0 else classes,
                      len(offsets))
    attribution = np.asarray(method(stacked, classes, raw=True, **call_options), np.float64)
    total = np.zeros_like(attribution[:len(images)])
    for k, (dy, dx) in enumerate(offsets):
        total += np.roll(attribution[k * len(images):(k + 1) * len(images)], (-dy, -dx),
                         axis=(1, 2))
    return total / float(len(offsets))
