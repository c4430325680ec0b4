"""Judging measurements: a tier's case against its reference, the released models against the thesis and each other.

* Trained tiers (``compare``): a suite reference pins this suite's own measurement (tolerances from the measured
  spread, ``<tier>_spread.json``, kafrob.bench.spread) and the last epoch's training loss; a floor reference asks a
  re-trained model to reach the kept model's accuracies (clean, PGD in both label modes) less ``Tier.floor_margin``;
  a thesis reference allows the tier's tolerance plus the measurement's 95% sampling half-width.
* Stored evaluations (``recompute``: the released models, the models a tier trained and kept): the code still
  computes the stored per-example results (a stored recheck shard of ``RECHECK_IMAGES`` images per stored PGD loss,
  attacked again in a child process with the stored arithmetic: identical, since random starts are per image).
* Released models, per row (``against_thesis``): the stored numbers against the thesis: robust
  accuracy (predicted labels, n as stored) within the 95% half-width of the difference of two independent
  samples (the thesis's 2,000 images drawn with replacement, ours) plus the JPEG shift; clean accuracy (all
  10,000) at the thesis's plus the JPEG shift, within the two samples' half-width and twice the shift's spread.
  The JPEG shift is the mean clean-accuracy difference (ours - thesis) of the *other* rows (leave one out, so a
  row cannot excuse itself); that it is no larger on robust accuracy is an assumption (no pixel-exact CIFAR-10).
* Released models against each other (``compare_all``): every row is attacked on the same images, so rows are
  compared pairwise on them: the accuracy difference with Newcombe's paired 95% interval and the exact McNemar
  test (kafrob.stats), its p adjusted by Holm over the comparisons of one metric and label mode; a difference is
  read as one only when the interval excludes zero and the adjusted p is below ALPHA. The pairs: each KAF against
  the fixed activation it was initialised from (kaf and kaf_free, random-initialised, against relu), swish and elu
  against relu, and every KAF against the best fixed activation: is a gain due to the KAF's trainability, or to a
  smoothness that a fixed smooth activation also has? "Best" is the thesis's most robust fixed row (swish), fixed
  before the data: the fixed row that happens to score highest on our images would be biased upwards. The verdict
  adds every KAF against relu and swish (``claim_pairs``) to read the thesis's claims (CLAIMS;
  kafrob.bench.report.claims_section).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from kafrob.arithmetic import (
    REFERENCE_COMMAND,
    eigen_blocking,
    env_for,
    isa_independent,
    kaf_kernels,
    label,
    machine,
    machine_slug,
    same_machine,
    vendor_independent,
)
from kafrob.attacks.pgd import Reduction
from kafrob.bench.cases import BY_ID, EXPERIMENTS, Experiment
from kafrob.bench.shards import (
    FIELDS,
    SHARD_IMAGES,
    SHARDS_DIR,
    THESIS_CLEAN_N,
    Merged,
    ShardError,
    computed_with,
    finished,
    load_shard,
    protocol_spec,
    stored,
    stored_clean_accuracy,
)
from kafrob.bench.store import Measurement, reference, reference_file
from kafrob.bench.tiers import Reference, Tier
from kafrob.stats import PairedComparison, holm, paired_comparison, wilson_interval

METRICS = (("clean_accuracy", "thesis_accuracy"), ("robust_accuracy", "thesis_robustness"))

# Suite references also pin the last epoch's mean FBF training loss: at the smoke budget several models
# are still near chance accuracy, where a broken KAF gradient or data pipeline would not move the
# accuracies, but it moves the loss trajectory. CPU runs are seeded, so the loss repeats to ~1e-6 on
# one machine; other arithmetic moves it by the spread measured in <tier>_spread.json (kafrob.bench.spread),
# which sets the tolerances where it exists. LOSS_TOLERANCE serves a suite reference without one.
LOSS_TOLERANCE = 0.02

THESIS_ROBUST_N = 2000  # the thesis's PGD sample, drawn with replacement

# The n at which a verdict's reading is confirmatory, fixed before the data: the thesis's for PGD, the AutoAttack
# minimum per row asked for the released models (docs/attacks.md); smaller n are interim readings.
PLANNED_N = {"pgd": THESIS_ROBUST_N, "autoattack": 1000}

RECHECK_IMAGES = 10

Z95 = 1.959963984540054

ALPHA = 0.05  # family-wise error rate of the paired comparisons (Holm)

BASE_PAIRS = (("kaf_relu", "relu"), ("kaf_elu", "elu"), ("kaf_swish", "swish"), ("kaf", "relu"),
              ("kaf_free", "relu"), ("swish", "relu"), ("elu", "relu"))

FIXED = ("relu", "elu", "swish")

# The thesis's ResNet20 table read as claims on robust accuracy (its protocol: predicted labels): every KAF row beats
# ReLU (by 1.3-2.6 points), none beats Swish (its most robust row). (fixed activation, the KAF rows beat it)
CLAIMS = (("relu", True), ("swish", False))


def expected_values(e: Experiment, tier: Tier) -> dict[str, float]:
    """The numbers a case is held to: the thesis table, or this suite's stored measurement (+ its loss)."""
    if tier.reference is Reference.THESIS:
        return {m: getattr(e, t) for m, t in METRICS}
    row = reference_row(e.id, tier)
    expected = {m: row[m] for m, _ in METRICS}
    if row.get("train_loss") is not None:
        expected["train_loss"] = row["train_loss"]
    return expected


