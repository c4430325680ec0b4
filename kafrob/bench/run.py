"""Running the benchmark: obtain a case's model (train, reuse, or load the released one) and evaluate it, whole
(``run_case``) or in resumable per-example shards (``run_shard``, ``run_shards``); ``benchmark`` runs a case at a
tier, stores its Measurement and judges it."""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from kafrob import atomic
from kafrob.arithmetic import kaf_kernels
from kafrob.attacks import RUNNERS
from kafrob.attacks.common import predict
from kafrob.bench import store
from kafrob.bench.cases import Experiment, case_id
from kafrob.bench.shards import (
    FIELDS,
    SHARD_IMAGES,
    ShardError,
    ShardSpec,
    computed_with,
    evaluation_order,
    finished,
    load_shard,
    released_measurement,
    save_shard,
    sibling,
)
from kafrob.bench.store import (
    Measurement,
    code_version,
    current_measurement,
    environment,
    runs_dir,
    save_measurement,
)
from kafrob.bench.tiers import Source, Tier
from kafrob.data import Cifar10, to_float
from kafrob.evaluate import evaluate, our_attack
from kafrob.train import build_for, train


@dataclass(frozen=True)
class DryRun:
    """A tier's exact configuration cut short, to prove its code path end to end (e.g. the full tier on a CPU):
    training stops after ``steps`` steps in all, evaluation covers ``images`` test images; nothing else changes."""

    steps: int = 2
    images: int = 10


def obtain_model(e: Experiment, tier: Tier, data: Cifar10, *, seed: int = 0, progress: bool = True,
                 strategy: tf.distribute.Strategy | None = None, dry_run: DryRun | None = None,
                 clean: bool = False) -> tuple[keras.Model, list[dict]]:
    """Train (or reuse the cached training of the same config and code), or load the released thesis model.

    Returns the model and its training history (per-epoch records; empty for released models). A dry run
    trains in a fresh folder under runs/dry-run and is never reused. ``clean``: train without adversarial examples.
    """
    if tier.source is Source.THESIS_CHECKPOINT:
        if e.model != "resnet20":
            raise ValueError(f"the thesis released ResNet20 checkpoints only, not {e.id}")
        from kafrob.checkpoints import load_thesis_model

        return load_thesis_model(e.activation), []
    config = tier.train_config(e, seed, adversarial=not clean)
    if dry_run is not None:
        result = train(config, data, Path(tempfile.mkdtemp(prefix=f"{e.id}-", dir=_mkdir(runs_dir() / "dry-run"))),
                       progress=progress, strategy=strategy, max_steps=dry_run.steps)
        return result.model, result.history
    kernels = f"-{kaf_kernels()}" if e.activation.startswith("kaf") else ""
    run_dir = runs_dir() / "models" / f"{case_id(e, clean)}-{config.digest()}-{code_version()}{kernels}"
    weights = run_dir / "final.weights.h5"
    if weights.exists():
        model = build_for(config, "float32")
        model.load_weights(weights)
        return model, json.loads((run_dir / "history.json").read_text())["history"]
    result = train(config, data, run_dir, resume=(run_dir / "checkpoint.npz").exists(), progress=progress,
                   strategy=strategy)
    atomic.save_with(weights, result.model.save_weights)
    return result.model, result.history


def load_named_model(name: str) -> keras.Model:
    """A model by the name the CLI and the shards use: ``thesis:resnet20-<act>`` (a released model), ``<tier>:<case>``
    (one this suite trained and kept, kafrob.bench.trained) or a ``.keras`` file."""
    from kafrob.bench.trained import is_stored_name, stored_path, train_command

    if name.startswith("thesis:"):
        from kafrob.checkpoints import load_thesis_model

        return load_thesis_model(name.split(":", 1)[1].removeprefix("resnet20-"))
    import kafrob.kaf  # noqa: F401  (registers the KAF layer)

    path = stored_path(name) if is_stored_name(name) else Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"no model at {path}" + (f": train and keep it first ({train_command(name)})"
                                                         if is_stored_name(name) else ""))
    return keras.saving.load_model(path)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_case(e: Experiment, tier: Tier, data: Cifar10, *, seed: int = 0, progress: bool = True,
             strategy: tf.distribute.Strategy | None = None, dry_run: DryRun | None = None,
             clean: bool = False) -> Measurement:
    """Obtain the model (``strategy``: data-parallel training; ``clean``: the case's clean-training baseline, row
    ``<case>-clean``), evaluate it, save per-example results.

    The tier's attack is the compared one; an attack on the predicted labels (the thesis's protocol) is
    repeated on the true labels on the same images, reported beside it (``robust_accuracy_true``)."""
    start = time.time()
    model, history = obtain_model(e, tier, data, seed=seed, progress=progress, strategy=strategy, dry_run=dry_run,
                                  clean=clean)
    case = case_id(e, clean)
    clean_n = tier.clean_images if tier.clean_images is not None else len(data.y_test)  # None: all of them
    n = tier.test_images
    if dry_run is not None:
        n = clean_n = dry_run.images
    attack = partial(our_attack, jit_compile=tier.attack_xla)
    result = evaluate(model, data, n=n, clean_n=clean_n, attack=tier.attack, seed=seed, run_attack=attack,
                      progress=progress)
    folder = runs_dir() / ("dry-run" if dry_run else "results") / tier.name
    result.save(folder / case)
    robust_true = None
    if tier.attack.label_mode == "predicted":
        true = evaluate(model, data, n=n, attack=dataclasses.replace(tier.attack, label_mode="true"),
                        seed=seed, run_attack=attack, progress=progress)
        true.save(folder / f"{case}-true-labels")
        robust_true = 100 * true.robust_accuracy
    pct = lambda t: (100 * t[0], 100 * t[1])  # noqa: E731
    return Measurement(case, tier.name, 100 * result.clean_accuracy, 100 * result.robust_accuracy,
                       pct(result.clean_interval), pct(result.robust_interval), len(result.clean_indices),
                       result.n, time.time() - start, history[-1]["loss"] if history else None, robust_true)


