"""Display normalisation, smoothing, contours and the checkerboard of strided stems."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import layers  # noqa: E402
from scipy import ndimage  # noqa: E402

from chestkd.errors import ConfigError  # noqa: E402
from chestkd.saliency import saliency_method  # noqa: E402
from chestkd.saliency.analysis.display import (display_maps, display_sigma,  # noqa: E402
                                               gaussian_kernel, percentile_normalise,
                                               shift_averaged, signed_to_display, smooth_maps,
                                               stem_stride, top_share_mask)
from chestkd.saliency.report.figures import overlay_rgba, plot_model_comparison  # noqa: E402


def test_percentile_normalisation_matches_numpy():
    rng = np.random.default_rng(0)
    maps = rng.standard_t(2, (3, 20, 24))                 # heavy tails, both signs
    expected = np.stack([np.clip(np.abs(m) / np.percentile(np.abs(m), 99), 0, 1) for m in maps])
    np.testing.assert_allclose(percentile_normalise(maps), expected, rtol=1e-6, atol=1e-7)
    # The 99th percentile, not the maximum, sets the scale: ~1 % of pixels saturate.
    assert 0.005 < (percentile_normalise(maps) == 1).mean() < 0.02
    np.testing.assert_allclose(percentile_normalise(maps, 100),
                               np.abs(maps) / np.abs(maps).max(axis=(1, 2), keepdims=True),
                               rtol=1e-6)
    sparse = np.zeros((2, 10, 10))
    sparse[0, 3, 3] = 5.0                                 # 99th percentile 0 -> the maximum
    out = percentile_normalise(sparse)
    assert out[0, 3, 3] == 1.0 and out[0].sum() == 1.0 and not out[1].any()
    with pytest.raises(ConfigError, match="percentile"):
        percentile_normalise(maps, 0)


def test_sign_per_method():
    attribution = np.zeros((1, 2, 2, 3))
    attribution[0, 0, 0] = [-3.0, 1.0, 1.0]               # sum -1, max |.| 3
    attribution[0, 1, 1] = [0.5, 0.5, 1.0]                # sum 2
    grad = signed_to_display(attribution, "vanilla")
    ig = signed_to_display(attribution, "smoothgrad_ig")
    assert grad[0, 0, 0] == 3.0 and grad[0, 1, 1] == 1.0
    assert ig[0, 0, 0] == 0.0 and ig[0, 1, 1] == 2.0      # evidence against -> not shown
    cam = signed_to_display(np.array([[[-1.0, 2.0]]]), "gradcam")
    assert cam.tolist() == [[[0.0, 2.0]]]


@pytest.mark.parametrize("sigma", [0.7, 1.5, 2.0, 3.2])
def test_smoothing_kernel(sigma):
    kernel = gaussian_kernel(sigma)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    assert len(kernel) == 2 * int(4 * sigma + 0.5) + 1
    offsets = np.arange(len(kernel)) - len(kernel) // 2
    np.testing.assert_allclose(kernel, kernel[::-1])
    if sigma >= 1:                                         # sampled variance = sigma^2
        assert (kernel * offsets ** 2).sum() == pytest.approx(sigma ** 2, rel=1e-3)
    impulse = np.zeros((1, 31, 31))
    impulse[0, 15, 15] = 1.0
    np.testing.assert_allclose(smooth_maps(impulse, sigma)[0],
                               ndimage.gaussian_filter(impulse[0], sigma), atol=1e-12)
    corner = np.zeros((1, 31, 31))
    corner[0, 1, 0] = 1.0                                  # reflection at the edges
    np.testing.assert_allclose(smooth_maps(corner, sigma)[0],
                               ndimage.gaussian_filter(corner[0], sigma, mode="reflect"),
                               atol=1e-12)


def test_smoothing_off_and_errors():
    maps = np.random.default_rng(1).random((2, 8, 8))
    assert np.array_equal(smooth_maps(maps, None), maps)
    with pytest.raises(ConfigError, match="too large"):
        smooth_maps(maps, 5.0)
    out = display_maps(maps[..., None], "vanilla", sigma=1.0)
    assert out.shape == (2, 8, 8) and out.min() >= 0 and out.max() == 1.0


@pytest.mark.parametrize("share", [0.05, 0.2])
def test_contour_share(share):
    saliency = np.random.default_rng(2).random((40, 50))
    mask = top_share_mask(saliency, share)
    assert mask.sum() == round(share * saliency.size)
    assert saliency[mask].min() > saliency[~mask].max()
    tied = np.zeros((10, 10))                              # ties: still exactly the share
    assert top_share_mask(tied, share).sum() == round(share * 100)


def test_overlay_opacity_follows_saliency():
    rgba = overlay_rgba(np.array([[0.0, 0.5, 1.0]]), max_alpha=0.8)
    np.testing.assert_allclose(rgba[0, :, 3], [0.0, 0.4, 0.8])


def strided_stem_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 1))
    stem = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")
    x = layers.MaxPooling2D(2)(stem(inputs))
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    model = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))
    # Smooth positive stem kernels, as trained first layers often are (blob detectors): the
    # overlap pattern of a stride-2 3 x 3 kernel then shows as a checkerboard.
    kernel = np.random.default_rng(0).uniform(0.5, 1.0, (3, 3, 1, 4)).astype(np.float32)
    stem.set_weights([kernel, np.zeros(4, np.float32)])
    return model


def period_power(maps: np.ndarray, period: int) -> float:
    """Share of the map's (mean-removed) spectral power at the stem's period."""
    spectrum = np.abs(np.fft.fft2(maps - maps.mean(axis=(1, 2), keepdims=True))) ** 2
    n = maps.shape[1]
    k = n // period
    grid = spectrum[:, ::k, ::k].sum() - spectrum[:, 0, 0].sum()
    return float(grid / spectrum.sum())


def test_stem_stride_and_checkerboard_reduction():
    model = strided_stem_model()
    assert stem_stride(model) == 4 and display_sigma(model, 16) == 2.0
    images = np.random.default_rng(3).uniform(-1, 1, (3, 16, 16, 1)).astype(np.float32)
    vanilla = saliency_method(model, "vanilla")
    raw = signed_to_display(vanilla(images, 0, raw=True), "vanilla")
    averaged = signed_to_display(shift_averaged(vanilla, images, 0, shifts=4), "vanilla")
    smoothed = smooth_maps(raw, display_sigma(model, 16))
    # The stride-2 convolution's overlap pattern lives at period 2 (3 of 256 frequencies: a
    # share of ~0.012 for white noise).
    before = period_power(raw, 2)
    assert before > 0.04                                    # the checkerboard is there
    assert period_power(averaged, 2) < 0.1 * before         # shifts remove it
    assert period_power(smoothed, 2) < 0.1 * before         # so does sigma = s / 2


def test_model_comparison_figure(tmp_path):
    rng = np.random.default_rng(4)
    maps = {"base": {"vanilla": rng.random((2, 16, 16)), "cam": rng.random((2, 16, 16))},
            "self-trained": {"vanilla": rng.random((2, 16, 16)), "cam": rng.random((2, 16, 16))}}
    path = plot_model_comparison(rng.uniform(-1, 1, (2, 16, 16, 3)), maps, tmp_path / "c.png",
                                 probabilities_by_model={"base": [0.1, 0.2],
                                                         "self-trained": [0.3, 0.4]},
                                 boxes=[[(2, 2, 5, 5)], []], caption="caption")
    assert os.path.getsize(path) > 5000


def test_the_stem_stride_counts_side_by_side_strided_layers_once():
    # Regression: below 112 px ResNet-20's stem has stride 1, and its first strided block
    # lists a strided convolution and a strided shortcut one after the other: 2 x 2 = 4,
    # though both turn 32 rows into 16 (stride 2), so the display blur and captions doubled.
    from chestkd.models import build
    assert stem_stride(build("resnet20", 2, (32, 32, 3))) == 2
    assert stem_stride(build("resnet20", 2, (128, 128, 3))) == 4