def reference_row(case: str, tier: Tier) -> dict:
    rows = reference(tier)["results"]
    if case not in rows:
        raise KeyError(f"{reference_file(tier)} has no row {case}; regenerate the {tier.name} references")
    return rows[case]


def below_floors(m: Measurement, row: dict, margin: float) -> list[str]:
    """Failures where a re-trained model's accuracy lies more than ``margin`` points under the kept model's."""
    failures = []
    for metric in ("clean_accuracy", "robust_accuracy", "robust_accuracy_true"):
        measured, kept = getattr(m, metric), row.get(metric)
        if kept is not None and (measured is None or measured < kept - margin):
            shown = "nothing" if measured is None else f"{measured:.2f}%"
            failures.append(f"{m.case} {metric}: measured {shown}, floor {kept - margin:.2f}% (the kept model's "
                            f"{kept:.2f}% less {margin} points)")
    return failures


def reference_kernels(tier: Tier) -> str | None:
    """The KAF kernels a suite reference was measured with (None: thesis references, or not recorded)."""
    if tier.reference is Reference.THESIS or not reference_file(tier).exists():
        return None
    return reference(tier).get("environment", {}).get("kaf_kernels")


def tolerances(tier: Tier) -> dict[str, float]:
    """Allowed |measured - expected| per metric: for suite references the ones set from the measured spread
    (``reference_results/<tier>_spread.json``, kafrob.bench.spread), else the tier's (thesis references)."""
    spread = reference_file(tier).with_name(f"{tier.name}_spread.json")
    if tier.reference is Reference.SUITE and spread.exists():
        return {m: t["tolerance"] for m, t in json.loads(spread.read_text())["tolerances"].items()}
    return {"clean_accuracy": tier.tolerance, "robust_accuracy": tier.tolerance, "train_loss": LOSS_TOLERANCE}


def fbf_margin(fbf: Measurement, clean: Measurement, tier: Tier) -> list[str]:
    """Failures where FBF's robust accuracy (either label mode) beats the clean-training baseline's by less than the
    kept models' margin less ``Tier.floor_margin``."""
    failures = []
    kept = {m.case: reference_row(m.case, tier) for m in (fbf, clean)}
    for metric in ("robust_accuracy", "robust_accuracy_true"):
        kept_gap = kept[fbf.case][metric] - kept[clean.case][metric]
        gap = getattr(fbf, metric) - getattr(clean, metric)
        if gap < kept_gap - tier.floor_margin:
            failures.append(f"{fbf.case} {metric}: FBF beats clean training by {gap:+.2f} points, the kept models by "
                            f"{kept_gap:+.2f}; floor {kept_gap - tier.floor_margin:+.2f} (less {tier.floor_margin})")
    return failures


