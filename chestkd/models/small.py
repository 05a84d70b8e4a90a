"""Small networks: the three-convolution distillation student and a plain CNN baseline.

``conv3_student`` (the compact student of the chest X-ray distillation papers)::

    conv1 64 5x5 -> BN -> ReLU -> max-pool 2x2
    conv2 64 3x3 -> BN -> ReLU -> max-pool 2x2
    conv3 128 3x3 -> BN -> ReLU                      (last feature map, CAM applies)
    -> GlobalAveragePooling2D("features_pool") -> Dense(num_classes, "logits")

On inputs of at least 112 pixels ``conv1`` has stride 2, so a 224x224 image gives a 28x28x128
feature map for about 0.23 GMACs (without the stride: 0.9 GMACs, more than MobileNet).
Batch norm keeps the three layers easy to train at the high distillation temperatures.

``baseline_cnn`` (a from-scratch CNN baseline)::

    conv1 32 3x3 -> ReLU -> max-pool p x p
    conv2 64 3x3 -> ReLU -> max-pool p x p           (last feature map)
    -> Flatten -> Dense 128 -> ReLU -> Dropout 0.5 -> Dense(num_classes, "logits")

with p = 2, or p = 4 on inputs of at least 112 pixels (otherwise the first dense layer of a
224x224 model would hold 25M weights). It has no global pooling, so Class Activation Mapping
(which needs logits linear in the pooled feature map) does NOT apply to it; gradient-based
methods (Grad-CAM, guided backprop) do.
"""

from __future__ import annotations

from keras import layers

from chestkd.models.resnet import uses_downsampling_stem

# (name, filters, kernel size) of the conv3_student convolutions.
CONV3_STUDENT_CONVS = (("conv1", 64, 5), ("conv2", 64, 3), ("conv3", 128, 3))
BASELINE_CNN_CONVS = (("conv1", 32, 3), ("conv2", 64, 3))
BASELINE_CNN_HIDDEN_UNITS = 128
BASELINE_CNN_DROPOUT = 0.5


def conv3_student_features(image):
    """image (B, H, W, C) -> feature map (B, H/4, W/4, 128), or (B, H/8, W/8, 128) from 112 px."""
    first_stride = 2 if uses_downsampling_stem(*image.shape[1:3]) else 1
    x = image
    for index, (name, filters, kernel_size) in enumerate(CONV3_STUDENT_CONVS):
        x = layers.Conv2D(
            filters, kernel_size, strides=first_stride if index == 0 else 1, padding="same",
            use_bias=False, kernel_initializer="he_normal", name=name,
        )(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        x = layers.Activation("relu", name=f"{name}_relu")(x)
        if index < len(CONV3_STUDENT_CONVS) - 1:
            x = layers.MaxPooling2D(pool_size=2, name=f"{name}_pool")(x)
    return x


def baseline_cnn_logits(image, num_classes: int):
    """image (B, H, W, C) -> float32 logits (B, num_classes) through a Flatten + dense head."""
    pool = 4 if uses_downsampling_stem(*image.shape[1:3]) else 2
    x = image
    for name, filters, kernel_size in BASELINE_CNN_CONVS:
        x = layers.Conv2D(filters, kernel_size, padding="same", activation=None, name=name)(x)
        x = layers.Activation("relu", name=f"{name}_relu")(x)
        x = layers.MaxPooling2D(pool_size=pool, name=f"{name}_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(BASELINE_CNN_HIDDEN_UNITS, name="fc1")(x)
    x = layers.Activation("relu", name="fc1_relu")(x)
    x = layers.Dropout(BASELINE_CNN_DROPOUT, name="fc1_dropout")(x)
    return layers.Dense(num_classes, dtype="float32", name="logits")(x)
