"""The verdict's pairing: common images, the pairs asked for, and readings that follow the intervals."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from kafrob.bench import judge, report


def _merged(index, clean, robust):
    label = np.zeros(len(index), np.int32)
    arrays = {"index": np.asarray(index), "label": label}
    return SimpleNamespace(arrays=arrays, clean_correct=np.asarray(clean, bool),
                           robust_correct=np.asarray(robust, bool))


def test_rows_are_restricted_to_common_images_in_index_order():
    merged = {("relu", "true"): _merged([3, 1, 2, 0], [1, 1, 0, 0], [1, 0, 0, 0]),
              ("kaf", "true"): _merged([1, 2, 3], [1, 1, 1], [1, 1, 1])}
    rows = judge.common_rows(merged)
    assert rows[("relu", "true")].n == rows[("kaf", "true")].n == 3
    np.testing.assert_array_equal(rows[("relu", "true")].robust, [False, False, True])  # images 1, 2, 3
    with pytest.raises(ValueError, match="share no test image"):
        judge.common_rows({("relu", "true"): _merged([0], [1], [1]), ("kaf", "true"): _merged([1], [1], [1])})


def test_pairs_include_bases_and_the_best_fixed_activation():
    """The best fixed activation is the thesis's (swish), even where another fixed row scores higher here."""
    rng = np.random.default_rng(0)
    acts = ("relu", "elu", "swish", "kaf", "kaf_relu", "kaf_elu", "kaf_swish", "kaf_free")
    rob = {"relu": 0.40, "elu": 0.60, "swish": 0.45, "kaf": 0.5, "kaf_relu": 0.5, "kaf_elu": 0.5,
           "kaf_swish": 0.5, "kaf_free": 0.5}
    merged = {(a, "predicted"): _merged(np.arange(400), rng.random(400) < 0.8, rng.random(400) < rob[a]) for a in acts}
    rows = judge.common_rows(merged)
    got = judge.pairs(rows, "predicted")
    assert ("kaf_relu", "relu", "base") in got and ("swish", "relu", "base") in got
    assert ("kaf", "swish", "best fixed") in got and ("kaf_free", "swish", "best fixed") in got
    assert ("kaf_swish", "swish", "best fixed") not in got  # already its base comparison
    assert not any(b == "elu" and why == "best fixed" for _, b, why in got)
    assert len(judge.compare_all(rows)) == 2 * len(got)


def test_reading_follows_the_interval():
    a = np.array([1] * 300 + [0] * 100, bool)
    b = np.array([1] * 200 + [0] * 200, bool)
    merged = {("kaf", "true"): _merged(np.arange(400), a, a), ("relu", "true"): _merged(np.arange(400), b, b)}
    (robust, clean) = judge.compare_all(judge.common_rows(merged))
    assert robust.metric == "robust" and "kaf beats relu" in report.reading(robust)
    tie = {("kaf", "true"): _merged(np.arange(400), a, a), ("relu", "true"): _merged(np.arange(400), a[::-1], a[::-1])}
    (robust, _) = judge.compare_all(judge.common_rows(tie))
    assert "undecided at n=400" in report.reading(robust)
    assert "| kaf vs relu | base | true | robust |" in report.comparison_table([robust])


def test_a_difference_must_survive_holms_correction():
    """Eight rows, eleven robust comparisons per label mode (the fixed rows are identical here, swish is the thesis's
    best): kaf_relu's 14 vs 4 discordant images against relu and swish (McNemar p = 0.03, interval off 0) are no
    longer differences after Holm's correction (p x 9, third and fourth smallest of 11); kaf_free's 60 vs 0 still
    are."""
    relu = np.arange(400) < 160
    kaf_relu, kaf_free = relu.copy(), relu.copy()
    kaf_relu[160:174], kaf_relu[:4] = True, False
    kaf_free[160:220] = True
    robust_of = {"kaf_relu": kaf_relu, "kaf_free": kaf_free}
    merged = {(a, "true"): _merged(np.arange(400), np.ones(400, bool), robust_of.get(a, relu))
              for a in ("relu", "elu", "swish", "kaf", "kaf_relu", "kaf_elu", "kaf_swish", "kaf_free")}
    robust = [c for c in judge.compare_all(judge.common_rows(merged)) if c.metric == "robust"]
    assert len(robust) == 11 and all(c.holm_p >= c.result.mcnemar_p for c in robust)
    by_pair = {(c.a, c.b): c for c in robust}
    borderline = by_pair["kaf_relu", "relu"]
    assert borderline.result.mcnemar_p < 0.05 and borderline.result.interval[0] > 0
    assert [pair for pair, c in by_pair.items() if c.decided] == [("kaf_free", "relu"), ("kaf_free", "swish")]
    assert "undecided" in report.reading(borderline) and "Holm's adjusted p = 0.28" in report.reading(borderline)
    assert "kaf_free beats relu" in report.reading(by_pair["kaf_free", "relu"])
    assert "| Holm p |" in report.comparison_table(robust)


