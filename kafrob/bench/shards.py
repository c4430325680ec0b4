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

The released thesis models' stored evaluation (``SHARDS_DIR``) uses the thesis protocol (``THESIS_PGD``) with these
files; kafrob.bench.run computes shards, kafrob.bench.judge holds them against the thesis.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kafrob import atomic
from kafrob.attacks import AttackConfig, name_of, tag
from kafrob.attacks.pgd import PGDConfig, Reduction
from kafrob.bench.store import CLEAN_FILE, REFERENCE_DIR, Measurement
from kafrob.bench.tiers import THESIS_PGD
from kafrob.stats import wilson_interval

SHARD_IMAGES = 200  # a multiple of 10: every prefix of whole shards is class-balanced (evaluation_order)

FIELDS = ("index", "label", "clean_pred", "attack_label", "first_restart", "adv_pred")

# Header fields that must agree for shards to be merged: they change the computed numbers (the arithmetic by
# kafrob.arithmetic.results_key). The code version is recorded, not compared: the checkpoints tier re-computes
# a stored shard and fails if the code changed it.
MUST_AGREE = ("spec", "arithmetic", "tensorflow", "keras")

SHARDS_DIR = REFERENCE_DIR / "checkpoints" / "shards"

THESIS_CLEAN_N = 10_000  # the JPEG deltas' spread (0.18 points over 8 rows) fits all 10,000, not a 2,000 sample


def agreement_key(header: dict) -> dict:
    from kafrob.arithmetic import results_key

    return {"spec": header.get("spec"), "arithmetic": results_key(header), "tensorflow": header.get("tensorflow"),
            "keras": header.get("keras")}


def computed_with(header: dict) -> dict:
    """``agreement_key`` without the spec: the arithmetic and versions a shard (or this process) computes with."""
    return {**agreement_key(header), "spec": None}


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
    """What is evaluated: the model (``thesis:resnet20-<act>``, a stored ``<tier>:<case>`` or a ``.keras`` path), the
    attack, the seeds."""

    model: str
    attack: AttackConfig
    seed: int = 0  # of the image order and of the attack's random starts
    shard_images: int = SHARD_IMAGES

    def __post_init__(self) -> None:
        if self.shard_images <= 0 or self.shard_images % 10:
            raise ValueError(f"shard_images must be a positive multiple of 10, got {self.shard_images}")

    @property
    def attack_id(self) -> str:
        return f"{tag(self.attack)}-{self.attack.label_mode}-seed{self.seed}-shard{self.shard_images}"

    @property
    def model_id(self) -> str:
        return self.model.replace(":", "-").replace("/", "_")

    def directory(self, root: Path) -> Path:
        return Path(root) / self.model_id / self.attack_id

    def shard_path(self, root: Path, shard: int) -> Path:
        return self.directory(root) / f"shard-{shard:04d}.npz"

    def to_dict(self) -> dict:
        attack = dataclasses.asdict(self.attack)  # PGD's as the stored shards have it; the others named
        if isinstance(self.attack, PGDConfig):
            if attack["reduction"] is Reduction.MEAN:  # shards from before the field: the mean, unrecorded
                del attack["reduction"]
        else:
            attack = {"name": name_of(self.attack), **attack}
        return {"model": self.model, "attack": attack, "seed": self.seed, "shard_images": self.shard_images}


