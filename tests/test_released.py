"""The checkpoints tier's judgement of the stored evaluation: thesis comparison and re-computation."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from kafrob import released, shards

THESIS = {"relu": (77.52, 50.17), "elu": (75.42, 51.69), "swish": (78.68, 53.88)}


def _merged(robust_correct: int, n: int) -> shards.Merged:
    label = np.zeros(n, np.int32)
    adv = np.where(np.arange(n) < robust_correct, 0, 1).astype(np.int32)
    arrays = {"index": np.arange(n), "label": label, "clean_pred": label, "attack_label": label,
              "first_restart": np.where(adv == 0, -1, 0), "adv_pred": adv}
    return shards.Merged({}, (0,), {"seconds": 1.0}, arrays)


def test_against_thesis_uses_the_other_rows_shift_and_both_samples():
    clean = {"relu": 76.40, "elu": 74.42, "swish": 77.48}  # JPEG shifts -1.12, -1.00, -1.20
    checks = {c.metric: c for c in released.against_thesis("relu", THESIS, clean, _merged(960, 2000))}
    c = checks["clean accuracy"]
    assert c.expected == pytest.approx(77.52 - 1.10) and c.passed  # the mean shift of elu and swish only
    r = checks["robust accuracy"]
    half = 100 * 1.96 * np.sqrt(0.48 * 0.52 / 2000 + 0.5017 * 0.4983 / 2000)
    assert r.measured == 48.0 and r.n == 2000 and r.allowed == pytest.approx(half + 1.10, abs=0.01) and r.passed
    far = {c.metric: c for c in released.against_thesis("relu", THESIS, {**clean, "relu": 74.0}, _merged(800, 2000))}
    assert not far["clean accuracy"].passed and not far["robust accuracy"].passed
    assert "allowed" in far["robust accuracy"].line("relu")


@pytest.mark.slow
def test_recompute_reproduces_the_stored_shard_and_catches_a_change(shared_checkpoints, cifar, tmp_path):
    """The first images of the stored ReLU shard are computed again identically; an altered stored result is caught."""
    for mode in ("predicted", "true"):
        source = released.spec("relu", mode).directory(released.SHARDS_DIR)
        shutil.copytree(source, released.spec("relu", mode).directory(tmp_path))
    assert released.recompute("relu", tmp_path) == []
    path = released.spec("relu", "predicted").shard_path(tmp_path, 0)
    altered = shards.load_shard(path)
    altered["adv_pred"][3] = (altered["adv_pred"][3] + 1) % 10
    shards.save_shard(path, altered)
    failures = released.recompute("relu", tmp_path)
    assert len(failures) == 1 and "adv_pred differs" in failures[0] and str(altered["index"][3]) in failures[0]
