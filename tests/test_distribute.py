"""Data-parallel training (tf.distribute.MirroredStrategy), on 2 logical CPU devices."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kafrob.data import ENV_VAR


@pytest.mark.slow
def test_mirrored_strategy_matches_single_device_and_trains(cifar):
    script = Path(__file__).parent / "scripts" / "mirrored_check.py"
    proc = subprocess.run([sys.executable, str(script), os.environ[ENV_VAR]], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    # Each replica's loss is divided by the number of replicas before the gradients are summed: one
    # mirrored step equals one single-device step on the same global batch.
    assert report["step_max_abs_diff"] < 1e-5
    (epoch,) = report["history"]
    assert math.isfinite(epoch["loss"]) and 0.0 <= epoch["accuracy"] <= 1.0
