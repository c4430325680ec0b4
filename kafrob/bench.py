"""Running one benchmark case, comparing it with its reference, and regenerating the reference tables."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from kafrob import arithmetic, atomic
from kafrob.arithmetic import kaf_kernels
from kafrob.data import Cifar10
from kafrob.evaluate import evaluate, our_pgd, our_pgd_eager_graph
from kafrob.experiments import EXPERIMENTS, Experiment, Tier
from kafrob.train import build_for, train

PACKAGE_DIR = Path(__file__).resolve().parent
REFERENCE_DIR = PACKAGE_DIR.parent / "reference_results"
METRICS = (("clean_accuracy", "thesis_accuracy"), ("robust_accuracy", "thesis_robustness"))
# Suite references also pin the last epoch's mean FBF training loss: at the smoke budget several models
# are still near chance accuracy, where a broken KAF gradient or data pipeline would not move the
# accuracies, but it moves the loss trajectory. CPU runs are seeded, so the loss repeats to ~1e-6 on
# one machine; other arithmetic moves it by the spread measured in <tier>_spread.json (kafrob.spread),
# which sets the tolerances where it exists. LOSS_TOLERANCE serves a suite reference without one.
LOSS_TOLERANCE = 0.02


def runs_dir() -> Path:
    return Path(os.environ.get("KAFROB_RUNS_DIR", "runs"))


def code_version(root: Path = PACKAGE_DIR) -> str:
    """Fingerprint of the kafrob sources (Python and the compiled kernels') and the TensorFlow/Keras versions.

    Part of the trained-model cache key: a cached model is reused only by the code that trained it, so a
    change to (say) the KAF kernels retrains instead of silently re-measuring the old weights.
    """
    h = hashlib.sha256(f"{tf.__version__} {keras.__version__}".encode())
    for path in sorted(p for p in root.rglob("*") if p.suffix in {".py", ".cc", ".h"}):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def lock_digest() -> str | None:
    """sha256 (first 12 hex digits) of requirements.lock, the pinned dependencies the nox sessions install."""
    lock = PACKAGE_DIR.parent / "requirements.lock"
    return hashlib.sha256(lock.read_bytes()).hexdigest()[:12] if lock.is_file() else None


def environment() -> dict:
    """The results header: arithmetic (kafrob.arithmetic), versions, the dependency lock, the machine."""
    gpus = tf.config.list_physical_devices("GPU")
    return {**arithmetic.describe(), "lock": lock_digest(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpu": arithmetic.cpu_model(),
            "device": f"{len(gpus)} GPU" if gpus else "CPU", "cpus": os.cpu_count()}


def obtain_model(e: Experiment, tier: Tier, data: Cifar10, *, seed: int = 0, progress: bool = True,
                 strategy: tf.distribute.Strategy | None = None) -> tuple[keras.Model, list[dict]]:
    """Train (or reuse the cached training of the same config and code), or load the released thesis model.

    Returns the model and its training history (per-epoch records; empty for released models).
    """
    if tier.source == "thesis-checkpoint":
        if e.model != "resnet20":
            raise ValueError(f"the thesis released ResNet20 checkpoints only, not {e.id}")
        from kafrob.checkpoints import load_thesis_model

        return load_thesis_model(e.activation), []
    config = tier.train_config(e, seed)
    kernels = f"-{kaf_kernels()}" if e.activation.startswith("kaf") else ""
    run_dir = runs_dir() / "models" / f"{e.id}-{config.digest()}-{code_version()}{kernels}"
    weights = run_dir / "final.weights.h5"
    if weights.exists():
        model = build_for(config, "float32")
        model.load_weights(weights)
        return model, json.loads((run_dir / "history.json").read_text())["history"]
    result = train(config, data, run_dir, resume=(run_dir / "checkpoint.npz").exists(), progress=progress,
                   strategy=strategy)
    atomic.save_with(weights, result.model.save_weights)
    return result.model, result.history


@dataclass
class Measurement:
    case: str
    tier: str
    clean_accuracy: float  # percent
    robust_accuracy: float
    clean_interval: tuple[float, float]
    robust_interval: tuple[float, float]
    n_clean: int
    n_robust: int
    seconds: float
    train_loss: float | None = None  # last epoch's mean training loss; None for released checkpoints

    def to_dict(self) -> dict:
        return dict(self.__dict__, clean_interval=list(self.clean_interval), robust_interval=list(self.robust_interval))


def run_case(e: Experiment, tier: Tier, data: Cifar10, *, seed: int = 0, progress: bool = True,
             strategy: tf.distribute.Strategy | None = None) -> Measurement:
    """Obtain the model (``strategy``: data-parallel training), evaluate it, save per-example results."""
    import time

    start = time.time()
    model, history = obtain_model(e, tier, data, seed=seed, progress=progress, strategy=strategy)
    clean_n = tier.clean_images if tier.clean_images is not None else len(data.y_test)  # None: all of them
    result = evaluate(model, data, n=tier.test_images, clean_n=clean_n, attack=tier.attack, seed=seed,
                      run_attack=our_pgd if tier.jit_compile else our_pgd_eager_graph, progress=progress)
    result.save(runs_dir() / "results" / tier.name / e.id)
    pct = lambda t: (100 * t[0], 100 * t[1])  # noqa: E731
    return Measurement(e.id, tier.name, 100 * result.clean_accuracy, 100 * result.robust_accuracy,
                       pct(result.clean_interval), pct(result.robust_interval), len(result.clean_indices),
                       result.n, time.time() - start, history[-1]["loss"] if history else None)


def reference_file(tier: Tier) -> Path:
    return REFERENCE_DIR / f"{tier.name}.json"


def expected_values(e: Experiment, tier: Tier) -> dict[str, float]:
    """The numbers a case is held to: the thesis table, or this suite's stored measurement (+ its loss)."""
    if tier.reference == "thesis":
        return {m: getattr(e, t) for m, t in METRICS}
    path = reference_file(tier)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; create it with `nox -s regenerate -- --tier {tier.name}`")
    rows = json.loads(path.read_text())["results"]
    if e.id not in rows:
        raise KeyError(f"{path} has no row {e.id}; regenerate the {tier.name} references")
    expected = {m: rows[e.id][m] for m, _ in METRICS}
    if rows[e.id].get("train_loss") is not None:
        expected["train_loss"] = rows[e.id]["train_loss"]
    return expected


def reference_kernels(tier: Tier) -> str | None:
    """The KAF kernels a suite reference was measured with (None: thesis references, or not recorded)."""
    if tier.reference == "thesis" or not reference_file(tier).exists():
        return None
    return json.loads(reference_file(tier).read_text()).get("environment", {}).get("kaf_kernels")


def tolerances(tier: Tier) -> dict[str, float]:
    """Allowed |measured - expected| per metric: for suite references the ones set from the measured spread
    (``reference_results/<tier>_spread.json``, kafrob.spread), else the tier's (thesis references)."""
    spread = REFERENCE_DIR / f"{tier.name}_spread.json"
    if tier.reference == "suite" and spread.exists():
        return {m: t["tolerance"] for m, t in json.loads(spread.read_text())["tolerances"].items()}
    return {"clean_accuracy": tier.tolerance, "robust_accuracy": tier.tolerance, "train_loss": LOSS_TOLERANCE}


def compare(m: Measurement, e: Experiment, tier: Tier) -> list[str]:
    """Failures as readable lines; thesis references also allow the measurement's 95% sampling half-width."""
    failures = []
    measured_with = reference_kernels(tier)
    hint = ""
    if e.activation.startswith("kaf") and measured_with is not None and measured_with != kaf_kernels():
        hint = (f" [the references were measured with the {measured_with} KAF kernels, this run used the "
                f"{kaf_kernels()} ones (see the README, KAF kernels)]")
    allowed_by_metric = tolerances(tier)
    for metric, expected in expected_values(e, tier).items():
        measured = getattr(m, metric)
        if metric == "train_loss":
            allowed = allowed_by_metric[metric]
            if measured is None or abs(measured - expected) > allowed:
                failures.append(f"{e.id} train_loss: measured {measured}, expected {expected:.4f} (suite), "
                                f"allowed +-{allowed}: the training trajectory changed{hint}")
            continue
        lo, hi = getattr(m, metric.replace("accuracy", "interval"))
        allowed = allowed_by_metric[metric] + ((hi - lo) / 2 if tier.reference == "thesis" else 0.0)
        if abs(measured - expected) > allowed:
            failures.append(f"{e.id} {metric}: measured {measured:.2f}% (95% CI {lo:.2f}-{hi:.2f}), expected "
                            f"{expected:.2f}% ({tier.reference}), delta {measured - expected:+.2f}, allowed "
                            f"+-{allowed:.2f}{hint}")
    return failures


def results_table(measurements: list[Measurement], fmt: str = "github") -> str:
    from tabulate import tabulate

    rows = []
    for m in measurements:
        e = next(x for x in EXPERIMENTS if x.id == m.case)
        rows.append((e.model, e.activation, f"{m.clean_accuracy:.2f}", f"{m.robust_accuracy:.2f}",
                     f"{e.thesis_accuracy:.2f}", f"{e.thesis_robustness:.2f}",
                     f"{m.clean_accuracy - e.thesis_accuracy:+.2f}", f"{m.robust_accuracy - e.thesis_robustness:+.2f}"))
    headers = ("model", "activation", "accuracy %", "robustness %", "thesis acc %", "thesis rob %",
               "delta acc", "delta rob")
    return tabulate(rows, headers=headers, tablefmt=fmt)


def scatter_png(measurements: list[Measurement], title: str) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, model in zip(axes, ("vgg", "resnet20"), strict=True):
        for m in measurements:
            e = next(x for x in EXPERIMENTS if x.id == m.case)
            if e.model != model:
                continue
            kaf = e.activation.startswith("kaf")
            ax.scatter(m.clean_accuracy, m.robust_accuracy, marker="*" if kaf else "o", s=80 if kaf else 40,
                       color="tab:red" if kaf else "tab:blue")
            ax.annotate(e.activation, (m.clean_accuracy, m.robust_accuracy), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set_title(f"{model}: o fixed activations, * KAFs")
        ax.set_xlabel("clean accuracy %")
        ax.set_ylabel("PGD accuracy %")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_references(measurements: list[Measurement], tier: Tier) -> list[Path]:
    """All reference files of a tier, each written atomically, only once every case has succeeded."""
    stem = REFERENCE_DIR / tier.name
    payload = {"tier": tier.name, "environment": environment(),
               "attack": tier.attack.__dict__, "tolerance_points": tier.tolerance,
               "results": {m.case: m.to_dict() for m in measurements}}
    csv = results_table(measurements, "tsv").replace("\t", ",")
    title = f"kafrob {tier.name} tier ({payload['environment']['device']})"
    png = scatter_png(measurements, title)
    return [atomic.write_json(stem.with_suffix(".json"), payload),
            atomic.write_text(stem.with_suffix(".md"), f"# {title}\n\n{results_table(measurements)}\n"),
            atomic.write_text(stem.with_suffix(".csv"), csv + "\n"),
            atomic.atomic_write(stem.with_suffix(".png"), lambda f: f.write(png))]
