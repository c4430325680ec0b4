"""Logits of the released models under the reference arithmetic with the exact rsqrt, to compare across machines.

tests/test_batch_norm.py runs it and compares with the stored file bit for bit; to store it (on any machine):

    TF_ENABLE_ONEDNN_OPTS=0 TENSORFLOW_USE_CUSTOM_CONTRACTION_KERNEL=0 KAFROB_EXACT_RSQRT=1 \
    python tests/scripts/exact_rsqrt_logits.py reference_results/checkpoints/exact_rsqrt_logits.npz \
        ../shared/thesis/checkpoints
"""

from __future__ import annotations

import json
import os
import sys

from kafrob import arithmetic, atomic, checkpoints
from kafrob.attacks.common import logits
from kafrob.bench.store import environment
from kafrob.data import load_cifar10, to_float

IMAGES = 100  # the first test images
ARITHMETIC = {"onednn": False, "contractions": "eigen", "rsqrt": "exact"}


def main(out: str, checkpoint_dir: str) -> None:
    if not arithmetic.vendor_independent(arithmetic.describe()):
        needs = " ".join(f"{k}={v}" for k, v in arithmetic.env_for(ARITHMETIC).items())
        raise SystemExit(f"run with {needs} (read when TensorFlow starts)")
    x = to_float(load_cifar10().x_test[:IMAGES])
    rows = {}
    for activation in checkpoints.THESIS_CHECKPOINTS:
        path = os.path.join(checkpoint_dir, checkpoints.lookup(activation).filename)
        rows[activation] = logits(checkpoints.load_thesis_model(activation, path), x).numpy()
    atomic.write_npz(out, header=json.dumps(environment()), **rows)


if __name__ == "__main__":
    main(*sys.argv[1:3])
