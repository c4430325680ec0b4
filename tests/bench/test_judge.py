"""The benchmark's judgement: a case against its tier's reference; the released models against the thesis."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kafrob.arithmetic import REFERENCE_COMMAND, REFERENCE_ENV, machine_slug
from kafrob.attacks.pgd import Reduction
from kafrob.bench import judge, shards, store
from kafrob.bench.cases import BY_ID
from kafrob.bench.tiers import get_tier


def _measurement(case="resnet20-kaf", tier="full", clean=77.0, robust=50.0, loss=None, n=200):
    half = 3.5
    return store.Measurement(case, tier, clean, robust, (clean - 0.8, clean + 0.8), (robust - half, robust + half),
                             10000, n, 1.0, loss)


def test_thesis_reference_allows_tolerance_plus_half_width():
    e, tier = BY_ID["resnet20-kaf"], get_tier("full")  # +-3 points + the half-width (0.8 clean, 3.5 robust)
    assert judge.compare(_measurement(clean=e.thesis_accuracy - 3.5, robust=e.thesis_robustness + 6.4), tier) == []
    (failure,) = judge.compare(_measurement(clean=e.thesis_accuracy - 4.0, robust=e.thesis_robustness), tier)
    assert "clean_accuracy: measured 74.08%" in failure and "expected 78.08%" in failure
    assert "delta -4.00" in failure and "allowed +-3.80" in failure and "95% CI" in failure


def test_floor_reference_asks_a_retrained_model_to_reach_the_kept_ones_less_the_margin(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "REFERENCE_DIR", tmp_path)
    tier = get_tier("short")  # floors 5 points under the kept model's numbers
    kept = dataclasses.replace(_measurement("resnet20-relu", "short", clean=60.0, robust=40.0),
                               robust_accuracy_true=30.0)
    (tmp_path / "short.json").write_text(json.dumps({"results": {"resnet20-relu": kept.to_dict()}}))
    better = dataclasses.replace(kept, clean_accuracy=70.0, robust_accuracy=35.5, robust_accuracy_true=25.0)
    assert judge.compare(better, tier) == []
    worse = dataclasses.replace(kept, robust_accuracy=34.9, robust_accuracy_true=None)
    failures = judge.compare(worse, tier)
    assert failures == ["resnet20-relu robust_accuracy: measured 34.90%, floor 35.00% (the kept model's 40.00% less "
                        "5.0 points)", "resnet20-relu robust_accuracy_true: measured nothing, floor 25.00% (the kept "
                        "model's 30.00% less 5.0 points)"]
    with pytest.raises(KeyError, match="has no row resnet20-kaf"):
        judge.compare(dataclasses.replace(worse, case="resnet20-kaf"), tier)


def test_fbf_must_beat_clean_training_by_the_kept_models_margin_less_the_floor_margin(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "REFERENCE_DIR", tmp_path)
    tier = get_tier("short")
    fbf = dataclasses.replace(_measurement("resnet20-relu", "short", clean=60.0, robust=40.0),
                              robust_accuracy_true=30.0)
    clean = dataclasses.replace(_measurement("resnet20-relu-clean", "short", clean=85.0, robust=2.0),
                                robust_accuracy_true=0.0)  # kept margins: 38 and 30 points
    (tmp_path / "short.json").write_text(json.dumps({"results": {m.case: m.to_dict() for m in (fbf, clean)}}))
    assert judge.fbf_margin(dataclasses.replace(fbf, robust_accuracy=35.0), clean, tier) == []  # 33 >= 38 - 5
    (failure,) = judge.fbf_margin(fbf, dataclasses.replace(clean, robust_accuracy_true=5.5), tier)
    assert failure == ("resnet20-relu robust_accuracy_true: FBF beats clean training by +24.50 points, the kept models "
                       "by +30.00; floor +25.00 (less 5.0)")
    assert judge.compare(dataclasses.replace(clean, clean_accuracy=79.9), tier) == [
        "resnet20-relu-clean clean_accuracy: measured 79.90%, floor 80.00% (the kept model's 85.00% less 5.0 points)"]


def test_suite_reference_pins_the_training_loss(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "REFERENCE_DIR", tmp_path)
    e, tier = BY_ID["vgg-kaf"], get_tier("smoke")
    with pytest.raises(FileNotFoundError, match="nox -s regenerate -- --tier smoke"):
        judge.expected_values(e, tier)
    row = _measurement("vgg-kaf", "smoke", clean=10.0, robust=10.0, loss=2.3119, n=100).to_dict()
    (tmp_path / "smoke.json").write_text(json.dumps({"results": {"vgg-kaf": row}}))
    same = _measurement("vgg-kaf", "smoke", clean=11.0, robust=9.0, loss=2.3119 + 0.01, n=100)
    assert judge.compare(same, tier) == []
    drifted = _measurement("vgg-kaf", "smoke", clean=10.0, robust=10.0, loss=2.3119 + 0.05, n=100)
    (failure,) = judge.compare(drifted, tier)
    assert "train_loss" in failure and "trajectory changed" in failure and "KAF kernels" not in failure
    # References measured with the other KAF kernels: the failure says so.
    (tmp_path / "smoke.json").write_text(json.dumps({"environment": {"kaf_kernels": "compiled"},
                                                     "results": {"vgg-kaf": row}}))
    monkeypatch.setattr(judge, "kaf_kernels", lambda: "portable")
    (failure,) = judge.compare(drifted, tier)
    assert "measured with the compiled KAF kernels, this run used the portable ones" in failure
    with pytest.raises(KeyError, match="no row vgg-relu"):
        judge.expected_values(BY_ID["vgg-relu"], tier)

THESIS = {"relu": (77.52, 50.17), "elu": (75.42, 51.69), "swish": (78.68, 53.88)}


def _merged(robust_correct: int, n: int) -> shards.Merged:
    label = np.zeros(n, np.int32)
    adv = np.where(np.arange(n) < robust_correct, 0, 1).astype(np.int32)
    arrays = {"index": np.arange(n), "label": label, "clean_pred": label, "attack_label": label,
              "first_restart": np.where(adv == 0, -1, 0), "adv_pred": adv}
    return shards.Merged({}, (0,), {"seconds": 1.0}, arrays)


def test_against_thesis_uses_the_other_rows_shift_and_both_samples():
    clean = {"relu": 76.40, "elu": 74.42, "swish": 77.48}  # JPEG shifts -1.12, -1.00, -1.20
    checks = {c.metric: c for c in judge.against_thesis("relu", THESIS, clean, _merged(960, 2000))}
    c = checks["clean accuracy"]
    assert c.expected == pytest.approx(77.52 - 1.10) and c.passed  # the mean shift of elu and swish only
    r = checks["robust accuracy"]
    half = 100 * 1.96 * np.sqrt(0.48 * 0.52 / 2000 + 0.5017 * 0.4983 / 2000)
    assert r.measured == 48.0 and r.n == 2000 and r.allowed == pytest.approx(half + 1.10, abs=0.01) and r.passed
    far = {c.metric: c for c in judge.against_thesis("relu", THESIS, {**clean, "relu": 74.0}, _merged(800, 2000))}
    assert not far["clean accuracy"].passed and not far["robust accuracy"].passed
    assert "allowed" in far["robust accuracy"].line("relu")


@pytest.mark.slow
def test_recompute_reproduces_the_stored_recheck_shard_and_catches_a_change(shared_checkpoints, cifar, tmp_path):
    """The stored ReLU recheck shards (the store's, and this machine's where stored) are computed again identically;
    three altered robust outcomes are caught on any machine (more than the spread allowed between machines)."""
    copies = []
    by_machine = shards.SHARDS_DIR / judge.RECHECK_BY_MACHINE
    for root, into in [(shards.SHARDS_DIR, tmp_path), *((folder, tmp_path / judge.RECHECK_BY_MACHINE / folder.name)
                                                        for folder in by_machine.glob("*"))]:
        for mode in ("predicted", "true"):
            spec = shards.released_spec("relu", mode, judge.RECHECK_IMAGES)
            if spec.directory(root).exists():
                shutil.copytree(spec.directory(root), spec.directory(into))
                copies.append(spec.shard_path(into, 0))
    assert judge.recompute("thesis:resnet20-relu", tmp_path) == []
    altered = [0, 3, 5]
    for path in copies:
        shard = shards.load_shard(path)
        _flip_robust(shard, altered)
        shards.save_shard(path, shard)
    failures = judge.recompute("thesis:resnet20-relu", tmp_path)
    images = shards.load_shard(copies[0])["index"][altered].tolist()
    for mode, failure in zip(("predicted", "true"), failures, strict=False):
        assert failure.startswith(f"thesis:resnet20-relu {mode} labels: adv_pred differs from ")
        assert f"on images {images}:" in failure
    assert len(failures) == 2 or (len(failures) == 3 and "more than the 2 allowed between machines" in failures[2])


def _flip_robust(shard: dict, images: list[int]) -> None:
    """Make each of ``images`` robust where it was fooled and fooled where it was robust."""
    for i in images:
        label = shard["label"][i]
        shard["adv_pred"][i] = (label + 1) % 10 if shard["adv_pred"][i] == label else label


def _tiny_store(tmp_path, cifar, reductions=(Reduction.MEAN,)):
    """A small saved model and its stored recheck shards (the thesis protocol, both label modes, each loss given)."""
    import keras

    from kafrob.bench import run

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3, strides=4, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    path = tmp_path / "tiny.keras"
    model.save(path)
    plan = [(shards.protocol_spec(str(path), mode, judge.RECHECK_IMAGES, r), 0)
            for r in reductions for mode in ("predicted", "true")]
    run.run_shards(plan, tmp_path, load_model=lambda _: model, load_data=lambda: cifar, progress=lambda _: None)
    return path, plan


def test_recompute_checks_the_summed_loss_store_where_there_is_one(cifar, tmp_path):
    """A model stored under both losses is recomputed under both; a changed summed-loss result is named as such."""
    path, plan = _tiny_store(tmp_path, cifar, (Reduction.MEAN, Reduction.SUM))
    assert judge.stored_reductions(str(path), tmp_path) == [Reduction.MEAN, Reduction.SUM]
    assert judge.recompute(str(path), tmp_path) == []
    summed = plan[2][0].shard_path(tmp_path, 0)
    assert "pgd50x10-sum-" in str(summed)
    shard = shards.load_shard(summed)
    shard["first_restart"][0] = 7 if shard["first_restart"][0] != 7 else 8
    shards.save_shard(summed, shard)
    (failure,) = judge.recompute(str(path), tmp_path)
    assert failure.startswith(f"{path} (summed loss) predicted labels: first_restart differs")


def test_recompute_tells_a_cpu_dependent_difference_from_a_code_change(cifar, tmp_path):
    """A small model's stored recheck shard (the thesis protocol, both label modes) recomputes identically; one
    altered per-example result is the code's change under the stored arithmetic, and possibly the CPU's when the
    shard says it was computed under a CPU-dependent arithmetic on another CPU."""
    path, plan = _tiny_store(tmp_path, cifar)
    assert judge.recompute(str(path), tmp_path) == []
    stored = plan[0][0].shard_path(tmp_path, 0)
    shard = shards.load_shard(stored)
    shard["adv_pred"][0] = (shard["adv_pred"][0] + 1) % 10
    shards.save_shard(stored, shard)
    (failure,) = judge.recompute(str(path), tmp_path)
    assert "adv_pred differs from the stored recheck shard" in failure
    assert failure.endswith("the code changed the computation")
    shard["header"].update(onednn=False, contractions="onednn", isa=["not-this-cpu"], cpu="another CPU")
    for spec, _ in plan:  # both modes' headers: the stored arithmetic is read from the predicted one
        other = shards.load_shard(spec.shard_path(tmp_path, 0))
        shards.save_shard(spec.shard_path(tmp_path, 0), {**other, "header": {**other["header"], **shard["header"],
                                                                             "spec": other["header"]["spec"]}})
    failures = judge.recompute(str(path), tmp_path)
    assert failures and all("stored on another CPU (oneDNN off but oneDNN's sgemm" in f for f in failures)
    assert "TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL=0 run none of oneDNN's CPU-dispatched code" in failures[0]


def _as_stored_elsewhere(plan, root, alter):
    """The store's recheck shards as if stored under the reference arithmetic on an AMD EPYC, ``alter``-ed."""
    for spec, _ in plan:
        shard = shards.load_shard(spec.shard_path(root, 0))
        alter(shard)
        shards.save_shard(spec.shard_path(root, 0), {**shard, "header": {
            **shard["header"], "onednn": False, "contractions": "eigen", "cpu": "AMD EPYC", "l2_kib": 1}})


