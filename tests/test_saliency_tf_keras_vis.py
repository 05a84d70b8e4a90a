"""Grad-CAM++ and Score-CAM against tf-keras-vis's own output on a flat model."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402
from saliency_models import flat_and_nested_models  # noqa: E402

from chestkd.errors import ConfigError  # noqa: E402
from chestkd.saliency import (METHODS, GradCAMPlusPlus, ScoreCAM,  # noqa: E402
                              normalise_maps, saliency_map, saliency_method)

SIZE = 16


def images(n=3, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)


def per_image_class(classes):
    return lambda out: tf.gather(out, classes, axis=1, batch_dims=1)


def reference_gradcam_plus_plus(flat, x, classes):
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    return GradcamPlusPlus(flat)(per_image_class(classes), x, penultimate_layer="bn",
                                 seek_penultimate_conv_layer=False, expand_cam=False,
                                 normalize_cam=False)


def reference_scorecam(model, x, classes, layer="bn", max_n=None):
    from tf_keras_vis.scorecam import Scorecam
    return Scorecam(model)(per_image_class(classes), x, penultimate_layer=layer,
                           seek_penultimate_conv_layer=False, max_N=max_n, expand_cam=False,
                           normalize_cam=False)


def test_registered_as_saliency_methods():
    assert METHODS["gradcam_plus_plus"] is GradCAMPlusPlus
    assert METHODS["scorecam"] is ScoreCAM


# ------------------------------------------------------------------------------ Grad-CAM++


@pytest.mark.parametrize("activation", [None, "sigmoid"])
def test_gradcam_plus_plus_on_nested_backbone_matches_tf_keras_vis_on_flat(activation):
    flat, nested = flat_and_nested_models(activation)
    x, classes = images(3), np.array([0, 1, 2])
    method = GradCAMPlusPlus(nested)
    assert method.layer == "backbone/bn"       # the map the classifier pools, as Grad-CAM
    ours = method(x, classes, raw=True, upsample=False)
    reference = reference_gradcam_plus_plus(flat, x, classes)   # scores exp(logit)
    logits = flat.predict(x, verbose=0)[np.arange(3), classes]
    # Ours scores with exp(logit) = 1: the same maps divided by exp(z_c) (module doc).
    np.testing.assert_allclose(ours * np.exp(logits)[:, None, None], reference,
                               rtol=1e-4, atol=1e-6)
    shown = saliency_map(nested, x, classes, "gradcam_plus_plus")
    np.testing.assert_allclose(shown, normalise_maps(method(x, classes, raw=True)), atol=1e-6)
    assert shown.shape == (3, SIZE, SIZE) and shown.min() >= 0 and shown.max() <= 1


def test_gradcam_plus_plus_layer_by_name_or_path_and_batching():
    _, nested = flat_and_nested_models()
    x = images(5)
    by_name = saliency_map(nested, x, 1, "gradcam_plus_plus", layer="r1", raw=True)
    by_path = saliency_map(nested, x, 1, "gradcam_plus_plus", layer="backbone/r1", raw=True,
                           batch_size=2)
    np.testing.assert_allclose(by_name, by_path, rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="'nope' not found"):
        GradCAMPlusPlus(nested, layer="nope")
    with pytest.raises(ConfigError, match="Grad-CAM\\+\\+ layer 'features_pool'.*4-D"):
        GradCAMPlusPlus(nested, layer="features_pool")


# ------------------------------------------------------------------------------- Score-CAM


def test_scorecam_softmax_on_nested_backbone_matches_tf_keras_vis_on_flat():
    flat, nested = flat_and_nested_models("softmax")
    x, classes = images(3), np.array([2, 0, 1])
    method = ScoreCAM(nested)
    assert method.layer == "backbone/bn" and method.probability == "softmax"
    ours = method(x, classes, raw=True, upsample=False)
    np.testing.assert_allclose(ours, reference_scorecam(flat, x, classes), rtol=1e-4, atol=1e-6)
    # Faster Score-CAM: each image's own top maps (tf-keras-vis per image gives the same).
    fast = saliency_map(nested, x, classes, "scorecam", max_maps=3, raw=True, upsample=False)
    for i in range(3):
        np.testing.assert_allclose(fast[i], reference_scorecam(flat, x[i:i + 1], classes[i:i + 1],
                                                               max_n=3)[0], rtol=1e-4, atol=1e-6)


def test_scorecam_sigmoid_weights_by_the_class_sigmoid():
    flat, nested = flat_and_nested_models()
    x, classes = images(2), np.array([1, 2])
    ours = saliency_map(nested, x, classes, "scorecam", probability="sigmoid", raw=True,
                        upsample=False)
    for i, c in enumerate(classes):
        # softmax([z_c, 0]) = [sigmoid(z_c), 1 - sigmoid(z_c)]: tf-keras-vis on that model.
        logit = flat.outputs[0][:, c:c + 1]
        pair = keras.Model(flat.inputs, layers.Concatenate()([logit, keras.ops.zeros_like(logit)]))
        np.testing.assert_allclose(ours[i], reference_scorecam(pair, x[i:i + 1], [0])[0],
                                   rtol=1e-4, atol=1e-6)
    assert ScoreCAM(nested).probability == "sigmoid"          # logits model: multi-label
    with pytest.raises(ConfigError, match="probability"):
        ScoreCAM(nested, probability="logit")
    with pytest.raises(ConfigError, match="max_maps"):
        ScoreCAM(nested, max_maps=7)


def test_progress_reports_images_done():
    _, nested = flat_and_nested_models()
    x = images(3)
    for name, options in [("scorecam", {}), ("gradcam_plus_plus", {"batch_size": 2}),
                          ("smoothgrad", {"samples": 4, "batch_size": 4}),
                          ("vanilla", {"batch_size": 2})]:
        done = []
        saliency_method(nested, name, **options)(x, 0, progress=done.append)
        assert done == sorted(done) and done[-1] == 3 and len(set(done)) > 1, (name, done)