def shards_for(n: int, spec: ShardSpec, worker: tuple[int, int] = (0, 1)) -> list[int]:
    """The shards covering the first ``n`` images of the order; worker (i, k): every k-th of them from i."""
    if n <= 0 or n % spec.shard_images:
        raise ValueError(f"n must be a positive multiple of the shard size {spec.shard_images}, got {n}")
    i, k = worker
    if not 0 <= i < k:
        raise ValueError(f"worker must be i/k with 0 <= i < k, got {i}/{k}")
    return list(range(n // spec.shard_images))[i::k]


def sibling(spec: ShardSpec) -> ShardSpec:
    """The same evaluation in the other label mode."""
    other = "true" if spec.attack.label_mode == "predicted" else "predicted"
    return dataclasses.replace(spec, attack=dataclasses.replace(spec.attack, label_mode=other))


def save_shard(path: Path, result: dict) -> Path:
    arrays = {f: result[f] for f in FIELDS}
    return atomic.write_npz(path, header=np.array(json.dumps(result["header"], sort_keys=True)), **arrays)


def load_shard(path: Path) -> dict:
    with np.load(path) as z:
        return {**{f: z[f] for f in FIELDS}, "header": json.loads(str(z["header"]))}


def stored_environment(root: Path = SHARDS_DIR) -> dict:
    """Where the shards under ``root`` were computed, for the tables made from them: their one arithmetic (refused if
    there are several), the instruction sets all their CPUs have, the CPUs, and the code versions."""
    headers = []
    for path in sorted(Path(root).glob("*/*/shard-*.npz")):
        with np.load(path) as z:
            headers.append(json.loads(str(z["header"])))
    if not headers:
        raise ShardError(f"no stored shard under {root}; run `kafrob evaluate ... --shards-dir {root}` first")
    keys = {json.dumps(computed_with(h), sort_keys=True) for h in headers}
    if len(keys) > 1:
        raise ShardError(f"the shards under {root} were computed under {len(keys)} arithmetics or versions "
                         f"({'; '.join(sorted(keys))}); recompute the odd ones (--recompute)")
    first = headers[0]
    return {**{k: first.get(k) for k in ("onednn", "contractions", "kaf_kernels", "tensorflow", "keras", "lock",
                                         "python", "machine", "device")},
            "isa": [f for f in first.get("isa", []) if all(f in h.get("isa", []) for h in headers)],
            "cpu": "; ".join(sorted({str(h.get("cpu")) for h in headers})),
            "threads": sorted({h["threads"] for h in headers if "threads" in h}),
            "l1d_kib": sorted({h["l1d_kib"] for h in headers if h.get("l1d_kib")}),
            "code_versions": sorted({str(h.get("code_version")) for h in headers})}


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


def finished(spec: ShardSpec, root: Path) -> list[int]:
    """The shards of ``spec`` with a file under ``root``, in order."""
    return sorted(int(p.stem.split("-")[1]) for p in spec.directory(root).glob("shard-*.npz"))


def merge(spec: ShardSpec, root: Path, shards: Iterable[int] | None = None) -> Merged:
    """Assemble the finished shards (all found, or the listed ones: each must exist) of ``spec``."""
    folder = spec.directory(root)
    if shards is None:
        found = finished(spec, root)
    else:
        found = sorted(shards)
        missing = [s for s in found if not spec.shard_path(root, s).exists()]
        if missing:
            raise ShardError(f"{folder}: shards {missing} are not finished; run them first")
    if not found:
        raise ShardError(f"no finished shard in {folder}; run `kafrob evaluate --checkpoint {spec.model} "
                         f"--shards-dir {root}` first")
    loaded = [load_shard(spec.shard_path(root, s)) for s in found]
    first = agreement_key(loaded[0]["header"])
    for s, shard in zip(found, loaded, strict=True):
        key = agreement_key(shard["header"])
        differ = [k for k in MUST_AGREE if key[k] != first[k]]
        if differ:
            what = "; ".join(f"{k}: {key[k]} vs {first[k]}" for k in differ)
            raise ShardError(f"shard {s} of {folder} was computed with another {', '.join(differ)} than shard "
                             f"{found[0]} ({what}); recompute one of them (--recompute) before merging")
    header = {**first, **{k: loaded[0]["header"].get(k) for k in ("onednn", "contractions", "isa", "kaf_kernels",
                                                                    "cpu")}}
    header["seconds"] = sum(s["header"]["seconds"] for s in loaded)
    # recorded, not compared (the checkpoints tier re-computes a stored shard); several are flagged by the CLI
    header["code_versions"] = sorted({str(s["header"].get("code_version")) for s in loaded})
    header["masking"] = [batch for s in loaded for batch in s["header"].get("masking", [])]  # AutoAttack's flags
    arrays = {f: np.concatenate([s[f] for s in loaded]) for f in FIELDS}
    return Merged(first["spec"], tuple(found), header, arrays)


def protocol_spec(model: str, label_mode: str = "predicted", shard_images: int = SHARD_IMAGES,
                  reduction: Reduction = Reduction.MEAN) -> ShardSpec:
    """The thesis's PGD evaluation of a named model (``thesis:resnet20-<act>``, ``<tier>:<case>``) in one label mode
    (``reduction``: the batch-mean loss, the thesis's, or the summed one, docs/attacks.md "Gradient underflow")."""
    return ShardSpec(model, dataclasses.replace(THESIS_PGD, label_mode=label_mode, reduction=reduction),
                     shard_images=shard_images)


def both_modes(model: str, root: Path, shard_images: int = SHARD_IMAGES) -> dict[str, Merged]:
    """The thesis protocol on a named model in both label modes, merged over the shards both have finished."""
    specs = {m: protocol_spec(model, m, shard_images) for m in ("predicted", "true")}
    both = sorted(set(finished(specs["predicted"], root)) & set(finished(specs["true"], root)))
    if not both:
        raise ShardError(f"{model}: no shard finished in both label modes under {root}; run `kafrob evaluate "
                         f"--checkpoint {model} --labels predicted true --shards-dir {root}` first")
    return {m: merge(spec, root, both) for m, spec in specs.items()}


def released_spec(activation: str, label_mode: str = "predicted", shard_images: int = SHARD_IMAGES) -> ShardSpec:
    return protocol_spec(f"thesis:resnet20-{activation}", label_mode, shard_images)


def stored(activation: str, label_mode: str = "predicted", root: Path = SHARDS_DIR) -> Merged:
    return merge(released_spec(activation, label_mode), root)


def stored_clean_accuracy(path: Path = CLEAN_FILE) -> dict[str, float]:
    """Clean accuracy (%) on all 10,000 test images under the reference arithmetic, per activation."""
    data = json.loads(path.read_text())
    return {a: paths[data["reference_path"]]["accuracy"] for a, paths in data["rows"].items()}


def protocol_measurement(case: str, tier: str, clean: float, n_clean: int, robust: dict[str, Merged], *,
                         other_seconds: float = 0.0, train_loss: float | None = None) -> Measurement:
    """A tier's Measurement of a model whose thesis-protocol shards are stored: ``clean`` accuracy (%) on ``n_clean``
    images, ``robust`` as ``both_modes`` merges it (the predicted labels compared, as the thesis measured, the true
    labels beside); seconds: both modes' CPU time on those shards (a true-label shard takes the predicted-label
    shard's attack where the two labels agree, so neither mode alone is the cost) and ``other_seconds``."""
    k_clean, n = round(clean * n_clean / 100), robust["predicted"].n
    k_robust = int(robust["predicted"].robust_correct.sum())
    pct = lambda t: (100 * t[0], 100 * t[1])  # noqa: E731
    return Measurement(case, tier, clean, 100 * k_robust / n, pct(wilson_interval(k_clean, n_clean)),
                       pct(wilson_interval(k_robust, n)), n_clean, n,
                       other_seconds + sum(r.header["seconds"] for r in robust.values()), train_loss,
                       100 * float(robust["true"].robust_correct.mean()))


def released_measurement(activation: str, clean: dict[str, float] | None = None, root: Path = SHARDS_DIR,
                         shard_images: int = SHARD_IMAGES) -> Measurement:
    """The stored numbers of one released row: clean accuracy on all 10,000 test images, PGD on the shards both label
    modes have (``protocol_measurement``)."""
    clean = stored_clean_accuracy() if clean is None else clean
    return protocol_measurement(f"resnet20-{activation}", "checkpoints", clean[activation], THESIS_CLEAN_N,
                                both_modes(f"thesis:resnet20-{activation}", root, shard_images))
