"""Binomial confidence intervals: a robust accuracy on n images is a proportion, report it as one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval (95% by default); well behaved near 0 and 1, unlike the normal one."""
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class PairedComparison:
    """Two classifiers judged on the same n images: A's accuracy minus B's, with a paired 95% interval."""

    n: int
    only_a: int  # images A gets right and B wrong
    only_b: int
    difference: float  # accuracy of A - accuracy of B
    interval: tuple[float, float]
    mcnemar_p: float  # exact two-sided McNemar test of "A and B are equally accurate"


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p-value: the discordant pairs under Binomial(only_a + only_b, 1/2)."""
    m = only_a + only_b
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**m)


def paired_comparison(correct_a, correct_b, z: float = 1.959963984540054) -> PairedComparison:
    """Compare per-example correctness of A and B on the same images (Newcombe 1998, method 10: Wilson
    intervals of both accuracies combined with the pairs' correlation; exact McNemar test)."""
    a_right = [bool(v) for v in correct_a]
    b_right = [bool(v) for v in correct_b]
    if len(a_right) != len(b_right) or not a_right:
        raise ValueError("paired_comparison needs two equally long, non-empty per-example results")
    n = len(a_right)
    both = sum(x and y for x, y in zip(a_right, b_right, strict=True))
    only_a = sum(x and not y for x, y in zip(a_right, b_right, strict=True))
    only_b = sum(y and not x for x, y in zip(a_right, b_right, strict=True))
    neither = n - both - only_a - only_b
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    l1, u1 = wilson_interval(both + only_a, n, z)
    l2, u2 = wilson_interval(both + only_b, n, z)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b
    if margins == 0:
        phi = 0.0
    else:
        phi = (max(cross - n / 2, 0) if cross > 0 else cross) / math.sqrt(margins)
    d = p1 - p2
    lo = d - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    hi = d + math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return PairedComparison(n, only_a, only_b, d, (max(-1.0, lo), min(1.0, hi)), mcnemar_exact(only_a, only_b))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (in the given order): rejecting those <= alpha holds the chance of any
    false rejection in the family at alpha."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted, running = [1.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted
