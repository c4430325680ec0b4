"""The command line: every subcommand answers --help, bad arguments are one clear line (exit 2), and each
subcommand runs end to end on tiny data. Choices come from the registries."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kafrob import cli
from kafrob.activations import ACTIVATIONS
from kafrob.bench import run as bench_run
from kafrob.bench import store
from kafrob.bench.cases import EXPERIMENTS
from kafrob.bench.tiers import TIERS

SUBCOMMANDS = ("train", "evaluate", "submit", "gap", "verdict", "merge", "lr-find", "sanity", "table", "regenerate")


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    assert "usage: kafrob " + command in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["table", "--tier", "huge"], f"invalid choice: 'huge' (choose from {', '.join(map(repr, TIERS))})"),
    (["train", "--model", "vgg", "--activation", "gelu", "--run-dir", "r"], "invalid choice: 'gelu'"),
    (["train", "--model", "lenet", "--activation", "relu", "--run-dir", "r"], "invalid choice: 'lenet'"),
    (["evaluate", "--checkpoint", "thesis:resnet20-tanh"], "unknown thesis checkpoint 'thesis:resnet20-tanh'; known: "
                                                           "thesis:resnet20-relu, thesis:resnet20-elu"),
    (["evaluate", "--checkpoint", "model.h5"], "expected thesis:resnet20-<activation>, <tier>:<case>"),
    (["evaluate", "--checkpoint", "thesis:resnet20-relu", "--shards-dir", "x", "--shard", "3"], "expected i/k"),
    (["evaluate", "--checkpoint", "a.keras", "--labels", "target"], "invalid choice: 'target'"),
])
def test_bad_arguments_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and message in err[-1]


def test_activation_choices_are_the_registry(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "{" + ",".join(ACTIVATIONS) + "}" in capsys.readouterr().out.replace("\n", "").replace(" ", "")


def test_several_models_need_shards(capsys):
    code = cli.main(["evaluate", "--checkpoint", "a.keras", "b.keras", "--n", "10"])
    assert code == 2 and "need --shards-dir" in capsys.readouterr().err


def test_a_reference_store_takes_shards_under_the_reference_arithmetic_only(monkeypatch, capsys):
    from kafrob import arithmetic
    from kafrob.bench.store import REFERENCE_DIR

    monkeypatch.setattr(arithmetic, "describe", lambda: {"onednn": False, "contractions": "onednn", "isa": ["avx2"],
                                                         "kaf_kernels": "compiled"})
    store = REFERENCE_DIR / "checkpoints" / "shards"
    assert cli.main(["evaluate", "--checkpoint", "thesis:resnet20-relu", "--n", "200", "--shards-dir", str(store)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run with TF_ENABLE_ONEDNN_OPTS=0 TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL=0" in err[0]


def test_verdict_without_shards_is_one_line(tmp_path, capsys):
    assert cli.main(["verdict", "--shards-dir", str(tmp_path)]) == 2
    assert "no finished shards in" in capsys.readouterr().err
    assert cli.main(["verdict", "--shards-dir", str(tmp_path), "--n", "150"]) == 2  # not a prefix of whole shards
    assert "kafrob: error: n must be a positive multiple of the shard size 200, got 150" in capsys.readouterr().err


def test_train_lr_find_evaluate_sanity_end_to_end(tiny, tmp_path, capsys):
    data_dir, model_path = tiny
    run = tmp_path / "run"
    assert cli.main(["train", "--model", "vgg", "--activation", "relu", "--epochs", "1", "--batch-size", "50",
                     "--data-dir", str(data_dir), "--run-dir", str(run)]) == 0
    assert (run / "model.keras").is_file() and "loss" in json.loads(capsys.readouterr().out)
    plot = tmp_path / "lr.png"
    assert cli.main(["lr-find", "--model", "vgg", "--activation", "relu", "--batch-size", "50", "--steps", "3",
                     "--data-dir", str(data_dir), "--plot", str(plot)]) == 0
    assert plot.is_file() and json.loads(capsys.readouterr().out)["plot"] == str(plot)
    assert cli.main(["evaluate", "--checkpoint", str(run / "model.keras"), "--n", "20", "--iterations", "2",
                     "--restarts", "1", "--data-dir", str(data_dir), "--out", str(tmp_path / "ev")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 20 and (tmp_path / "ev.json").is_file()
    code = cli.main(["sanity", "--checkpoint", str(model_path), "--n", "20", "--iterations", "2", "--restarts", "1",
                     "--quick", "--data-dir", str(data_dir)])
    assert code in (0, 1) and "eps=0 gives clean accuracy" in capsys.readouterr().out


def test_evaluate_runs_any_registered_attack(tiny, tmp_path, capsys):
    data_dir, model_path = tiny
    base = ["evaluate", "--checkpoint", str(model_path), "--n", "10", "--data-dir", str(data_dir)]
    assert cli.main([*base, "--attack", "autoattack"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["attack"]["queries"] == 5000 and summary["robust_accuracy"] <= summary["clean_accuracy"]
    shards_dir = tmp_path / "shards"
    assert cli.main([*base, "--attack", "apgd-t", "--shard-images", "10", "--shards-dir", str(shards_dir)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["n"] == 10
    assert len(list(shards_dir.glob("*/apgd-t-eps8-true-seed0-shard10/shard-0000.npz"))) == 1
    assert cli.main([*base, "--attack", "square", "--backend", "art"]) == 2
    assert "use --attack pgd" in capsys.readouterr().err


def test_sharded_evaluate_as_local_jobs_equals_the_serial_run(tiny, tmp_path):
    """In a child process, as a user runs it (the jobs are submitit processes of their own)."""
    data_dir, model_path = tiny
    common = [sys.executable, "-m", "kafrob.cli", "evaluate", "--checkpoint", str(model_path), "--labels", "predicted",
              "true", "--n", "20", "--shard-images", "10", "--iterations", "2", "--restarts", "1",
              "--data-dir", str(data_dir)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    serial = subprocess.run([*common, "--shards-dir", str(tmp_path / "serial")], env=env, capture_output=True,
                            text=True, check=True)
    jobs = subprocess.run([*common, "--shards-dir", str(tmp_path / "jobs"), "--executor", "local", "--jobs", "2",
                           "--jobs-dir", str(tmp_path / "logs")], env=env, capture_output=True, text=True, check=True)
    assert "jobs 2 done, 0 running or queued, 0 failed of 2" in jobs.stderr
    for a, b in zip(json.loads(serial.stdout), json.loads(jobs.stdout), strict=True):
        assert {k: v for k, v in a.items() if k != "cpu_seconds"} == {k: v for k, v in b.items() if k != "cpu_seconds"}


def test_sharded_evaluate_merge_verdict_end_to_end(tiny, tmp_path, capsys, monkeypatch):
    """The released-model commands on stand-ins: a tiny model answers for two thesis rows."""
    import keras

    data_dir, model_path = tiny
    monkeypatch.setattr(bench_run, "load_named_model", lambda spec: keras.saving.load_model(model_path))
    shards_dir = tmp_path / "shards"
    common = ["--labels", "predicted", "true", "--shard-images", "10", "--iterations", "2", "--restarts", "2",
              "--shards-dir", str(shards_dir)]
    assert cli.main(["evaluate", "--checkpoint", "thesis:resnet20-relu", "thesis:resnet20-kaf", *common, "--n", "20",
                     "--data-dir", str(data_dir)]) == 0
    assert [r["n"] for r in json.loads(capsys.readouterr().out)] == [20] * 4
    assert cli.main(["merge", "--checkpoint", "thesis:resnet20-kaf", *common]) == 0
    (predicted, true) = json.loads(capsys.readouterr().out)
    assert predicted["label_mode"] == "predicted" and true["shards"] == 2
    out = tmp_path / "verdict"
    assert cli.main(["verdict", "--iterations", "2", "--restarts", "2", "--shard-images", "10", "--shards-dir",
                     str(shards_dir), "--out", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    assert "20 common test images" in md and "| kaf vs relu | base | predicted | robust |" in md
    assert md.startswith("# Released thesis ResNet20 models: PGD-2x2, batch-mean loss")
    assert out.with_suffix(".png").stat().st_size > 1000
    assert cli.main(["verdict", "--iterations", "2", "--restarts", "2", "--shard-images", "10", "--shards-dir",
                     str(shards_dir), "--out", str(out), "--n", "10"]) == 0  # the first 10 images of the order only
    assert "10 common test images" in out.with_suffix(".md").read_text()
    capsys.readouterr()
    assert cli.main(["verdict", "--iterations", "2", "--restarts", "2", "--shard-images", "10", "--reduction", "sum",
                     "--shards-dir", str(shards_dir), "--out", str(out)]) == 2  # the summed loss: not evaluated
    assert "pgd2x2-sum-eps8-step2" in capsys.readouterr().err
    assert cli.main(["evaluate", "--checkpoint", "thesis:resnet20-relu", "thesis:resnet20-kaf", "--attack",
                     "autoattack", "--labels", "predicted", "true", "--shard-images", "10", "--n", "10",
                     "--shards-dir", str(shards_dir), "--data-dir", str(data_dir)]) == 0
    assert cli.main(["verdict", "--attack", "autoattack", "--shard-images", "10", "--shards-dir", str(shards_dir),
                     "--out", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    assert md.startswith("# Released thesis ResNet20 models: AutoAttack (APGD-CE, APGD-T, FAB-T, Square)")
    assert "Interim reading: n = 10 of the 1000 planned" in md and "| AutoAttack predicted labels %" in md
    capsys.readouterr()
    assert cli.main(["verdict", "--attack", "square", "--shards-dir", str(shards_dir)]) == 2
    assert "a verdict reads the stores of pgd or autoattack, not square" in capsys.readouterr().err


def test_table_and_regenerate_from_measurements(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KAFROB_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr(store, "REFERENCE_DIR", tmp_path / "refs")
    assert cli.main(["table", "--tier", "smoke"]) == 1
    assert "no measurements for tier smoke" in capsys.readouterr().err
    for e in EXPERIMENTS[:-1]:
        store.save_measurement(store.Measurement(e.id, "smoke", 20.0, 10.0, (15.0, 25.0), (6.0, 14.0), 100, 100, 1.0,
                                                 2.3))
    assert cli.main(["table", "--tier", "smoke"]) == 0
    assert "vgg-relu" not in capsys.readouterr().out  # rows are model and activation
    assert cli.main(["regenerate", "--tier", "smoke", "--from-measurements"]) == 1
    assert f"no smoke measurement of {EXPERIMENTS[-1].id}" in capsys.readouterr().err
    e = EXPERIMENTS[-1]
    store.save_measurement(store.Measurement(e.id, "smoke", 20.0, 10.0, (15.0, 25.0), (6.0, 14.0), 100, 100, 1.0, 2.3))
    assert cli.main(["regenerate", "--tier", "smoke", "--from-measurements"]) == 0
    assert json.loads((tmp_path / "refs" / "smoke.json").read_text())["results"][e.id]["train_loss"] == 2.3


def test_regenerate_checkpoints_leaves_out_rows_without_stored_shards(tmp_path, capsys, monkeypatch):
    """The released rows' table is written from the rows whose evaluation has begun, the others named on stderr; with
    none begun it is a one-line error. The environment is the stored shards', not this process's."""
    from kafrob.bench import shards

    def measurement(activation):
        if activation != "relu":
            raise shards.ShardError(f"thesis:resnet20-{activation}: no shard finished in both label modes")
        return store.Measurement("resnet20-relu", "checkpoints", 76.4, 48.5, (75.6, 77.2), (41.7, 55.4), 10000, 200,
                                 1.0, robust_accuracy_true=36.0)

    monkeypatch.setattr(store, "REFERENCE_DIR", tmp_path)
    monkeypatch.setattr(shards, "released_measurement", measurement)
    monkeypatch.setattr(shards, "stored_environment", lambda: {"cpu": "the shards' CPU", "device": "CPU"})
    assert cli.main(["regenerate", "--tier", "checkpoints"]) == 0
    err = capsys.readouterr().err
    assert "left out: resnet20-kaf_free: thesis:resnet20-kaf_free: no shard" in err
    assert "left out: resnet20-relu" not in err
    written = json.loads((tmp_path / "checkpoints.json").read_text())
    assert list(written["results"]) == ["resnet20-relu"] and written["environment"]["cpu"] == "the shards' CPU"
    monkeypatch.setattr(shards, "released_measurement", lambda a: measurement("none"))
    assert cli.main(["regenerate", "--tier", "checkpoints"]) == 2
    assert "no released row has a stored shard" in capsys.readouterr().err
