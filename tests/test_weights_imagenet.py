"""``weights: imagenet`` with no internet: Keras' download is answered by a local file.

The file is written here in the format of Keras' published no-top checkpoints (the legacy
HDF5 layout ``keras.applications`` loads), from a DenseNet-121 with random weights at a tiny
input, so the test checks the whole path (Keras' loader, chestkd's flat model, the new head,
the input adapter that applies the backbone's own preprocessing) without a download.
"""
from types import SimpleNamespace

import h5py
import keras
import numpy as np
import pytest

from chestkd.errors import ConfigError
from chestkd.models import zoo
from chestkd.training.config import BASE_DEFAULTS, resolve_config

NOTOP = "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
SIZE = 32


@pytest.fixture(scope="module")
def local_imagenet(tmp_path_factory):
    """(path, source model): a no-top DenseNet-121 checkpoint saved as Keras publishes it."""
    from keras.src.legacy.saving import legacy_h5_format
    keras.utils.set_random_seed(123)
    source = keras.applications.DenseNet121(include_top=False, weights=None,
                                            input_shape=(SIZE, SIZE, 3))
    path = tmp_path_factory.mktemp("keras_models") / NOTOP
    with h5py.File(path, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, source)
    return path, source


@pytest.fixture
def offline_download(monkeypatch, local_imagenet):
    """Keras' get_file returns the local checkpoint and records what was asked for."""
    asked = []

    def get_file(fname=None, origin=None, **options):
        asked.append(fname)
        return str(local_imagenet[0])
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", get_file)
    return asked


def _assert_backbone_loaded(model, source):
    for name in ("conv1_conv", "conv3_block5_1_conv", "conv5_block16_2_conv", "bn"):
        for got, want in zip(model.get_layer(name).get_weights(),
                             source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, want)


def test_imagenet_weights_load_from_the_local_checkpoint(offline_download, local_imagenet):
    keras.utils.set_random_seed(0)   # a fresh init that differs from the checkpoint's
    model = zoo.build("densenet121", 3, (SIZE, SIZE, 3), weights="imagenet")
    assert offline_download == [NOTOP]
    _assert_backbone_loaded(model, local_imagenet[1])
    assert model.get_layer("logits").kernel.shape == (1024, 3)   # the new head
    # the backbone's own preprocessing: [-1, 1] -> ([0, 1] - mean) / std per RGB channel
    adapter = model.get_layer("input_adapter")
    out = np.asarray(adapter(np.full((1, 1, 1, 3), 1.0, np.float32)))[0, 0, 0]
    np.testing.assert_allclose(out, (1.0 - np.array(zoo.TORCH_MEAN_RGB))
                               / np.array(zoo.TORCH_STD_RGB), rtol=1e-5)


def test_the_small_real_profile_with_imagenet_weights_builds_densenet121(offline_download,
                                                                        local_imagenet):
    from chestkd.training.classifier import build_model
    config = resolve_config(["--profile", "small-real", "--dataset", "folder",
                             "--weights", "imagenet", "--image-size", str(SIZE)],
                            BASE_DEFAULTS)
    assert config["model"] == "densenet121" and config["weights"] == "imagenet"
    model = build_model(config["model"], SimpleNamespace(num_classes=2), config)
    _assert_backbone_loaded(model, local_imagenet[1])
    assert offline_download == [NOTOP]


def test_no_internet_and_no_local_file_is_a_clear_error(monkeypatch):
    def get_file(*args, **options):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr("keras.src.utils.file_utils.get_file", get_file)
    with pytest.raises(ConfigError, match="densenet121.*internet.*weights=None"):
        zoo.build("densenet121", 2, (SIZE, SIZE, 3), weights="imagenet")
