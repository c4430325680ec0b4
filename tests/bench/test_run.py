"""Running a case: the full tier's exact configuration, cut short, end to end on a CPU."""

from __future__ import annotations

import keras

from kafrob.bench import judge, report
from kafrob.bench.cases import BY_ID
from kafrob.bench.run import DryRun, run_case
from kafrob.bench.tiers import get_tier
from kafrob.data import load_cifar10


def test_full_tier_dry_run_end_to_end(tiny, tmp_path, monkeypatch):
    """What a first GPU run of the full tier does, on CPU for 2 steps and 10 images: mixed precision with loss
    scaling, XLA train step, overfitting monitor, PGD-50x10 on the predicted labels (compared with the thesis)
    and on the true labels (reported), the comparison and the table."""
    monkeypatch.setenv("KAFROB_RUNS_DIR", str(tmp_path / "runs"))
    tier, e = get_tier("full"), BY_ID["resnet20-kaf"]
    config = tier.train_config(e)
    assert config.precision == "mixed_float16" and tier.attack.label_mode == "predicted"  # the thesis's protocol
    assert (config.epochs, config.decay_epochs, config.batch_size, config.jit_compile) == (80, 20, 128, True)
    previous = keras.config.dtype_policy()
    m = run_case(e, tier, load_cifar10(tiny[0]), dry_run=DryRun(steps=2, images=10), progress=False)
    assert keras.config.dtype_policy() == previous
    assert m.n_clean == m.n_robust == 10 and m.train_loss is not None and m.robust_accuracy_true is not None
    history = next((tmp_path / "runs" / "dry-run").glob("resnet20-kaf-*/history.json"))
    assert '"epoch": 2' in history.read_text() and "monitor_pgd_accuracy" in history.read_text()
    failures = judge.compare(m, e, tier)
    assert any("expected 78.08% (thesis)" in f for f in failures)  # 2 steps are far from the thesis
    table = report.results_table([m], tier)
    assert "PGD true labels %" in table and "PGD predicted labels % [95% CI]" in table and "thesis clean %" in table