def compare(m: Measurement, tier: Tier) -> list[str]:
    """Failures as readable lines; thesis references also allow the measurement's 95% sampling half-width."""
    if tier.reference is Reference.FLOORS:
        return below_floors(m, reference_row(m.case, tier), tier.floor_margin)
    e = BY_ID[m.case]
    failures = []
    measured_with = reference_kernels(tier)
    hint = ""
    if e.activation.startswith("kaf") and measured_with is not None and measured_with != kaf_kernels():
        hint = (f" [the references were measured with the {measured_with} KAF kernels, this run used the "
                f"{kaf_kernels()} ones (see the README, KAF kernels)]")
    allowed_by_metric = tolerances(tier)
    for metric, expected in expected_values(e, tier).items():
        measured = getattr(m, metric)
        if metric == "train_loss":
            allowed = allowed_by_metric[metric]
            if measured is None or abs(measured - expected) > allowed:
                failures.append(f"{e.id} train_loss: measured {measured}, expected {expected:.4f} (suite), "
                                f"allowed +-{allowed}: the training trajectory changed{hint}")
            continue
        lo, hi = getattr(m, metric.replace("accuracy", "interval"))
        allowed = allowed_by_metric[metric] + ((hi - lo) / 2 if tier.reference is Reference.THESIS else 0.0)
        if abs(measured - expected) > allowed:
            failures.append(f"{e.id} {metric}: measured {measured:.2f}% (95% CI {lo:.2f}-{hi:.2f}), expected "
                            f"{expected:.2f}% ({tier.reference}), delta {measured - expected:+.2f}, allowed "
                            f"+-{allowed:.2f}{hint}")
    return failures


def _half_width(p_a: float, n_a: int, p_b: float, n_b: int) -> float:
    """95% half-width (points) of the difference of two independent sample proportions given in percent."""
    return 100 * Z95 * np.sqrt(p_a / 100 * (1 - p_a / 100) / n_a + p_b / 100 * (1 - p_b / 100) / n_b)


@dataclass(frozen=True)
class Check:
    metric: str
    measured: float
    n: int
    expected: float
    allowed: float
    detail: str

    @property
    def passed(self) -> bool:
        return abs(self.measured - self.expected) <= self.allowed

    def line(self, activation: str) -> str:
        return (f"resnet20-{activation} {self.metric}: stored {self.measured:.2f}% (n={self.n}), expected "
                f"{self.expected:.2f}%, delta {self.measured - self.expected:+.2f}, allowed +-{self.allowed:.2f} "
                f"({self.detail})")


def against_thesis(activation: str, thesis: dict[str, tuple[float, float]], clean: dict[str, float],
                   robust: Merged) -> list[Check]:
    """The stored numbers of one row against the thesis table (``thesis``: activation -> (clean, robust) %)."""
    others = [clean[a] - thesis[a][0] for a in thesis if a != activation and a in clean]
    shift, spread = float(np.mean(others)), float(np.std(others, ddof=1))
    t_clean, t_robust = thesis[activation]
    c = clean[activation]
    r = 100 * float(robust.robust_correct.mean())
    return [
        Check("clean accuracy", c, THESIS_CLEAN_N, t_clean + shift,
              _half_width(c, THESIS_CLEAN_N, t_clean, THESIS_CLEAN_N) + 2 * spread,
              f"thesis {t_clean:.2f} + JPEG shift {shift:+.2f} from the other rows; two samples' 95% half-width "
              f"+ 2 x shift spread {spread:.2f}"),
        Check("robust accuracy", r, robust.n, t_robust,
              _half_width(r, robust.n, t_robust, THESIS_ROBUST_N) + abs(shift),
              f"thesis {t_robust:.2f} (n={THESIS_ROBUST_N}); two samples' 95% half-width + |JPEG shift| "
              f"{abs(shift):.2f}"),
    ]


def thesis_table() -> dict[str, tuple[float, float]]:
    """The thesis's ResNet20 rows: activation -> (clean %, robust %)."""
    return {e.activation: (e.thesis_accuracy, e.thesis_robustness) for e in EXPERIMENTS if e.model == "resnet20"}


def released_failures(activation: str) -> list[str]:
    """``against_thesis`` for one stored row, printed; failures as lines."""
    checks = against_thesis(activation, thesis_table(), stored_clean_accuracy(), stored(activation))
    print("".join(f"\n{'ok  ' if c.passed else 'FAIL'} {c.line(activation)}" for c in checks))
    return [c.line(activation) for c in checks if not c.passed]


def recheck_args(model: str, root: Path, reduction: Reduction = Reduction.MEAN) -> list[str]:
    """``kafrob`` arguments that store (or re-compute) a model's recheck shard: ``RECHECK_IMAGES`` images, both label
    modes, attacked as their own shard."""
    return ["evaluate", "--checkpoint", model, "--labels", "predicted", "true", "--n", str(RECHECK_IMAGES),
            "--shard-images", str(RECHECK_IMAGES), "--shards-dir", str(root)] + (
        ["--reduction", reduction.value] if reduction is not Reduction.MEAN else [])


