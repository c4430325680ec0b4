from __future__ import annotations

import keras
import pytest

from kafrob.schedules import OneCycle


def test_triangle_hits_min_max_min():
    s = OneCycle(0.01, 0.8, 100)
    assert float(s(0)) == pytest.approx(0.01)
    assert float(s(50)) == pytest.approx(0.8)
    assert float(s(25)) == pytest.approx(0.405)
    assert float(s(100)) == pytest.approx(0.01)
    assert float(s(150)) == pytest.approx(0.01)


def test_decay_phase_halves():
    s = OneCycle(0.01, 0.8, 100, decay_lr=0.01, decay_every=10)
    steps = (100, 109, 110, 125, 139, 140)
    assert [round(float(s(t)), 6) for t in steps] == [0.01, 0.01, 0.005, 0.0025, 0.00125, 0.000625]


def test_config_round_trip():
    s = OneCycle(0.001, 0.3, 1000, decay_lr=0.01, decay_every=40)
    t = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
    assert t.get_config() == s.get_config() and float(t(321)) == float(s(321))


def test_bad_bounds():
    with pytest.raises(ValueError):
        OneCycle(0.5, 0.1, 100)
