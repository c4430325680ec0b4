"""The thesis's two models: parameter counts (asserted against the thesis) and serialization."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kafrob.activations import ACTIVATIONS, activation_layer
from kafrob.models import build_model

# ResNet20: the thesis's numbers (294,922 with ReLU; KAFs add 20 coefficients per channel and a
# non-trainable 20-point dictionary per layer; kaf_free a per-channel dictionary and gamma instead).
RESNET20 = {"relu": 294_922, "kaf": 309_062, "kaf_relu": 309_062, "kaf_elu": 309_062, "kaf_swish": 309_062,
            "kaf_free": 323_130, "elu": 294_922, "swish": 294_922}
# Trainable parameters of the released checkpoints (mix_coeffs, d, k_bandw, kernels, biases, BN gamma/beta).
RESNET20_TRAINABLE = {"relu": 293_546, "kaf": 307_306, "kaf_free": 321_754}


@pytest.mark.parametrize("activation", sorted(RESNET20))
def test_resnet20_parameter_counts(activation):
    model = build_model("resnet20", activation)
    assert model.count_params() == RESNET20[activation]
    if activation in RESNET20_TRAINABLE:
        assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == RESNET20_TRAINABLE[activation]


def test_vgg_parameter_counts():
    # 306,602 with ReLU: 7 activation layers with 32+32+64+64+128+128+128 = 576 channels.
    assert build_model("vgg", "relu").count_params() == 306_602
    assert build_model("vgg", "kaf").count_params() == 306_602 + 576 * 20 + 7 * 20
    assert build_model("vgg", "kaf_free").count_params() == 306_602 + 576 * 41


def test_l2_regularisation_as_the_thesis():
    resnet = build_model("resnet20", "relu")
    assert len(resnet.losses) == 22  # 21 conv kernels (19 + 2 shortcuts) and the dense kernel
    vgg = build_model("vgg", "relu")
    assert len(vgg.losses) == 2  # dense layers only


def test_models_return_logits():
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    out = build_model("resnet20", "relu")(x).numpy()
    assert out.shape == (2, 10) and not np.allclose(out.sum(-1), 1.0)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="known: relu, elu, swish, kaf"):
        activation_layer("gelu")
    with pytest.raises(ValueError, match="known: vgg, resnet20"):
        build_model("resnet56", "relu")
    assert len(ACTIVATIONS) == 8


@pytest.mark.parametrize("model_name,activation", [("resnet20", "kaf_swish"), ("vgg", "kaf_free")])
def test_keras_round_trip(tmp_path, model_name, activation):
    model = build_model(model_name, activation)
    x = np.random.default_rng(1).uniform(size=(4, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(model(x, training=False).numpy(), loaded(x, training=False).numpy())
