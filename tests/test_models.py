"""Tests of the model zoo (chestkd.models): values against float64 NumPy references."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from chestkd.errors import ConfigError  # noqa: E402
from chestkd.models.ensemble import features_layer  # noqa: E402
from chestkd.models import (  # noqa: E402
    MIN_INPUT_SIZES,
    RECOMMENDED_INPUT_SIZES,
    available,
    build,
    count_params,
    default_feature_layer,
    feature_model,
)

ALL_MODELS = [
    "mobilenet_v1", "mobilenet_v2", "vgg19", "resnet18", "resnet20", "resnet32", "resnet34",
    "resnet50",
    "resnet152", "densenet121", "inception_v3", "efficientnet_b6", "efficientnet_b7",
    "conv3_student", "baseline_cnn",
]
NUM_CLASSES = 5

# Keras' own np.array(tensor) calls warn under NumPy 2; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
TORCH_MEAN = np.array([0.485, 0.456, 0.406])
TORCH_STD = np.array([0.229, 0.224, 0.225])


def _to_0_255(x):
    return (x.astype(np.float64) + 1.0) * 127.5


def _caffe_reference(x):
    """What keras' caffe-mode ImageNet weights expect, for an RGB image x in [-1, 1]."""
    return _to_0_255(x)[..., ::-1] - CAFFE_MEAN_BGR


def _torch_reference(x):
    return (_to_0_255(x) / 255.0 - TORCH_MEAN) / TORCH_STD


def _gray_and_color_batch(size, seed=0):
    """Row 0: a chest-X-ray-like grey image (same value on 3 channels); row 1: a colour image."""
    rng = np.random.default_rng(seed)
    gray = np.repeat(rng.uniform(-1, 1, (size, size, 1)), 3, axis=-1)
    color = rng.uniform(-1, 1, (size, size, 3))
    return np.stack([gray, color]).astype("float32")


def _assert_cam_identity(model, images):
    """logits == W^T GAP(A) + b with A the default feature map (float64 reference)."""
    feature_map, logits = [np.asarray(t) for t in feature_model(model, [default_feature_layer(model)])(images)]
    kernel, bias = [np.asarray(w, dtype=np.float64) for w in model.get_layer("logits").get_weights()]
    expected = feature_map.astype(np.float64).mean(axis=(1, 2)) @ kernel + bias
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5 * scale)
    return logits


def test_available_and_input_sizes():
    assert available() == sorted(ALL_MODELS)
    assert RECOMMENDED_INPUT_SIZES["inception_v3"] == 299
    assert {n: s for n, s in RECOMMENDED_INPUT_SIZES.items() if n != "inception_v3"} == {
        n: 224 for n in ALL_MODELS if n != "inception_v3"
    }
    assert MIN_INPUT_SIZES["inception_v3"] == 75


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_builds_flat_with_linear_float32_logits(name):
    keras.utils.set_random_seed(0)
    size = MIN_INPUT_SIZES[name]
    model = build(name, NUM_CLASSES, (size, size, 3))
    assert model.name == name
    assert not any(isinstance(layer, keras.Model) for layer in model.layers), "backbone is nested"
    assert model.get_layer("logits").activation is keras.activations.linear
    images = _gray_and_color_batch(size)

    layer_names = {layer.name for layer in model.layers}
    if name == "baseline_cnn":
        assert "features_pool" not in layer_names
        logits = np.asarray(model(images))
    else:
        logits = _assert_cam_identity(model, images)
    assert logits.shape == (2, NUM_CLASSES) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits))
    # No sigmoid/softmax: raw scores leave [0, 1] (a probability output could not).
    assert np.any((logits < 0) | (logits > 1))
    # The feature vector the logits read (each ensemble branch's feature-KD target).
    vector = features_layer(model)
    assert vector == ("fc1_relu" if name == "baseline_cnn" else "features_pool")
    features, again = (np.asarray(t, np.float64) for t in feature_model(model, [vector])(images))
    kernel, bias = (np.asarray(w, np.float64) for w in model.get_layer("logits").get_weights())
    np.testing.assert_allclose(again, features @ kernel + bias, rtol=1e-5,
                               atol=1e-5 * max(1.0, float(np.abs(again).max())))

    # All models take [-1, 1]; backbones pretrained on another range rescale it themselves.
    reference = {"vgg19": _caffe_reference, "resnet50": _caffe_reference,
                 "resnet152": _caffe_reference, "densenet121": _torch_reference,
                 "efficientnet_b6": _to_0_255, "efficientnet_b7": _to_0_255}.get(name)
    if reference is None:
        assert "input_adapter" not in layer_names
        return
    adapted = np.asarray(feature_model(model, ["input_adapter"])(images)[0], dtype=np.float64)
    if reference is _caffe_reference:
        # Exact on grey images; colour channels are not reordered to BGR (documented).
        np.testing.assert_allclose(adapted[0], reference(images[:1])[0], atol=1e-4)
        np.testing.assert_allclose(adapted[1], reference(images[1:, ..., ::-1])[0], atol=1e-4)
        gray_keras = keras.applications.vgg19.preprocess_input(_to_0_255(images[:1]).copy())
        np.testing.assert_allclose(adapted[0], gray_keras[0], atol=1e-4)
    else:
        np.testing.assert_allclose(adapted, reference(images), rtol=1e-6, atol=1e-4)


