"""One case per thesis experiment: ids vgg-<activation> and resnet20-<activation>.

`pytest benchmark -k "resnet20 and swish" --tier smoke` runs ResNet20 swish and kaf_swish.
"""

from __future__ import annotations

import pytest

from kafrob import atomic, released
from kafrob.activations import is_kaf
from kafrob.bench import compare, run_case, runs_dir
from kafrob.checkpoints import CheckpointError
from kafrob.experiments import EXPERIMENTS


def _cost_rank(e) -> int:
    """0 for KAF ResNet20s, 1 for KAF VGGs, 2 for the rest (measured smoke times: ~65 s, ~30 s, <15 s)."""
    return 2 if not is_kaf(e.activation) else 0 if e.model == "resnet20" else 1


# Costliest first, so parallel workers (`-n 2`) finish together; sorted() keeps the table order within a rank.
CASES = sorted(EXPERIMENTS, key=_cost_rank)


def _released_row(experiment) -> tuple[object, list[str]]:
    """The checkpoints tier: the stored evaluation re-computed on a few images and held against the thesis."""
    thesis = {e.activation: (e.thesis_accuracy, e.thesis_robustness) for e in EXPERIMENTS if e.model == "resnet20"}
    m = released.measurement(experiment.activation)
    failures = released.recompute(experiment.activation)
    checks = released.against_thesis(experiment.activation, thesis, released.stored_clean_accuracy(),
                                      released.stored(experiment.activation))
    print("".join(f"\n{'ok  ' if c.passed else 'FAIL'} {c.line(experiment.activation)}" for c in checks))
    return m, failures + [c.line(experiment.activation) for c in checks if not c.passed]


@pytest.mark.parametrize("experiment", CASES, ids=[e.id for e in CASES])
def test_thesis_row(experiment, tier, cifar, strategy, seed):
    if tier.source == "thesis-checkpoint":
        if experiment.model != "resnet20":
            pytest.skip("the thesis released ResNet20 checkpoints only")
        try:
            m, failures = _released_row(experiment)
        except CheckpointError as exc:
            pytest.skip(f"released checkpoint not available here: {exc}")
    else:
        m = run_case(experiment, tier, cifar, seed=seed, strategy=strategy)
        failures = compare(m, experiment, tier)
    atomic.write_json(runs_dir() / "measurements" / tier.name / f"{experiment.id}.json", m.to_dict())
    print(f"\n{experiment.id}: clean {m.clean_accuracy:.2f}% (n={m.n_clean}), "
          f"PGD {m.robust_accuracy:.2f}% (n={m.n_robust}), {m.seconds:.0f}s")
    assert not failures, "\n".join(failures)
