"""The arithmetic recorded with results, and the released-model shift table's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from kafrob import arithmetic, arithmetic_shift

SWITCHES = [("TF_ENABLE_ONEDNN_OPTS", arithmetic.onednn_enabled, [(None, True), ("1", True), ("0", False),
                                                                     ("false", False), ("True", True)]),
            (arithmetic.CONTRACTION_ENV_VAR, arithmetic.contractions, [(None, "onednn"), ("1", "onednn"),
                                                                       ("0", "eigen"), ("false", "eigen")]),
            (arithmetic.RSQRT_ENV_VAR, arithmetic.rsqrt, [(None, "hardware"), ("0", "hardware"), ("1", "exact"),
                                                          ("true", "exact")])]


@pytest.mark.parametrize("variable,read,value,expected",
                         [(variable, read, value, expected) for variable, read, cases in SWITCHES
                          for value, expected in cases])
def test_switches_read_as_their_readers_read_them(monkeypatch, variable, read, value, expected):
    """oneDNN's and the contractions' switches as TensorFlow reads them; the rsqrt's as kafrob does."""
    if value is None:
        monkeypatch.delenv(variable, raising=False)
    else:
        monkeypatch.setenv(variable, value)
    assert read() == expected


def test_describe_and_label():
    d = arithmetic.describe()
    assert set(d) == {"onednn", "contractions", "rsqrt", "threads", "l1d_kib", "l2_kib", "l3_kib", "isa",
                      "kaf_kernels", "kaf_target"}
    assert d["threads"] >= 1 and all(d[c] is None or d[c] > 0 for c in ("l1d_kib", "l2_kib", "l3_kib"))
    assert set(d["isa"]) <= {"avx2", "fma", "avx512f", "avx512_fp16", "amx_tile"}
    reference = {"onednn": False, "contractions": "eigen", "isa": ["avx2", "fma"], "kaf_kernels": "portable"}
    assert arithmetic.label(reference) == \
        "oneDNN off, Eigen contractions (no oneDNN code), KAF kernels portable"
    assert arithmetic.label({**reference, "rsqrt": "exact"}) == \
        "oneDNN off, Eigen contractions (no oneDNN code), KAF kernels portable, exact rsqrt"
    assert arithmetic.label({**reference, "contractions": "onednn"}) == \
        "oneDNN off but oneDNN's sgemm in contractions, avx2+fma, KAF kernels portable"
    assert arithmetic.label({"onednn": True, "isa": ["avx2", "fma"], "kaf_kernels": "compiled"}) == \
        "oneDNN on, avx2+fma, KAF kernels compiled"


def test_results_key_ignores_the_cpu_only_without_any_onednn_code():
    """oneDNN's rewrites and its sgemm (TensorFlow's default contractions, also with the rewrites off) pick code by
    the CPU; a header without ``contractions`` predates the field and had TensorFlow's default."""
    off = {"onednn": False, "contractions": "eigen", "isa": ["avx2"], "kaf_kernels": "compiled", "cpu": "A"}
    assert arithmetic.results_key(off) == arithmetic.results_key({**off, "isa": ["avx2", "avx512f"], "cpu": "B"})
    for cpu_dependent in ({**off, "onednn": True}, {**off, "contractions": "onednn"},
                          {k: v for k, v in off.items() if k != "contractions"}):
        assert arithmetic.results_key(cpu_dependent) != arithmetic.results_key({**cpu_dependent, "isa": ["avx512f"]})
    assert arithmetic.results_key(off) != arithmetic.results_key({**off, "kaf_kernels": "portable"})
    assert arithmetic.env_for(off) == {**arithmetic.REFERENCE_ENV, "KAFROB_EXACT_RSQRT": "0"}
    assert arithmetic.env_for({"onednn": True}) == {"TF_ENABLE_ONEDNN_OPTS": "1",
                                                    "TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL": "1",
                                                    "KAFROB_EXACT_RSQRT": "0"}


def test_env_for_sets_the_rsqrt_it_records():
    for rsqrt in ("hardware", "exact"):
        assert arithmetic.env_for({"rsqrt": rsqrt})[arithmetic.RSQRT_ENV_VAR] == ("1" if rsqrt == "exact" else "0")


def test_only_the_exact_rsqrt_makes_the_reference_arithmetic_vendor_independent():
    """Headers without ``rsqrt`` predate it (the hardware's): they merge with new hardware ones, not exact ones."""
    reference = {"onednn": False, "contractions": "eigen", "kaf_kernels": "compiled"}
    assert not arithmetic.vendor_independent(reference)
    assert arithmetic.vendor_independent({**reference, "rsqrt": "exact"})
    assert not arithmetic.vendor_independent({**reference, "onednn": True, "rsqrt": "exact"})
    assert arithmetic.results_key(reference) == arithmetic.results_key({**reference, "rsqrt": "hardware"})
    assert arithmetic.results_key(reference) != arithmetic.results_key({**reference, "rsqrt": "exact"})


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
        assert path.env()["TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL"] == ("0" if path.contractions == "eigen" else "1")
    reference = arithmetic_shift.PATHS[0]
    assert reference.name == arithmetic_shift.REFERENCE
    assert {k: reference.env()[k] for k in arithmetic.REFERENCE_ENV} == arithmetic.REFERENCE_ENV


def test_eigen_blocking_tells_one_thread_from_several(monkeypatch):
    assert arithmetic.eigen_blocking({"threads": 2, "l1d_kib": 48}) == arithmetic.eigen_blocking({"threads": 4,
                                                                                                 "l1d_kib": 48})
    assert arithmetic.eigen_blocking({"threads": 1, "l1d_kib": 48}) != arithmetic.eigen_blocking({"threads": 2,
                                                                                                 "l1d_kib": 48})
    assert arithmetic.eigen_blocking({}) == (None, None)  # headers before the fields
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")
    assert arithmetic.intra_op_threads() == 3


def test_machine_names_what_a_reference_result_still_depends_on():
    """Headers of one machine agree; another CPU, L2 size or thread count is another machine; a field an older
    header does not record (L2, L3) is not held against it; the folder name is the CPU's and a digest."""
    amd = {"cpu": "AMD EPYC", "isa": ["avx2", "fma", "avx512f"], "threads": 2, "l1d_kib": 48, "l2_kib": 1024,
           "l3_kib": 32768, "onednn": False}
    assert arithmetic.same_machine(amd, {**amd, "threads": 4, "onednn": True})
    older = {k: v for k, v in amd.items() if k not in ("l2_kib", "l3_kib")}
    assert arithmetic.same_machine(older, amd) and arithmetic.same_machine(amd, older)
    for other in ({**amd, "cpu": "Intel(R) Xeon(R) Processor"}, {**amd, "l2_kib": 2048}, {**amd, "threads": 1}):
        assert not arithmetic.same_machine(amd, other)
    assert not arithmetic.same_machine(older, {**amd, "cpu": "Intel(R) Xeon(R) Processor"})
    assert not arithmetic.same_machine({}, {})  # nothing recorded: never taken for the same machine
    slug = arithmetic.machine_slug({**amd, "cpu": "Intel(R) Xeon(R) Processor"})
    assert slug.startswith("intel-r-xeon-r-processor-") and len(slug.rsplit("-", 1)[1]) == 8
    assert arithmetic.machine_slug(amd) != arithmetic.machine_slug({**amd, "l2_kib": 2048})
