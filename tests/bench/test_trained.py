"""Suite-trained models in the store: kept with their history and curves, loadable by name everywhere."""

from __future__ import annotations

import json

import pytest

from kafrob import cli
from kafrob.bench import trained


def test_a_kept_run_is_evaluated_by_its_stored_name(tiny, tmp_path, capsys, monkeypatch):
    data_dir, _ = tiny
    run = tmp_path / "run"
    assert cli.main(["train", "--model", "vgg", "--activation", "relu", "--epochs", "2", "--batch-size", "50",
                     "--data-dir", str(data_dir), "--run-dir", str(run)]) == 0
    capsys.readouterr()
    monkeypatch.setattr(trained, "REFERENCE_DIR", tmp_path / "store")
    path = trained.keep(run, "short", "vgg-relu")
    assert path == tmp_path / "store" / "short" / "vgg-relu.keras"
    history = trained.load_history("short:vgg-relu")
    assert [h["epoch"] for h in history["history"]] == [1, 2] and history["code_version"] and history["digest"]
    assert path.with_suffix(".curves.png").read_bytes().startswith(b"\x89PNG")
    assert cli.main(["evaluate", "--checkpoint", "short:vgg-relu", "--n", "10", "--iterations", "1", "--restarts", "1",
                     "--data-dir", str(data_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 10


def test_missing_stored_model_and_unfinished_run_say_what_to_do(tiny, tmp_path, capsys, monkeypatch):
    data_dir, _ = tiny
    monkeypatch.setattr(trained, "REFERENCE_DIR", tmp_path / "store")
    assert cli.main(["evaluate", "--checkpoint", "short:resnet20-kaf", "--n", "10", "--data-dir", str(data_dir)]) == 2
    assert "kafrob train --case resnet20-kaf --tier short --keep" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="finish the run"):
        trained.keep(tmp_path / "nothing", "short", "resnet20-kaf")
    assert trained.is_stored_name("short:resnet20-relu") and not trained.is_stored_name("short:resnet99")
