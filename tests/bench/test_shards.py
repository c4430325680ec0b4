"""Sharded evaluation: a fixed stratified order, atomic shards, resume after a kill, merge checks."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from kafrob import arithmetic
from kafrob.attacks.autoattack import AutoAttackConfig
from kafrob.attacks.pgd import PGDConfig
from kafrob.bench import run as bench_run
from kafrob.bench import shards
from kafrob.data import Cifar10

ATTACK = PGDConfig(iterations=20, restarts=3, label_mode="predicted")


def test_evaluation_order_is_a_stratified_permutation():
    labels = np.repeat(np.arange(10), 1000)
    order = shards.evaluation_order(labels, seed=0)
    assert sorted(order) == list(range(10_000))
    for n in (10, 200, 2000):  # every prefix of 10k images holds k of each class
        assert np.all(np.bincount(labels[order[:n]], minlength=10) == n // 10)
    assert not np.array_equal(order, shards.evaluation_order(labels, seed=1))
    with pytest.raises(ValueError, match="equally many"):
        shards.evaluation_order(np.array([0, 0, 1]))


def test_folders_name_the_attack_and_keep_the_stored_pgd_names():
    pgd = shards.ShardSpec("thesis:resnet20-relu", PGDConfig(iterations=50, restarts=10, label_mode="predicted"))
    assert pgd.attack_id == "pgd50x10-eps8-step2-predicted-seed0-shard200"  # reference_results/checkpoints/shards
    assert "name" not in pgd.to_dict()["attack"] and "reduction" not in pgd.to_dict()["attack"]  # as stored before
    summed = shards.ShardSpec(pgd.model, dataclasses.replace(pgd.attack, reduction="sum"))
    assert summed.attack_id == "pgd50x10-sum-eps8-step2-predicted-seed0-shard200"
    assert summed.to_dict()["attack"]["reduction"] == "sum" and json.dumps(summed.to_dict())
    aa = shards.ShardSpec("m.keras", AutoAttackConfig(label_mode="true"))
    assert aa.attack_id == "autoattack-eps8-true-seed0-shard200" and aa.to_dict()["attack"]["name"] == "autoattack"
    small = shards.ShardSpec("m.keras", AutoAttackConfig(queries=50))
    assert small.attack_id == "autoattack-queries50-eps8-true-seed0-shard200"


def test_shards_for_workers():
    spec = shards.ShardSpec("m.keras", ATTACK, shard_images=100)
    assert shards.shards_for(1000, spec) == list(range(10))
    assert shards.shards_for(1000, spec, (1, 3)) == [1, 4, 7]
    with pytest.raises(ValueError, match="multiple of the shard size"):
        shards.shards_for(250, spec)
    with pytest.raises(ValueError, match="i/k"):
        shards.shards_for(1000, spec, (3, 3))
    with pytest.raises(ValueError, match="multiple of 10"):
        shards.ShardSpec("m.keras", ATTACK, shard_images=15)


def _evaluate(data_dir, model_path, out_dir, **popen):
    cmd = [sys.executable, "-m", "kafrob.cli", "evaluate", "--checkpoint", str(model_path), "--labels", "predicted",
           "true", "--n", "100", "--shard-images", "10", "--iterations", "20", "--restarts", "3",
           "--shards-dir", str(out_dir)]
    env = {**os.environ, "KAFROB_DATA_DIR": str(data_dir), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _specs(model_path):
    return [shards.ShardSpec(str(model_path), PGDConfig(iterations=20, restarts=3, label_mode=m), shard_images=10)
            for m in ("predicted", "true")]


def test_killed_evaluation_resumes_to_the_uninterrupted_result(tiny, tmp_path):
    data_dir, model_path = tiny
    straight = _evaluate(data_dir, model_path, tmp_path / "straight")
    interrupted = tmp_path / "interrupted"
    victim = _evaluate(data_dir, model_path, interrupted)
    deadline = time.time() + 300
    while len(list(interrupted.rglob("shard-*.npz"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    finished = len(list(interrupted.rglob("shard-*.npz")))
    assert 3 <= finished < 20, "the kill should land between the first and the last shard"
    stamps = {p: p.stat().st_mtime_ns for p in interrupted.rglob("shard-*.npz")}
    resumed = _evaluate(data_dir, model_path, interrupted)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert f"kafrob: {finished} of 20 shards done, {20 - finished} to run" in err  # progress: what was done
    assert f"kafrob: [{20 - finished}/{20 - finished}]" in err and "ETA" in err
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items()), "a finished shard was recomputed"
    out_straight, err_straight = straight.communicate(timeout=600)
    assert straight.returncode == 0, err_straight
    drop_time = lambda rows: [{k: v for k, v in r.items() if k != "cpu_seconds"} for r in rows]  # noqa: E731
    assert drop_time(json.loads(out)) == drop_time(json.loads(out_straight))  # the merged summaries
    for spec in _specs(model_path):
        a, b = shards.merge(spec, interrupted), shards.merge(spec, tmp_path / "straight")
        assert a.n == b.n == 100 and a.shards == b.shards == tuple(range(10))
        for field in shards.FIELDS:
            np.testing.assert_array_equal(a.arrays[field], b.arrays[field])


def _data(n_per_class=2):
    y = np.repeat(np.arange(10), n_per_class)
    x = np.random.default_rng(0).integers(0, 256, (len(y), 32, 32, 3), dtype=np.uint8)
    return Cifar10(x, y, x, y, "synthetic")


def test_merge_refuses_other_arithmetic_and_reports_coverage(tmp_path):
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    spec = shards.ShardSpec("tiny", PGDConfig(iterations=2, restarts=2), shard_images=10)
    data = _data()
    lines = []
    paths = bench_run.run_shards([(spec, 0), (spec, 1)], tmp_path, load_model=lambda _: model, load_data=lambda: data,
                       progress=lines.append)
    assert lines[0] == "kafrob: 0 of 2 shards done, 2 to run (20 images)" and "ETA" in lines[-1]
    merged = shards.merge(spec, tmp_path)
    assert merged.n == 20 and merged.shards == (0, 1)
    assert shards.merge(spec, tmp_path, [1]).n == 10
    with pytest.raises(shards.ShardError, match=r"shards \[2\] are not finished"):
        shards.merge(spec, tmp_path, [1, 2])
    other = shards.load_shard(paths[1])
    other["header"]["onednn"] = not other["header"]["onednn"]
    shards.save_shard(paths[1], other)
    with pytest.raises(shards.ShardError, match="another arithmetic"):
        shards.merge(spec, tmp_path)
    other["header"]["onednn"] = not other["header"]["onednn"]
    other["header"]["isa"] = ["avx2"] if other["header"]["onednn"] else []
    shards.save_shard(paths[1], other)  # the CPU's instruction sets matter only under oneDNN code
    if arithmetic.isa_independent(other["header"]):
        assert shards.merge(spec, tmp_path).n == 20
    else:
        with pytest.raises(shards.ShardError, match="another arithmetic"):
            shards.merge(spec, tmp_path)
    other = shards.load_shard(paths[1])  # shards from another code version merge, and the merge says so
    restored = {k: v for k, v in shards.load_shard(paths[0])["header"].items() if k in ("onednn", "isa",
                                                                                         "contractions")}
    other["header"].update(restored, code_version="0123456789ab")
    shards.save_shard(paths[1], other)
    merged = shards.merge(spec, tmp_path)
    assert merged.n == 20 and len(merged.header["code_versions"]) == 2
    assert "0123456789ab" in merged.header["code_versions"]
    with pytest.raises(shards.ShardError, match="no finished shard"):
        shards.merge(shards.ShardSpec("other", spec.attack, shard_images=10), tmp_path)


def test_restarts_run_only_on_images_not_yet_fooled(tmp_path):
    """first_restart is -1 exactly where the adversarial prediction still equals the attacked label."""
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    spec = shards.ShardSpec("tiny", PGDConfig(iterations=1, restarts=4, eps=0.5 / 255, step=0.5 / 255),
                            shard_images=20)
    result = bench_run.run_shard(model, _data(), spec, 0)
    fooled = result["first_restart"] >= 0
    np.testing.assert_array_equal(fooled, result["adv_pred"] != result["attack_label"])
    assert set(result["first_restart"]) <= {-1, 0, 1, 2, 3}


@pytest.mark.parametrize("attack", [PGDConfig(iterations=3, restarts=3, eps=2 / 255, step=1 / 255),
                                    AutoAttackConfig(eps=2 / 255, iterations=5, targets=2, queries=50)],
                         ids=["pgd", "autoattack"])
def test_the_other_label_mode_reuses_identical_attacks(attack):
    """Where the clean prediction is right both label modes attack the same label from the same per-image
    starts: the true-label shard computed with the predicted-label shard's results equals one computed alone."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    data = _data(3)
    spec = shards.ShardSpec("tiny", attack, shard_images=30)
    alone = bench_run.run_shard(model, data, spec, 0)
    predicted = bench_run.run_shard(model, data, shards.sibling(spec), 0)
    reused = bench_run.run_shard(model, data, spec, 0, reuse=predicted)
    right = alone["clean_pred"] == alone["label"]
    assert 0 < reused["header"]["reused"] == right.sum() < 30 and alone["header"]["reused"] == 0
    for field in shards.FIELDS:
        np.testing.assert_array_equal(reused[field], alone[field])
    with pytest.raises(shards.ShardError, match="other images"):
        bench_run.run_shard(model, data, spec, 0, reuse={**predicted, "index": predicted["index"][::-1]})


