"""Binomial and paired intervals, and the exact McNemar test, against published worked examples."""

from __future__ import annotations

import numpy as np
import pytest

from kafrob.stats import holm, mcnemar_exact, paired_comparison, wilson_interval


def test_wilson_interval_newcombe_example():
    # Newcombe (1998a), Table I: 81/263 -> 0.2553 to 0.3662
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=5e-5) and hi == pytest.approx(0.3662, abs=5e-5)


def test_paired_interval_covers_95_percent():
    """Newcombe's method 10 on correlated pairs like two robust models on the same images (accuracies 0.50
    and 0.53, 85% of images judged alike): the interval holds the true difference in ~95% of samples."""
    rng = np.random.default_rng(0)
    # P(both right), P(only A), P(only B), P(neither): accuracies 0.50 and 0.53
    cells = np.array([0.44, 0.06, 0.09, 0.41])
    truth = (cells[0] + cells[1]) - (cells[0] + cells[2])
    covered = 0
    trials = 1000
    for _ in range(trials):
        kind = rng.choice(4, size=500, p=cells)
        c = paired_comparison(np.isin(kind, (0, 1)), np.isin(kind, (0, 2)))
        assert c.interval[0] <= c.difference <= c.interval[1]
        covered += c.interval[0] <= truth <= c.interval[1]
    assert 0.93 <= covered / trials <= 0.97


def test_paired_interval_is_antisymmetric():
    a = [1] * 30 + [1] * 9 + [0] * 2 + [0] * 9
    b = [1] * 30 + [0] * 9 + [1] * 2 + [0] * 9
    ab, ba = paired_comparison(a, b), paired_comparison(b, a)
    assert (ab.n, ab.only_a, ab.only_b) == (50, 9, 2)
    assert ab.difference == pytest.approx(7 / 50) == pytest.approx(-ba.difference)
    assert ab.interval == pytest.approx((-ba.interval[1], -ba.interval[0]))
    assert ab.mcnemar_p == ba.mcnemar_p


def test_mcnemar_exact():
    assert mcnemar_exact(9, 2) == pytest.approx(0.06543, abs=5e-5)  # 2 * P(Bin(11, 1/2) <= 2) = 134/2048
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)


def test_paired_comparison_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="equally long"):
        paired_comparison([1, 0], [1])


def test_holm_adjusts_step_down_and_keeps_the_order():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1, made monotone: 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([0.2]) == [0.2] and holm([]) == []


def test_holm_holds_the_family_wise_error_rate():
    """Ten true null hypotheses: some unadjusted p < 0.05 in ~40% of families, some Holm p < 0.05 in <= 5%."""
    rng = np.random.default_rng(0)
    p = rng.random((4000, 10))
    assert (p < 0.05).any(axis=1).mean() > 0.35
    assert np.mean([min(holm(list(row))) < 0.05 for row in p]) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 4000)
