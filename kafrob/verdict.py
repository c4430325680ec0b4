"""The released models' verdict: per-row accuracies and paired comparisons from merged evaluation shards.

Every row is attacked on the same images (kafrob.shards' fixed order), so rows are compared pairwise on
those images: the difference in accuracy with Newcombe's paired 95% interval and the exact McNemar test
(kafrob.stats). The pairs: each KAF against the fixed activation it was initialised from (kaf and kaf_free,
random-initialised, against relu), swish and elu against relu, and every KAF against the best fixed
activation of that label mode: is a gain due to the KAF's trainability, or to a smoothness that a fixed
smooth activation also has?
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kafrob.stats import PairedComparison, paired_comparison, wilson_interval

BASE_PAIRS = (("kaf_relu", "relu"), ("kaf_elu", "elu"), ("kaf_swish", "swish"), ("kaf", "relu"),
              ("kaf_free", "relu"), ("swish", "relu"), ("elu", "relu"))
FIXED = ("relu", "elu", "swish")


@dataclass(frozen=True)
class RowResult:
    """One row in one label mode, on the images every compared row covers."""

    activation: str
    label_mode: str
    n: int
    clean: np.ndarray  # per-example correctness
    robust: np.ndarray

    def accuracy(self, metric: str) -> tuple[float, tuple[float, float]]:
        values = getattr(self, metric)
        k = int(values.sum())
        return k / self.n, wilson_interval(k, self.n)


def common_rows(merged: dict[tuple[str, str], object]) -> dict[tuple[str, str], RowResult]:
    """{(activation, label mode): RowResult} restricted to the test images that every entry covers."""
    shared = set.intersection(*(set(m.arrays["index"].tolist()) for m in merged.values()))
    if not shared:
        raise ValueError("the evaluations share no test image")
    out = {}
    for key, m in merged.items():
        keep = np.isin(m.arrays["index"], sorted(shared))
        order = np.argsort(m.arrays["index"][keep])
        out[key] = RowResult(key[0], key[1], int(keep.sum()), m.clean_correct[keep][order],
                             m.robust_correct[keep][order])
    return out


def pairs(rows: dict[tuple[str, str], RowResult], label_mode: str) -> list[tuple[str, str, str]]:
    """(a, b, why) for every comparison available in ``label_mode``."""
    have = {a for a, mode in rows if mode == label_mode}
    out = [(a, b, "base") for a, b in BASE_PAIRS if a in have and b in have]
    fixed = [f for f in FIXED if f in have]
    if fixed:
        best = max(fixed, key=lambda f: rows[(f, label_mode)].robust.mean())
        out += [(a, best, "best fixed") for a in sorted(have) if a.startswith("kaf")
                and (a, best, "base") not in out]
    return out


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    why: str
    label_mode: str
    metric: str
    result: PairedComparison


def compare_all(rows: dict[tuple[str, str], RowResult]) -> list[Comparison]:
    modes = sorted({mode for _, mode in rows})
    return [Comparison(a, b, why, mode, metric,
                       paired_comparison(getattr(rows[(a, mode)], metric), getattr(rows[(b, mode)], metric)))
            for mode in modes for a, b, why in pairs(rows, mode) for metric in ("robust", "clean")]


def comparison_table(comparisons: list[Comparison]) -> str:
    lines = ["| A vs B | why | labels | metric | A - B (points) [95% CI] | only A / only B | McNemar p |",
             "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        r = c.result
        lines.append(f"| {c.a} vs {c.b} | {c.why} | {c.label_mode} | {c.metric} | {100 * r.difference:+.2f} "
                     f"[{100 * r.interval[0]:+.2f}, {100 * r.interval[1]:+.2f}] | {r.only_a} / {r.only_b} | "
                     f"{r.mcnemar_p:.3g} |")
    return "\n".join(lines) + "\n"


def reading(c: Comparison) -> str:
    """What one comparison supports at this n: a difference, its absence within a bound, or nothing."""
    lo, hi = (100 * v for v in c.result.interval)
    if lo > 0:
        return f"{c.a} beats {c.b} ({c.metric}, {c.label_mode} labels) by {lo:.1f} to {hi:.1f} points"
    if hi < 0:
        return f"{c.a} is worse than {c.b} ({c.metric}, {c.label_mode} labels) by {-hi:.1f} to {-lo:.1f} points"
    return (f"{c.a} vs {c.b} ({c.metric}, {c.label_mode} labels): undecided at n={c.result.n}, "
            f"the difference lies in [{lo:+.1f}, {hi:+.1f}] points")


def rows_table(rows: dict[tuple[str, str], RowResult], thesis: dict[str, tuple[float, float]]) -> str:
    """Per row: clean and robust accuracy per label mode with Wilson 95% intervals, and the thesis's numbers."""
    modes = sorted({mode for _, mode in rows})
    head = ("| activation | n | clean % [95% CI] | thesis acc % | "
            + " | ".join(f"PGD {m} labels % [95% CI]" for m in modes) + " | thesis rob % (predicted labels) |\n"
            + "|---|---|---|---|" + "---|" * len(modes) + "---|\n")
    body = ""
    for act in dict.fromkeys(a for a, _ in rows):
        first = rows[(act, modes[0])]
        clean, (lo, hi) = first.accuracy("clean")
        cells = []
        for m in modes:
            if (act, m) in rows:
                r, (rlo, rhi) = rows[(act, m)].accuracy("robust")
                cells.append(f"{100 * r:.2f} [{100 * rlo:.1f}, {100 * rhi:.1f}]")
            else:
                cells.append("-")
        acc, rob = thesis.get(act, (float("nan"), float("nan")))
        body += (f"| {act} | {first.n} | {100 * clean:.2f} [{100 * lo:.1f}, {100 * hi:.1f}] | {acc:.2f} | "
                 + " | ".join(cells) + f" | {rob:.2f} |\n")
    return head + body


def figure_png(rows: dict[tuple[str, str], RowResult], thesis: dict[str, tuple[float, float]], attack: str) -> bytes:
    """Robust accuracy per row with 95% intervals, one marker per label mode, the thesis's points overlaid."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acts = list(dict.fromkeys(a for a, _ in rows))
    modes = sorted({mode for _, mode in rows})
    fig, ax = plt.subplots(figsize=(8, 4))
    for j, mode in enumerate(modes):
        xs, ys, err = [], [], [[], []]
        for i, act in enumerate(acts):
            if (act, mode) in rows:
                r, (lo, hi) = rows[(act, mode)].accuracy("robust")
                xs.append(i + (j - (len(modes) - 1) / 2) * 0.2)
                ys.append(100 * r)
                err[0].append(100 * (r - lo))
                err[1].append(100 * (hi - r))
        ax.errorbar(xs, ys, yerr=err, fmt="o", capsize=3, label=f"kafrob, {attack}, {mode} labels")
    tx = [i for i, a in enumerate(acts) if a in thesis]
    ax.scatter(tx, [thesis[acts[i]][1] for i in tx], marker="x", color="black", label="thesis (predicted labels)")
    ax.set_xticks(range(len(acts)), acts, rotation=30)
    ax.set_ylabel("robust accuracy % (95% CI)")
    n = next(iter(rows.values())).n
    ax.set_title(f"Released thesis ResNet20 models, n = {n} common test images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
