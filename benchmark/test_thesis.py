"""One case per thesis experiment and tier (kafrob.bench): ids vgg-<activation> and resnet20-<activation>.

`pytest benchmark -k "resnet20 and swish" --tier smoke` runs ResNet20 swish and kaf_swish.
"""

from __future__ import annotations

import pytest

from kafrob.activations import is_kaf
from kafrob.bench.cases import BY_ID, CLEAN, EXPERIMENTS
from kafrob.bench.run import benchmark
from kafrob.bench.tiers import TIERS


def _cost_rank(e) -> int:
    """0 for KAF ResNet20s, 1 for KAF VGGs, 2 for the rest (measured smoke times: ~65 s, ~30 s, <15 s)."""
    return 2 if not is_kaf(e.activation) else 0 if e.model == "resnet20" else 1


# Costliest first, so parallel workers (`-n 2`) finish together; sorted() keeps the table order within a rank.
CASES = sorted(EXPERIMENTS, key=_cost_rank)


@pytest.mark.parametrize("experiment", CASES, ids=[e.id for e in CASES])
def test_thesis_row(experiment, tier, request, strategy, seed):
    if experiment not in tier.cases():
        pytest.skip(f"the {tier.name} tier does not run {experiment.id}")
    data = request.getfixturevalue("cifar") if tier.source == "train" else None
    m, failures = benchmark(experiment, tier, data, seed=seed, strategy=strategy)
    print(f"\n{experiment.id}: clean {m.clean_accuracy:.2f}% (n={m.n_clean}), "
          f"PGD {m.robust_accuracy:.2f}% (n={m.n_robust}), {m.seconds:.0f}s")
    assert not failures, "\n".join(failures)


BASELINES = [BY_ID[case] for case in sorted({c for t in TIERS.values() for c in t.clean_baselines})]


@pytest.mark.parametrize("experiment", BASELINES, ids=[e.id + CLEAN for e in BASELINES])
def test_fbf_beats_clean_training(experiment, tier, request, strategy, seed):
    """A tier's clean-training baselines: the case trained without adversarial examples at the same budget,
    held to its floors, and FBF's robust accuracy above it by the kept models' margin (less the floor margin)."""
    if experiment.id not in tier.clean_baselines:
        pytest.skip(f"the {tier.name} tier trains no clean baseline of {experiment.id}")
    m, failures = benchmark(experiment, tier, request.getfixturevalue("cifar"), seed=seed, strategy=strategy,
                            clean=True)
    print(f"\n{m.case}: clean {m.clean_accuracy:.2f}%, PGD {m.robust_accuracy:.2f}% (n={m.n_robust})")
    assert not failures, "\n".join(failures)
