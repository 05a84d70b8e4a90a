"""Saliency methods against float64 NumPy / GradientTape references and defining properties."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402
from saliency_models import flat_and_nested_models  # noqa: E402

from chestkd.errors import ConfigError, DataError  # noqa: E402
from chestkd.saliency import (CAM, METHODS, GradCAM, GuidedBackprop,  # noqa: E402
                              IntegratedGradients, SmoothGrad, SmoothGradIG, Vanilla,
                              normalise_maps, saliency_map, saliency_method)
from chestkd.saliency.methods.graph import flatten_model  # noqa: E402
from chestkd.saliency.methods.guided_backprop import count_guided, guided_graph  # noqa: E402

SIZE = 16


def images(n=3, size=SIZE, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def smooth_model(num_classes=3, seed=1, output_activation=None):
    """A small CNN with smooth (tanh/softplus) units: IG quadrature converges fast."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(6, 3, padding="same", activation="tanh", name="conv1")(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="softplus", name="conv2")(x)
    x = layers.GlobalAveragePooling2D(name="features_pool")(x)
    outputs = layers.Dense(num_classes, name="logits", activation=output_activation)(x)
    return keras.Model(inputs, outputs)


def tape_gradient(model_logits, x, classes):
    """Reference input gradient of the logit of ``classes[i]`` for each image (float32 TF)."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        scores = tf.gather(model_logits(x), classes, axis=1, batch_dims=1)
    return tape.gradient(scores, x).numpy()


@pytest.fixture(scope="module")
def model():
    return smooth_model()


# ------------------------------------------------------------------------------ vanilla


def test_vanilla_is_input_gradient_of_logit_per_image_class(model):
    x, classes = images(4), np.array([0, 2, 1, 2])
    raw = saliency_map(model, x, classes, "vanilla", raw=True, batch_size=3)
    np.testing.assert_allclose(raw, tape_gradient(model, x, classes), rtol=1e-5, atol=1e-7)
    shown = saliency_map(model, x, classes, "vanilla")
    reference = np.abs(raw).max(axis=-1)
    low = reference.min(axis=(1, 2), keepdims=True)
    high = reference.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(shown, (reference - low) / (high - low), atol=1e-6)


def test_probability_output_is_stripped_to_logits(model):
    """A final softmax (fused or a separate Activation layer) must not enter the score."""
    sigmoid_model = smooth_model(output_activation="softmax")
    sigmoid_model.set_weights(model.get_weights())
    separate = keras.Model(model.inputs, layers.Activation("sigmoid")(model.outputs[0]))
    x = images(2)
    expected = tape_gradient(model, x, np.array([1, 1]))
    for probability_model in (sigmoid_model, separate):
        got = saliency_map(probability_model, x, 1, "vanilla", raw=True)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------- integrated gradients


@pytest.mark.parametrize("baseline", [None, -0.5])
def test_integrated_gradients_completeness(model, baseline):
    x, classes = images(3), np.array([0, 1, 2])
    raw = saliency_map(model, x, classes, "integrated_gradients", raw=True, steps=64,
                       baseline=baseline, batch_size=48)
    base = np.zeros_like(x) if baseline is None else np.full_like(x, baseline)
    logits_x = model.predict(x, verbose=0)[np.arange(3), classes]
    logits_b = model.predict(base, verbose=0)[np.arange(3), classes]
    difference = logits_x - logits_b
    assert np.all(np.abs(difference) > 1e-3)        # the check is not vacuous
    np.testing.assert_allclose(raw.reshape(3, -1).sum(1), difference,
                               rtol=0.05, atol=0.05 * np.abs(difference).max())


def test_integrated_gradients_midpoint_rule_exact(model):
    """IG with m steps = (x - x') * mean_k grad(x' + (k+1/2)/m (x - x')) exactly."""
    x, steps = images(2), 3
    raw = saliency_map(model, x, [2, 0], "integrated_gradients", raw=True, steps=steps,
                       batch_size=4)
    grads = [tape_gradient(model, (k + 0.5) / steps * x, np.array([2, 0])) for k in range(steps)]
    np.testing.assert_allclose(raw, x * np.mean(grads, axis=0), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- smoothgrad


def test_smoothgrad_batched_equals_loop_with_same_noise(model):
    x, classes, samples = images(3), np.array([1, 0, 2]), 5
    noise = np.random.default_rng(7).normal(0, 0.2, (3, samples) + x.shape[1:]).astype("f4")
    method = SmoothGrad(model, samples=samples, batch_size=4)   # batches span images
    batched = method(x, classes, raw=True, noise=noise)
    loop = np.zeros_like(x, dtype=np.float64)
    for i in range(3):
        for j in range(samples):
            loop[i] += tape_gradient(model, x[i:i + 1] + noise[i, j:j + 1], classes[i:i + 1])[0]
    np.testing.assert_allclose(batched, loop / samples, rtol=1e-5, atol=1e-7)


def test_smoothgrad_seed_rule_and_batch_size_independence(model):
    x, samples, level = images(2), 4, 0.1
    a = saliency_map(model, x, 1, "smoothgrad", raw=True, samples=samples, noise_level=level,
                     seed=3, batch_size=1)
    b = saliency_map(model, x, 1, "smoothgrad", raw=True, samples=samples, noise_level=level,
                     seed=3, batch_size=7)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # The documented rule: one generator, standard normals per image, scaled by
    # noise_level * (max - min) of that image.
    rng = np.random.default_rng(3)
    noise = np.stack([rng.standard_normal((samples,) + x.shape[1:], dtype=np.float32)
                      * np.float32(level * (img.max() - img.min())) for img in x])
    explicit = saliency_map(model, x, 1, "smoothgrad", raw=True, samples=samples, noise=noise)
    np.testing.assert_allclose(a, explicit, rtol=1e-5, atol=1e-7)
    other_seed = saliency_map(model, x, 1, "smoothgrad", raw=True, samples=samples,
                              noise_level=level, seed=4)
    assert np.abs(other_seed - a).max() > 1e-4


def test_smoothgrad_ig_is_mean_of_ig_over_noisy_images(model):
    x, classes, samples, steps = images(2), np.array([0, 2]), 3, 4
    noise = np.random.default_rng(1).normal(0, 0.3, (2, samples) + x.shape[1:]).astype("f4")
    batched = SmoothGradIG(model, samples=samples, steps=steps, batch_size=5)(
        x, classes, raw=True, noise=noise)
    ig = IntegratedGradients(model, steps=steps, batch_size=5)
    loop = np.mean([ig(x + noise[:, j], classes, raw=True) for j in range(samples)], axis=0)
    np.testing.assert_allclose(batched, loop, rtol=1e-5, atol=1e-7)


def test_sampling_methods_use_batched_gradient_calls(model, monkeypatch):
    """3 images x 8 samples with batch_size 12 -> 2 gradient calls, not 24."""
    method = SmoothGrad(model, samples=8, batch_size=12)
    calls = []
    original = method.engine._function
    monkeypatch.setattr(method.engine, "_function",
                        lambda *a: calls.append(a[0].shape[0]) or original(*a))
    method(images(3), 0)
    assert calls == [12, 12]


# ------------------------------------------------------------------------ guided backprop


def relu6_dense_model():
    """x -> Dense -> ReLU(6) -> Dense -> Activation(relu) -> Dense(relu) -> Dense logits."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((4, 4, 1))
    x = layers.Flatten()(inputs)
    x = layers.Dense(12, name="d1", kernel_initializer=keras.initializers.RandomNormal(0, 2.0))(x)
    x = layers.ReLU(max_value=6.0, name="relu6")(x)
    x = layers.Dense(10, name="d2")(x)
    x = layers.Activation("relu", name="act")(x)
    x = layers.Dense(8, activation="relu", name="d3")(x)
    outputs = layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs)


def guided_reference(model, x, c):
    """Textbook guided backprop in float64: pass gradient where it and the input are positive."""
    w = {name: [np.asarray(v, np.float64) for v in model.get_layer(name).get_weights()]
         for name in ("d1", "d2", "d3", "logits")}
    v = x.reshape(-1).astype(np.float64)
    p1 = v @ w["d1"][0] + w["d1"][1]
    h1 = np.clip(p1, 0, 6)
    p2 = h1 @ w["d2"][0] + w["d2"][1]
    h2 = np.maximum(p2, 0)
    p3 = h2 @ w["d3"][0] + w["d3"][1]
    h3 = np.maximum(p3, 0)
    g = w["logits"][0][:, c]
    g = g * (g > 0) * (p3 > 0)
    g = w["d3"][0] @ g
    g = g * (g > 0) * (p2 > 0)
    g = w["d2"][0] @ g
    g = g * (g > 0) * (p1 > 0) * (p1 < 6)
    g = w["d1"][0] @ g
    return g.reshape(x.shape), (p1 > 6).any() and (h3 > 0).any()


def test_guided_backprop_matches_textbook_rule_on_relu6_layers():
    model = relu6_dense_model()
    x = np.random.default_rng(2).uniform(-2, 2, (3, 4, 4, 1)).astype(np.float32)
    classes = np.array([0, 1, 2])
    gbp = saliency_map(model, x, classes, "guided_backprop", raw=True)
    vanilla = saliency_map(model, x, classes, "vanilla", raw=True)
    saturated = []
    for i in range(3):
        reference, saturates = guided_reference(model, x[i], classes[i])
        saturated.append(saturates)
        np.testing.assert_allclose(gbp[i], reference, rtol=1e-4, atol=1e-5)
    assert all(saturated)                   # the ReLU6 cap is exercised in every image
    assert np.abs(gbp - vanilla).max() > 0.1 * np.abs(vanilla).max()
    graph = guided_graph(model)
    assert count_guided(graph.model(graph.output)) == 3


def test_guided_backprop_covers_mobilenetv2_relu6_layers():
    """tf-keras-vis's modifier misses standalone ReLU(6) layers; ours replaces all 35."""
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.utils.model_modifiers import GuidedBackpropagation

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), classes=3,
                                           classifier_activation=None)
    graph = guided_graph(model)
    relus = sum(isinstance(layer, layers.ReLU) for layer in model.layers)
    assert relus == 35 and count_guided(graph.model(graph.output)) == relus
    x = images(2, size=32)
    method = GuidedBackprop(model)
    gbp = method(x, 1, raw=True)
    vanilla = Vanilla(model)(x, 1, raw=True)
    assert np.abs(gbp - vanilla).max() > 0.1 * np.abs(vanilla).max()
    third_party = Saliency(model, model_modifier=GuidedBackpropagation())(
        lambda out: out[:, 1], x, gradient_modifier=None, keepdims=True, normalize_map=False)
    np.testing.assert_allclose(third_party, vanilla, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------ CAM


def test_cam_equals_kernel_weighted_feature_maps(model):
    x, classes = images(3), np.array([2, 0, 1])
    raw_small = saliency_map(model, x, classes, "cam", raw=True, upsample=False)
    features = keras.Model(model.inputs, model.get_layer("conv2").output).predict(x, verbose=0)
    kernel, bias = (np.asarray(v, np.float64) for v in model.get_layer("logits").get_weights())
    reference = np.einsum("nhwf,fn->nhw", features.astype(np.float64), kernel[:, classes])
    np.testing.assert_allclose(raw_small, reference, rtol=1e-5, atol=1e-6)
    # GAP linearity: the mean of the map plus the bias is the logit.
    logits = model.predict(x, verbose=0)[np.arange(3), classes]
    np.testing.assert_allclose(raw_small.mean(axis=(1, 2)) + bias[classes], logits, rtol=1e-5)
    # raw=True upsamples bilinearly with half-pixel centres (cv2.INTER_LINEAR).
    raw = saliency_map(model, x, classes, "cam", raw=True)
    for i in range(3):
        expected = cv2.resize(reference[i].astype(np.float32), (SIZE, SIZE),
                              interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(raw[i], expected, rtol=1e-4, atol=1e-5)
    shown = saliency_map(model, x, classes, "cam")
    np.testing.assert_allclose(shown, normalise_maps(np.maximum(raw, 0)), atol=1e-6)


def test_cam_without_pooled_dense_head_is_a_config_error():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    outputs = layers.Dense(2, name="logits")(layers.Flatten(name="flatten")(x))
    with pytest.raises(ConfigError, match="GlobalAveragePooling2D.*flatten"):
        CAM(keras.Model(inputs, outputs))
    head_not_last = keras.Model(inputs, layers.Dense(2)(layers.Dense(4)(
        layers.GlobalAveragePooling2D()(x))))
    with pytest.raises(ConfigError, match="GlobalAveragePooling2D"):
        CAM(head_not_last)


# -------------------------------------------------------------------------------- Grad-CAM


def test_gradcam_on_nested_backbone_matches_tf_keras_vis_on_flat_model():
    from tf_keras_vis.gradcam import Gradcam

    flat, nested = flat_and_nested_models()
    x, classes = images(3), np.array([0, 1, 2])
    method = GradCAM(nested)
    assert method.layer == "backbone/bn"     # the map the classifier pools, not the last Conv
    ours = method(x, classes, raw=True, upsample=False)
    reference = Gradcam(flat)(lambda out: tf.gather(out, classes, axis=1, batch_dims=1), x,
                              penultimate_layer="bn", seek_penultimate_conv_layer=False,
                              activation_modifier=None, expand_cam=False, normalize_cam=False)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6)
    # Through GAP -> Dense, dz/dA_ijf = w_f / (h w): Grad-CAM of the pooled map is CAM / (h w).
    cam = saliency_map(nested, x, classes, "cam", raw=True, upsample=False)
    np.testing.assert_allclose(ours, cam / (ours.shape[1] * ours.shape[2]), rtol=1e-4, atol=1e-6)
    # A layer inside the backbone by name or path; display maps are relu + [0, 1].
    by_name = saliency_map(nested, x, classes, "gradcam", layer="r1", raw=True)
    by_path = saliency_map(nested, x, classes, "gradcam", layer="backbone/r1", raw=True)
    np.testing.assert_allclose(by_name, by_path)
    shown = saliency_map(nested, x, classes, "gradcam")
    np.testing.assert_allclose(
        shown, normalise_maps(np.maximum(method(x, classes, raw=True), 0)), atol=1e-6)
    with pytest.raises(ConfigError, match="'nope' not found"):
        GradCAM(nested, layer="nope")


def test_cam_on_nested_backbone_equals_flat():
    flat, nested = flat_and_nested_models()
    x = images(2)
    np.testing.assert_allclose(saliency_map(nested, x, 1, "cam", raw=True),
                               saliency_map(flat, x, 1, "cam", raw=True), rtol=1e-5, atol=1e-6)


def test_gradcam_default_layer_of_densenet121_is_final_relu():
    keras.utils.set_random_seed(0)
    model = keras.applications.DenseNet121(weights=None, input_shape=(32, 32, 3), classes=2,
                                           classifier_activation=None)
    method = GradCAM(model)
    assert method.layer == "relu"
    # At 32 px the final map is 1 x 1, where Grad-CAM = sum_f w_f A_f = logit - bias.
    x = images(2, size=32)
    raw = method(x, 1, raw=True)
    logits = model.predict(x, verbose=0)[:, 1]
    bias = model.get_layer("predictions").get_weights()[1][1]
    np.testing.assert_allclose(raw, np.broadcast_to((logits - bias)[:, None, None], raw.shape),
                               rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------- input checking


def test_flatten_inlines_nested_layers_and_keeps_outputs():
    _, nested = flat_and_nested_models()
    graph = flatten_model(nested)
    assert [c.path for c in graph.calls] == ["backbone/c1", "backbone/r1", "backbone/c2",
                                             "backbone/bn", "features_pool", "logits"]
    x = images(2)
    np.testing.assert_allclose(graph.model(graph.output)([x]), nested(x), rtol=1e-6)


def test_sequential_models_are_flattened_too(model):
    sequential = keras.Sequential([keras.Input((SIZE, SIZE, 3)),
                                   keras.Sequential([model.get_layer("conv1"),
                                                     model.get_layer("conv2")], name="inner"),
                                   model.get_layer("features_pool"), model.get_layer("logits")])
    graph = flatten_model(sequential)
    assert [c.path for c in graph.calls] == ["inner/conv1", "inner/conv2", "features_pool",
                                             "logits"]
    x = images(2)
    np.testing.assert_allclose(saliency_map(sequential, x, 1, "cam", raw=True),
                               saliency_map(model, x, 1, "cam", raw=True), rtol=1e-5, atol=1e-6)


def test_bad_inputs_name_the_problem(model):
    with pytest.raises(ConfigError, match="unknown saliency method 'lime'"):
        saliency_map(model, images(1), 0, "lime")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['stepz'\]"):
        saliency_map(model, images(1), 0, "integrated_gradients", stepz=3)
    with pytest.raises(ConfigError, match=r"\['noise'\] for saliency method 'vanilla'"):
        saliency_map(model, images(1), 0, "vanilla", noise=np.zeros(3))
    with pytest.raises(ConfigError, match="class_index 3 is out of range .* 3 outputs"):
        saliency_map(model, images(2), [0, 3], "vanilla")
    with pytest.raises(DataError, match=r"shape \(N, 16, 16, 3\)"):
        saliency_map(model, images(1, size=8), 0, "vanilla")
    with pytest.raises(ConfigError, match="unknown channel reduction 'median'"):
        saliency_map(model, images(1), 0, "vanilla", reduce="median")
    with pytest.raises(ConfigError, match="samples must be a positive integer"):
        saliency_method(model, "smoothgrad", samples=0)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['steps'\] for calling"):
        saliency_method(model, "smoothgrad")(images(1), 0, steps=3)
    with pytest.raises(ConfigError, match="noise must have shape"):
        saliency_map(model, images(1), 0, "smoothgrad", samples=2, noise=np.zeros((1, 3)))


def test_every_method_returns_unit_range_maps(model):
    x = images(2)
    options = {"smoothgrad": dict(samples=2), "smoothgrad_ig": dict(samples=2, steps=2),
               "integrated_gradients": dict(steps=4)}
    for name in METHODS:
        maps = saliency_map(model, x, [0, 1], name, **options.get(name, {}))
        assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
        np.testing.assert_allclose(maps.min(axis=(1, 2)), 0, atol=1e-6)
        expected_max = np.ones(2)
        if not METHODS[name].per_channel:      # CAM, Grad-CAM, Grad-CAM++, Score-CAM
            # Display maps keep positive evidence only: no positive part -> an all-zero map.
            raw = saliency_map(model, x, [0, 1], name, raw=True)
            expected_max = (raw.max(axis=(1, 2)) > 0).astype(float)
        np.testing.assert_allclose(maps.max(axis=(1, 2)), expected_max, atol=1e-6)


# ------------------------------------------------------------- chestkd zoo and tf-keras-vis


@pytest.mark.parametrize("name", ["conv3_student", "baseline_cnn"])
def test_zoo_models_default_layer_and_cam(name):
    from chestkd.models import build, default_feature_layer, feature_model

    keras.utils.set_random_seed(0)
    model = build(name, 3, (32, 32, 3))
    assert GradCAM(model).layer == default_feature_layer(model)
    if name == "baseline_cnn":                       # Flatten + Dense head: no CAM
        with pytest.raises(ConfigError, match="GlobalAveragePooling2D"):
            CAM(model)
        return
    x, classes = images(2, size=32), np.array([2, 1])
    features, _ = feature_model(model, [default_feature_layer(model)]).predict(x, verbose=0)
    kernel = np.asarray(model.get_layer("logits").get_weights()[0], np.float64)
    reference = np.einsum("nhwf,fn->nhw", features.astype(np.float64), kernel[:, classes])
    np.testing.assert_allclose(CAM(model)(x, classes, raw=True, upsample=False), reference,
                               rtol=1e-4, atol=1e-5)


def test_smoothgrad_equals_tf_keras_vis_given_its_noise(model):
    """tf-keras-vis draws noise (samples, N, H, W, C) with np.random.normal(0, sigma); ours
    takes the same perturbations as (N, samples, H, W, C) and must give the same mean gradient."""
    from tf_keras_vis.saliency import Saliency

    x, classes, samples, level = images(3), np.array([0, 1, 2]), 4, 0.2
    sigma = level * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
    np.random.seed(11)
    noise = np.random.normal(0.0, sigma[None, :, None, None, None], (samples,) + x.shape)
    np.random.seed(11)
    theirs = Saliency(model)(lambda out: tf.gather(out, classes, axis=1, batch_dims=1), x,
                             smooth_samples=samples, smooth_noise=level, gradient_modifier=None,
                             keepdims=True, normalize_map=False)
    ours = SmoothGrad(model, samples=samples, noise_level=level, batch_size=5)(
        x, classes, raw=True, noise=noise.transpose(1, 0, 2, 3, 4))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