def test_a_clean_training_baseline_has_its_own_row_and_point():
    from kafrob.bench.store import Measurement
    from kafrob.bench.tiers import get_tier

    rows = (("resnet20-relu", 55.0, 30.0), ("resnet20-relu-clean", 85.0, 0.5))
    ms = [Measurement(case, "short", clean, robust, (clean - 1, clean + 1), (robust - 3, robust + 3), 10000, 1000,
                      3600.0, 1.2, robust - 5) for case, clean, robust in rows]
    table = report.results_table(ms, get_tier("short"), deltas=False)
    assert [line.split("|")[2].strip() for line in table.splitlines()[2:]] == ["relu", "relu (clean training)"]
    assert report.scatter_png(ms, get_tier("short"), "short", reference_points=False).startswith(b"\x89PNG")


def test_the_thesis_claims_are_read_from_decided_differences_only():
    """kaf_relu decidedly above relu supports "KAFs beat ReLU"; kaf_free decidedly above swish refutes "none beats
    Swish"; kaf equal to relu on 2,000 images leaves the thesis's +2.06 above its interval; every KAF row is set
    against relu and swish even where the base pairs do not ask for it."""
    n = 2000
    first = lambda k: np.arange(n) < k  # noqa: E731
    robust_of = {"swish": first(1000), "kaf_relu": first(1000), "kaf_free": first(1300)}
    merged = {(a, "predicted"): _merged(np.arange(n), np.ones(n, bool), robust_of.get(a, first(800)))
              for a in ("relu", "elu", "swish", "kaf", "kaf_relu", "kaf_elu", "kaf_swish", "kaf_free")}
    rows = judge.common_rows(merged)
    comparisons = judge.compare_all(rows, judge.claim_pairs(rows))
    assert {("kaf_elu", "relu"), ("kaf_swish", "relu"), ("kaf_relu", "swish")} <= {(c.a, c.b) for c in comparisons}
    lines = {line.split(" (thesis")[0]: line for line in
             report.claims_section(comparisons, judge.thesis_table()).splitlines() if line.startswith("* ")}
    assert "**supported**" in lines["* kaf_relu beats relu"]
    assert "**refuted** (kaf_free beats swish)" in lines["* kaf_free does not beat swish"]
    assert "thesis's +2.06 lies above the 95% interval" in lines["* kaf beats relu"]
    assert "not refuted (no gain decided; one of up to" in lines["* kaf_relu does not beat swish"]


def test_a_kaf_below_swish_on_the_interval_but_not_after_holm_reads_as_not_refuted_without_a_gain_left_open():
    from kafrob.stats import PairedComparison

    result = PairedComparison(200, 14, 32, -0.09, (-0.155, -0.024), 0.0114)
    c = judge.Comparison("kaf_relu", "swish", "best fixed", "predicted", "robust", result, holm_p=0.148)
    assert c.off_zero and not c.decided
    assert report.claim_reading(c, -2.44, beats=False) == (
        "predicted labels -9.0 [-15.5, -2.4]: not refuted (kaf_relu below swish on the 95% interval, not decided "
        "after Holm's correction at n=200)")


def test_cost_line_sums_both_label_modes_per_row():
    def merged(n, seconds):
        return SimpleNamespace(n=n, header={"seconds": seconds})

    line = report.cost_line({("relu", "predicted"): merged(1200, 5400.0), ("relu", "true"): merged(1000, 1800.0),
                             ("kaf", "predicted"): merged(1000, 900.0)})
    assert "relu 2.00 h (1200 predicted, 1000 true); kaf 0.25 h (1000 predicted)." in line


def test_a_verdict_says_whether_it_is_interim_confirmatory_or_a_further_look():
    assert "Interim reading: n = 1400 of the 2000 planned" in report.interim_note(1400)
    assert "Confirmatory reading: n = 2000, the planned n" in report.interim_note(2000)
    assert "Confirmatory reading: n = 1400" in report.interim_note(1400, planned=1400)
    assert "A further look: n = 4000, beyond the planned 2000" in report.interim_note(4000)
