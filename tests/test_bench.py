"""The benchmark's judgement: comparisons with references, and all-or-nothing reference files."""

from __future__ import annotations

import json

import pytest

from kafrob import bench
from kafrob.experiments import BY_ID, get_tier


def _measurement(case="resnet20-kaf", tier="full", clean=77.0, robust=50.0, loss=None, n=200):
    half = 3.5
    return bench.Measurement(case, tier, clean, robust, (clean - 0.8, clean + 0.8), (robust - half, robust + half),
                             10000, n, 1.0, loss)


def test_thesis_reference_allows_tolerance_plus_half_width():
    e, tier = BY_ID["resnet20-kaf"], get_tier("full")  # +-3 points + the half-width (0.8 clean, 3.5 robust)
    assert bench.compare(_measurement(clean=e.thesis_accuracy - 3.5, robust=e.thesis_robustness + 6.4), e, tier) == []
    (failure,) = bench.compare(_measurement(clean=e.thesis_accuracy - 4.0, robust=e.thesis_robustness), e, tier)
    assert "clean_accuracy: measured 74.08%" in failure and "expected 78.08%" in failure
    assert "delta -4.00" in failure and "allowed +-3.80" in failure and "95% CI" in failure


def test_suite_reference_pins_the_training_loss(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "REFERENCE_DIR", tmp_path)
    e, tier = BY_ID["vgg-kaf"], get_tier("smoke")
    with pytest.raises(FileNotFoundError, match="nox -s regenerate -- --tier smoke"):
        bench.expected_values(e, tier)
    row = _measurement("vgg-kaf", "smoke", clean=10.0, robust=10.0, loss=2.3119, n=100).to_dict()
    (tmp_path / "smoke.json").write_text(json.dumps({"results": {"vgg-kaf": row}}))
    same = _measurement("vgg-kaf", "smoke", clean=11.0, robust=9.0, loss=2.3119 + 0.01, n=100)
    assert bench.compare(same, e, tier) == []
    drifted = _measurement("vgg-kaf", "smoke", clean=10.0, robust=10.0, loss=2.3119 + 0.05, n=100)
    (failure,) = bench.compare(drifted, e, tier)
    assert "train_loss" in failure and "trajectory changed" in failure and "KAF kernels" not in failure
    # References measured with the other KAF kernels: the failure says so.
    (tmp_path / "smoke.json").write_text(json.dumps({"environment": {"kaf_kernels": "compiled"},
                                                     "results": {"vgg-kaf": row}}))
    monkeypatch.setattr(bench, "kaf_kernels", lambda: "portable")
    (failure,) = bench.compare(drifted, e, tier)
    assert "measured with the compiled KAF kernels, this run used the portable ones" in failure
    with pytest.raises(KeyError, match="no row vgg-relu"):
        bench.expected_values(BY_ID["vgg-relu"], tier)


def test_references_are_written_all_or_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "REFERENCE_DIR", tmp_path)
    tier = get_tier("smoke")
    ms = [_measurement(c, "smoke", loss=2.3, n=100) for c in ("vgg-relu", "resnet20-kaf")]
    written = bench.write_references(ms, tier)
    assert sorted(p.suffix for p in written) == [".csv", ".json", ".md", ".png"]
    before = {p.name: p.read_bytes() for p in written}
    assert json.loads(before["smoke.json"])["results"]["resnet20-kaf"]["train_loss"] == 2.3

    def broken(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(bench, "scatter_png", broken)
    with pytest.raises(RuntimeError, match="plot failed"):
        bench.write_references([_measurement("vgg-relu", "smoke", clean=50.0, n=100)], tier)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_smoke_tier_overrides_lr_bounds_only():
    smoke, full = get_tier("smoke"), get_tier("full")
    e = BY_ID["vgg-kaf_free"]
    assert (smoke.train_config(e).min_lr, smoke.train_config(e).max_lr) == smoke.lr_bounds
    cfg = full.train_config(e)
    assert (cfg.min_lr, cfg.max_lr, cfg.epochs, cfg.batch_size) == (e.min_lr, e.max_lr, 60, 128)
    assert full.train_config(BY_ID["resnet20-kaf"]).decay_epochs == 20


def test_trained_model_cache_key_follows_the_code(tmp_path):
    (tmp_path / "kaf.py").write_text("GAMMA = 1\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "vgg.py").write_text("DEPTH = 3\n")
    before = bench.code_version(tmp_path)
    assert bench.code_version(tmp_path) == before
    (tmp_path / "models" / "vgg.py").write_text("DEPTH = 4\n")
    assert bench.code_version(tmp_path) != before
    assert bench.code_version() != before  # the package's own sources