def stored_reductions(model: str, root: Path) -> list[Reduction]:
    """The losses a model's thesis-protocol store (shards or recheck shard) exists for under ``root`` (the batch mean
    always: it is asked for)."""
    return [r for r in Reduction if r is Reduction.MEAN or any(
        finished(protocol_spec(model, shard_images=n, reduction=r), root) for n in (SHARD_IMAGES, RECHECK_IMAGES))]


RECHECK_BY_MACHINE = "recheck"  # <store>/recheck/<machine slug>/: recheck shards of machines other than the store's


def recheck_root(root: Path, header: dict) -> Path:
    """Where the recheck shards of the machine ``header`` names live beside the store ``root``
    (kafrob.arithmetic.machine_slug): under the reference arithmetic a recheck is exact only on its machine."""
    return Path(root) / RECHECK_BY_MACHINE / machine_slug(header)


def _load_recheck(model: str, root: Path, reduction: Reduction) -> dict[str, dict] | None:
    paths = {m: protocol_spec(model, m, RECHECK_IMAGES, reduction).shard_path(root, 0) for m in ("predicted", "true")}
    return {m: load_shard(p) for m, p in paths.items()} if all(p.exists() for p in paths.values()) else None


def _stored_rechecks(model: str, root: Path, reduction: Reduction) -> list[tuple[dict[str, dict], str]]:
    """What the recompute is compared with, the store's first: its recheck shard (``recheck_args``) of both label
    modes and those stored for other machines (``recheck_root``), or, in a store without one made under a oneDNN
    arithmetic, the first RECHECK_IMAGES images of shard 0. Under Eigen's contractions (the reference arithmetic) a
    per-example result depends on the batch it was attacked in (Eigen blocks a product by its sizes), so only a shard
    of exactly those images is compared; under oneDNN's sgemm the first images of the short tier's kept models' shard
    0 (stored on an Intel Xeon) recomputed identically on it and on an AMD EPYC, docs/arithmetic.md. Returns
    [(the stored results by label mode, what they are)]."""
    own = _load_recheck(model, root, reduction)
    if own is not None:
        folders = sorted(Path(root, RECHECK_BY_MACHINE).glob("*"))
        others = [r for r in (_load_recheck(model, f, reduction) for f in folders) if r is not None]
        return [(own, "the stored recheck shard"),
                *((r, f"the recheck shard stored on {r['predicted']['header']['cpu']}") for r in others)]
    shard0 = {m: load_shard(protocol_spec(model, m, reduction=reduction).shard_path(root, 0))
              for m in ("predicted", "true")}
    if isa_independent(shard0["predicted"]["header"]):
        raise ShardError(f"{model}: no recheck shard under {root} (its shards were computed under Eigen's "
                         f"contractions, where a result depends on the batch); store one with "
                         f"`{REFERENCE_COMMAND} kafrob {' '.join(recheck_args(model, root, reduction))}`")
    first = {m: {**{f: s[f][:RECHECK_IMAGES] for f in FIELDS}, "header": s["header"]} for m, s in shard0.items()}
    return [(first, "the stored shard 0")]


def recompute(model: str, root: Path = SHARDS_DIR) -> list[str]:
    """Attack the recheck images of a named model (``thesis:resnet20-<act>``, ``<tier>:<case>``) again, both label
    modes, in a child process with the stored arithmetic, and compare every per-example field with the results
    stored on this machine (``_stored_rechecks``; the store's where none was), for every loss the model's store holds
    (``stored_reductions``); failures as lines, empty when identical. A difference from results stored on another
    machine is reported as possibly the machine's, with the command that stores this machine's recheck shard."""
    return [f for reduction in stored_reductions(model, root) for f in _recompute(model, root, reduction)]


