"""The thesis's ResNet20 variant (294,922 parameters with ReLU).

Differences from He et al.'s CIFAR ResNet20 that the thesis made and we keep: the projection shortcut
is a 3x3 strided convolution, batch normalisation comes after the residual add, convolutions keep
their bias. Layers are created in the order the thesis created them, which is also the order of the
``layer_with_weights-N`` entries in its released checkpoints (see kafrob.checkpoints).
"""

from __future__ import annotations

import keras

from kafrob.activations import activation_layer
from kafrob.models.batch_norm import BatchNormalization

STAGES = ((16, 1), (32, 2), (64, 2))
BLOCKS_PER_STAGE = 3
L2 = 5e-4


def _conv(filters: int, stride: int, name: str) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(
        filters,
        3,
        strides=stride,
        padding="same",
        kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.L2(L2),
        name=name,
    )


def _blocks():
    """(prefix, filters, stride) of every residual block, in order."""
    for s, (filters, first_stride) in enumerate(STAGES, start=1):
        for b in range(1, BLOCKS_PER_STAGE + 1):
            yield f"stage{s}_block{b}", filters, first_stride if b == 1 else 1


def layer_names() -> list[str]:
    """Every layer in creation order, which is the thesis's ``layer_with_weights-N`` order."""
    names = ["stem_conv", "stem_bn", "stem_act"]
    for p, _, stride in _blocks():
        names += [f"{p}_conv1", f"{p}_bn1", f"{p}_act1", f"{p}_conv2"]
        names += [f"{p}_shortcut"] if stride > 1 else []
        names += [f"{p}_add", f"{p}_bn2", f"{p}_act2"]
    return names + ["gap", "logits"]


def resnet20(activation: str, *, input_shape=(32, 32, 3), num_classes: int = 10) -> keras.Model:
    inputs = keras.Input(input_shape, name="image")
    x = _conv(16, 1, "stem_conv")(inputs)
    x = BatchNormalization(name="stem_bn")(x)
    x = activation_layer(activation, name="stem_act")(x)
    for p, filters, stride in _blocks():
        y = _conv(filters, stride, f"{p}_conv1")(x)
        y = BatchNormalization(name=f"{p}_bn1")(y)
        y = activation_layer(activation, name=f"{p}_act1")(y)
        y = _conv(filters, 1, f"{p}_conv2")(y)
        shortcut = _conv(filters, stride, f"{p}_shortcut")(x) if stride > 1 else x
        x = keras.layers.Add(name=f"{p}_add")([y, shortcut])
        x = BatchNormalization(name=f"{p}_bn2")(x)
        x = activation_layer(activation, name=f"{p}_act2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.L2(L2),
        dtype="float32",
        name="logits",
    )(x)
    return keras.Model(inputs, logits, name=f"resnet20_{activation}")