def test_a_shard_finished_by_another_process_meanwhile_is_not_recomputed(tmp_path):
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    spec = shards.ShardSpec("tiny", PGDConfig(iterations=1, restarts=1), shard_images=10)
    data, lines, loads = _data(), [], []
    elsewhere = bench_run.run_shard(model, data, spec, 1)

    def load_model(_):  # while this process works on shard 0, another one saves shard 1
        loads.append(1)
        shards.save_shard(spec.shard_path(tmp_path, 1), elsewhere)
        return model

    bench_run.run_shards([(spec, 0), (spec, 1)], tmp_path, load_model=load_model, load_data=lambda: data,
                         progress=lines.append)
    assert len(loads) == 1 and "shard 1 finished by another process" in lines[-1]


def test_a_released_row_counts_both_label_modes_on_the_shards_both_have(tmp_path):
    """The true-label shard takes the predicted-label attack where the labels agree, so the row's hours are both
    modes' seconds; its numbers cover only the shards finished in both modes."""
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    data = _data(3)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_test / 255, data.y_test, epochs=20, verbose=0)  # right on most images: the modes share attacks
    spec = {m: shards.released_spec("relu", m, shard_images=10) for m in ("predicted", "true")}
    plan = [(spec["predicted"], 0), (spec["true"], 0), (spec["predicted"], 1)]
    bench_run.run_shards(plan, tmp_path, load_model=lambda _: model, load_data=lambda: data, progress=lambda _: None)
    saved = {(s.attack.label_mode, k): shards.load_shard(s.shard_path(tmp_path, k)) for s, k in plan}
    assert saved["true", 0]["header"]["reused"] > 0
    m = shards.released_measurement("relu", {"relu": 90.0}, tmp_path, shard_images=10)
    assert m.n_robust == 10 and m.n_clean == shards.THESIS_CLEAN_N and m.clean_accuracy == 90.0
    assert m.seconds == saved["predicted", 0]["header"]["seconds"] + saved["true", 0]["header"]["seconds"]
    for mode, value in (("predicted", m.robust_accuracy), ("true", m.robust_accuracy_true)):
        shard = saved[mode, 0]
        assert value == 100 * np.mean(shard["adv_pred"] == shard["label"])
    with pytest.raises(shards.ShardError, match="no shard finished in both label modes"):
        shards.released_measurement("elu", {"elu": 90.0}, tmp_path, shard_images=10)
    # recomputing the predicted shard must not take the true one's results: that one took them from it
    bench_run.run_shards([(spec["predicted"], 0)], tmp_path, load_model=lambda _: model, load_data=lambda: data,
                         progress=lambda _: None, recompute=True)
    assert shards.load_shard(spec["predicted"].shard_path(tmp_path, 0))["header"]["reused"] == 0


