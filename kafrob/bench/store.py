"""Where the benchmark's numbers live, and the header recorded with each.

* ``runs/`` (``KAFROB_RUNS_DIR``): trained models (``models/<case>-<config>-<code>``), per-example results
  (``results/<tier>/<case>``) and one Measurement per case and tier (``measurements/<tier>/<case>.json``);
* ``reference_results/``: the tiers' reference tables (``<tier>.{json,md,csv,png}``, written all at once), their
  measured spread (``<tier>_spread.*``), and the released models' stored evaluation
  (``checkpoints/shards``, kafrob.bench.shards; clean accuracy on 10,000 images: ``checkpoints_arithmetic.json``).
"""

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
from kafrob.bench.tiers import Reference, Tier

PACKAGE_DIR = Path(__file__).resolve().parent.parent
REFERENCE_DIR = PACKAGE_DIR.parent / "reference_results"

CLEAN_FILE = REFERENCE_DIR / "checkpoints_arithmetic.json"  # released models, 10,000 images, several arithmetics


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
    robust_accuracy_true: float | None = None  # the same attack on the true labels, where the compared one
    # attacked the predicted labels (the thesis's protocol)

    def to_dict(self) -> dict:
        return dict(self.__dict__, clean_interval=list(self.clean_interval), robust_interval=list(self.robust_interval))

    @classmethod
    def from_dict(cls, row: dict) -> Measurement:
        row = {k: v for k, v in row.items() if k != "recorded"}
        return cls(**{**row, "clean_interval": tuple(row["clean_interval"]),
                      "robust_interval": tuple(row["robust_interval"])})


def measurement_path(tier_name: str, case: str) -> Path:
    return runs_dir() / "measurements" / tier_name / f"{case}.json"


def save_measurement(m: Measurement, seed: int = 0) -> Path:
    """With the seed, environment and code version that computed it (``recorded``): measurements made on several
    machines (cluster jobs) are combined only under one arithmetic (``common_environment``)."""
    recorded = {"code_version": code_version(), "seed": seed, **environment()}
    return atomic.write_json(measurement_path(m.tier, m.case), {**m.to_dict(), "recorded": recorded})


def current_measurement(tier_name: str, case: str, seed: int = 0) -> Measurement | None:
    """The stored measurement of a case if this code computed it with this seed, else None."""
    path = measurement_path(tier_name, case)
    row = json.loads(path.read_text()) if path.exists() else {}
    recorded = row.get("recorded") or {}
    if recorded.get("code_version") != code_version() or recorded.get("seed", 0) != seed:
        return None
    return Measurement.from_dict(row)


def common_environment(tier: Tier) -> dict:
    """The environment of the tier's stored measurements; refused if their arithmetic differs, the code versions
    listed (several are flagged in the reference file, not refused)."""
    folder = measurement_path(tier.name, "x").parent
    recorded = {p.stem: json.loads(p.read_text()).get("recorded") for p in sorted(folder.glob("*.json"))}
    missing = sorted(case for case, r in recorded.items() if r is None)
    if missing:
        raise ValueError(f"measurements of {', '.join(missing)} record no environment (made by an older kafrob); "
                         f"run them again")
    keys = {case: arithmetic.results_key(r) for case, r in recorded.items()}
    first_case, first = next(iter(keys.items()))
    differ = [case for case, key in keys.items() if key != first]
    if differ:
        raise ValueError(f"measurements of {', '.join(differ)} were computed under another arithmetic than "
                         f"{first_case} ({arithmetic.label(recorded[differ[0]])} vs "
                         f"{arithmetic.label(recorded[first_case])}); run them under one arithmetic")
    env = dict(recorded[first_case])
    env["code_versions"] = sorted({r["code_version"] for r in recorded.values()})
    return env


def load_measurements(tier: Tier) -> list[Measurement]:
    """The tier's measurements in runs/, in the thesis tables' row order."""
    order = {case: i for i, case in enumerate(tier.row_ids())}
    folder = measurement_path(tier.name, "x").parent
    rows = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return sorted((Measurement.from_dict(r) for r in rows if r["case"] in order), key=lambda m: order[m.case])


def reference_file(tier: Tier) -> Path:
    return REFERENCE_DIR / f"{tier.name}.json"


def reference(tier: Tier) -> dict:
    """The tier's stored reference file (suite references)."""
    path = reference_file(tier)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; create it with `nox -s regenerate -- --tier {tier.name}`")
    return json.loads(path.read_text())


def write_references(measurements: list[Measurement], tier: Tier, env: dict | None = None,
                     comparisons: list | None = None) -> list[Path]:
    """All reference files of a tier, each written atomically, only once every case has succeeded; ``env``: where
    they were measured (default: this process); ``comparisons`` (kafrob.bench.judge.Comparison): paired
    comparisons of its rows, added to the markdown."""
    from kafrob.bench.report import paired_section, results_table, scatter_png

    against = tier.reference is Reference.THESIS  # a suite reference is these numbers: nothing to compare
    stem = REFERENCE_DIR / tier.name
    payload = {"tier": tier.name, "environment": env or environment(), "attack": tier.attack.__dict__,
               "tolerance_points": tier.tolerance, "results": {m.case: m.to_dict() for m in measurements}}
    title = f"kafrob {tier.name} tier ({payload['environment']['device']})"
    png = scatter_png(measurements, tier, title, reference_points=against)
    table = results_table(measurements, tier, deltas=against)
    csv = results_table(measurements, tier, "tsv", deltas=against).replace("\t", ",")
    return [atomic.write_json(stem.with_suffix(".json"), payload),
            atomic.write_text(stem.with_suffix(".md"), f"# {title}\n\n{table}\n"
                              + (f"\n{paired_section(comparisons)}" if comparisons else "")),
            atomic.write_text(stem.with_suffix(".csv"), csv + "\n"),
            atomic.atomic_write(stem.with_suffix(".png"), lambda f: f.write(png))]
