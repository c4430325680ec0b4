"""The command line: every subcommand answers --help, and bad arguments are one clear line, exit 2."""

from __future__ import annotations

import pytest

from kafrob import cli

SUBCOMMANDS = ("train", "evaluate", "verdict", "merge", "lr-find", "sanity", "table", "regenerate")


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    assert "usage: kafrob " + command in capsys.readouterr().out


def test_unknown_tier_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["table", "--tier", "huge"])
    assert done.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err


def test_bad_worker_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["evaluate", "--checkpoint", "thesis:resnet20-relu", "--shards-dir", "x", "--shard", "3"])
    assert done.value.code == 2 and "expected i/k" in capsys.readouterr().err


def test_unknown_thesis_checkpoint_is_one_line(capsys):
    assert cli.main(["evaluate", "--checkpoint", "thesis:resnet20-tanh", "--n", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kafrob: error: no thesis ResNet20 checkpoint for 'tanh'; known: relu, elu")


def test_unknown_activation_is_one_line(tmp_path, capsys):
    code = cli.main(["train", "--model", "vgg", "--activation", "gelu", "--run-dir", str(tmp_path),
                     "--data-dir", str(tmp_path)])
    assert code == 2
    assert "unknown activation 'gelu'" in capsys.readouterr().err


def test_several_models_need_shards(capsys):
    code = cli.main(["evaluate", "--checkpoint", "a.keras", "b.keras", "--n", "10"])
    assert code == 2 and "need --shards-dir" in capsys.readouterr().err


def test_verdict_without_shards_is_one_line(tmp_path, capsys):
    assert cli.main(["verdict", "--shards-dir", str(tmp_path)]) == 2
    assert "no finished shards in" in capsys.readouterr().err
