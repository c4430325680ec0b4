"""A tier's reference files regenerated from where its numbers are."""

from __future__ import annotations

import json

import pytest

from kafrob.bench import references, store, trained
from kafrob.bench.cases import EXPERIMENTS
from kafrob.bench.tiers import get_tier


def test_the_last_runs_measurements_must_cover_the_tier_and_name_their_code_versions(tmp_path, monkeypatch):
    monkeypatch.setenv("KAFROB_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr(store, "REFERENCE_DIR", tmp_path / "refs")
    tier = get_tier("smoke")
    paths = [store.save_measurement(store.Measurement(e.id, "smoke", 20.0, 10.0, (15.0, 25.0), (6.0, 14.0), 100, 100,
                                                      1.0, 2.3)) for e in EXPERIMENTS[:-1]]
    with pytest.raises(references.Incomplete, match=f"no smoke measurement of {EXPERIMENTS[-1].id}"):
        references.regenerate(tier, from_measurements=True)
    assert not (tmp_path / "refs").exists()  # nothing written
    e = EXPERIMENTS[-1]
    store.save_measurement(store.Measurement(e.id, "smoke", 20.0, 10.0, (15.0, 25.0), (6.0, 14.0), 100, 100, 1.0, 2.3))
    row = json.loads(paths[0].read_text())
    row["recorded"]["code_version"] = "older"
    paths[0].write_text(json.dumps(row))
    done = references.regenerate(tier, from_measurements=True)
    assert sorted(p.name for p in done.written) == ["smoke.csv", "smoke.json", "smoke.md", "smoke.png"]
    assert len(done.warnings) == 1 and "older" in done.warnings[0] and not done.left_out


def test_a_floor_tier_without_kept_models_is_an_error_saying_how_to_keep_one(tmp_path, monkeypatch):
    monkeypatch.setattr(trained, "REFERENCE_DIR", tmp_path)
    with pytest.raises(ValueError, match="no short model is kept yet: train one with --keep"):
        references.regenerate(get_tier("short"))