def _difference_cause(stored: dict, again: dict, model: str, root: Path, reduction: Reduction) -> str:
    """Why a recomputed result (header ``again``) may differ from a stored one (header ``stored``)."""
    if computed_with(again)["arithmetic"] != computed_with(stored)["arithmetic"]:  # another CPU, CPU-dependent code
        return (f"stored on {stored.get('cpu')} ({label(stored)}), recomputed on {again.get('cpu')} ({label(again)}): "
                f"the CPU or the code changed it; shards made with {REFERENCE_COMMAND} run none of oneDNN's "
                f"CPU-dispatched code")
    if None not in eigen_blocking(stored) and eigen_blocking(stored) != eigen_blocking(again):
        return (f"stored with (several threads, L1d KiB) = {eigen_blocking(stored)}, recomputed with "
                f"{eigen_blocking(again)}: Eigen sizes its blocks by these, so the machine or the code changed it")
    if isa_independent(stored) and not vendor_independent(stored) and not same_machine(stored, again):
        return (f"stored on {machine(stored)}, recomputed on {machine(again)}: under the reference arithmetic a few "
                f"borderline images still come out otherwise on another machine (batch normalisation's hardware "
                f"rsqrt, docs/arithmetic.md) and no recheck shard of this one is stored; if the code did not change "
                f"(the tier passes on the storing machine), store it with `{REFERENCE_COMMAND} kafrob "
                f"{' '.join(recheck_args(model, recheck_root(root, again), reduction))}`")
    return "the code changed the computation"


def _recompute(model: str, root: Path, reduction: Reduction) -> list[str]:
    loss = "" if reduction is Reduction.MEAN else " (summed loss)"
    try:
        candidates = _stored_rechecks(model, root, reduction)
    except ShardError as e:
        return [str(e)]
    header = candidates[0][0]["predicted"]["header"]
    env = {**os.environ, **env_for(header)}
    if header["kaf_kernels"] == "portable":
        env["KAFROB_NATIVE"] = "0"
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "kafrob.cli", *recheck_args(model, Path(tmp), reduction)],
                              env=env, capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            return [f"{model}{loss}: re-computing {RECHECK_IMAGES} images failed: {last}"]
        again = {m: load_shard(protocol_spec(model, m, RECHECK_IMAGES, reduction).shard_path(Path(tmp), 0))
                 for m in ("predicted", "true")}
    here = again["predicted"]["header"]
    stored, source = next(((r, s) for r, s in candidates if same_machine(r["predicted"]["header"], here)),
                          candidates[0])
    there = stored["predicted"]["header"]
    mine, theirs = computed_with(here), computed_with(there)
    if {**mine, "arithmetic": None} != {**theirs, "arithmetic": None}:
        return [f"{model}: the stored shards were computed with {theirs}, this machine computes with {mine}: install "
                f"the locked versions (requirements.lock)"]
    failures = _differences(model, loss, root, reduction, stored, source, again)
    if (not failures or same_machine(there, here) or not isa_independent(there) or vendor_independent(there)
            or mine != theirs or eigen_blocking(there) != eigen_blocking(here)):
        return failures
    flips, allowed = _outcome_flips(again, stored), cross_machine_allowance(RECHECK_IMAGES)
    if flips <= allowed:  # another machine, no recheck shard of its own: held to the spread measured between machines
        print(f"kafrob: {model}{loss}: {flips} of {RECHECK_IMAGES} recheck images change outcome, within the "
              f"{allowed} allowed between machines (CROSS_MACHINE); otherwise: {' | '.join(failures)}", file=sys.stderr)
        return []
    return [*failures, f"{model}{loss}: {flips} of {RECHECK_IMAGES} recheck images change outcome (clean prediction or "
                       f"robust correctness), more than the {allowed} allowed between machines (CROSS_MACHINE)"]


def _differences(model: str, loss: str, root: Path, reduction: Reduction, stored: dict[str, dict], source: str,
                 again: dict[str, dict]) -> list[str]:
    failures = []
    for mode, stored_shard in stored.items():
        cause = _difference_cause(stored_shard["header"], again[mode]["header"], model, root, reduction)
        for field in FIELDS:
            differ = np.flatnonzero(again[mode][field] != stored_shard[field])
            if len(differ):
                failures.append(f"{model}{loss} {mode} labels: {field} differs from {source} on images "
                                f"{again[mode]['index'][differ].tolist()}: {cause}")
    return failures


# Between machines under the reference arithmetic (docs/arithmetic.md): the row that moved most between the AMD EPYC
# that stored the released models and an Intel Xeon, kaf_relu: (clean predictions of the 2,000 stored images that
# changed, images). Its ridge-initialised KAF amplifies small differences upstream (compiled and portable KAF kernels
# gave the same 37 here); fixed activations changed none.
CROSS_MACHINE = (37, 2000)
CROSS_MACHINE_FALSE_ALARM = 0.01