def test_recompute_holds_each_machine_to_its_own_recheck_shard(cifar, tmp_path):
    """Under the reference arithmetic results still differ between machines on a few borderline images. A machine
    without a recheck shard of its own is held to the store's within the spread measured between machines (which
    restart fooled an image may differ; more outcomes than allowed fail, naming both machines and the command that
    stores this one's); once stored, the machine is held to its own recheck shard exactly."""
    path, plan = _tiny_store(tmp_path, cifar)

    def restart(shard):
        shard["first_restart"][0] = 7 if shard["first_restart"][0] != 7 else 8

    _as_stored_elsewhere(plan, tmp_path, restart)
    assert judge.cross_machine_allowance(judge.RECHECK_IMAGES) == 2
    assert judge.recompute(str(path), tmp_path) == []  # which restart succeeded is no outcome

    _as_stored_elsewhere(plan, tmp_path, lambda shard: _flip_robust(shard, [0, 1, 2]))  # in both label modes
    here = judge.recheck_root(tmp_path, store.environment())
    assert here == tmp_path / "recheck" / machine_slug(store.environment())
    command = f"{REFERENCE_COMMAND} kafrob {' '.join(judge.recheck_args(str(path), here))}"
    *differences, verdict = judge.recompute(str(path), tmp_path)
    assert verdict == (f"{path}: 3 of 10 recheck images change outcome (clean prediction or robust correctness), "
                       f"more than the 2 allowed between machines (CROSS_MACHINE)")
    assert any(f.startswith(f"{path} predicted labels: adv_pred differs from the stored recheck shard on images")
               for f in differences)
    assert all("stored on {'cpu': 'AMD EPYC'" in f and f.endswith(f"`{command}`") for f in differences)
    done = subprocess.run([sys.executable, "-m", "kafrob.cli", *judge.recheck_args(str(path), here)],
                          env={**os.environ, **REFERENCE_ENV}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert judge.recompute(str(path), tmp_path) == []  # held to this machine's recheck, not the store's
    own = plan[1][0].shard_path(here, 0)
    shard = shards.load_shard(own)
    shard["first_restart"][2] = 7 if shard["first_restart"][2] != 7 else 8
    shards.save_shard(own, shard)
    (failure,) = judge.recompute(str(path), tmp_path)  # exactly: no allowance on its own machine
    assert failure.startswith(f"{path} true labels: first_restart differs from the recheck shard stored on "
                              f"{store.environment()['cpu']} on images")
    assert failure.endswith("the code changed the computation")


def test_recompute_holds_a_store_made_with_the_exact_rsqrt_to_it_exactly_on_any_machine(cifar, tmp_path):
    """With the exact rsqrt no instruction the CPU maker chooses is left, so no allowance between machines."""
    path, plan = _tiny_store(tmp_path, cifar)

    def exact_restart(shard):
        shard["first_restart"][0] = 7 if shard["first_restart"][0] != 7 else 8
        shard["header"]["rsqrt"] = "exact"

    _as_stored_elsewhere(plan, tmp_path, exact_restart)
    failures = judge.recompute(str(path), tmp_path)
    assert [f.split(":")[0] for f in failures] == [f"{path} {mode} labels" for mode in ("predicted", "true")]
    assert all(" first_restart differs from the stored recheck shard on images [" in f for f in failures)
    assert all(f.endswith("the code changed the computation") for f in failures)


def test_recompute_on_another_machine_with_other_versions_asks_for_the_locked_ones(cifar, tmp_path):
    """Other TensorFlow versions are never excused as the spread between machines."""
    path, plan = _tiny_store(tmp_path, cifar)
    _as_stored_elsewhere(plan, tmp_path, lambda shard: shard["header"].update(tensorflow="0.0"))
    (failure,) = judge.recompute(str(path), tmp_path)
    assert failure.startswith(f"{path}: the stored shards were computed with") and failure.endswith(
        "install the locked versions (requirements.lock)")


def test_an_eigen_store_without_its_recheck_shard_names_the_command_that_stores_it(tmp_path):
    """Under Eigen's contractions a result depends on the batch, so the first images of a larger shard are no
    reference: the recompute asks for the recheck shard (of each loss stored) instead of reporting differences."""
    arrays = {f: np.zeros(shards.SHARD_IMAGES, np.int32) for f in shards.FIELDS}
    for mode in ("predicted", "true"):
        for reduction in Reduction:
            shards.save_shard(shards.protocol_spec("thesis:resnet20-relu", mode, reduction=reduction).shard_path(
                tmp_path, 0), {**arrays, "header": {"onednn": False, "contractions": "eigen", "kaf_kernels": "native"}})
    mean, summed = judge.recompute("thesis:resnet20-relu", tmp_path)
    command = (f"TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL=0 kafrob evaluate --checkpoint thesis:resnet20-relu --labels "
               f"predicted true --n 10 --shard-images 10 --shards-dir {tmp_path}")
    assert "no recheck shard" in mean and mean.endswith(f"{command}`")
    assert "no recheck shard" in summed and summed.endswith(f"{command} --reduction sum`")
