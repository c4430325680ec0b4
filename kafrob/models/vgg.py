"""The thesis's VGG-inspired CNN (from the author's training notebook)."""

from __future__ import annotations

import keras

from kafrob.activations import activation_layer
from kafrob.models.batch_norm import BatchNormalization

BLOCKS = ((32, 0.2), (64, 0.25), (128, 0.3))
DENSE_L2 = 1.2e-3


def vgg(activation: str, *, input_shape=(32, 32, 3), num_classes: int = 10) -> keras.Model:
    """3 x [Conv-BN-act, Conv-BN-act, MaxPool, Dropout], GAP, Dense(128)-act, Dropout(0.4), Dense(10)."""
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for b, (filters, rate) in enumerate(BLOCKS, start=1):
        for c in (1, 2):
            x = keras.layers.Conv2D(
                filters, 3, padding="same", kernel_initializer="he_uniform", name=f"block{b}_conv{c}"
            )(x)
            x = BatchNormalization(name=f"block{b}_bn{c}")(x)
            x = activation_layer(activation, name=f"block{b}_act{c}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
        x = keras.layers.Dropout(rate, name=f"block{b}_dropout")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(128, kernel_regularizer=keras.regularizers.L2(DENSE_L2), name="fc")(x)
    x = activation_layer(activation, name="fc_act")(x)
    x = keras.layers.Dropout(0.4, name="fc_dropout")(x)
    logits = keras.layers.Dense(
        num_classes, kernel_regularizer=keras.regularizers.L2(DENSE_L2), dtype="float32", name="logits"
    )(x)
    return keras.Model(inputs, logits, name=f"vgg_{activation}")