def test_adapter_averages_channel_statistics_for_one_channel_input():
    model = build("vgg19", 2, (32, 32, 1))
    images = np.random.default_rng(1).uniform(-1, 1, (1, 32, 32, 1)).astype("float32")
    adapted = np.asarray(feature_model(model, ["input_adapter"])(images)[0], dtype=np.float64)
    np.testing.assert_allclose(adapted, _to_0_255(images) - CAFFE_MEAN_BGR.mean(), atol=1e-4)


def test_resnet32_is_the_cifar_6n_plus_2_network():
    model = build("resnet32", 10, (32, 32, 3))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert (len(convs), len(dense)) == (31, 1)  # 6n + 2 = 32 weight layers, n = 5
    assert [c.filters for c in convs] == [16] + [16] * 10 + [32] * 10 + [64] * 10
    assert all(c.kernel_size == (3, 3) for c in convs)
    # Parameter-free (option A) shortcuts: conv 3x3 kernels, BN gamma/beta, dense W and b.
    widths = [(3, 16)] + [(16, 16)] * 10 + [(16, 32)] + [(32, 32)] * 9 + [(32, 64)] + [(64, 64)] * 9
    conv_params = sum(9 * c_in * c_out for c_in, c_out in widths)
    bn_channels = sum(c_out for _, c_out in widths)
    expected_trainable = conv_params + 2 * bn_channels + 64 * 10 + 10
    assert count_params(model, trainable_only=True) == expected_trainable
    assert round(expected_trainable / 1e6, 2) == 0.46  # He et al. 2016, Table 6: 0.46M
    assert count_params(model) == expected_trainable + 2 * bn_channels  # + BN moving mean/var
    assert model.get_layer(default_feature_layer(model)).output.shape[1:] == (8, 8, 64)


def test_resnet20_is_the_cifar_network_with_three_blocks_per_stage():
    model = build("resnet20", 10, (32, 32, 3))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 19  # 6n + 2 = 20 weight layers with the dense one, n = 3
    assert [c.filters for c in convs] == [16] + [16] * 6 + [32] * 6 + [64] * 6
    widths = [(3, 16)] + [(16, 16)] * 6 + [(16, 32)] + [(32, 32)] * 5 + [(32, 64)] + [(64, 64)] * 5
    trainable = (sum(9 * c_in * c_out for c_in, c_out in widths)
                 + 2 * sum(c_out for _, c_out in widths) + 64 * 10 + 10)
    assert count_params(model, trainable_only=True) == trainable
    assert round(trainable / 1e6, 2) == 0.27  # He et al. 2016, Table 6: 0.27M
    assert model.get_layer(default_feature_layer(model)).output.shape[1:] == (8, 8, 64)
    # 128 px, the main job's phantom: the stem downsamples 4x, as resnet32's does
    large = build("resnet20", 14, (128, 128, 1))
    assert large.get_layer(default_feature_layer(large)).output.shape[1:] == (8, 8, 64)


