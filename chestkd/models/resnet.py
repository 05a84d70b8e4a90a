"""Residual networks that ``keras.applications`` does not provide.

* ``resnet18`` / ``resnet34``: the ImageNet-style basic-block ResNets of He et al. (2016),
  Table 1 ("ResNet v1", post-activation): a 7x7/2 convolution and a 3x3/2 max-pool stem, then
  four stages of basic blocks (two 3x3 convolutions) with 64, 128, 256 and 512 filters and
  [2, 2, 2, 2] / [3, 4, 6, 3] blocks. Where a block changes the resolution or width its
  shortcut is a 1x1 strided convolution + batch norm (the paper's option B), as in torchvision,
  so the trainable parameter counts are torchvision's (11.69M / 21.80M at 1000 classes).
* ``resnet32``: the CIFAR-style ResNet of He et al. (2016), Sec. 4.2, used as a student in the
  distillation literature: depth 6n+2 with n=5, i.e. a 3x3 convolution with 16 filters, then
  three stages of five basic blocks with 16, 32 and 64 filters (the first block of stages 2 and
  3 has stride 2), global average pooling and a linear layer: 31 convolutions + 1 dense layer,
  0.46M parameters at 10 classes. Shortcuts are parameter-free (option A): the input is
  subsampled by 2 and zero-padded with the missing channels (half before, half after).
* ``resnet20``: the same network with n=3 (19 convolutions + 1 dense layer, 0.27M parameters
  at 10 classes; He et al. 2016, Table 6), the main job's model on the phantom.

  Input-size rule (our addition, documented in ``chestkd.models``): on inputs of at least
  ``DOWNSAMPLING_STEM_MIN_SIZE`` (112) pixels the stem convolution has stride 2 and is followed
  by a 3x3/2 max-pool, so a 224x224 image enters the first stage at 56x56 instead of 224x224
  (16x fewer operations). The weight layers and parameter count are the same either way.

Strided 3x3 convolutions pad explicitly by 1 pixel and then use ``padding="valid"`` (as
torchvision does): with TensorFlow's ``"same"`` padding an even-sized input is padded only
after, which would put the sampled centres half a pixel away from the stride-2 shortcut.

Each function maps an image tensor (values in [-1, 1]) to the last 4-D feature map; the
classification head is added by :mod:`chestkd.models.zoo`.
"""

from __future__ import annotations

from keras import layers

DOWNSAMPLING_STEM_MIN_SIZE = 112

_BN_EPSILON = 1.001e-5  # Keras' ResNet value.


def _batch_norm(name: str) -> layers.Layer:
    return layers.BatchNormalization(axis=-1, epsilon=_BN_EPSILON, name=name)


