"""Resumable, sharded evaluation: per-example results of one model under one attack, a shard at a time.

A shard is (model, attack configuration, a slice of one fixed order of the test images). Each finished
shard is one atomic ``.npz`` of per-example results whose header records the spec, the code version and
the arithmetic; a killed run leaves only whole shards, and running the spec again computes only the
missing ones. Shards are independent, so several processes or machines can run them (``--shard i/k``
runs every k-th). ``merge`` assembles whatever shards are finished, says how many images they cover, and
refuses shards computed with different code or arithmetic.

Per example: the clean prediction; under the attack the label it attacked (true, or the model's
prediction as in the thesis), the first restart that changed that label (-1: none did) and the
prediction on the adversarial example. Robust accuracy is the adversarial prediction's accuracy
against the true labels, in both label modes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kafrob import atomic

if TYPE_CHECKING:
    from kafrob.pgd import PGDConfig

SHARD_IMAGES = 200  # a multiple of 10: every prefix of whole shards is class-balanced (evaluation_order)
FIELDS = ("index", "label", "clean_pred", "attack_label", "first_restart", "adv_pred")
# Header fields that must agree for shards to be merged: they change the computed numbers (the arithmetic by
# kafrob.arithmetic.results_key). The code version is recorded, not compared: the checkpoints tier re-computes
# a stored shard and fails if the code changed it.
MUST_AGREE = ("spec", "arithmetic", "tensorflow", "keras")


def agreement_key(header: dict) -> dict:
    from kafrob.arithmetic import results_key

    return {"spec": header.get("spec"), "arithmetic": results_key(header), "tensorflow": header.get("tensorflow"),
            "keras": header.get("keras")}


class ShardError(RuntimeError):
    """Shards that cannot be run or merged as asked; the message says why and what to do."""


def evaluation_order(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Every test index once, in an order whose prefixes of 10k images hold k images of each class: a seeded
    permutation per class, interleaved class by class. The first 2,000 are the thesis-sized stratified sample."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    if len({len(p) for p in per_class}) != 1:
        raise ValueError("evaluation_order needs equally many images of every class (CIFAR-10's test set)")
    return np.stack(per_class, 1).reshape(-1)


@dataclass(frozen=True)
class ShardSpec:
    """What is evaluated: the model (``thesis:resnet20-<act>`` or a ``.keras`` path), the attack, the seeds."""

    model: str
    attack: PGDConfig
    seed: int = 0  # of the image order and of the attack's random starts
    shard_images: int = SHARD_IMAGES

    def __post_init__(self) -> None:
        if self.shard_images <= 0 or self.shard_images % 10:
            raise ValueError(f"shard_images must be a positive multiple of 10, got {self.shard_images}")

    @property
    def attack_id(self) -> str:
        a = self.attack
        return (f"pgd{a.iterations}x{a.restarts}-eps{a.eps * 255:g}-step{a.step * 255:g}-{a.label_mode}"
                f"-seed{self.seed}-shard{self.shard_images}")

    @property
    def model_id(self) -> str:
        return self.model.replace("thesis:", "thesis-").replace("/", "_")

    def directory(self, root: Path) -> Path:
        return Path(root) / self.model_id / self.attack_id

    def shard_path(self, root: Path, shard: int) -> Path:
        return self.directory(root) / f"shard-{shard:04d}.npz"

    def to_dict(self) -> dict:
        return {"model": self.model, "attack": dataclasses.asdict(self.attack), "seed": self.seed,
                "shard_images": self.shard_images}


def shards_for(n: int, spec: ShardSpec, worker: tuple[int, int] = (0, 1)) -> list[int]:
    """The shards covering the first ``n`` images of the order; worker (i, k): every k-th of them from i."""
    if n <= 0 or n % spec.shard_images:
        raise ValueError(f"n must be a positive multiple of the shard size {spec.shard_images}, got {n}")
    i, k = worker
    if not 0 <= i < k:
        raise ValueError(f"worker must be i/k with 0 <= i < k, got {i}/{k}")
    return list(range(n // spec.shard_images))[i::k]


def _header(spec: ShardSpec, shard: int, seconds: float) -> dict:
    from kafrob.bench import code_version, environment

    return {"spec": spec.to_dict(), "shard": shard, "seconds": seconds, "code_version": code_version(),
            **environment()}


def sibling(spec: ShardSpec) -> ShardSpec:
    """The same evaluation in the other label mode."""
    other = "true" if spec.attack.label_mode == "predicted" else "predicted"
    return dataclasses.replace(spec, attack=dataclasses.replace(spec.attack, label_mode=other))


def run_shard(model, data, spec: ShardSpec, shard: int, *, batch_size: int = SHARD_IMAGES,
              reuse: dict | None = None) -> dict:
    """Per-example results of one shard (arrays of FIELDS) and its header.

    ``reuse``: the same shard in the other label mode (``sibling``). Where both modes attack the same label
    (the clean prediction is right) the attack is the same computation (random starts are per image:
    ``kafrob.pgd.random_starts``), so those images take its results and only the others are attacked.
    """
    from kafrob.data import to_float
    from kafrob.pgd import pgd_restarts, predict

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
    for b in range(0, len(todo), batch_size):
        part = todo[b:b + batch_size]
        x_adv, first[part] = pgd_restarts(model, x_all[part], attacked[part], spec.attack, seed=spec.seed,
                                          ids=index[part])
        adv_pred[part] = predict(model, x_adv).numpy()
    arrays = dict(zip(FIELDS, (index, data.y_test[index], clean, attacked, first, adv_pred), strict=True))
    header = _header(spec, shard, time.time() - start)
    header["reused"] = int(len(index) - len(todo))  # images whose results came from the other label mode
    return {**{f: np.asarray(v).astype(np.int32) for f, v in arrays.items()}, "header": header}


def _arithmetic_differs(header: dict) -> bool:
    from kafrob.bench import environment

    here = agreement_key({**environment(), "spec": None})
    there = agreement_key({**header, "spec": None})
    return here != there


def save_shard(path: Path, result: dict) -> Path:
    arrays = {f: result[f] for f in FIELDS}
    return atomic.write_npz(path, header=np.array(json.dumps(result["header"], sort_keys=True)), **arrays)


def load_shard(path: Path) -> dict:
    with np.load(path) as z:
        return {**{f: z[f] for f in FIELDS}, "header": json.loads(str(z["header"]))}


def run(plan: Iterable[tuple[ShardSpec, int]], root: Path, *, load_model: Callable[[str], object],
        load_data: Callable[[], object], progress: Callable[[str], None] = print,
        recompute: bool = False) -> list[Path]:
    """Run every (spec, shard) of ``plan`` that has no file yet (all of them with ``recompute``), in order; data
    and models are loaded only if something is left to do. Progress covers the whole plan. Returns the files."""
    plan = list(plan)
    todo = [(spec, shard) for spec, shard in plan if recompute or not spec.shard_path(root, shard).exists()]
    images = sum(spec.shard_images for spec, _ in todo)
    progress(f"kafrob: {len(plan) - len(todo)} of {len(plan)} shards done, {len(todo)} to run ({images} images)")
    data = load_data() if todo else None
    started, done_images = time.time(), 0
    for i, (spec, shard) in enumerate(todo, 1):
        other = sibling(spec).shard_path(root, shard)
        reuse = load_shard(other) if other.exists() else None
        if reuse is not None and _arithmetic_differs(reuse["header"]):
            reuse = None
        result = run_shard(load_model(spec.model), data, spec, shard, reuse=reuse)
        save_shard(spec.shard_path(root, shard), result)
        done_images += spec.shard_images
        robust = float(np.mean(result["adv_pred"] == result["label"]))
        eta = (time.time() - started) / i * (len(todo) - i)
        progress(f"kafrob: [{i}/{len(todo)}] {spec.model} {spec.attack.label_mode} labels, shard {shard} done "
                 f"(robust {100 * robust:.1f}%, {result['header']['seconds']:.0f} s); {done_images} images this "
                 f"run, ETA {eta / 60:.0f} min")
    return [spec.shard_path(root, shard) for spec, shard in plan]


@dataclass(frozen=True)
class Merged:
    """The per-example results of the finished shards of one spec, in evaluation order."""

    spec: dict
    shards: tuple[int, ...]
    header: dict  # the shards' common header (MUST_AGREE fields) and their summed seconds
    arrays: dict  # FIELDS -> np.ndarray

    @property
    def n(self) -> int:
        return len(self.arrays["index"])

    @property
    def clean_correct(self) -> np.ndarray:
        return self.arrays["clean_pred"] == self.arrays["label"]

    @property
    def robust_correct(self) -> np.ndarray:
        return self.arrays["adv_pred"] == self.arrays["label"]


def merge(spec: ShardSpec, root: Path, shards: Iterable[int] | None = None) -> Merged:
    """Assemble the finished shards (all found, or the listed ones: each must exist) of ``spec``."""
    folder = spec.directory(root)
    if shards is None:
        found = sorted(int(p.stem.split("-")[1]) for p in folder.glob("shard-*.npz"))
    else:
        found = sorted(shards)
        missing = [s for s in found if not spec.shard_path(root, s).exists()]
        if missing:
            raise ShardError(f"{folder}: shards {missing} are not finished; run them first")
    if not found:
        raise ShardError(f"no finished shard in {folder}; run `kafrob evaluate --shards ...` first")
    loaded = [load_shard(spec.shard_path(root, s)) for s in found]
    first = agreement_key(loaded[0]["header"])
    for s, shard in zip(found, loaded, strict=True):
        key = agreement_key(shard["header"])
        differ = [k for k in MUST_AGREE if key[k] != first[k]]
        if differ:
            what = "; ".join(f"{k}: {key[k]} vs {first[k]}" for k in differ)
            raise ShardError(f"shard {s} of {folder} was computed with another {', '.join(differ)} than shard "
                             f"{found[0]} ({what}); recompute one of them (--recompute) before merging")
    header = {**first, **{k: loaded[0]["header"].get(k) for k in ("onednn", "isa", "kaf_kernels", "cpu")}}
    header["seconds"] = sum(s["header"]["seconds"] for s in loaded)
    arrays = {f: np.concatenate([s[f] for s in loaded]) for f in FIELDS}
    return Merged(first["spec"], tuple(found), header, arrays)