def test_the_stored_environment_names_every_cpu_and_refuses_two_arithmetics(tmp_path):
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    spec = shards.ShardSpec("tiny", PGDConfig(iterations=1, restarts=1), shard_images=10)
    paths = bench_run.run_shards([(spec, 0), (spec, 1)], tmp_path, load_model=lambda _: model, load_data=_data,
                                 progress=lambda _: None)
    for path, cpu, isa in zip(paths, ("CPU A", "CPU B"), (["avx2", "fma"], ["avx2"]), strict=True):
        shard = shards.load_shard(path)
        shard["header"].update(onednn=False, contractions="eigen", cpu=cpu, isa=isa)  # the same on both CPUs
        shards.save_shard(path, shard)
    env = shards.stored_environment(tmp_path)
    assert env["cpu"] == "CPU A; CPU B" and env["isa"] == ["avx2"] and env["onednn"] is False
    assert env["threads"] == [arithmetic.intra_op_threads()]
    shard = shards.load_shard(paths[1])
    shard["header"]["onednn"] = True
    shards.save_shard(paths[1], shard)
    with pytest.raises(shards.ShardError, match="2 arithmetics"):
        shards.stored_environment(tmp_path)
    with pytest.raises(shards.ShardError, match="no stored shard"):
        shards.stored_environment(tmp_path / "empty")


def test_shards_are_added_only_under_the_arithmetic_of_those_finished(tmp_path):
    """A shard computed under another arithmetic could not be merged with the finished ones: refused before any
    work, with the environment that would compute under theirs."""
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    spec = shards.ShardSpec("tiny", PGDConfig(iterations=1, restarts=1), shard_images=10)
    (path,) = bench_run.run_shards([(spec, 0)], tmp_path, load_model=lambda _: model, load_data=_data,
                                   progress=lambda _: None)
    shard = shards.load_shard(path)
    shard["header"].update(onednn=not shard["header"]["onednn"])
    shards.save_shard(path, shard)
    wanted = "TF_ENABLE_ONEDNN_OPTS=" + ("1" if shard["header"]["onednn"] else "0")
    with pytest.raises(shards.ShardError, match=f"holds shards computed under .* run with {wanted} "):
        bench_run.run_shards([(spec, 0), (spec, 1)], tmp_path, load_model=lambda _: model, load_data=_data,
                             progress=lambda _: None)
    assert not spec.shard_path(tmp_path, 1).exists()
    bench_run.run_shards([(spec, 1)], tmp_path, load_model=lambda _: model, load_data=_data, progress=lambda _: None,
                         recompute=True)  # asked for: computed (a merge would still refuse the mixture)
    with pytest.raises(shards.ShardError, match="another arithmetic"):
        shards.merge(spec, tmp_path)
