"""The arithmetic recorded with results, and the released-model shift table's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from kafrob import arithmetic, arithmetic_shift


@pytest.mark.parametrize("value,enabled", [(None, True), ("1", True), ("0", False), ("false", False),
                                           ("True", True)])
def test_onednn_switch_read_as_tensorflow_reads_it(monkeypatch, value, enabled):
    if value is None:
        monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    else:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", value)
    assert arithmetic.onednn_enabled() is enabled


def test_describe_and_label():
    d = arithmetic.describe()
    assert set(d) == {"onednn", "isa", "kaf_kernels", "kaf_target"}
    assert set(d["isa"]) <= {"avx2", "fma", "avx512f", "avx512_fp16", "amx_tile"}
    assert arithmetic.label({"onednn": False, "isa": ["avx2", "fma"], "kaf_kernels": "portable"}) == \
        "oneDNN off (the same on every x86 CPU), KAF kernels portable"
    assert arithmetic.label({"onednn": True, "isa": ["avx2", "fma"], "kaf_kernels": "compiled"}) == \
        "oneDNN on, avx2+fma, KAF kernels compiled"


def test_results_key_ignores_the_cpu_only_with_onednn_off():
    off = {"onednn": False, "isa": ["avx2"], "kaf_kernels": "compiled", "cpu": "A"}
    assert arithmetic.results_key(off) == arithmetic.results_key({**off, "isa": ["avx2", "avx512f"], "cpu": "B"})
    on = {**off, "onednn": True}
    assert arithmetic.results_key(on) != arithmetic.results_key({**on, "isa": ["avx2", "avx512f"]})
    assert arithmetic.results_key(off) != arithmetic.results_key({**off, "kaf_kernels": "portable"})


def test_shift_summary_against_the_reference_path():
    labels = np.array([0, 1, 2, 3])
    ref = {"relu": np.array([0, 1, 2, 0])}  # 75%
    other = {"relu": np.array([0, 1, 0, 3])}  # 75%, agrees on 2 of 4
    rows = arithmetic_shift.summarise({arithmetic_shift.REFERENCE: ref, "other": other}, labels)
    assert rows["relu"]["other"] == {"accuracy": 75.0, "agreement": 50.0, "accuracy_delta": 0.0}
    assert rows["relu"][arithmetic_shift.REFERENCE]["agreement"] == 100.0
    assert "| relu | 75.00 | 75.00 (+0.00; 50.00% agree) |" in arithmetic_shift.table(rows)


def test_every_path_sets_onednn_for_its_process():
    for path in arithmetic_shift.PATHS:
        assert path.env()["TF_ENABLE_ONEDNN_OPTS"] == ("1" if path.onednn else "0")
    assert arithmetic_shift.PATHS[0].name == arithmetic_shift.REFERENCE
