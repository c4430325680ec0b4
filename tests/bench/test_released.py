"""The released models' verdicts and gap table, written from the stored evaluations."""

from __future__ import annotations

import dataclasses
import shutil

from kafrob.bench import released, store
from kafrob.bench.shards import SHARDS_DIR, ShardSpec


def test_the_confirmatory_verdict_is_what_the_committed_store_gives(tmp_path, monkeypatch):
    """A regression pin: the summed-loss verdict at its planned n (the README's reading) is regenerated from the
    committed shards byte for byte; every store that has begun gets its files."""
    monkeypatch.setattr(store, "REFERENCE_DIR", tmp_path)
    written, _ = released.write_all()
    names = {p.name for p in written}
    assert names == {f"checkpoints_verdict{s}.{e}" for s in ("", "_sum", "_autoattack") for e in ("md", "png")} | set(
        released.GAP_FILES)
    committed = SHARDS_DIR.parent.parent / "checkpoints_verdict_sum.md"
    assert (tmp_path / "checkpoints_verdict_sum.md").read_text() == committed.read_text()
    assert "Confirmatory reading: n = 2000" in committed.read_text()
    for name in released.GAP_FILES:
        gap = (tmp_path / name).read_text()
        assert all(f"thesis:resnet20-{a} " in gap for a in ("relu", "kaf_free")) and "McNemar p" in gap
    assert "not computed" not in (tmp_path / "checkpoints_autoattack.md").read_text()  # AutoAttack's flags
    assert "not computed" in (tmp_path / "checkpoints_pgd_loss.md").read_text()  # PGD computes none


def test_only_the_stores_that_have_begun_are_written(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "REFERENCE_DIR", tmp_path / "refs")
    root = tmp_path / "shards"
    for model in ("thesis:resnet20-relu", "thesis:resnet20-swish"):  # the batch-mean store's shard 0 of two rows
        for mode in released.LABEL_MODES:
            spec = ShardSpec(model, dataclasses.replace(released.THESIS_PGD, label_mode=mode))
            spec.shard_path(root, 0).parent.mkdir(parents=True)
            shutil.copy(spec.shard_path(SHARDS_DIR, 0), spec.shard_path(root, 0))
    written, left_out = released.write_all(root)
    assert [p.name for p in written] == ["checkpoints_verdict.md", "checkpoints_verdict.png"]
    md = (tmp_path / "refs" / "checkpoints_verdict.md").read_text()
    assert "200 common test images" in md and "| swish vs relu | base | predicted | robust |" in md
    assert "Interim reading: n = 200 of the 2000 planned" in md
    assert any("summed loss" in line and "pgd50x10-sum-eps8-step2-predicted" in line for line in left_out)
    assert any("AutoAttack" in line for line in left_out)
    assert any("thesis-resnet20-kaf/pgd50x10-eps8-step2-predicted" in line for line in left_out)  # a row not begun
