"""The activation registry: one name per thesis column, each a factory of a fresh Keras layer."""

from __future__ import annotations

from collections.abc import Callable

import keras

from kafrob.kaf import KAF

ACTIVATIONS: dict[str, Callable[..., keras.layers.Layer]] = {
    "relu": lambda **kw: keras.layers.Activation("relu", **kw),
    "elu": lambda **kw: keras.layers.Activation("elu", **kw),
    "swish": lambda **kw: keras.layers.Activation("swish", **kw),
    "kaf": lambda **kw: KAF(init="random", **kw),
    "kaf_relu": lambda **kw: KAF(init="relu", **kw),
    "kaf_elu": lambda **kw: KAF(init="elu", **kw),
    "kaf_swish": lambda **kw: KAF(init="swish", **kw),
    "kaf_free": lambda **kw: KAF(init="random", trainable_dictionary=True, **kw),
}


def check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return name


def activation_layer(activation: str, **kwargs) -> keras.layers.Layer:
    """A new layer for ``activation`` (kwargs such as ``name=`` go to the layer)."""
    return ACTIVATIONS[check_activation(activation)](**kwargs)


def is_kaf(name: str) -> bool:
    return check_activation(name).startswith("kaf")
