"""Tables and figures of the benchmark's numbers: a tier's measurements (deltas against the tier's own
reference), and the released models' verdict (rows, paired comparisons, readings, figure).

Figures show only panels with data, 95% intervals as error bars, and the reference points overlaid.
"""

from __future__ import annotations

import io

from kafrob.activations import is_kaf
from kafrob.bench.cases import BY_ID, experiment_of, row_label
from kafrob.bench.judge import (
    ALPHA,
    CLAIMS,
    THESIS_ROBUST_N,
    Comparison,
    RowResult,
    claim_pairs,
    common_rows,
    compare_all,
    thesis_table,
)
from kafrob.bench.shards import Merged
from kafrob.bench.store import Measurement, reference, reference_file
from kafrob.bench.tiers import Reference, Tier


def _reference_values(tier: Tier) -> dict[str, tuple[float, float]]:
    """case -> (clean, robust) % of the tier's reference: the thesis table, or the stored suite reference."""
    if tier.reference is Reference.THESIS:
        return {case: (e.thesis_accuracy, e.thesis_robustness) for case, e in BY_ID.items()}
    if not reference_file(tier).exists():
        return {}
    return {case: (r["clean_accuracy"], r["robust_accuracy"]) for case, r in reference(tier)["results"].items()}


def results_table(measurements: list[Measurement], tier: Tier, fmt: str = "github", deltas: bool = True) -> str:
    """One row per case with 95% intervals; with ``deltas``, the tier's reference and the differences from it."""
    from tabulate import tabulate

    ref = _reference_values(tier) if deltas else {}
    name = tier.reference.value
    true_labels = any(m.robust_accuracy_true is not None for m in measurements)
    rows = []
    for m in measurements:
        row = [experiment_of(m.case).model, row_label(m.case),
               f"{m.clean_accuracy:.2f} [{m.clean_interval[0]:.1f}, {m.clean_interval[1]:.1f}]",
               f"{m.robust_accuracy:.2f} [{m.robust_interval[0]:.1f}, {m.robust_interval[1]:.1f}]", m.n_robust,
               f"{m.seconds / 3600:.2f}"]
        if true_labels:
            row.insert(4, "-" if m.robust_accuracy_true is None else f"{m.robust_accuracy_true:.2f}")
        if m.case in ref:
            acc, rob = ref[m.case]
            row += [f"{acc:.2f}", f"{rob:.2f}", f"{m.clean_accuracy - acc:+.2f}", f"{m.robust_accuracy - rob:+.2f}"]
        elif ref:
            row += ["-"] * 4
        rows.append(row)
    headers = ["model", "activation", "clean % [95% CI]", f"PGD {tier.attack.label_mode} labels % [95% CI]", "n PGD",
               "hours"]
    if true_labels:
        headers.insert(4, "PGD true labels %")
    if ref:
        headers += [f"{name} clean %", f"{name} PGD %", "delta clean", "delta PGD"]
    return tabulate(rows, headers=headers, tablefmt=fmt)


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _error(value: float, interval: tuple[float, float]) -> list[list[float]]:
    """Error-bar lengths below and above (never negative: an interval's bound can round past its point)."""
    return [[max(value - interval[0], 0.0)], [max(interval[1] - value, 0.0)]]