def _conv(x, filters: int, kernel_size: int, stride: int, name: str):
    """Bias-free convolution (batch norm follows); strided ones pad like PyTorch."""
    if stride == 1:
        return layers.Conv2D(
            filters, kernel_size, padding="same", use_bias=False,
            kernel_initializer="he_normal", name=f"{name}_conv",
        )(x)
    x = layers.ZeroPadding2D(padding=kernel_size // 2, name=f"{name}_pad")(x)
    return layers.Conv2D(
        filters, kernel_size, strides=stride, padding="valid", use_bias=False,
        kernel_initializer="he_normal", name=f"{name}_conv",
    )(x)


def _max_pool_3x3_s2(x, name: str):
    # Zero padding is equivalent to -inf padding here: the input is post-ReLU (>= 0).
    x = layers.ZeroPadding2D(padding=1, name=f"{name}_pad")(x)
    return layers.MaxPooling2D(pool_size=3, strides=2, name=name)(x)


def _projection_shortcut(x, filters: int, stride: int, name: str):
    """Option B: 1x1 strided convolution + batch norm."""
    x = layers.Conv2D(
        filters, 1, strides=stride, use_bias=False, kernel_initializer="he_normal",
        name=f"{name}_0_conv",
    )(x)
    return _batch_norm(f"{name}_0_bn")(x)


def _zero_pad_shortcut(x, filters: int, stride: int, name: str):
    """Option A: take every ``stride``-th pixel and zero-pad the new channels (no weights).

    Keras has no channel-padding layer, so the channels are moved to a spatial axis of a 5-D
    tensor, padded with ``ZeroPadding3D`` and reshaped back.
    """
    if stride != 1:
        # A 1x1 max-pool with stride s is exactly x[:, ::s, ::s, :].
        x = layers.MaxPooling2D(pool_size=1, strides=stride, name=f"{name}_0_subsample")(x)
    missing = filters - x.shape[-1]
    if missing == 0:
        return x
    height, width, channels = x.shape[1:]
    before = missing // 2
    x = layers.Reshape((height, width, channels, 1), name=f"{name}_0_to_5d")(x)
    x = layers.ZeroPadding3D(padding=((0, 0), (0, 0), (before, missing - before)),
                             name=f"{name}_0_pad_channels")(x)
    return layers.Reshape((height, width, filters), name=f"{name}_0_to_4d")(x)


def basic_block(x, filters: int, stride: int, name: str, *, shortcut: str):
    """y = ReLU(BN(conv3x3(ReLU(BN(conv3x3_stride(x))))) + shortcut(x)).

    ``shortcut`` is ``"projection"`` (option B) or ``"zero_pad"`` (option A); either is the
    identity when the block keeps the resolution and width.
    """
    if stride == 1 and x.shape[-1] == filters:
        residual = x
    elif shortcut == "projection":
        residual = _projection_shortcut(x, filters, stride, name)
    else:
        residual = _zero_pad_shortcut(x, filters, stride, name)
    y = _conv(x, filters, 3, stride, f"{name}_1")
    y = _batch_norm(f"{name}_1_bn")(y)
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = _conv(y, filters, 3, 1, f"{name}_2")
    y = _batch_norm(f"{name}_2_bn")(y)
    y = layers.Add(name=f"{name}_add")([residual, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def _imagenet_basic_resnet(image, blocks_per_stage):
    x = _conv(image, 64, 7, 2, "conv1")
    x = _batch_norm("conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = _max_pool_3x3_s2(x, "pool1")
    for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), blocks_per_stage), start=2):
        for block in range(1, blocks + 1):
            stride = 2 if block == 1 and stage > 2 else 1
            x = basic_block(x, filters, stride, f"conv{stage}_block{block}", shortcut="projection")
    return x


def resnet18_features(image):
    """ResNet-18 body: image (B, H, W, C) -> feature map (B, H/32, W/32, 512)."""
    return _imagenet_basic_resnet(image, (2, 2, 2, 2))


def resnet34_features(image):
    """ResNet-34 body: image (B, H, W, C) -> feature map (B, H/32, W/32, 512)."""
    return _imagenet_basic_resnet(image, (3, 4, 6, 3))


def resnet20_features(image):
    """CIFAR ResNet-20 body (:func:`resnet32_features` with n = 3 blocks per stage)."""
    return resnet32_features(image, blocks_per_stage=3)


def uses_downsampling_stem(height: int, width: int) -> bool:
    """Whether the small-input networks (resnet32, conv3_student, baseline_cnn) shrink early."""
    return min(height, width) >= DOWNSAMPLING_STEM_MIN_SIZE


def resnet32_features(image, blocks_per_stage: int = 5):
    """CIFAR ResNet-(6n+2) body, n = ``blocks_per_stage``: image -> (B, H/4, W/4, 64).

    On inputs >= 112 pixels the stem downsamples by 4 (see module docstring): -> (B, H/16, W/16, 64).
    """
    large = uses_downsampling_stem(*image.shape[1:3])
    x = _conv(image, 16, 3, 2 if large else 1, "conv1")
    x = _batch_norm("conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    if large:
        x = _max_pool_3x3_s2(x, "pool1")
    for stage, filters in enumerate((16, 32, 64), start=2):
        for block in range(1, blocks_per_stage + 1):
            stride = 2 if block == 1 and stage > 2 else 1
            x = basic_block(x, filters, stride, f"conv{stage}_block{block}", shortcut="zero_pad")
    return x
