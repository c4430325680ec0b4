"""How far the released thesis models move between arithmetic paths, on all 10,000 test images.

The released models are float16 networks, so "the clean accuracy of a released model" is a property of the
model and the arithmetic that runs it. Each path below predicts every test image; per row we report its
accuracy, its argmax agreement with the reference path and the accuracy difference. The reference path is
the reference arithmetic (kafrob.arithmetic: oneDNN off and Eigen's own contractions), plain graph, the thesis's
float16 arithmetic: there the import equals the SavedModel exactly on every row (tests/test_checkpoints.py) and
no kernel depends on the CPU. oneDNN is chosen when TensorFlow starts, so every path runs in a process of its own:
``python -m kafrob.arithmetic_shift`` runs them all and writes ``reference_results/checkpoints_arithmetic.*``.
"""

from __future__ import annotations

import argparse
import enum
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REFERENCE = "oneDNN off, Eigen contractions, graph"
BATCH = 500


class Computation(enum.Enum):
    THESIS_IMPORT = "import, thesis float16 arithmetic"
    FLOAT32_IMPORT = "import, exact float32"
    SAVED_MODEL = "original SavedModel"


@dataclass(frozen=True)
class ArithmeticPath:
    name: str
    onednn: bool
    jit: bool = False
    computation: Computation = Computation.THESIS_IMPORT
    kaf_kernels: str = ""  # KAFROB_NATIVE for this path ("0": portable); only float32 imports use them
    contractions: str = "onednn"  # TensorFlow's contractions: oneDNN's sgemm (its default) or Eigen's own

    def env(self) -> dict[str, str]:
        from kafrob.arithmetic import env_for

        return {**os.environ, **env_for({"onednn": self.onednn, "contractions": self.contractions}),
                "KAFROB_NATIVE": self.kaf_kernels, "TF_CPP_MIN_LOG_LEVEL": "2"}


PATHS = (
    ArithmeticPath(REFERENCE, onednn=False, contractions="eigen"),
    ArithmeticPath("oneDNN off, graph", onednn=False),
    ArithmeticPath("oneDNN on, graph", onednn=True),
    ArithmeticPath("oneDNN off, XLA", onednn=False, contractions="eigen", jit=True),
    ArithmeticPath("SavedModel, oneDNN on", onednn=True, computation=Computation.SAVED_MODEL),
    ArithmeticPath("float32, compiled KAF kernels", onednn=True, computation=Computation.FLOAT32_IMPORT),
    ArithmeticPath("float32, portable KAF kernels", onednn=True, computation=Computation.FLOAT32_IMPORT,
                   kaf_kernels="0"),
)
BY_NAME = {p.name: p for p in PATHS}


def predict_all(activation: str, path: ArithmeticPath, x: np.ndarray) -> np.ndarray:
    """Argmax predictions of the released ``activation`` model on ``x``, computed this process's way."""
    import tensorflow as tf

    from kafrob import checkpoints as ck

    folder = ck.extract(ck.fetch(activation))
    if path.computation is Computation.SAVED_MODEL:
        return np.concatenate([ck.saved_model_probabilities(folder, x[i:i + BATCH]).argmax(1)
                               for i in range(0, len(x), BATCH)])
    model = ck.import_resnet20(folder, activation,
                               thesis_precision=path.computation is Computation.THESIS_IMPORT)
    run = tf.function(lambda b: tf.argmax(model(b, training=False), -1), jit_compile=path.jit)
    return np.concatenate([run(tf.constant(x[i:i + BATCH])).numpy() for i in range(0, len(x), BATCH)])


def _worker(path: ArithmeticPath, out: Path) -> None:
    from kafrob import arithmetic, atomic
    from kafrob.checkpoints import THESIS_CHECKPOINTS
    from kafrob.data import load_cifar10, to_float

    if arithmetic.onednn_enabled() != path.onednn or arithmetic.contractions() != path.contractions:
        needs = " ".join(f"{k}={v}" for k, v in path.env().items() if k in arithmetic.REFERENCE_ENV)
        raise RuntimeError(f"path {path.name!r} needs {needs} at start-up")
    data = load_cifar10()
    x = to_float(data.x_test).numpy()
    predictions = {}
    for activation in THESIS_CHECKPOINTS:
        predictions[activation] = predict_all(activation, path, x)
        print(f"{path.name}: {activation} {np.mean(predictions[activation] == data.y_test):.4f}", flush=True)
    atomic.write_npz(out, labels=data.y_test, **predictions)


def summarise(predictions: dict[str, dict[str, np.ndarray]], labels: np.ndarray) -> dict:
    """{row: {path: accuracy %, agreement with the reference path %, accuracy difference in points}}."""
    rows = {}
    for activation in predictions[REFERENCE]:
        base = predictions[REFERENCE][activation]
        rows[activation] = {
            name: {"accuracy": 100 * float(np.mean(p[activation] == labels)),
                   "agreement": 100 * float(np.mean(p[activation] == base)),
                   "accuracy_delta": 100 * float(np.mean(p[activation] == labels) - np.mean(base == labels))}
            for name, p in predictions.items()}
    return rows


def table(rows: dict) -> str:
    names = list(next(iter(rows.values())))
    head = "| row | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    cells = lambda r: " | ".join(  # noqa: E731
        f"{r[n]['accuracy']:.2f}" if n == REFERENCE else
        f"{r[n]['accuracy']:.2f} ({r[n]['accuracy_delta']:+.2f}; {r[n]['agreement']:.2f}% agree)" for n in names)
    return head + "".join(f"| {a} | {cells(r)} |\n" for a, r in rows.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kafrob.arithmetic_shift", description=__doc__)
    parser.add_argument("--work-dir", default="runs/arithmetic", help="per-path predictions (kept: resumable)")
    parser.add_argument("--out", default=None, help="stem of the .json/.md results (default reference_results/)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    if args.worker:
        _worker(BY_NAME[args.worker], work / f"{args.worker}.npz")
        return 0
    from kafrob import atomic
    from kafrob.bench.store import REFERENCE_DIR, environment

    for path in PATHS:  # a finished path is not recomputed
        if not (work / f"{path.name}.npz").exists():
            subprocess.run([sys.executable, "-m", "kafrob.arithmetic_shift", "--work-dir", str(work), "--worker",
                            path.name], env=path.env(), check=True)
    loaded = {p.name: dict(np.load(work / f"{p.name}.npz")) for p in PATHS}
    labels = loaded[REFERENCE].pop("labels")
    for p in loaded.values():
        p.pop("labels", None)
    rows = summarise(loaded, labels)
    env = {k: v for k, v in environment().items() if k not in ("onednn", "contractions", "kaf_kernels", "kaf_target")}
    stem = Path(args.out) if args.out else REFERENCE_DIR / "checkpoints_arithmetic"
    atomic.write_json(stem.with_suffix(".json"), {"environment": env, "reference_path": REFERENCE,
                                                  "paths": [dict(asdict(p), computation=p.computation.value)
                                                            for p in PATHS], "rows": rows})
    md = (f"# Released models across arithmetic paths (10,000 test images)\n\nCPU: {env.get('cpu')}; "
          f"ISA {'+'.join(env.get('isa', []))}. Clean accuracy % per path; in brackets the difference from "
          f"the reference path ({REFERENCE}) and the argmax agreement with it.\n\n{table(rows)}")
    atomic.write_text(stem.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
