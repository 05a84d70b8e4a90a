"""predict_logits traces its tf.function once per model and image shape (issue 15)."""
import gc
import os
import weakref

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

from chestkd.evaluation.metrics import inference_function, predict_logits  # noqa: E402


class CountTraces(layers.Layer):
    """Identity whose Python body counts how often it runs: once per trace in a tf.function."""

    runs = 0

    def call(self, inputs):
        CountTraces.runs += 1
        return inputs


def counting_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = CountTraces()(inputs)
    x = layers.Conv2D(4, 3)(x)
    outputs = layers.Dense(2)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def dataset(images, batch_size):
    labels = np.zeros((len(images), 2), np.float32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)


def test_predict_logits_traces_once_for_every_call_and_batch_size():
    model = counting_model()
    images = np.random.default_rng(0).uniform(-1, 1, (23, 8, 8, 3)).astype(np.float32)
    expected = model(images, training=False).numpy()
    CountTraces.runs = 0
    for batch_size in (16, 5, 7, 23, 1):            # several calls, last batches of every size
        logits, labels = predict_logits(model, dataset(images, batch_size))
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
        assert labels.shape == (23, 2)
    assert CountTraces.runs == 1
    function = inference_function(model, (8, 8, 3), tf.float32)
    assert function.experimental_get_tracing_count() == 1


def test_each_model_gets_its_own_function_and_is_not_kept_alive():
    first, second = counting_model(), counting_model()
    images = np.random.default_rng(1).uniform(-1, 1, (6, 8, 8, 3)).astype(np.float32)
    second.set_weights([w + 0.5 for w in first.get_weights()])
    a, _ = predict_logits(first, dataset(images, 4))
    b, _ = predict_logits(second, dataset(images, 4))
    np.testing.assert_allclose(b, second(images, training=False).numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, b)
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None
