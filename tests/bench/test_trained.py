"""Suite-trained models in the store: kept with their history and curves, loadable by name everywhere."""

from __future__ import annotations

import json

import pytest

from kafrob import cli
from kafrob.bench import judge, trained
from kafrob.bench.cases import CLEAN
from kafrob.bench.tiers import get_tier
from kafrob.data import load_cifar10


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
    (sitting,) = history["arithmetic"]  # the training's own arithmetic, recorded by kafrob.train
    assert sitting["from_epoch"] == 1 and "onednn" in sitting and sitting["cpu"]
    assert path.with_suffix(".curves.png").read_bytes().startswith(b"\x89PNG")
    assert cli.main(["evaluate", "--checkpoint", "short:vgg-relu", "--n", "10", "--iterations", "1", "--restarts", "1",
                     "--data-dir", str(data_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 10

    # its stored evaluation (the thesis protocol, both label modes) and the tier's Measurement of it
    shards_dir = trained.shards_root("short")
    assert cli.main(["evaluate", "--checkpoint", "short:vgg-relu", "--labels", "predicted", "true", "--n", "10",
                     "--shard-images", "10", "--shards-dir", str(shards_dir), "--data-dir", str(data_dir)]) == 0
    summary = {s["label_mode"]: s for s in json.loads(capsys.readouterr().out)}
    m = trained.stored_measurement("short", "vgg-relu", load_cifar10(data_dir), shard_images=10)
    assert (m.n_clean, m.n_robust, m.train_loss) == (100, 10, history["history"][-1]["loss"])
    assert m.robust_accuracy == pytest.approx(100 * summary["predicted"]["robust_accuracy"])
    assert m.robust_accuracy_true == pytest.approx(100 * summary["true"]["robust_accuracy"])
    assert m.seconds >= sum(h["seconds"] for h in history["history"])


def test_missing_stored_model_and_unfinished_run_say_what_to_do(tiny, tmp_path, capsys, monkeypatch):
    data_dir, _ = tiny
    monkeypatch.setattr(trained, "REFERENCE_DIR", tmp_path / "store")
    assert cli.main(["evaluate", "--checkpoint", "short:resnet20-kaf", "--n", "10", "--data-dir", str(data_dir)]) == 2
    assert "kafrob train --case resnet20-kaf --tier short --keep" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="finish the run"):
        trained.keep(tmp_path / "nothing", "short", "resnet20-kaf")
    assert trained.is_stored_name("short:resnet20-relu") and not trained.is_stored_name("short:resnet99")


def test_a_clean_training_run_is_kept_beside_the_fbf_one(tiny, tmp_path, monkeypatch):
    _, model = tiny
    monkeypatch.setattr(trained, "REFERENCE_DIR", tmp_path / "store")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(model.read_bytes())
    epoch = {"epoch": 1, "loss": 2.0, "accuracy": 0.3, "lr": 0.1, "seconds": 1.0}
    (run / "history.json").write_text(json.dumps({"config": {"fbf": {"adversarial": False}}, "history": [epoch]}))
    assert trained.keep(run, "short", "resnet20-relu") == tmp_path / "store" / "short" / "resnet20-relu-clean.keras"
    assert trained.is_stored_name("short:resnet20-relu-clean")
    assert trained.train_command("short:resnet20-relu-clean") == ("kafrob train --case resnet20-relu --tier short "
                                                                 "--clean --keep")


@pytest.mark.parametrize("case", get_tier("short").row_ids())
def test_kept_short_model_reproduces_its_stored_evaluation(case, cifar):
    """The kept weights, attacked again on the first images of stored shard 0 (both label modes, the stored
    arithmetic, a child process): every per-example field identical."""
    if not trained.stored_path(f"short:{case}").is_file():
        pytest.skip(f"short:{case} is not trained and kept yet ({trained.train_command(f'short:{case}')})")
    assert judge.recompute(f"short:{case}", trained.shards_root("short")) == []


@pytest.mark.parametrize("case", get_tier("short").clean_baselines)
def test_kept_fbf_model_beats_its_clean_training_baseline_on_the_same_images(case):
    """The stored evidence for "FBF beats clean training at the same budget": on the images both stored evaluations
    cover, FBF's robust accuracy is higher in both label modes, paired 95% interval above zero, McNemar p < 0.05
    (Holm-adjusted)."""
    for name in (f"short:{case}", f"short:{case}{CLEAN}"):
        if not trained.stored_path(name).is_file():
            pytest.skip(f"{name} is not trained and kept yet ({trained.train_command(name)})")
    found = [c for c in trained.stored_comparisons("short", [case, case + CLEAN]) if c.metric == "robust"]
    assert [(c.why, c.label_mode) for c in found] == [("FBF vs clean training", "predicted"),
                                                      ("FBF vs clean training", "true")]
    for c in found:
        r = c.result
        print(f"{case} {c.label_mode} labels: FBF - clean training {100 * r.difference:+.1f} points "
              f"[{100 * r.interval[0]:+.1f}, {100 * r.interval[1]:+.1f}], n={r.n}, McNemar p={r.mcnemar_p:.2g}")
        assert r.interval[0] > 0 and c.decided  # and Holm's p (here of a family of one) < 0.05
