"""A tier's reference files, regenerated (``kafrob regenerate``, ``nox -s regenerate``), from where its numbers are:

* the released models (``Source.THESIS_CHECKPOINT``): their stored evaluation, the rows whose shards have begun;
  then every verdict of those stores and the gap tables (kafrob.bench.released);
* a floor tier (``Reference.FLOORS``): the models it trained and kept, and their stored shards (kafrob.bench.trained);
* any other tier: every case run again (all or nothing: a failure raises before anything is written), or the last
  benchmark run's measurements (``from_measurements``; they must cover every case and share one arithmetic).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kafrob.bench.store import Measurement, common_environment, load_measurements, write_references
from kafrob.bench.tiers import Reference, Source, Tier


class Incomplete(ValueError):
    """The last benchmark run measured only some of a tier's cases."""


@dataclass
class Regenerated:
    written: list[Path]
    left_out: list[str] = field(default_factory=list)  # a row or store without numbers yet, and why
    warnings: list[str] = field(default_factory=list)


def regenerate(tier: Tier, data_dir: str | None = None, from_measurements: bool = False) -> Regenerated:
    """Write the tier's reference files (kafrob.bench.store.write_references) from where its numbers are."""
    if tier.source is Source.THESIS_CHECKPOINT:
        return _released(tier)
    if tier.reference is Reference.FLOORS:
        return _kept(tier, data_dir)
    if from_measurements:
        return _measured(tier)
    from kafrob.bench.run import run_case
    from kafrob.data import load_cifar10

    data = load_cifar10(data_dir)
    return Regenerated(write_references([run_case(e, tier, data) for e in tier.cases()], tier))


def _released(tier: Tier) -> Regenerated:
    from kafrob.bench.released import write_all
    from kafrob.bench.shards import ShardError, released_measurement, stored_environment

    measurements: list[Measurement] = []
    left_out = []
    for e in tier.cases():
        try:
            measurements.append(released_measurement(e.activation))
        except ShardError as exc:
            left_out.append(f"{e.id}: {exc}")
    if not measurements:
        raise ValueError("no released row has a stored shard in both label modes yet (README: the evaluation command)")
    written = write_references(measurements, tier, stored_environment())  # where the shards were computed
    more, stores_left_out = write_all()
    return Regenerated(written + more, left_out + stores_left_out)


def _kept(tier: Tier, data_dir: str | None) -> Regenerated:
    from kafrob.bench.trained import stored_comparisons, stored_measurement, stored_path, train_command
    from kafrob.data import load_cifar10

    kept = [case for case in tier.row_ids() if stored_path(f"{tier.name}:{case}").is_file()]
    left_out = [f"{case}: no kept model ({train_command(f'{tier.name}:{case}')})"
                for case in tier.row_ids() if case not in kept]
    if not kept:
        raise ValueError(f"no {tier.name} model is kept yet: train one with --keep, evaluate it into "
                         f"reference_results/{tier.name}/shards")
    data = load_cifar10(data_dir)
    measurements = [stored_measurement(tier.name, case, data) for case in kept]
    return Regenerated(write_references(measurements, tier, comparisons=stored_comparisons(tier.name, kept)), left_out)


def _measured(tier: Tier) -> Regenerated:
    measurements = load_measurements(tier)
    missing = sorted({e.id for e in tier.cases()} - {m.case for m in measurements})
    if missing:
        raise Incomplete(f"no {tier.name} measurement of {', '.join(missing)} (run the benchmark first)")
    env = common_environment(tier)  # e.g. cluster jobs: one arithmetic, or refused
    warnings = [f"measurements from code versions {', '.join(env['code_versions'])}"] if len(
        env["code_versions"]) > 1 else []
    return Regenerated(write_references(measurements, tier, env), warnings=warnings)
