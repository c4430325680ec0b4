"""PGD against AutoAttack on the same stored images, per example."""

from __future__ import annotations

import numpy as np

from kafrob import cli
from kafrob.attacks import named
from kafrob.bench import gap, shards
from kafrob.stats import mcnemar_exact


def test_gap_counts_per_example_on_the_common_images(tiny, tmp_path, capsys):
    data_dir, model_path = tiny
    root = tmp_path / "shards"
    common = ["evaluate", "--checkpoint", str(model_path), "--labels", "true", "--shard-images", "10",
              "--data-dir", str(data_dir), "--shards-dir", str(root)]
    assert cli.main([*common, "--n", "20", "--iterations", "1", "--restarts", "1"]) == 0  # 2 shards of PGD
    assert cli.main([*common, "--n", "10", "--attack", "autoattack"]) == 0  # 1 shard of AutoAttack
    capsys.readouterr()
    pgd = named("pgd", iterations=1, restarts=1)
    weak = shards.merge(shards.ShardSpec(str(model_path), pgd, shard_images=10), root)
    strong = shards.merge(shards.ShardSpec(str(model_path), named("autoattack"), shard_images=10), root)
    g = gap.attack_gap(weak, strong)
    assert g.n == 10  # the images both cover
    w, s = weak.robust_correct[:10], strong.robust_correct
    assert (g.only_stronger_fooled, g.only_weaker_fooled) == (int(np.sum(w & ~s)), int(np.sum(~w & s)))
    assert g.points == 100 * (w.mean() - s.mean())
    assert g.mcnemar_p == mcnemar_exact(g.only_stronger_fooled, g.only_weaker_fooled)
    assert g.masking is not None and gap.attack_gap(weak, weak).masking is None  # PGD computes no masking flags
    out = tmp_path / "gap.md"
    assert cli.main(["gap", "--checkpoint", str(model_path), "--labels", "true", "--shard-images", "10",
                     "--iterations", "1", "--restarts", "1", "--shards-dir", str(root), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "PGD-1x1, batch-mean loss robust" in table and "autoattack robust" in table
    assert table.strip() == out.read_text().strip()

    # a model whose stronger attack has not begun is left out, said on standard error; none at all is an error
    other = tmp_path / "other.keras"
    other.write_bytes(model_path.read_bytes())
    assert cli.main([*common[:2], str(other), *common[3:], "--n", "10", "--iterations", "1", "--restarts", "1"]) == 0
    capsys.readouterr()
    gap_args = ["gap", "--labels", "true", "--shard-images", "10", "--iterations", "1", "--restarts", "1",
                "--shards-dir", str(root)]
    assert cli.main([*gap_args, "--checkpoint", str(model_path), str(other)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("| true ") == 1 and "left out:" in captured.err and "other.keras" in captured.err
    assert cli.main([*gap_args, "--checkpoint", str(other)]) == 2
    assert "no model has finished shards of both attacks" in capsys.readouterr().err
