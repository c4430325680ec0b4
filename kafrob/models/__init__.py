"""The thesis's two architectures; both return logits (softmax + from_logits=False is the same function)."""

from __future__ import annotations

from collections.abc import Callable

import keras

from kafrob.models.resnet20 import resnet20
from kafrob.models.vgg import vgg

MODELS: dict[str, Callable[..., keras.Model]] = {"vgg": vgg, "resnet20": resnet20}


def build_model(name: str, activation: str, **kwargs) -> keras.Model:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name](activation, **kwargs)


__all__ = ["MODELS", "build_model", "resnet20", "vgg"]