def test_small_networks_downsample_early_on_large_inputs():
    # 224 px: resnet32 stem stride 2 + max-pool -> 56 -> 56/28/14; CIFAR size: 32/16/8.
    for name, size, expected in [("resnet32", 224, (14, 14, 64)), ("resnet32", 64, (16, 16, 64)),
                                 ("conv3_student", 224, (28, 28, 128)),
                                 ("conv3_student", 32, (8, 8, 128)),
                                 ("baseline_cnn", 224, (14, 14, 64)),
                                 ("baseline_cnn", 32, (8, 8, 64))]:
        model = build(name, 3, (size, size, 3))
        assert model.get_layer(default_feature_layer(model)).output.shape[1:] == expected, name
    assert count_params(build("resnet32", 10, (224, 224, 3))) == count_params(
        build("resnet32", 10, (32, 32, 3)))


@pytest.mark.parametrize("name, main_path_convs, torchvision_params",
                         [("resnet18", 17, 11_689_512), ("resnet34", 33, 21_797_672)])
def test_basic_block_resnets_match_torchvision(name, main_path_convs, torchvision_params):
    model = build(name, 1000, (64, 64, 3))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    projections = [c for c in convs if c.name.endswith("_0_conv")]
    assert len(convs) - len(projections) == main_path_convs  # + 1 dense = 18 / 34 layers
    assert len(projections) == 3 and all(c.kernel_size == (1, 1) for c in projections)
    assert count_params(model, trainable_only=True) == torchvision_params
    assert model.get_layer(default_feature_layer(model)).output.shape[1:] == (2, 2, 512)


def test_conv3_student_layers():
    model = build("conv3_student", 3, (32, 32, 3))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.kernel_size, c.strides) for c in convs] == [
        (64, (5, 5), (1, 1)), (64, (3, 3), (1, 1)), (128, (3, 3), (1, 1))]
    assert [type(layer).__name__ for layer in model.layers[-2:]] == ["GlobalAveragePooling2D", "Dense"]
    assert default_feature_layer(model) == "conv3_relu"
    assert build("conv3_student", 3, (224, 224, 3)).get_layer("conv1").strides == (2, 2)


def test_baseline_cnn_flatten_dense_head_reference():
    keras.utils.set_random_seed(3)
    model = build("baseline_cnn", 4, (32, 32, 3))
    assert default_feature_layer(model) == "conv2_pool"
    images = _gray_and_color_batch(32, seed=3)
    feature_map, logits = [np.asarray(t, dtype=np.float64)
                           for t in feature_model(model, ["conv2_pool"])(images)]
    w1, b1 = [np.asarray(w, np.float64) for w in model.get_layer("fc1").get_weights()]
    w2, b2 = [np.asarray(w, np.float64) for w in model.get_layer("logits").get_weights()]
    hidden = np.maximum(feature_map.reshape(2, -1) @ w1 + b1, 0.0)  # dropout is off at inference
    np.testing.assert_allclose(logits, hidden @ w2 + b2, rtol=1e-5, atol=1e-5)
    # Training mode drops half the hidden units: outputs change.
    assert not np.allclose(np.asarray(model(images, training=True)), logits, atol=1e-6)


def test_feature_model_outputs_and_errors():
    keras.utils.set_random_seed(4)
    model = build("conv3_student", 3, (32, 32, 3))
    images = _gray_and_color_batch(32, seed=4)
    conv1, conv3, logits = [np.asarray(t) for t in feature_model(model, ["conv1", "conv3_relu"])(images)]
    assert conv1.shape == (2, 32, 32, 64) and conv3.shape == (2, 8, 8, 128)
    np.testing.assert_array_equal(logits, np.asarray(model(images)))
    assert conv3.min() >= 0.0 and conv1.min() < 0.0  # after / before ReLU
    single = feature_model(model, "conv3_relu")(images)
    np.testing.assert_array_equal(np.asarray(single[0]), conv3)
    with pytest.raises(ConfigError, match=r"no layer named 'conv9'.*conv3_relu"):
        feature_model(model, ["conv9"])


def test_inception_layer_names_are_deterministic_and_fresh_session_like():
    first = [layer.name for layer in build("inception_v3", 2, (75, 75, 3)).layers]
    second = [layer.name for layer in build("inception_v3", 2, (75, 75, 3)).layers]
    assert first == second
    convs = {n for n in first if n.startswith("conv2d")}
    assert convs == {"conv2d"} | {f"conv2d_{i}" for i in range(1, 94)}  # InceptionV3 has 94 convs


