"""The released models' stored evaluations, read: one verdict per attack, and attacks against each other per example.

Every released row is attacked on the same stored images (kafrob.bench.shards), in both label modes, by three
attacks, each a store of its own under ``reference_results/checkpoints/shards`` (``STORES``), read into files beside
it:

* PGD-50x10 with the batch-mean loss (ART's, the thesis's procedure): ``checkpoints_verdict.{md,png}``;
* PGD-50x10 with the summed loss (each image's own gradient, docs/attacks.md): ``checkpoints_verdict_sum.{md,png}``;
* AutoAttack: ``checkpoints_verdict_autoattack.{md,png}``.

Per example on the same images (``GAP_FILES``): the summed-loss PGD against AutoAttack (``checkpoints_autoattack.md``)
and the batch-mean loss against the summed one (``checkpoints_pgd_loss.md``: how much the thesis's procedure
overstates robustness where the float16 gradients underflow, docs/attacks.md).

A verdict reads the first ``n`` images of the order only (default the attack's planned n, ``judge.PLANNED_N``), so
the confirmatory file stays as it is when the store grows past it. ``write_all`` rewrites every file whose store has
begun (``kafrob regenerate --tier checkpoints``); the tier's own table (``checkpoints.*``) is kafrob.bench.store's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kafrob import atomic
from kafrob.attacks import AttackConfig, name_of, named
from kafrob.attacks.pgd import PGDConfig, Reduction
from kafrob.bench import store
from kafrob.bench.gap import attack_name, gap_table, store_gaps
from kafrob.bench.judge import PLANNED_N
from kafrob.bench.report import verdict
from kafrob.bench.shards import SHARD_IMAGES, SHARDS_DIR, Merged, ShardError, ShardSpec, finished, merge, shards_for
from kafrob.bench.tiers import THESIS_PGD
from kafrob.checkpoints import THESIS_CHECKPOINTS

LABEL_MODES = ("predicted", "true")

SUMMED_PGD = dataclasses.replace(THESIS_PGD, reduction=Reduction.SUM)

STORES: tuple[AttackConfig, ...] = (THESIS_PGD, SUMMED_PGD, named("autoattack"))

# Per example on the same images (under the reference directory): (weaker, stronger) attack
GAP_FILES = {"checkpoints_autoattack.md": (SUMMED_PGD, named("autoattack")),
             "checkpoints_pgd_loss.md": (THESIS_PGD, SUMMED_PGD)}  # how much the thesis's batch mean overstates


def rows() -> list[str]:
    """The released rows, as ``thesis:resnet20-<activation>`` names."""
    return [f"thesis:resnet20-{a}" for a in THESIS_CHECKPOINTS]


def titles(attack: AttackConfig) -> tuple[str, str, str]:
    """(the attack in full, in a table's columns, the verdict file's suffix)."""
    if isinstance(attack, PGDConfig):
        summed = attack.reduction is Reduction.SUM
        loss = "summed loss (each image's own gradient)" if summed else "batch-mean loss (ART's, the thesis's)"
        return f"PGD-{attack.iterations}x{attack.restarts}, {loss}", "PGD", "_sum" if summed else ""
    if name_of(attack) == "autoattack":
        return "AutoAttack (APGD-CE, APGD-T, FAB-T, Square)", "AutoAttack", "_autoattack"
    raise ValueError(f"a verdict reads the stores of {' or '.join(PLANNED_N)}, not {name_of(attack)}")


def read(attack: AttackConfig, root: Path, n: int | None = None, *, seed: int = 0, shard_images: int = SHARD_IMAGES,
         label_modes: tuple[str, ...] = LABEL_MODES) -> tuple[dict[tuple[str, str], Merged], list[str]]:
    """{(activation, label mode): the merged shards among the first ``n`` images of the order} for every released
    row and label mode with one, and a line per one left out."""
    titles(attack)  # a verdict's attack, or the error
    n = n or PLANNED_N[name_of(attack)]
    merged, left_out = {}, []
    for model in rows():
        for mode in label_modes:
            spec = ShardSpec(model, dataclasses.replace(attack, label_mode=mode), seed, shard_images)
            prefix = shards_for(n, spec)
            try:
                merged[(model.removeprefix("thesis:resnet20-"), mode)] = merge(
                    spec, root, [s for s in finished(spec, root) if s in prefix])
            except ShardError as exc:
                left_out.append(str(exc))
    return merged, left_out


def write_verdict(attack: AttackConfig, root: Path, n: int | None = None, stem: Path | None = None, *,
                  seed: int = 0, shard_images: int = SHARD_IMAGES,
                  label_modes: tuple[str, ...] = LABEL_MODES) -> tuple[str, list[str]]:
    """Write one store's verdict (``<stem>.md``, ``.png``; default the reference file of that attack); returns the
    markdown and the rows left out. A store with no finished shard is a ShardError."""
    merged, left_out = read(attack, root, n, seed=seed, shard_images=shard_images, label_modes=label_modes)
    if not merged:
        folder = ShardSpec(rows()[0], dataclasses.replace(attack, label_mode="predicted"), seed, shard_images).attack_id
        raise ShardError(f"no finished shards in {root} for {titles(attack)[0]} (<row>/{folder}); run `kafrob "
                         f"evaluate ... --shards-dir {root}` first")
    title, short, suffix = titles(attack)
    md, png = verdict(merged, title, seed, short, PLANNED_N[name_of(attack)])
    stem = stem or store.REFERENCE_DIR / f"checkpoints_verdict{suffix}"
    atomic.write_text(stem.with_suffix(".md"), md)
    atomic.atomic_write(stem.with_suffix(".png"), lambda f: f.write(png))
    return md, left_out


def write_all(root: Path = SHARDS_DIR) -> tuple[list[Path], list[str]]:
    """Every verdict whose store has begun, and the gap tables, into the reference directory: (the files written,
    a line per store or row left out)."""
    written, left_out = [], []
    for attack in STORES:
        stem = store.REFERENCE_DIR / f"checkpoints_verdict{titles(attack)[2]}"
        try:
            left_out += write_verdict(attack, root, stem=stem)[1]
        except ShardError as exc:
            left_out.append(str(exc))
            continue
        written += [stem.with_suffix(".md"), stem.with_suffix(".png")]
    for name, (weaker, stronger) in GAP_FILES.items():
        gaps, missing = store_gaps(rows(), weaker, stronger, root, LABEL_MODES)
        left_out += missing
        if gaps:
            written.append(atomic.write_text(store.REFERENCE_DIR / name,
                                             gap_table(gaps, attack_name(weaker), attack_name(stronger)) + "\n"))
    return written, left_out
