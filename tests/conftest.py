"""Shared test fixtures. Tests use tiny images and models so the suite fits 2 CPU cores."""
import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CHESTKD_HOME", os.path.join(os.path.dirname(__file__), ".cache"))


def _tiny_classifier(input_shape, classes, *, conv=None, pooling="flatten", seed=0):
    """The suite's tiny logits model: ``Input(input_shape)``, an optional ``Conv2D(**conv)``,
    ``Flatten`` (``pooling="flatten"``) or ``GlobalAveragePooling2D`` (``"average"``), then
    ``Dense(classes)``. Seeded with ``keras.utils.set_random_seed(seed)`` first (``seed=None``:
    not seeded), so the same call gives the same weights."""
    import keras

    if seed is not None:
        keras.utils.set_random_seed(seed)
    layers = [keras.Input(input_shape)]
    if conv:
        layers.append(keras.layers.Conv2D(**conv))
    layers.append({"flatten": keras.layers.Flatten,
                   "average": keras.layers.GlobalAveragePooling2D}[pooling]())
    return keras.Sequential([*layers, keras.layers.Dense(classes)])


@pytest.fixture
def tiny_classifier():
    """The builder of the suite's tiny logits model (:func:`_tiny_classifier`), e.g.
    ``tiny_classifier((8, 8, 3), 2, conv={"filters": 4, "kernel_size": 3},
    pooling="average")``."""
    return _tiny_classifier