def benchmark(e: Experiment, tier: Tier, data: Cifar10 | None, *, seed: int = 0, progress: bool = True,
              strategy: tf.distribute.Strategy | None = None, clean: bool = False) -> tuple[Measurement, list[str]]:
    """Run one case at one tier, store its Measurement (runs/measurements) and judge it: (measurement, failures).

    Released checkpoints are not re-evaluated: their stored evaluation is re-computed on a few images and judged.
    ``clean``: the case's clean-training baseline, judged also by FBF's margin over it (the FBF case's measurement
    by this code and seed, stored by its own ``benchmark``, or measured now: its trained model is cached).
    """
    from kafrob.bench import judge

    if tier.source is Source.THESIS_CHECKPOINT:
        m = released_measurement(e.activation)
        failures = judge.recompute(f"thesis:{e.id}") + judge.released_failures(e.activation)
    else:
        m = run_case(e, tier, data, seed=seed, progress=progress, strategy=strategy, clean=clean)
        failures = judge.compare(m, tier)
        if clean:
            fbf = (current_measurement(tier.name, e.id, seed)
                   or benchmark(e, tier, data, seed=seed, progress=progress, strategy=strategy)[0])
            failures += judge.fbf_margin(fbf, m, tier)
    save_measurement(m, seed)
    return m, failures


def _header(spec: ShardSpec, shard: int, seconds: float) -> dict:
    return {"spec": spec.to_dict(), "shard": shard, "seconds": seconds, "code_version": code_version(),
            **environment()}


def run_shard(model, data, spec: ShardSpec, shard: int, *, batch_size: int = SHARD_IMAGES,
              reuse: dict | None = None) -> dict:
    """Per-example results of one shard (arrays of FIELDS) and its header.

    ``reuse``: the same shard in the other label mode (``sibling``). Where both modes attack the same label
    (the clean prediction is right) the attack is the same computation (random starts are per image:
    ``kafrob.attacks.common.random_starts``), so those images take its results and only the others are attacked.
    """
    start = time.time()
    order = evaluation_order(data.y_test, spec.seed)
    index = order[shard * spec.shard_images:(shard + 1) * spec.shard_images]
    if len(index) < spec.shard_images:
        raise ShardError(f"shard {shard} lies beyond the {len(order)} test images")
    x_all = to_float(data.x_test[index]).numpy()
    clean = np.concatenate([predict(model, x_all[b:b + batch_size]).numpy() for b in range(0, len(index), batch_size)])
    attacked = clean if spec.attack.label_mode == "predicted" else data.y_test[index].astype(np.int32)
    first = np.full(len(index), -1, np.int32)
    adv_pred = attacked.copy()
    todo = np.arange(len(index))
    if reuse is not None:
        if not np.array_equal(reuse["index"], index) or not np.array_equal(reuse["clean_pred"], clean):
            raise ShardError(f"shard {shard}: the other label mode's file has other images or clean predictions; "
                             "recompute it")
        same = reuse["attack_label"] == attacked
        first[same], adv_pred[same] = reuse["first_restart"][same], reuse["adv_pred"][same]
        todo = np.flatnonzero(~same)
    masking = []
    for b in range(0, len(todo), batch_size):
        part = todo[b:b + batch_size]
        out = RUNNERS[type(spec.attack)](model, x_all[part], attacked[part], spec.attack, seed=spec.seed,
                                         ids=index[part], jit_compile=None)
        first[part] = out.first
        adv_pred[part] = predict(model, out.x_adv).numpy()
        if getattr(out, "flags", None) is not None:
            masking.append({"images": len(part), **dataclasses.asdict(out.flags), "raised": out.flags.raised})
    arrays = dict(zip(FIELDS, (index, data.y_test[index], clean, attacked, first, adv_pred), strict=True))
    header = _header(spec, shard, time.time() - start)
    if masking:
        header["masking"] = masking  # AutoAttack's gradient-masking flags, per attacked batch
    header["reused"] = int(len(index) - len(todo))  # images whose results came from the other label mode
    return {**{f: np.asarray(v).astype(np.int32) for f, v in arrays.items()}, "header": header}


