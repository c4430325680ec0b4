"""The released thesis models as the checkpoints tier judges them: stored per-example results, re-computed and
held against the thesis table.

The evidence is the stored evaluation (``reference_results/checkpoints/shards``, written by ``kafrob evaluate
--shards-dir``): PGD-50x10 in both label modes on one stratified image order, under the reference arithmetic
(oneDNN off: TensorFlow's Eigen kernels, built for one x86 baseline, so the same on every x86 CPU; the KAF rows'
compiled float16 kernel equals TensorFlow's graph bit for bit). A tier run checks two things per row:

* **the code still computes the stored numbers**: the first ``RECHECK_IMAGES`` images of shard 0 are attacked
  again, in a child process with the stored arithmetic, and must give identical per-example results (random
  starts are per image, so a 10-image run is the same computation as those images in the 200-image shard);
* **the stored numbers against the thesis**: robust accuracy (the thesis's predicted-label protocol, n as
  stored) may differ from the thesis's by the 95% half-width of the difference of two independent samples (the
  thesis's 2,000 images drawn with replacement, ours) plus the JPEG shift; clean accuracy (all 10,000 images,
  ``reference_results/checkpoints_arithmetic.json``) is expected at the thesis's plus the JPEG shift, within the
  two samples' half-width and twice the shift's spread. The JPEG shift is measured on clean accuracy: the mean
  of (ours - thesis) over the *other* rows (leave one out, so a row cannot excuse itself). That the shift on
  robust accuracy is no larger than on clean accuracy is an assumption (no pixel-exact CIFAR-10 here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kafrob import shards
from kafrob.bench import REFERENCE_DIR, Measurement
from kafrob.pgd import PGDConfig
from kafrob.stats import wilson_interval

SHARDS_DIR = REFERENCE_DIR / "checkpoints" / "shards"
CLEAN_FILE = REFERENCE_DIR / "checkpoints_arithmetic.json"
PROTOCOL = PGDConfig(iterations=50, restarts=10, label_mode="predicted")  # the thesis's
THESIS_ROBUST_N = 2000  # the thesis's PGD sample, drawn with replacement
THESIS_CLEAN_N = 10_000  # the JPEG deltas' spread (0.18 points over 8 rows) fits all 10,000, not a 2,000 sample
RECHECK_IMAGES = 10
Z95 = 1.959963984540054


def spec(activation: str, label_mode: str = "predicted", shard_images: int = shards.SHARD_IMAGES) -> shards.ShardSpec:
    attack = PGDConfig(iterations=PROTOCOL.iterations, restarts=PROTOCOL.restarts, label_mode=label_mode)
    return shards.ShardSpec(f"thesis:resnet20-{activation}", attack, shard_images=shard_images)


def stored(activation: str, label_mode: str = "predicted", root: Path = SHARDS_DIR) -> shards.Merged:
    return shards.merge(spec(activation, label_mode), root)


def stored_clean_accuracy(path: Path = CLEAN_FILE) -> dict[str, float]:
    """Clean accuracy (%) on all 10,000 test images under the reference arithmetic, per activation."""
    data = json.loads(path.read_text())
    return {a: paths[data["reference_path"]]["accuracy"] for a, paths in data["rows"].items()}


def _half_width(p_a: float, n_a: int, p_b: float, n_b: int) -> float:
    """95% half-width (points) of the difference of two independent sample proportions given in percent."""
    return 100 * Z95 * np.sqrt(p_a / 100 * (1 - p_a / 100) / n_a + p_b / 100 * (1 - p_b / 100) / n_b)


@dataclass(frozen=True)
class Check:
    metric: str
    measured: float
    n: int
    expected: float
    allowed: float
    detail: str

    @property
    def passed(self) -> bool:
        return abs(self.measured - self.expected) <= self.allowed

    def line(self, activation: str) -> str:
        return (f"resnet20-{activation} {self.metric}: stored {self.measured:.2f}% (n={self.n}), expected "
                f"{self.expected:.2f}%, delta {self.measured - self.expected:+.2f}, allowed +-{self.allowed:.2f} "
                f"({self.detail})")


def against_thesis(activation: str, thesis: dict[str, tuple[float, float]], clean: dict[str, float],
                   robust: shards.Merged) -> list[Check]:
    """The stored numbers of one row against the thesis table (``thesis``: activation -> (clean, robust) %)."""
    others = [clean[a] - thesis[a][0] for a in thesis if a != activation and a in clean]
    shift, spread = float(np.mean(others)), float(np.std(others, ddof=1))
    t_clean, t_robust = thesis[activation]
    c = clean[activation]
    r = 100 * float(robust.robust_correct.mean())
    return [
        Check("clean accuracy", c, THESIS_CLEAN_N, t_clean + shift,
              _half_width(c, THESIS_CLEAN_N, t_clean, THESIS_CLEAN_N) + 2 * spread,
              f"thesis {t_clean:.2f} + JPEG shift {shift:+.2f} from the other rows; two samples' 95% half-width "
              f"+ 2 x shift spread {spread:.2f}"),
        Check("robust accuracy", r, robust.n, t_robust,
              _half_width(r, robust.n, t_robust, THESIS_ROBUST_N) + abs(shift),
              f"thesis {t_robust:.2f} (n={THESIS_ROBUST_N}); two samples' 95% half-width + |JPEG shift| "
              f"{abs(shift):.2f}"),
    ]


def recompute(activation: str, root: Path = SHARDS_DIR) -> list[str]:
    """Attack the first RECHECK_IMAGES images of stored shard 0 again (both label modes, a child process with the
    stored arithmetic); failures as lines, empty when every per-example field is identical."""
    failures = []
    reference = {m: shards.load_shard(spec(activation, m).shard_path(root, 0)) for m in ("predicted", "true")}
    header = reference["predicted"]["header"]
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1" if header["onednn"] else "0"}
    if header["kaf_kernels"] == "portable":
        env["KAFROB_NATIVE"] = "0"
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "kafrob.cli", "evaluate", "--checkpoint",
                               f"thesis:resnet20-{activation}", "--labels", "predicted", "true", "--n",
                               str(RECHECK_IMAGES), "--shard-images", str(RECHECK_IMAGES), "--shards-dir", tmp],
                              env=env, capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            return [f"resnet20-{activation}: re-computing {RECHECK_IMAGES} images failed: {last}"]
        for mode, stored_shard in reference.items():
            again = shards.load_shard(spec(activation, mode, RECHECK_IMAGES).shard_path(Path(tmp), 0))
            mine, theirs = shards.agreement_key(again["header"]), shards.agreement_key(stored_shard["header"])
            mine["spec"] = theirs["spec"] = None
            if mine != theirs:
                failures.append(f"resnet20-{activation}: the stored shards were computed with {theirs}, this machine "
                                f"computes with {mine}: install the locked versions (requirements.lock)")
                break
            for field in shards.FIELDS:
                differ = np.flatnonzero(again[field] != stored_shard[field][:RECHECK_IMAGES])
                if len(differ):
                    failures.append(f"resnet20-{activation} {mode} labels: {field} differs from the stored shard on "
                                    f"images {again['index'][differ].tolist()}: the code changed the computation")
    return failures


def measurement(activation: str, clean: dict[str, float] | None = None) -> Measurement:
    """The stored numbers of one row as the tiers' Measurement: clean on all 10,000, robust as the thesis measured
    it (predicted labels) on the images the stored shards cover; seconds: the shards' CPU time."""
    clean = stored_clean_accuracy() if clean is None else clean
    robust = stored(activation)
    k_clean, k_robust = round(clean[activation] * THESIS_CLEAN_N / 100), int(robust.robust_correct.sum())
    pct = lambda t: (100 * t[0], 100 * t[1])  # noqa: E731
    return Measurement(f"resnet20-{activation}", "checkpoints", clean[activation], 100 * k_robust / robust.n,
                       pct(wilson_interval(k_clean, THESIS_CLEAN_N)), pct(wilson_interval(k_robust, robust.n)),
                       THESIS_CLEAN_N, robust.n, robust.header["seconds"])
