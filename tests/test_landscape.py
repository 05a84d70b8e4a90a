"""The loss landscape: filter-normalised directions and the grid's centre."""
import keras
import numpy as np
import pytest

from chestkd.errors import ConfigError

from chestkd.robustness.landscape import (filter_normalised_direction, loss_surface,
                                          write_landscape)


def model_with_bn():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(5, 3, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(keras.layers.ReLU()(h))
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="dense")(h))


def data(n=24):
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (n, 6, 6, 3)).astype(np.float32)
    return x, (rng.uniform(size=(n, 3)) < 0.4).astype(np.float32)


def test_directions_have_the_weights_filter_norms_and_skip_biases_and_batch_norm():
    model = model_with_bn()
    direction = filter_normalised_direction(model, seed=0)
    depthwise = model.get_layer("dw").kernel
    for variable, d in zip(model.weights, direction):
        w = np.asarray(variable, np.float64)
        if variable is model.get_layer("conv").kernel or variable is model.get_layer(
                "dense").kernel:
            axes = tuple(range(w.ndim - 1))
            np.testing.assert_allclose(np.linalg.norm(d.reshape(-1, w.shape[-1]), axis=0),
                                       np.linalg.norm(w.reshape(-1, w.shape[-1]), axis=0),
                                       rtol=1e-10)
            assert not np.allclose(d / np.linalg.norm(d), w / np.linalg.norm(w))
            assert axes
        elif variable is depthwise:      # (kh, kw, in, multiplier): a filter per (in, m)
            np.testing.assert_allclose(np.sqrt((d ** 2).sum((0, 1))), np.sqrt((w ** 2).sum((0, 1))),
                                       rtol=1e-10)
        else:   # biases, gamma, beta, moving statistics
            assert w.ndim == 1 and not d.any(), variable.path


def test_the_centre_of_the_grid_is_the_models_loss(tmp_path):
    model = model_with_bn()
    x, y = data()
    before = [np.asarray(w).copy() for w in model.weights]
    summary = write_landscape(model, x, y, tmp_path, multi_label=True, resolution=3, span=0.5)
    z = np.asarray(model(x, training=False), np.float64)
    expected = np.mean(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))), 1))
    assert summary["centre_loss"] == pytest.approx(expected, rel=1e-5)
    surface = np.loadtxt(tmp_path / "landscape.csv", delimiter=",", skiprows=1)
    assert surface.shape == (9, 3) and np.ptp(surface[:, 2]) > 0
    assert (tmp_path / "landscape.png").stat().st_size > 0
    for w, original in zip(model.weights, before):       # the weights are restored
        np.testing.assert_array_equal(np.asarray(w), original)


def test_single_label_surface_uses_the_softmax_loss():
    model = model_with_bn()
    x, _ = data(12)
    y = np.eye(3, dtype=np.float32)[np.arange(12) % 3]
    surface = loss_surface(model, x, y, multi_label=False, resolution=3, span=1.0)
    z = np.asarray(model(x, training=False), np.float64)
    log_p = z - z.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    centre = surface[(surface.alpha == 0) & (surface.beta == 0)].loss.item()
    assert centre == pytest.approx(-(y * log_p).sum(1).mean(), rel=1e-5)
    assert surface.loss.max() > centre
    with pytest.raises(ConfigError, match="resolution"):
        loss_surface(model, x, y, multi_label=False, resolution=1)


@pytest.mark.parametrize("resolution", [2, 4])
def test_an_even_resolution_still_evaluates_the_trained_model(tmp_path, resolution):
    """linspace(-s, s, even) skips 0: the centre and the basin fraction must still be the
    trained model's, not a corner's."""
    model = model_with_bn()
    x, y = data()
    summary = write_landscape(model, x, y, tmp_path, multi_label=True, resolution=resolution,
                              span=0.5)
    z = np.asarray(model(x, training=False), np.float64)
    expected = np.mean(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))), 1))
    assert summary["centre_loss"] == pytest.approx(expected, rel=1e-5)
    surface = np.loadtxt(tmp_path / "landscape.csv", delimiter=",", skiprows=1)
    axis = np.unique(surface[:, 0])
    np.testing.assert_allclose(axis, np.sort(np.append(np.linspace(-0.5, 0.5, resolution), 0)))
    assert surface.shape == ((resolution + 1) ** 2, 3) == (summary["grid_points"], 3)
    losses = surface[:, 2]
    assert summary["basin_fraction_10pct"] == pytest.approx(np.mean(losses <= 1.1 * expected))
    assert summary["min_loss"] == pytest.approx(losses.min())


@pytest.mark.parametrize("option, value", [("--images", "0"), ("--images", "-5"),
                                           ("--resolution", "1"), ("--span", "0"),
                                           ("--clamp", "-1")])
def test_bad_numbers_exit_2_naming_the_option_before_the_run_is_read(tmp_path, capsys,
                                                                     option, value):
    # Regression: --images 0 divided by zero (traceback), --images -5 dropped 5 images.
    from chestkd.robustness.landscape import main
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "no-run"), f"{option}={value}"])
    assert stop.value.code == 2
    assert f"error: {option} {value}" in capsys.readouterr().err
