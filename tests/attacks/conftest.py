"""A linear classifier on small images, whose L-inf robust radius has a closed form: the attacks' known answer."""

from __future__ import annotations

import keras
import numpy as np
import pytest

SHAPE = (6, 6, 3)


class Linear:
    """z = W x + b on 6x6x3 images with pixels in [0.3, 0.7], so radii below 0.3 never meet the image box."""

    def __init__(self, seed: int = 0, n: int = 60):
        rng = np.random.default_rng(seed)
        d = int(np.prod(SHAPE))
        self.w = rng.normal(0, 1, (d, 10)).astype(np.float32)
        self.b = rng.normal(0, 1, 10).astype(np.float32)
        self.x = rng.uniform(0.3, 0.7, (n, *SHAPE)).astype(np.float32)
        self.model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(10)])
        self.model.layers[-1].set_weights([self.w, self.b])
        self.y = self.logits(self.x).argmax(1)  # attack the model's own labels: all clean-correct

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1).astype(np.float64) @ self.w + self.b

    def radius(self) -> np.ndarray:
        """The smallest L-inf perturbation that changes each image's label: min_j (z_y - z_j) / ||w_y - w_j||_1."""
        z = self.logits(self.x)
        out = np.full(len(self.x), np.inf)
        for j in range(10):
            gap = z[np.arange(len(z)), self.y] - z[:, j]
            norm = np.abs(self.w[:, self.y] - self.w[:, [j]]).sum(0)
            out = np.where(self.y == j, out, np.minimum(out, gap / np.maximum(norm, 1e-30)))
        return out


@pytest.fixture(scope="module")
def linear() -> Linear:
    return Linear()


class Quantise(keras.layers.Layer):
    """Rounds the input to multiples of 1/8: zero gradients almost everywhere, the classic masking defence."""

    def call(self, x):
        return keras.ops.round(x * 8.0) / 8.0


@pytest.fixture(scope="module")
def quantised(linear) -> keras.Model:
    """The linear model behind a quantising input layer: it masks gradients without being robust."""
    model = keras.Sequential([keras.Input(SHAPE), Quantise(), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.layers[-1].set_weights([linear.w, linear.b])
    return model


@pytest.fixture(scope="module")
def first_images(cifar):
    """``first_images(n)``: the first n test images of the stored evaluation order (kafrob.bench.shards) and labels."""
    from kafrob.bench.shards import evaluation_order
    from kafrob.data import to_float

    def take(n: int):
        idx = evaluation_order(cifar.y_test)[:n]
        return to_float(cifar.x_test[idx]).numpy(), cifar.y_test[idx]

    return take
