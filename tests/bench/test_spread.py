"""Smoke tolerances from the measured spread: seed-0 runs set them, other seeds only measure their use."""

from __future__ import annotations

import json

import pytest

from kafrob.bench import spread


def _run(tmp_path, name, values):
    folder = tmp_path / name / "measurements" / "smoke"
    folder.mkdir(parents=True)
    for case, (clean, robust, loss) in values.items():
        (folder / f"{case}.json").write_text(json.dumps({"case": case, "clean_accuracy": clean,
                                                         "robust_accuracy": robust, "train_loss": loss}))
    return tmp_path / name


def test_tolerances_come_from_seed_zero_runs(tmp_path):
    reference = {"a": {"clean_accuracy": 10, "robust_accuracy": 5, "train_loss": 2.300},
                 "b": {"clean_accuracy": 20, "robust_accuracy": 8, "train_loss": 2.500}}
    folders = [_run(tmp_path, "seed0-onednn0-compiled", {"a": (12, 5, 2.31), "b": (20, 7, 2.5)}),
               _run(tmp_path, "seed0-onednn1-portable", {"a": (10, 6, 2.30), "b": (17, 8, 2.52)}),
               _run(tmp_path, "seed1-onednn1-compiled", {"a": (30, 20, 2.9), "b": (20, 8, 2.5)})]
    runs = spread.load_runs(folders)
    tol = spread.tolerances(reference, runs)
    assert tol["clean_accuracy"] == {"max_deviation": 3, "where": "b in seed0-onednn1-portable", "tolerance": 5.0}
    assert tol["robust_accuracy"]["tolerance"] == 2.0  # 1.5 x 1, rounded up to whole points
    assert tol["train_loss"]["tolerance"] == pytest.approx(0.035)  # 1.5 x 0.02, rounded up to 0.005
    assert spread.detected(reference, runs, tol) == {"clean_accuracy": "1 of 2", "robust_accuracy": "1 of 2",
                                                     "train_loss": "1 of 2"}
    assert "| a | 10 / 5 / 2.300 | 12 / 5 / 2.310 |" in spread.table(reference, runs)


def test_run_names_are_checked(tmp_path):
    with pytest.raises(ValueError, match="not a spread run name"):
        spread.load_runs([tmp_path / "my-run"])
