"""The benchmark's files: reference tables written all or nothing, measurements, the trained-model cache key."""

from __future__ import annotations

import json

import pytest

from kafrob.bench import report, store
from kafrob.bench.tiers import get_tier


def _measurement(case, clean=77.0, robust=50.0, loss=None, n=100):
    return store.Measurement(case, "smoke", clean, robust, (clean - 0.8, clean + 0.8), (robust - 3.5, robust + 3.5),
                             10000, n, 1.0, loss)


def test_references_are_written_all_or_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "REFERENCE_DIR", tmp_path)
    tier = get_tier("smoke")
    ms = [_measurement(c, loss=2.3) for c in ("vgg-relu", "resnet20-kaf")]
    written = store.write_references(ms, tier)
    assert sorted(p.suffix for p in written) == [".csv", ".json", ".md", ".png"]
    before = {p.name: p.read_bytes() for p in written}
    assert json.loads(before["smoke.json"])["results"]["resnet20-kaf"]["train_loss"] == 2.3

    def broken(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report, "scatter_png", broken)
    with pytest.raises(RuntimeError, match="plot failed"):
        store.write_references([_measurement("vgg-relu", clean=50.0)], tier)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_paired_comparisons_go_into_the_markdown_only(tmp_path, monkeypatch):
    from kafrob.bench.judge import Comparison
    from kafrob.stats import paired_comparison

    monkeypatch.setattr(store, "REFERENCE_DIR", tmp_path)
    c = Comparison("kaf", "relu", "base", "predicted", "robust", paired_comparison([1, 1, 0, 1], [0, 1, 0, 1]))
    store.write_references([_measurement("resnet20-kaf"), _measurement("resnet20-relu")], get_tier("short"),
                           comparisons=[c])
    md = (tmp_path / "short.md").read_text()
    assert "## Paired comparisons" in md and "| kaf vs relu | base | predicted | robust | +25.00" in md
    assert "kaf vs relu (robust, predicted labels): undecided at n=4" in md
    assert "Paired" not in (tmp_path / "short.csv").read_text()


def test_measurements_round_trip_in_table_order(tmp_path, monkeypatch):
    monkeypatch.setenv("KAFROB_RUNS_DIR", str(tmp_path))
    for case in ("resnet20-kaf", "vgg-relu", "not-a-case"):
        store.save_measurement(_measurement(case) if case != "not-a-case" else
                               store.Measurement(case, "smoke", 1, 1, (0, 2), (0, 2), 1, 1, 1.0))
    loaded = store.load_measurements(get_tier("smoke"))
    assert [m.case for m in loaded] == ["vgg-relu", "resnet20-kaf"]  # the thesis tables' order; unknown left out
    assert loaded[0] == _measurement("vgg-relu")


def test_measurements_from_several_machines_combine_only_under_one_arithmetic(tmp_path, monkeypatch):
    """As cluster jobs leave them: each measurement records its environment; another arithmetic is refused, another
    code version flagged."""
    import json

    monkeypatch.setenv("KAFROB_RUNS_DIR", str(tmp_path))
    tier = get_tier("smoke")
    paths = [store.save_measurement(_measurement(case)) for case in ("vgg-relu", "resnet20-kaf")]
    env = store.common_environment(tier)
    assert env["code_versions"] == [store.code_version()] and env["tensorflow"]
    row = json.loads(paths[1].read_text())
    row["recorded"]["code_version"] = "0123456789ab"
    paths[1].write_text(json.dumps(row))
    assert len(store.common_environment(tier)["code_versions"]) == 2
    row["recorded"].update(onednn=not row["recorded"]["onednn"], isa=["avx512f"])
    paths[1].write_text(json.dumps(row))
    with pytest.raises(ValueError, match="vgg-relu were computed under another arithmetic than resnet20-kaf"):
        store.common_environment(tier)
    assert store.load_measurements(tier)[1] == _measurement("resnet20-kaf")  # the record does not disturb loading


def test_trained_model_cache_key_follows_the_code(tmp_path):
    (tmp_path / "kaf.py").write_text("GAMMA = 1\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "vgg.py").write_text("DEPTH = 3\n")
    before = store.code_version(tmp_path)
    assert store.code_version(tmp_path) == before
    (tmp_path / "models" / "vgg.py").write_text("DEPTH = 4\n")
    assert store.code_version(tmp_path) != before
    assert store.code_version() != before  # the package's own sources