def test_logits_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build("conv3_student", 3, (32, 32, 3))
        assert model.get_layer("conv1").compute_dtype == "float16"
        outputs = model(_gray_and_color_batch(32))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert outputs.dtype == "float32"


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_weights_file_reproduces_outputs_exactly(tmp_path, suffix):
    keras.utils.set_random_seed(5)
    images = _gray_and_color_batch(32, seed=5)
    trained = build("resnet32", 3, (32, 32, 3))
    path = tmp_path / f"student{suffix}"
    trained.save_weights(path) if suffix == ".weights.h5" else trained.save(path)
    fresh = build("resnet32", 3, (32, 32, 3))
    assert not np.allclose(np.asarray(fresh(images)), np.asarray(trained(images)))
    loaded = build("resnet32", 3, (32, 32, 3), weights=path)
    np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(trained(images)))
    loaded_str = build("resnet32", 3, (32, 32, 3), weights=str(path))
    np.testing.assert_array_equal(np.asarray(loaded_str(images)), np.asarray(trained(images)))


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_weights_file_shape_mismatch_names_the_file(tmp_path, suffix):
    path = tmp_path / f"ten_classes{suffix}"
    source = build("conv3_student", 10, (32, 32, 3))
    source.save_weights(path) if suffix == ".weights.h5" else source.save(path)
    with pytest.raises(ConfigError, match=str(path).replace(".", r"\.")):
        build("conv3_student", 3, (32, 32, 3), weights=path)


def test_keras_file_of_other_architecture_is_rejected(tmp_path):
    path = tmp_path / "student.keras"
    build("conv3_student", 3, (32, 32, 3)).save(path)
    with pytest.raises(ConfigError, match=r"student\.keras has no layer named .*architecture"):
        build("resnet32", 3, (32, 32, 3), weights=path)


@pytest.mark.parametrize("name", ["resnet18", "resnet32", "resnet34", "conv3_student", "baseline_cnn"])
def test_imagenet_on_model_without_imagenet_weights(name):
    with pytest.raises(ConfigError, match=rf"'{name}' has no ImageNet weights.*weights=None"):
        build(name, 3, (32, 32, 3), weights="imagenet")


def test_imagenet_download_failure_is_a_config_error(monkeypatch):
    import keras.src.utils.file_utils as file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(ConfigError, match=r"ImageNet weights for model 'mobilenet_v2'.*weights=None") as info:
        build("mobilenet_v2", 3, (32, 32, 3), weights="imagenet")
    assert "URL fetch failure" in str(info.value.__cause__)


def test_imagenet_needs_three_channels():
    with pytest.raises(ConfigError, match=r"'vgg19' need 3 input channels.*1 channel"):
        build("vgg19", 3, (32, 32, 1), weights="imagenet")


def test_invalid_options_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        build("resnet9000", 3)
    assert "Unknown model 'resnet9000'" in str(info.value)
    assert all(name in str(info.value) for name in ALL_MODELS)
    with pytest.raises(ConfigError, match=r"'inception_v3' needs inputs of at least 75x75"):
        build("inception_v3", 3, (64, 64, 3))
    with pytest.raises(ConfigError, match=r"'efficientnet_b6' needs inputs of at least 32x32"):
        build("efficientnet_b6", 3, (16, 16, 3))
    with pytest.raises(ConfigError, match=r"input_shape=\(32, 32\)"):
        build("resnet18", 3, (32, 32))
    with pytest.raises(ConfigError, match=r"num_classes=0"):
        build("resnet18", 0, (32, 32, 3))
    with pytest.raises(ConfigError, match=r"must end with \.weights\.h5 or \.keras"):
        build("resnet18", 3, (32, 32, 3), weights="model.h5")
    with pytest.raises(ConfigError, match=r"missing\.weights\.h5 .* does not exist"):
        build("resnet18", 3, (32, 32, 3), weights=tmp_path / "missing.weights.h5")


def test_keras_file_of_a_deeper_architecture_is_rejected(tmp_path):
    # Regression: a ResNet-32 file loaded into a ResNet-20 by layer name, its extra blocks
    # dropped without a word (the logits differed from the source's by 140).
    path = tmp_path / "deeper.keras"
    build("resnet32", 3, (32, 32, 3)).save(path)
    with pytest.raises(ConfigError, match=r"deeper\.keras holds layer\(s\) .* that model "
                                          r"'resnet20' lacks.*'resnet32'"):
        build("resnet20", 3, (32, 32, 3), weights=path)