def scatter_png(measurements: list[Measurement], tier: Tier, title: str, reference_points: bool = True) -> bytes:
    """Clean vs PGD accuracy per case with 95% intervals, one panel per model that has data, and (with
    ``reference_points``) the tier's reference points (x) joined to the measurements."""
    plt = _pyplot()
    models = list(dict.fromkeys(experiment_of(m.case).model for m in measurements))
    ref = _reference_values(tier) if reference_points else {}
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for m in (m for m in measurements if experiment_of(m.case).model == model):
            kaf = is_kaf(experiment_of(m.case).activation)
            ax.errorbar(m.clean_accuracy, m.robust_accuracy, xerr=_error(m.clean_accuracy, m.clean_interval),
                        yerr=_error(m.robust_accuracy, m.robust_interval), fmt="*" if kaf else "o",
                        color="tab:red" if kaf else "tab:blue", capsize=2, markersize=7)
            ax.annotate(row_label(m.case), (m.clean_accuracy, m.robust_accuracy), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
            if m.case in ref:
                acc, rob = ref[m.case]
                ax.plot([m.clean_accuracy, acc], [m.robust_accuracy, rob], color="grey", linewidth=0.5)
                ax.scatter(acc, rob, marker="x", color="black", s=25)
        ax.set_title(f"{model}: o fixed, * KAF (95% CI)" + (f"; x {tier.reference.value}" if ref else ""))
        ax.set_xlabel("clean accuracy %")
        ax.set_ylabel("PGD accuracy %")
    fig.suptitle(title)
    return _png(fig)


def comparison_table(comparisons: list[Comparison]) -> str:
    lines = ["| A vs B | why | labels | metric | A - B (points) [95% CI] | only A / only B | McNemar p | Holm p |",
             "|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        r = c.result
        holm_p = "-" if c.holm_p is None else f"{c.holm_p:.3g}"
        lines.append(f"| {c.a} vs {c.b} | {c.why} | {c.label_mode} | {c.metric} | {100 * r.difference:+.2f} "
                     f"[{100 * r.interval[0]:+.2f}, {100 * r.interval[1]:+.2f}] | {r.only_a} / {r.only_b} | "
                     f"{r.mcnemar_p:.3g} | {holm_p} |")
    return "\n".join(lines) + "\n"


def reading(c: Comparison) -> str:
    """What one comparison supports at this n: a difference (95% interval off 0 and Holm-adjusted McNemar p below
    ALPHA), or the bounds of an undecided one."""
    lo, hi = (100 * v for v in c.result.interval)
    if c.decided and lo > 0:
        return f"{c.a} beats {c.b} ({c.metric}, {c.label_mode} labels) by {lo:.1f} to {hi:.1f} points"
    if c.decided:
        return f"{c.a} is worse than {c.b} ({c.metric}, {c.label_mode} labels) by {-hi:.1f} to {-lo:.1f} points"
    text = (f"{c.a} vs {c.b} ({c.metric}, {c.label_mode} labels): undecided at n={c.result.n}, the difference "
            f"lies in [{lo:+.1f}, {hi:+.1f}] points")
    if c.off_zero:
        text += (f" (its interval excludes 0, but Holm's adjusted p = {c.holm_p:.2g} over this metric's "
                 f"{c.label_mode}-label comparisons is not below {ALPHA})")
    return text


def claim_reading(c: Comparison, thesis_difference: float, beats: bool) -> str:
    """What the data says of the thesis's claim that ``c.a`` beats (``beats``) or does not beat ``c.b``, whose
    robust-accuracy difference in its table is ``thesis_difference`` points."""
    lo, hi = (100 * v for v in c.result.interval)
    said = f"{c.label_mode} labels {100 * c.result.difference:+.1f} [{lo:+.1f}, {hi:+.1f}]"
    if c.decided:
        holds = (lo > 0) == beats
        return f"{said}: **{'supported' if holds else 'refuted'}** ({c.a} {'beats' if lo > 0 else 'is below'} {c.b})"
    if beats and hi < thesis_difference:
        return (f"{said}: undecided; a gain as large as the thesis's {thesis_difference:+.2f} lies above the 95% "
                f"interval")
    if beats:
        return f"{said}: cannot be decided at n={c.result.n}"
    if hi < 0:
        return (f"{said}: not refuted ({c.a} below {c.b} on the 95% interval, not decided after Holm's correction at "
                f"n={c.result.n})")
    return f"{said}: not refuted (no gain decided; one of up to {hi:+.1f} points not excluded at n={c.result.n})"


def claims_section(comparisons: list[Comparison], thesis: dict[str, tuple[float, float]]) -> str:
    """Markdown: each KAF row against each claim of CLAIMS, in both label modes; a claim is supported or refuted only
    by a decided difference (Holm), else the interval says what remains possible."""
    by_pair = {(c.a, c.b, c.label_mode): c for c in comparisons if c.metric == "robust"}
    modes = sorted({c.label_mode for c in by_pair.values()})
    lines = []
    for fixed, beats in CLAIMS:
        for kaf in dict.fromkeys(a for a, b, _ in by_pair if b == fixed and a.startswith("kaf")):
            gap = thesis[kaf][1] - thesis[fixed][1]
            readings = "; ".join(claim_reading(by_pair[kaf, fixed, m], gap, beats) for m in modes
                                 if (kaf, fixed, m) in by_pair)
            lines.append(f"* {kaf} {'beats' if beats else 'does not beat'} {fixed} (thesis {gap:+.2f}): {readings}")
    return ("## The thesis's claims\n\nIts ResNet20 table (PGD on predicted labels) has every KAF row above ReLU and "
            "none above Swish. Robust accuracy, A - B in points [paired 95% CI]; supported or refuted only by a "
            "difference that survives Holm's correction:\n\n" + "\n".join(lines) + "\n")


def paired_section(comparisons: list[Comparison]) -> str:
    """Markdown: the paired comparisons' table, then what each robust-accuracy comparison supports."""
    return (f"## Paired comparisons\n\n{comparison_table(comparisons)}\n## Readings\n\n"
            + "".join(f"* {reading(c)}\n" for c in comparisons if c.metric == "robust"))


def rows_table(rows: dict[tuple[str, str], RowResult], thesis: dict[str, tuple[float, float]],
               attack: str = "PGD") -> str:
    """Per row: clean and robust accuracy per label mode with Wilson 95% intervals, and the thesis's numbers."""
    modes = sorted({mode for _, mode in rows})
    head = ("| activation | n | clean % [95% CI] | thesis acc % | "
            + " | ".join(f"{attack} {m} labels % [95% CI]" for m in modes) + " | thesis rob % (predicted labels) |\n"
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


def verdict_png(rows: dict[tuple[str, str], RowResult], thesis: dict[str, tuple[float, float]], attack: str) -> bytes:
    """Robust accuracy per row with 95% intervals, one marker per label mode, the thesis's points overlaid."""
    plt = _pyplot()
    acts = list(dict.fromkeys(a for a, _ in rows))
    modes = sorted({mode for _, mode in rows})
    fig, ax = plt.subplots(figsize=(8, 5))
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
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), frameon=False)  # below: not over a bar
    return _png(fig)


def cost_line(merged: dict[tuple[str, str], Merged]) -> str:
    """Per row, the hours its stored shards took (both label modes) and the images each mode's shards cover."""
    hours: dict[str, float] = {}
    images: dict[str, list[str]] = {}
    for (act, mode), m in merged.items():
        hours[act] = hours.get(act, 0.0) + m.header["seconds"] / 3600
        images.setdefault(act, []).append(f"{m.n} {mode}")
    return ("Hours of the stored shards per row (each shard's evaluating process, wall clock, both label modes; "
            "machines and background load vary, see the shards' headers): "
            + "; ".join(f"{act} {h:.2f} h ({', '.join(images[act])})" for act, h in hours.items()) + ".\n")


def interim_note(n: int, planned: int = THESIS_ROBUST_N) -> str:
    """What kind of reading a verdict at ``n`` is: interim below the planned n (the store is read after every shard,
    and a difference near the threshold crosses it at one n and not the next: repeated looks at a growing sample),
    confirmatory at it, a further look beyond it."""
    if n == planned:
        return (f"**Confirmatory reading: n = {n}, the planned n** (fixed in advance; the readings at smaller n were "
                f"interim).\n\n")
    if n > planned:
        return (f"**A further look: n = {n}, beyond the planned {planned}**; the confirmatory reading is the one at "
                f"n = {planned} (`kafrob verdict`'s default `--n`), and a decision that differs here is read with "
                f"the repeated looks in mind.\n\n")
    return (f"**Interim reading: n = {n} of the {planned} planned** (fixed in advance). A decision "
            f"read now can change as shards arrive, and repeated looks at a growing sample make a single crossing "
            f"of the threshold less trustworthy than its p-value; the confirmatory reading is the one at "
            f"n = {planned}.\n\n")


def verdict(merged: dict[tuple[str, str], Merged], attack: str, seed: int, short: str = "PGD",
            planned: int = THESIS_ROBUST_N) -> tuple[str, bytes]:
    """The released models' verdict from merged shards ({(activation, label mode): Merged}): markdown and figure.
    ``attack`` names the attack in full, ``short`` in the table's columns; ``planned``: the confirmatory n."""
    from kafrob.arithmetic import label

    rows = common_rows(merged)
    thesis = thesis_table()
    comparisons = compare_all(rows, claim_pairs(rows))
    header = next(iter(merged.values())).header
    n = next(iter(rows.values())).n
    md = (f"# Released thesis ResNet20 models: {attack}\n\n"
          f"{n} common test images (stratified, kafrob.bench.shards order, seed {seed}); "
          f"arithmetic: {label(header)}; TF {header['tensorflow']}.\n\n{interim_note(n, planned)}"
          f"{rows_table(rows, thesis, short)}\n"
          + cost_line(merged) + "\n"
          + claims_section(comparisons, thesis) + "\n" + paired_section(comparisons))
    return md, verdict_png(rows, thesis, attack)
