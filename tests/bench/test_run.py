"""Running a case: the full tier's exact configuration, cut short, end to end on a CPU."""

from __future__ import annotations

import keras
import pytest

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
    failures = judge.compare(m, tier)
    assert any("expected 78.08% (thesis)" in f for f in failures)  # 2 steps are far from the thesis
    table = report.results_table([m], tier)
    assert "PGD true labels %" in table and "PGD predicted labels % [95% CI]" in table and "thesis clean %" in table


def test_a_clean_training_baseline_is_judged_by_fbfs_margin_over_it(tiny, tmp_path, monkeypatch):
    """The short tier's shape cut to a VGG on 100 images: ``benchmark(clean=True)`` trains the case without
    adversarial examples, measures the FBF case too where this code and seed have no measurement of it, and holds
    the pair to the kept models' margin."""
    import dataclasses
    import json

    from kafrob.attacks.pgd import PGDConfig
    from kafrob.bench import run, store

    monkeypatch.setenv("KAFROB_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr(store, "REFERENCE_DIR", tmp_path / "reference")
    tier = dataclasses.replace(get_tier("short"), case_ids=("vgg-relu",), clean_baselines=("vgg-relu",), epochs=1,
                               decay_epochs=0, batch_size=50, test_images=10, clean_images=10,
                               overfitting_monitor_images=10, train_xla=False,
                               attack=PGDConfig(iterations=2, restarts=1, label_mode="predicted"))
    assert tier.row_ids() == ("vgg-relu", "vgg-relu-clean")
    kept = {"vgg-relu": (90.0, 80.0), "vgg-relu-clean": (0.0, 0.0)}  # a margin no 1-epoch model reaches
    rows = {case: {"clean_accuracy": 0.0, "robust_accuracy": r, "robust_accuracy_true": t}
            for case, (r, t) in kept.items()}
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "short.json").write_text(json.dumps({"results": rows}))
    measured = []
    monkeypatch.setattr(run, "run_case", lambda *a, **k: measured.append(k["clean"]) or run_case(*a, **k))
    data = load_cifar10(tiny[0])
    m, failures = run.benchmark(BY_ID["vgg-relu"], tier, data, clean=True, progress=False)
    assert m.case == "vgg-relu-clean" and measured == [True, False]  # the FBF case measured too, and stored
    assert [f.split(":")[0] for f in failures] == ["vgg-relu robust_accuracy", "vgg-relu robust_accuracy_true"]
    history = json.loads(next((tmp_path / "runs" / "models").glob("vgg-relu-clean-*/history.json")).read_text())
    assert history["config"]["fbf"]["adversarial"] is False
    run.benchmark(BY_ID["vgg-relu"], tier, data, clean=True, progress=False)
    assert measured == [True, False, True]  # this code's and seed's FBF measurement is reused
    assert store.current_measurement("short", "vgg-relu", seed=1) is None


def test_shards_enter_a_reference_store_under_the_reference_arithmetic_only(tmp_path, monkeypatch):
    """Whoever writes the shards (the CLI, a cluster job, a script): a reference store takes no shard computed with
    CPU-dispatched code, and says so before loading anything."""
    from kafrob import arithmetic
    from kafrob.attacks import named
    from kafrob.bench import store
    from kafrob.bench.run import run_shards
    from kafrob.bench.shards import ShardSpec

    monkeypatch.setattr(arithmetic, "describe", lambda: {"onednn": True, "contractions": "onednn", "isa": ["avx2"],
                                                         "kaf_kernels": "compiled"})
    monkeypatch.setattr(store, "REFERENCE_DIR", tmp_path / "reference_results")
    plan = [(ShardSpec("a.keras", named("pgd", iterations=1, restarts=1), shard_images=10), 0)]

    def never(*_):
        raise AssertionError("loaded before the arithmetic was checked")

    with pytest.raises(ValueError, match="is a reference store.*run with TF_ENABLE_ONEDNN_OPTS=0"):
        run_shards(plan, tmp_path / "reference_results" / "x" / "shards", load_model=never, load_data=never)
    with pytest.raises(AssertionError, match="loaded before"):  # anywhere else: any arithmetic
        run_shards(plan, tmp_path / "elsewhere", load_model=never, load_data=never)


def test_the_eta_takes_each_label_modes_own_shard_time():
    from kafrob.bench.run import eta_seconds

    done = [("predicted", 500.0), ("true", 20.0), ("predicted", 300.0)]
    assert eta_seconds(done, ["true", "predicted", "true"]) == 20.0 + 400.0 + 20.0
    assert eta_seconds([("predicted", 500.0)], ["true"]) == 500.0  # no true-label shard yet: the mean of all
    assert eta_seconds(done, []) == 0.0