def cross_machine_allowance(images: int) -> int:
    """How many of ``images`` recheck images may change outcome (``_outcome_flips``) on a machine without its own
    recheck shard: the smallest k that more than k change with probability under CROSS_MACHINE_FALSE_ALARM, at the
    upper end of the 95% interval of the rate measured between machines (CROSS_MACHINE): 2 of 10."""
    rate = wilson_interval(*CROSS_MACHINE)[1]
    tail, k = 1.0, -1
    while tail >= CROSS_MACHINE_FALSE_ALARM:
        k += 1
        tail -= math.comb(images, k) * rate**k * (1 - rate) ** (images - k)
    return k


def _outcome_flips(again: dict[str, dict], stored: dict[str, dict]) -> int:
    """Recheck images whose clean prediction or robust correctness (against the true label) differs in either label
    mode: what changes the stored numbers (which restart fooled an image, and into which class, does not)."""
    changed = np.zeros(len(stored["predicted"]["index"]), bool)
    for mode, theirs in stored.items():
        mine = again[mode]
        changed |= (mine["clean_pred"] != theirs["clean_pred"]) | (
            (mine["adv_pred"] == mine["label"]) != (theirs["adv_pred"] == theirs["label"]))
    return int(changed.sum())


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


def pairs(rows: dict[tuple[str, str], RowResult], label_mode: str,
          extra: tuple[tuple[str, str, str], ...] = ()) -> list[tuple[str, str, str]]:
    """(a, b, why) for every comparison available in ``label_mode``; ``extra`` (a, b, why): more, where both rows
    exist."""
    have = {a for a, mode in rows if mode == label_mode}
    out = [(a, b, "base") for a, b in BASE_PAIRS if a in have and b in have]
    fixed = [f for f in FIXED if f in have]
    if fixed:  # chosen before the data (the thesis's table), so no comparison is against a maximum picked by chance
        thesis = thesis_table()
        best = max(fixed, key=lambda f: thesis[f][1])
        out += [(a, best, "best fixed") for a in sorted(have) if a.startswith("kaf")
                and (a, best, "base") not in out]
    done = {(a, b) for a, b, _ in out}
    return out + [(a, b, why) for a, b, why in extra if a in have and b in have and (a, b) not in done]


def claim_pairs(rows: dict[tuple[str, str], RowResult]) -> tuple[tuple[str, str, str], ...]:
    """Every KAF row against each fixed activation of CLAIMS, for ``pairs``' ``extra`` (the ones it lacks)."""
    kafs = dict.fromkeys(a for a, _ in rows if a.startswith("kaf"))
    return tuple((kaf, fixed, "thesis claim") for kaf in kafs for fixed, _ in CLAIMS)


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    why: str
    label_mode: str
    metric: str
    result: PairedComparison
    holm_p: float | None = None  # McNemar's p adjusted (Holm) over the comparisons of this metric and label mode

    @property
    def off_zero(self) -> bool:
        """The paired 95% interval excludes 0."""
        lo, hi = self.result.interval
        return lo > 0 or hi < 0

    @property
    def decided(self) -> bool:
        """A difference: the interval excludes 0 and McNemar's p survives Holm's correction."""
        return self.off_zero and (self.holm_p is None or self.holm_p < ALPHA)


def compare_all(rows: dict[tuple[str, str], RowResult],
                extra: tuple[tuple[str, str, str], ...] = ()) -> list[Comparison]:
    """Every pair of ``pairs`` in every label mode, robust and clean accuracy; each (label mode, metric) is one
    family for Holm's correction: with 11 independent comparisons at the 5% level of each, some "difference" would
    come from chance alone in 43% of tables."""
    modes = sorted({mode for _, mode in rows})
    raw = [Comparison(a, b, why, mode, metric,
                      paired_comparison(getattr(rows[(a, mode)], metric), getattr(rows[(b, mode)], metric)))
           for mode in modes for a, b, why in pairs(rows, mode, extra) for metric in ("robust", "clean")]
    out = list(raw)
    for family in {(c.label_mode, c.metric) for c in raw}:
        members = [i for i, c in enumerate(raw) if (c.label_mode, c.metric) == family]
        for i, p in zip(members, holm([raw[i].result.mcnemar_p for i in members]), strict=True):
            out[i] = replace(raw[i], holm_p=p)
    return out

