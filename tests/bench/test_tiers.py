"""The tiers: which cases each runs, and the training configuration each gives a case."""

from __future__ import annotations

import pytest

from kafrob.bench.cases import BY_ID, EXPERIMENTS, RESNET20_LR
from kafrob.bench.tiers import TIERS, Reference, Source, get_tier
from kafrob.fbf import FBF_PREDICTED, FBFConfig


def test_smoke_tier_overrides_lr_bounds_only():
    smoke, full = get_tier("smoke"), get_tier("full")
    e = BY_ID["vgg-kaf_free"]
    assert (smoke.train_config(e).min_lr, smoke.train_config(e).max_lr) == smoke.lr_bounds
    cfg = full.train_config(e)
    assert (cfg.min_lr, cfg.max_lr, cfg.epochs, cfg.batch_size) == (e.min_lr, e.max_lr, 60, 128)
    assert full.train_config(BY_ID["resnet20-kaf"]).decay_epochs == 20


def test_each_tier_runs_its_cases_from_one_rule():
    assert get_tier("smoke").cases() == get_tier("full").cases() == EXPERIMENTS
    released = get_tier("checkpoints").cases()
    assert len(released) == 8 and {e.model for e in released} == {"resnet20"}
    assert get_tier("smoke", "thesis-checkpoint").cases() == released
    assert {t.source for t in TIERS.values()} == set(Source) and {t.reference for t in TIERS.values()} == set(Reference)
    with pytest.raises(ValueError, match="unknown tier 'huge'; known: smoke, short, full, checkpoints"):
        get_tier("huge")
    with pytest.raises(ValueError, match="'disk' is not a valid Source"):
        get_tier("smoke", "disk")


def test_smoke_and_full_differ_in_explicit_fields_only():
    e = BY_ID["resnet20-kaf"]
    smoke, full = get_tier("smoke").train_config(e), get_tier("full").train_config(e)
    assert (smoke.decay_epochs, smoke.monitor_images, smoke.jit_compile) == (0, 0, False)
    assert (full.decay_epochs, full.monitor_images, full.jit_compile) == (20, 256, True)


def test_short_tier_is_the_thesis_protocol_compressed_to_twelve_epochs():
    short = get_tier("short")
    cfg = short.train_config(BY_ID["resnet20-relu"])
    assert (cfg.epochs, cfg.decay_epochs, cfg.decay_every, cfg.train_per_class) == (10, 2, 1, None)
    # FBF against the prediction, the FBF paper's optimizer: the thesis's overfits at this pace (docs/short_tier.md)
    assert (cfg.batch_size, cfg.augment, cfg.precision) == (128, True, "float32")
    assert (cfg.min_lr, cfg.max_lr, cfg.momentum, cfg.fbf) == (RESNET20_LR[0], 0.2, 0.9, FBF_PREDICTED)
    assert cfg.early_stop and cfg.monitor_images == 256
    full = get_tier("full").train_config(BY_ID["resnet20-relu"])
    assert (full.momentum, full.fbf) == (0.0, FBFConfig())  # the thesis's training
    assert [e.id for e in short.cases()] == ["resnet20-relu", "resnet20-kaf", "resnet20-swish"]  # table order
    assert short.reference is Reference.FLOORS and short.floor_margin == 5.0
    assert (short.attack.iterations, short.attack.restarts, short.attack.label_mode) == (50, 10, "predicted")
    assert short.test_images == 1000 and short.clean_images is None