def _same_arithmetic(spec: ShardSpec, root: Path, here: dict) -> None:
    """Refuse to add shards to an evaluation whose finished shards were computed under another arithmetic or
    versions: they could not be merged (kafrob.bench.shards.merge)."""
    done = finished(spec, root)
    if not done:
        return
    header = load_shard(spec.shard_path(root, done[0]))["header"]
    if computed_with(header) != here:
        from kafrob.arithmetic import env_for, label

        needs = " ".join(f"{k}={v}" for k, v in env_for(header).items())
        raise ShardError(f"{spec.directory(root)} holds shards computed under {label(header)}, TF "
                         f"{header.get('tensorflow')}, Keras {header.get('keras')}; this process computes under "
                         f"{label(environment())}: run with {needs} and the locked versions, or --recompute them all")


def reference_arithmetic_only(root: Path) -> None:
    """The stores under reference_results/ are for everyone to re-compute on any x86 CPU: new shards there are made
    under the reference arithmetic only (kafrob.arithmetic); elsewhere any arithmetic."""
    from kafrob import arithmetic

    if Path(root).resolve().is_relative_to(store.REFERENCE_DIR.resolve()) and not arithmetic.isa_independent(
            arithmetic.describe()):
        raise ValueError(f"{root} is a reference store, computed under the reference arithmetic: run with "
                         f"{arithmetic.REFERENCE_COMMAND} (this process: {arithmetic.label(arithmetic.describe())})")


def eta_seconds(done: list[tuple[str, float]], remaining: list[str]) -> float:
    """Seconds the ``remaining`` shards (their label modes) will take, from the ``done`` ones' (label mode, seconds):
    each at the mean of its mode's, else of all. The modes differ about 20-fold (a true-label shard reuses the
    predicted-label attack where the labels agree), so one mean over both would swing with the order."""
    if not done:
        return float("nan")
    by_mode: dict[str, list[float]] = {}
    for mode, seconds in done:
        by_mode.setdefault(mode, []).append(seconds)
    overall = sum(sec for _, sec in done) / len(done)
    return sum(sum(by_mode[m]) / len(by_mode[m]) if m in by_mode else overall for m in remaining)


def run_shards(plan: Iterable[tuple[ShardSpec, int]], root: Path, *, load_model: Callable[[str], object],
               load_data: Callable[[], object], progress: Callable[[str], None] = print,
               recompute: bool = False) -> list[Path]:
    """Run every (spec, shard) of ``plan`` that has no file yet (all of them with ``recompute``), in order; data
    and models are loaded only if something is left to do. Progress covers the whole plan. Returns the files."""
    plan = list(plan)
    todo = [(spec, shard) for spec, shard in plan if recompute or not spec.shard_path(root, shard).exists()]
    images = sum(spec.shard_images for spec, _ in todo)
    progress(f"kafrob: {len(plan) - len(todo)} of {len(plan)} shards done, {len(todo)} to run ({images} images)")
    if todo:
        reference_arithmetic_only(root)
    data = load_data() if todo else None
    done_images, took = 0, []
    here = computed_with(environment())  # this process's arithmetic and versions
    if not recompute:
        for spec in dict.fromkeys(spec for spec, _ in todo):
            _same_arithmetic(spec, root, here)
    for i, (spec, shard) in enumerate(todo, 1):
        if not recompute and spec.shard_path(root, shard).exists():  # another process finished it meanwhile
            progress(f"kafrob: [{i}/{len(todo)}] {spec.model} {spec.attack.label_mode} labels, shard {shard} "
                     f"finished by another process")
            continue
        other = sibling(spec).shard_path(root, shard)
        reuse = load_shard(other) if other.exists() else None
        if reuse is not None and (computed_with(reuse["header"]) != here
                                  or reuse["header"].get("reused")):
            reuse = None  # other arithmetic, or itself reused: then neither file would hold the attack's cost
        started = time.time()
        result = run_shard(load_model(spec.model), data, spec, shard, reuse=reuse)
        save_shard(spec.shard_path(root, shard), result)
        done_images += spec.shard_images
        took.append((spec.attack.label_mode, time.time() - started))  # with the model's loading
        robust = float(np.mean(result["adv_pred"] == result["label"]))
        eta = eta_seconds(took, [s.attack.label_mode for s, _ in todo[i:]])
        progress(f"kafrob: [{i}/{len(todo)}] {spec.model} {spec.attack.label_mode} labels, shard {shard} done "
                 f"(robust {100 * robust:.1f}%, {result['header']['seconds']:.0f} s); {done_images} images this "
                 f"run, ETA {eta / 60:.0f} min")
    return [spec.shard_path(root, shard) for spec, shard in plan]

