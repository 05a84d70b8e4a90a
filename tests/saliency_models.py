"""Test models shared by the saliency tests (tests/ is on sys.path under pytest)."""
import keras
from keras import layers

SIZE = 16


def flat_and_nested_models(output_activation=None):
    """The same layers as a flat model and as a backbone nested inside a classifier."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(5, 3, padding="same", name="c1")(inputs)
    x = layers.ReLU(name="r1")(x)
    x = layers.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="c2")(x)
    features = layers.BatchNormalization(name="bn")(x)
    pool = layers.GlobalAveragePooling2D(name="features_pool")
    dense = layers.Dense(3, name="logits")
    flat = keras.Model(inputs, dense(pool(features)))
    backbone = keras.Model(inputs, features, name="backbone")
    outer = keras.Input((SIZE, SIZE, 3))
    logits = dense(pool(backbone(outer)))
    if output_activation:
        logits = layers.Activation(output_activation, name="probabilities")(logits)
    nested = keras.Model(outer, logits)
    return flat, nested
